//! The dashboard, measured in headless chromium against an in-process control plane with
//! hundreds of servers (the fake cloud's simulated agents boot them).
//!
//! ```sh
//! cargo bench -p stratus-cli --bench dashboard       # STRATUS_BENCH_SERVERS=300
//! ```
//!
//! - first paint and first contentful paint of the deployment page (the browser's own
//!   Performance API), and the time until its server table is filled;
//! - "state change → shown": a server's tags are changed through the API; the time from the
//!   API's answer until the page shows the new tag (polled through WebDriver every few ms), ten
//!   times.

#[path = "../tests/support/webdriver.rs"]
mod webdriver;

use std::time::{Duration, Instant};

use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("STRATUS_BENCH_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_driver, driver) = webdriver::chromedriver().await;
    let mut config = stratus_server::Config::new(tmp.path().join("data"), "127.0.0.1:0".parse().expect("addr"));
    config.reconcile_interval = Duration::from_millis(100);
    let running = stratus_server::start(config).await.expect("control plane");
    let token = std::fs::read_to_string(&running.admin_token_file)
        .expect("token")
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", running.url);
    let file = r#"
[[cloud]]
name = "sandbox"
driver = "fake"
regions = [{ name = "here" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]
[[image]]
name = "img"
[image.clouds.sandbox]
native_id = "fake-image"
default_size = "small"
[[template]]
name = "web"
image = "img"
[deployment]
name = "big"
cloud = "sandbox"
"#;
    let doc = stratus_api::file::parse(file, stratus_api::file::Format::Toml, "bench.toml", None).expect("parses");
    http.post(api("/apply"))
        .bearer_auth(&token)
        .json(&json!({ "document": doc }))
        .send()
        .await
        .expect("apply");
    for i in 0..n {
        let r = http
            .post(api("/servers"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("s{i:04}"), "deployment": "big", "template": "web" }))
            .send()
            .await
            .expect("launch");
        assert!(r.status().is_success());
    }
    println!("{n} servers launched");

    let b = webdriver::Browser::start(&driver).await;
    // Signed in through session storage, so the measured load is the page itself.
    b.goto(&format!("{}/ui/#/login", running.url)).await;
    b.script(&format!(
        "sessionStorage.setItem('stratus-token', {}); return 1;",
        json!(token)
    ))
    .await;
    b.goto("about:blank").await;
    let started = Instant::now();
    b.goto(&format!("{}/ui/#/deployments/big", running.url)).await;
    b.wait_text("the server table", |t| t.contains("s0000") && t.contains("Page 1"))
        .await;
    let filled = started.elapsed();
    let paint = b
        .script("return Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));")
        .await;
    println!(
        "deployment page ({n} servers, 50 per page): first paint {:.0} ms, first contentful paint {:.0} ms, table filled {:.0} ms (navigation to text, as WebDriver sees it)",
        paint["first-paint"].as_f64().unwrap_or(f64::NAN),
        paint["first-contentful-paint"].as_f64().unwrap_or(f64::NAN),
        filled.as_secs_f64() * 1000.0
    );

    let mut shown = vec![];
    for i in 0..10 {
        let tag = format!("bench:round={i}");
        let r = http
            .post(api("/servers/big%2Fs0000/tags"))
            .bearer_auth(&token)
            .json(&json!({ "add": [tag] }))
            .send()
            .await
            .expect("tag");
        assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(10);
        loop {
            let seen = b
                .script(&format!("return document.body.innerText.includes({});", json!(tag)))
                .await;
            if seen == json!(true) {
                break;
            }
            assert!(Instant::now() < until, "the page never showed {tag}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shown.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "state change (tags) -> shown on the page: median {:.0} ms, max {:.0} ms (10 changes; includes the page's 200 ms refresh coalescing)",
        median(shown.clone()),
        shown.iter().cloned().fold(0.0, f64::max)
    );
    b.close().await;
    running.stop();
}
