//! API throughput: creating servers and listing 10,000 of them, on an in-process control plane
//! with its SQLite store on disk, or PostgreSQL.
//!
//!     cargo bench -p stratus-server --bench api
//!     STRATUS_BENCH_STORE=postgres cargo bench -p stratus-server --bench api
//!
//! Knobs (environment): STRATUS_BENCH_SERVERS (default 10000), STRATUS_BENCH_CONCURRENCY
//! (default 16). The orchestrator is off so the figures are the API and store alone; clients
//! are on the same machine over loopback and compete for the same 2 cores.

#[path = "support/store.rs"]
mod store;

use std::time::{Duration, Instant};

use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn report(what: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    let n = lat.len();
    let pct = |p: f64| lat[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
    println!(
        "{what:<44} {n:>6} requests  {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        n as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[n - 1].as_secs_f64() * 1e3,
    );
}

const CATALOG: &str = r#"
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
name = "boot"
frequency = "per-instance"
body = "true"

[[template]]
name = "web"
image = "img"
boot_scripts = ["boot"]
default_tags = ["lb:pool=www"]

[deployment]
name = "bench"
cloud = "bench"
"#;

/// Run `total` requests made by `make(i)` with `conc` in flight; return each latency and the wall time.
async fn drive<F, Fut>(total: usize, conc: usize, make: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let make = std::sync::Arc::new(make);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = vec![];
    for _ in 0..conc {
        let (make, next) = (make.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = vec![];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let t = Instant::now();
                make(i).await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = vec![];
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    (all, start.elapsed())
}

#[tokio::main]
async fn main() {
    let servers = env_usize("STRATUS_BENCH_SERVERS", 10_000);
    let conc = env_usize("STRATUS_BENCH_CONCURRENCY", 16);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = stratus_server::Config::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.reconcile = false;
    let (_db, store) = store::choose(&mut config).await;
    let running = stratus_server::start(config).await.expect("start");
    let token = std::fs::read_to_string(&running.admin_token_file)
        .expect("token")
        .trim()
        .to_string();
    let base = format!("{}/api/v1", running.url);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()
        .expect("client");

    let doc = stratus_api::file::parse(CATALOG, stratus_api::file::Format::Toml, "bench", None).expect("catalog");
    let r = http
        .post(format!("{base}/apply"))
        .bearer_auth(&token)
        .json(&json!({"document": doc}))
        .send()
        .await
        .expect("apply");
    assert!(r.status().is_success(), "apply: {}", r.text().await.unwrap_or_default());

    println!(
        "stratus API benchmark: {servers} servers, {conc} concurrent clients, {store} ({})",
        dir.path().display()
    );
    let (h, t, b) = (http.clone(), token.clone(), base.clone());
    let (lat, wall) = drive(servers, conc, move |i| {
        let (h, t, b) = (h.clone(), t.clone(), b.clone());
        async move {
            let body = json!({"name": format!("s{i}"), "deployment": "bench", "template": "web"});
            let r = h
                .post(format!("{b}/servers"))
                .bearer_auth(&t)
                .json(&body)
                .send()
                .await
                .expect("create");
            assert_eq!(r.status(), 201, "create s{i}");
        }
    })
    .await;
    report("POST /servers (create)", lat, wall);

    for (what, limit) in [
        ("GET /servers?limit=100 (first page)", 100),
        ("GET /servers?limit=1000 (first page)", 1000),
    ] {
        let rounds = if limit == 100 { 2000 } else { 200 };
        let (h, t, b) = (http.clone(), token.clone(), base.clone());
        let (lat, wall) = drive(rounds, conc, move |_| {
            let (h, t, b) = (h.clone(), t.clone(), b.clone());
            async move {
                let r = h
                    .get(format!("{b}/servers?limit={limit}"))
                    .bearer_auth(&t)
                    .send()
                    .await
                    .expect("list");
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.expect("body");
            }
        })
        .await;
        report(what, lat, wall);
    }

    // Whole listing: page through every server, one client, repeated.
    let mut lat = vec![];
    let start = Instant::now();
    for _ in 0..10 {
        let t0 = Instant::now();
        let mut after: Option<String> = None;
        let mut count = 0;
        loop {
            let mut url = format!("{base}/servers?limit=1000");
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let v: serde_json::Value = http
                .get(url)
                .bearer_auth(&token)
                .send()
                .await
                .expect("page")
                .json()
                .await
                .expect("json");
            count += v["items"].as_array().map_or(0, Vec::len);
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        assert_eq!(count, servers);
        lat.push(t0.elapsed());
    }
    report(
        &format!("list all {servers} servers (pages of 1000)"),
        lat,
        start.elapsed(),
    );

    let (h, t, b) = (http.clone(), token.clone(), base.clone());
    let (lat, wall) = drive(2000, conc, move |i| {
        let (h, t, b) = (h.clone(), t.clone(), b.clone());
        async move {
            let r = h
                .get(format!("{b}/servers/bench%2Fs{}", i % 10_000.min(i + 1)))
                .bearer_auth(&t)
                .send()
                .await
                .expect("show");
            let _ = r.bytes().await;
        }
    })
    .await;
    report("GET /servers/{deployment/name} (show)", lat, wall);
    running.stop();
}
