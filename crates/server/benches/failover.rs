//! Failover: how long the agents of a killed replica take to be connected again, to the
//! surviving one, and how long until the survivor leads.
//!
//!     STRATUS_BENCH_AGENTS=1000 cargo bench -p stratus-server --bench failover
//!
//! Two replicas of the control plane (each in a runtime of its own, so killing one drops all its
//! tasks and sockets at once, as a crash would) share a PostgreSQL database (the tests' server,
//! `scripts/test-postgres.sh`, STRATUS_TEST_POSTGRES). A real HAProxy in TCP mode balances them,
//! health-checking every 200 ms. N simulated agents (fake cloud) enrol and connect through it,
//! then reconnect the way the real agent does: after a connection ends, a pause drawn uniformly
//! from 1-2 s (the agent's first backoff step), then a new `hello`. The leader is killed; the
//! figures are from the kill until the survivor holds 50 %, 90 %, 99 % and all of the killed
//! replica's agents, and until it leads.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stratus_agent_proto::{AgentMessage, Generation, Hello, PROTOCOL_VERSION, encode_agent};
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

[[template]]
name = "web"
image = "img"

[deployment]
name = "bench"
cloud = "bench"
"##;

struct Replica {
    rt: Option<tokio::runtime::Runtime>,
    running: Option<stratus_server::Running>,
}

impl Replica {
    fn start(data: &std::path::Path, port: u16, store: &str, public: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = stratus_server::Config::new(data, format!("127.0.0.1:{port}").parse().expect("addr"));
        c.store_url = Some(store.into());
        c.public_url = Some(public.into());
        c.simulate_agents = false;
        // Simulated or loopback agents of the fake cloud: their source is not the instance's.
        c.agent_source_check = false;
        c.boot_deadline = Duration::from_secs(3600);
        let running = rt.block_on(stratus_server::start(c)).expect("start");
        Self {
            rt: Some(rt),
            running: Some(running),
        }
    }

    fn app(&self) -> &stratus_server::app::App {
        &self.running.as_ref().expect("alive").app
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.running.take();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn main() {
    let n: usize = std::env::var("STRATUS_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bench_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = bench_rt.block_on(stratus_store::testing::TestDatabase::create());
    let dir = tempfile::tempdir().expect("tmp");
    let (pa, pb, plb) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  \
             timeout server 1h\n  retries 3\n  option redispatch\nfrontend fe\n  bind 127.0.0.1:{plb}\n  \
             default_backend be\nbackend be\n  balance roundrobin\n  \
             server a 127.0.0.1:{pa} check inter 200ms fall 1 rise 2\n  \
             server b 127.0.0.1:{pb} check inter 200ms fall 1 rise 2\n"
        ),
    )
    .expect("write");
    let mut haproxy = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy");
    let public = format!("http://127.0.0.1:{plb}");
    let (da, dbd) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = Replica::start(&da, pa, &db.url, &public);
    std::fs::create_dir_all(&dbd).expect("dir");
    std::fs::copy(da.join("master.key"), dbd.join("master.key")).expect("key");
    let mut b = Replica::start(&dbd, pb, &db.url, &public);
    let token = std::fs::read_to_string(da.join("admin.token"))
        .expect("token")
        .trim()
        .to_string();
    let base = format!("{public}/api/v1");
    let http = reqwest::Client::new();
    // HAProxy answers once it started and its health checks found a replica.
    bench_rt.block_on(async {
        for _ in 0..200 {
            if http
                .get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("HAProxy never answered");
    });
    bench_rt.block_on(async {
        let doc = stratus_api::file::parse(CATALOG, stratus_api::file::Format::Toml, "bench", None).expect("catalog");
        let r = http
            .post(format!("{base}/apply"))
            .bearer_auth(&token)
            .json(&json!({ "document": doc }))
            .send()
            .await
            .expect("apply");
        assert!(r.status().is_success());
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        let mut creates = vec![];
        for i in 0..n {
            let (h, b, t, sem) = (http.clone(), base.clone(), token.clone(), sem.clone());
            creates.push(tokio::spawn(async move {
                let _p = sem.acquire().await.expect("permit");
                let r = h
                    .post(format!("{b}/servers"))
                    .bearer_auth(&t)
                    .json(&json!({ "name": format!("s{i}"), "deployment": "bench", "template": "web" }))
                    .send()
                    .await
                    .expect("create");
                assert_eq!(r.status(), 201);
            }));
        }
        for c in creates {
            c.await.expect("create");
        }
    });
    // The leader launched them all on its fake cloud: their user-data is there.
    let leader_is_a = wait(Duration::from_secs(600), || {
        let booting = |r: &Replica| r.app().cluster.is_leader();
        if booting(&a) {
            Some(true)
        } else if booting(&b) {
            Some(false)
        } else {
            None
        }
    });
    let leader = if leader_is_a { &a } else { &b };
    let lrt = leader.rt.as_ref().expect("alive");
    let app = leader.app();
    let user_data: Vec<Value> = lrt.block_on(async {
        let driver = app
            .drivers
            .for_cloud(&*app.store, &"bench".parse().expect("name"))
            .await
            .expect("driver");
        let fake = driver
            .as_any()
            .downcast_ref::<stratus_cloud::fake::FakeCloud>()
            .expect("fake");
        let mut out = vec![];
        for _ in 0..6000 {
            let list = driver.list().await.expect("list");
            if list.len() >= n {
                for i in list {
                    let req = fake.request(&i.id).expect("request");
                    out.push(serde_json::from_slice(&req.user_data).expect("json"));
                }
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the leader did not launch {n} instances");
    });
    let t0 = Instant::now();
    for ud in user_data {
        bench_rt.spawn(simulated_agent(ud));
    }
    let connected = |r: &Replica| r.app().cluster.sessions_here();
    wait(Duration::from_secs(600), || {
        (connected(&a) + connected(&b) == n).then_some(())
    });
    println!(
        "{n} simulated agents enrolled and connected through HAProxy in {:.1} s: {} on the leader, {} on the other",
        t0.elapsed().as_secs_f64(),
        connected(leader),
        n - connected(leader)
    );
    std::thread::sleep(Duration::from_secs(2));
    let (dead, survivor) = if leader_is_a {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let before = survivor.app().cluster.sessions_here();
    let moving = n - before;
    let killed = Instant::now();
    dead.kill();
    let mut marks: Vec<(f64, f64)> = vec![(0.5, 0.0), (0.9, 0.0), (0.99, 0.0), (1.0, 0.0)];
    let mut led = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let back = survivor.app().cluster.sessions_here().saturating_sub(before);
        let at = killed.elapsed().as_secs_f64();
        for m in &mut marks {
            if m.1 == 0.0 && back as f64 >= (moving as f64 * m.0).ceil() {
                m.1 = at;
            }
        }
        if led.is_none() && survivor.app().cluster.is_leader() {
            led = Some(at);
        }
        if (back >= moving && led.is_some()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("killed the leader holding {moving} agents:");
    for (q, at) in &marks {
        println!("  {:>4.0} % of them on the survivor after {at:.2} s", q * 100.0);
    }
    println!("  the survivor leads after {:.2} s", led.unwrap_or(f64::NAN));
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    drop((a, b));
    drop(db);
}

fn wait<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Enrol once, then stay connected; after a connection ends, wait 1-2 s (the real agent's
/// first backoff step) and connect again.
async fn simulated_agent(ud: Value) {
    let url = ud["stratus_url"].as_str().expect("url").to_string();
    let http = reqwest::Client::new();
    let token = loop {
        let r = http
            .post(format!("{url}/api/v1/agent/enroll"))
            .json(&json!({ "server_id": ud["server_id"], "enrolment_token": ud["enrolment_token"] }))
            .send()
            .await;
        if let Ok(r) = r
            && r.status().is_success()
        {
            let v: Value = r.json().await.expect("json");
            break v["agent_token"].as_str().expect("agent token").to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let server: stratus_types::ServerId = ud["server_id"].as_str().expect("id").parse().expect("uuid");
    loop {
        let _ = connection(&url, &token, server).await;
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).expect("random");
        let jitter = u64::from(u16::from_le_bytes(b)) * 1000 / 65_535;
        tokio::time::sleep(Duration::from_millis(1000 + jitter)).await;
    }
}

async fn connection(url: &str, token: &str, server: stratus_types::ServerId) -> Result<(), String> {
    let ws_url = format!("{}/api/v1/agent/connect", url.replacen("http", "ws", 1));
    let mut req = ws_url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
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
    .map_err(|e| e.to_string())?;
    let mut beat = tokio::time::interval(Duration::from_secs(u64::from(
        stratus_agent_proto::DEFAULT_HEARTBEAT_SECS,
    )));
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => return Ok(()),
            },
            _ = beat.tick() => {
                let at = chrono::Utc::now();
                if ws.send(send(AgentMessage::Heartbeat { at })).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
