//! The orchestrator: background tasks (see `crate::background`) that move servers along their
//! lifecycle, check instances for drift, keep arrays at their size, sync load balancers, drive
//! rollouts and collect what was left behind. Each pass reads desired state from the store and
//! actual state from the clouds afresh, so a pass that fails half-way (or a control plane that
//! restarts) is picked up by the next one.
//!
//! The tasks ([`spawn_all`], on the leader; periods in `reconcile_interval` units, and each
//! woken by `App::poke` unless noted):
//!
//! | task              | does                                                            |
//! |-------------------|-----------------------------------------------------------------|
//! | `lifecycle`       | keeps one `lifecycle/CLOUD` task per declared cloud             |
//! | `lifecycle/CLOUD` | pending → launch, booting → operational/stranded, decommission  |
//! | `drift`           | operational servers against their cloud's inventory, tags       |
//! | `arrays`          | array sizes and autoscaling votes                               |
//! | `lb-sync`         | load-balancer configurations (woken by server changes)          |
//! | `rollouts`        | a driver for every running rollout (those started elsewhere)    |
//! | `gc`              | instances of terminated servers, stale drain marks (every 30)   |
//!
//! **Calls to a cloud per pass do not grow with its servers**: a pass reads the cloud's
//! inventory with one `list` (`inventory.rs`, shared by the tasks for one interval) and
//! compares; `describe` only confirms an instance the inventory lacks. Launches, terminations
//! and tag pushes of one pass run side by side, at most [`CONCURRENCY`] per cloud. Each cloud
//! has its own lifecycle task and its own backoff, so a cloud that throttles or answers slowly
//! holds up no other cloud's launches; a call unanswered for `inventory::CALL_TIMEOUT` counts
//! as throttled, so the tasks that go over every cloud (`drift`, `gc`) wait at most that long
//! for one. An instance missing within `drift::LIST_SETTLE` of its launch is not yet listed,
//! not gone (EC2 lists new instances eventually). A throttled launch leaves the server `pending`
//! (tried again after the backoff; the launch is idempotent per server, so a lost answer makes
//! no second instance); a refusal strands it.
//!
//! Per server state:
//!
//! 1. `pending`: launch the instance (the driver is retry-safe per server) → `booting`, or
//!    `stranded` with the cloud's refusal; throttled: stays `pending`.
//! 2. `booting`: on the fake cloud, a simulated agent records every boot script as a run and the
//!    server becomes `operational` once the inventory shows its instance running. Elsewhere the
//!    agent reports boot progress; a server with no finished boot within the boot deadline is
//!    `stranded` ("enrolment"); one whose instance is gone is `stranded` ("boot").
//! 3. `operational` (`drift.rs`): an instance that disappeared, or stopped without being asked
//!    to, strands the server with the cloud's reason. (Not on the fake cloud, which forgets
//!    its instances when the control plane restarts.)
//! 4. `decommissioning` (`decommission.rs`): the decommission scripts run one after another
//!    through the agent, all within `decommission_timeout` (on the fake cloud they are
//!    simulated); then every instance of the server is terminated → `terminated`; elastic IPs
//!    it held are released from it.
//!
//! Writes use the revision the pass read, so a concurrent user action wins and the pass retries.

mod arrays;
mod decommission;
pub mod drift;
mod gc;
pub mod inventory;
mod tasks;

use chrono::Utc;
use futures_util::StreamExt;
use stratus_cloud::{CloudDriver, InstanceState, LaunchRequest};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::Name;
use stratus_types::cloud::Cloud;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerState, StrandedReason};
use stratus_types::template::{MetadataTokens, ServerTemplate};
use tracing::info;

pub use arrays::scale_arrays;
use inventory::{Snapshot, is_transient};
pub use tasks::spawn_all;

use crate::app::{App, AppError};

/// Cloud calls of one pass in flight at once, per cloud.
pub const CONCURRENCY: usize = 16;

/// What a pass did, for the task's status.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Tally {
    /// Servers looked at.
    pub servers: usize,
    /// Steps that failed (not counting a concurrent change, retried next pass).
    pub failed: usize,
    /// Steps left for later because the cloud throttles (or is backing off).
    pub throttled: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Tally {
    fn note(&mut self, e: &AppError) {
        if is_transient(e) {
            self.throttled += 1;
        } else {
            self.failed += 1;
        }
        self.first_error.get_or_insert_with(|| crate::app::error_chain(e));
    }

    fn add(&mut self, r: Result<(), AppError>) {
        self.servers += 1;
        match r {
            Ok(()) | Err(AppError::Stale(_)) => {}
            Err(e) => self.note(&e),
        }
    }

    /// A failure of the whole pass (before any server).
    fn failed(mut self, e: &AppError) -> Self {
        self.note(e);
        self
    }

    fn merge(&mut self, o: Tally) {
        self.servers += o.servers;
        self.failed += o.failed;
        self.throttled += o.throttled;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// As a task outcome: an error when anything failed or waits for the cloud.
    pub fn outcome(self) -> crate::background::Outcome {
        match &self.first_error {
            None => Ok(serde_json::to_value(&self).unwrap_or_default()),
            Some(e) => Err(format!(
                "{} of {} servers failed, {} wait for the cloud; first: {e}",
                self.failed, self.servers, self.throttled
            )),
        }
    }
}

/// The live servers of one cloud in these states.
async fn servers_in(app: &App, cloud: &Name, states: &[ServerState]) -> Result<Vec<Server>, AppError> {
    let mut out = vec![];
    for state in states {
        let q = Query {
            state: Some(state.as_str().into()),
            live_only: true,
            ..Default::default()
        };
        out.extend(
            app.store
                .list_all::<Server>(&q)
                .await?
                .into_iter()
                .filter(|s| &s.cloud == cloud),
        );
    }
    Ok(out)
}

/// One lifecycle pass over one cloud's servers: launches first (they need no inventory, and a
/// new server is not kept waiting behind a large booting fleet), then the booting and
/// terminating servers against one inventory. Public for benchmarks, which time it.
pub async fn lifecycle(app: &App, cloud: &Name) -> Result<Tally, AppError> {
    let mut tally = Tally::default();
    let pending = servers_in(app, cloud, &[ServerState::Pending]).await?;
    if !pending.is_empty() {
        app.inventory.ready(cloud)?;
        let driver = app.drivers.for_cloud(&*app.store, cloud).await?;
        tally.merge(steps(app, pending, &*driver, None).await);
    }
    let rest = servers_in(app, cloud, &[ServerState::Booting, ServerState::Decommissioning]).await?;
    if rest.is_empty() {
        return Ok(tally);
    }
    app.inventory.ready(cloud)?;
    let driver = app.drivers.for_cloud(&*app.store, cloud).await?;
    let inventory = app
        .inventory
        .read(cloud, &*driver, app.settings.reconcile_interval)
        .await?;
    tally.merge(steps(app, rest, &*driver, Some(&inventory)).await);
    Ok(tally)
}

/// The steps of these servers, at most [`CONCURRENCY`] at a time.
async fn steps(app: &App, servers: Vec<Server>, driver: &dyn CloudDriver, inventory: Option<&Snapshot>) -> Tally {
    let results: Vec<_> = futures_util::stream::iter(servers)
        .map(|s| step(app, s, driver, inventory))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut tally = Tally::default();
    for r in results {
        tally.add(r);
    }
    tally
}

async fn step(app: &App, s: Server, driver: &dyn CloudDriver, inventory: Option<&Snapshot>) -> Result<(), AppError> {
    match (s.state, inventory) {
        (ServerState::Pending, _) => launch(app, s, driver).await,
        (ServerState::Booting, Some(inv)) => boot(app, s, driver, inv).await,
        (ServerState::Decommissioning, Some(inv)) => decommission::decommission(app, s, driver, inv).await,
        _ => Ok(()),
    }
}

fn user_data(app: &App, s: &Server) -> Vec<u8> {
    // Minimal on purpose: where the control plane is, who this is, and a one-time enrolment
    // token (see app/agents.rs). Everything else comes over the agent's connection. Instances of a local cloud reach the control
    // plane on their gateway unless a public URL was configured.
    let url = match app.drivers.instance_url(&s.cloud) {
        Some(gateway) if !app.settings.public_url_given => gateway,
        _ => app.settings.public_url.clone(),
    };
    crate::app::agents::user_data(app, s, &url)
}

async fn launch(app: &App, mut s: Server, driver: &dyn CloudDriver) -> Result<(), AppError> {
    let cloud = crate::app::resolve::named::<Cloud>(&*app.store, s.cloud.as_str()).await?;
    let template = crate::app::resolve::named::<ServerTemplate>(&*app.store, s.template.as_str()).await?;
    let size = cloud.spec.sizes.iter().find(|z| z.name == s.size).cloned();
    let result = match size {
        None => Err(format!("size {} no longer exists on cloud {}", s.size, s.cloud)),
        Some(size) => match app
            .inventory
            .call(
                &s.cloud,
                || "launching".into(),
                driver.launch(LaunchRequest {
                    server: s.id,
                    hostname: s.hostname(),
                    region: s.region.clone(),
                    size,
                    native_image: s.native_image.clone(),
                    user_data: user_data(app, &s),
                    tags: s.tags.clone(),
                    firewall: template.spec.firewall.clone(),
                    // Managed SSH (the agent) puts users' keys in place; the launch offers none.
                    ssh_keys: vec![],
                    metadata_tokens_required: template.spec.metadata_tokens == MetadataTokens::Required,
                }),
            )
            .await
        {
            Ok(inst) => Ok(inst),
            // Throttled or backing off: still pending, tried again after the backoff.
            Err(e) if is_transient(&e) => return Err(e),
            Err(AppError::Cloud { source, .. }) => Err(crate::app::error_chain(&source)),
            Err(e) => return Err(e),
        },
    };
    // When the cloud answered: the instance is not older than this (the grace for an eventually
    // consistent list counts from here).
    let now = Utc::now();
    match result {
        Ok(inst) => {
            s.instance_id = Some(inst.id.clone());
            s.private_ip = inst.private_ip;
            s.move_to(ServerState::Booting, now)
                .map_err(|e| AppError::BadState(e.to_string()))?;
            info!(server = %s.name, instance = %inst.id, "launched");
        }
        Err(message) => {
            let reason = StrandedReason {
                step: "launch".into(),
                message,
                exit_code: None,
                output_tail: String::new(),
            };
            s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
        }
    }
    app.store.commit(vec![Change::update(&mut s, now)]).await?;
    Ok(())
}

fn run_record(s: &Server, script: &Script, phase: Phase, output: &str) -> Run {
    let now = Utc::now();
    let mut run = crate::app::runs::queued(s, script, phase, "system");
    run.status = RunStatus::Succeeded;
    run.exit_code = Some(0);
    run.output = output.to_string();
    run.started_at = Some(now);
    run.finished_at = Some(now);
    run
}

/// The fake cloud has no agent: record its scripts as runs that did not execute anything.
async fn simulated_runs(app: &App, s: &Server, phase: Phase) -> Result<Vec<Change>, AppError> {
    let template = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await?;
    let Some(template) = template else { return Ok(vec![]) };
    let list = match phase {
        Phase::Boot => &template.spec.boot_scripts,
        Phase::Decommission => &template.spec.decommission_scripts,
        Phase::Operational => return Ok(vec![]),
    };
    let baked = match phase {
        Phase::Boot => crate::app::rebundle::baked_into(app, s).await?,
        _ => Default::default(),
    };
    let mut out = vec![];
    for name in list {
        if let Some(script) = app.store.find_as::<Script>("", name.as_str()).await? {
            if script.spec.frequency == stratus_types::script::Frequency::PerImage
                && baked.get(name) == Some(&script.spec.body_hash())
            {
                continue; // baked into the image it boots from
            }
            out.push(Change::insert(&run_record(
                s,
                &script,
                phase,
                "fake cloud: simulated agent, the script was not executed\n",
            )));
        }
    }
    Ok(out)
}

async fn boot(app: &App, mut s: Server, driver: &dyn CloudDriver, inventory: &Snapshot) -> Result<(), AppError> {
    let now = Utc::now();
    let Some(instance_id) = s.instance_id.clone() else {
        return Ok(());
    };
    if s.booting_since
        .or(s.launched_at)
        .is_some_and(|t| t > inventory.taken_at)
    {
        return Ok(()); // launched after the inventory was read: the next one shows it
    }
    let Some(inst) = drift::instance_of(app, &s, driver, inventory, &instance_id).await? else {
        return Ok(()); // launched moments ago; the cloud does not show it yet
    };
    let mut changes = vec![];
    let inst_reason = inst.as_ref().and_then(|i| i.state_reason.clone());
    match inst.map(|i| i.state) {
        None | Some(InstanceState::Terminated) => {
            let reason = StrandedReason {
                step: "boot".into(),
                message: format!("instance {instance_id} disappeared while booting"),
                exit_code: None,
                output_tail: String::new(),
            };
            s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
        }
        Some(InstanceState::Stopped) if inst_reason.is_some() => {
            let reason = StrandedReason {
                step: "boot".into(),
                message: format!(
                    "instance {instance_id} stopped while booting: {}",
                    inst_reason.unwrap_or_default()
                ),
                exit_code: None,
                output_tail: String::new(),
            };
            s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
        }
        Some(InstanceState::Running) if driver.simulated() && app.settings.simulate_agents => {
            changes = simulated_runs(app, &s, Phase::Boot).await?;
            s.move_to(ServerState::Operational, now)
                .map_err(|e| AppError::BadState(e.to_string()))?;
            info!(server = %s.name, "operational");
        }
        _ => {
            let since = s.booting_since.or(s.launched_at).unwrap_or(s.created_at);
            let deadline = chrono::Duration::from_std(app.settings.boot_deadline).unwrap_or_default();
            if now - since <= deadline {
                return Ok(());
            }
            let reason = StrandedReason {
                step: "enrolment".into(),
                message: format!(
                    "no agent finished booting within {}s; check the instance's console and network to the control plane",
                    app.settings.boot_deadline.as_secs()
                ),
                exit_code: None,
                output_tail: String::new(),
            };
            s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
        }
    }
    changes.push(Change::update(&mut s, now));
    app.store.commit(changes).await?;
    Ok(())
}
