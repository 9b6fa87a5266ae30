//! A control plane in a process of its own, as far as one process can have another: its own
//! runtime, shut down at once to kill it (no task of it runs another instruction, as after
//! `kill -9`); and a blocking API client. Shared by the restart tests and the recovery
//! benchmark (`benches/recovery.rs`).

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use stratus_server::app::operations::StepGate;
use stratus_server::drivers::FakeClouds;
use stratus_types::operation::Step;

/// A control plane in a runtime of its own, killed whole when dropped.
pub struct Process {
    rt: Option<tokio::runtime::Runtime>,
    pub url: String,
}

impl Process {
    /// Start one with `config`, seeing the cloud `fakes`, its operation driver held before
    /// `stop_before` (if given).
    pub fn start(config: &stratus_server::Config, fakes: &FakeClouds, stop_before: Option<Step>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut c = config.clone();
        c.fake_clouds = fakes.clone();
        c.operation_gate = stop_before.map(|step| StepGate(Arc::new(move |op| op.step != step)));
        let running = rt.block_on(stratus_server::start(c)).expect("start");
        let url = running.url.clone();
        // Dropped with the runtime (the tasks it holds die with it).
        std::mem::forget(running);
        Self { rt: Some(rt), url }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The API, from a runtime of the test's own.
pub struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    token: String,
}

impl Api {
    pub fn new(dir: &Path) -> Self {
        Self {
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            http: reqwest::Client::new(),
            token: std::fs::read_to_string(dir.join("admin.token"))
                .expect("token")
                .trim()
                .to_string(),
        }
    }

    pub fn call(&self, p: &Process, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method, format!("{}/api/v1{path}", p.url))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("request");
            resp.json().await.unwrap_or(Value::Null)
        })
    }

    pub fn get(&self, p: &Process, path: &str) -> Value {
        self.call(p, reqwest::Method::GET, path, None)
    }

    pub fn post(&self, p: &Process, path: &str, body: Value) -> Value {
        self.call(p, reqwest::Method::POST, path, Some(body))
    }

    /// Send a request that waits for its operation, without waiting for its answer (the
    /// control plane is killed under it).
    pub fn fire(&self, p: &Process, path: &str, body: Value) {
        let req = self
            .http
            .post(format!("{}/api/v1{path}", p.url))
            .bearer_auth(&self.token)
            .json(&body);
        self.rt.spawn(async move {
            let _ = req.send().await;
        });
    }

    pub fn apply(&self, p: &Process, toml_text: &str) {
        let doc = stratus_api::file::parse(toml_text, stratus_api::file::Format::Toml, "t.toml", None).expect("parses");
        let plan = self.post(p, "/apply", json!({ "document": doc }));
        assert!(plan.get("error").is_none(), "{plan}");
    }
}
