//! The server's life through its agent, with simulated agents on the fake cloud: output
//! delivered exactly once across reconnects, reboots running every-boot scripts again, tags over
//! the agent connection, cancelling runs, rollouts over many servers, decommission scripts
//! before termination.

mod common;

use std::collections::HashMap;

use common::TestServer;
use common::agent::{
    Enrolled, Ws, connect, finished, greet, handshake, hello, operational, output, recv_work, run, send, started,
};
use reqwest::StatusCode;
use serde_json::json;
use stratus_agent_proto::{AgentMessage, ControlMessage, Generation, Outcome, RunFinished, ScriptRun};
use stratus_types::tag::{Selector, Tag};

async fn start_with(change: impl FnOnce(&mut stratus_server::Config)) -> TestServer {
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        change(c);
    })
    .await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    for (name, body) in [
        ("status", "#!/bin/sh\necho ok\n"),
        ("drain", "#!/bin/sh\necho draining\n"),
    ] {
        let (s, v) = t
            .post(
                "/scripts",
                json!({ "name": name, "frequency": "on-demand", "body": body }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = t
        .post(
            "/templates",
            json!({
                "name": "ops", "image": "debian-12", "size": "small",
                "boot_scripts": ["install-nginx", "configure-lb"],
                "operational_scripts": ["status"],
                "decommission_scripts": ["drain"],
                "default_tags": ["lb:pool=www"],
                "inputs": { "STATS_PASSWORD": "cred:lb-stats" },
            }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    t
}

async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// The next `RunScript` on this connection.
async fn next_script(ws: &mut Ws) -> ScriptRun {
    match recv_work(ws).await {
        ControlMessage::RunScript(r) => r,
        other => panic!("expected a script, got {other:?}"),
    }
}

#[tokio::test]
async fn output_resent_after_a_reconnect_is_stored_exactly_once() {
    let t = start().await;
    let (e, mut ws) = operational(&t, "app-40", "ops").await;
    let (s, v) = t.post("/runs", json!({ "script": "status", "server": e.id })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let r = next_script(&mut ws).await;
    send(&mut ws, started(r.run)).await;
    for (seq, line) in ["one\n", "two\n"].iter().enumerate() {
        send(&mut ws, output(r.run, seq as u64, line)).await;
        assert!(matches!(recv_work(&mut ws).await, ControlMessage::AckOutput { .. }));
    }
    drop(ws);

    // The agent comes back holding the run: the control plane says it has chunks 0 and 1.
    let mut ws = connect(&t, &e.token).await;
    let (welcome, desired) = greet(&mut ws, hello(&e.id, "boot-1", vec![r.run])).await;
    assert_eq!(welcome.resume.len(), 1);
    assert_eq!((welcome.resume[0].next_seq, welcome.resume[0].finished), (2, false));
    assert_eq!(desired.generation, Generation::FIRST, "nothing changed");
    // A resent chunk is acknowledged and not stored again; the rest follows.
    send(&mut ws, started(r.run)).await;
    send(&mut ws, output(r.run, 1, "two\n")).await;
    assert!(matches!(
        recv_work(&mut ws).await,
        ControlMessage::AckOutput { seq: 1, .. }
    ));
    send(&mut ws, output(r.run, 2, "three\n")).await;
    assert!(matches!(
        recv_work(&mut ws).await,
        ControlMessage::AckOutput { seq: 2, .. }
    ));
    // A finish that claims chunks that never arrived is a protocol error.
    send(&mut ws, finished(r.run, 0, 5, 20)).await;
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::Refused(_)));

    let mut ws = connect(&t, &e.token).await;
    let (welcome, _) = greet(&mut ws, hello(&e.id, "boot-1", vec![r.run])).await;
    assert_eq!(welcome.resume[0].next_seq, 3);
    // A gap (chunk 4 before 3) is a protocol error too, and stores nothing.
    send(&mut ws, output(r.run, 4, "five\n")).await;
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::Refused(_)));

    let mut ws = connect(&t, &e.token).await;
    greet(&mut ws, hello(&e.id, "boot-1", vec![r.run])).await;
    send(&mut ws, finished(r.run, 0, 3, 14)).await;
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::AckFinished { .. }));
    let stored = t.get(&format!("/runs/{}", r.run)).await;
    assert_eq!(stored["output"], "one\ntwo\nthree\n", "{stored}");
    assert_eq!(stored["status"], "succeeded");

    // Once the finish is stored, a returning agent is told to drop the run; a run of another
    // server, or an unknown one, is answered the same way.
    let other = common::agent::enrol(&t, "app-41", "ops").await;
    let mut wo = connect(&t, &other.token).await;
    let theirs = handshake(&mut wo, &other.id).await.boot[0].run;
    let mut ws = connect(&t, &e.token).await;
    let (welcome, _) = greet(&mut ws, hello(&e.id, "boot-1", vec![r.run, theirs])).await;
    assert!(welcome.resume.iter().all(|r| r.finished), "{:?}", welcome.resume);
    assert_eq!(t.get(&format!("/runs/{theirs}")).await["status"], "queued");
}

#[tokio::test]
async fn a_reboot_runs_the_every_boot_scripts_again_under_a_new_generation() {
    let t = start().await;
    let (e, ws) = operational(&t, "app-42", "ops").await;
    drop(ws);
    let first: Vec<serde_json::Value> = t.list_all(&format!("/runs?server={}", e.id)).await;
    assert_eq!(first.len(), 2, "install-nginx and configure-lb ran at the first boot");

    // Same boot: nothing new.
    let mut ws = connect(&t, &e.token).await;
    let d = handshake(&mut ws, &e.id).await;
    assert_eq!(d.generation, Generation::FIRST);
    assert!(t.get(&format!("/servers/{}", e.id)).await["state"] == "operational");
    drop(ws);

    // A new boot id: the every-boot script runs again (with its secret input); the per-instance
    // one does not. The server boots until it succeeds.
    let mut ws = connect(&t, &e.token).await;
    let (_, d) = greet(&mut ws, hello(&e.id, "boot-2", vec![])).await;
    assert_eq!(d.generation, Generation(2));
    let names: Vec<&str> = d.boot.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["configure-lb"]);
    assert!(
        first.iter().all(|r| r["id"] != d.boot[0].run.to_string()),
        "a fresh run id"
    );
    assert!(d.boot[0].secrets().any(|s| s == "stats-password-xyz"));
    assert_eq!(t.get(&format!("/servers/{}", e.id)).await["state"], "booting");
    run(&mut ws, &d.boot[0], "configured again\n", 0).await;
    t.wait_state(&e.id, "operational").await;
    assert_eq!(t.list_all(&format!("/runs?server={}", e.id)).await.len(), 3);
    assert!(!t.audit("action=server.rebooted").await.is_empty());

    // A failing every-boot script after a reboot strands the server.
    drop(ws);
    let mut ws = connect(&t, &e.token).await;
    let (_, d) = greet(&mut ws, hello(&e.id, "boot-3", vec![])).await;
    assert_eq!(d.generation, Generation(3));
    run(&mut ws, &d.boot[0], "haproxy: bad config\n", 1).await;
    let s = t.wait_state(&e.id, "stranded").await;
    assert_eq!(s["stranded"]["step"], "configure-lb", "{s}");
}

#[tokio::test]
async fn an_agent_tags_its_own_server_and_queries_its_deployment() {
    let t = start().await;
    let (a, mut wa) = operational(&t, "app-43", "ops").await;
    let (_b, _wb) = operational(&t, "app-44", "ops").await;
    // A server in another deployment with the same tags stays invisible.
    let (s, v) = t
        .post("/deployments", json!({ "name": "other", "cloud": "sandbox" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "app-45", "deployment": "other", "template": "ops" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let tag = |s: &str| Tag::parse(s).expect("tag");
    // Namespaces that decide what other servers do are the users': an agent can neither add
    // nor remove them, and a change naming one is refused whole.
    for (add, remove) in [
        (vec!["app:role=primary", "lb:pool=admin"], vec![]),
        (vec![], vec!["lb:pool=www"]),
        (vec!["lb:check=/always-ok"], vec![]),
        (vec!["lb:balances=www"], vec![]),
        (vec!["stratus:managed=no"], vec![]),
        (vec!["array:desired=50"], vec![]),
    ] {
        send(
            &mut wa,
            AgentMessage::TagChange {
                request_id: 6,
                add: add.iter().map(|t| tag(t)).collect(),
                remove: remove.iter().map(|t| tag(t)).collect(),
            },
        )
        .await;
        match recv_work(&mut wa).await {
            ControlMessage::RequestFailed { request_id, message } => {
                assert_eq!(request_id, 6);
                let reserved = add.iter().chain(&remove).find(|t| !t.starts_with("app:")).unwrap();
                assert!(message.contains(reserved), "{message}");
            }
            other => panic!("{add:?} {remove:?}: {other:?}"),
        }
    }
    // Many at once: refused with a short answer (the session stays up).
    let long_value = "v".repeat(255);
    let many: Vec<Tag> = (0..100).map(|i| tag(&format!("lb:p{i}={long_value}"))).collect();
    send(
        &mut wa,
        AgentMessage::TagChange {
            request_id: 5,
            add: many,
            remove: vec![],
        },
    )
    .await;
    match recv_work(&mut wa).await {
        ControlMessage::RequestFailed { request_id, message } => {
            assert_eq!(request_id, 5);
            assert!(message.contains("and 97 more"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let server = t.get(&format!("/servers/{}", a.id)).await;
    assert_eq!(server["tags"], json!(["lb:pool=www"]), "nothing changed");

    send(
        &mut wa,
        AgentMessage::TagChange {
            request_id: 7,
            add: vec![tag("app:role=primary"), tag("array:vote=grow")],
            remove: vec![],
        },
    )
    .await;
    let expected = vec![tag("app:role=primary"), tag("array:vote=grow"), tag("lb:pool=www")];
    match recv_work(&mut wa).await {
        ControlMessage::TagChangeResult { request_id, tags } => {
            assert_eq!(request_id, 7);
            assert_eq!(tags, expected);
        }
        other => panic!("{other:?}"),
    }
    // The agent gets the new tags as a new generation of its desired state.
    match recv_work(&mut wa).await {
        ControlMessage::DesiredState(d) => {
            assert_eq!(d.generation, Generation(2));
            assert_eq!(d.tags, expected);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.audit("action=server.tag")
            .await
            .iter()
            .any(|e| e["actor"] == "agent:example/app-43")
    );
    // A user takes it out of the pool.
    let (s, v) = t
        .post(&format!("/servers/{}/tags", a.id), json!({ "remove": ["lb:pool=www"] }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(matches!(recv_work(&mut wa).await, ControlMessage::DesiredState(_)));
    let server = t.get(&format!("/servers/{}", a.id)).await;
    assert_eq!(server["tags"], json!(["app:role=primary", "array:vote=grow"]));

    send(
        &mut wa,
        AgentMessage::TagQuery {
            request_id: 8,
            selector: Selector::parse("lb:pool=www").expect("selector"),
        },
    )
    .await;
    match recv_work(&mut wa).await {
        ControlMessage::TagQueryResult {
            request_id,
            servers,
            truncated,
        } => {
            assert_eq!((request_id, truncated), (8, false));
            let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
            // The example's app-1 and app-2 (pending on the fake cloud, no agent) and app-44.
            assert!(names.contains(&"app-44"), "{names:?}");
            assert!(!names.contains(&"app-43"), "its tag was removed");
            assert!(!names.contains(&"app-45"), "another deployment's server is not visible");
            assert!(
                servers
                    .iter()
                    .find(|s| s.name.as_str() == "app-44")
                    .is_some_and(|s| s.private_ip.is_some())
            );
        }
        other => panic!("{other:?}"),
    }

    // Too many tags: refused with a reason, the connection stays.
    let many: Vec<Tag> = (0..200).map(|i| tag(&format!("x:n{i}=v"))).collect();
    for chunk in many.chunks(100) {
        send(
            &mut wa,
            AgentMessage::TagChange {
                request_id: 9,
                add: chunk.to_vec(),
                remove: vec![],
            },
        )
        .await;
        let reply = recv_work(&mut wa).await;
        if let ControlMessage::RequestFailed { request_id, message } = reply {
            assert_eq!(request_id, 9);
            assert!(message.contains("at most"), "{message}");
            return;
        }
        // The first hundred fit: a result, then the new desired state.
        assert!(matches!(reply, ControlMessage::TagChangeResult { .. }), "{reply:?}");
        assert!(matches!(recv_work(&mut wa).await, ControlMessage::DesiredState(_)));
    }
    panic!("200 tags were accepted");
}

#[tokio::test]
async fn runs_are_cancelled_before_they_start_or_through_the_agent() {
    let t = start().await;
    let (e, mut ws) = operational(&t, "app-46", "ops").await;

    // Queued (not yet started): cancelled at once; the agent is told; its late reports change
    // nothing and break nothing.
    let (_, v) = t.post("/runs", json!({ "script": "status", "server": e.id })).await;
    let r = next_script(&mut ws).await;
    let (s, c) = t.post(&format!("/runs/{}/cancel", r.run), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["status"], "cancelled");
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::Cancel { run } if run == r.run));
    send(&mut ws, started(r.run)).await;
    send(&mut ws, output(r.run, 0, "too late\n")).await;
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::AckOutput { .. }));
    let stored = t.get(&format!("/runs/{}", v["id"].as_str().expect("id"))).await;
    assert_eq!(stored["status"], "cancelled");
    assert!(!stored["output"].as_str().unwrap_or_default().contains("too late"));
    let (s, v) = t.post(&format!("/runs/{}/cancel", r.run), json!({})).await;
    common::assert_error(s, &v, StatusCode::CONFLICT, "bad_state");

    // Running: the agent is asked to stop it and reports the outcome.
    t.post("/runs", json!({ "script": "status", "server": e.id })).await;
    let r = next_script(&mut ws).await;
    send(&mut ws, started(r.run)).await;
    t.wait_for("running", async |t| {
        (t.get(&format!("/runs/{}", r.run)).await["status"] == "running").then_some(())
    })
    .await;
    let (s, c) = t.post(&format!("/runs/{}/cancel", r.run), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::Cancel { run } if run == r.run));
    send(
        &mut ws,
        AgentMessage::RunFinished(RunFinished {
            run: r.run,
            outcome: Outcome::Cancelled,
            exit_code: None,
            signal: Some(15),
            error: None,
            finished_at: chrono::Utc::now(),
            output_chunks: 0,
            output_bytes: 0,
        }),
    )
    .await;
    assert!(matches!(recv_work(&mut ws).await, ControlMessage::AckFinished { .. }));
    assert_eq!(t.get(&format!("/runs/{}", r.run)).await["status"], "cancelled");
    assert!(!t.audit("action=run.cancel").await.is_empty());

    // Running while its agent is away: refused, since the script may still be running.
    t.post("/runs", json!({ "script": "status", "server": e.id })).await;
    let r = next_script(&mut ws).await;
    send(&mut ws, started(r.run)).await;
    t.wait_for("running", async |t| {
        (t.get(&format!("/runs/{}", r.run)).await["status"] == "running").then_some(())
    })
    .await;
    drop(ws);
    t.wait_for("disconnected", async |t| {
        let app = &t.running.as_ref().expect("running").app;
        (!app.cluster.holds(e.id.parse().expect("id"))).then_some(())
    })
    .await;
    let (s, v) = t.post(&format!("/runs/{}/cancel", r.run), json!({})).await;
    common::assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
    assert!(common::error_text(&v).contains("not connected"), "{v}");
    let (s, v) = t.post("/runs/not-an-id/cancel", json!({})).await;
    common::assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
}

/// Operational servers app-5x with their open connections, by server id.
async fn fleet(t: &TestServer, n: usize) -> (Vec<Enrolled>, HashMap<String, Ws>) {
    let mut servers = vec![];
    let mut conns = HashMap::new();
    for i in 0..n {
        let (e, ws) = operational(t, &format!("app-5{i}"), "ops").await;
        conns.insert(e.id.clone(), ws);
        servers.push(e);
    }
    (servers, conns)
}

#[tokio::test]
async fn a_rollout_keeps_to_its_concurrency_and_stops_past_its_error_budget() {
    let t = start().await;
    let (servers, mut conns) = fleet(&t, 4).await;
    let (s, ro) = t
        .post(
            "/rollouts",
            json!({ "script": "status", "selector": "lb:pool=www", "concurrency": 2, "max_errors": 0 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ro}");
    let id = ro["id"].as_str().expect("id").to_string();
    // Four operational servers run it; the example's app-1 and app-2 match but are not
    // operational (no agent on this fake cloud): skipped, with the reason.
    assert_eq!(ro["runs"].as_array().map(Vec::len), Some(4), "{ro}");
    assert_eq!(ro["skipped"].as_array().map(Vec::len), Some(2), "{ro}");
    let order: Vec<String> = servers.iter().map(|e| e.id.clone()).collect();

    // The first two (by name) get the script; the rollout holds the other two back.
    let r0 = next_script(conns.get_mut(&order[0]).expect("ws")).await;
    let r1 = next_script(conns.get_mut(&order[1]).expect("ws")).await;
    // The driver records its count after it has sent them.
    t.wait_for("two started", async |t| {
        (t.get(&format!("/rollouts/{id}")).await["started"] == 2).then_some(())
    })
    .await;
    let queued = t.list_all(&format!("/runs?rollout={id}&status=queued")).await;
    assert_eq!(queued.len(), 4, "nothing started on the agents yet: {queued:?}");

    // One succeeds: the third starts. It fails: past the budget, the fourth never starts.
    run(conns.get_mut(&order[0]).expect("ws"), &r0, "ok\n", 0).await;
    let r2 = next_script(conns.get_mut(&order[2]).expect("ws")).await;
    run(conns.get_mut(&order[2]).expect("ws"), &r2, "broken\n", 1).await;
    t.wait_for("stopped", async |t| {
        (t.get(&format!("/rollouts/{id}")).await["cancelled"] == 1).then_some(())
    })
    .await;
    // The one already running finishes; the rollout ends `stopped`.
    run(conns.get_mut(&order[1]).expect("ws"), &r1, "ok\n", 0).await;
    let done = t
        .wait_for("finished", async |t| {
            let r = t.get(&format!("/rollouts/{id}")).await;
            (r["status"] != "running" && r["finished_at"].is_string()).then_some(r)
        })
        .await;
    assert_eq!(
        (&done["status"], &done["succeeded"], &done["failed"], &done["cancelled"]),
        (&json!("stopped"), &json!(2), &json!(1), &json!(1)),
        "{done}"
    );
    let runs = t.list_all(&format!("/runs?rollout={id}")).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap_or_default()).collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "failed", "cancelled"]);
    assert!(
        runs[3]["output"]
            .as_str()
            .unwrap_or_default()
            .contains("stopped after 1 failures")
    );
    assert!(!t.audit("action=rollout.start").await.is_empty());
}

#[tokio::test]
async fn a_cancelled_rollout_stops_its_running_scripts_and_starts_no_more() {
    let t = start().await;
    let (servers, mut conns) = fleet(&t, 3).await;
    let (s, ro) = t
        .post(
            "/rollouts",
            json!({ "script": "status", "selector": "lb:pool=www", "deployment": "example", "concurrency": 1 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ro}");
    let id = ro["id"].as_str().expect("id").to_string();
    let ws0 = conns.get_mut(&servers[0].id).expect("ws");
    let r0 = next_script(ws0).await;
    send(ws0, started(r0.run)).await;
    let (s, v) = t.post(&format!("/rollouts/{id}/cancel"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(matches!(recv_work(ws0).await, ControlMessage::Cancel { run } if run == r0.run));
    send(
        ws0,
        AgentMessage::RunFinished(RunFinished {
            run: r0.run,
            outcome: Outcome::Cancelled,
            exit_code: None,
            signal: Some(15),
            error: None,
            finished_at: chrono::Utc::now(),
            output_chunks: 0,
            output_bytes: 0,
        }),
    )
    .await;
    let done = t
        .wait_for("finished", async |t| {
            let r = t.get(&format!("/rollouts/{id}")).await;
            r["finished_at"].is_string().then_some(r)
        })
        .await;
    assert_eq!(
        (&done["status"], &done["cancelled"]),
        (&json!("cancelled"), &json!(3)),
        "{done}"
    );
    let (s, v) = t.post(&format!("/rollouts/{id}/cancel"), json!({})).await;
    common::assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
}

#[tokio::test]
async fn rollout_requests_are_checked() {
    let t = start().await;
    let cases = [
        (
            json!({ "script": "status", "selector": "lb:pool=" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "script": "status", "selector": "x" , "concurrency": 0 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "script": "status", "selector": "x", "timeout_secs": 0 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "script": "status", "selector": "x", "deployment": "../x" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "script": "status", "selector": "x", "bogus": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "script": "status", "selector": "s".repeat(100_000) }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "script": "nope", "selector": "lb:pool=www" }),
            StatusCode::NOT_FOUND,
        ),
        // Matches only servers that are not operational: nothing to run on.
        (
            json!({ "script": "status", "selector": "lb:pool=www" }),
            StatusCode::CONFLICT,
        ),
    ];
    for (body, want) in cases {
        let (s, v) = t.post("/rollouts", body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
    }
    assert!(t.list_all("/rollouts").await.is_empty(), "nothing was recorded");
    let (s, _) = t.post("/rollouts/not-an-id/cancel", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let observer = t.user_token("watcher", &["observer"]).await;
    let (s, _) = t
        .call_as(
            Some(&observer),
            reqwest::Method::POST,
            "/rollouts",
            Some(json!({ "script": "status", "selector": "lb:pool=www" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// Tags such as `lb:pool=www` are the same in every deployment: a rollout or a deploy without a
/// deployment never reaches servers of several deployments unless asked to.
#[tokio::test]
async fn a_rollout_by_tag_does_not_reach_other_deployments_silently() {
    let t = start().await;
    let (_a, _wa) = operational(&t, "app-70", "ops").await;
    let (s, v) = t
        .post("/deployments", json!({ "name": "staging", "cloud": "sandbox" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "app-71", "deployment": "staging", "template": "ops" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let _ = t.post("/buckets", json!({ "name": "www" })).await;
    let resp = t
        .http
        .put(format!("{}/api/v1/buckets/www/object?key=site.tar.gz", t.url))
        .bearer_auth(&t.token)
        .body(b"not looked at before the selection".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
    for (path, body) in [
        ("/rollouts", json!({ "script": "status", "selector": "lb:pool=www" })),
        (
            "/deploys",
            json!({ "archive": "www/site.tar.gz", "selector": "lb:pool=www" }),
        ),
    ] {
        let (s, v) = t.post(path, body.clone()).await;
        common::assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        let message = v.to_string();
        assert!(
            message.contains("2 deployments") && message.contains("example") && message.contains("staging"),
            "{path}: {v}"
        );
    }
    assert!(t.list_all("/rollouts").await.is_empty(), "nothing was started");
    // Named, or asked for all: it runs.
    let (s, v) = t
        .post(
            "/rollouts",
            json!({ "script": "status", "selector": "lb:pool=www", "deployment": "example" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/rollouts",
            json!({ "script": "status", "selector": "lb:pool=www", "all_deployments": true }),
        )
        .await;
    assert!(s != StatusCode::BAD_REQUEST && s != StatusCode::FORBIDDEN, "{s} {v}");
}

#[tokio::test]
async fn terminating_runs_the_decommission_scripts_first() {
    let t = start().await;
    let (e, mut ws) = operational(&t, "app-60", "ops").await;
    let (s, v) = t.delete(&format!("/servers/{}", e.id)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let r = next_script(&mut ws).await;
    assert_eq!(r.phase, stratus_types::run::Phase::Decommission);
    assert_eq!(r.name.as_str(), "drain");
    assert!(
        r.timeout_secs.is_some_and(|s| s <= 120),
        "bounded: {:?}",
        r.timeout_secs
    );
    // Nothing is destroyed while the script runs.
    send(&mut ws, started(r.run)).await;
    assert_eq!(t.get(&format!("/servers/{}", e.id)).await["state"], "decommissioning");
    run(&mut ws, &r, "drained\n", 0).await;
    t.wait_state(&e.id, "terminated").await;
    let stored = t.get(&format!("/runs/{}", r.run)).await;
    assert_eq!(
        (&stored["status"], &stored["phase"]),
        (&json!("succeeded"), &json!("decommission"))
    );
}

#[tokio::test]
async fn a_stuck_decommission_script_does_not_keep_the_server_alive() {
    let t = start_with(|c| c.decommission_timeout = std::time::Duration::from_secs(1)).await;
    let (e, mut ws) = operational(&t, "app-61", "ops").await;
    t.delete(&format!("/servers/{}", e.id)).await;
    let r = next_script(&mut ws).await;
    send(&mut ws, started(r.run)).await;
    t.wait_state(&e.id, "terminated").await;
    let stored = t.get(&format!("/runs/{}", r.run)).await;
    assert_eq!(stored["status"], "timed_out", "{stored}");
    assert!(
        stored["output"]
            .as_str()
            .unwrap_or_default()
            .contains("decommission timeout")
    );
    // The agent was told to stop it (after, perhaps, the script again: it is sent until the
    // agent reports it started, and an agent runs a run id once).
    loop {
        match recv_work(&mut ws).await {
            ControlMessage::RunScript(again) => assert_eq!(again.run, r.run),
            ControlMessage::Cancel { run } => break assert_eq!(run, r.run),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_boot_deadline_counts_from_the_reboot_not_the_launch() {
    let t = start_with(|c| c.boot_deadline = std::time::Duration::from_secs(1)).await;
    let (e, ws) = operational(&t, "app-62", "ops").await;
    drop(ws);
    // Let the launch fall behind the deadline.
    let launched: chrono::DateTime<chrono::Utc> = t.get(&format!("/servers/{}", e.id)).await["launched_at"]
        .as_str()
        .expect("launched_at")
        .parse()
        .expect("time");
    while chrono::Utc::now() - launched < chrono::Duration::milliseconds(1500) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut ws = connect(&t, &e.token).await;
    let (_, d) = greet(&mut ws, hello(&e.id, "boot-2", vec![])).await;
    // Several orchestrator passes (one every 50 ms) see it booting: none strands it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let s = t.get(&format!("/servers/{}", e.id)).await;
    assert_eq!(s["state"], "booting", "{s}");
    run(&mut ws, &d.boot[0], "configured\n", 0).await;
    let s = t.wait_state(&e.id, "operational").await;
    assert!(s["stranded"].is_null(), "{s}");
}
