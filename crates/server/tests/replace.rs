//! Replacement on the fake cloud: a successor takes over the elastic IP and the old server
//! goes; a successor that strands changes nothing for the old one.

mod common;

use common::TestServer;
use common::agent::operational;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_replacement_takes_the_address_and_the_old_server_goes() {
    let t = TestServer::start().await;
    t.example().await;
    let (s, v) = t.post("/addresses", json!({ "name": "vip", "cloud": "sandbox" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ip = v["ip"].as_str().unwrap().to_string();
    let (s, v) = t
        .post("/addresses/vip/associate", json!({ "server": "example/app-1" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, r) = t.post("/servers/example%2Fapp-1/replace", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["old"].as_str(), r["new"].as_str()),
        (Some("example/app-1"), Some("example/app-1-r2")),
        "{r}"
    );
    assert_eq!(r["addresses"], json!(["vip"]));
    let new = t.get("/servers/example%2Fapp-1-r2").await;
    assert_eq!(
        (new["state"].as_str(), new["public_ip"].as_str()),
        (Some("operational"), Some(ip.as_str())),
        "{new}"
    );
    assert!(
        new["tags"].to_string().contains("lb:pool=www"),
        "pool membership follows the tags: {new}"
    );
    t.wait_state("example/app-1", "terminated").await;
    // Again: the next name in the series.
    let (s, r) = t.post("/servers/example%2Fapp-1-r2/replace", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["new"], "example/app-1-r3");
    let audit = t.audit("action=server.replace").await;
    assert_eq!(audit.len(), 2, "{audit:?}");

    // Refused: a server that is not operational.
    let (s, v) = t.post("/servers/example%2Fapp-1/replace", json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}

#[tokio::test]
async fn a_stranded_replacement_leaves_the_old_server_serving() {
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        c.boot_deadline = std::time::Duration::from_secs(1);
    })
    .await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (e, _ws) = operational(&t, "app-9", "app").await;
    // No agent will come for the successor: it strands at its boot deadline.
    let (s, v) = t.post(&format!("/servers/{}/replace", e.id), json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("example/app-9-r2 is stranded") && msg.contains("keeps serving"),
        "{msg}"
    );
    assert_eq!(t.get(&format!("/servers/{}", e.id)).await["state"], "operational");
}
