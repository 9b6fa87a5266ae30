//! `stratus artifact ...`: buckets and objects of the artifact store.
//!
//! Uploads stream the file and send its SHA-256 (computed first), so the control plane refuses
//! content damaged on the way. Downloads are written to a temporary file next to the target,
//! checked against the SHA-256 the control plane sent, and only then renamed into place: a
//! failed download never leaves a partial file under the name asked for.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stratus_types::artifact::split_path;
use tokio::io::AsyncReadExt;

use super::Ctx;
use crate::args::{ArtifactCmd, DeployArgs};
use crate::client::seg;
use crate::output::{Column, list, show};

const BUCKET_COLUMNS: &[Column] = &[("NAME", "/name"), ("CREATED", "/created_at"), ("BY", "/created_by")];
const OBJECT_COLUMNS: &[Column] = &[
    ("KEY", "/key"),
    ("SIZE", "/size"),
    ("SHA256", "/sha256"),
    ("UPDATED", "/updated_at"),
];

/// `BUCKET/KEY` checked here, so a typo is refused before anything is sent.
fn object_path(path: &str) -> anyhow::Result<(String, String)> {
    let (b, k) = split_path(path).map_err(|e| anyhow::anyhow!("{path:?}: {}", e.problem))?;
    Ok((b.to_string(), k.to_string()))
}

pub async fn artifact(ctx: &Ctx, cmd: &ArtifactCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        ArtifactCmd::Mb { bucket } => {
            let b = c.post("/buckets", &json!({ "name": bucket })).await?;
            if ctx.json {
                show(true, &b);
            } else {
                say!("made bucket {bucket}");
            }
        }
        ArtifactCmd::Rb { bucket } => {
            c.delete(&format!("/buckets/{}", seg(bucket))).await?;
            if !ctx.json {
                say!("removed bucket {bucket}");
            }
        }
        ArtifactCmd::Ls { path: None, page } => {
            let items = c.list("/buckets", vec![], page.limit, page.all_pages).await?;
            list(ctx.json, &items, BUCKET_COLUMNS);
        }
        ArtifactCmd::Ls { path: Some(p), page } => {
            let (bucket, prefix) = p.split_once('/').unwrap_or((p, ""));
            let mut q = vec![];
            if !prefix.is_empty() {
                q.push(("prefix", prefix.to_string()));
            }
            let items = c
                .list(
                    &format!("/buckets/{}/objects", seg(bucket)),
                    q,
                    page.limit,
                    page.all_pages,
                )
                .await?;
            list(ctx.json, &items, OBJECT_COLUMNS);
        }
        ArtifactCmd::Put { file, path } => put(ctx, file, path).await?,
        ArtifactCmd::Get { path, output } => get(ctx, path, output.as_deref()).await?,
        ArtifactCmd::Info { path } => {
            let (bucket, key) = object_path(path)?;
            let o = c
                .get(&format!("/buckets/{}/object-info", seg(&bucket)), &[("key", key)])
                .await?;
            show(ctx.json, &o);
        }
        ArtifactCmd::Rm { path } => {
            let (bucket, key) = object_path(path)?;
            let req = c
                .request(Method::DELETE, &format!("/buckets/{}/object", seg(&bucket)))
                .query(&[("key", &key)]);
            c.execute(req).await?;
            if !ctx.json {
                say!("deleted {path}");
            }
        }
        ArtifactCmd::Url { path, ttl } => {
            let (bucket, key) = object_path(path)?;
            let u = c
                .post(
                    &format!("/buckets/{}/url", seg(&bucket)),
                    &json!({ "key": key, "ttl_secs": ttl }),
                )
                .await?;
            if ctx.json {
                show(true, &u);
            } else {
                say!("{}", u["url"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// The file's SHA-256, read once before the upload.
async fn file_sha256(file: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

async fn put(ctx: &Ctx, file: &Path, path: &str) -> anyhow::Result<()> {
    let c = &ctx.client;
    let (bucket, key) = object_path(path)?;
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    // Asked first: a control plane that refuses the upload before reading it closes the
    // connection mid-body, and the client would report that instead of the reason.
    c.get(&format!("/buckets/{}", seg(&bucket)), &[]).await?;
    let (sha256, size) = file_sha256(file).await?;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    let req = c
        .request(Method::PUT, &format!("/buckets/{}/object", seg(&bucket)))
        .query(&[("key", key.as_str()), ("sha256", sha256.as_str())])
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::from(f));
    let o: Value = c.execute(req).await?.json().await?;
    if ctx.json {
        show(true, &o);
    } else {
        say!("uploaded {} to {path} ({size} bytes, sha256 {sha256})", file.display());
    }
    Ok(())
}

async fn get(ctx: &Ctx, path: &str, output: Option<&Path>) -> anyhow::Result<()> {
    let c = &ctx.client;
    let (bucket, key) = object_path(path)?;
    let req = c
        .request(Method::GET, &format!("/buckets/{}/object", seg(&bucket)))
        .query(&[("key", &key)]);
    let mut resp = c.execute(req).await?;
    let expected = resp
        .headers()
        .get(stratus_server::http::artifacts::SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .context("the control plane sent no SHA-256 for the object")?;
    let to_stdout = output.is_some_and(|o| o == Path::new("-"));
    let target: PathBuf = match output {
        Some(o) => o.to_path_buf(),
        None => PathBuf::from(key.rsplit('/').next().unwrap_or(&key)),
    };
    let mut h = Sha256::new();
    let mut size = 0u64;
    if to_stdout {
        // Written as it arrives; a mismatch at the end is still an error (exit 1).
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = resp.chunk().await? {
            h.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk)?;
        }
        out.flush()?;
    } else {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
        while let Some(chunk) = resp.chunk().await? {
            h.update(&chunk);
            size += chunk.len() as u64;
            tmp.write_all(&chunk)?;
        }
        let actual = hex::encode(h.clone().finalize());
        if actual != expected {
            bail!("{path}: the download's SHA-256 is {actual}, not {expected}; nothing was written");
        }
        tmp.as_file().sync_all()?;
        tmp.persist(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    let actual = hex::encode(h.finalize());
    if actual != expected {
        bail!("{path}: the download's SHA-256 is {actual}, not {expected}");
    }
    if !to_stdout && !ctx.json {
        say!(
            "downloaded {path} to {} ({size} bytes, sha256 verified)",
            target.display()
        );
    }
    Ok(())
}

/// `stratus deploy ARCHIVE --to SELECTOR`: upload a local archive if needed, then start the
/// deploy rollout (and follow it with `--follow`).
pub async fn deploy(ctx: &Ctx, a: &DeployArgs) -> anyhow::Result<()> {
    let local = Path::new(&a.archive);
    let archive = if local.is_file() {
        let path = template_archive(ctx, a).await?;
        put(ctx, local, &path).await?;
        path
    } else {
        object_path(&a.archive).with_context(|| format!("{} is neither a file here nor BUCKET/KEY", a.archive))?;
        a.archive.clone()
    };
    let mut body = json!({ "archive": archive, "selector": a.to, "max_errors": a.max_errors });
    if let Some(d) = &a.deployment {
        body["deployment"] = d.clone().into();
    }
    if a.all_deployments {
        body["all_deployments"] = true.into();
    }
    if let Some(n) = a.concurrency {
        body["concurrency"] = n.into();
    }
    if let Some(t) = a.timeout {
        body["timeout_secs"] = t.into();
    }
    super::runs::launch_rollout(ctx, "/deploys", &body, a.follow, &format!("deploy of {archive}")).await
}

/// The one archive the selected servers' templates name (a local file is uploaded over it).
async fn template_archive(ctx: &Ctx, a: &DeployArgs) -> anyhow::Result<String> {
    let c = &ctx.client;
    let mut q = vec![("tag", a.to.clone())];
    if let Some(d) = &a.deployment {
        q.push(("deployment", d.clone()));
    }
    let servers = c.list("/servers", q, None, true).await?;
    let mut templates: Vec<String> = servers
        .iter()
        .filter_map(|s| s["template"].as_str().map(str::to_string))
        .collect();
    templates.sort();
    templates.dedup();
    let mut archives = std::collections::BTreeSet::new();
    for t in &templates {
        let v = c.get(&format!("/templates/{}", seg(t)), &[]).await?;
        if let Some(archive) = v["application"]["archive"].as_str() {
            archives.insert(archive.to_string());
        }
    }
    match archives.len() {
        1 => Ok(archives.into_iter().next().unwrap_or_default()),
        0 => bail!(
            "no server matching {:?} has a template that names an application archive",
            a.to
        ),
        _ => bail!(
            "the servers matching {:?} name different archives ({}); deploy one of them as BUCKET/KEY",
            a.to,
            archives.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}
