//! A credential's value goes in once and never comes out: not in any response (the credential
//! itself, lists, plans, servers and runs that use it, the audit log, error messages), not in the
//! database files (it is stored encrypted), and not in the control plane's log.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span;

/// Distinctive values that must never be shown.
const SECRET: &str = "Zx9-unlikely-Secret-Value-7f3e1c";
const SECRET_2: &str = "Qw4-second-Secret-Value-a8d2b6";

/// Every way a value could be shown that a reader would still recognise.
fn leaks(text: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    [SECRET, SECRET_2]
        .iter()
        .flat_map(|s| [s.to_string(), b64.encode(s), hex::encode(s), s.to_lowercase()])
        .filter(|form| text.contains(form.as_str()))
        .collect()
}

fn assert_clean(what: &str, v: &Value) {
    let text = v.to_string();
    assert!(leaks(&text).is_empty(), "{what} shows a credential value: {text}");
}

/// Every tracing event and span field of this test binary, as text.
fn captured_log() -> &'static Mutex<String> {
    static LOG: OnceLock<&'static Mutex<String>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<String> = Box::leak(Box::new(Mutex::new(String::new())));
        // Another test of this binary may have installed it first; both write to the same place.
        let _ = tracing::subscriber::set_global_default(Capture {
            log,
            next: AtomicU64::new(1),
        });
        log
    })
}

/// A subscriber that keeps every field of every span and event at every level.
struct Capture {
    log: &'static Mutex<String>,
    next: AtomicU64,
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Capture {
    fn keep(&self, f: impl FnOnce(&mut Fields<'_>)) {
        let mut line = String::new();
        f(&mut Fields(&mut line));
        let mut log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.push_str(&line);
        log.push('\n');
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.keep(|f| span.record(f));
        span::Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &span::Id, values: &span::Record<'_>) {
        self.keep(|f| values.record(f));
    }
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        self.keep(|f| event.record(f));
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// A control plane whose log is captured, with the example deployment using a credential
/// whose value is [`SECRET`].
async fn with_secret() -> TestServer {
    captured_log();
    let t = TestServer::start().await;
    let (s, v) = t
        .post(
            "/credentials",
            json!({ "name": "lb-stats", "description": "haproxy stats", "value": SECRET }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_clean("POST /credentials", &v);
    t.example().await;
    t
}

#[tokio::test]
async fn a_credential_value_never_appears_in_a_response() {
    let t = with_secret().await;
    let (s, plan) = t.apply_toml(EXAMPLE, true).await;
    assert_eq!(s, StatusCode::OK);
    assert_clean("a dry-run plan", &plan);
    let (s, plan) = t
        .apply_toml(
            &EXAMPLE.replace("echo configure haproxy", "echo configure haproxy again"),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_clean("an applied plan", &plan);

    let (s, v) = t
        .put(
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "description": "rotated", "value": SECRET_2 }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_clean("PUT /credentials", &v);
    assert_eq!(v["description"], "rotated");
    let (s, v) = t
        .put("/credentials/db-pass", json!({ "name": "db-pass", "value": SECRET }))
        .await;
    assert_eq!(s, StatusCode::OK, "PUT creates too: {v}");
    assert_clean("PUT (create) /credentials", &v);

    let lb = t.get(&server_path("example/lb-1")).await;
    assert_eq!(
        lb["inputs"],
        json!({ "STATS_PASSWORD": "cred:lb-stats" }),
        "a server shows the credential's name"
    );
    let (s, v) = t.post("/servers", json!({ "name": "lb-2", "deployment": "example", "template": "lb", "inputs": { "STATS_PASSWORD": "cred:db-pass" } })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_clean("POST /servers", &v);
    t.wait_state("example/lb-2", "operational").await;
    let lb_runs = format!("/runs?server={}", enc("example/lb-2"));
    let runs = t.get(&lb_runs).await;
    assert_eq!(runs["items"][0]["inputs"], json!({ "STATS_PASSWORD": "cred:db-pass" }));

    let credential = t.get("/credentials/lb-stats").await;
    assert!(credential.get("value").is_none(), "{credential}");
    let audit = t.audit("action=credential.").await;
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(
        audit.iter().all(|e| e["detail"]["value"] == "***"),
        "the audit log shows only that a value was set: {audit:?}"
    );

    let observer = t.user_token("olga", &["observer"]).await;
    for path in [
        "/credentials",
        "/credentials/lb-stats",
        "/credentials/db-pass",
        "/audit?limit=1000",
        "/servers?all=true",
        "/servers/example%2Flb-1",
        "/servers/example%2Flb-2",
        "/runs?limit=1000",
        &lb_runs,
        "/templates",
        "/templates/lb/versions",
        "/deployments",
        "/users",
        "/whoami",
        "/openapi.json",
    ] {
        for token in [Some(t.token.as_str()), Some(observer.as_str())] {
            let (s, v) = t.call_as(token, Method::GET, path, None).await;
            assert_eq!(s, StatusCode::OK, "{path}: {v}");
            assert_clean(path, &v);
        }
    }
}

#[tokio::test]
async fn error_responses_do_not_echo_a_credential_value() {
    let t = with_secret().await;
    let operator = t.user_token("otto", &["operator"]).await;
    let raw = |body: String| (Method::PUT, "/credentials/lb-stats", body);
    let refusals: Vec<(Method, &str, Value, StatusCode)> = vec![
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": SECRET, "extra": 1 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": SECRET, "value2": SECRET }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "other", "value": SECRET }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": SECRET, "description": 5 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": [SECRET] }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": { "v": SECRET } }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": SECRET.repeat(3000) }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/credentials",
            json!({ "name": "lb-stats", "value": SECRET }),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/credentials",
            json!({ "name": "Bad Name", "value": SECRET }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/credentials",
            json!({ "value": SECRET }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/scripts",
            json!({ "name": "lb-stats", "value": SECRET }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/users",
            json!({ "name": "lb-stats", "value": SECRET }),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/credentials/lb-stats",
            Value::Null,
            StatusCode::CONFLICT,
        ),
    ];
    for (method, path, body, want) in refusals {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = t.call(method.clone(), path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        assert_clean(&format!("{method} {path}"), &v);
    }
    let (s, v) = t
        .call_as(
            Some(&operator),
            Method::PUT,
            "/credentials/lb-stats",
            Some(json!({ "name": "lb-stats", "value": SECRET })),
        )
        .await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    assert_clean("an operator's PUT", &v);
    let (s, v) = t
        .call_as(
            Some("stratus_wrong"),
            Method::PUT,
            "/credentials/lb-stats",
            Some(json!({ "name": "lb-stats", "value": SECRET })),
        )
        .await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_clean("an unauthenticated PUT", &v);

    for (method, path, body) in [
        raw(format!("{{\"name\": \"lb-stats\", \"value\": \"{SECRET}\",}}")),
        raw(format!("{{\"name\": \"lb-stats\", \"value\": \"{SECRET}\"")),
        raw(format!("{{\"name\": \"lb-stats\", \"value\": \"{SECRET}\" \"x\"}}")),
        raw(format!("{{\"name\": \"lb-stats\", \"value\": \"{SECRET}\\q\"}}")),
        raw(format!("{{\"value\": \"{SECRET}\", \"name\": 7}}")),
    ] {
        let (s, v) = t.send_raw(method, path, "application/json", body.clone()).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        assert_clean(&body, &v);
    }
    // The value in force is still the first one: nothing above replaced it.
    let app = &t.running.as_ref().unwrap().app;
    let value = stratus_server::app::credentials::reveal(app, "lb-stats")
        .await
        .expect("reveal");
    assert_eq!(value.expose(), SECRET);
}

/// Every byte of the database files in the data directory.
fn database_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("data dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("stratus.db"))
        })
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read database file")))
        .collect();
    assert!(!files.is_empty(), "no database file in {}", dir.display());
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_database_and_the_log_hold_no_credential_value() {
    let t = with_secret().await;
    let (s, v) = t
        .put(
            "/credentials/lb-stats",
            json!({ "name": "lb-stats", "value": SECRET_2 }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .post("/credentials", json!({ "name": "spare", "value": SECRET }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .put(
            "/credentials/spare",
            json!({ "name": "spare", "value": SECRET, "oops": true }),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(t.delete(&server_path("example/lb-1")).await.0, StatusCode::ACCEPTED);
    t.wait_for("lb-1 terminated", async |t: &TestServer| {
        t.names("/servers?state=terminated")
            .await
            .contains(&"lb-1".to_string())
            .then_some(())
    })
    .await;

    // The values are kept (the control plane can still deliver them)...
    let app = &t.running.as_ref().unwrap().app;
    assert_eq!(
        stratus_server::app::credentials::reveal(app, "lb-stats")
            .await
            .expect("reveal")
            .expose(),
        SECRET_2
    );
    assert_eq!(
        stratus_server::app::credentials::reveal(app, "spare")
            .await
            .expect("reveal")
            .expose(),
        SECRET
    );
    // ...but only encrypted: no database file holds them in a readable form, though the files
    // hold the rest of the state (the credential's name, for one).
    let files = database_bytes(t.dir.path());
    assert!(
        files.iter().any(|(_, bytes)| contains(bytes, b"\"spare\"")),
        "the database files hold the state"
    );
    for (path, bytes) in files {
        for secret in [SECRET, SECRET_2] {
            for form in [
                secret.to_string(),
                base64::engine::general_purpose::STANDARD.encode(secret),
                hex::encode(secret),
            ] {
                assert!(
                    !contains(&bytes, form.as_bytes()),
                    "{path} holds a credential value ({form})"
                );
            }
        }
    }

    let log = captured_log()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(
        log.contains("operational") && log.contains("terminated"),
        "the log was captured: {} bytes",
        log.len()
    );
    assert!(
        leaks(&log).is_empty(),
        "the log shows a credential value: {:?}",
        leaks(&log)
    );
}
