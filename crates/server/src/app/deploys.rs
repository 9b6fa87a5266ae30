//! Application deploys: the built-in run that puts an archive from the artifact store in place
//! on a server (`stratus-agent app deploy`), at first boot and with `stratus deploy`.
//!
//! A deploy is an ordinary run of the reserved script [`DEPLOY_SCRIPT`], so it has everything
//! runs have: output, exit status, cancel, timeouts, the journal's exactly-once delivery, and
//! rollouts (a concurrency limit and an error budget) for many servers at once. Its inputs are
//! recorded on the run — the application, the archive and the SHA-256 it was *pinned* to when
//! the deploy started — so every server of one rollout gets the same bytes: if the object is
//! overwritten meanwhile, the remaining runs fail ("the archive changed") instead of deploying
//! a mix of versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use stratus_agent_proto::{ArtifactRef, EnvValue, EnvVar, ScriptRun};
use stratus_store::TypedStore;
use stratus_types::artifact::{Object, split_path};
use stratus_types::input::Inputs;
use stratus_types::run::{Phase, Rollout, Run, RunStatus};
use stratus_types::script::Frequency;
use stratus_types::server::{Server, ServerState};
use stratus_types::template::{Application, ServerTemplate};
use stratus_types::{Name, RunId};

use super::{Actor, App, AppError, OPERATOR};

/// The reserved name of the built-in deploy script (user scripts may not start with `stratus-`).
pub const DEPLOY_SCRIPT: &str = "stratus-deploy";

/// What the built-in runs: the agent's own deploy command, with the archive it fetched and
/// verified as an artifact input.
const BODY: &str = "#!/bin/sh\nset -eu\nexec stratus-agent app deploy --name \"$STRATUS_APP\" \
--archive \"$STRATUS_APP_ARCHIVE\" --sha256 \"$STRATUS_APP_SHA256\"\n";

fn script_name() -> Name {
    Name::parse(DEPLOY_SCRIPT).expect("a valid name")
}

/// A queued deploy run of `application` with the archive `bucket/key` pinned at `sha256`.
pub fn queued(s: &Server, application: &Application, archive: &str, sha256: &str, phase: Phase, by: &str) -> Run {
    let mut inputs = BTreeMap::new();
    inputs.insert("STRATUS_APP".to_string(), application.name.to_string());
    inputs.insert("STRATUS_APP_ARCHIVE".to_string(), format!("artifact:{archive}"));
    inputs.insert("STRATUS_APP_SHA256".to_string(), sha256.to_string());
    if let Some(a) = &application.activate {
        inputs.insert("STRATUS_APP_ACTIVATE".to_string(), a.clone());
    }
    Run {
        id: RunId::new(),
        server: s.id,
        server_name: s.name.clone(),
        deployment: s.deployment.clone(),
        script: script_name(),
        script_revision: 1,
        revision: 1,
        phase,
        inputs,
        status: RunStatus::Queued,
        exit_code: None,
        output: String::new(),
        output_truncated: false,
        output_seq: 0,
        rollout: None,
        requested_by: by.into(),
        created_at: Utc::now(),
        sent_at: None,
        timeout_secs: None,
        started_at: None,
        finished_at: None,
    }
}

/// The object an archive path names now.
async fn object(app: &App, archive: &str) -> Result<Object, AppError> {
    let (bucket, key) = split_path(archive).map_err(|e| AppError::invalid("archive", e.problem))?;
    app.store.find_as::<Object>(bucket.as_str(), key).await?.ok_or_else(|| {
        AppError::BadState(format!(
            "archive {archive} does not exist; upload it with `stratus artifact put FILE {archive}`"
        ))
    })
}

/// The first boot's deploy run, if the server's template names an application.
pub async fn boot_run(app: &App, s: &Server, template: &ServerTemplate) -> Result<Option<Run>, AppError> {
    let Some(application) = &template.spec.application else {
        return Ok(None);
    };
    // A missing archive still makes a run: it fails with the reason, and strands the server.
    let sha256 = object(app, &application.archive)
        .await
        .map(|o| o.sha256)
        .unwrap_or_default();
    Ok(Some(queued(
        s,
        application,
        &application.archive,
        &sha256,
        Phase::Boot,
        "system",
    )))
}

/// The run as the agent gets it: the built-in body and the pinned archive as a signed URL.
pub async fn script_run(app: &App, run: &Run, timeout_secs: Option<u64>) -> Result<ScriptRun, AppError> {
    let input = |k: &str| run.inputs.get(k).cloned().unwrap_or_default();
    let archive = input("STRATUS_APP_ARCHIVE");
    let archive = archive.strip_prefix("artifact:").unwrap_or(&archive).to_string();
    let pinned = input("STRATUS_APP_SHA256");
    let o = object(app, &archive).await?;
    // A boot takes the archive as it is when it is delivered (the template's current version);
    // a `stratus deploy` rollout gives every server the content it started with.
    if run.phase != Phase::Boot && o.sha256 != pinned {
        return Err(AppError::BadState(format!(
            "archive {archive} changed since the deploy started (it was {}, it is {}); start the deploy again",
            short(&pinned),
            short(&o.sha256)
        )));
    }
    let url = super::artifacts::agent_url(app, &o, run.server);
    let mut env = vec![
        EnvVar::text("STRATUS_APP", input("STRATUS_APP")),
        EnvVar {
            name: "STRATUS_APP_ARCHIVE".into(),
            value: EnvValue::Artifact(ArtifactRef {
                url: url.url,
                sha256: o.sha256.clone(),
                size: o.size,
                name: o.key.rsplit('/').next().unwrap_or(&o.key).to_string(),
            }),
        },
        EnvVar::text("STRATUS_APP_SHA256", o.sha256.clone()),
    ];
    if let Some(a) = run.inputs.get("STRATUS_APP_ACTIVATE") {
        env.push(EnvVar::text("STRATUS_APP_ACTIVATE", a));
    }
    Ok(ScriptRun {
        run: run.id,
        name: script_name(),
        body: BODY.into(),
        env,
        timeout_secs,
        phase: run.phase,
        frequency: if run.phase == Phase::Boot {
            Frequency::PerInstance
        } else {
            Frequency::OnDemand
        },
    })
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// What `POST /deploys` takes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartDeploy {
    /// `BUCKET/KEY` of the archive in the artifact store.
    pub archive: String,
    /// The servers: a tag selector such as `lb:pool=www`.
    pub selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Without `deployment`, a selector that matches servers of several deployments is refused
    /// unless this is true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_deployments: bool,
    /// At most this many servers at a time (default 1: one server out of rotation at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Stop after more than this many failures (default 0: the first failure stops it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Deploy an archive to every operational server the selector picks whose template names an
/// application, as a rollout. The archive's content is pinned when the deploy starts.
pub async fn start(app: &Arc<App>, actor: &Actor, req: &StartDeploy) -> Result<Rollout, AppError> {
    actor.require(OPERATOR)?;
    let o = object(app, &req.archive).await.map_err(|e| match e {
        AppError::BadState(m) => AppError::Missing(m),
        other => other,
    })?;
    let (deployment, servers) =
        super::rollouts::select(app, &req.selector, req.deployment.as_deref(), req.all_deployments).await?;
    let mut runs = vec![];
    let mut skipped = vec![];
    for s in &servers {
        let template = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await?;
        let key = format!("{}/{}", s.deployment, s.name);
        match template.as_ref().and_then(|t| t.spec.application.as_ref()) {
            None => skipped.push(format!("{key}: template {} names no application", s.template)),
            Some(_) if s.state != ServerState::Operational => skipped.push(format!("{key}: {}", s.state)),
            Some(application) => runs.push(queued(
                s,
                application,
                &req.archive,
                &o.sha256,
                Phase::Operational,
                &actor.name,
            )),
        }
    }
    // The archive (and its activation) runs as root beside the scripts of each server: whoever
    // deploys can read what those servers received, so it needs the attach role of all of it.
    let cat = super::catalog::Catalog::load(&*app.store).await?;
    let mut deployments: BTreeMap<String, Inputs> = BTreeMap::new();
    let mut attached = super::credentials::Attachments::new();
    for r in &runs {
        let Some(s) = servers.iter().find(|s| s.id == r.server) else {
            continue;
        };
        let dep = s.deployment.to_string();
        if !deployments.contains_key(&dep) {
            let d = super::apply::deployment(&*app.store, &dep).await?;
            deployments.insert(dep.clone(), d.spec.inputs);
        }
        let received = super::credentials::received(&cat, &s.template, &deployments[&dep], &s.inputs);
        for (c, how) in received {
            let place = format!(
                "server {dep}/{} receives it ({how}) and a deploy runs as root there",
                s.name
            );
            super::credentials::attach(&mut attached, &c, place);
        }
    }
    super::credentials::require_attach(actor, &cat.credentials, &attached)?;
    let spec = super::rollouts::Planned {
        script: script_name(),
        selector: req.selector.clone(),
        deployment,
        concurrency: req.concurrency.unwrap_or(1),
        max_errors: req.max_errors.unwrap_or(0),
        timeout_secs: req.timeout_secs,
        runs,
        skipped,
        audit: serde_json::json!({ "archive": req.archive, "sha256": o.sha256, "selector": req.selector }),
        action: "deploy.start",
    };
    super::rollouts::launch(app, actor, spec).await
}
