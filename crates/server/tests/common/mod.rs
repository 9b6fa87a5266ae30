//! A control plane started in-process on a temporary data directory, and a small API client.

#![allow(dead_code)]

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
    c
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = stratus_server::start(config(dir.path())).await.expect("start");
        let token = std::fs::read_to_string(&running.admin_token_file).expect("admin token").trim().to_string();
        Self { url: running.url.clone(), running: Some(running), token, dir, http: reqwest::Client::new() }
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

    pub async fn call_as(&self, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
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
        let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
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

    /// Apply a deployment file given as TOML text.
    pub async fn apply_toml(&self, toml_text: &str, dry_run: bool) -> (StatusCode, Value) {
        let doc = stratus_api::file::parse(toml_text, stratus_api::file::Format::Toml, "test.toml", None).expect("test file parses");
        self.post("/apply", serde_json::json!({ "document": doc, "dry_run": dry_run })).await
    }

    /// Poll until the server reaches `state` (bounded).
    pub async fn wait_state(&self, key: &str, state: &str) -> Value {
        let path = format!("/servers/{}", key.replace('/', "%2F"));
        for _ in 0..200 {
            let v = self.get(&path).await;
            if v["state"] == state {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server {key} never became {state}: {}", self.get(&path).await);
    }
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
    let (s, v) = t.post("/credentials", serde_json::json!({"name": "lb-stats", "value": value})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}
