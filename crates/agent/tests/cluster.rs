//! Two control-plane replicas on one PostgreSQL database, behind a real HAProxy, with the real
//! agent connecting through it: one leader reconciles (the other launches nothing); a script
//! started through the replica that does not hold the agent's connection reaches it; and when
//! the replica holding it dies, the agent reconnects to the survivor, which takes the lead and
//! serves on with nothing lost. Needs PostgreSQL (scripts/test-postgres.sh) and haproxy.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stratus_cloud::fake::FakeCloud;
use stratus_store::testing::TestDatabase;

const DEPLOYMENT: &str = r##"
[[cloud]]
name = "sandbox"
driver = "fake"
regions = [{ name = "r" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]

[[image]]
name = "img"
[image.clouds.sandbox]
native_id = "img-1"
default_size = "small"

[[script]]
name = "boot"
frequency = "per-instance"
body = "#!/bin/sh\necho booted\n"

[[script]]
name = "hello"
frequency = "on-demand"
inputs = [{ name = "N", default = "0" }]
body = "#!/bin/sh\necho \"hello $N\"\n"

[[script]]
name = "slow"
frequency = "on-demand"
body = "#!/bin/sh\necho start\nsleep 4\necho end\n"

[[template]]
name = "t"
image = "img"
boot_scripts = ["boot"]
operational_scripts = ["hello", "slow"]

[deployment]
name = "d"
cloud = "sandbox"
"##;

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One replica in a runtime of its own, so that dropping the runtime kills it whole: its
/// tasks, its agent connections, its leadership connection.
struct Replica {
    rt: Option<tokio::runtime::Runtime>,
    running: Option<stratus_server::Running>,
    url: String,
}

impl Replica {
    /// `fakes`: the fake cloud both replicas see, as replicas of a real deployment see one cloud.
    fn start(data: &Path, port: u16, store: &str, public: &str, fakes: &stratus_server::drivers::FakeClouds) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = stratus_server::Config::new(data, format!("127.0.0.1:{port}").parse().expect("addr"));
        c.store_url = Some(store.to_string());
        c.public_url = Some(public.to_string());
        c.simulate_agents = false;
        // The fake cloud's instances have made-up addresses; the agent runs on loopback.
        c.agent_source_check = false;
        c.reconcile_interval = Duration::from_millis(100);
        c.fake_clouds = fakes.clone();
        let running = rt.block_on(stratus_server::start(c)).expect("start a replica");
        Self {
            url: running.url.clone(),
            rt: Some(rt),
            running: Some(running),
        }
    }

    fn app(&self) -> &stratus_server::app::App {
        &self.running.as_ref().expect("alive").app
    }

    fn leads(&self) -> bool {
        self.app().cluster.is_leader()
    }

    fn holds(&self, server: &str) -> bool {
        self.app()
            .cluster
            .holds(stratus_types::ServerId(server.parse().expect("id")))
    }

    /// Kill it: every task and socket of its runtime goes at once.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.running.take();
    }

    fn fake(&self) -> std::sync::Arc<dyn stratus_cloud::CloudDriver> {
        let app = self.app();
        let rt = self.rt.as_ref().expect("alive");
        rt.block_on(app.drivers.for_cloud(&*app.store, &"sandbox".parse().expect("name")))
            .expect("driver")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The API, from the test's own runtime.
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn call(&self, base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method, format!("{base}/api/v1{path}"))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("request");
            resp.json().await.unwrap_or(Value::Null)
        })
    }

    fn get(&self, base: &str, path: &str) -> Value {
        self.call(base, reqwest::Method::GET, path, None)
    }

    fn post(&self, base: &str, path: &str, body: Value) -> Value {
        self.call(base, reqwest::Method::POST, path, Some(body))
    }
}

fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_hello(api: &Api, base: &str, server: &str, n: u32) -> Value {
    let run = api.post(
        base,
        "/runs",
        json!({ "script": "hello", "server": server, "inputs": { "N": n.to_string() } }),
    );
    let id = run["id"].as_str().unwrap_or_else(|| panic!("{run}")).to_string();
    until(&format!("run {id}"), Duration::from_secs(30), || {
        let r = api.get(base, &format!("/runs/{id}"));
        (r["status"] == "succeeded" || r["status"] == "failed").then_some(r)
    })
}

#[test]
fn two_replicas_share_the_work_and_survive_the_loss_of_one() {
    let db = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(TestDatabase::create());
    let dir = tempfile::tempdir().expect("tmp");
    let (pa, pb, plb) = (free_port(), free_port(), free_port());
    // The load balancer agents and clients go through: HAProxy in TCP mode, health-checked.
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  \
             timeout server 1h\n  retries 3\n  option redispatch\nfrontend fe\n  bind 127.0.0.1:{plb}\n  \
             default_backend be\nbackend be\n  balance roundrobin\n  \
             server a 127.0.0.1:{pa} check inter 200ms fall 1 rise 2\n  \
             server b 127.0.0.1:{pb} check inter 200ms fall 1 rise 2\n"
        ),
    )
    .expect("write");
    let _haproxy = Proc(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .spawn()
            .expect("haproxy (scripts/test.sh installs it)"),
    );
    let public = format!("http://127.0.0.1:{plb}");
    let (da, db_dir) = (dir.path().join("a"), dir.path().join("b"));
    let fakes = stratus_server::drivers::FakeClouds::default();
    let mut a = Replica::start(&da, pa, &db.url, &public, &fakes);
    // Replicas share the master key (credentials are sealed under it).
    std::fs::create_dir_all(&db_dir).expect("dir");
    std::fs::copy(da.join("master.key"), db_dir.join("master.key")).expect("key");
    let mut b = Replica::start(&db_dir, pb, &db.url, &public, &fakes);
    let api = Api {
        rt: tokio::runtime::Runtime::new().expect("runtime"),
        http: reqwest::Client::new(),
        token: std::fs::read_to_string(da.join("admin.token"))
            .expect("token")
            .trim()
            .to_string(),
    };

    // One leader, and only one.
    until("a leader", Duration::from_secs(10), || {
        (a.leads() || b.leads()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.leads() ^ b.leads(), "exactly one replica leads");

    let doc = stratus_api::file::parse(DEPLOYMENT, stratus_api::file::Format::Toml, "t.toml", None).expect("parses");
    let plan = api.post(&a.url, "/apply", json!({ "document": doc }));
    assert!(plan.get("error").is_none(), "{plan}");
    // Launched through B, whoever leads.
    let s = api.post(
        &b.url,
        "/servers",
        json!({ "name": "web-1", "deployment": "d", "template": "t" }),
    );
    let id = s["id"].as_str().unwrap_or_else(|| panic!("{s}")).to_string();
    let instance = until("the instance", Duration::from_secs(10), || {
        api.get(&a.url, &format!("/servers/{id}"))["instance_id"]
            .as_str()
            .map(str::to_string)
    });
    let leader = if a.leads() { &a } else { &b };
    let fake = leader.fake();
    let fake = fake.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let ud = dir.path().join("web-1.user-data");
    std::fs::write(&ud, fake.request(&instance).expect("the leader launched it").user_data).expect("write");
    let root = dir.path().join("web-1.root");
    std::fs::create_dir_all(&root).expect("root");
    let _agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_stratus-agent"))
            .arg("--user-data")
            .arg(&ud)
            .arg("--state-dir")
            .arg(dir.path().join("web-1.state"))
            .arg("--image-root")
            .arg(&root)
            .spawn()
            .expect("agent"),
    );
    until("operational", Duration::from_secs(30), || {
        (api.get(&b.url, &format!("/servers/{id}"))["state"] == "operational").then_some(())
    });

    // A script started through the replica without the agent's connection reaches it.
    let holder_is_a = until("the agent's replica", Duration::from_secs(10), || {
        if a.holds(&id) {
            Some(true)
        } else if b.holds(&id) {
            Some(false)
        } else {
            None
        }
    });
    let other = if holder_is_a { &b.url } else { &a.url };
    let r = run_hello(&api, other, &id, 1);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["output"].as_str().is_some_and(|o| o.contains("hello 1")), "{r}");

    // Background work runs once: only the leader's cloud launches the array's members.
    let arr = api.post(
        &b.url,
        "/arrays",
        json!({ "name": "pool", "deployment": "d", "template": "t", "max": 5, "desired": 2 }),
    );
    assert!(arr.get("error").is_none(), "{arr}");
    let members = |base: &str| -> Vec<Value> {
        api.get(base, "/servers?deployment=d&limit=100")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s["array"] == "pool" && s["instance_id"].is_string())
            .collect()
    };
    until("two members launched", Duration::from_secs(10), || {
        (members(&a.url).len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    // The cloud both replicas see holds web-1 and the two members, no more: a follower that
    // launched too would show as duplicates.
    let cloud = a.fake();
    let live = a.rt.as_ref().expect("alive").block_on(cloud.list()).expect("list");
    assert_eq!(live.len(), 3, "web-1 and both members, each launched once: {live:?}");
    assert_eq!(
        api.get(&a.url, "/audit?action=array.launch")
            .as_array()
            .map_or(0, Vec::len),
        2
    );

    // A run in flight when the replica holding the agent dies: started, its first output in.
    let slow = api.post(other, "/runs", json!({ "script": "slow", "server": id }));
    let slow_id = slow["id"].as_str().unwrap_or_else(|| panic!("{slow}")).to_string();
    until("the slow run's first output", Duration::from_secs(20), || {
        let r = api.get(other, &format!("/runs/{slow_id}"));
        r["output"].as_str().is_some_and(|o| o.contains("start")).then_some(())
    });

    // The replica holding the agent dies; the agent comes back through HAProxy to the other.
    let killed = Instant::now();
    let (dead, survivor) = if holder_is_a {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.kill();
    until("the agent on the survivor", Duration::from_secs(60), || {
        survivor.holds(&id).then_some(())
    });
    let back = killed.elapsed();
    until("the survivor leads", Duration::from_secs(15), || {
        survivor.leads().then_some(())
    });
    eprintln!(
        "agent reconnected to the survivor {:.2} s after the kill; the survivor leads after {:.2} s",
        back.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    // The run in flight finished on the agent meanwhile; its output arrived exactly once.
    let r = until("the slow run's end", Duration::from_secs(30), || {
        let r = api.get(&survivor.url, &format!("/runs/{slow_id}"));
        (r["status"] == "succeeded" || r["status"] == "failed").then_some(r)
    });
    assert_eq!(r["status"], "succeeded", "{r}");
    let out = r["output"].as_str().unwrap_or_default();
    assert_eq!(
        (out.matches("start").count(), out.matches("end").count()),
        (1, 1),
        "nothing lost, nothing twice: {out:?}"
    );
    let r = run_hello(&api, &survivor.url, &id, 2);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["output"].as_str().is_some_and(|o| o.contains("hello 2")), "{r}");
    let runs = api.get(&survivor.url, &format!("/runs?server={id}"));
    assert_eq!(
        runs["items"].as_array().map_or(0, Vec::len),
        4,
        "boot + three runs, nothing lost: {runs}"
    );
    // The survivor's orchestrator works: one more member.
    let v = api.post(&survivor.url, "/arrays/d/pool/scale", json!({ "desired": 3 }));
    assert!(v.get("error").is_none(), "{v}");
    until("a third member", Duration::from_secs(10), || {
        (members(&survivor.url).len() == 3).then_some(())
    });
    drop((a, b));
    drop(db);
}
