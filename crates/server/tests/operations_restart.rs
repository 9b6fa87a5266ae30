//! Durable operations survive the control plane: a replace and a rebundle are stopped exactly
//! before each of their steps, the control plane is killed there (its runtime shut down at once:
//! no task of it runs another instruction, as after `kill -9`; the store keeps what was
//! committed), and a new one on the same data directory finishes the operation: one successor,
//! the old server terminated, its elastic IP moved, and nothing left running or captured twice
//! in the cloud. The fake cloud outlives the control planes (shared through
//! `Config::fake_clouds`), as a real cloud outlives a control plane's process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{Api, Process};
use serde_json::{Value, json};
use stratus_cloud::CloudDriver;
use stratus_cloud::fake::FakeCloud;
use stratus_server::drivers::FakeClouds;
use stratus_types::operation::Step;

mod common;

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state(api: &Api, p: &Process, key: &str) -> Value {
    api.get(p, &format!("/servers/{}", common::enc(key)))
}

fn wait_state(api: &Api, p: &Process, key: &str, want: &str) -> Value {
    until(&format!("{key} {want}"), || {
        let s = state(api, p, key);
        (s["state"] == want).then_some(s)
    })
}

/// The server's one operation, once it stands at `step`.
fn operation_at(api: &Api, p: &Process, server: &str, step: Step) -> Value {
    until(&format!("the operation of {server} at {step}"), || {
        let ops = api.get(p, &format!("/operations?server={}", common::enc(server)));
        let items = ops["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 1, "one operation: {ops}");
        items.into_iter().find(|o| o["step"] == step.as_str())
    })
}

/// The cloud's live instances, by id, and the servers whose instances they should be.
fn nothing_leaked(api: &Api, p: &Process, fakes: &FakeClouds) {
    let fake: Arc<FakeCloud> = fakes
        .lock()
        .expect("lock")
        .get(&"sandbox".parse().expect("name"))
        .cloned()
        .expect("the fake cloud");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut live: Vec<String> = rt
        .block_on(fake.list())
        .expect("list")
        .into_iter()
        .filter(|i| i.state != stratus_cloud::InstanceState::Terminated)
        .map(|i| i.id)
        .collect();
    live.sort();
    let servers = api.get(p, "/servers?limit=1000");
    let mut want: Vec<String> = servers["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|s| s["state"] != "terminated")
        .filter_map(|s| s["instance_id"].as_str().map(str::to_string))
        .collect();
    want.sort();
    assert_eq!(live, want, "the live instances are exactly the live servers'");
}

const REPLACE_STEPS: [Step; 3] = [Step::Boot, Step::MoveAddresses, Step::TerminateOld];

#[test]
fn a_replace_killed_before_each_step_finishes_after_a_restart() {
    for stop in REPLACE_STEPS {
        let dir = tempfile::tempdir().expect("tmp");
        let fakes = FakeClouds::default();
        let first = Process::start(&common::config(dir.path()), &fakes, Some(stop));
        let api = Api::new(dir.path());
        let cred = api.post(
            &first,
            "/credentials",
            json!({ "name": "lb-stats", "value": "stats-pw-1" }),
        );
        assert!(cred.get("error").is_none(), "{cred}");
        api.apply(&first, common::EXAMPLE);
        wait_state(&api, &first, "example/app-1", "operational");
        let vip = api.post(&first, "/addresses", json!({ "name": "vip", "cloud": "sandbox" }));
        let ip = vip["ip"].as_str().unwrap_or_else(|| panic!("{vip}")).to_string();
        let assoc = api.post(&first, "/addresses/vip/associate", json!({ "server": "example/app-1" }));
        assert!(assoc.get("error").is_none(), "{assoc}");

        api.fire(&first, "/servers/example%2Fapp-1/replace", json!({}));
        let op = operation_at(&api, &first, "example/app-1", stop);
        // One operation at a time on a server: a second replace is refused, and makes nothing.
        let again = api.post(&first, "/servers/example%2Fapp-1/replace", json!({}));
        assert!(
            again["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("has an operation under way")),
            "{again}"
        );
        drop(first); // killed, before `stop`

        let second = Process::start(&common::config(dir.path()), &fakes, None);
        let id = op["id"].as_str().expect("id");
        let done = until("the operation to finish", || {
            let o = api.get(&second, &format!("/operations/{id}"));
            o["step"]
                .as_str()
                .is_some_and(|s| s == "done" || s == "failed")
                .then_some(o)
        });
        assert_eq!(done["step"], "done", "stopped before {stop}: {done}");
        assert_eq!(done["successor_name"], "example/app-1-r2");
        assert_eq!(done["addresses"], json!(["vip"]));
        let new = wait_state(&api, &second, "example/app-1-r2", "operational");
        assert_eq!(new["public_ip"], ip.as_str(), "the address moved: {new}");
        wait_state(&api, &second, "example/app-1", "terminated");
        let all = api.get(&second, "/servers?deployment=example&limit=100");
        let successors = all["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("app-1-r")))
            .count();
        assert_eq!(successors, 1, "one successor (stopped before {stop}): {all}");
        nothing_leaked(&api, &second, &fakes);
        drop(second);
    }
}

/// The example plus an array to rebundle for, and a golden server to rebundle.
const BUNDLED: &str = r#"
[[template]]
name = "worker"
image = "debian-12"
boot_scripts = ["install-nginx"]

[deployment]
name = "example"
cloud = "sandbox"

[[server]]
name = "golden"
template = "worker"

[[array]]
name = "workers"
template = "worker"
min = 0
max = 3
desired = 0
"#;

const REBUNDLE_STEPS: [Step; 3] = [Step::Prepare, Step::Capture, Step::Relaunch];

#[test]
fn a_rebundle_killed_before_each_step_finishes_after_a_restart() {
    for stop in REBUNDLE_STEPS {
        let dir = tempfile::tempdir().expect("tmp");
        let fakes = FakeClouds::default();
        let first = Process::start(&common::config(dir.path()), &fakes, Some(stop));
        let api = Api::new(dir.path());
        let cred = api.post(
            &first,
            "/credentials",
            json!({ "name": "lb-stats", "value": "stats-pw-1" }),
        );
        assert!(cred.get("error").is_none(), "{cred}");
        api.apply(&first, common::EXAMPLE);
        api.apply(&first, BUNDLED);
        let golden = wait_state(&api, &first, "example/golden", "operational");
        let old_id = golden["id"].as_str().expect("id").to_string();

        api.fire(
            &first,
            "/servers/example%2Fgolden/rebundle",
            json!({ "array": "workers", "then": "relaunch" }),
        );
        let op = operation_at(&api, &first, &old_id, stop);
        drop(first);

        let second = Process::start(&common::config(dir.path()), &fakes, None);
        let id = op["id"].as_str().expect("id");
        let done = until("the operation to finish", || {
            let o = api.get(&second, &format!("/operations/{id}"));
            o["step"]
                .as_str()
                .is_some_and(|s| s == "done" || s == "failed")
                .then_some(o)
        });
        assert_eq!(done["step"], "done", "stopped before {stop}: {done}");
        assert_eq!(done["successor_name"], "example/golden", "relaunched under its name");
        let old = api.get(&second, &format!("/servers/{old_id}"));
        assert_eq!(
            (old["state"].as_str(), old["rebundle"]["step"].as_str()),
            (Some("terminated"), Some("captured"))
        );
        let image = api.get(&second, "/images/worker-bundle");
        let versions = image["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1, "captured once (stopped before {stop}): {image}");
        let relaunched = wait_state(&api, &second, "example/golden", "operational");
        assert_ne!(relaunched["id"], old_id.as_str());
        nothing_leaked(&api, &second, &fakes);
        drop(second);
    }
}
