//! Runs: reading them. Runs are created by the orchestrator (boot, decommission) and, with the
//! agent, by `stratus run`.

use chrono::Utc;
use stratus_api::params::RunListParams;
use stratus_api::views::Page;
use stratus_store::{Query, TypedStore};
use stratus_types::RunId;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::Server;

use super::{Actor, App, AppError, OBSERVER};

pub async fn list(app: &App, actor: &Actor, p: &RunListParams) -> Result<Page<Run>, AppError> {
    actor.require(OBSERVER)?;
    let scope = match &p.server {
        Some(key) => Some(super::resolve::server(&*app.store, key).await?.id.to_string()),
        None => None,
    };
    let q = Query {
        scope,
        state: p.status.clone(),
        after: p.after.clone(),
        limit: super::page_limit(p.limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Run>(&q).await?;
    Ok(Page { items, next })
}

pub async fn show(app: &App, actor: &Actor, id: &str) -> Result<Run, AppError> {
    actor.require(OBSERVER)?;
    if id.parse::<uuid::Uuid>().is_err() {
        return Err(AppError::invalid("id", "is not a run id"));
    }
    app.store
        .get_as::<Run>(id)
        .await?
        .ok_or_else(|| AppError::not_found("run", id))
}

/// A new, queued run of `script` on `s`. Its inputs are recorded as given (`cred:NAME`, never
/// a value), limited to those the script declares.
pub fn queued(s: &Server, script: &Script, phase: Phase, requested_by: &str) -> Run {
    Run {
        id: RunId::new(),
        server: s.id,
        server_name: s.name.clone(),
        deployment: s.deployment.clone(),
        script: script.spec.name.clone(),
        script_revision: script.revision,
        revision: 1,
        phase,
        inputs: s
            .inputs
            .iter()
            .filter(|(k, _)| script.spec.inputs.iter().any(|d| &d.name == *k))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        status: RunStatus::Queued,
        exit_code: None,
        output: String::new(),
        output_truncated: false,
        requested_by: requested_by.into(),
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
    }
}
