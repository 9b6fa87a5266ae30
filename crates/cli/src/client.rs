//! A small client of the Stratus HTTP API. Every error response becomes an [`ApiFailure`] that
//! carries the API's stable code and its message (with the bad fields).

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stratus_api::error::ErrorBody;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An error the API returned.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// Percent-encode one path segment (server keys hold a `/`, fingerprints `/` and `+`).
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: http_client(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> anyhow::Result<Value> {
        let text = self.send_text(method, path, query, body).await?;
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// A plain-text answer (console output).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.send_text::<()>(Method::GET, path, &[], None).await
    }

    async fn send_text<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> anyhow::Result<String> {
        let mut req = self.request(method, path).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        Ok(self.execute(req).await?.text().await?)
    }

    /// A request to an API path, with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}{path}", self.base, stratus_api::API_PREFIX);
        let req = self.http.request(method, &url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Send a request; an error status becomes an [`ApiFailure`], a success is returned for
    /// the caller to read (as text, JSON or a stream of bytes).
    pub async fn execute(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the control plane at {}: {e}; is `stratus serve` running? (set --url or STRATUS_URL)",
                self.base
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await?;
        let failure = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => {
                let message = b.error.message;
                ApiFailure {
                    status,
                    code: serde_json::to_value(b.error.code)?
                        .as_str()
                        .unwrap_or("internal")
                        .to_string(),
                    message,
                }
            }
            Err(_) => ApiFailure {
                status,
                code: "internal".into(),
                message: format!("HTTP {status}: {}", stratus_types::name::truncate(&text)),
            },
        };
        Err(failure.into())
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send::<()>(Method::GET, path, query, None).await
    }

    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(serde_json::from_value(self.get(path, &[]).await?)?)
    }

    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn put<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send::<()>(Method::DELETE, path, &[], None).await
    }

    /// A list, following pages when `all` (or up to `limit` items).
    pub async fn list(
        &self,
        path: &str,
        mut query: Vec<(&str, String)>,
        limit: Option<u32>,
        all: bool,
    ) -> anyhow::Result<Vec<Value>> {
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        let mut items = Vec::new();
        loop {
            let page = self.get(path, &query).await?;
            if let Some(arr) = page["items"].as_array() {
                items.extend(arr.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) if all => {
                    query.retain(|(k, _)| *k != "after");
                    query.push(("after", next.to_string()));
                }
                Some(_) => {
                    eprintln!("(showing the first {}; more exist: add --all-pages)", items.len());
                    return Ok(items);
                }
                None => return Ok(items),
            }
        }
    }
}

/// The HTTP client: TLS trusts the system's CA certificates when there are any (the HTTP
/// library's default refuses to start on a host without them, and plain `http://` needs none).
fn http_client() -> reqwest::Client {
    let tls = stratus_agent::tls::client_config(&[]).expect("a TLS configuration without extra CAs builds");
    stratus_agent::tls::http_builder(&tls)
        .build()
        .expect("an HTTP client with a preconfigured TLS configuration builds")
}
