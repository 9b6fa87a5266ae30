//! The orchestrator at scale (issue 18), on the fake cloud behind the call-counting wrapper:
//!
//! 1. cloud API calls per minute against the number of servers, in the steady state where the
//!    old loop called `describe` once per server per pass: every server `booting` (no agent
//!    enrols, the boot deadline is an hour), so each lifecycle pass must look at every
//!    server's instance;
//! 2. the time of one lifecycle pass over the fleet (the task's own duration, as
//!    `GET /admin/tasks` reports it), and the time to launch the whole fleet;
//! 3. the time from `POST /servers` to the cloud's `launch` call while the fleet is being
//!    reconciled, on the fleet's cloud and on a second cloud.
//!
//! Run it:
//!
//!     cargo bench -p stratus-server --bench orchestrator
//!     STRATUS_BENCH_FLEETS=100,1000,10000 STRATUS_BENCH_WINDOW=20 cargo bench -p stratus-server --bench orchestrator
//!
//! Knobs (environment): STRATUS_BENCH_FLEETS (default `100,1000,10000`), STRATUS_BENCH_WINDOW
//! (seconds counted per fleet, default 15; calls per minute are scaled from it). The control
//! plane runs in this process with its SQLite store on disk and the default 1 s interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stratus_cloud::CloudDriver;
use stratus_cloud::counting::{Counting, Counts};
use stratus_store::{Query, TypedStore};
use stratus_types::Name;
use stratus_types::server::{Server, ServerState};

const CATALOG: &str = r##"
[[cloud]]
name = "fleet"
driver = "fake"
regions = [{ name = "r1" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]

[[cloud]]
name = "other"
driver = "fake"
regions = [{ name = "r1" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]

[[image]]
name = "img"
[image.clouds.fleet]
native_id = "img-1"
default_size = "small"
[image.clouds.other]
native_id = "img-1"
default_size = "small"

[[template]]
name = "web"
image = "img"
"##;

struct Bench {
    running: stratus_server::Running,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    base: String,
    token: String,
    counts: HashMapCounts,
}

/// Calls per cloud.
#[derive(Clone, Default)]
struct HashMapCounts(Arc<std::sync::Mutex<std::collections::HashMap<String, Counts>>>);

impl HashMapCounts {
    fn of(&self, cloud: &str) -> Counts {
        self.0.lock().expect("counts").entry(cloud.into()).or_default().clone()
    }
}

async fn start() -> Bench {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = stratus_server::Config::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.simulate_agents = false;
    config.boot_deadline = Duration::from_secs(3600);
    let counts = HashMapCounts::default();
    let c2 = counts.clone();
    config.wrap_driver = Some(Arc::new(move |name: &Name, d: Arc<dyn CloudDriver>| {
        Arc::new(Counting::new(d, c2.of(name.as_str()))) as Arc<dyn CloudDriver>
    }));
    let running = stratus_server::start(config).await.expect("start");
    let token = std::fs::read_to_string(&running.admin_token_file)
        .expect("token")
        .trim()
        .to_string();
    let base = format!("{}/api/v1", running.url);
    let b = Bench {
        running,
        _dir: dir,
        http: reqwest::Client::new(),
        base,
        token,
        counts,
    };
    b.apply(CATALOG).await;
    for d in ["fleet", "other"] {
        b.apply(&format!("[deployment]\nname = \"{d}\"\ncloud = \"{d}\"\n"))
            .await;
    }
    b
}

impl Bench {
    async fn apply(&self, toml: &str) {
        let doc = stratus_api::file::parse(toml, stratus_api::file::Format::Toml, "bench", None).expect("file");
        let r = self
            .http
            .post(format!("{}/apply", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"document": doc}))
            .send()
            .await
            .expect("apply");
        assert!(r.status().is_success(), "apply: {}", r.text().await.unwrap_or_default());
    }

    /// Servers booting on cloud `fleet`.
    async fn booting(&self) -> usize {
        let q = Query {
            state: Some(ServerState::Booting.as_str().into()),
            ..Default::default()
        };
        let all = self.running.app.store.list_all::<Server>(&q).await.expect("servers");
        all.iter().filter(|s| s.cloud.as_str() == "fleet").count()
    }

    fn last_pass(&self, task: &str) -> (u64, Duration) {
        let s = self.running.app.tasks.status(task).expect("task");
        (s.runs, s.last.map(|l| l.duration).unwrap_or_default())
    }

    /// Grow the fleet to `n` servers `s0..sN` on cloud `fleet` (besides `extra` others already
    /// booting there); wait until all are booting.
    async fn grow_to(&self, from: usize, n: usize, extra: usize) -> Duration {
        let mut file = String::from("[deployment]\nname = \"fleet\"\ncloud = \"fleet\"\n");
        for i in from..n {
            file += &format!("\n[[server]]\nname = \"s{i}\"\ntemplate = \"web\"\n");
        }
        let t0 = Instant::now();
        self.apply(&file).await;
        while self.booting().await < n + extra {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t0.elapsed()
    }

    /// POST /servers on `cloud`'s deployment; the time until that cloud's driver is asked to
    /// launch.
    async fn launch_latency(&self, cloud: &str, name: &str) -> Duration {
        let counts = self.counts.of(cloud);
        let before = counts.get("launch");
        let t0 = Instant::now();
        let r = self
            .http
            .post(format!("{}/servers", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"name": name, "deployment": cloud, "template": "web"}))
            .send()
            .await
            .expect("launch");
        assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
        while counts.get("launch") == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        t0.elapsed()
    }
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let fleets = env_list("STRATUS_BENCH_FLEETS", "100,1000,10000");
    let window = Duration::from_secs(env_list("STRATUS_BENCH_WINDOW", "15").first().copied().unwrap_or(15) as u64);
    let b = start().await;
    println!("orchestrator benchmark: fake cloud, SQLite on disk, 1 s interval, {window:?} windows");
    let mut have = 0;
    let mut extra = 0;
    for n in fleets {
        let launch_all = b.grow_to(have, n, extra).await;
        have = n;
        let counts = b.counts.of("fleet");
        let (runs0, _) = b.last_pass("lifecycle/fleet");
        counts.reset();
        tokio::time::sleep(window).await;
        let calls = counts.snapshot();
        let (runs1, pass) = b.last_pass("lifecycle/fleet");
        let per_min = |k: &str| calls.get(k).copied().unwrap_or(0) as f64 * 60.0 / window.as_secs_f64();
        let total: u64 = calls.values().sum();
        println!(
            "{n:>6} servers booting: {:>6.0} calls/min (list {:.0}, describe {:.0}); {} passes, last pass {:.1} ms; fleet launched in {:.1} s",
            total as f64 * 60.0 / window.as_secs_f64(),
            per_min("list"),
            per_min("describe"),
            runs1 - runs0,
            ms(pass),
            launch_all.as_secs_f64()
        );
        let mut same = vec![];
        let mut other = vec![];
        for _ in 0..5 {
            extra += 1;
            same.push(b.launch_latency("fleet", &format!("x{extra}")).await);
            other.push(b.launch_latency("other", &format!("y{extra}")).await);
        }
        same.sort();
        other.sort();
        println!(
            "{n:>6} servers: POST /servers → driver launch: same cloud median {:.1} ms (max {:.1}), another cloud median {:.1} ms (max {:.1})",
            ms(same[2]),
            ms(same[4]),
            ms(other[2]),
            ms(other[4])
        );
    }
}
