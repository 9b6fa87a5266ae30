//! Identity and enrolment: user-data and the identity document from the metadata service
//! (IMDSv2 token first, as EC2 clients do), then the one-time enrolment.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::time::Duration;

use crate::AgentError;
use crate::config::{AgentConfig, UserData};

/// An HTTP client for the control plane, with TLS as [`crate::tls`] sets it up (never the
/// HTTP library's own default, which refuses to start on a host without CA certificates).
pub fn http(tls: &std::sync::Arc<rustls::ClientConfig>) -> Result<reqwest::Client, AgentError> {
    crate::tls::http_builder(tls)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| identity_err("an HTTP client", crate::error_chain(&e)))
}

/// For the metadata service: plain HTTP on a link-local address.
fn plain_http() -> Result<reqwest::Client, AgentError> {
    http(&crate::tls::client_config(&[])?)
}

fn identity_err(what: &str, detail: impl ToString) -> AgentError {
    AgentError::Identity {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// GET a metadata path with an IMDSv2 session token.
async fn metadata(base: &str, path: &str) -> Result<String, AgentError> {
    let c = plain_http()?;
    let token = c
        .put(format!("{base}/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await
        .map_err(|e| identity_err("the metadata service", e))?
        .text()
        .await
        .map_err(|e| identity_err("the metadata service", e))?;
    let r = c
        .get(format!("{base}{path}"))
        .header("x-aws-ec2-metadata-token", token.trim())
        .send()
        .await
        .map_err(|e| identity_err(path, e))?;
    if !r.status().is_success() {
        return Err(identity_err(path, format!("HTTP {}", r.status())));
    }
    r.text().await.map_err(|e| identity_err(path, e))
}

pub async fn user_data(cfg: &AgentConfig) -> Result<UserData, AgentError> {
    let text = match (&cfg.user_data_file, &cfg.metadata_url) {
        (Some(f), _) => std::fs::read_to_string(f).map_err(|e| identity_err(&f.display().to_string(), e))?,
        (None, Some(base)) => metadata(base, "/latest/user-data").await?,
        (None, None) => {
            return Err(identity_err(
                "user-data",
                "neither a file nor a metadata service is configured",
            ));
        }
    };
    serde_json::from_str(&text).map_err(|e| identity_err("user-data", format!("not Stratus user-data: {e}")))
}

/// The stored credential, or a fresh enrolment.
pub async fn credential(
    cfg: &AgentConfig,
    ud: &UserData,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<String, AgentError> {
    let file = cfg.credential_file();
    if let Ok(c) = std::fs::read_to_string(&file) {
        return Ok(c.trim().to_string());
    }
    let mut body = serde_json::json!({ "server_id": ud.server_id, "enrolment_token": ud.enrolment_token });
    if let Some(base) = &cfg.metadata_url {
        body["identity_document"] = metadata(base, "/latest/dynamic/instance-identity/document")
            .await?
            .into();
        body["identity_signature"] = metadata(base, "/latest/dynamic/instance-identity/signature")
            .await?
            .into();
    }
    let url = format!("{}/api/v1/agent/enroll", ud.stratus_url.trim_end_matches('/'));
    let r = http(tls)?
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| AgentError::Unreachable {
            url: url.clone(),
            detail: crate::error_chain(&e),
        })?;
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    let Some(token) = v["agent_token"].as_str().filter(|_| status == 200) else {
        // The instance can be up before the orchestrator has recorded its launch (the server
        // is still `pending`): that passes in moments, so it is worth a quick retry.
        if status == 409 && v["error"]["code"] == "bad_state" {
            return Err(AgentError::NotYet(
                v["error"]["message"].as_str().unwrap_or("not yet").to_string(),
            ));
        }
        return Err(AgentError::Enrolment {
            status,
            message: v["error"]["message"].as_str().unwrap_or("no message").to_string(),
        });
    };
    save_private(cfg, token)?;
    Ok(token.to_string())
}

fn save_private(cfg: &AgentConfig, token: &str) -> Result<(), AgentError> {
    let state = |e| AgentError::State {
        path: cfg.state_dir.display().to_string(),
        source: e,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .map_err(state)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(cfg.credential_file())
        .map_err(state)?;
    f.write_all(token.as_bytes()).map_err(state)
}
