//! Drift: operational servers checked against their cloud's inventory. An instance that
//! vanished or stopped on its own (its processes died, the host restarted) strands its server
//! with the cloud's reason; tags changed through the API reach the instance (the metadata
//! service shows them). One `list` per cloud per pass, the clouds side by side; the fake
//! cloud's instances are not checked (they vanish with the control plane, by design).

use std::collections::BTreeMap;

use chrono::Utc;
use futures_util::StreamExt;
use stratus_cloud::{CloudDriver, Instance, InstanceState};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::Name;
use stratus_types::server::{Server, ServerState, StrandedReason};
use tracing::warn;

use super::inventory::Snapshot;
use super::{CONCURRENCY, Tally};
use crate::app::{App, AppError};

/// One pass over every cloud's operational servers.
pub async fn pass(app: &App) -> Result<Tally, AppError> {
    let q = Query {
        state: Some(ServerState::Operational.as_str().into()),
        live_only: true,
        ..Default::default()
    };
    let mut by_cloud: BTreeMap<Name, Vec<Server>> = BTreeMap::new();
    for s in app.store.list_all::<Server>(&q).await? {
        by_cloud.entry(s.cloud.clone()).or_default().push(s);
    }
    let passes = by_cloud
        .into_iter()
        .map(|(cloud, servers)| cloud_pass(app, cloud, servers));
    let mut tally = Tally::default();
    for t in futures_util::future::join_all(passes).await {
        tally.merge(t);
    }
    Ok(tally)
}

async fn cloud_pass(app: &App, cloud: Name, servers: Vec<Server>) -> Tally {
    let mut tally = Tally::default();
    let driver = match app.drivers.for_cloud(&*app.store, &cloud).await {
        Ok(d) if d.simulated() => return tally,
        Ok(d) => d,
        Err(e) => return tally.failed(&e),
    };
    let inventory = match app
        .inventory
        .read(&cloud, &*driver, app.settings.reconcile_interval)
        .await
    {
        Ok(i) => i,
        Err(e) => return tally.failed(&e),
    };
    let results: Vec<_> = futures_util::stream::iter(servers)
        .map(|s| check(app, s, &*driver, &inventory))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        tally.add(r);
    }
    tally
}

/// How long after its launch an instance may still be missing from the cloud's answers (EC2 is
/// eventually consistent: a new instance can be absent from `DescribeInstances`, and answered
/// `InvalidInstanceID.NotFound`, for a while) before its absence means it is gone.
pub(super) const LIST_SETTLE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The instance as the inventory shows it; one the inventory lacks is looked up alone, to tell
/// "gone" from "not listed yet". `Some(None)`: gone; `None`: not visible yet, but launched so
/// recently that the cloud may not show it yet (look again later; never strand on it).
pub(super) async fn instance_of(
    app: &App,
    s: &Server,
    driver: &dyn CloudDriver,
    inventory: &Snapshot,
    id: &str,
) -> Result<Option<Option<Instance>>, AppError> {
    if let Some(i) = inventory.instance(id) {
        return Ok(Some(Some(i.clone())));
    }
    let found = app
        .inventory
        .call(&s.cloud, || "describe".into(), driver.describe(id))
        .await?;
    let recent = s
        .launched_at
        .or(s.booting_since)
        .is_some_and(|t| Utc::now() - t < LIST_SETTLE);
    Ok(match found {
        None if recent => None,
        found => Some(found),
    })
}

/// Is this server's instance as it should be? Strands it if not; pushes changed tags.
async fn check(app: &App, mut s: Server, driver: &dyn CloudDriver, inventory: &Snapshot) -> Result<(), AppError> {
    let Some(instance_id) = s.instance_id.clone() else {
        return Ok(());
    };
    if s.booting_since
        .or(s.launched_at)
        .is_some_and(|t| t > inventory.taken_at)
    {
        return Ok(()); // rebooted or launched after the inventory: the next one tells
    }
    let Some(inst) = instance_of(app, &s, driver, inventory, &instance_id).await? else {
        return Ok(()); // not visible yet
    };
    let message = match inst {
        None => format!("instance {instance_id} no longer exists"),
        Some(i) if i.state == InstanceState::Terminated => format!("instance {instance_id} was terminated"),
        Some(i) if i.state == InstanceState::Stopped && i.state_reason.is_some() => {
            format!("instance {instance_id} stopped: {}", i.state_reason.unwrap_or_default())
        }
        Some(i) => {
            if i.tags != s.tags {
                app.inventory
                    .call(
                        &s.cloud,
                        || "setting tags".into(),
                        driver.set_tags(&instance_id, s.tags.clone()),
                    )
                    .await?;
            }
            return Ok(());
        }
    };
    let now = Utc::now();
    let reason = StrandedReason {
        step: "instance".into(),
        message,
        exit_code: None,
        output_tail: String::new(),
    };
    warn!(server = %s.name, reason = %reason.message, "stranded");
    s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
    app.store.commit(vec![Change::update(&mut s, now)]).await?;
    Ok(())
}
