//! The real agent binary against an in-process control plane on the fake cloud (its simulated
//! agent off): it enrols with the user-data the orchestrator wrote, runs the boot scripts on
//! this host, streams their output (secrets masked), and the server becomes operational — or
//! stranded when a script fails.

use std::process::{Child, Command};
use std::time::Duration;

use reqwest_lite::Api;
use stratus_cloud::fake::FakeCloud;

mod reqwest_lite {
    //! A few API calls with the admin token.
    pub struct Api {
        pub url: String,
        pub token: String,
        pub http: reqwest::Client,
    }

    impl Api {
        pub async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<serde_json::Value>,
        ) -> serde_json::Value {
            let mut r = self
                .http
                .request(method, format!("{}/api/v1{path}", self.url))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            r.send().await.expect("send").json().await.unwrap_or_default()
        }
    }
}

const DEPLOYMENT: &str = r##"
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

[[script]]
name = "hello"
frequency = "per-instance"
inputs = [{ name = "GREETING" }, { name = "PASSWORD", kind = "cred" }, { name = "PLACE", default = "the host" }]
body = """#!/bin/sh
echo "$GREETING from the agent on $PLACE"
echo "the password is $PASSWORD" >&2
# A daemon that keeps the script's output open must not hold the boot up.
(sleep 5; echo late) &
"""

[[script]]
name = "fails"
frequency = "per-instance"
body = """#!/bin/sh
echo about to fail
exit 3
"""

[[script]]
name = "slow"
frequency = "on-demand"
body = """#!/bin/sh
echo starting
sleep 30
echo never
"""

[[template]]
name = "good"
image = "img"
boot_scripts = ["hello"]
operational_scripts = ["slow"]
[template.inputs]
GREETING = "hi"
PASSWORD = "cred:db-password"

[[script]]
name = "counted"
frequency = "per-instance"
inputs = [{ name = "COUNT_FILE" }]
body = """#!/bin/sh
echo run >> "$COUNT_FILE"
sleep 3
"""

[[template]]
name = "bad"
image = "img"
boot_scripts = ["fails"]

[deployment]
name = "d"
cloud = "sandbox"
"##;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn setup() -> (stratus_server::Running, Api, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = stratus_server::Config::new(dir.path().join("data"), "127.0.0.1:0".parse().expect("addr"));
    c.simulate_agents = false;
    c.reconcile_interval = Duration::from_millis(50);
    let running = stratus_server::start(c).await.expect("start");
    let token = std::fs::read_to_string(&running.admin_token_file)
        .expect("token")
        .trim()
        .to_string();
    let api = Api {
        url: running.url.clone(),
        token,
        http: reqwest::Client::new(),
    };
    api.call(
        reqwest::Method::POST,
        "/credentials",
        Some(serde_json::json!({ "name": "db-password", "value": "s3cr3t-value" })),
    )
    .await;
    let doc = stratus_api::file::parse(DEPLOYMENT, stratus_api::file::Format::Toml, "test.toml", None).expect("parses");
    let plan = api
        .call(
            reqwest::Method::POST,
            "/apply",
            Some(serde_json::json!({ "document": doc })),
        )
        .await;
    assert!(plan.get("error").is_none(), "{plan}");
    (running, api, dir)
}

async fn launch_with_agent(
    running: &stratus_server::Running,
    api: &Api,
    dir: &std::path::Path,
    name: &str,
    template: &str,
) -> (String, Agent) {
    let v = api
        .call(
            reqwest::Method::POST,
            "/servers",
            Some(serde_json::json!({ "name": name, "deployment": "d", "template": template })),
        )
        .await;
    let id = v["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
    let instance = wait(api, &id, |s| s["instance_id"].is_string()).await["instance_id"]
        .as_str()
        .expect("instance")
        .to_string();
    let app = &running.app;
    let driver = app
        .drivers
        .for_cloud(&*app.store, &"sandbox".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let ud = dir.join(format!("{name}.user-data"));
    std::fs::write(&ud, fake.request(&instance).expect("request").user_data).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--user-data")
        .arg(&ud)
        .arg("--state-dir")
        .arg(dir.join(format!("{name}.state")))
        .spawn()
        .expect("spawn the agent");
    (id, Agent(child))
}

async fn wait(api: &Api, id: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        last = api.call(reqwest::Method::GET, &format!("/servers/{id}"), None).await;
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server never got there: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_boots_its_server_and_masks_secrets() {
    let (running, api, dir) = setup().await;
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "web-1", "good").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    let runs = api
        .call(reqwest::Method::GET, &format!("/runs?server={id}"), None)
        .await;
    let run = &runs["items"][0];
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = run["output"].as_str().expect("output");
    assert!(
        out.contains("hi from the agent on the host"),
        "a default fills an input nobody set: {out}"
    );
    assert!(out.contains("the password is ***"), "{out}");
    assert!(
        !out.contains("s3cr3t-value"),
        "the secret never reaches stored output: {out}"
    );
    // The credential is kept private.
    let cred = dir.path().join("web-1.state/credential");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cred).expect("credential").permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_boot_script_strands_the_server() {
    let (running, api, dir) = setup().await;
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "web-2", "bad").await;
    let s = wait(&api, &id, |s| s["state"] == "stranded").await;
    assert_eq!(s["stranded"]["exit_code"], 3, "{s}");
    assert!(
        s["stranded"]["output_tail"]
            .as_str()
            .is_some_and(|o| o.contains("about to fail")),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operational_script_past_its_timeout_is_killed() {
    let (running, api, dir) = setup().await;
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "web-3", "good").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    let run = api
        .call(
            reqwest::Method::POST,
            "/runs",
            Some(serde_json::json!({ "script": "slow", "server": id, "timeout_secs": 1 })),
        )
        .await;
    let run_id = run["id"].as_str().unwrap_or_else(|| panic!("{run}")).to_string();
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        last = api.call(reqwest::Method::GET, &format!("/runs/{run_id}"), None).await;
        if last["status"] != "queued" && last["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["status"], "timed_out", "{last}");
    let out = last["output"].as_str().unwrap_or_default();
    assert!(out.contains("starting") && !out.contains("never"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_mid_run_reports_it_interrupted_and_never_runs_it_twice() {
    let (running, api, dir) = setup().await;
    let count = dir.path().join("count");
    let tpl = serde_json::json!({
        "name": "once", "image": "img", "boot_scripts": ["counted"],
        "inputs": { "COUNT_FILE": count.display().to_string() }
    });
    let v = api.call(reqwest::Method::POST, "/templates", Some(tpl)).await;
    assert!(v.get("error").is_none(), "{v}");
    let (id, agent) = launch_with_agent(&running, &api, dir.path(), "web-4", "once").await;
    // Wait until the script runs, then kill the agent in the middle of it.
    for _ in 0..200 {
        if std::fs::read_to_string(&count).is_ok_and(|c| !c.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(agent);
    // A new agent with the same state: it does not run the script again.
    let child = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--user-data")
        .arg(dir.path().join("web-4.user-data"))
        .arg("--state-dir")
        .arg(dir.path().join("web-4.state"))
        .spawn()
        .expect("spawn the agent again");
    let _again = Agent(child);
    let s = wait(&api, &id, |s| s["state"] == "stranded").await;
    assert!(
        s["stranded"]["output_tail"]
            .as_str()
            .is_some_and(|o| o.contains("not run again")),
        "{s}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        std::fs::read_to_string(&count).expect("count").lines().count(),
        1,
        "ran exactly once"
    );
}
