//! Load-balancer wiring, artifact inputs and application deploys through simulated agents on the
//! fake cloud: what the control plane sends, when, and what it refuses.

mod common;

use common::agent::{connect, enrol, handshake, operational, recv_work, run, send};
use common::{TestServer, assert_error, enc, error_text};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stratus_agent_proto::{AgentMessage, ControlMessage, DesiredState, EnvValue, ManagedFile, ScriptRun};
use stratus_store::TypedStore;

async fn start() -> TestServer {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    t
}

async fn upload(t: &TestServer, bucket: &str, key: &str, body: &[u8]) -> Value {
    let _ = t.post("/buckets", json!({ "name": bucket })).await;
    let url = format!("{}/api/v1/buckets/{bucket}/object?key={}", t.url, enc(key));
    let resp = t
        .http
        .put(url)
        .bearer_auth(&t.token)
        .body(body.to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("json")
}

fn haproxy_cfg(d: &DesiredState) -> &ManagedFile {
    let f = d.files.iter().find(|f| f.path == "/etc/haproxy/haproxy.cfg");
    f.unwrap_or_else(|| panic!("no HAProxy configuration in {d:?}"))
}

/// The next desired state on a connection whose HAProxy configuration satisfies `want` (runs'
/// acks, heartbeats and repeats of an earlier configuration skipped; each wait is bounded).
async fn desired_where(ws: &mut common::agent::Ws, want: impl Fn(&str) -> bool) -> DesiredState {
    loop {
        if let ControlMessage::DesiredState(d) = recv_work(ws).await
            && want(&haproxy_cfg(&d).content)
        {
            return d;
        }
    }
}

fn applied(f: &ManagedFile, error: Option<&str>) -> AgentMessage {
    AgentMessage::FileStatus {
        path: f.path.clone(),
        sha256: f.sha256(),
        applied: error.is_none(),
        error: error.map(str::to_string),
    }
}

#[tokio::test]
async fn a_load_balancer_follows_its_pool_and_a_leaving_member_waits_for_it() {
    let t = start().await;
    // The load balancer boots with its configuration (no members yet) before its boot runs.
    let lb = enrol(&t, "lb-9", "lb").await;
    let mut lb_ws = connect(&t, &lb.token).await;
    let first = handshake(&mut lb_ws, &lb.id).await;
    let cfg = haproxy_cfg(&first);
    assert!(!cfg.content.contains("    server "), "{}", cfg.content);
    assert!(
        cfg.check.as_deref().is_some_and(|c| c.contains("haproxy -c")),
        "{cfg:?}"
    );
    assert!(cfg.reload.as_deref().is_some_and(|c| c.contains("USR2")), "{cfg:?}");
    send(&mut lb_ws, applied(cfg, None)).await;
    for r in &first.boot {
        run(&mut lb_ws, r, "configured\n", 0).await;
    }
    t.wait_state(&lb.id, "operational").await;

    // A member that becomes operational is pushed to the load balancer, under a new generation.
    let (app, _app_ws) = operational(&t, "app-9", "app").await;
    let second = desired_where(&mut lb_ws, |c| c.contains("server app-9 ")).await;
    assert!(second.generation > first.generation);
    let cfg2 = haproxy_cfg(&second).clone();
    assert!(cfg2.content.contains("server app-9 "), "{}", cfg2.content);
    assert!(
        second.boot.iter().all(|r| first.boot.iter().any(|f| f.run == r.run)),
        "no new boot runs"
    );

    // A refused configuration is recorded and audited (the old one keeps serving).
    send(
        &mut lb_ws,
        applied(&cfg2, Some("the new content was refused by its check (exit 1)")),
    )
    .await;
    let audited = t
        .wait_for("the refusal in the audit log", async |t| {
            let a = t.audit("action=server.file_failed").await;
            (!a.is_empty()).then_some(a)
        })
        .await;
    assert!(
        audited[0]["detail"]["error"].as_str().unwrap().contains("refused"),
        "{audited:?}"
    );
    send(&mut lb_ws, applied(&cfg2, None)).await;

    // Terminating the member: it leaves the pool first, and its instance goes only after the
    // load balancer reported the configuration without it.
    let (s, v) = t.delete(&format!("/servers/{}", app.id)).await;
    assert!(s.is_success(), "{v}");
    let third = desired_where(&mut lb_ws, |c| !c.contains("server app-9 ")).await;
    let cfg3 = haproxy_cfg(&third).clone();
    assert!(!cfg3.content.contains("server app-9 "), "{}", cfg3.content);
    let state = t.get(&format!("/servers/{}", app.id)).await;
    assert_eq!(
        state["state"], "decommissioning",
        "still there until the load balancer has applied: {state}"
    );
    send(&mut lb_ws, applied(&cfg3, None)).await;
    t.wait_state(&app.id, "terminated").await;
}

#[tokio::test]
async fn file_reports_outside_the_rules_end_the_connection() {
    let t = start().await;
    let (_, mut ws) = operational(&t, "app-8", "app").await;
    // Sent raw: the agent side's encoder refuses to build it.
    let frame = json!({ "type": "file_status", "path": "/etc/../shadow", "sha256": "a".repeat(64), "applied": true });
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    match recv_work(&mut ws).await {
        ControlMessage::Refused(r) => assert!(r.message.contains("path"), "{r:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn artifact_env<'a>(r: &'a ScriptRun, name: &str) -> &'a stratus_agent_proto::ArtifactRef {
    match r.env.iter().find(|v| v.name == name).map(|v| &v.value) {
        Some(EnvValue::Artifact(a)) => a,
        other => panic!("{name} is not an artifact: {other:?}"),
    }
}

#[tokio::test]
async fn artifact_inputs_arrive_as_urls_that_fetch_exactly_that_content() {
    let t = start().await;
    let bytes = b"#!/bin/sh\necho tool\n".repeat(100);
    let o = upload(&t, "files", "tools/tool.sh", &bytes).await;
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "use-tool", "frequency": "per-instance", "body": "#!/bin/sh\nsh \"$TOOL\"\n",
                    "inputs": [{ "name": "TOOL", "kind": "artifact", "default": "artifact:files/tools/tool.sh" }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "tooled", "image": "debian-12", "boot_scripts": ["use-tool"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let e = enrol(&t, "tool-1", "tooled").await;
    let mut ws = connect(&t, &e.token).await;
    let d = handshake(&mut ws, &e.id).await;
    let a = artifact_env(&d.boot[0], "TOOL");
    assert_eq!(
        (a.sha256.as_str(), a.size, a.name.as_str()),
        (o["sha256"].as_str().unwrap(), bytes.len() as u64, "tool.sh")
    );
    assert!(
        a.url.starts_with("/api/v1/artifacts/fetch?"),
        "relative to the agent's control-plane URL: {}",
        a.url
    );
    let resp = t.http.get(format!("{}{}", t.url, a.url)).send().await.expect("fetch");
    assert_eq!(resp.status(), StatusCode::OK);
    let got = resp.bytes().await.expect("body");
    assert_eq!(hex::encode(Sha256::digest(&got)), a.sha256);

    // An artifact that is gone: the boot run fails with the reason, and the server strands.
    let (s, _) = t
        .call(Method::DELETE, "/buckets/files/object?key=tools/tool.sh", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let e2 = enrol(&t, "tool-2", "tooled").await;
    let mut ws2 = connect(&t, &e2.token).await;
    let d2 = handshake(&mut ws2, &e2.id).await;
    assert!(d2.boot.is_empty(), "nothing deliverable was sent: {d2:?}");
    let stranded = t.wait_state(&e2.id, "stranded").await;
    let why = stranded["stranded"].to_string();
    assert!(why.contains("files/tools/tool.sh does not exist"), "{stranded}");
}

#[tokio::test]
async fn deploys_run_the_built_in_with_a_pinned_archive() {
    let t = start().await;
    upload(&t, "rel", "site.tgz", b"release one").await;
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "site", "image": "debian-12", "default_tags": ["lb:pool=www"],
                    "application": { "name": "site", "archive": "rel/site.tgz", "activate": "true" } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The first boot deploys the template's archive before anything else.
    let mut sites = vec![];
    for name in ["site-1", "site-2"] {
        let e = enrol(&t, name, "site").await;
        let mut ws = connect(&t, &e.token).await;
        let d = handshake(&mut ws, &e.id).await;
        let deploy = &d.boot[0];
        assert_eq!(deploy.name.as_str(), "stratus-deploy");
        assert!(deploy.body.contains("stratus-agent app deploy"), "{}", deploy.body);
        assert_eq!(artifact_env(deploy, "STRATUS_APP_ARCHIVE").name, "site.tgz");
        for r in &d.boot {
            run(&mut ws, r, "deployed\n", 0).await;
        }
        t.wait_state(&e.id, "operational").await;
        sites.push((e, ws));
    }
    let (_app, _app_ws) = operational(&t, "app-7", "app").await;

    // Refusals change nothing.
    let before = t.snapshot().await;
    for (body, status, words) in [
        (
            json!({ "archive": "rel/nope.tgz", "selector": "lb:pool=www" }),
            StatusCode::NOT_FOUND,
            "stratus artifact put",
        ),
        (
            json!({ "archive": "rel/../x", "selector": "lb:pool=www" }),
            StatusCode::BAD_REQUEST,
            "archive",
        ),
        (
            json!({ "archive": "rel/site.tgz", "selector": "" }),
            StatusCode::BAD_REQUEST,
            "selector",
        ),
        (
            json!({ "archive": "rel/site.tgz", "selector": "lb:pool=www", "concurrency": 0 }),
            StatusCode::BAD_REQUEST,
            "concurrency",
        ),
        (
            json!({ "archive": "rel/site.tgz", "selector": "lb:pool=www", "evil": 1 }),
            StatusCode::BAD_REQUEST,
            "evil",
        ),
        (
            json!({ "archive": "rel/site.tgz", "selector": "role:none" }),
            StatusCode::CONFLICT,
            "no operational server",
        ),
    ] {
        let (s, v) = t.post("/deploys", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(error_text(&v).contains(words), "{body}: {v}");
    }
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "stratus-deploy", "body": "#!/bin/sh\nrm -rf /\n" }),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(error_text(&v).contains("reserved"), "{v}");
    assert_eq!(t.snapshot().await, before);

    // One server at a time; servers without an application are skipped.
    let (s, ro) = t
        .post(
            "/deploys",
            json!({ "archive": "rel/site.tgz", "selector": "lb:pool=www" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ro}");
    assert_eq!(ro["concurrency"], 1);
    assert_eq!(ro["runs"].as_array().unwrap().len(), 2);
    assert!(
        ro["skipped"]
            .to_string()
            .contains("app-7: template app names no application"),
        "{ro}"
    );
    let first = match recv_work(&mut sites[0].1).await {
        ControlMessage::RunScript(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.name.as_str(), "stratus-deploy");
    // The archive changes mid-rollout: the next server is not given different bytes.
    upload(&t, "rel", "site.tgz", b"release two").await;
    run(&mut sites[0].1, &first, "deployed\n", 0).await;
    let id = ro["id"].as_str().unwrap();
    let done = t
        .wait_for("the rollout to end", async |t| {
            let r = t.get(&format!("/rollouts/{id}")).await;
            (r["status"] != "running").then_some(r)
        })
        .await;
    assert_eq!(
        (done["succeeded"].as_u64(), done["failed"].as_u64()),
        (Some(1), Some(1)),
        "{done}"
    );
    let runs = t.get(&format!("/runs?rollout={id}")).await;
    assert!(runs.to_string().contains("changed since the deploy started"), "{runs}");
}

#[tokio::test]
async fn watched_files_follow_their_object_and_run_their_script_on_change() {
    let t = start().await;
    let v1 = upload(&t, "cfg", "app.json", br#"{"level":"info"}"#).await;
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "reload-app", "frequency": "on-demand", "body": "#!/bin/sh\necho reloaded\n" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Refused: hostile paths, a bad interval or mode, an unknown script, a path twice.
    for (watch, field) in [
        (
            json!([{ "path": "etc/app.json", "object": "cfg/app.json" }]),
            "watch[0].path",
        ),
        (
            json!([{ "path": "/etc/../shadow", "object": "cfg/app.json" }]),
            "watch[0].path",
        ),
        (
            json!([{ "path": "/etc/app.json", "object": "cfg/../x" }]),
            "watch[0].object",
        ),
        (
            json!([{ "path": "/etc/app.json", "object": "cfg/app.json", "interval_secs": 1 }]),
            "watch[0].interval_secs",
        ),
        (
            json!([{ "path": "/etc/app.json", "object": "cfg/app.json", "mode": 4095 }]),
            "watch[0].mode",
        ),
        (
            json!([{ "path": "/etc/app.json", "object": "cfg/app.json", "script": "nope" }]),
            "watch[0].script",
        ),
        (
            json!([{ "path": "/etc/a", "object": "cfg/a" }, { "path": "/etc/a", "object": "cfg/b" }]),
            "watch[1].path",
        ),
    ] {
        let (s, v) = t
            .post(
                "/templates",
                json!({ "name": "w", "image": "debian-12", "watch": watch }),
            )
            .await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        assert!(
            common::error_fields(&v).iter().any(|f| f.ends_with(field)),
            "{field}: {v}"
        );
    }
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "watcher", "image": "debian-12",
                    "watch": [{ "path": "/etc/app/config.json", "object": "cfg/app.json", "script": "reload-app", "interval_secs": 30, "mode": 0o640 }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let e = enrol(&t, "w-1", "watcher").await;
    let mut ws = connect(&t, &e.token).await;
    let d = handshake(&mut ws, &e.id).await;
    let f = d
        .files
        .iter()
        .find(|f| f.path == "/etc/app/config.json")
        .expect("the watched file");
    let src = f.source.as_ref().expect("content from the object");
    assert_eq!(
        (src.sha256.as_str(), f.mode, f.recheck_secs),
        (v1["sha256"].as_str().unwrap(), 0o640, Some(30))
    );
    assert!(f.content.is_empty());
    send(&mut ws, applied(f, None)).await;
    t.wait_state(&e.id, "operational").await;

    // The object changes: the agent hears at once, and once it applied the new content the
    // script runs.
    let v2 = upload(&t, "cfg", "app.json", br#"{"level":"debug"}"#).await;
    let d2 = loop {
        if let ControlMessage::DesiredState(d) = recv_work(&mut ws).await
            && d.files.iter().any(|f| f.sha256() == v2["sha256"].as_str().unwrap())
        {
            break d;
        }
    };
    assert!(d2.generation > d.generation);
    let f2 = d2
        .files
        .iter()
        .find(|f| f.path == "/etc/app/config.json")
        .unwrap()
        .clone();
    send(&mut ws, applied(&f2, None)).await;
    let r = loop {
        if let ControlMessage::RunScript(r) = recv_work(&mut ws).await {
            break r;
        }
    };
    assert_eq!(r.name.as_str(), "reload-app");
    run(&mut ws, &r, "reloaded\n", 0).await;
    let runs = t.get(&format!("/runs?server={}", e.id)).await;
    assert!(runs.to_string().contains("reload-app"), "{runs}");
    // The same content reported again runs nothing more.
    send(&mut ws, applied(&f2, None)).await;

    // The object goes: the file is no longer managed (it stays as it is on the server).
    let (s, _) = t.call(Method::DELETE, "/buckets/cfg/object?key=app.json", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    loop {
        match recv_work(&mut ws).await {
            ControlMessage::DesiredState(d) if d.files.is_empty() => break,
            ControlMessage::RunScript(r) => panic!("no run expected: {r:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn file_reports_of_other_contents_or_repeated_failures_grow_nothing() {
    let t = start().await;
    let _ = upload(&t, "cfg", "app.json", br#"{"level":"info"}"#).await;
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "reload-app", "frequency": "on-demand", "body": "#!/bin/sh\necho reloaded\n" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "watcher", "image": "debian-12",
                    "watch": [{ "path": "/etc/app/config.json", "object": "cfg/app.json", "script": "reload-app", "interval_secs": 30 }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let e = enrol(&t, "w-1", "watcher").await;
    let mut ws = connect(&t, &e.token).await;
    let d = handshake(&mut ws, &e.id).await;
    let f1 = d
        .files
        .iter()
        .find(|f| f.path == "/etc/app/config.json")
        .unwrap()
        .clone();
    send(&mut ws, applied(&f1, None)).await;
    t.wait_state(&e.id, "operational").await;
    // New content, applied: the script runs once.
    let v2 = upload(&t, "cfg", "app.json", br#"{"level":"debug"}"#).await;
    let f2 = loop {
        if let ControlMessage::DesiredState(d) = recv_work(&mut ws).await
            && let Some(f) = d.files.iter().find(|f| f.sha256() == v2["sha256"].as_str().unwrap())
        {
            break f.clone();
        }
    };
    send(&mut ws, applied(&f2, None)).await;
    let r = loop {
        if let ControlMessage::RunScript(r) = recv_work(&mut ws).await {
            break r;
        }
    };
    run(&mut ws, &r, "reloaded\n", 0).await;
    let runs_url = format!("/runs?server={}", e.id);
    let runs = async || t.get(&runs_url).await.to_string().matches("reload-app").count();
    let runs_before = runs().await;
    assert!(runs_before > 0);

    // A compromised agent alternates contents (the old one, a made-up one, the desired one),
    // applied and failed, with a new error each time.
    let made_up = ManagedFile {
        content: "made up".into(),
        source: None,
        ..f2.clone()
    };
    for i in 0..10 {
        send(&mut ws, applied(&f1, None)).await;
        send(&mut ws, applied(&made_up, None)).await;
        send(&mut ws, applied(&f2, None)).await;
        send(&mut ws, applied(&f1, Some(&format!("old content failed {i}")))).await;
        send(&mut ws, applied(&f2, Some(&format!("failed {i}")))).await;
    }
    send(&mut ws, applied(&f2, Some("the last report"))).await;
    let app = t.running.as_ref().expect("running").app.clone();
    t.wait_for("the last report recorded", async |_| {
        let rec = app
            .store
            .get_as::<stratus_server::app::agents::AgentRecord>(&e.id)
            .await
            .expect("store")
            .expect("record");
        (rec.files.get("/etc/app/config.json")?.error.as_deref() == Some("the last report")).then_some(())
    })
    .await;
    assert_eq!(runs().await, runs_before, "no more runs of the watched file's script");
    let audited = t.audit("action=server.file_failed").await;
    assert_eq!(audited.len(), 1, "one failure audited per content: {audited:?}");
    assert_eq!(audited[0]["detail"]["sha256"], json!(f2.sha256()), "{audited:?}");
}
