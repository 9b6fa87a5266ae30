//! The agent gateway with a simulated agent (a WebSocket client speaking the protocol): boot to
//! operational, a failing boot script strands with its exit code and output, hostile messages.

mod common;

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stratus_agent_proto::{
    AgentMessage, ControlMessage, Generation, Hello, Outcome, Output, OutputStream, PROTOCOL_VERSION, RunFinished,
    decode_control, encode_agent,
};
use stratus_cloud::fake::FakeCloud;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn enrolled(t: &TestServer, name: &str) -> (String, String) {
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": name, "deployment": "example", "template": "app" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let server = t.wait_state(&id, "booting").await;
    let app = &t.running.as_ref().expect("running").app;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &"sandbox".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let req = fake
        .request(server["instance_id"].as_str().expect("instance"))
        .expect("request");
    let ud: Value = serde_json::from_slice(&req.user_data).expect("json");
    let (s, v) = t
        .call_as(
            None,
            Method::POST,
            "/agent/enroll",
            Some(json!({ "server_id": id, "enrolment_token": ud["enrolment_token"] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    (id, v["agent_token"].as_str().expect("token").to_string())
}

async fn connect(t: &TestServer, token: &str) -> Ws {
    let url = format!("{}/api/v1/agent/connect", t.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    tokio_tungstenite::connect_async(req).await.expect("connect").0
}

async fn send(ws: &mut Ws, msg: AgentMessage) {
    ws.send(Message::Text(encode_agent(&msg).expect("encode").into()))
        .await
        .expect("send");
}

async fn recv(ws: &mut Ws) -> ControlMessage {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Text(t))) => return decode_control(t.as_str()).expect("decode"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

fn hello(server: &str) -> AgentMessage {
    AgentMessage::Hello(Hello {
        versions: vec![PROTOCOL_VERSION],
        agent_version: "test-agent".into(),
        server: server.parse().expect("id"),
        boot_id: "boot-1".into(),
        last_generation: Generation::NONE,
        unacked: vec![],
    })
}

/// Handshake; returns the boot runs of the desired state.
async fn handshake(ws: &mut Ws, id: &str) -> Vec<stratus_agent_proto::ScriptRun> {
    send(ws, hello(id)).await;
    assert!(matches!(recv(ws).await, ControlMessage::Welcome(_)));
    match recv(ws).await {
        ControlMessage::DesiredState(d) => {
            assert_eq!(d.generation, Generation::FIRST);
            d.boot
        }
        other => panic!("expected desired state, got {other:?}"),
    }
}

async fn run(ws: &mut Ws, r: &stratus_agent_proto::ScriptRun, out: &str, code: i32) {
    let now = chrono::Utc::now();
    send(
        ws,
        AgentMessage::RunStarted {
            run: r.run,
            started_at: now,
        },
    )
    .await;
    send(
        ws,
        AgentMessage::Output(Output {
            run: r.run,
            seq: 0,
            stream: OutputStream::Stdout,
            data: out.into(),
            at: now,
        }),
    )
    .await;
    assert!(matches!(recv(ws).await, ControlMessage::AckOutput { seq: 0, .. }));
    // A repeat of the same chunk (a reconnecting agent) is acknowledged and stored once.
    send(
        ws,
        AgentMessage::Output(Output {
            run: r.run,
            seq: 0,
            stream: OutputStream::Stdout,
            data: out.into(),
            at: now,
        }),
    )
    .await;
    assert!(matches!(recv(ws).await, ControlMessage::AckOutput { seq: 0, .. }));
    send(
        ws,
        AgentMessage::RunFinished(RunFinished {
            run: r.run,
            outcome: Outcome::Exited,
            exit_code: Some(code),
            signal: None,
            error: None,
            finished_at: now,
            output_chunks: 1,
            output_bytes: out.len() as u64,
        }),
    )
    .await;
    assert!(matches!(recv(ws).await, ControlMessage::AckFinished { .. }));
}

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
    let (id, token) = enrolled(&t, "app-20").await;
    let mut ws = connect(&t, &token).await;
    let boot = handshake(&mut ws, &id).await;
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
    let (id, token) = enrolled(&t, "app-21").await;
    let mut ws = connect(&t, &token).await;
    let boot = handshake(&mut ws, &id).await;
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
    let (id_a, token_a) = enrolled(&t, "app-22").await;
    let (id_b, token_b) = enrolled(&t, "app-23").await;
    // Hello naming another server: refused.
    let mut ws = connect(&t, &token_a).await;
    send(&mut ws, hello(&id_b)).await;
    assert!(
        matches!(recv(&mut ws).await, ControlMessage::Refused(r) if r.reason == stratus_agent_proto::RefusedReason::WrongServer)
    );
    // Reports about another server's run: refused, and b's run is untouched.
    let mut wb = connect(&t, &token_b).await;
    let b_boot = handshake(&mut wb, &id_b).await;
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
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "bare-1", "deployment": "example", "template": "bare" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let server = t.wait_state(&id, "booting").await;
    let app = &t.running.as_ref().expect("running").app;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &"sandbox".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let ud: Value = serde_json::from_slice(
        &fake
            .request(server["instance_id"].as_str().expect("i"))
            .expect("req")
            .user_data,
    )
    .expect("json");
    let (s, v) = t
        .call_as(
            None,
            Method::POST,
            "/agent/enroll",
            Some(json!({ "server_id": id, "enrolment_token": ud["enrolment_token"] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut ws = connect(&t, v["agent_token"].as_str().expect("token")).await;
    assert!(handshake(&mut ws, &id).await.is_empty());
    t.wait_state(&id, "operational").await;
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
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "app-30", "deployment": "example", "template": "ops" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let server = t.wait_state(&id, "booting").await;
    let app = &t.running.as_ref().expect("running").app;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &"sandbox".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let ud: Value = serde_json::from_slice(
        &fake
            .request(server["instance_id"].as_str().expect("i"))
            .expect("req")
            .user_data,
    )
    .expect("json");
    let (s, v) = t
        .call_as(
            None,
            Method::POST,
            "/agent/enroll",
            Some(json!({ "server_id": id, "enrolment_token": ud["enrolment_token"] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut ws = connect(&t, v["agent_token"].as_str().expect("token")).await;
    assert!(handshake(&mut ws, &id).await.is_empty());
    t.wait_state(&id, "operational").await;
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
