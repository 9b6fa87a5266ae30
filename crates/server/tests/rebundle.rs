//! Rebundling on the fake cloud: a server becomes a version of its array's image, members
//! launch from it and skip the per-image scripts it baked in, a template change makes it
//! stale, old versions are collected; and every refusal changes nothing.

mod common;

use common::agent::{operational, recv_ack, send};
use common::{TestServer, assert_error, error_text};
use reqwest::StatusCode;
use serde_json::{Value, json};
use stratus_agent_proto::{AgentMessage, ControlMessage, ImagePrepared};

/// The example plus a per-image "heavy" script, a per-instance one, and an array of `app`.
const BUNDLED: &str = r#"
[[script]]
name = "build-dataset"
frequency = "per-image"
body = "echo building for a long time"

[[script]]
name = "start-app"
frequency = "per-instance"
body = "echo starting"
inputs = [{ name = "DB_PASSWORD", kind = "cred" }]

[[template]]
name = "worker"
image = "debian-12"
boot_scripts = ["build-dataset", "start-app"]
inputs = { DB_PASSWORD = "cred:db-password" }

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
max = 5
desired = 0
"#;

async fn setup(t: &TestServer) {
    t.example().await;
    let (s, v) = t
        .post(
            "/credentials",
            json!({"name": "db-password", "value": "db-pass-5ecret-9"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, plan) = t.apply_toml(BUNDLED, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    t.wait_state("example/golden", "operational").await;
}

async fn boot_scripts(t: &TestServer, server: &str) -> Vec<String> {
    let runs = t.list_all(&format!("/runs?server={}", common::enc(server))).await;
    let mut names: Vec<String> = runs
        .iter()
        .filter(|r| r["phase"] == "boot")
        .map(|r| r["script"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Wait for an array member to exist and turn operational.
async fn member(t: &TestServer, key: &str) -> Value {
    let path = format!("/servers/{}", common::enc(key));
    t.wait_for(&format!("{key} operational"), async |t| {
        let (s, v) = t.call(reqwest::Method::GET, &path, None).await;
        (s == StatusCode::OK && v["state"] == "operational").then_some(v)
    })
    .await
}

async fn rebundle(t: &TestServer, server: &str, body: Value) -> (StatusCode, Value) {
    t.post(&format!("/servers/{}/rebundle", common::enc(server)), body)
        .await
}

#[tokio::test]
async fn a_rebundled_server_becomes_the_arrays_image_and_members_skip_baked_scripts() {
    let t = TestServer::start().await;
    setup(&t).await;
    assert_eq!(
        boot_scripts(&t, "example/golden").await,
        ["build-dataset", "start-app"],
        "from the base image every boot script runs"
    );

    let (s, r) = rebundle(&t, "example/golden", json!({ "array": "workers" })).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["image"].as_str(), r["version"].as_u64()),
        (Some("worker-bundle"), Some(1)),
        "{r}"
    );
    assert!(r["native_id"].as_str().unwrap().starts_with("fake-img-"), "{r}");
    let golden = t.get("/servers/example%2Fgolden").await;
    assert_eq!(golden["state"], "terminated", "its identity is gone: {golden}");
    assert_eq!(golden["rebundle"]["step"], "captured", "{golden}");

    // The version and its provenance.
    let versions = t.get("/images/worker-bundle/versions").await;
    let v = &versions[0];
    let p = &v["provenance"];
    assert_eq!(p["source_name"], "example/golden", "{v}");
    assert_eq!(p["template"], "worker");
    assert_eq!(p["array"], "workers");
    assert_eq!(p["base"], json!({ "image": "debian-12", "version": 1 }));
    assert!(
        p["baked"]["build-dataset"].is_string(),
        "the per-image script is baked: {p}"
    );
    assert!(
        p["baked"].get("start-app").is_none(),
        "per-instance scripts are not: {p}"
    );
    assert_eq!(
        (v["current"].as_bool(), v["stale"].as_bool()),
        (Some(true), Some(false)),
        "{v}"
    );
    assert_eq!(v["used_by"], json!(["array example/workers"]));
    let array = t.get("/arrays/example/workers").await;
    assert_eq!(
        array["next_launch_image"],
        json!({ "image": "worker-bundle", "version": 1 })
    );

    // A member launched from it skips the baked per-image script and runs the per-instance one.
    let (s, v) = t.post("/arrays/example/workers/scale", json!({ "desired": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let m = member(&t, "example/workers-1").await;
    assert_eq!(
        (m["image"].as_str(), m["image_version"].as_u64()),
        (Some("worker-bundle"), Some(1))
    );
    assert_eq!(boot_scripts(&t, "example/workers-1").await, ["start-app"]);

    // A changed per-image script runs again, even from the image.
    let (s, v) = t
        .put(
            "/scripts/build-dataset",
            json!({ "name": "build-dataset", "frequency": "per-image", "body": "echo building v2" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.post("/arrays/example/workers/scale", json!({ "desired": 2 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    member(&t, "example/workers-2").await;
    assert_eq!(
        boot_scripts(&t, "example/workers-2").await,
        ["build-dataset", "start-app"]
    );

    // ...and the image is stale: its template's content hash moved on.
    let versions = t.get("/images/worker-bundle/versions").await;
    assert_eq!(versions[0]["stale"], true, "{versions}");
    assert!(
        versions[0]["note"]
            .as_str()
            .unwrap()
            .contains("template worker changed"),
        "{versions}"
    );

    // Rebuilt: a builder converges from the base image and is rebundled; version 2 is fresh.
    let (s, r) = t.post("/arrays/example/workers/rebundle", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["version"], 2, "{r}");
    assert_eq!(r["server"], "example/workers-bundler-1", "{r}");
    let versions = t.get("/images/worker-bundle/versions").await;
    assert_eq!(
        (versions[1]["stale"].as_bool(), versions[1]["current"].as_bool()),
        (Some(false), Some(true)),
        "{versions}"
    );
    let array = t.get("/arrays/example/workers").await;
    assert_eq!(array["next_launch_image"]["version"], 2);
    let audit = t.audit("action=image.capture").await;
    assert_eq!(audit.len(), 2, "{audit:?}");
}

#[tokio::test]
async fn old_versions_are_collected_keeping_the_newest_and_those_in_use() {
    let t = TestServer::start().await;
    setup(&t).await;
    // Three captures: golden, then two relaunched goldens. After the first, a member launches
    // from version 1 and keeps running it.
    for round in 1..=3u64 {
        let (s, r) = rebundle(&t, "example/golden", json!({ "array": "workers", "then": "relaunch" })).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["version"], round);
        assert_eq!(r["relaunched"], "example/golden", "{r}");
        let g = t.wait_state("example/golden", "operational").await;
        assert_eq!(g["image"], "debian-12", "a relaunch boots from the image it had: {g}");
        if round == 1 {
            let (s, v) = t.post("/arrays/example/workers/scale", json!({ "desired": 1 })).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let m = member(&t, "example/workers-1").await;
            assert_eq!(m["image_version"], 1);
        }
    }
    // Refused: keep 0.
    let (s, v) = t.post("/images/worker-bundle/gc", json!({ "keep": 0 })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, v) = t.post("/images/worker-bundle/gc", json!({ "keep": "all" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        t.get("/images/worker-bundle/versions").await.as_array().unwrap().len(),
        3
    );

    let (s, v) = t.post("/images/worker-bundle/gc", json!({ "keep": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["removed"], json!([2]), "{v}");
    assert_eq!(v["kept_in_use"], json!([1]), "workers-1 runs version 1: {v}");
    let versions = t.get("/images/worker-bundle/versions").await;
    let left: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [1, 3]);
    assert_eq!(versions[0]["used_by"], json!(["server example/workers-1"]));
    // Again: nothing left to collect.
    let (s, v) = t.post("/images/worker-bundle/gc", json!({ "keep": 1 })).await;
    assert_eq!((s, v["removed"].clone()), (StatusCode::OK, json!([])));
    // Once nothing runs version 1, it goes too.
    let (s, v) = t.post("/arrays/example/workers/scale", json!({ "desired": 0 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.wait_state("example/workers-1", "terminated").await;
    let (s, v) = t.post("/images/worker-bundle/gc", json!({ "keep": 1 })).await;
    assert_eq!((s, v["removed"].clone()), (StatusCode::OK, json!([1])), "{v}");
    // A base image's versions are never collected.
    let (s, v) = t.post("/images/debian-12/gc", json!({ "keep": 1 })).await;
    assert_eq!((s, v["removed"].clone()), (StatusCode::OK, json!([])), "{v}");
    assert_eq!(t.audit("action=image.gc").await.len(), 2);
}

#[tokio::test]
async fn bad_rebundle_requests_change_nothing() {
    let t = TestServer::start().await;
    setup(&t).await;
    let before = t.get("/servers/example%2Fgolden").await;
    for (body, status, text) in [
        (json!({ "array": "nope" }), StatusCode::NOT_FOUND, "nope"),
        (json!({ "array": "Bad Name!" }), StatusCode::BAD_REQUEST, "array"),
        (json!({}), StatusCode::BAD_REQUEST, "array"),
        (
            json!({ "array": "workers", "then": "explode" }),
            StatusCode::BAD_REQUEST,
            "then",
        ),
        (
            json!({ "array": "workers", "extra": 1 }),
            StatusCode::BAD_REQUEST,
            "extra",
        ),
        (
            json!({ "array": "workers", "image": "x".repeat(5000) }),
            StatusCode::BAD_REQUEST,
            "image",
        ),
        (
            json!({ "array": "workers", "image": "debian-12" }),
            StatusCode::BAD_REQUEST,
            "not captured",
        ),
    ] {
        let (s, v) = rebundle(&t, "example/golden", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(error_text(&v).contains(text), "{body}: {v}");
    }
    // An array of another template.
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "apps", "deployment": "example", "template": "app", "max": 2, "desired": 0 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = rebundle(&t, "example/golden", json!({ "array": "apps" })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(error_text(&v).contains("an image fits only its own template"), "{v}");
    // Not operational; unknown server.
    let (s, v) = rebundle(&t, "example/nobody", json!({ "array": "workers" })).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // An observer may not.
    let token = t.user_token("watcher", &["observer"]).await;
    let (s, v) = t
        .call_as(
            Some(&token),
            reqwest::Method::POST,
            "/servers/example%2Fgolden/rebundle",
            Some(json!({ "array": "workers" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    let after = t.get("/servers/example%2Fgolden").await;
    assert_eq!(before, after, "nothing changed");
    assert!(t.audit("action=server.rebundle").await.is_empty());
    let (s, _) = t.call(reqwest::Method::GET, "/images/worker-bundle", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no image was made");
}

#[tokio::test]
async fn an_agent_that_finds_a_secret_refuses_and_the_server_keeps_serving() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (s, v) = t
        .post(
            "/credentials",
            json!({"name": "db-password", "value": "db-pass-5ecret-9"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let file = BUNDLED.replace("[[server]]\nname = \"golden\"\ntemplate = \"worker\"\n", "");
    let (s, plan) = t.apply_toml(&file, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (e, mut ws) = operational(&t, "golden-2", "worker").await;
    let key = "example/golden-2".to_string();

    // The agent is asked, with the secret input's value to look for, and finds it in a file.
    let agent = async {
        let ask = loop {
            if let ControlMessage::PrepareImage(p) = recv_ack(&mut ws).await {
                break p;
            }
        };
        send(
            &mut ws,
            AgentMessage::ImagePrepared(ImagePrepared {
                error: Some("a secret input's value is stored in 1 file(s) (/etc/app.conf)".into()),
                secret_found_in: vec!["/etc/app.conf".into()],
                removed: vec![],
            }),
        )
        .await;
        ask
    };
    let ((s, v), ask) = tokio::join!(rebundle(&t, &key, json!({ "array": "workers" })), agent);
    assert_eq!(
        ask.secrets.iter().map(|s| s.expose().to_string()).collect::<Vec<_>>(),
        ["db-pass-5ecret-9"]
    );
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(
        error_text(&v).contains("/etc/app.conf") && error_text(&v).contains("nothing changed"),
        "{v}"
    );
    assert!(
        !error_text(&v).contains("db-pass-5ecret-9"),
        "the value never shows: {v}"
    );
    let s = t.get(&format!("/servers/{}", e.id)).await;
    assert_eq!(s["state"], "operational", "it keeps serving: {s}");
    assert_eq!(s["rebundle"]["step"], "refused");
    assert!(!s.to_string().contains("db-pass-5ecret-9"));
    assert_eq!(t.audit("action=server.rebundle_refused").await.len(), 1);

    // A second try, prepared this time: the server goes and the fake cloud captures it.
    let agent = async {
        loop {
            if let ControlMessage::PrepareImage(_) = recv_ack(&mut ws).await {
                break;
            }
        }
        send(
            &mut ws,
            AgentMessage::ImagePrepared(ImagePrepared {
                removed: vec!["ssh host keys: 6".into()],
                ..Default::default()
            }),
        )
        .await;
    };
    let ((s, v), ()) = tokio::join!(rebundle(&t, &key, json!({ "array": "workers" })), agent);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["removed"], json!(["ssh host keys: 6"]));
    assert_eq!(t.get(&format!("/servers/{}", e.id)).await["state"], "terminated");
    // An answer that names files but no refusal is refused by the protocol.
    assert!(
        ImagePrepared {
            secret_found_in: vec!["/x".into()],
            ..Default::default()
        }
        .validate()
        .is_err()
    );
}

/// A template whose boot script takes a credential by default and whose operational script is
/// given one per run: neither is one of the server's own inputs.
const KEYED: &str = r#"
[[script]]
name = "uses-default"
frequency = "per-instance"
body = "echo using the default"
inputs = [
  { name = "API_KEY", kind = "cred", default = "cred:script-default" },
  { name = "TPL_KEY", kind = "cred" },
]

[[script]]
name = "rotate"
frequency = "on-demand"
body = "echo rotating"
inputs = [{ name = "NEW_KEY", kind = "cred" }]

[[template]]
name = "keyed"
image = "debian-12"
boot_scripts = ["uses-default"]
operational_scripts = ["rotate"]
inputs = { TPL_KEY = "cred:template-input" }

[[array]]
name = "keyeds"
template = "keyed"
min = 0
max = 2
desired = 0

[deployment]
name = "example"
cloud = "sandbox"
"#;

/// The agent is asked to look for every credential value that reached the server: its template
/// input, a script's default and a per-run input; not for credentials that never reached it.
#[tokio::test]
async fn the_agent_looks_for_every_credential_that_reached_the_server() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    for (name, value) in [
        ("script-default", "default-5ecret-1"),
        ("template-input", "template-5ecret-2"),
        ("run-input", "run-5ecret-3"),
        ("unrelated", "unrelated-5ecret-4"),
    ] {
        let (s, v) = t.post("/credentials", json!({ "name": name, "value": value })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, plan) = t.apply_toml(KEYED, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (e, mut ws) = operational(&t, "keyed-1", "keyed").await;

    // An operational run given a credential of its own, played to the end.
    let (s, r) = t
        .post(
            "/runs",
            json!({ "script": "rotate", "server": e.id, "inputs": { "NEW_KEY": "cred:run-input" } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let sr = loop {
        if let ControlMessage::RunScript(sr) = recv_ack(&mut ws).await {
            break sr;
        }
    };
    common::agent::run(&mut ws, &sr, "rotated\n", 0).await;

    let agent = async {
        let ask = loop {
            if let ControlMessage::PrepareImage(p) = recv_ack(&mut ws).await {
                break p;
            }
        };
        send(
            &mut ws,
            AgentMessage::ImagePrepared(ImagePrepared {
                error: Some("a secret input's value is stored in 1 file(s) (/etc/x)".into()),
                secret_found_in: vec!["/etc/x".into()],
                removed: vec![],
            }),
        )
        .await;
        ask
    };
    let ((s, v), ask) = tokio::join!(rebundle(&t, "example/keyed-1", json!({ "array": "keyeds" })), agent);
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let mut asked: Vec<String> = ask.secrets.iter().map(|s| s.expose().to_string()).collect();
    asked.sort();
    assert_eq!(
        asked,
        ["default-5ecret-1", "run-5ecret-3", "template-5ecret-2"],
        "every credential that reached the server, and only those"
    );
}

/// A credential that reached the server and was then narrowed out of its deployment cannot be
/// sent to the agent to look for, so the rebundle is refused rather than capture it unchecked.
#[tokio::test]
async fn a_credential_narrowed_away_after_delivery_refuses_the_rebundle() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    for (name, value) in [
        ("script-default", "default-5ecret-1"),
        ("template-input", "template-5ecret-2"),
    ] {
        let (s, v) = t.post("/credentials", json!({ "name": name, "value": value })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, plan) = t.apply_toml(KEYED, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (e, _ws) = operational(&t, "keyed-1", "keyed").await;
    let (s, v) = t
        .put(
            "/credentials/template-input",
            json!({ "name": "template-input", "value": "template-5ecret-2", "deployments": ["elsewhere"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = rebundle(&t, "example/keyed-1", json!({ "array": "keyeds" })).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let text = v.to_string();
    assert!(text.contains("template-input"), "{text}");
    assert!(!text.contains("5ecret"), "{text}");
    let server = t.get(&format!("/servers/{}", e.id)).await;
    assert_eq!(server["state"], "operational", "nothing started: {server}");
    assert!(server["rebundle"].is_null(), "{server}");
}
