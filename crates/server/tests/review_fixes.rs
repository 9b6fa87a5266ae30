//! Behaviours added after review: no instance left behind, runtime tags survive a re-apply,
//! plain text cannot reach a secret input from any level, unavailable drivers are refused.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use stratus_types::Name;

#[tokio::test]
async fn terminating_at_once_leaves_no_instance_running() {
    let t = TestServer::start().await;
    t.example().await;
    for i in 0..5 {
        let (s, v) = t
            .post(
                "/servers",
                json!({"name": format!("burst-{i}"), "deployment": "example", "template": "app"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        // Terminate while the orchestrator may be launching it.
        let (s, v) = t.delete(&server_path(&format!("example/burst-{i}"))).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    for i in 0..5 {
        t.wait_state(&format!("example/burst-{i}"), "terminated").await;
    }
    let app = &t.running.as_ref().expect("running").app;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &Name::parse("sandbox").expect("name"))
        .await
        .expect("driver");
    let servers = t.list_all("/servers?all=true").await;
    let burst_ids: Vec<&str> = servers
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("burst-")))
        .filter_map(|s| s["id"].as_str())
        .collect();
    for inst in driver.list().await.expect("list") {
        if burst_ids.contains(&inst.server.to_string().as_str()) {
            assert_eq!(
                inst.state,
                stratus_cloud::InstanceState::Terminated,
                "instance {} left running",
                inst.id
            );
        }
    }
}

#[tokio::test]
async fn reapplying_keeps_tags_added_at_run_time() {
    let t = TestServer::start().await;
    t.example().await;
    t.wait_state("example/app-1", "operational").await;
    let (s, v) = t
        .post(
            &format!("{}/tags", server_path("example/app-1")),
            json!({"add": ["vote:grow=yes"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, plan) = t.apply_toml(EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let v = t.get(&server_path("example/app-1")).await;
    let tags: Vec<&str> = v["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(
        tags.contains(&"vote:grow=yes") && tags.contains(&"lb:pool=www"),
        "{tags:?}"
    );
}

#[tokio::test]
async fn plain_text_cannot_fill_a_secret_input_from_the_deployment() {
    let t = TestServer::start().await;
    t.example().await;
    let before = t.get("/deployments/example").await;
    let mut spec = json!({"name": "example", "cloud": "sandbox", "inputs": {"STATS_PASSWORD": "hunter2-plain"}});
    let (s, v) = t.put("/deployments/example", spec.clone()).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    let text = error_text(&v);
    assert!(
        text.contains("deployment.inputs.stats_password") && text.contains("cannot fill"),
        "{v}"
    );
    assert!(
        !v.to_string().contains("hunter2-plain"),
        "the refused plain text is not echoed: {v}"
    );
    assert_eq!(t.get("/deployments/example").await, before, "nothing changed");
    spec["inputs"] = json!({"STATS_PASSWORD": "cred:lb-stats"});
    let (s, v) = t.put("/deployments/example", spec).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn clouds_with_drivers_not_in_this_build_are_refused() {
    let t = TestServer::start().await;
    let (s, v) = t
        .post(
            "/clouds",
            json!({"name": "aws", "driver": "ec2", "regions": [{"name": "eu-west-1"}], "sizes": [{"name": "t3.micro", "cpus": 2, "memory": "1GiB"}]}),
        )
        .await;
    if cfg!(feature = "ec2") {
        // Built with the EC2 driver: the cloud is declared (reaching it is the driver's job).
        assert_eq!(s, StatusCode::CREATED, "{v}");
        return;
    }
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(error_text(&v).contains("not part of this build"), "{v}");
    assert!(error_text(&v).contains("--features ec2"), "the error says how: {v}");
    assert!(t.names("/clouds").await.is_empty());
}

#[tokio::test]
async fn body_errors_name_the_field_in_fields() {
    let t = TestServer::start().await;
    let (s, v) = t
        .post(
            "/servers",
            json!({"name": "a", "deployment": "d", "template": "t", "tags": ["ok:x=1", "bad"]}),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert_eq!(error_fields(&v), ["tags[1]"], "{v}");
    let (s, v) = t
        .post(
            "/scripts",
            json!({"name": "x", "body": "true", "frequncy": "every-boot"}),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(error_text(&v).contains("unknown field `frequncy`"), "{v}");
}
