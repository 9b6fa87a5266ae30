//! A W3C WebDriver client for the few endpoints the dashboard test and benchmark use, over
//! reqwest: the crates that wrap the protocol bring a second HTTP stack (`http 0.2`) into the
//! build for a handful of calls. Also starts chromedriver and Debian's chromium, headless.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WebDriver session.
pub struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    pub async fn start(driver: &str) -> Self {
        let http = reqwest::Client::new();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let v: Value = http
            .post(format!("{driver}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver")
            .json()
            .await
            .expect("json");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"));
        Self {
            http,
            session: format!("{driver}/session/{id}"),
        }
    }

    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().await.expect("webdriver").json().await.expect("json");
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The first element matching `css`, waiting up to 15 s for it.
    pub async fn find(&self, css: &str) -> String {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({ "using": "css selector", "value": css })),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(Instant::now() < until, "no element {css}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        let v = self
            .cmd(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})))
            .await;
        assert!(v.is_null(), "click {css}: {v}");
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        let id = self.find("body").await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Wait (bounded) until the page's text satisfies `want`; the text.
    pub async fn wait_text(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text().await;
            if want(&t) {
                return t;
            }
            assert!(Instant::now() < until, "the page never showed {what}:\n{t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn script(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    pub async fn screenshot(&self, dir: &Path, name: &str) {
        use base64::Engine;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("png"))
            .expect("base64");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    pub async fn close(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// Start chromedriver on a free port; the child (killed on drop) and its URL.
pub async fn chromedriver() -> (Kill, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Kill(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/host-packages.sh installs chromium-driver)"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{url}/status")).send().await.is_err() {
        assert!(Instant::now() < until, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, url)
}
