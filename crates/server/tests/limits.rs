//! Denial-of-service limits, through the real listener and real TCP clients: slow-header and
//! idle clients are cut, connections per client address and in total are capped while other
//! clients are still served; an agent that stops reading delays nobody else; one session per
//! agent credential, and a bounded number of them; file reports only for managed files.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestServer;
use common::agent::{connect, handshake, operational, recv_work};
use reqwest::StatusCode;
use serde_json::json;
use stratus_agent_proto::{AgentMessage, ControlMessage, RefusedReason};
use stratus_store::TypedStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: how long a test waits for something the server must do within a few seconds.
const PATIENCE: Duration = Duration::from_secs(60);

fn addr(t: &TestServer) -> SocketAddr {
    t.running.as_ref().expect("running").addr
}

/// A TCP connection to the API from `source` (a loopback address).
async fn dial(t: &TestServer, source: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind the source address");
    socket.connect(addr(t)).await.expect("connect")
}

/// Read until the server closes the connection (or PATIENCE runs out: then panic); what it sent.
async fn until_closed(stream: &mut TcpStream, what: &str) -> String {
    let mut got = vec![];
    let read = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{what}: the server never closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// One whole `GET /api/v1/health` on `stream`; the status line.
async fn health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = until_closed(stream, "a request with connection: close").await;
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_client_that_sends_half_a_header_or_nothing_or_idles_is_disconnected() {
    let t = TestServer::start_with(|c| c.limits.header_read_timeout = Duration::from_secs(2)).await;
    // Half a request head, then nothing.
    let mut half = dial(&t, "127.0.0.1").await;
    half.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .expect("write");
    // Nothing at all.
    let mut silent = dial(&t, "127.0.0.1").await;
    // A kept-alive connection idle after one answered request.
    let mut idle = dial(&t, "127.0.0.1").await;
    idle.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    // A head dribbled a byte at a time (each byte well within the timeout) is cut all the same.
    let mut dribble = dial(&t, "127.0.0.1").await;
    let dribbling = async {
        for b in b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if dribble.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    };
    let cut_while_dribbling = tokio::time::timeout(PATIENCE, dribbling).await.expect("bounded");
    assert!(
        cut_while_dribbling || until_closed(&mut dribble, "dribbled head").await.is_empty(),
        "a dribbled head is cut without an answer"
    );
    assert_eq!(
        until_closed(&mut half, "half a head").await,
        "",
        "no answer to half a head"
    );
    assert_eq!(until_closed(&mut silent, "a silent client").await, "");
    let answered = until_closed(&mut idle, "an idle kept-alive connection").await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // The server is still there for everyone else.
    assert_eq!(t.get("/health").await["status"], "ok");
}

#[tokio::test]
async fn a_client_that_sends_a_head_and_then_no_body_or_part_of_one_is_disconnected() {
    let t = TestServer::start_with(|c| c.limits.header_read_timeout = Duration::from_secs(2)).await;
    let token = t.token.clone();
    let (s, v) = t.post("/buckets", json!({ "name": "uploads" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let cases: Vec<(&str, String, &[u8])> = vec![
        // No credential needed, and the body is read before any check.
        (
            "enrolment, no body",
            "POST /api/v1/agent/enroll HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n".into(),
            b"",
        ),
        ("enrolment, part of a body", "POST /api/v1/agent/enroll HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n".into(), b"{\"token\": \"a"),
        // A chunked body that stops after its first chunk.
        (
            "enrolment, chunked",
            "POST /api/v1/agent/enroll HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            b"2\r\n{\"\r\n",
        ),
        // An authenticated route, and an artifact upload (large bodies: idle time, not total).
        (
            "a server creation",
            format!("POST /api/v1/servers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"),
            b"{",
        ),
        (
            "an artifact upload",
            format!("PUT /api/v1/buckets/uploads/object?key=big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/octet-stream\r\ncontent-length: 5000000\r\n\r\n"),
            b"some bytes",
        ),
    ];
    let mut held = vec![];
    for (what, head, body) in &cases {
        let mut stream = dial(&t, "127.0.0.1").await;
        stream.write_all(head.as_bytes()).await.expect("write the head");
        stream.write_all(body).await.expect("write part of the body");
        held.push((what, stream));
    }
    for (what, mut stream) in held {
        let answer = until_closed(&mut stream, what).await;
        assert!(!answer.starts_with("HTTP/1.1 2"), "{what}: {answer}");
    }
    // The server is still there for everyone else.
    assert_eq!(t.get("/health").await["status"], "ok");
}

#[tokio::test]
async fn connections_per_client_address_are_capped_and_other_clients_still_served() {
    let t = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 4;
        // Held connections must not time out while the test holds them.
        c.limits.header_read_timeout = Duration::from_secs(600);
    })
    .await;
    let mut held = vec![];
    for _ in 0..4 {
        held.push(dial(&t, "127.0.0.1").await);
    }
    // The fifth from the same address: refused with 503 and closed, nothing read from it.
    let mut fifth = dial(&t, "127.0.0.1").await;
    let refused = until_closed(&mut fifth, "a connection over the cap").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // Another client address is served meanwhile.
    let mut other = dial(&t, "127.0.0.2").await;
    assert_eq!(health(&mut other).await, "HTTP/1.1 200 OK");
    // One of the held connections goes: its place is free again (bounded retries: the server
    // notices the close asynchronously).
    drop(held.pop());
    let mut served = false;
    for _ in 0..200 {
        let mut again = dial(&t, "127.0.0.1").await;
        if health(&mut again).await == "HTTP/1.1 200 OK" {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a freed place is given to the next connection");
}

#[tokio::test]
async fn connections_in_total_are_capped() {
    let t = TestServer::start_with(|c| {
        c.limits.max_connections_per_ip = 0;
        c.limits.max_connections = 3;
        c.limits.header_read_timeout = Duration::from_secs(600);
    })
    .await;
    let _held = [
        dial(&t, "127.0.0.1").await,
        dial(&t, "127.0.0.2").await,
        dial(&t, "127.0.0.3").await,
    ];
    let mut fourth = dial(&t, "127.0.0.4").await;
    let refused = until_closed(&mut fourth, "a connection over the total").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
}

/// The example applied, agents not simulated, and a template `ops` without boot scripts whose
/// operational script `big` has a 1 MB body (a few of them fill an agent's socket buffers).
async fn with_ops(change: impl FnOnce(&mut stratus_server::Config)) -> TestServer {
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        change(c);
    })
    .await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let body = format!("#!/bin/sh\n# {}\necho big\n", "x".repeat(1_000_000));
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "big", "frequency": "on-demand", "body": body }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "ops", "image": "debian-12", "size": "small", "operational_scripts": ["big"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    t
}

/// The next desired state whose logins satisfy `want`.
async fn next_logins(
    ws: &mut common::agent::Ws,
    want: impl Fn(&stratus_agent_proto::Logins) -> bool,
) -> stratus_agent_proto::DesiredState {
    loop {
        if let ControlMessage::DesiredState(d) = recv_work(ws).await
            && d.logins.as_ref().is_some_and(&want)
        {
            return d;
        }
    }
}

#[tokio::test]
async fn an_agent_that_stops_reading_delays_nobody_and_a_revocation_reaches_the_others() {
    let t = with_ops(|_| {}).await;
    let (stalled, _stalled_ws) = operational(&t, "stall-1", "ops").await;
    let (_ok, mut ok_ws) = operational(&t, "ok-1", "ops").await;
    let (s, v) = t
        .post("/users", json!({ "name": "alice", "roles": ["server_login:example"] }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/users/alice/keys",
            json!({ "public_key": common::ed25519_key(7, "alice") }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    next_logins(&mut ok_ws, |l| l.accounts.iter().any(|a| a.name == "alice")).await;

    // The stalled agent reads nothing from here on. Scripts pushed to it fill its socket and
    // then its queue; no API call may wait on it: the session is closed and the run is
    // recorded as failed (409, not connected) instead.
    let mut closed = false;
    for i in 0..400 {
        let call = t.post("/runs", json!({ "script": "big", "server": stalled.id }));
        let (s, v) = tokio::time::timeout(PATIENCE, call)
            .await
            .unwrap_or_else(|_| panic!("run {i}: a push to an agent that stopped reading held up the API call"));
        if s == StatusCode::CONFLICT {
            assert!(common::error_text(&v).contains("not connected"), "{v}");
            closed = true;
            break;
        }
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    assert!(closed, "the stalled agent's session was never closed");

    // A revocation pushed to every agent reaches the one that reads, promptly.
    let revoke = t.put("/users/alice", json!({ "name": "alice", "roles": [] }));
    let (s, v) = tokio::time::timeout(PATIENCE, revoke)
        .await
        .expect("the revocation is not held up");
    assert!(s.is_success(), "{v}");
    tokio::time::timeout(
        PATIENCE,
        next_logins(&mut ok_ws, |l| l.accounts.iter().all(|a| a.name != "alice")),
    )
    .await
    .expect("the reading agent got the revocation");
    let app = t.running.as_ref().expect("running").app.clone();
    assert!(!app.cluster.holds(stalled.id.parse().expect("id")));
}

#[tokio::test]
async fn a_second_connection_of_an_agent_replaces_the_first_and_sessions_are_bounded() {
    let t = with_ops(|c| c.max_agent_sessions = 2).await;
    let (a, mut first) = operational(&t, "dup-1", "ops").await;
    let (_b, _b_ws) = operational(&t, "dup-2", "ops").await;
    // The same credential again, with the hub full: allowed, as it replaces the first.
    let mut second = connect(&t, &a.token).await;
    handshake(&mut second, &a.id).await;
    // The first keeps beating (so no heartbeat timeout ends it): the server closes it anyway.
    let ended = tokio::time::timeout(PATIENCE, async {
        use futures_util::StreamExt;
        loop {
            let beat = AgentMessage::Heartbeat { at: chrono::Utc::now() };
            let frame = stratus_agent_proto::encode_agent(&beat).expect("encode");
            if futures_util::SinkExt::send(&mut first, tokio_tungstenite::tungstenite::Message::Text(frame.into()))
                .await
                .is_err()
            {
                return;
            }
            let answer = tokio::time::timeout(Duration::from_secs(1), first.next()).await;
            if let Ok(None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) = answer {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first connection is closed");
    // Pushes go to the newer connection.
    let (s, v) = t.post("/runs", json!({ "script": "big", "server": a.id })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    match recv_work(&mut second).await {
        ControlMessage::RunScript(r) => assert_eq!(r.run.to_string(), v["id"].as_str().expect("id")),
        other => panic!("expected the run, got {other:?}"),
    }
    // A third agent while two sessions are held: refused before the upgrade.
    let c = common::agent::enrol(&t, "dup-3", "ops").await;
    let url = format!("{}/api/v1/agent/connect", t.url.replacen("http", "ws", 1));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).expect("request");
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", c.token).parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        Err(e) => panic!("expected 503, got {e}"),
        Ok(_) => panic!("a third session was accepted over the bound"),
    }
}

#[tokio::test]
async fn file_reports_are_kept_for_managed_files_only() {
    let t = with_ops(|_| {}).await;
    let (a, mut ws) = operational(&t, "files-1", "ops").await;
    let app = t.running.as_ref().expect("running").app.clone();
    let record = || async {
        app.store
            .get_as::<stratus_server::app::agents::AgentRecord>(&a.id)
            .await
            .expect("store")
            .expect("record")
    };
    let before = record().await;
    // A server of `ops` manages no file: a report on any path is ignored, nothing recorded, and
    // the session stays up (the report can race a template change that dropped the file).
    common::agent::send(
        &mut ws,
        AgentMessage::FileStatus {
            path: "/etc/anything-0".into(),
            sha256: "0".repeat(64),
            applied: true,
            error: Some("e".repeat(4000)),
        },
    )
    .await;
    let (s, v) = t.post("/runs", json!({ "script": "big", "server": a.id })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    match recv_work(&mut ws).await {
        ControlMessage::RunScript(r) => assert_eq!(r.run.to_string(), v["id"].as_str().expect("id")),
        other => panic!("expected the run on the same session, got {other:?}"),
    }
    let mid = record().await;
    assert!(mid.files.is_empty(), "{:?}", mid.files);
    assert_eq!(before.revision, mid.revision, "the record is untouched");
    // Oversized: refused by the protocol's limits before anything is looked at.
    // Sent as JSON as it is: the test client's encoder refuses it too.
    let oversized = AgentMessage::FileStatus {
        path: format!("/etc/{}", "p".repeat(5000)),
        sha256: "0".repeat(64),
        applied: false,
        error: None,
    };
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::Text(serde_json::to_string(&oversized).expect("json").into()),
    )
    .await
    .expect("send");
    assert!(matches!(
        recv_work(&mut ws).await,
        ControlMessage::Refused(r) if r.reason == RefusedReason::ProtocolError
    ));
    let after = record().await;
    assert!(after.files.is_empty(), "{:?}", after.files);
}

#[tokio::test]
async fn output_chunks_are_stored_beside_the_run_without_rewriting_it() {
    use common::agent::{finished, output, recv_ack, send, started};
    let t = with_ops(|_| {}).await;
    let (a, mut ws) = operational(&t, "out-1", "ops").await;
    let (s, v) = t.post("/runs", json!({ "script": "big", "server": a.id })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let r = match recv_work(&mut ws).await {
        ControlMessage::RunScript(r) => r,
        other => panic!("expected the run, got {other:?}"),
    };
    let app = t.running.as_ref().expect("running").app.clone();
    let stored = || async {
        app.store
            .get_as::<stratus_types::run::Run>(&r.run.to_string())
            .await
            .expect("store")
            .expect("run")
    };
    send(&mut ws, started(r.run)).await;
    let chunk = |seq: u64| format!("chunk {seq:03} {}\n", "o".repeat(60_000));
    let chunks = 40u64;
    let mut bytes = 0;
    let mut before = None;
    for seq in 0..chunks {
        send(&mut ws, output(r.run, seq, &chunk(seq))).await;
        assert!(matches!(recv_ack(&mut ws).await, ControlMessage::AckOutput { seq: s, .. } if s == seq));
        bytes += chunk(seq).len() as u64;
        if seq == 0 {
            // Reports are handled in order: the run is `running` by now.
            before = Some(stored().await);
        }
        if seq == 5 {
            // A resent chunk is acknowledged and stored once.
            send(&mut ws, output(r.run, 3, &chunk(3))).await;
            assert!(matches!(
                recv_ack(&mut ws).await,
                ControlMessage::AckOutput { seq: 3, .. }
            ));
        }
    }
    let before = before.expect("seen");
    let after = stored().await;
    assert_eq!(
        (after.revision, after.output.len()),
        (before.revision, 0),
        "output chunks do not rewrite the run's record"
    );
    // Through the API: the tail, within the run's cap, in order, once each.
    let shown = t.get(&format!("/runs/{}", r.run)).await;
    let text = shown["output"].as_str().expect("output");
    assert!(text.len() <= stratus_types::run::RUN_OUTPUT_MAX, "{}", text.len());
    assert!(text.ends_with(&chunk(chunks - 1)), "the newest output is kept");
    assert_eq!(shown["output_truncated"], true);
    assert_eq!(shown["output_seq"], chunks);
    let firsts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("chunk "))
        .filter_map(|l| l.get(..9))
        .collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(firsts, sorted, "in order, once each");
    send(&mut ws, finished(r.run, 0, chunks, bytes)).await;
    assert!(matches!(recv_ack(&mut ws).await, ControlMessage::AckFinished { .. }));
    let done = t.get(&format!("/runs/{}", r.run)).await;
    assert_eq!(done["status"], "succeeded", "{}", done["status"]);
    assert!(done["output"].as_str().expect("output").ends_with(&chunk(chunks - 1)));
}
