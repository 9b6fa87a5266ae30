//! The agent gateway with a simulated agent (a WebSocket client speaking the protocol): boot to
//! operational, a failing boot script strands with its exit code and output, hostile messages.

mod common;

use common::TestServer;
use common::agent::{connect, enrol, handshake, hello, recv, run, send};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::json;
use stratus_agent_proto::{AgentMessage, ControlMessage, Generation};
use tokio_tungstenite::tungstenite::Message;

async fn start() -> TestServer {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    t
}

#[tokio::test]
async fn boot_scripts_reported_by_the_agent_make_the_server_operational() {
    let t = start().await;
    let common::agent::Enrolled { id, token } = enrol(&t, "app-20", "app").await;
    let mut ws = connect(&t, &token).await;
    let desired = handshake(&mut ws, &id).await;
    assert_eq!(desired.generation, Generation::FIRST);
    let boot = desired.boot;
    assert!(!boot.is_empty(), "the template has boot scripts");
    for r in &boot {
        run(&mut ws, r, &format!("ran {}\n", r.name), 0).await;
    }
    let s = t.wait_state(&id, "operational").await;
    assert_eq!(s["state"], "operational");
    let runs = t.get(&format!("/runs?server={id}")).await;
    let items = runs["items"].as_array().expect("items");
    assert_eq!(items.len(), boot.len());
    for r in items {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(
            r["output"],
            format!("ran {}\n", r["script"].as_str().expect("name")),
            "stored once"
        );
    }
}

#[tokio::test]
async fn a_failing_boot_script_strands_the_server_with_its_exit_code_and_output() {
    let t = start().await;
    let common::agent::Enrolled { id, token } = enrol(&t, "app-21", "app").await;
    let mut ws = connect(&t, &token).await;
    let boot = handshake(&mut ws, &id).await.boot;
    run(&mut ws, &boot[0], "E: unable to locate package\n", 100).await;
    let s = t.wait_state(&id, "stranded").await;
    assert_eq!(s["stranded"]["exit_code"], 100, "{s}");
    assert_eq!(s["stranded"]["step"], boot[0].name.as_str());
    assert!(
        s["stranded"]["output_tail"]
            .as_str()
            .is_some_and(|o| o.contains("unable to locate"))
    );
}

#[tokio::test]
async fn an_agent_cannot_speak_for_another_server_or_send_garbage() {
    let t = start().await;
    let common::agent::Enrolled {
        id: id_a,
        token: token_a,
    } = enrol(&t, "app-22", "app").await;
    let common::agent::Enrolled {
        id: id_b,
        token: token_b,
    } = enrol(&t, "app-23", "app").await;
    // Hello naming another server: refused.
    let mut ws = connect(&t, &token_a).await;
    send(&mut ws, hello(&id_b, "boot-1", vec![])).await;
    assert!(
        matches!(recv(&mut ws).await, ControlMessage::Refused(r) if r.reason == stratus_agent_proto::RefusedReason::WrongServer)
    );
    // Reports about another server's run: refused, and b's run is untouched.
    let mut wb = connect(&t, &token_b).await;
    let b_boot = handshake(&mut wb, &id_b).await.boot;
    let mut wa = connect(&t, &token_a).await;
    handshake(&mut wa, &id_a).await;
    send(
        &mut wa,
        AgentMessage::RunStarted {
            run: b_boot[0].run,
            started_at: chrono::Utc::now(),
        },
    )
    .await;
    assert!(matches!(recv(&mut wa).await, ControlMessage::Refused(_)));
    let b_run = t.get(&format!("/runs/{}", b_boot[0].run)).await;
    assert_eq!(b_run["status"], "queued", "{b_run}");
    // A malformed frame: refused with a clear reason.
    let mut wa = connect(&t, &token_a).await;
    wa.send(Message::Text("{\"type\":\"hello\",\"versions\":\"x\"}".into()))
        .await
        .expect("send");
    match recv(&mut wa).await {
        ControlMessage::Refused(r) => assert_eq!(r.reason, stratus_agent_proto::RefusedReason::ProtocolError),
        other => panic!("{other:?}"),
    }
    // No credential, a user's token: no upgrade.
    let url = format!("{}/api/v1/agent/connect", t.url.replacen("http", "ws", 1));
    assert!(tokio_tungstenite::connect_async(url.as_str()).await.is_err());
    assert_eq!(t.get(&format!("/servers/{id_b}")).await["state"], "booting");
}

#[tokio::test]
async fn a_server_without_boot_scripts_is_operational_once_its_agent_connects() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "bare", "image": "debian-12", "size": "small" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let e = enrol(&t, "bare-1", "bare").await;
    let mut ws = connect(&t, &e.token).await;
    assert!(handshake(&mut ws, &e.id).await.boot.is_empty());
    t.wait_state(&e.id, "operational").await;
}

#[tokio::test]
async fn an_operational_script_reaches_the_connected_agent_and_its_output_is_stored() {
    let t = start().await;
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "status", "frequency": "on-demand", "body": "#!/bin/sh\necho ok\n" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "ops", "image": "debian-12", "size": "small", "operational_scripts": ["status"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (common::agent::Enrolled { id, .. }, mut ws) = common::agent::operational(&t, "app-30", "ops").await;
    let script = "status";

    // Not offered by the template: a clear error, nothing sent.
    let (s, v) = t
        .post("/runs", json!({ "script": "no-such-script", "server": id }))
        .await;
    common::assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");

    let (s, v) = t.post("/runs", json!({ "script": script, "server": id })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let run_id = v["id"].as_str().expect("run").to_string();
    let pushed = match recv(&mut ws).await {
        ControlMessage::RunScript(r) => r,
        other => panic!("expected the script, got {other:?}"),
    };
    assert_eq!(pushed.run.to_string(), run_id);
    assert_eq!(pushed.phase, stratus_types::run::Phase::Operational);
    run(&mut ws, &pushed, "status: all good\n", 0).await;
    let done = t.get(&format!("/runs/{run_id}")).await;
    assert_eq!(
        (done["status"].as_str(), done["output"].as_str()),
        (Some("succeeded"), Some("status: all good\n")),
        "{done}"
    );
    assert_eq!(done["requested_by"], "admin");
    assert!(
        t.audit("action=run.start")
            .await
            .iter()
            .any(|e| e["target"] == "server/example/app-30")
    );

    // The agent goes away: a new run fails at once, saying why, and is recorded.
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, v) = t.post("/runs", json!({ "script": script, "server": id })).await;
    common::assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
    assert!(common::error_text(&v).contains("not connected"), "{v}");
}
