//! Every managed file of a server's desired state, and watched configuration: files kept in
//! step with objects of the artifact store.
//!
//! A template's `watch` entries name a path and an object. The desired state carries each as a
//! managed file whose content is the object (a signed URL and the SHA-256; the agent fetches,
//! verifies and caches it, then writes the file atomically). When the object is written or
//! deleted, every live server whose template watches it gets a new desired-state generation at
//! once ([`object_changed`]); the agent also re-checks the file every `interval_secs` and puts
//! the content back if the file drifted. When an agent reports a watched file changed to new
//! content on a running server, the entry's script runs there as an operational run
//! ([`file_changed`]), recorded and visible like any other.

use chrono::Utc;
use stratus_agent_proto::{ArtifactRef, ControlMessage, ManagedFile};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::artifact::{Object, split_path};
use stratus_types::run::Phase;
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerState};
use stratus_types::template::ServerTemplate;

use super::{App, AppError};

/// The managed files of a server: a load balancer's HAProxy configuration and its template's
/// watched files. A watched object that does not exist (yet) is left out until it does.
pub async fn files_for(app: &App, s: &Server) -> Result<Vec<ManagedFile>, AppError> {
    let mut files = super::lb::files_for(app, s).await?;
    let Some(template) = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await? else {
        return Ok(files);
    };
    for w in &template.spec.watch {
        let Ok((bucket, key)) = split_path(&w.object) else {
            continue;
        };
        let Some(o) = app.store.find_as::<Object>(bucket.as_str(), key).await? else {
            tracing::warn!(server = %s.name, object = %w.object, path = %w.path, "a watched object does not exist");
            continue;
        };
        let url = super::artifacts::agent_url(app, &o, s.id);
        files.push(ManagedFile {
            source: Some(ArtifactRef {
                url: url.url,
                sha256: o.sha256.clone(),
                size: o.size,
                name: key.rsplit('/').next().unwrap_or(key).to_string(),
            }),
            recheck_secs: Some(w.interval_secs),
            mode: w.mode,
            ..ManagedFile::inline(w.path.clone(), "")
        });
    }
    Ok(files)
}

/// An object was written or deleted: every live server whose template watches it gets a new
/// desired state now.
pub async fn object_changed(app: &App, bucket: &str, key: &str) {
    let path = format!("{bucket}/{key}");
    let result = async {
        let templates: Vec<ServerTemplate> = app
            .store
            .list_all::<ServerTemplate>(&Query::default())
            .await?
            .into_iter()
            .filter(|t| t.spec.watch.iter().any(|w| w.object == path))
            .collect();
        if templates.is_empty() {
            return Ok::<_, AppError>(());
        }
        let q = Query {
            live_only: true,
            ..Default::default()
        };
        for s in app.store.list_all::<Server>(&q).await? {
            if templates.iter().any(|t| t.spec.name == s.template) {
                super::announce::desired_changed(app, s.id).await;
            }
        }
        Ok(())
    };
    if let Err(e) = result.await {
        tracing::warn!(object = %path, error = %e, "cannot tell the servers watching an object");
    }
}

/// A watched file on `s` now holds new content: run the entry's script (if it has one and the
/// server is operational; at the first boot the boot scripts see the file anyway).
pub async fn file_changed(app: &App, s: &Server, path: &str) -> Result<(), AppError> {
    if s.state != ServerState::Operational {
        return Ok(());
    }
    let Some(template) = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await? else {
        return Ok(());
    };
    let Some(name) = template
        .spec
        .watch
        .iter()
        .find(|w| w.path == path)
        .and_then(|w| w.script.clone())
    else {
        return Ok(());
    };
    let Some(script) = app.store.find_as::<Script>("", name.as_str()).await? else {
        tracing::warn!(server = %s.name, script = %name, "the script of a watched file does not exist");
        return Ok(());
    };
    let mut run = super::runs::queued(s, &script, Phase::Operational, "system");
    run.sent_at = Some(Utc::now());
    let Some(sr) = super::runs::delivery(app, s, &run, None).await? else {
        return Ok(());
    };
    let actor = super::Actor::system();
    let detail = serde_json::json!({ "script": name, "run": run.id, "path": path });
    let entry = super::audit(
        &actor,
        "run.start",
        format!("server/{}/{}", s.deployment, s.name),
        detail,
    );
    app.commit(vec![Change::insert(&run), entry]).await?;
    if !app.push_agent(s.id, ControlMessage::RunScript(sr)).await {
        // Not connected after all: it gets the run at its next hello (sent runs are resent).
        tracing::info!(server = %s.name, run = %run.id, "the agent is not connected; the run waits for it");
    }
    Ok(())
}
