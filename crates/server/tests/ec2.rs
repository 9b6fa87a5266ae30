//! A control plane with an EC2 cloud (moto's EC2 server, started by scripts/test-ec2.sh): a
//! server launched there is an EC2 instance with its tags, user-data and security group; an
//! elastic IP comes from EC2 and goes back to it; terminating the server terminates the
//! instance; the access key, a Stratus credential, never shows. Built with `--features ec2`.

#![cfg(feature = "ec2")]

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::json;

const SECRET: &str = "moto-secret-never-shown-42";

#[tokio::test]
async fn a_server_on_an_ec2_cloud_is_an_ec2_instance() {
    let endpoint = std::env::var("STRATUS_TEST_EC2")
        .expect("STRATUS_TEST_EC2 is not set: run the tests with scripts/test.sh, which starts moto");
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    let (s, v) = t
        .post(
            "/credentials",
            json!({ "name": "aws-key", "value": format!("AKIASTRATUSTEST:{SECRET}") }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cloud = format!(
        r#"
[[cloud]]
name = "aws"
driver = "ec2"
endpoint = "{endpoint}"
regions = [{{ name = "us-east-1" }}]
sizes = [{{ name = "t3.micro", cpus = 2, memory = "1GiB" }}]
ec2 = {{ credential = "aws-key" }}
"#
    );
    let (s, plan) = t.apply_toml(&cloud, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    // An AMI moto knows, through the driver the control plane made.
    let app = &t.running.as_ref().expect("running").app;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &"aws".parse().expect("name"))
        .await
        .expect("driver");
    let ec2 = driver
        .as_any()
        .downcast_ref::<stratus_ec2::Ec2Cloud>()
        .expect("the ec2 driver");
    let images = ec2
        .client()
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("images");
    let ami = images.images()[0].image_id().expect("id").to_string();
    let rest = format!(
        r#"
[[image]]
name = "base"
[image.clouds.aws]
native_id = "{ami}"
default_size = "t3.micro"

[[template]]
name = "web"
image = "base"
default_tags = ["role:tier=web"]
firewall = [{{ protocol = "tcp", ports = 443 }}]

[deployment]
name = "prod"
cloud = "aws"

[[server]]
name = "web-1"
template = "web"
"#
    );
    let (s, plan) = t.apply_toml(&rest, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let server = t
        .wait_for("the instance", async |t| {
            let v = t.get("/servers/prod%2Fweb-1").await;
            v["instance_id"].is_string().then_some(v)
        })
        .await;
    let id = server["instance_id"].as_str().expect("id").to_string();
    let raw = ec2
        .client()
        .describe_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("describe");
    let i = &raw.reservations()[0].instances()[0];
    let tag = |k: &str| {
        i.tags()
            .iter()
            .find(|x| x.key() == Some(k))
            .and_then(|x| x.value())
            .map(str::to_string)
    };
    assert_eq!(tag("stratus:server"), server["id"].as_str().map(str::to_string));
    assert_eq!(tag("role:tier").as_deref(), Some("web"));
    assert_eq!(tag("Name").as_deref(), Some("web-1"));
    let ud = ec2
        .client()
        .describe_instance_attribute()
        .instance_id(&id)
        .attribute(stratus_ec2::sdk::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user-data");
    let ud = ud.user_data().and_then(|u| u.value()).expect("user-data");
    use base64::Engine as _;
    let ud = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(ud).expect("base64")).expect("utf8");
    assert!(ud.contains(server["id"].as_str().expect("id")), "{ud}");

    // An elastic IP from EC2, associated, and given back.
    let (s, a) = t.post("/addresses", json!({ "name": "web-ip", "cloud": "aws" })).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let ip = a["ip"].as_str().expect("ip").to_string();
    let (s, v) = t
        .post("/addresses/web-ip/associate", json!({ "server": "prod/web-1" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seen = ec2
        .client()
        .describe_addresses()
        .public_ips(&ip)
        .send()
        .await
        .expect("addresses");
    assert_eq!(seen.addresses()[0].instance_id(), Some(id.as_str()));
    let (s, v) = t.post("/addresses/web-ip/disassociate", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.delete("/addresses/web-ip").await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(
        ec2.client().describe_addresses().public_ips(&ip).send().await.is_err(),
        "released back to EC2"
    );

    // Terminated through Stratus: terminated on EC2.
    let (s, v) = t.delete("/servers/prod%2Fweb-1").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // Bounded generously: the EC2 endpoint is shared with the throttling test's 200 servers.
    t.wait_state_within("prod/web-1", "terminated", std::time::Duration::from_secs(60))
        .await;
    let raw = ec2
        .client()
        .describe_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("describe");
    assert_eq!(
        raw.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string()),
        Some("terminated".into())
    );
    // The key never shows.
    let everything = format!(
        "{}{}{}",
        t.get("/clouds/aws").await,
        t.get("/credentials/aws-key").await,
        serde_json::to_string(&t.audit("").await).expect("json")
    );
    assert!(!everything.contains(SECRET), "{everything}");
}
