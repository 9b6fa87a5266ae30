//! The EC2 driver against a local EC2-compatible endpoint (moto's server, started by
//! scripts/test-ec2.sh and named in STRATUS_TEST_EC2): the driver conformance suite, and what
//! only EC2 shows (tags on the instance, the per-instance security group, elastic IPs allocated
//! by the cloud, images made by CreateImage).

use std::time::Duration;

use stratus_cloud::{CloudDriver, LaunchRequest, conformance};
use stratus_ec2::{Ec2Cloud, Ec2Config, SERVER_TAG};
use stratus_types::ServerId;

const T: Duration = Duration::from_secs(20);

fn endpoint() -> String {
    std::env::var("STRATUS_TEST_EC2").expect(
        "STRATUS_TEST_EC2 is not set: run the tests with scripts/test.sh, which starts moto's EC2 server \
         (scripts/test-ec2.sh) and sets it",
    )
}

async fn cloud() -> Ec2Cloud {
    Ec2Cloud::new(Ec2Config {
        endpoint: Some(endpoint()),
        region: "us-east-1".into(),
        // moto takes any key; a real one is never needed here.
        key: Some(("AKIASTRATUSTEST".into(), "stratus-test-secret".into())),
    })
    .await
}

/// An AMI the endpoint has (moto ships a catalogue of public ones).
async fn some_ami(c: &Ec2Cloud) -> String {
    let out = c
        .client()
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("describe images");
    out.images()
        .iter()
        .filter_map(|i| i.image_id())
        .find(|id| id.starts_with("ami-"))
        .expect("an AMI")
        .to_string()
}

fn request(ami: &str) -> LaunchRequest {
    LaunchRequest {
        server: ServerId::new(),
        hostname: "conformance".into(),
        region: "us-east-1".into(),
        size: serde_json::from_value(serde_json::json!({ "name": "t3.micro", "cpus": 2, "memory": "1GiB" }))
            .expect("size"),
        native_image: ami.into(),
        user_data: br#"{"stratus_url":"http://127.0.0.1:1","server_id":"x","enrolment_token":"t"}"#.to_vec(),
        tags: vec![stratus_types::tag::Tag::parse("role:tier=web").expect("tag")],
        firewall: vec![],
        ssh_keys: vec![],
        metadata_tokens_required: true,
    }
}

#[tokio::test]
async fn passes_the_driver_conformance_suite() {
    let c = cloud().await;
    let ami = some_ami(&c).await;
    let eip = c
        .allocate_address()
        .await
        .expect("allocate an elastic IP")
        .expect("EC2 hands out its own");
    conformance::run_all(&c, &request(&ami), eip, T).await;
    c.release_address(eip).await.expect("release");
    c.release_address(eip).await.expect("releasing twice");
}

#[tokio::test]
async fn instances_carry_their_server_tags_and_their_own_security_group() {
    let c = cloud().await;
    let ami = some_ami(&c).await;
    let mut req = request(&ami);
    req.firewall = serde_json::from_value(serde_json::json!([{ "protocol": "tcp", "ports": "80" }])).expect("rules");
    let inst = c.launch(req.clone()).await.expect("launch");
    let raw = c
        .client()
        .describe_instances()
        .instance_ids(&inst.id)
        .send()
        .await
        .expect("describe");
    let i = &raw.reservations()[0].instances()[0];
    let tag = |k: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag(SERVER_TAG), Some(req.server.to_string()));
    assert_eq!(tag("Name").as_deref(), Some("conformance"));
    assert_eq!(tag("role:tier").as_deref(), Some("web"));
    let groups = i.security_groups();
    assert_eq!(groups.len(), 1, "one group of its own");
    let g = c
        .client()
        .describe_security_groups()
        .group_ids(groups[0].group_id().expect("id"))
        .send()
        .await
        .expect("group");
    let perms = g.security_groups()[0].ip_permissions();
    assert_eq!(
        (perms.len(), perms[0].from_port(), perms[0].to_port()),
        (1, Some(80), Some(80)),
        "{perms:?}"
    );
    // A retried launch of the same server is the same instance.
    assert_eq!(c.launch(req).await.expect("again").id, inst.id);
    c.terminate(&inst.id).await.expect("terminate");
}
