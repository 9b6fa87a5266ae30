//! Artifact inputs: fetch an object by its signed URL, verify its SHA-256, keep it in a cache
//! keyed by the hash (`STATE/artifacts/SHA256/NAME`, root-only), and hand the script the path.
//!
//! A file is in the cache only once it was verified: the download goes to a temporary name and
//! is renamed into place after the hash matched, so a cut-off or tampered download never reaches
//! a script, and a second run with the same content fetches nothing.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use stratus_agent_proto::ArtifactRef;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The cache directory under the agent's state directory.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("artifacts")
}

/// The full URL: relative ones are resolved against the control plane's URL.
pub fn resolve(base: &str, url: &str) -> String {
    if url.starts_with('/') {
        format!("{}{url}", base.trim_end_matches('/'))
    } else {
        url.to_string()
    }
}

/// Fetch (or find in the cache) one artifact; the error is a sentence for the run's output.
pub async fn artifact(http: &reqwest::Client, base: &str, a: &ArtifactRef, cache: &Path) -> Result<PathBuf, String> {
    let dir = cache.join(&a.sha256);
    let path = dir.join(&a.name);
    if path.is_file() {
        return Ok(path);
    }
    let mkdir = |d: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(|e| format!("cannot create {}: {e}", d.display()))
    };
    mkdir(cache)?;
    let tmp = cache.join(format!(
        ".part-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = download(http, &resolve(base, &a.url), a, &tmp).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("artifact {}: {e}", a.name));
    }
    mkdir(&dir)?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot move {} into place: {e}", a.name))?;
    Ok(path)
}

async fn download(http: &reqwest::Client, url: &str, a: &ArtifactRef, tmp: &Path) -> Result<(), String> {
    let mut resp = http
        .get(url)
        .send()
        .await
        // Without the URL: it is a signed capability and the message goes into the run's output.
        .map_err(|e| {
            format!(
                "cannot reach the artifact store: {}",
                crate::error_chain(&e.without_url())
            )
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect());
        return Err(format!("the artifact store answered {status}: {message}"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("the download was cut off: {}", crate::error_chain(&e.without_url())))?
    {
        size += chunk.len() as u64;
        if size > a.size {
            return Err(format!("the download is larger than the {} bytes expected", a.size));
        }
        h.update(&chunk);
        f.write_all(&chunk)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    let actual = hex::encode(h.finalize());
    if actual != a.sha256 {
        return Err(format!(
            "the download's SHA-256 is {actual}, not the expected {}",
            a.sha256
        ));
    }
    f.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok(())
}
