//! What the dashboard stands on: its assets (served from the binary, with a strict content
//! security policy), the live-change stream, and per-run inputs.

mod common;

use common::agent::operational;
use common::{TestServer, assert_error, error_fields};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let t = TestServer::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = http.get(format!("{}/", t.url)).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/ui/");
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = http.get(format!("{}{path}", t.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(
            r.headers()["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let page = http
        .get(format!("{}/ui/", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external resources"
    );
    let script = http
        .get(format!("{}/ui/app.js", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!script.contains("innerHTML"), "data never goes into the page as HTML");
}

#[tokio::test]
async fn the_event_stream_needs_a_token_and_announces_changes() {
    let t = TestServer::start().await;
    let (s, _) = t.call_as(None, reqwest::Method::GET, "/events", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let mut resp = t
        .http
        .get(format!("{}/api/v1/events", t.url))
        .bearer_auth(&t.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    t.example().await;
    let mut seen = String::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen.contains(r#""kind":"server""#) {
        assert!(std::time::Instant::now() < until, "no server change announced: {seen}");
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), resp.chunk())
            .await
            .expect("in time")
            .unwrap()
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: change"), "{seen}");
    assert!(!seen.contains("stats-password"), "ids and kinds only: {seen}");
}

#[tokio::test]
async fn per_run_inputs_are_checked_against_the_script() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "status", "frequency": "on-demand", "body": "#!/bin/sh\necho \"$LEVEL\"\n",
                    "inputs": [{ "name": "LEVEL", "default": "info" }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .put(
            "/templates/app",
            json!({ "name": "app", "image": "debian-12", "boot_scripts": ["install-nginx"],
                    "operational_scripts": ["status"], "default_tags": ["lb:pool=www"] }),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let (e, _ws) = operational(&t, "app-5", "app").await;
    let before = t.snapshot().await;
    for (inputs, field) in [
        (json!({ "NOPE": "x" }), "inputs.NOPE"),
        (json!({ "LEVEL": "artifact:b/k" }), "inputs.LEVEL"),
        (json!({ "LEVEL": "text:a\u{0}b" }), "inputs.LEVEL"),
        (json!({ "LEVEL": "cred:Not A Name" }), "inputs.LEVEL"),
    ] {
        let (s, v) = t
            .post("/runs", json!({ "script": "status", "server": e.id, "inputs": inputs }))
            .await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        assert!(error_fields(&v).iter().any(|f| f == field), "{field}: {v}");
    }
    assert_eq!(t.snapshot().await, before, "a refused run changes nothing");
    let (s, r) = t
        .post(
            "/runs",
            json!({ "script": "status", "server": e.id, "inputs": { "LEVEL": "debug" } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["inputs"]["LEVEL"], "debug", "{r}");
}
