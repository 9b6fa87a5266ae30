//! Servers: launch, terminate, tags, listing. The lifecycle after launch is driven by the
//! orchestrator (`reconcile/`); this file only records intent (a `pending` server, a
//! `decommissioning` one) and pokes it.

use std::collections::BTreeSet;

use chrono::Utc;
use stratus_api::params::{ServerListParams, TagChange};
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::FieldError;
use stratus_types::input::Inputs;
use stratus_types::server::{Server, ServerSpec, ServerState};
use stratus_types::tag::{Selector, Tag};

use super::catalog::{Catalog, build_server};
use super::resolve::server;
use super::{Actor, App, AppError, OBSERVER, OPERATOR, audit};

pub async fn launch(app: &App, actor: &Actor, spec: &ServerSpec) -> Result<Server, AppError> {
    let (server, changes) = prepare_launch(app, actor, spec).await?;
    app.commit(changes).await?;
    Ok(server)
}

/// Everything [`launch`] checks, and the changes that launch the server (its record and the
/// audit entry), for a caller that commits them with changes of its own.
pub async fn prepare_launch(app: &App, actor: &Actor, spec: &ServerSpec) -> Result<(Server, Vec<Change>), AppError> {
    actor.require(OPERATOR)?;
    let dep = super::apply::deployment(&*app.store, spec.deployment.as_str()).await?;
    let cat = Catalog::load(&*app.store).await?;
    let server = build_server(spec, &dep, &cat, None, Utc::now())?;
    // The server's own inputs attach what its template and deployment do not already hand over.
    let mut inherited: Inputs = cat
        .templates
        .get(&spec.template)
        .map(|t| t.spec.inputs.clone())
        .unwrap_or_default();
    inherited.extend(dep.spec.inputs.clone());
    let mut attached = super::credentials::Attachments::new();
    let place = format!("server {}/{}", spec.deployment, spec.name);
    super::credentials::attachments(&spec.inputs, Some(&inherited), &place, &mut attached);
    // And a first server of its template in the deployment starts a flow of its own.
    super::credentials::launch_receipts(
        &*app.store,
        &cat,
        &dep,
        &server.template,
        &server.inputs,
        &place,
        &mut attached,
    )
    .await?;
    super::credentials::require_attach(actor, &cat.credentials, &attached)?;
    let target = format!("server/{}/{}", server.deployment, server.name);
    let changes = vec![Change::insert(&server), audit(actor, "server.launch", target, spec)];
    Ok((server, changes))
}

/// Ask for termination: the orchestrator decommissions and destroys the instance.
pub async fn terminate(app: &App, actor: &Actor, key: &str) -> Result<Server, AppError> {
    actor.require(OPERATOR)?;
    // The orchestrator updates servers concurrently (a launch finishing); a user's intent is
    // re-applied to the fresh record rather than bounced back as `stale`.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match try_terminate(app, actor, key).await {
            Err(AppError::Stale(_)) if attempts < 5 => continue,
            other => return other,
        }
    }
}

async fn try_terminate(app: &App, actor: &Actor, key: &str) -> Result<Server, AppError> {
    let mut s = server(&*app.store, key).await?;
    let now = Utc::now();
    if matches!(s.state, ServerState::Terminated | ServerState::Decommissioning) {
        return Err(AppError::BadState(format!(
            "server {}/{} is already {}",
            s.deployment, s.name, s.state
        )));
    }
    // Even a pending server may have an instance on its way (a launch in flight), so the
    // orchestrator always decommissions; it finds such an instance by server id.
    s.move_to(ServerState::Decommissioning, now)
        .map_err(|e| AppError::BadState(e.to_string()))?;
    let target = format!("server/{}/{}", s.deployment, s.name);
    app.commit(vec![
        Change::update(&mut s, now),
        audit(actor, "server.terminate", target, ()),
    ])
    .await?;
    Ok(s)
}

/// The end of the server's console output (what the instance's init and boot hooks printed),
/// for finding out why a server is stuck. Observers may read it: it holds no secrets Stratus
/// put there (user-data is never printed).
pub async fn console(app: &App, actor: &Actor, key: &str) -> Result<String, AppError> {
    actor.require(OBSERVER)?;
    let s = server(&*app.store, key).await?;
    let Some(instance) = s.instance_id.clone().filter(|_| s.state != ServerState::Terminated) else {
        return Err(AppError::BadState(format!(
            "server {}/{} has no instance (it is {})",
            s.deployment, s.name, s.state
        )));
    };
    let driver = app.drivers.for_cloud(&*app.store, &s.cloud).await?;
    driver
        .console_output(&instance, CONSOLE_BYTES)
        .await
        .map_err(|source| AppError::Cloud {
            context: format!("console of {instance}"),
            source,
        })
}

/// As much console output as EC2's `GetConsoleOutput` returns.
const CONSOLE_BYTES: usize = 64 * 1024;

/// Reboot the instance of a booting or operational server.
pub async fn reboot(app: &App, actor: &Actor, key: &str) -> Result<Server, AppError> {
    actor.require(OPERATOR)?;
    let s = server(&*app.store, key).await?;
    let (Some(instance), true) = (
        s.instance_id.clone(),
        matches!(s.state, ServerState::Booting | ServerState::Operational),
    ) else {
        return Err(AppError::BadState(format!(
            "server {}/{} is {}; only a booting or operational server can reboot",
            s.deployment, s.name, s.state
        )));
    };
    let driver = app.drivers.for_cloud(&*app.store, &s.cloud).await?;
    driver.reboot(&instance).await.map_err(|source| AppError::Cloud {
        context: format!("rebooting {instance}"),
        source,
    })?;
    let target = format!("server/{}/{}", s.deployment, s.name);
    app.commit(vec![audit(
        actor,
        "server.reboot",
        target,
        serde_json::json!({ "instance": instance }),
    )])
    .await?;
    Ok(s)
}

pub async fn show(app: &App, actor: &Actor, key: &str) -> Result<Server, AppError> {
    actor.require(OBSERVER)?;
    server(&*app.store, key).await
}

pub async fn list(app: &App, actor: &Actor, p: &ServerListParams) -> Result<Page<Server>, AppError> {
    actor.require(OBSERVER)?;
    let state = match &p.state {
        Some(s) => Some(
            ServerState::parse(s)
                .ok_or_else(|| {
                    AppError::invalid(
                        "state",
                        format!("{:?} is not a server state", stratus_types::name::truncate(s)),
                    )
                })?
                .as_str()
                .to_string(),
        ),
        None => None,
    };
    let selector = p
        .tag
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| AppError::from(FieldError::new("tag", e.problem)))?;
    let include_terminated = p.all.unwrap_or(false) || state.as_deref() == Some("terminated");
    let q = Query {
        scope: p.deployment.clone(),
        state,
        live_only: !include_terminated,
        selector,
        name: None,
        after: p.after.clone(),
        limit: super::page_limit(p.limit)?,
    };
    let (items, next) = app.store.list_as::<Server>(&q).await?;
    Ok(Page { items, next })
}

/// Add and remove tags in one change.
pub async fn change_tags(app: &App, actor: &Actor, key: &str, change: &TagChange) -> Result<Server, AppError> {
    actor.require(OPERATOR)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match try_change_tags(app, actor, key, change).await {
            Err(AppError::Stale(_)) if attempts < 5 => continue,
            Ok(s) => {
                // The agent holds the server's tags (for `stratus-agent tag list`).
                super::announce::desired_changed(app, s.id).await;
                return Ok(s);
            }
            other => return other,
        }
    }
}

async fn try_change_tags(app: &App, actor: &Actor, key: &str, change: &TagChange) -> Result<Server, AppError> {
    let mut s = server(&*app.store, key).await?;
    if s.state == ServerState::Terminated {
        return Err(AppError::BadState(format!(
            "server {}/{} is terminated",
            s.deployment, s.name
        )));
    }
    let mut tags: BTreeSet<Tag> = s.tags.iter().cloned().collect();
    for t in &change.remove {
        tags.remove(t);
    }
    tags.extend(change.add.iter().cloned());
    if tags.len() > stratus_types::template::TAGS_MAX * 2 {
        return Err(AppError::invalid("add", "a server holds at most 128 tags"));
    }
    s.tags = tags.into_iter().collect();
    let target = format!("server/{}/{}", s.deployment, s.name);
    app.commit(vec![
        Change::update(&mut s, Utc::now()),
        audit(actor, "server.tag", target, change),
    ])
    .await?;
    Ok(s)
}
