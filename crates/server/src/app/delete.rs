//! Deleting catalog entries and deployments. Every delete removes what its create made, or
//! refuses (`409 conflict`, naming the users) while something still uses it; nothing changes
//! on a refusal.
//!
//! | kind       | refused while                                   | removes                     |
//! |------------|-------------------------------------------------|-----------------------------|
//! | cloud      | live servers on it; images with a version on it; addresses allocated on it; deployments or arrays that default to it | the record; what the driver made for it ([`stratus_cloud::CloudDriver::tear_down`]: a local cloud's instances, bridge, nftables tables, cgroups, metadata service, state directory and identity key); the control plane's driver, gateway listener and subnet claim |
//! | image      | templates naming it; live servers or arrays launching from any of its versions | the record with every version, and the native images Stratus made that no other image names ([`super::images::delete_native`]) |
//! | script     | templates naming it                             | the record                  |
//! | template   | live servers; arrays                            | the record and its versions |
//! | deployment | live servers; arrays                            | the record                  |
//!
//! The cloud is changed first and the record deleted last, so a delete that fails half-way
//! (the cloud refused, the store failed) leaves the record and is finished by running it
//! again: every cloud step is safe to repeat. Terminated servers, their runs and the audit log
//! stay: they are history, not something the create made. Other resources' deletes live with
//! them: `credentials::delete` (the sealed value), `users::delete` (tokens; logins revoked on
//! every server), `addresses::release`, `artifacts::delete` (unreferenced blobs),
//! `arrays::delete`; servers are terminated, never deleted (`reconcile::decommission`).

use stratus_store::{Change, Query, TemplateVersion, TypedStore};
use stratus_types::address::Address;
use stratus_types::cloud::Cloud;
use stratus_types::deployment::Deployment;
use stratus_types::image::Image;
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerArray};
use stratus_types::template::ServerTemplate;

use super::catalog::Catalog;
use super::resolve::named;
use super::{Actor, App, AppError, OPERATOR, audit};

/// What a delete checks against, loaded once.
struct Users {
    catalog: Catalog,
    live_servers: Vec<Server>,
    arrays: Vec<ServerArray>,
}

impl Users {
    async fn load(app: &App) -> Result<Self, AppError> {
        let store = &*app.store;
        let live = Query {
            live_only: true,
            ..Default::default()
        };
        Ok(Self {
            catalog: Catalog::load(store).await?,
            live_servers: store.list_all::<Server>(&live).await?,
            arrays: store.list_all::<ServerArray>(&Query::default()).await?,
        })
    }

    fn servers(&self, f: impl Fn(&Server) -> bool) -> Vec<String> {
        self.live_servers
            .iter()
            .filter(|s| f(s))
            .map(|s| format!("{}/{}", s.deployment, s.name))
            .collect()
    }

    fn arrays(&self, f: impl Fn(&ServerArray) -> bool) -> Vec<String> {
        self.arrays
            .iter()
            .filter(|a| f(a))
            .map(|a| format!("{}/{}", a.spec.deployment, a.spec.name))
            .collect()
    }

    fn templates(&self, f: impl Fn(&ServerTemplate) -> bool) -> Vec<String> {
        self.catalog
            .templates
            .values()
            .filter(|t| f(t))
            .map(|t| t.spec.name.to_string())
            .collect()
    }
}

/// `409` naming what uses `kind name`, when anything does.
fn unused(kind: &str, name: &str, list: Vec<String>, what: &str) -> Result<(), AppError> {
    if list.is_empty() {
        return Ok(());
    }
    Err(AppError::Conflict(format!(
        "{kind} {name} is used by {what} {}; change or remove those first",
        list.join(", ")
    )))
}

/// Delete a catalog entry or deployment after checking nothing uses it (see the module docs).
pub async fn delete(app: &App, actor: &Actor, kind: &'static str, name: &str) -> Result<(), AppError> {
    actor.require(OPERATOR)?;
    let users = Users::load(app).await?;
    let mut changes = match kind {
        "cloud" => cloud(app, &users, name).await?,
        "image" => image(app, &users, name).await?,
        "script" => script(app, &users, name).await?,
        "template" => template(app, &users, name).await?,
        "deployment" => deployment(app, &users, name).await?,
        _ => return Err(AppError::not_found("kind", kind)),
    };
    changes.push(audit(actor, &format!("{kind}.delete"), format!("{kind}/{name}"), ()));
    app.commit(changes).await
}

async fn cloud(app: &App, users: &Users, name: &str) -> Result<Vec<Change>, AppError> {
    let c = named::<Cloud>(&*app.store, name).await?;
    let on_it = |n: &stratus_types::Name| n.as_str() == name;
    unused("cloud", name, users.servers(|s| on_it(&s.cloud)), "servers")?;
    let images = users
        .catalog
        .images
        .values()
        .filter(|i| i.versions.iter().any(|v| v.clouds.keys().any(on_it)) || i.spec.clouds.keys().any(on_it))
        .map(|i| i.spec.name.to_string())
        .collect();
    unused(
        "cloud",
        name,
        images,
        "images (a version of each has a native image on it)",
    )?;
    let addresses = app
        .store
        .list_all::<Address>(&Query::default())
        .await?
        .into_iter()
        .filter(|a| on_it(&a.cloud))
        .map(|a| a.name.to_string())
        .collect();
    unused("cloud", name, addresses, "addresses (release them)")?;
    let deployments = app
        .store
        .list_all::<Deployment>(&Query::default())
        .await?
        .into_iter()
        .filter(|d| d.spec.cloud.as_ref().is_some_and(on_it))
        .map(|d| d.spec.name.to_string())
        .collect();
    unused("cloud", name, deployments, "deployments")?;
    unused(
        "cloud",
        name,
        users.arrays(|a| a.spec.cloud.as_ref().is_some_and(on_it)),
        "arrays",
    )?;
    app.drivers.remove(&*app.store, &c.spec.name).await?;
    Ok(vec![Change::delete(&c)])
}

async fn image(app: &App, users: &Users, name: &str) -> Result<Vec<Change>, AppError> {
    let i = named::<Image>(&*app.store, name).await?;
    let is_it = |n: &stratus_types::Name| n.as_str() == name;
    unused("image", name, users.templates(|t| is_it(&t.spec.image)), "templates")?;
    unused("image", name, users.servers(|s| is_it(&s.image)), "live servers")?;
    let launching = users.arrays(|a| a.next_launch_image.as_ref().is_some_and(|r| is_it(&r.image)));
    unused("image", name, launching, "arrays (their next launch)")?;
    super::images::delete_native(app, &i, &users.catalog).await?;
    Ok(vec![Change::delete(&i)])
}

async fn script(app: &App, users: &Users, name: &str) -> Result<Vec<Change>, AppError> {
    let s = named::<Script>(&*app.store, name).await?;
    let names_it = |t: &ServerTemplate| {
        t.spec
            .phases()
            .iter()
            .any(|(_, l)| l.iter().any(|n| n.as_str() == name))
    };
    unused("script", name, users.templates(names_it), "templates")?;
    Ok(vec![Change::delete(&s)])
}

async fn template(app: &App, users: &Users, name: &str) -> Result<Vec<Change>, AppError> {
    let t = named::<ServerTemplate>(&*app.store, name).await?;
    unused(
        "template",
        name,
        users.servers(|s| s.template.as_str() == name),
        "servers",
    )?;
    let arrays = users.arrays(|a| a.spec.template.as_str() == name);
    unused("template", name, arrays, "arrays")?;
    let q = Query {
        scope: Some(t.id.to_string()),
        ..Default::default()
    };
    let mut changes: Vec<Change> = app
        .store
        .list_all::<TemplateVersion>(&q)
        .await?
        .iter()
        .map(Change::delete)
        .collect();
    changes.push(Change::delete(&t));
    Ok(changes)
}

async fn deployment(app: &App, users: &Users, name: &str) -> Result<Vec<Change>, AppError> {
    let d = super::apply::deployment(&*app.store, name).await?;
    let servers = users.servers(|s| s.deployment.as_str() == name);
    unused("deployment", name, servers, "live servers")?;
    let arrays = users.arrays(|a| a.spec.deployment.as_str() == name);
    unused("deployment", name, arrays, "arrays")?;
    Ok(vec![Change::delete(&d)])
}
