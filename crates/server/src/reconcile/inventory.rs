//! What each cloud has, read with one `list` per cloud, and how hard each cloud may be asked.
//!
//! **Inventory.** The orchestrator's tasks (lifecycle, drift, garbage collection) compare the
//! store with a [`Snapshot`] of the cloud: one [`CloudDriver::list`] (paged by the driver),
//! shared by every task that asks within `max_age` (the reconcile interval). Calls per pass
//! therefore do not grow with the number of servers; `describe` is used only to confirm that
//! an instance the snapshot lacks is really gone (a real cloud's list is eventually
//! consistent), and only for instances launched before the snapshot was taken.
//!
//! **Backoff, per cloud.** Every cloud call of the orchestrator goes through [`Inventories::call`]:
//! before the call, a cloud in backoff is not called at all (the caller gets a transient error
//! and leaves the server as it is for a later pass: a pending server stays pending); a
//! [`CloudError::Throttled`] answer backs the cloud off; any answer ends the backoff.
//! The delay is exponential with full jitter (uniform in `0..=min(cap, base * 2^failures)`, the
//! AWS architecture blog's recommendation), so replicas and tasks do not retry in step; base
//! and cap scale with the reconcile interval (250 ms and 30 s at the default 1 s). One
//! cloud's backoff never delays another cloud: nothing sleeps, callers skip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use stratus_cloud::{CloudDriver, CloudError, Instance, InstanceState};
use stratus_types::{Name, ServerId};

use crate::app::AppError;

/// The first backoff's upper bound, in reconcile intervals (250 ms at the default 1 s).
const BASE_INTERVALS: f64 = 0.25;
/// The longest backoff, in reconcile intervals (30 s at the default 1 s).
const CAP_INTERVALS: u32 = 30;

/// A cloud's instances at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    by_id: HashMap<String, Instance>,
    /// Instances not terminated, by the server they were launched for.
    by_server: HashMap<ServerId, Vec<String>>,
}

impl Snapshot {
    pub fn new(instances: Vec<Instance>, taken_at: DateTime<Utc>) -> Self {
        let mut by_server: HashMap<ServerId, Vec<String>> = HashMap::new();
        for i in instances.iter().filter(|i| i.state != InstanceState::Terminated) {
            by_server.entry(i.server).or_default().push(i.id.clone());
        }
        let by_id = instances.into_iter().map(|i| (i.id.clone(), i)).collect();
        Self {
            taken_at,
            by_id,
            by_server,
        }
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.by_id.get(id)
    }

    /// The instances launched for `server` that are not terminated.
    pub fn of_server(&self, server: ServerId) -> &[String] {
        self.by_server.get(&server).map_or(&[], Vec::as_slice)
    }

    /// Every instance.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.by_id.values()
    }
}

/// The longest one cloud call may take before it counts as a transient failure (a cloud that
/// stopped answering). Generous: a page of 1,000 instances, a launch, a capture request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A cloud's backoff.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// Transient failures in a row.
    pub failures: u32,
    /// No call before this.
    pub until: Option<Instant>,
    /// The last transient failure (the cloud's words).
    pub last_error: Option<String>,
    /// Calls refused since the start (throttled answers).
    pub throttled_total: u64,
    /// When the last transient failure was answered: only a success of a call started after it
    /// ends the backoff (calls in flight when the cloud began to refuse do not).
    pub failed_at: Option<Instant>,
}

/// The backoff's bounds: scaled with the reconcile interval.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    base: Duration,
    cap: Duration,
}

impl Bounds {
    fn new(interval: Duration) -> Self {
        Self {
            base: interval.mul_f64(BASE_INTERVALS),
            cap: interval.saturating_mul(CAP_INTERVALS),
        }
    }

    /// The upper bound of the delay after `failures` failures in a row.
    fn ceiling(self, failures: u32) -> Duration {
        self.base.saturating_mul(1 << failures.min(16)).min(self.cap)
    }
}

impl Backoff {
    fn failed(&mut self, bounds: Bounds, error: String) {
        self.failures = self.failures.saturating_add(1);
        self.throttled_total += 1;
        let ceiling = bounds.ceiling(self.failures);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let jitter = getrandom::u64().unwrap_or(ms / 2) % (ms + 1);
        self.until = Some(Instant::now() + Duration::from_millis(jitter));
        self.failed_at = Some(Instant::now());
        self.last_error = Some(error);
    }

    /// How long calls must still wait.
    pub fn remaining(&self) -> Option<Duration> {
        self.until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

#[derive(Debug, Default)]
struct CloudState {
    /// The last snapshot; the async lock makes concurrent readers share one `list`.
    snapshot: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    backoff: Mutex<Backoff>,
}

/// Snapshots and backoffs of every cloud (`App::inventory`).
#[derive(Debug)]
pub struct Inventories {
    clouds: Mutex<HashMap<Name, Arc<CloudState>>>,
    bounds: Bounds,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Is this the error of a cloud that asked us to wait (or that we did not call for that)?
pub fn is_transient(e: &AppError) -> bool {
    matches!(e, AppError::Cloud { source, .. } if source.is_transient())
}

impl Inventories {
    /// Backoffs scaled to the reconcile interval (at 1 s: 250 ms doubling up to 30 s).
    pub fn new(reconcile_interval: Duration) -> Self {
        Self {
            clouds: Mutex::default(),
            bounds: Bounds::new(reconcile_interval),
        }
    }

    fn cloud(&self, name: &Name) -> Arc<CloudState> {
        lock(&self.clouds).entry(name.clone()).or_default().clone()
    }

    /// An error when the cloud is backing off: do not call it now.
    pub fn ready(&self, cloud: &Name) -> Result<(), AppError> {
        let c = self.cloud(cloud);
        let b = lock(&c.backoff);
        match b.remaining() {
            None => Ok(()),
            Some(wait) => Err(AppError::Cloud {
                context: format!("cloud {cloud} is backing off for {} ms", wait.as_millis()),
                source: CloudError::Throttled(b.last_error.clone().unwrap_or_default()),
            }),
        }
    }

    /// Call the cloud unless it is backing off; a throttled answer, or none within
    /// [`CALL_TIMEOUT`], backs it off; any other answer to a call started after the last
    /// failure ends its backoff. A cloud that hangs holds up only the task calling it, and that
    /// for at most the timeout.
    pub async fn call<T>(
        &self,
        cloud: &Name,
        context: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, CloudError>>,
    ) -> Result<T, AppError> {
        self.ready(cloud)?;
        let started = Instant::now();
        let result = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(CloudError::Throttled(format!(
                "no answer within {} s",
                CALL_TIMEOUT.as_secs()
            ))),
        };
        let c = self.cloud(cloud);
        let mut b = lock(&c.backoff);
        match &result {
            Err(e) if e.is_transient() => b.failed(self.bounds, crate::app::error_chain(e)),
            _ if b.failed_at.is_none_or(|f| started > f) => {
                b.failures = 0;
                b.until = None;
            }
            _ => {}
        }
        result.map_err(|source| AppError::Cloud {
            context: context(),
            source,
        })
    }

    /// The cloud's instances as listed at most `max_age` ago (listed now if older).
    pub async fn read(
        &self,
        cloud: &Name,
        driver: &dyn CloudDriver,
        max_age: Duration,
    ) -> Result<Arc<Snapshot>, AppError> {
        let c = self.cloud(cloud);
        let mut snap = c.snapshot.lock().await;
        if let Some(s) = snap.as_ref()
            && (Utc::now() - s.taken_at).to_std().unwrap_or_default() < max_age
        {
            return Ok(s.clone());
        }
        let taken_at = Utc::now();
        let listed = self
            .call(
                cloud,
                || format!("listing the instances of cloud {cloud}"),
                driver.list(),
            )
            .await?;
        let fresh = Arc::new(Snapshot::new(listed, taken_at));
        *snap = Some(fresh.clone());
        Ok(fresh)
    }

    /// Every cloud's backoff, for the admin view.
    pub fn backoffs(&self) -> Vec<(Name, Backoff)> {
        let clouds = lock(&self.clouds);
        let mut out: Vec<(Name, Backoff)> = clouds
            .iter()
            .map(|(n, c)| (n.clone(), lock(&c.backoff).clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Forget a cloud (deleted).
    pub fn forget(&self, cloud: &Name) {
        lock(&self.clouds).remove(cloud);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_failures_within_the_cap_and_jitters() {
        let mut b = Backoff::default();
        let bounds = Bounds::new(Duration::from_secs(1));
        assert_eq!(bounds.ceiling(1), Duration::from_millis(500));
        assert_eq!(bounds.ceiling(20), Duration::from_secs(30));
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..=20u32 {
            b.failed(bounds, "RequestLimitExceeded".into());
            let wait = b.remaining().unwrap_or_default();
            let ceiling = bounds.ceiling(n);
            assert!(wait <= ceiling, "failure {n}: {wait:?} over {ceiling:?}");
            seen.insert(wait.as_millis());
        }
        assert!(seen.len() > 10, "full jitter spreads the delays: {seen:?}");
        assert_eq!(b.throttled_total, 20);
    }

    #[tokio::test]
    async fn a_throttled_cloud_is_not_called_until_its_backoff_ends_and_others_are() {
        let inv = Inventories::new(Duration::from_secs(1));
        let (a, b): (Name, Name) = ("a".parse().unwrap(), "b".parse().unwrap());
        let throttled = inv
            .call(&a, String::new, async {
                Err::<(), _>(CloudError::Throttled("slow down".into()))
            })
            .await;
        assert!(throttled.as_ref().is_err_and(is_transient));
        // Force a long backoff to check that the next call is not made.
        lock(&inv.cloud(&a).backoff).until = Some(Instant::now() + Duration::from_secs(60));
        let mut called = false;
        let skipped = inv
            .call(&a, String::new, async {
                called = true;
                Ok(())
            })
            .await;
        assert!(
            skipped.is_err_and(|e| is_transient(&e)) && !called,
            "not called while backing off"
        );
        inv.call(&b, String::new, async { Ok(()) })
            .await
            .expect("another cloud is called");
        lock(&inv.cloud(&a).backoff).until = None;
        inv.call(&a, String::new, async { Ok(()) }).await.expect("called again");
        assert_eq!(inv.backoffs()[0].1.failures, 0, "an answer ends the backoff");
    }
}
