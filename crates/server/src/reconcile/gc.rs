//! Garbage collection: what the other tasks may leave behind.
//!
//! - **Instances of terminated servers.** A launch whose answer was lost, retried after its
//!   server was terminated, can leave an instance running that no server records. Each pass
//!   reads the inventory of every declared cloud that servers were launched on and terminates
//!   any live instance whose server this control plane has marked `terminated`. An instance
//!   tagged with a server id this control plane does not know is only counted, never touched:
//!   it may belong to another Stratus installation sharing the cloud account.
//! - **Drain marks** (`App::drained_at`) of servers no longer terminating.

use std::collections::{BTreeSet, HashMap};

use futures_util::StreamExt;
use stratus_store::{Query, TypedStore};
use stratus_types::cloud::Cloud;
use stratus_types::server::{Server, ServerState};
use stratus_types::{Name, ServerId};
use tracing::warn;

use super::CONCURRENCY;
use crate::app::{App, AppError};

/// What a pass found and did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Collected {
    /// Instances of terminated servers, terminated now.
    pub orphans_terminated: usize,
    /// Live instances tagged with a server this control plane does not know.
    pub unknown_instances: usize,
    /// Clouds not read (an error, a backoff): (cloud, why).
    pub skipped: Vec<(String, String)>,
}

pub async fn pass(app: &App) -> Result<Collected, AppError> {
    let servers = app.store.list_all::<Server>(&Query::default()).await?;
    prune_drain_marks(app, &servers);
    let declared: BTreeSet<Name> = app
        .store
        .list_all::<Cloud>(&Query::default())
        .await?
        .into_iter()
        .map(|c| c.spec.name)
        .collect();
    let used: BTreeSet<Name> = servers
        .iter()
        .filter(|s| s.instance_id.is_some())
        .map(|s| s.cloud.clone())
        .collect();
    let states: HashMap<ServerId, ServerState> = servers.iter().map(|s| (s.id, s.state)).collect();
    let mut out = Collected::default();
    for cloud in declared.intersection(&used) {
        if let Err(e) = cloud_pass(app, cloud, &states, &mut out).await {
            out.skipped.push((cloud.to_string(), crate::app::error_chain(&e)));
        }
    }
    Ok(out)
}

async fn cloud_pass(
    app: &App,
    cloud: &Name,
    states: &HashMap<ServerId, ServerState>,
    out: &mut Collected,
) -> Result<(), AppError> {
    let driver = app.drivers.for_cloud(&*app.store, cloud).await?;
    let inventory = app
        .inventory
        .read(cloud, &*driver, app.settings.reconcile_interval)
        .await?;
    let mut orphans = vec![];
    for i in inventory
        .instances()
        .filter(|i| i.state != stratus_cloud::InstanceState::Terminated)
    {
        match states.get(&i.server) {
            Some(ServerState::Terminated) => orphans.push(i.id.clone()),
            Some(_) => {}
            None => out.unknown_instances += 1,
        }
    }
    let results: Vec<_> = futures_util::stream::iter(orphans)
        .map(|id| {
            let driver = driver.clone();
            async move {
                warn!(%cloud, instance = %id, "terminating an instance of a terminated server");
                app.inventory
                    .call(cloud, || format!("terminating {id}"), driver.terminate(&id))
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    out.orphans_terminated += results.iter().filter(|r| r.is_ok()).count();
    results.into_iter().find_map(Result::err).map_or(Ok(()), Err)
}

fn prune_drain_marks(app: &App, servers: &[Server]) {
    let terminating: BTreeSet<ServerId> = servers
        .iter()
        .filter(|s| s.state == ServerState::Decommissioning)
        .map(|s| s.id)
        .collect();
    app.drained_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|id, _| terminating.contains(id));
}
