//! Runs: reading them. Runs are created by the orchestrator (boot, decommission) and, with the
//! agent, by `stratus run`.

use stratus_api::params::RunListParams;
use stratus_api::views::Page;
use stratus_store::{Query, TypedStore};
use stratus_types::run::Run;

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
