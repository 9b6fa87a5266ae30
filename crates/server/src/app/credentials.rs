//! Credentials: created and replaced with a value, never shown again.

use chrono::Utc;
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::CredentialId;
use stratus_types::credential::{Credential, CredentialSpec, Secret};
use stratus_types::deployment::Deployment;
use stratus_types::input::InputValue;
use stratus_types::server::{Server, ServerArray};
use stratus_types::template::ServerTemplate;

use super::resolve::named;
use super::{ADMIN, Actor, App, AppError, OBSERVER, audit};

/// Create, or replace the value of, a credential. Admins only: a credential's value reaches
/// every instance whose scripts name it.
pub async fn put(app: &App, actor: &Actor, spec: &CredentialSpec, create_only: bool) -> Result<Credential, AppError> {
    actor.require(ADMIN)?;
    spec.validate()?;
    let now = Utc::now();
    let existing = app.store.find_as::<Credential>("", spec.name.as_str()).await?;
    let (mut cred, action, change) = match existing {
        Some(_) if create_only => {
            return Err(AppError::Conflict(format!(
                "credential {} already exists; use PUT to replace its value",
                spec.name
            )));
        }
        Some(mut c) => {
            c.description = spec.description.clone();
            let ch = Change::update(&mut c, now);
            (c, "credential.update", ch)
        }
        None => {
            let c = Credential {
                id: CredentialId::new(),
                revision: 1,
                name: spec.name.clone(),
                description: spec.description.clone(),
                created_at: now,
                updated_at: now,
            };
            let ch = Change::insert(&c);
            (c, "credential.create", ch)
        }
    };
    let sealed = app.keys.seal(&cred.id.to_string(), &spec.value)?;
    let target = format!("credential/{}", spec.name);
    // `spec` serialises its value as ***; the audit entry shows only that it was set.
    app.commit(vec![
        change,
        Change::PutSealed {
            id: cred.id.to_string(),
            sealed,
        },
        audit(actor, action, target, spec),
    ])
    .await?;
    cred.revision = cred.revision.max(1);
    Ok(cred)
}

pub async fn show(app: &App, actor: &Actor, name: &str) -> Result<Credential, AppError> {
    actor.require(OBSERVER)?;
    named::<Credential>(&*app.store, name).await
}

pub async fn list(
    app: &App,
    actor: &Actor,
    limit: Option<u32>,
    after: Option<String>,
) -> Result<Page<Credential>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Credential>(&q).await?;
    Ok(Page { items, next })
}

pub async fn delete(app: &App, actor: &Actor, name: &str) -> Result<(), AppError> {
    actor.require(ADMIN)?;
    let c = named::<Credential>(&*app.store, name).await?;
    let uses_it = |inputs: &stratus_types::input::Inputs| {
        inputs
            .values()
            .any(|v| matches!(v, InputValue::Cred(n) if n == &c.name))
    };
    let mut users: Vec<String> = app
        .store
        .list_all::<ServerTemplate>(&Query::default())
        .await?
        .into_iter()
        .filter(|t| uses_it(&t.spec.inputs))
        .map(|t| format!("template {}", t.spec.name))
        .collect();
    users.extend(
        app.store
            .list_all::<Deployment>(&Query::default())
            .await?
            .into_iter()
            .filter(|d| uses_it(&d.spec.inputs))
            .map(|d| format!("deployment {}", d.spec.name)),
    );
    // Arrays launch new members from their inputs, and live servers may still need the value.
    let arrays = app.store.list_all::<ServerArray>(&Query::default()).await?;
    users.extend(
        arrays
            .into_iter()
            .filter(|a| uses_it(&a.spec.inputs))
            .map(|a| format!("array {}", a.spec.name)),
    );
    let live = app
        .store
        .list_all::<Server>(&Query {
            live_only: true,
            ..Default::default()
        })
        .await?;
    users.extend(
        live.into_iter()
            .filter(|s| uses_it(&s.inputs))
            .map(|s| format!("server {}/{}", s.deployment, s.name)),
    );
    if !users.is_empty() {
        return Err(AppError::Conflict(format!(
            "credential {name} is used by {}; change those inputs first",
            users.join(", ")
        )));
    }
    let target = format!("credential/{name}");
    app.commit(vec![
        Change::delete(&c),
        Change::DeleteSealed { id: c.id.to_string() },
        audit(actor, "credential.delete", target, ()),
    ])
    .await
}

/// The plain value, for delivery to an instance (the agent gateway) — never for a response.
pub async fn reveal(app: &App, name: &str) -> Result<Secret, AppError> {
    let c = named::<Credential>(&*app.store, name).await?;
    let sealed = app
        .store
        .sealed(&c.id.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("credential value", name))?;
    Ok(app.keys.open(&c.id.to_string(), &sealed)?)
}
