//! Recovery: from a restart to a half-done replace finishing.
//!
//!     cargo bench -p stratus-server --bench recovery
//!
//! A control plane (SQLite on disk, the fake cloud with simulated agents, the default 1 s
//! reconcile interval) starts a replace of an operational server with an elastic IP, and is
//! killed (its runtime shut down at once) while the operation stands before a given step. A new
//! control plane starts on the same data directory and fake cloud; the figure is from the call
//! that starts it to the operation being `done`. STRATUS_BENCH_ROUNDS rounds per step (default 5).

#[path = "../tests/common/process.rs"]
mod process;

use std::time::{Duration, Instant};

use process::{Api, Process};
use serde_json::json;
use stratus_server::drivers::FakeClouds;
use stratus_types::operation::Step;

const DEPLOYMENT: &str = r#"
[[cloud]]
name = "sandbox"
driver = "fake"
regions = [{ name = "local" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]
address_pools = [{ name = "public", cidr = "198.51.100.0/29" }]

[[image]]
name = "debian-12"
[image.clouds.sandbox]
native_id = "debian-12-base"
default_size = "small"

[[script]]
name = "install"
frequency = "per-instance"
body = "echo install"

[[template]]
name = "app"
image = "debian-12"
boot_scripts = ["install"]

[deployment]
name = "example"
cloud = "sandbox"

[[server]]
name = "app-1"
template = "app"
"#;

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One round: the seconds from the restart to the operation done.
fn round(stop: Step) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = stratus_server::Config::new(dir.path(), "127.0.0.1:0".parse().expect("addr"));
    config.agent_source_check = false;
    let fakes = FakeClouds::default();
    let first = Process::start(&config, &fakes, Some(stop));
    let api = Api::new(dir.path());
    api.apply(&first, DEPLOYMENT);
    until("app-1 operational", || {
        api.get(&first, "/servers/example%2Fapp-1")["state"] == "operational"
    });
    let vip = api.post(&first, "/addresses", json!({ "name": "vip", "cloud": "sandbox" }));
    assert!(vip.get("error").is_none(), "{vip}");
    api.post(&first, "/addresses/vip/associate", json!({ "server": "example/app-1" }));
    api.fire(&first, "/servers/example%2Fapp-1/replace", json!({}));
    let mut id = String::new();
    until("the operation at its step", || {
        let ops = api.get(&first, "/operations?server=example%2Fapp-1");
        match ops["items"].get(0) {
            Some(o) if o["step"] == stop.as_str() => {
                id = o["id"].as_str().unwrap_or_default().to_string();
                true
            }
            _ => false,
        }
    });
    drop(first);
    let restarted = Instant::now();
    let second = Process::start(&config, &fakes, None);
    until("the operation done", || {
        api.get(&second, &format!("/operations/{id}"))["step"] == "done"
    });
    restarted.elapsed().as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::var("STRATUS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("recovery of a replace killed before a step ({rounds} rounds each; restart to done)");
    for stop in [Step::Boot, Step::MoveAddresses, Step::TerminateOld] {
        let mut t: Vec<f64> = (0..rounds).map(|_| round(stop)).collect();
        t.sort_by(f64::total_cmp);
        println!(
            "  before {:<15} median {:.2} s, min {:.2} s, max {:.2} s",
            stop.as_str(),
            t[t.len() / 2],
            t[0],
            t[t.len() - 1]
        );
    }
}
