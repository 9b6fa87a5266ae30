//! Elastic IPs: allocated from a cloud's pool, associated with a server, moved in one call.

use std::net::IpAddr;

use chrono::Utc;
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::AddressId;
use stratus_types::address::{Address, AddressSpec};
use stratus_types::cloud::Cloud;
use stratus_types::server::ServerState;

use super::resolve::named;
use super::{Actor, App, AppError, OBSERVER, OPERATOR, audit};

/// Pick a free address of the pool and record it. Allocations of a cloud's pool addresses are
/// serialised by a store lock, across replicas.
pub async fn allocate(app: &App, actor: &Actor, spec: &AddressSpec) -> Result<Address, AppError> {
    actor.require(OPERATOR)?;
    let cloud = named::<Cloud>(&*app.store, spec.cloud.as_str()).await?;
    // Clouds that hand out their own addresses (EC2's elastic IPs) are asked first.
    if cloud.spec.address_pools.is_empty() && spec.pool.is_none() {
        let driver = app.drivers.for_cloud(&*app.store, &cloud.spec.name).await?;
        let given = driver.allocate_address().await.map_err(|source| AppError::Cloud {
            context: format!("allocating an address on cloud {}", cloud.spec.name),
            source,
        })?;
        if let Some(ip) = given {
            let a = new_address(spec, "cloud".parse().expect("a valid name"), ip);
            let target = format!("address/{}", spec.name);
            let done = app
                .commit(vec![Change::insert(&a), audit(actor, "address.allocate", target, spec)])
                .await;
            if let Err(e) = done {
                // Not recorded (a taken name): give the address back rather than leak it.
                let _ = driver.release_address(ip).await;
                return Err(e);
            }
            return Ok(a);
        }
    }
    let pool =
        match &spec.pool {
            Some(p) => cloud.spec.address_pools.iter().find(|x| &x.name == p).ok_or_else(|| {
                AppError::invalid("pool", format!("cloud {} has no address pool {p}", cloud.spec.name))
            })?,
            None => {
                cloud.spec.address_pools.first().ok_or_else(|| {
                    AppError::invalid("cloud", format!("cloud {} has no address pools", cloud.spec.name))
                })?
            }
        };
    // Across replicas: two allocations never pick the same free address.
    let _guard = app.store.lock(&format!("addresses:{}", cloud.spec.name)).await?;
    let taken: Vec<IpAddr> = app
        .store
        .list_all::<Address>(&Query::default())
        .await?
        .into_iter()
        .filter(|a| a.cloud == spec.cloud)
        .map(|a| a.ip)
        .collect();
    let ip = pool.cidr.hosts().find(|ip| !taken.contains(ip)).ok_or_else(|| {
        AppError::Conflict(format!(
            "address pool {} of cloud {} is full",
            pool.name, cloud.spec.name
        ))
    })?;
    let a = new_address(spec, pool.name.clone(), ip);
    let target = format!("address/{}", spec.name);
    app.commit(vec![Change::insert(&a), audit(actor, "address.allocate", target, spec)])
        .await?;
    Ok(a)
}

fn new_address(spec: &AddressSpec, pool: stratus_types::Name, ip: IpAddr) -> Address {
    let now = Utc::now();
    Address {
        id: AddressId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        name: spec.name.clone(),
        cloud: spec.cloud.clone(),
        pool,
        ip,
        server: None,
    }
}

pub async fn show(app: &App, actor: &Actor, name: &str) -> Result<Address, AppError> {
    actor.require(OBSERVER)?;
    named::<Address>(&*app.store, name).await
}

pub async fn list(
    app: &App,
    actor: &Actor,
    limit: Option<u32>,
    after: Option<String>,
) -> Result<Page<Address>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Address>(&q).await?;
    Ok(Page { items, next })
}

/// Point the address at a server (moving it if it was elsewhere); takes effect on the cloud now.
pub async fn associate(app: &App, actor: &Actor, name: &str, server_key: &str) -> Result<Address, AppError> {
    actor.require(OPERATOR)?;
    let mut a = named::<Address>(&*app.store, name).await?;
    let mut s = super::resolve::server(&*app.store, server_key).await?;
    if s.cloud != a.cloud {
        return Err(AppError::invalid(
            "server",
            format!(
                "server {}/{} is on cloud {}, the address on {}",
                s.deployment, s.name, s.cloud, a.cloud
            ),
        ));
    }
    let instance = match (&s.instance_id, s.state) {
        (Some(i), ServerState::Booting | ServerState::Operational) => i.clone(),
        _ => {
            return Err(AppError::BadState(format!(
                "server {}/{} is {} and has no running instance",
                s.deployment, s.name, s.state
            )));
        }
    };
    let driver = app.drivers.for_cloud(&*app.store, &a.cloud).await?;
    driver
        .associate_address(&instance, a.ip)
        .await
        .map_err(|source| AppError::Cloud {
            context: format!("associating {}", a.ip),
            source,
        })?;
    let now = Utc::now();
    let mut changes = vec![];
    if let Some(prev) = a.server.filter(|p| *p != s.id)
        && let Some(mut old) = app
            .store
            .get_as::<stratus_types::server::Server>(&prev.to_string())
            .await?
    {
        old.public_ip = None;
        changes.push(Change::update(&mut old, now));
    }
    a.server = Some(s.id);
    s.public_ip = Some(a.ip);
    changes.push(Change::update(&mut a, now));
    changes.push(Change::update(&mut s, now));
    changes.push(audit(
        actor,
        "address.associate",
        format!("address/{name}"),
        serde_json::json!({"server": format!("{}/{}", s.deployment, s.name)}),
    ));
    app.commit(changes).await?;
    Ok(a)
}

pub async fn disassociate(app: &App, actor: &Actor, name: &str) -> Result<Address, AppError> {
    actor.require(OPERATOR)?;
    let mut a = named::<Address>(&*app.store, name).await?;
    let Some(sid) = a.server else {
        return Err(AppError::BadState(format!("address {name} is not associated")));
    };
    let driver = app.drivers.for_cloud(&*app.store, &a.cloud).await?;
    driver
        .disassociate_address(a.ip)
        .await
        .map_err(|source| AppError::Cloud {
            context: format!("disassociating {}", a.ip),
            source,
        })?;
    let now = Utc::now();
    let mut changes = vec![];
    if let Some(mut s) = app
        .store
        .get_as::<stratus_types::server::Server>(&sid.to_string())
        .await?
    {
        s.public_ip = None;
        changes.push(Change::update(&mut s, now));
    }
    a.server = None;
    changes.push(Change::update(&mut a, now));
    changes.push(audit(actor, "address.disassociate", format!("address/{name}"), ()));
    app.commit(changes).await?;
    Ok(a)
}

pub async fn release(app: &App, actor: &Actor, name: &str) -> Result<(), AppError> {
    actor.require(OPERATOR)?;
    let a = named::<Address>(&*app.store, name).await?;
    if a.server.is_some() {
        return Err(AppError::Conflict(format!(
            "address {name} is associated; disassociate it first"
        )));
    }
    // An address the cloud handed out goes back to it (a no-op for pool addresses).
    let driver = app.drivers.for_cloud(&*app.store, &a.cloud).await?;
    driver.release_address(a.ip).await.map_err(|source| AppError::Cloud {
        context: format!("releasing {} on cloud {}", a.ip, a.cloud),
        source,
    })?;
    app.commit(vec![
        Change::delete(&a),
        audit(actor, "address.release", format!("address/{name}"), ()),
    ])
    .await
}
