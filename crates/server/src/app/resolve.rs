//! Finding resources by what users type: a name, or for servers an id or `deployment/name`.

use stratus_store::{Datastore, Query, Resource, TypedStore};
use stratus_types::server::Server;
use stratus_types::template::ServerTemplate;

use super::AppError;

/// The live resource of kind `T` named `name` (global scope).
pub async fn named<T: Resource>(store: &dyn Datastore, name: &str) -> Result<T, AppError> {
    store
        .find_as::<T>("", name)
        .await?
        .ok_or_else(|| AppError::not_found(T::KIND.as_str(), name))
}

/// A server by id, or by `deployment/name` (the live one, else the newest terminated one, so
/// `show` still answers after a termination).
pub async fn server(store: &dyn Datastore, key: &str) -> Result<Server, AppError> {
    let found = match key.split_once('/') {
        Some((dep, name)) => match store.find_as::<Server>(dep, name).await? {
            Some(s) => Some(s),
            None => {
                let q = Query {
                    scope: Some(dep.into()),
                    name: Some(name.into()),
                    ..Default::default()
                };
                store.list_all::<Server>(&q).await?.pop()
            }
        },
        None if key.parse::<uuid::Uuid>().is_ok() => store.get_as::<Server>(key).await?,
        None => {
            return Err(AppError::invalid(
                "server",
                format!(
                    "{:?} is neither a server id nor DEPLOYMENT/NAME",
                    stratus_types::name::truncate(key)
                ),
            ));
        }
    };
    found.ok_or_else(|| AppError::not_found("server", key))
}

/// A page of resources of one kind (catalog lists).
pub async fn page<T: Resource>(
    app: &super::App,
    actor: &super::Actor,
    limit: Option<u32>,
    after: Option<String>,
) -> Result<stratus_api::views::Page<T>, AppError> {
    actor.require(super::OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<T>(&q).await?;
    Ok(stratus_api::views::Page { items, next })
}

/// One resource by name, for an observer.
pub async fn show<T: Resource>(app: &super::App, actor: &super::Actor, name: &str) -> Result<T, AppError> {
    actor.require(super::OBSERVER)?;
    named::<T>(&*app.store, name).await
}

/// Every version of a template, oldest first.
pub async fn template_versions(
    app: &super::App,
    actor: &super::Actor,
    name: &str,
) -> Result<Vec<ServerTemplate>, AppError> {
    let t = show::<ServerTemplate>(app, actor, name).await?;
    let q = Query {
        scope: Some(t.id.to_string()),
        ..Default::default()
    };
    let mut versions: Vec<ServerTemplate> = app
        .store
        .list_all::<stratus_store::TemplateVersion>(&q)
        .await?
        .into_iter()
        .map(|v| v.0)
        .collect();
    versions.sort_by_key(|v| v.version);
    Ok(versions)
}
