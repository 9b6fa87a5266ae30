//! A simulated agent: a WebSocket client speaking the agent protocol, for gateway tests on the
//! fake cloud (its own simulated agent off).

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stratus_agent_proto::{
    AgentMessage, ControlMessage, DesiredState, Generation, Hello, Outcome, Output, OutputStream, PROTOCOL_VERSION,
    RunFinished, ScriptRun, Welcome, decode_control, encode_agent,
};
use stratus_cloud::fake::FakeCloud;
use stratus_types::RunId;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::TestServer;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An enrolled server: its id and agent credential.
pub struct Enrolled {
    pub id: String,
    pub token: String,
}

/// Launch a server of `template` in the example deployment; once it is booting, its id and
/// the user-data the orchestrator wrote for its instance.
pub async fn booting(t: &TestServer, name: &str, template: &str) -> (String, Value) {
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": name, "deployment": "example", "template": template }),
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
    (id, serde_json::from_slice(&req.user_data).expect("user-data is JSON"))
}

/// Launch a server of `template` in the example deployment and enrol an agent for it with the
/// token from its user-data.
pub async fn enrol(t: &TestServer, name: &str, template: &str) -> Enrolled {
    let (id, ud) = booting(t, name, template).await;
    let (s, v) = t
        .call_as(
            None,
            Method::POST,
            "/agent/enroll",
            Some(json!({ "server_id": id, "enrolment_token": ud["enrolment_token"] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    Enrolled {
        id,
        token: v["agent_token"].as_str().expect("token").to_string(),
    }
}

pub async fn connect(t: &TestServer, token: &str) -> Ws {
    let url = format!("{}/api/v1/agent/connect", t.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request().expect("request");
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    tokio_tungstenite::connect_async(req).await.expect("connect").0
}

pub async fn send(ws: &mut Ws, msg: AgentMessage) {
    ws.send(Message::Text(encode_agent(&msg).expect("encode").into()))
        .await
        .expect("send");
}

pub async fn recv(ws: &mut Ws) -> ControlMessage {
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

/// The next message that is not a heartbeat.
pub async fn recv_work(ws: &mut Ws) -> ControlMessage {
    loop {
        match recv(ws).await {
            ControlMessage::Heartbeat { .. } => continue,
            m => return m,
        }
    }
}

pub fn hello(server: &str, boot_id: &str, unacked: Vec<RunId>) -> AgentMessage {
    AgentMessage::Hello(Hello {
        versions: vec![PROTOCOL_VERSION],
        agent_version: "test-agent".into(),
        server: server.parse().expect("id"),
        boot_id: boot_id.into(),
        last_generation: Generation::NONE,
        unacked,
    })
}

/// Hello (boot `boot-1`, nothing unacknowledged); the welcome and the desired state.
pub async fn handshake(ws: &mut Ws, id: &str) -> DesiredState {
    greet(ws, hello(id, "boot-1", vec![])).await.1
}

/// Send a hello; the welcome and the desired state that follow.
pub async fn greet(ws: &mut Ws, hello: AgentMessage) -> (Welcome, DesiredState) {
    send(ws, hello).await;
    let welcome = match recv(ws).await {
        ControlMessage::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    match recv(ws).await {
        ControlMessage::DesiredState(d) => (welcome, d),
        other => panic!("expected desired state, got {other:?}"),
    }
}

pub fn output(run: RunId, seq: u64, data: &str) -> AgentMessage {
    AgentMessage::Output(Output {
        run,
        seq,
        stream: OutputStream::Stdout,
        data: data.into(),
        at: chrono::Utc::now(),
    })
}

pub fn finished(run: RunId, code: i32, chunks: u64, bytes: u64) -> AgentMessage {
    AgentMessage::RunFinished(RunFinished {
        run,
        outcome: Outcome::Exited,
        exit_code: Some(code),
        signal: None,
        error: None,
        finished_at: chrono::Utc::now(),
        output_chunks: chunks,
        output_bytes: bytes,
    })
}

pub fn started(run: RunId) -> AgentMessage {
    AgentMessage::RunStarted {
        run,
        started_at: chrono::Utc::now(),
    }
}

/// Play one run through: started, one chunk of output (sent twice, as a reconnecting agent
/// might: acknowledged both times, stored once), finished with `code`.
pub async fn run(ws: &mut Ws, r: &ScriptRun, out: &str, code: i32) {
    send(ws, started(r.run)).await;
    send(ws, output(r.run, 0, out)).await;
    assert!(matches!(recv_ack(ws).await, ControlMessage::AckOutput { seq: 0, .. }));
    send(ws, output(r.run, 0, out)).await;
    assert!(matches!(recv_ack(ws).await, ControlMessage::AckOutput { seq: 0, .. }));
    send(ws, finished(r.run, code, 1, out.len() as u64)).await;
    assert!(matches!(recv_ack(ws).await, ControlMessage::AckFinished { .. }));
}

/// The next message that is not a heartbeat or a desired state (a load balancer's agent gets
/// a new desired state whenever its pool changes, at any moment).
pub async fn recv_ack(ws: &mut Ws) -> ControlMessage {
    loop {
        match recv_work(ws).await {
            ControlMessage::DesiredState(_) => continue,
            m => return m,
        }
    }
}

/// Enrol, connect and boot a server of `template` (every boot run succeeds); the open
/// connection, operational.
pub async fn operational(t: &TestServer, name: &str, template: &str) -> (Enrolled, Ws) {
    let e = enrol(t, name, template).await;
    let mut ws = connect(t, &e.token).await;
    let desired = handshake(&mut ws, &e.id).await;
    for r in &desired.boot {
        run(&mut ws, r, &format!("ran {}\n", r.name), 0).await;
    }
    t.wait_state(&e.id, "operational").await;
    (e, ws)
}
