//! The orchestrator at scale, on the fake cloud behind the call-counting and throttling driver
//! wrappers (`stratus_cloud::counting`, `stratus_cloud::throttling`):
//!
//! - the cloud calls of a lifecycle pass do not grow with the servers (100 vs 1,000 booting
//!   servers: at most one `list` per pass, no `describe`);
//! - a cloud that throttles (refusing a share of calls, and losing the answers of some
//!   launches and terminations it carried out) still converges — every server launched once,
//!   then every one terminated, no duplicate instance, nothing left running — and does not
//!   hold up another cloud's launches;
//! - `GET /admin/tasks` shows every background task and the throttled cloud.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::Value;
use stratus_cloud::counting::{Counting, Counts};
use stratus_cloud::fake::FakeCloud;
use stratus_cloud::throttling::Throttling;
use stratus_cloud::{CloudDriver, InstanceState};
use stratus_server::app::App;
use stratus_store::{Query, TypedStore};
use stratus_types::Name;
use stratus_types::server::{Server, ServerState};

fn catalog(clouds: &[&str]) -> String {
    let mut t = String::new();
    for c in clouds {
        t += &format!(
            "[[cloud]]\nname = \"{c}\"\ndriver = \"fake\"\nregions = [{{ name = \"r1\" }}]\nsizes = [{{ name = \"small\", cpus = 1, memory = \"512MiB\" }}]\n\n"
        );
    }
    t += "[[image]]\nname = \"img\"\n";
    for c in clouds {
        t += &format!("[image.clouds.{c}]\nnative_id = \"img-1\"\ndefault_size = \"small\"\n");
    }
    t += "\n[[template]]\nname = \"web\"\nimage = \"img\"\n";
    t
}

fn deployment(name: &str, cloud: &str, servers: usize) -> String {
    let mut t = format!("[deployment]\nname = \"{name}\"\ncloud = \"{cloud}\"\n");
    for i in 0..servers {
        t += &format!("\n[[server]]\nname = \"{name}-{i}\"\ntemplate = \"web\"\n");
    }
    t
}

fn app(t: &TestServer) -> &Arc<App> {
    &t.running.as_ref().expect("running").app
}

async fn servers(t: &TestServer) -> Vec<Server> {
    app(t)
        .store
        .list_all::<Server>(&Query::default())
        .await
        .expect("servers")
}

/// Poll (bounded, generously: the throttled cloud backs off) until `check` holds.
async fn until(t: &TestServer, what: &str, check: impl Fn(&[Server]) -> bool) {
    for _ in 0..2400 {
        if check(&servers(t).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn count_in(all: &[Server], deployment: &str, state: ServerState) -> usize {
    all.iter()
        .filter(|s| s.deployment.as_str() == deployment && s.state == state)
        .count()
}

async fn apply(t: &TestServer, text: &str) {
    let (s, plan) = t.apply_toml(text, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
}

fn task_runs(t: &TestServer, name: &str) -> u64 {
    app(t).tasks.status(name).map_or(0, |s| s.runs)
}

/// `n` servers booting on a fake cloud with no agent (they wait for one until the deadline):
/// (lifecycle passes, list calls, describe calls, calls in all) over ten passes.
async fn steady_calls(n: usize) -> (u64, u64, u64, u64) {
    let counts = Counts::default();
    let wrap_counts = counts.clone();
    let t = TestServer::start_with(move |c| {
        c.simulate_agents = false;
        c.boot_deadline = Duration::from_secs(3600);
        c.wrap_driver = Some(Arc::new(move |_: &Name, d: Arc<dyn CloudDriver>| {
            Arc::new(Counting::new(d, wrap_counts.clone())) as Arc<dyn CloudDriver>
        }));
    })
    .await;
    apply(&t, &catalog(&["scale"])).await;
    apply(&t, &deployment("fleet", "scale", n)).await;
    until(&t, "every server booting", |all| {
        count_in(all, "fleet", ServerState::Booting) == n
    })
    .await;
    assert_eq!(counts.get("launch"), n as u64, "one launch per server");
    // Steady state from here: count the calls of ten whole passes.
    let first = task_runs(&t, "lifecycle/scale") + 1;
    while task_runs(&t, "lifecycle/scale") < first {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    counts.reset();
    while task_runs(&t, "lifecycle/scale") < first + 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let passes = task_runs(&t, "lifecycle/scale") - first;
    let c = (passes, counts.get("list"), counts.get("describe"), counts.total());
    assert_eq!(
        count_in(&servers(&t).await, "fleet", ServerState::Booting),
        n,
        "still booting"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_calls_per_pass_do_not_grow_with_the_servers() {
    let mut seen = vec![];
    for n in [100, 1000] {
        let (passes, lists, describes, total) = steady_calls(n).await;
        // A pass in flight when counting began may add one list.
        assert!(
            lists >= 1 && lists <= passes + 1,
            "{n} servers: {lists} lists in {passes} passes"
        );
        assert_eq!(describes, 0, "{n} servers: no describe in the steady state");
        assert_eq!(total, lists, "{n} servers: nothing but lists");
        seen.push((lists as f64) / (passes as f64));
    }
    // The same (at most one) list per pass for ten times the servers.
    assert!(seen.iter().all(|per_pass| *per_pass <= 1.1), "lists per pass: {seen:?}");
}

/// Two fake clouds in one control plane: `rough` refuses calls (and loses some answers),
/// `calm` answers everything.
struct TwoClouds {
    t: TestServer,
    rough: Arc<Throttling>,
    rough_fake: Arc<FakeCloud>,
    calm_fake: Arc<FakeCloud>,
}

async fn two_clouds(rough_percent: u8) -> TwoClouds {
    let rough_fake = Arc::new(FakeCloud::new());
    let calm_fake = Arc::new(FakeCloud::new());
    let rough = Arc::new(Throttling::new(rough_fake.clone(), rough_percent).losing_answers());
    let fakes = stratus_server::drivers::FakeClouds::default();
    {
        let mut f = fakes.lock().expect("fakes");
        f.insert("rough".parse().expect("name"), rough_fake.clone());
        f.insert("calm".parse().expect("name"), calm_fake.clone());
    }
    let wrapper = rough.clone();
    let t = TestServer::start_with(move |c| {
        c.fake_clouds = fakes;
        c.wrap_driver = Some(Arc::new(move |name: &Name, d: Arc<dyn CloudDriver>| {
            if name.as_str() == "rough" {
                wrapper.clone() as Arc<dyn CloudDriver>
            } else {
                d
            }
        }));
    })
    .await;
    apply(&t, &catalog(&["rough", "calm"])).await;
    TwoClouds {
        t,
        rough,
        rough_fake,
        calm_fake,
    }
}

/// Every instance the fake cloud made, by server: (all, not terminated).
async fn instances_per_server(fake: &FakeCloud) -> std::collections::HashMap<String, (usize, usize)> {
    let mut by = std::collections::HashMap::<String, (usize, usize)>::new();
    for i in fake.list().await.expect("list") {
        let e = by.entry(i.server.to_string()).or_default();
        e.0 += 1;
        if i.state != InstanceState::Terminated {
            e.1 += 1;
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_cloud_converges_without_duplicates_and_holds_up_no_other_cloud() {
    let TwoClouds {
        t,
        rough,
        rough_fake,
        calm_fake,
    } = two_clouds(100).await;
    // The rough cloud refuses everything while the calm one launches.
    apply(&t, &deployment("rough", "rough", 100)).await;
    apply(&t, &deployment("calm", "calm", 20)).await;
    until(&t, "the calm cloud's servers operational", |all| {
        count_in(all, "calm", ServerState::Operational) == 20
    })
    .await;
    let all = servers(&t).await;
    assert_eq!(
        count_in(&all, "rough", ServerState::Pending),
        100,
        "throttled launches stay pending, never stranded"
    );
    assert!(rough.refused() > 0);
    let (s, tasks) = t.call(reqwest::Method::GET, "/admin/tasks", None).await;
    assert_eq!(s, StatusCode::OK, "{tasks}");
    let rough_backoff = tasks["clouds"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["cloud"] == "rough"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(rough_backoff["throttled_total"].as_u64() > Some(0), "{tasks}");
    // Now a third of the calls are refused: everything converges.
    rough.set_percent(30);
    until(&t, "the rough cloud's servers operational", |all| {
        count_in(all, "rough", ServerState::Operational) == 100
    })
    .await;
    for (server, (all, live)) in instances_per_server(&rough_fake).await {
        assert_eq!((all, live), (1, 1), "server {server}: one instance, launched once");
    }
    for name in ["rough", "calm"] {
        let n = if name == "rough" { 100 } else { 20 };
        for i in 0..n {
            let (s, v) = t.delete(&common::server_path(&format!("{name}/{name}-{i}"))).await;
            assert!(s.is_success(), "{v}");
        }
    }
    until(&t, "every server terminated", |all| {
        all.iter().all(|s| s.state == ServerState::Terminated)
    })
    .await;
    for fake in [&rough_fake, &calm_fake] {
        for (server, (all, live)) in instances_per_server(fake).await {
            assert_eq!((all, live), (1, 0), "server {server}: its one instance terminated");
        }
    }
}

#[tokio::test]
async fn admin_tasks_show_every_background_task_to_observers() {
    let t = TestServer::start().await;
    apply(&t, &catalog(&["c1"])).await;
    apply(&t, &deployment("d", "c1", 2)).await;
    until(&t, "servers operational", |all| {
        count_in(all, "d", ServerState::Operational) == 2
    })
    .await;
    let observer = t.user_token("olga", &["observer"]).await;
    let v = t
        .wait_for("every task to have run", async |t: &TestServer| {
            let (s, v) = t
                .call_as(Some(&observer), reqwest::Method::GET, "/admin/tasks", None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let tasks: stratus_api::views::BackgroundTasks = serde_json::from_value(v).expect("typed");
            tasks
                .tasks
                .iter()
                .all(|t| t.runs > 0 && t.last.is_some())
                .then_some(tasks)
        })
        .await;
    let names: Vec<&str> = v.tasks.iter().map(|t| t.name.as_str()).collect();
    for want in [
        "lifecycle",
        "lifecycle/c1",
        "drift",
        "arrays",
        "lb-sync",
        "rollouts",
        "gc",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(v.leader, "a single control plane leads");
    let life = v.tasks.iter().find(|t| t.name == "lifecycle/c1").expect("lifecycle/c1");
    let last = life.last.as_ref().expect("ran");
    assert_eq!(last.outcome, stratus_api::views::TaskOutcome::Ok, "{last:?}");
    let nobody = t.user_token("nina", &[]).await;
    let (s, _) = t
        .call_as(Some(&nobody), reqwest::Method::GET, "/admin/tasks", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a user without a role does not see them");
}
