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
# Encoded, as a careless script would print it.
echo "b64 $(echo "$PASSWORD" | base64) hex $(printf %s "$PASSWORD" | od -An -tx1 | tr -d ' \\n')"
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
boot_scripts = ["fails", "after"]

[[script]]
name = "after"
frequency = "per-instance"
body = """#!/bin/sh
echo "after the failure: must not run"
"""

[[script]]
name = "spawner"
frequency = "on-demand"
inputs = [{ name = "MARK" }]
body = """#!/bin/sh
# A child in the background and one in the foreground: a cancel stops both.
sleep "$MARK" &
sleep "$MARK"
"""

[[template]]
name = "ops"
image = "img"
operational_scripts = ["spawner"]

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
    // The fake cloud's instances have made-up addresses; the agent runs on loopback.
    c.agent_source_check = false;
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
    // An image preparation cleans this scratch tree, never the host's own root.
    let root = dir.join(format!("{name}.root"));
    std::fs::create_dir_all(&root).expect("image root");
    let child = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--user-data")
        .arg(&ud)
        .arg("--state-dir")
        .arg(dir.join(format!("{name}.state")))
        .arg("--image-root")
        .arg(&root)
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
    // Nor its base64 (`echo | base64`: the value and a newline) or hex forms.
    assert!(out.contains("b64 ***") && out.contains("hex ***"), "{out}");
    assert!(
        !out.contains("czNjcjN0LXZhbHVl") && !out.contains("7333637233742d76616c7565"),
        "{out}"
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
    // Wait until the script runs, then kill the agent in the middle of it (bounded: 60 s; on a
    // loaded machine 5 s was too short, and the agent was killed before the script started).
    for _ in 0..2400 {
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

/// Processes whose command line mentions `mark`.
fn processes_with(mark: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(mark)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_boot_script_cancels_the_rest_of_the_boot() {
    let (running, api, dir) = setup().await;
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "web-5", "bad").await;
    wait(&api, &id, |s| s["state"] == "stranded").await;
    let runs = api
        .call(reqwest::Method::GET, &format!("/runs?server={id}"), None)
        .await;
    let hello = runs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["script"] == "after")
        .cloned()
        .expect("the second boot run");
    let hello = {
        let mut last = hello;
        for _ in 0..200 {
            if last["status"] != "queued" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            last = api
                .call(
                    reqwest::Method::GET,
                    &format!("/runs/{}", last["id"].as_str().expect("id")),
                    None,
                )
                .await;
        }
        last
    };
    assert_eq!(hello["status"], "cancelled", "{hello}");
    assert!(
        hello["output"]
            .as_str()
            .unwrap_or_default()
            .contains("boot script fails failed earlier"),
        "{hello}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_the_script_and_what_it_started() {
    let (running, api, dir) = setup().await;
    // A sleep length no other test uses: the mark to find the script's processes by.
    let mark = format!("{}.{}", 3000 + std::process::id() % 1000, std::process::id());
    let tpl = serde_json::json!({ "name": "ops2", "image": "img", "operational_scripts": ["spawner"], "inputs": { "MARK": mark } });
    let v = api.call(reqwest::Method::POST, "/templates", Some(tpl)).await;
    assert!(v.get("error").is_none(), "{v}");
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "web-6", "ops2").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    let run = api
        .call(
            reqwest::Method::POST,
            "/runs",
            Some(serde_json::json!({ "script": "spawner", "server": id })),
        )
        .await;
    let run_id = run["id"].as_str().unwrap_or_else(|| panic!("{run}")).to_string();
    for _ in 0..200 {
        if processes_with(&mark) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(processes_with(&mark), 2, "both sleeps run");
    let c = api
        .call(
            reqwest::Method::POST,
            &format!("/runs/{run_id}/cancel"),
            Some(serde_json::json!({})),
        )
        .await;
    assert!(c.get("error").is_none(), "{c}");
    let mut last = serde_json::Value::Null;
    for _ in 0..400 {
        last = api.call(reqwest::Method::GET, &format!("/runs/{run_id}"), None).await;
        if last["status"] != "running" && last["status"] != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last["status"], "cancelled", "{last}");
    for _ in 0..200 {
        if processes_with(&mark) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(processes_with(&mark), 0, "nothing the script started is left");
}

/// `stratus-agent ARGS` as a script would call it; (exit code, stdout, stderr).
fn agent_cli(state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("STRATUS_AGENT_SOCKET")
        .output()
        .expect("run stratus-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_commands_go_through_the_running_agent() {
    let (running, api, dir) = setup().await;
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "web-7", "ops").await;
    let (_other, _agent2) = launch_with_agent(&running, &api, dir.path(), "web-8", "ops").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    let state = dir.path().join("web-7.state");
    let tokio_state = state.clone();
    let run = move |args: Vec<&'static str>| {
        let state = tokio_state.clone();
        tokio::task::spawn_blocking(move || agent_cli(&state, &args))
    };
    let (code, out, err) = run(vec!["tag", "add", "app:role=primary", "app:zone=a"])
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "app:role=primary"), "{out}");
    let server = api.call(reqwest::Method::GET, &format!("/servers/{id}"), None).await;
    assert!(
        server["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&"app:zone=a".into())),
        "{server}"
    );
    let (code, out, _) = run(vec!["tag", "remove", "app:zone=a"]).await.expect("join");
    assert_eq!(code, 0);
    assert!(!out.contains("app:zone=a"), "{out}");
    // `list` answers from what the agent holds.
    let (code, out, _) = run(vec!["tag", "list"]).await.expect("join");
    assert_eq!((code, out.trim()), (0, "app:role=primary"));
    let (code, out, err) = run(vec!["tag", "query", "app:*", "--json"]).await.expect("join");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let names: Vec<&str> = v["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["web-7"], "{v}");
    // Bad input: usage errors exit 2 and nothing is sent.
    for bad in [
        vec!["tag", "add"],
        vec!["tag", "add", "no-namespace"],
        vec!["tag", "query"],
        vec!["tag", "frob"],
    ] {
        let (code, _, err) = run(bad.clone()).await.expect("join");
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    // The control plane refuses a tag it cannot take: exit 1 with its reason.
    let long = Box::leak(format!("app:x={}", "v".repeat(300)).into_boxed_str());
    let (code, _, err) = run(vec!["tag", "add", &*long]).await.expect("join");
    assert_ne!(code, 0, "{err}");
    // An oversized or malformed request on the socket is answered with an error, not a crash.
    let socket = state.join("agent.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777,
        0o600
    );
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        let _ = c.write_all(&vec![b'x'; 70 * 1024]);
        let _ = c.write_all(b"\n");
        let mut line = String::new();
        std::io::BufReader::new(c).read_line(&mut line).expect("answer");
        line
    })
    .await
    .expect("join");
    assert!(answer.contains("error"), "{answer}");
    let (code, out, _) = run(vec!["tag", "list"]).await.expect("join");
    assert_eq!((code, out.trim()), (0, "app:role=primary"), "the agent is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_command_without_a_connection_fails_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    // Nothing listens at this address; a stored credential means no enrolment is tried.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state");
    std::fs::write(state.join("credential"), "stratus_agent_x").expect("credential");
    let ud = dir.path().join("ud.json");
    std::fs::write(
        &ud,
        serde_json::json!({ "stratus_url": url, "server_id": uuid_like(), "enrolment_token": "t" }).to_string(),
    )
    .expect("user-data");
    let child = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--user-data")
        .arg(&ud)
        .arg("--state-dir")
        .arg(&state)
        .args(["--request-wait", "1"])
        .spawn()
        .expect("spawn");
    let _agent = Agent(child);
    let socket = state.join("agent.sock");
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s2 = state.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || agent_cli(&s2, &["tag", "add", "app:x=1"]))
        .await
        .expect("join");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not connected to the control plane"), "{err}");
    // No agent at all: a clear error too.
    let (code, _, err) = agent_cli(&dir.path().join("nowhere"), &["tag", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("is stratus-agent running?"), "{err}");
}

fn uuid_like() -> String {
    stratus_types::ServerId::new().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_of_a_terminated_server_stops() {
    let (running, api, dir) = setup().await;
    let (id, mut agent) = launch_with_agent(&running, &api, dir.path(), "web-9", "ops").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    api.call(reqwest::Method::DELETE, &format!("/servers/{id}"), None).await;
    wait(&api, &id, |s| s["state"] == "terminated").await;
    // The control plane tells the connected agent, and refuses it for good if it comes back.
    let mut status = None;
    for _ in 0..400 {
        status = agent.0.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "the agent exited cleanly");
}

/// A CA and a certificate it signed for 127.0.0.1, made with the openssl command; (CA PEM
/// path, leaf certificate path, leaf key path).
fn test_pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (scripts/host-packages.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=stratus test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

/// A TLS front for the control plane (as an operator's reverse proxy would be): TLS on a
/// loopback port, plain TCP to `backend`. Returns the https URL.
async fn tls_front(cert: &std::path::Path, key: &std::path::Path, backend: std::net::SocketAddr) -> String {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_enrols_and_connects_over_tls_and_refuses_a_certificate_it_cannot_trust() {
    let (running, api, dir) = setup().await;
    let (ca, cert, key) = test_pki(dir.path());
    let url = tls_front(&cert, &key, running.addr).await;
    let v = api
        .call(
            reqwest::Method::POST,
            "/servers",
            Some(serde_json::json!({ "name": "web-10", "deployment": "d", "template": "ops" })),
        )
        .await;
    let id = v["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
    let instance = wait(&api, &id, |s| s["instance_id"].is_string()).await["instance_id"]
        .as_str()
        .expect("instance")
        .to_string();
    let driver = running
        .app
        .drivers
        .for_cloud(&*running.app.store, &"sandbox".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let mut ud: serde_json::Value =
        serde_json::from_slice(&fake.request(&instance).expect("request").user_data).expect("json");
    ud["stratus_url"] = url.clone().into();
    let ud_file = dir.path().join("tls.user-data");
    std::fs::write(&ud_file, ud.to_string()).expect("write");
    let state = dir.path().join("tls.state");

    // Not trusting the CA: no enrolment, and the log says why.
    let mut untrusting = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--user-data")
        .arg(&ud_file)
        .arg("--state-dir")
        .arg(&state)
        .env("STRATUS_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = untrusting.stderr.take().expect("stderr");
    let _untrusting = Agent(untrusting);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let said = tokio::task::spawn_blocking(move || {
        let mut all = String::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
            all.push_str(&line);
            all.push('\n');
            if line.to_lowercase().contains("certificate") {
                break;
            }
        }
        all
    })
    .await
    .expect("join");
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    drop(_untrusting);
    assert!(!state.join("credential").exists(), "nothing was enrolled");

    // Given the CA: enrols over https, connects over wss, boots.
    let child = Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
        .arg("--user-data")
        .arg(&ud_file)
        .arg("--state-dir")
        .arg(&state)
        .arg("--ca-file")
        .arg(&ca)
        .spawn()
        .expect("spawn");
    let _agent = Agent(child);
    wait(&api, &id, |s| s["state"] == "operational").await;
}

/// An `artifact:` input: the agent fetches it by its signed URL, checks its SHA-256 and gives
/// the script the file's path; content that does not match (a damaged blob) never reaches a
/// script, and the boot strands with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_inputs_are_fetched_verified_and_refused_when_damaged() {
    let (running, api, dir) = setup().await;
    api.call(
        reqwest::Method::POST,
        "/buckets",
        Some(serde_json::json!({ "name": "files" })),
    )
    .await;
    let content = "tool content v1\n".repeat(1000);
    let put = api
        .http
        .put(format!("{}/api/v1/buckets/files/object?key=bin/tool.txt", api.url))
        .bearer_auth(&api.token)
        .body(content.clone())
        .send()
        .await
        .expect("put");
    let object: serde_json::Value = put.json().await.expect("json");
    let sha = object["sha256"].as_str().expect("sha").to_string();
    let script = serde_json::json!({
        "name": "use-tool", "frequency": "per-instance",
        "inputs": [{ "name": "TOOL", "kind": "artifact", "default": "artifact:files/bin/tool.txt" }],
        "body": "#!/bin/sh\nset -e\necho \"path $TOOL\"\nhead -n 1 \"$TOOL\"\nsha256sum \"$TOOL\"\n"
    });
    let v = api.call(reqwest::Method::POST, "/scripts", Some(script)).await;
    assert!(v.get("error").is_none(), "{v}");
    let tpl = serde_json::json!({ "name": "tooled", "image": "img", "boot_scripts": ["use-tool"] });
    let v = api.call(reqwest::Method::POST, "/templates", Some(tpl)).await;
    assert!(v.get("error").is_none(), "{v}");

    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "tool-1", "tooled").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    let runs = api
        .call(reqwest::Method::GET, &format!("/runs?server={id}"), None)
        .await;
    let out = runs["items"][0]["output"].as_str().unwrap_or_default().to_string();
    assert!(out.contains("tool content v1"), "{out}");
    assert!(out.contains(&sha), "the script sees the verified content: {out}");
    let cached = dir.path().join(format!("tool-1.state/artifacts/{sha}/tool.txt"));
    assert!(out.contains(&format!("path {}", cached.display())), "{out}");

    // Damage the stored blob (same size, other bytes): the next instance refuses it.
    let blob = dir
        .path()
        .join(format!("data/artifacts/blobs/sha256/{}/{sha}", &sha[..2]));
    std::fs::write(&blob, content.replace("v1", "v2")).expect("damage the blob");
    let (id2, _agent2) = launch_with_agent(&running, &api, dir.path(), "tool-2", "tooled").await;
    let s = wait(&api, &id2, |s| s["state"] == "stranded").await;
    let why = s["stranded"].to_string();
    assert!(why.contains("SHA-256") && why.contains(&sha), "{s}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tool-2.state/artifacts"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing unverified is kept: {left:?}");
}

/// A watched file, with the real agent: written from the object before the boot runs, updated
/// when the object changes (and its script runs then), put back when it drifts on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_follows_its_object_and_is_put_back_when_it_drifts() {
    let (running, api, dir) = setup().await;
    api.call(
        reqwest::Method::POST,
        "/buckets",
        Some(serde_json::json!({ "name": "cfg" })),
    )
    .await;
    let put = |body: &'static str| {
        let req = api
            .http
            .put(format!("{}/api/v1/buckets/cfg/object?key=app.conf", api.url))
            .bearer_auth(&api.token)
            .body(body);
        async move { assert!(req.send().await.expect("put").status().is_success()) }
    };
    put("level = info\n").await;
    let target = dir.path().join("etc/app.conf");
    let marker = dir.path().join("reloads");
    let script = serde_json::json!({
        "name": "reload-conf", "frequency": "on-demand",
        "inputs": [{ "name": "MARKER", "default": marker.display().to_string() }],
        "body": "#!/bin/sh\necho changed >> \"$MARKER\"\n"
    });
    let v = api.call(reqwest::Method::POST, "/scripts", Some(script)).await;
    assert!(v.get("error").is_none(), "{v}");
    let boot = serde_json::json!({
        "name": "show-conf", "frequency": "every-boot",
        "inputs": [{ "name": "CONF_PATH", "default": target.display().to_string() }],
        "body": "#!/bin/sh\nset -e\ncat \"$CONF_PATH\"\n"
    });
    let v = api.call(reqwest::Method::POST, "/scripts", Some(boot)).await;
    assert!(v.get("error").is_none(), "{v}");
    let tpl = serde_json::json!({
        "name": "watching", "image": "img", "boot_scripts": ["show-conf"],
        "watch": [{ "path": target.display().to_string(), "object": "cfg/app.conf", "script": "reload-conf", "interval_secs": 5, "mode": 0o600 }]
    });
    let v = api.call(reqwest::Method::POST, "/templates", Some(tpl)).await;
    assert!(v.get("error").is_none(), "{v}");
    let (id, _agent) = launch_with_agent(&running, &api, dir.path(), "watch-1", "watching").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    // The boot script saw the file: it is written before the boot runs.
    let runs = api
        .call(reqwest::Method::GET, &format!("/runs?server={id}"), None)
        .await;
    assert!(
        runs["items"][0]["output"]
            .as_str()
            .unwrap_or_default()
            .contains("level = info"),
        "{runs}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).expect("file").permissions().mode() & 0o777,
        0o600
    );

    // The object changes: the file follows at once, and the script runs.
    put("level = debug\n").await;
    let mut followed = false;
    for _ in 0..100 {
        if std::fs::read_to_string(&target).unwrap_or_default() == "level = debug\n" && marker.exists() {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        followed,
        "file: {:?}, marker: {}",
        std::fs::read_to_string(&target),
        marker.exists()
    );

    // Drift: somebody edits the file on the instance; within the interval it is put back.
    std::fs::write(&target, "level = trace # edited by hand\n").expect("edit");
    let mut restored = false;
    for _ in 0..150 {
        if std::fs::read_to_string(&target).unwrap_or_default() == "level = debug\n" {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restored, "{:?}", std::fs::read_to_string(&target));
}

/// `stratus server rebundle` through the real agent: a secret value in the image's tree refuses
/// it and changes nothing; without it the agent cleans the tree (host keys, histories, logs),
/// answers, removes its own state and stays quiet, and the server is captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_prepares_its_instance_for_a_rebundle_and_refuses_to_bundle_a_secret() {
    let (running, api, dir) = setup().await;
    let (id, mut agent) = launch_with_agent(&running, &api, dir.path(), "golden", "good").await;
    wait(&api, &id, |s| s["state"] == "operational").await;
    let v = api
        .call(
            reqwest::Method::POST,
            "/arrays",
            Some(serde_json::json!({ "name": "goods", "deployment": "d", "template": "good", "max": 2, "desired": 0 })),
        )
        .await;
    assert!(v.get("error").is_none(), "{v}");
    let root = dir.path().join("golden.root");
    for (path, content) in [
        ("etc/ssh/ssh_host_ed25519_key", "PRIVATE"),
        ("etc/machine-id", "0123456789abcdef0123456789abcdef"),
        ("root/.bash_history", "mysql -p"),
        // A service account's history, found through the image's own passwd.
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nsvc:x:998:998::/var/lib/svc:/usr/sbin/nologin\n",
        ),
        ("var/lib/svc/.bash_history", "psql -W"),
        ("var/log/app.log", "started"),
        ("opt/app/data", "the work"),
        ("etc/app.conf", "password = s3cr3t-value\n"),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, content).expect("write");
    }
    let rebundle = || {
        api.call(
            reqwest::Method::POST,
            "/servers/d%2Fgolden/rebundle",
            Some(serde_json::json!({ "array": "goods" })),
        )
    };
    let refused = rebundle().await;
    let msg = refused["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{refused}"));
    assert!(
        msg.contains("/etc/app.conf") && msg.contains("nothing changed"),
        "{msg}"
    );
    assert!(!msg.contains("s3cr3t-value"), "{msg}");
    assert!(
        root.join("etc/ssh/ssh_host_ed25519_key").exists(),
        "nothing was removed"
    );
    assert!(dir.path().join("golden.state/credential").exists());
    assert_eq!(wait(&api, &id, |_| true).await["state"], "operational");

    std::fs::remove_file(root.join("etc/app.conf")).expect("rm");
    let done = rebundle().await;
    assert_eq!(done["version"], 1, "{done}");
    assert!(done["removed"].to_string().contains("ssh host keys: 1"), "{done}");
    for gone in [
        "etc/ssh/ssh_host_ed25519_key",
        "root/.bash_history",
        "var/lib/svc/.bash_history",
    ] {
        assert!(!root.join(gone).exists(), "{gone}");
    }
    assert_eq!(std::fs::read(root.join("etc/machine-id")).expect("machine-id"), b"");
    assert_eq!(std::fs::read(root.join("var/log/app.log")).expect("log"), b"");
    assert_eq!(
        std::fs::read_to_string(root.join("opt/app/data")).expect("kept"),
        "the work"
    );
    // Its identity is gone, and it does not try to come back: it waits to be stopped.
    for _ in 0..100 {
        if !dir.path().join("golden.state").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !dir.path().join("golden.state").exists(),
        "the state directory is removed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.0.try_wait().expect("wait").is_none(),
        "the agent waits, it does not exit"
    );
    assert!(!dir.path().join("golden.state").exists(), "and does not enrol again");
    assert_eq!(wait(&api, &id, |_| true).await["state"], "terminated");
}
