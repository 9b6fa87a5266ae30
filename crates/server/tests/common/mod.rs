//! A control plane started in-process on a temporary data directory, and a small API client.

#![allow(dead_code)]

pub mod agent;
pub mod process;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use stratus_server::{Config, Running};

pub struct TestServer {
    pub running: Option<Running>,
    pub url: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

pub fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir, "127.0.0.1:0".parse().expect("addr"));
    c.reconcile_interval = Duration::from_millis(50);
    // Test agents connect from loopback, not from the fake instances' addresses.
    c.agent_source_check = false;
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with a changed configuration.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        change(&mut c);
        let running = stratus_server::start(c).await.expect("start");
        let token = std::fs::read_to_string(&running.admin_token_file)
            .expect("admin token")
            .trim()
            .to_string();
        Self {
            url: running.url.clone(),
            running: Some(running),
            token,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Stop and start again on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
        let running = stratus_server::start(config(self.dir.path())).await.expect("restart");
        self.url = running.url.clone();
        self.running = Some(running);
    }

    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}/api/v1{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Send a body as given (malformed JSON, a wrong content type, a huge upload).
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(Some(&self.token.clone()), method, path, body).await
    }

    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Every item of a paged list, following `next` with small pages so paging is exercised.
    pub async fn list_all(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = vec![];
        let mut after: Option<String> = None;
        for _ in 0..1000 {
            let page_path = match &after {
                Some(a) => format!("{path}{sep}limit=7&after={}", enc(a)),
                None => format!("{path}{sep}limit=7"),
            };
            let page = self.get(&page_path).await;
            items.extend(page["items"].as_array().expect("a page has items").iter().cloned());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return items,
            }
        }
        panic!("{path}: paging never ended");
    }

    /// The `name` of every item of a list.
    pub async fn names(&self, path: &str) -> Vec<String> {
        self.list_all(path)
            .await
            .iter()
            .map(|v| v["name"].as_str().expect("item has a name").to_string())
            .collect()
    }

    /// The audit log (newest first), optionally filtered by a query string such as `action=server.`.
    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let v = self.get(&format!("/audit?limit=1000&{query}")).await;
        v.as_array().expect("audit is a list").clone()
    }

    /// Create a user with these roles and return a fresh API token of theirs.
    pub async fn user_token(&self, name: &str, roles: &[&str]) -> String {
        let (s, v) = self
            .post("/users", serde_json::json!({ "name": name, "roles": roles }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "create user {name}: {v}");
        let (s, v) = self
            .post("/tokens", serde_json::json!({ "user": name, "description": "test" }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "create token for {name}: {v}");
        v["token"].as_str().expect("token").to_string()
    }

    /// Everything a user can list, plus the audit log: equal snapshots mean nothing changed.
    pub async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for path in [
            "/clouds",
            "/images",
            "/scripts",
            "/templates",
            "/deployments",
            "/servers?all=true",
            "/arrays",
            "/credentials",
            "/users",
            "/addresses",
            "/buckets",
        ] {
            out.insert(path.into(), Value::Array(self.list_all(path).await));
        }
        out.insert("/audit".into(), Value::Array(self.audit("").await));
        Value::Object(out)
    }

    /// Apply [`EXAMPLE`] (with its credential, unless it exists) and wait until its servers are
    /// operational.
    pub async fn example(&self) {
        if self.call(Method::GET, "/credentials/lb-stats", None).await.0 == StatusCode::NOT_FOUND {
            example_credential(self, "example-stats-password").await;
        }
        let (s, plan) = self.apply_toml(EXAMPLE, false).await;
        assert_eq!(s, StatusCode::OK, "{plan}");
        for name in ["lb-1", "app-1", "app-2"] {
            self.wait_state(&format!("example/{name}"), "operational").await;
        }
    }

    /// Poll `check` until it returns `Some` (bounded).
    pub async fn wait_for<T>(&self, what: &str, mut check: impl AsyncFnMut(&Self) -> Option<T>) -> T {
        for _ in 0..400 {
            if let Some(v) = check(self).await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Apply a deployment file given as TOML text.
    pub async fn apply_toml(&self, toml_text: &str, dry_run: bool) -> (StatusCode, Value) {
        let doc = stratus_api::file::parse(toml_text, stratus_api::file::Format::Toml, "test.toml", None)
            .expect("test file parses");
        self.post("/apply", serde_json::json!({ "document": doc, "dry_run": dry_run }))
            .await
    }

    /// Poll until the server reaches `state` (bounded: 5 s).
    pub async fn wait_state(&self, key: &str, state: &str) -> Value {
        self.wait_state_within(key, state, Duration::from_secs(5)).await
    }

    /// Poll until the server reaches `state`, at most `limit` (a shared cloud endpoint under
    /// another test's load answers slowly).
    pub async fn wait_state_within(&self, key: &str, state: &str, limit: Duration) -> Value {
        let path = format!("/servers/{}", key.replace('/', "%2F"));
        for _ in 0..limit.as_millis().div_ceil(25) {
            let v = self.get(&path).await;
            if v["state"] == state {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server {key} never became {state}: {}", self.get(&path).await);
    }
}

/// The API path of a server given by id or `deployment/name`.
pub fn server_path(key: &str) -> String {
    format!("/servers/{}", enc(key))
}

/// Percent-encode a path segment or query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Assert an error response: its status, its stable code, and a message.
pub fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {body}"
    );
}

/// The error's message and every field error, as one lowercase text to search.
pub fn error_text(body: &Value) -> String {
    let mut text = body["error"]["message"].as_str().unwrap_or_default().to_string();
    for f in body["error"]["fields"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            " | {}: {}",
            f["field"].as_str().unwrap_or_default(),
            f["problem"].as_str().unwrap_or_default()
        ));
    }
    text.to_lowercase()
}

/// The field names of an `invalid_input` error.
pub fn error_fields(body: &Value) -> Vec<String> {
    body["error"]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["field"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An `authorized_keys` line for a well-formed ed25519 public key made from `seed`.
pub fn ed25519_key(seed: u8, comment: &str) -> String {
    use base64::Engine;
    let mut blob = vec![];
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend((0..32u8).map(|i| i.wrapping_mul(31).wrapping_add(seed)));
    format!(
        "ssh-ed25519 {} {comment}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// The example deployment shape used across tests: a fake cloud, one image, scripts, an LB
/// template and an app template, two app servers and one LB.
pub const EXAMPLE: &str = r#"
[[cloud]]
name = "sandbox"
driver = "fake"
regions = [{ name = "local", zones = ["a"] }]
sizes = [
  { name = "small", cpus = 1, memory = "512MiB" },
  { name = "medium", cpus = 2, memory = "2GiB" },
]
address_pools = [{ name = "public", cidr = "198.51.100.0/29" }]

[[image]]
name = "debian-12"
[image.clouds.sandbox]
native_id = "debian-12-base"
default_size = "small"

[[script]]
name = "install-nginx"
frequency = "per-instance"
body = "apt-get install -y nginx"
inputs = [{ name = "APP_PORT", default = "8080" }]

[[script]]
name = "configure-lb"
frequency = "every-boot"
body = "echo configure haproxy"
inputs = [{ name = "STATS_PASSWORD", kind = "cred" }]

[[template]]
name = "app"
image = "debian-12"
boot_scripts = ["install-nginx"]
default_tags = ["lb:pool=www"]
firewall = [{ protocol = "tcp", ports = 8080 }]

[[template]]
name = "lb"
image = "debian-12"
size = { cpus = 2, memory = "1GiB" }
boot_scripts = ["configure-lb"]
default_tags = ["lb:balances=www"]
inputs = { STATS_PASSWORD = "cred:lb-stats" }

[deployment]
name = "example"
cloud = "sandbox"

[[server]]
name = "lb-1"
template = "lb"

[[server]]
name = "app-1"
template = "app"

[[server]]
name = "app-2"
template = "app"
"#;

/// Create the credential the example needs.
pub async fn example_credential(t: &TestServer, value: &str) {
    let (s, v) = t
        .post("/credentials", serde_json::json!({"name": "lb-stats", "value": value}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}
