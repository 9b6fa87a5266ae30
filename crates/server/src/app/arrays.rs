//! Server arrays: N servers from one template. The orchestrator keeps the live member count at
//! `desired`; this file records what is desired.

use chrono::Utc;
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::Name;
use stratus_types::server::{ArraySpec, ServerArray, ServerSpec};

use super::{Actor, App, AppError, OBSERVER, OPERATOR, audit};

/// The launch request for member `n` of an array: `<array>-<n>`.
pub fn member_spec(a: &ArraySpec, n: u32) -> ServerSpec {
    ServerSpec {
        // Array names are at most 56 characters, so the suffix always fits a name.
        name: Name::parse(&format!("{}-{n}", a.name)).unwrap_or_else(|_| a.name.clone()),
        deployment: a.deployment.clone(),
        template: a.template.clone(),
        cloud: a.cloud.clone(),
        region: None,
        size: a.size.clone(),
        inputs: a.inputs.clone(),
        tags: a.tags.clone(),
    }
}

pub async fn find(app: &App, deployment: &str, name: &str) -> Result<ServerArray, AppError> {
    app.store
        .find_as::<ServerArray>(deployment, name)
        .await?
        .ok_or_else(|| AppError::not_found("array", format!("{deployment}/{name}")))
}

pub async fn show(app: &App, actor: &Actor, deployment: &str, name: &str) -> Result<ServerArray, AppError> {
    actor.require(OBSERVER)?;
    find(app, deployment, name).await
}

pub async fn list(
    app: &App,
    actor: &Actor,
    deployment: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
) -> Result<Page<ServerArray>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        scope: deployment,
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<ServerArray>(&q).await?;
    Ok(Page { items, next })
}

pub async fn scale(
    app: &App,
    actor: &Actor,
    deployment: &str,
    name: &str,
    desired: u32,
) -> Result<ServerArray, AppError> {
    actor.require(OPERATOR)?;
    let mut a = find(app, deployment, name).await?;
    if desired < a.spec.min || desired > a.spec.max {
        return Err(AppError::invalid(
            "desired",
            format!("{desired} is outside min..max ({}..{})", a.spec.min, a.spec.max),
        ));
    }
    let from = a.spec.desired;
    // Growing launches servers: a first one of its template in the deployment to receive a
    // credential needs the role to attach it.
    if desired > from {
        let store = &*app.store;
        let cat = super::catalog::Catalog::load(store).await?;
        let dep = super::apply::deployment(store, deployment).await?;
        let mut attached = super::credentials::Attachments::new();
        let place = format!("array {deployment}/{name}");
        super::credentials::launch_receipts(
            store,
            &cat,
            &dep,
            &a.spec.template,
            &a.spec.inputs,
            &place,
            &mut attached,
        )
        .await?;
        super::credentials::require_attach(actor, &cat.credentials, &attached)?;
    }
    a.spec.desired = desired;
    let target = format!("array/{deployment}/{name}");
    app.commit(vec![
        Change::update(&mut a, Utc::now()),
        audit(
            actor,
            "array.scale",
            target,
            serde_json::json!({"from": from, "to": desired}),
        ),
    ])
    .await?;
    Ok(a)
}

pub async fn delete(app: &App, actor: &Actor, deployment: &str, name: &str) -> Result<(), AppError> {
    actor.require(OPERATOR)?;
    let a = find(app, deployment, name).await?;
    if a.spec.desired > 0 {
        return Err(AppError::Conflict(format!(
            "array {name} still wants {} servers; scale it to 0 first",
            a.spec.desired
        )));
    }
    let target = format!("array/{deployment}/{name}");
    app.commit(vec![Change::delete(&a), audit(actor, "array.delete", target, ())])
        .await
}

/// Create an array in an existing deployment (the API's POST).
pub async fn create(app: &App, actor: &Actor, spec: &ArraySpec) -> Result<ServerArray, AppError> {
    let file = stratus_api::file::DeploymentFile {
        deployment: Some(
            super::apply::deployment(&*app.store, spec.deployment.as_str())
                .await?
                .spec,
        ),
        arrays: vec![stratus_api::file::FileArray {
            name: spec.name.clone(),
            template: spec.template.clone(),
            cloud: spec.cloud.clone(),
            size: spec.size.clone(),
            min: spec.min,
            max: spec.max,
            desired: spec.desired,
            inputs: spec.inputs.clone(),
            tags: spec.tags.clone(),
            autoscale: spec.autoscale,
            scale_in: spec.scale_in,
        }],
        ..Default::default()
    };
    if app
        .store
        .find_as::<ServerArray>(spec.deployment.as_str(), spec.name.as_str())
        .await?
        .is_some()
    {
        return Err(AppError::Conflict(format!(
            "array {}/{} already exists",
            spec.deployment, spec.name
        )));
    }
    super::apply::apply(app, actor, &file, super::apply::Mode::Upsert, false).await?;
    find(app, spec.deployment.as_str(), spec.name.as_str()).await
}
