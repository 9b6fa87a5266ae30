//! A throttled EC2: a proxy on loopback, made by this test, in front of the EC2-compatible
//! endpoint (a moto of its own, STRATUS_TEST_EC2_LOAD, started by scripts/test.sh with
//! scripts/test-ec2.sh on another port, so its 200 servers do not slow the other EC2 tests down)
//! refuses a share of the calls with EC2's
//! `RequestLimitExceeded` (HTTP 503 and EC2's XML error body), carries out another share and
//! then loses the answer (a 503 after the work was done: what makes a careless retry launch a
//! second instance), and answers the rest slowly. 200 servers launched through it and then
//! terminated all converge, each server had exactly one instance, and nothing is left running.
//! Built with `--features ec2`.

#![cfg(feature = "ec2")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use common::TestServer;
use futures_util::FutureExt;
use reqwest::StatusCode;
use serde_json::json;
use stratus_store::{Query, TypedStore};
use stratus_types::server::{Server, ServerState};

const SERVERS: usize = 200;

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    seq: AtomicU64,
    refused: AtomicU64,
    lost: AtomicU64,
}

/// EC2's throttling answer.
fn throttled() -> Response {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>stratus-test</RequestID></Response>";
    Response::builder()
        .status(503)
        .header("content-type", "text/xml;charset=UTF-8")
        .body(Body::from(body))
        .expect("response")
}

async fn forward(p: &Proxy, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20).await.map_err(|e| e.to_string())?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = p.http.request(parts.method, format!("{}{path}", p.upstream));
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let answer = out.body(body).send().await.map_err(|e| e.to_string())?;
    let mut resp = Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        if k != "transfer-encoding" && k != "content-length" {
            resp = resp.header(k, v);
        }
    }
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    resp.body(Body::from(bytes)).map_err(|e| e.to_string())
}

/// 20 % refused, 10 % done but answered as refused, the rest delayed by 0-30 ms.
async fn proxy(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let n = p.seq.fetch_add(1, Ordering::Relaxed);
    let roll = n.wrapping_mul(2_654_435_761) % 100;
    if roll < 20 {
        p.refused.fetch_add(1, Ordering::Relaxed);
        return throttled();
    }
    if roll >= 30 {
        tokio::time::sleep(Duration::from_millis((n % 4) * 10)).await;
    }
    let answer = forward(&p, req).await;
    if roll < 30 {
        p.lost.fetch_add(1, Ordering::Relaxed);
        return throttled();
    }
    answer.unwrap_or_else(|e| Response::builder().status(502).body(Body::from(e)).expect("response"))
}

async fn start_proxy(upstream: &str) -> (String, Arc<Proxy>, tokio::task::JoinHandle<()>) {
    let p = Arc::new(Proxy {
        upstream: upstream.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
        seq: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        lost: AtomicU64::new(0),
    });
    let app = axum::Router::new().fallback(proxy).with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (url, p, task)
}

async fn servers(t: &TestServer) -> Vec<Server> {
    let app = &t.running.as_ref().expect("running").app;
    app.store.list_all::<Server>(&Query::default()).await.expect("servers")
}

/// Poll (bounded, generously) until every server is in `state`.
async fn all_in(t: &TestServer, state: ServerState) {
    for _ in 0..3600 {
        let all = servers(t).await;
        if all.len() == SERVERS && all.iter().all(|s| s.state == state) {
            return;
        }
        // Throttling must never strand a server.
        if let Some(s) = all.iter().find(|s| s.state == ServerState::Stranded) {
            panic!("server {} stranded: {:?}", s.name, s.stranded);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut by: HashMap<&str, usize> = HashMap::new();
    let all = servers(t).await;
    for s in &all {
        *by.entry(s.state.as_str()).or_default() += 1;
    }
    panic!("not every server {}: {by:?}", state.as_str());
}

/// Every instance moto has for these servers (any state), by server id: (instance, state).
async fn instances(moto: &stratus_ec2::Ec2Cloud, ids: &[String]) -> HashMap<String, Vec<(String, String)>> {
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for chunk in ids.chunks(100) {
        let mut pages = moto
            .client()
            .describe_instances()
            .filters(
                stratus_ec2::sdk::types::Filter::builder()
                    .name(format!("tag:{}", stratus_ec2::SERVER_TAG))
                    .set_values(Some(chunk.to_vec()))
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for i in page.expect("page").reservations().iter().flat_map(|r| r.instances()) {
                let server = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(stratus_ec2::SERVER_TAG))
                    .and_then(|t| t.value())
                    .unwrap_or_default()
                    .to_string();
                let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string());
                let id = i.instance_id().unwrap_or_default().to_string();
                out.entry(server).or_default().push((id, state.unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_servers_converge_through_a_throttling_ec2() {
    let endpoint = std::env::var("STRATUS_TEST_EC2_LOAD").expect(
        "STRATUS_TEST_EC2_LOAD is not set: run the tests with scripts/test.sh, which starts a moto for this test",
    );
    let (proxied, p, proxy_task) = start_proxy(&endpoint).await;
    let moto = stratus_ec2::Ec2Cloud::new(stratus_ec2::Ec2Config {
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        key: Some(("AKIASTRATUSTEST".into(), "moto-secret".into())),
    })
    .await;
    let ami = moto
        .client()
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("images")
        .images()[0]
        .image_id()
        .expect("id")
        .to_string();
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        c.boot_deadline = Duration::from_secs(3600);
    })
    .await;
    let (s, v) = t
        .post(
            "/credentials",
            json!({ "name": "aws-key", "value": "AKIASTRATUSTEST:moto-secret" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut file = format!(
        r#"
[[cloud]]
name = "aws"
driver = "ec2"
endpoint = "{proxied}"
regions = [{{ name = "us-east-1" }}]
sizes = [{{ name = "t3.micro", cpus = 2, memory = "1GiB" }}]
ec2 = {{ credential = "aws-key" }}

[[image]]
name = "base"
[image.clouds.aws]
native_id = "{ami}"
default_size = "t3.micro"

[[template]]
name = "web"
image = "base"

[deployment]
name = "throttled"
cloud = "aws"
"#
    );
    for i in 0..SERVERS {
        file += &format!("\n[[server]]\nname = \"web-{i}\"\ntemplate = \"web\"\n");
    }
    let (s, plan) = t.apply_toml(&file, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    // Whatever happens below, nothing of this test stays running in the shared endpoint.
    let outcome = std::panic::AssertUnwindSafe(converge(&t, &moto, &p))
        .catch_unwind()
        .await;
    let ids: Vec<String> = servers(&t).await.iter().map(|s| s.id.to_string()).collect();
    let running: Vec<String> = instances(&moto, &ids)
        .await
        .into_values()
        .flatten()
        .filter(|(_, state)| state == "running" || state == "pending")
        .map(|(id, _)| id)
        .collect();
    for chunk in running.chunks(100) {
        let _ = moto
            .client()
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await;
    }
    proxy_task.abort();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn converge(t: &TestServer, moto: &stratus_ec2::Ec2Cloud, p: &Proxy) {
    // Launched: every server booting (no agent will come), each with an instance.
    all_in(t, ServerState::Booting).await;
    let ids: Vec<String> = servers(t).await.iter().map(|s| s.id.to_string()).collect();
    let launched = instances(moto, &ids).await;
    assert_eq!(launched.len(), SERVERS, "an instance for every server");
    for (server, states) in &launched {
        assert_eq!(states.len(), 1, "server {server}: exactly one instance, got {states:?}");
    }

    // Terminated: every server, and every instance.
    for i in 0..SERVERS {
        let (s, v) = t.delete(&format!("/servers/throttled%2Fweb-{i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    all_in(t, ServerState::Terminated).await;
    let left = instances(moto, &ids).await;
    for (server, states) in &left {
        assert!(
            states.iter().all(|(_, s)| s == "terminated" || s == "shutting-down"),
            "server {server}: instances left running: {states:?}"
        );
    }
    eprintln!(
        "proxy: {} calls, {} refused, {} answers lost",
        p.seq.load(Ordering::Relaxed),
        p.refused.load(Ordering::Relaxed),
        p.lost.load(Ordering::Relaxed)
    );
    assert!(p.refused.load(Ordering::Relaxed) > 0 && p.lost.load(Ordering::Relaxed) > 0);
}
