//! Fan-out: one operational script on every server of a fleet of simulated agents, through
//! rollouts with different concurrency limits.
//!
//!     STRATUS_BENCH_AGENTS=1000 cargo bench -p stratus-server --bench rollout
//!     STRATUS_BENCH_STORE=postgres STRATUS_BENCH_AGENTS=1000 cargo bench -p stratus-server --bench rollout
//!
//! The control plane runs in this process (fake cloud, its simulated agent off, SQLite on
//! disk). The agents run in a child process (this program again, with `--agents`): each one
//! enrols with its server's one-time token, keeps its WebSocket open, and answers every
//! `RunScript` at once with `run_started`, one output chunk and `run_finished` — so the figures
//! are the control plane's cost per run (store writes, the rollout driver, the gateway), not
//! the scripts'. Two processes because 10,000 connections need 20,000 descriptors on one
//! machine, over this kind's per-process limit.
//!
//! Knobs (environment): STRATUS_BENCH_AGENTS (default 1000), STRATUS_BENCH_CONCURRENCY (a
//! comma-separated list, default `10,100,1000`; values above the fleet are skipped).

#[path = "support/store.rs"]
mod store;

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stratus_agent_proto::{
    AgentMessage, ControlMessage, Generation, Hello, Outcome, Output, OutputStream, PROTOCOL_VERSION, RunFinished,
    decode_control, encode_agent,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CATALOG: &str = r##"
[[cloud]]
name = "bench"
driver = "fake"
regions = [{ name = "r1" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]

[[image]]
name = "img"
[image.clouds.bench]
native_id = "img-1"
default_size = "small"

[[script]]
name = "status"
frequency = "on-demand"
body = "#!/bin/sh\necho ok\n"

[[template]]
name = "web"
image = "img"
operational_scripts = ["status"]
default_tags = ["lb:pool=www"]

[deployment]
name = "bench"
cloud = "bench"
"##;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "--agents") {
        rt.block_on(agents(&args[i + 1], &args[i + 2]));
    } else {
        rt.block_on(control_plane());
    }
}

async fn control_plane() {
    let n = env_usize("STRATUS_BENCH_AGENTS", 1000);
    let concurrencies: Vec<usize> = std::env::var("STRATUS_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = stratus_server::Config::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.simulate_agents = false;
    // Simulated or loopback agents of the fake cloud: their source is not the instance's.
    config.agent_source_check = false;
    config.boot_deadline = Duration::from_secs(3600);
    let (_db, store) = store::choose(&mut config).await;
    let running = stratus_server::start(config).await.expect("start");
    let token = std::fs::read_to_string(&running.admin_token_file)
        .expect("token")
        .trim()
        .to_string();
    let base = format!("{}/api/v1", running.url);
    let http = reqwest::Client::new();
    let doc = stratus_api::file::parse(CATALOG, stratus_api::file::Format::Toml, "bench", None).expect("catalog");
    let r = http
        .post(format!("{base}/apply"))
        .bearer_auth(&token)
        .json(&json!({ "document": doc }))
        .send()
        .await
        .expect("apply");
    assert!(r.status().is_success(), "apply: {}", r.text().await.unwrap_or_default());
    println!("stratus rollout benchmark: {n} simulated agents, {store}");

    // The fleet: n servers, launched on the fake cloud, waiting for their agents.
    let t0 = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut creates = vec![];
    for i in 0..n {
        let (h, b, t, sem) = (http.clone(), base.clone(), token.clone(), sem.clone());
        creates.push(tokio::spawn(async move {
            let _p = sem.acquire().await.expect("permit");
            let body = json!({ "name": format!("s{i}"), "deployment": "bench", "template": "web" });
            let r = h
                .post(format!("{b}/servers"))
                .bearer_auth(&t)
                .json(&body)
                .send()
                .await
                .expect("create");
            assert_eq!(r.status(), 201);
        }));
    }
    for c in creates {
        c.await.expect("create");
    }
    let app = running.app.clone();
    wait_count(&app, "booting", n).await;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &"bench".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver
        .as_any()
        .downcast_ref::<stratus_cloud::fake::FakeCloud>()
        .expect("fake");
    let servers: Vec<stratus_types::server::Server> = stratus_store::TypedStore::list_all(
        &*app.store,
        &stratus_store::Query {
            state: Some("booting".into()),
            ..Default::default()
        },
    )
    .await
    .expect("list");
    let list = dir.path().join("agents.jsonl");
    let mut f = std::fs::File::create(&list).expect("agents file");
    for s in &servers {
        let req = fake
            .request(s.instance_id.as_deref().expect("instance"))
            .expect("request");
        f.write_all(&req.user_data).expect("write");
        f.write_all(b"\n").expect("write");
    }
    drop(f);
    let launched = t0.elapsed();
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--agents")
        .arg(&list)
        .arg(&running.url)
        .spawn()
        .expect("agents process");
    let t1 = Instant::now();
    wait_count(&app, "operational", n).await;
    println!(
        "fleet: {n} servers launched in {:.1} s; all agents enrolled, connected and operational {:.1} s later",
        launched.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );

    for conc in concurrencies.into_iter().filter(|c| *c <= n) {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/rollouts"))
            .bearer_auth(&token)
            .json(&json!({ "script": "status", "selector": "lb:pool=www", "concurrency": conc }))
            .send()
            .await
            .expect("rollout");
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let ro: Value = r.json().await.expect("json");
        let id = ro["id"].as_str().expect("id").to_string();
        let done = loop {
            let v: Value = http
                .get(format!("{base}/rollouts/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("show")
                .json()
                .await
                .expect("json");
            if v["finished_at"].is_string() {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let wall = t.elapsed();
        assert_eq!(done["status"], "succeeded", "{done}");
        println!(
            "rollout on {n} servers, concurrency {conc:>5}: {:>7.2} s  {:>7.0} runs/s",
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Wait until `want` live servers are in `state` (bounded: ten minutes).
async fn wait_count(app: &stratus_server::app::App, state: &str, want: usize) {
    for _ in 0..6000 {
        let q = stratus_store::Query {
            state: Some(state.into()),
            ..Default::default()
        };
        let have: Vec<stratus_types::server::Server> = stratus_store::TypedStore::list_all(&*app.store, &q)
            .await
            .expect("list");
        if have.len() >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {want} servers became {state}");
}

/// The child process: one simulated agent per line of `list` (user-data JSON).
async fn agents(list: &str, url: &str) {
    let text = std::fs::read_to_string(list).expect("agents file");
    let http = reqwest::Client::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = vec![];
    for line in text.lines() {
        let ud: Value = serde_json::from_str(line).expect("user-data");
        let (http, url, sem) = (http.clone(), url.to_string(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let token = {
                let _p = sem.acquire().await.expect("permit");
                let r = http
                    .post(format!("{url}/api/v1/agent/enroll"))
                    .json(&json!({ "server_id": ud["server_id"], "enrolment_token": ud["enrolment_token"] }))
                    .send()
                    .await
                    .expect("enrol");
                let v: Value = r.json().await.expect("json");
                v["agent_token"].as_str().expect("agent token").to_string()
            };
            let server = ud["server_id"].as_str().expect("id").parse().expect("uuid");
            agent(&url, &token, server).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn agent(url: &str, token: &str, server: stratus_types::ServerId) {
    let ws_url = format!("{}/api/v1/agent/connect", url.replacen("http", "ws", 1));
    let mut req = ws_url.into_client_request().expect("request");
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
    let send = |m: AgentMessage| Message::Text(encode_agent(&m).expect("encode").into());
    ws.send(send(AgentMessage::Hello(Hello {
        versions: vec![PROTOCOL_VERSION],
        agent_version: "bench".into(),
        server,
        boot_id: "bench".into(),
        last_generation: Generation::NONE,
        unacked: vec![],
    })))
    .await
    .expect("hello");
    let mut beat = tokio::time::interval(Duration::from_secs(u64::from(
        stratus_agent_proto::DEFAULT_HEARTBEAT_SECS,
    )));
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = beat.tick() => {
                let at = chrono::Utc::now();
                ws.send(send(AgentMessage::Heartbeat { at })).await.expect("heartbeat");
                continue;
            }
        };
        let Some(Ok(msg)) = msg else { return };
        let Message::Text(t) = msg else { continue };
        let now = chrono::Utc::now();
        if let ControlMessage::RunScript(r) = decode_control(t.as_str()).expect("decode") {
            for m in [
                AgentMessage::RunStarted {
                    run: r.run,
                    started_at: now,
                },
                AgentMessage::Output(Output {
                    run: r.run,
                    seq: 0,
                    stream: OutputStream::Stdout,
                    data: "ok\n".into(),
                    at: now,
                }),
                AgentMessage::RunFinished(RunFinished {
                    run: r.run,
                    outcome: Outcome::Exited,
                    exit_code: Some(0),
                    signal: None,
                    error: None,
                    finished_at: now,
                    output_chunks: 1,
                    output_bytes: 3,
                }),
            ] {
                ws.send(send(m)).await.expect("send");
            }
        }
    }
}
