//! The orchestrator: an idempotent loop that moves servers along their lifecycle and keeps
//! arrays at their desired size. It runs every `reconcile_interval` and whenever the app layer
//! pokes it after a change. Each pass reads desired and actual state afresh, so a pass that
//! fails half-way (or a control plane that restarts) is simply picked up by the next one.
//!
//! Per server state:
//!
//! 1. `pending`: launch the instance (the driver is retry-safe per server) → `booting`, or
//!    `stranded` with the cloud's refusal.
//! 2. `booting`: on the fake cloud, a simulated agent records every boot script as a run and the
//!    server becomes `operational`. Elsewhere the agent reports boot progress; a server with no
//!    finished boot within the boot deadline is `stranded` ("enrolment").
//! 3. `operational`: the instance is checked against the cloud; one that disappeared, or
//!    stopped without being asked to (its processes died, the host restarted), makes the server
//!    `stranded` with the cloud's reason. (Not on the fake cloud, which forgets its instances
//!    when the control plane restarts.)
//! 4. `decommissioning`: the decommission scripts run one after another through the agent,
//!    all within `decommission_timeout` (on the fake cloud they are simulated); then the
//!    instance is terminated → `terminated`; elastic IPs it held are released from it.
//!
//! Writes use the revision the pass read, so a concurrent user action wins and the pass retries.

use std::sync::Arc;

use chrono::Utc;
use stratus_cloud::{CloudDriver, InstanceState, LaunchRequest};
use stratus_store::{Change, Query, StoreError, TypedStore};
use stratus_types::address::Address;
use stratus_types::cloud::{Cloud, DriverKind};
use stratus_types::deployment::Deployment;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::{Autoscale, Server, ServerArray, ServerState, StrandedReason, VOTE_PREDICATE};
use stratus_types::template::MetadataTokens;
use stratus_types::template::ServerTemplate;
use tracing::{info, warn};

use crate::app::resolve::Catalog;
use crate::app::servers::build_server;
use crate::app::{Actor, App, AppError, arrays, audit};

/// Run forever (until the task is dropped).
pub async fn run(app: Arc<App>) {
    loop {
        if let Err(e) = pass(&app).await {
            warn!(error = %e, "reconcile pass failed; retrying");
        }
        tokio::select! {
            _ = app.poke.notified() => {}
            _ = tokio::time::sleep(app.settings.reconcile_interval) => {}
        }
    }
}

/// One pass over arrays and servers. Public so tests can step the orchestrator.
pub async fn pass(app: &App) -> Result<(), AppError> {
    scale_arrays(app).await?;
    for state in [
        ServerState::Pending,
        ServerState::Booting,
        ServerState::Operational,
        ServerState::Decommissioning,
    ] {
        let q = Query {
            state: Some(state.as_str().into()),
            live_only: true,
            ..Default::default()
        };
        for s in app.store.list_all::<Server>(&q).await? {
            let name = format!("{}/{}", s.deployment, s.name);
            match step(app, s).await {
                Ok(()) | Err(AppError::Stale(_)) => {}
                Err(e) => warn!(server = %name, error = %e, "server step failed"),
            }
        }
    }
    Ok(())
}

async fn step(app: &App, s: Server) -> Result<(), AppError> {
    let driver = app.drivers.for_cloud(&*app.store, &s.cloud).await;
    match s.state {
        ServerState::Pending => launch(app, s, driver?).await,
        ServerState::Booting => boot(app, s, driver?).await,
        ServerState::Operational => watch(app, s, driver?).await,
        ServerState::Decommissioning => decommission(app, s, driver).await,
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

async fn launch(app: &App, mut s: Server, driver: Arc<dyn CloudDriver>) -> Result<(), AppError> {
    let cloud = crate::app::resolve::named::<Cloud>(&*app.store, s.cloud.as_str()).await?;
    let template = crate::app::resolve::named::<ServerTemplate>(&*app.store, s.template.as_str()).await?;
    let size = cloud.spec.sizes.iter().find(|z| z.name == s.size).cloned();
    let now = Utc::now();
    let result = match size {
        None => Err(format!("size {} no longer exists on cloud {}", s.size, s.cloud)),
        Some(size) => driver
            .launch(LaunchRequest {
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
            })
            .await
            .map_err(|e| crate::app::error_chain(&e)),
    };
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

async fn boot(app: &App, mut s: Server, driver: Arc<dyn CloudDriver>) -> Result<(), AppError> {
    let now = Utc::now();
    let Some(instance_id) = s.instance_id.clone() else {
        return Ok(());
    };
    let inst = driver.describe(&instance_id).await.map_err(|source| AppError::Cloud {
        context: "describe".into(),
        source,
    })?;
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
        Some(InstanceState::Running) if driver.kind() == DriverKind::Fake && app.settings.simulate_agents => {
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

/// An operational server whose instance is gone or died is stranded, with the cloud's reason.
async fn watch(app: &App, mut s: Server, driver: Arc<dyn CloudDriver>) -> Result<(), AppError> {
    let Some(instance_id) = s.instance_id.clone() else {
        return Ok(());
    };
    if driver.kind() == DriverKind::Fake {
        return Ok(());
    }
    let inst = driver.describe(&instance_id).await.map_err(|source| AppError::Cloud {
        context: "describe".into(),
        source,
    })?;
    let message = match inst {
        None => format!("instance {instance_id} no longer exists"),
        Some(i) if i.state == InstanceState::Terminated => format!("instance {instance_id} was terminated"),
        Some(i) if i.state == InstanceState::Stopped && i.state_reason.is_some() => {
            format!("instance {instance_id} stopped: {}", i.state_reason.unwrap_or_default())
        }
        Some(i) => {
            // Tags changed through the API reach the instance (the metadata service shows them).
            if i.tags != s.tags {
                driver
                    .set_tags(&instance_id, s.tags.clone())
                    .await
                    .map_err(|source| AppError::Cloud {
                        context: "setting tags".into(),
                        source,
                    })?;
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

async fn decommission(
    app: &App,
    mut s: Server,
    driver: Result<Arc<dyn CloudDriver>, AppError>,
) -> Result<(), AppError> {
    let now = Utc::now();
    let mut changes = vec![];
    let driver = driver?;
    // A server prepared for a rebundle has no agent identity left: no decommission scripts.
    let capturing = s
        .rebundle
        .as_ref()
        .is_some_and(|r| r.step == stratus_types::server::RebundleStep::Prepared);
    let simulated = driver.kind() == DriverKind::Fake && app.settings.simulate_agents;
    if s.instance_id.is_some() && !capturing {
        if simulated {
            changes.extend(simulated_runs(app, &s, Phase::Decommission).await?);
        } else if !decommission_scripts_done(app, &s).await? {
            return Ok(());
        }
    }
    if s.instance_id.is_some() && !drained(app, &s).await? {
        return Ok(());
    }
    if capturing && !crate::app::rebundle::capture(app, &mut s, &*driver).await? {
        return Ok(()); // still stopping
    }
    // The recorded instance, plus any launched for this server but not recorded (a launch
    // that raced a termination): nothing may be left running and billing.
    let mut ids: Vec<String> = s.instance_id.iter().cloned().collect();
    let listed = driver.list().await.map_err(|source| AppError::Cloud {
        context: "listing instances".into(),
        source,
    })?;
    ids.extend(
        listed
            .into_iter()
            .filter(|i| i.server == s.id && i.state != InstanceState::Terminated)
            .map(|i| i.id),
    );
    ids.sort();
    ids.dedup();
    for id in &ids {
        driver.terminate(id).await.map_err(|source| AppError::Cloud {
            context: format!("terminating {id}"),
            source,
        })?;
    }
    for mut a in app
        .store
        .list_all::<Address>(&Query::default())
        .await?
        .into_iter()
        .filter(|a| a.server == Some(s.id))
    {
        a.server = None;
        changes.push(Change::update(&mut a, now));
    }
    // Runs the instance took with it.
    let q = Query {
        scope: Some(s.id.to_string()),
        ..Default::default()
    };
    for mut r in app.store.list_all::<Run>(&q).await? {
        if !r.status.is_finished() {
            r.status = RunStatus::Failed;
            r.finished_at = Some(now);
            r.append_output("\n[stratus] the server was terminated before this run finished\n");
            changes.push(Change::update(&mut r, now));
        }
    }
    s.public_ip = None;
    s.move_to(ServerState::Terminated, now)
        .map_err(|e| AppError::BadState(e.to_string()))?;
    changes.push(Change::update(&mut s, now));
    app.store.commit(changes).await?;
    info!(server = %s.name, "terminated");
    // An agent still connected (on a host that outlives the instance) stops for good.
    let gone = stratus_agent_proto::Refused {
        reason: stratus_agent_proto::RefusedReason::Terminated,
        message: format!("server {}/{} is terminated", s.deployment, s.name),
    };
    app.push_agent(s.id, stratus_agent_proto::ControlMessage::Refused(gone))
        .await;
    Ok(())
}

/// The longest a terminating member waits for its load balancers to stop sending it requests.
const DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(15);
/// After the load balancers applied the configuration without it: time for requests their old
/// workers still hold to finish.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// May the instance of a terminating load-balancer member go? Once every connected load
/// balancer of its pool runs a configuration without it, plus [`DRAIN_GRACE`]; at most
/// [`DRAIN_MAX`] after the termination began (a load balancer that cannot apply its
/// configuration must not keep a server alive).
async fn drained(app: &App, s: &Server) -> Result<bool, AppError> {
    let since = s.decommissioning_since.unwrap_or(s.updated_at);
    let waited = (Utc::now() - since).to_std().unwrap_or_default();
    if waited >= DRAIN_MAX {
        return Ok(true);
    }
    if !crate::app::lb::in_step(app, s).await? {
        return Ok(false);
    }
    let mut in_step_since = app.drained_at.lock().unwrap_or_else(|e| e.into_inner());
    let at = *in_step_since.entry(s.id).or_insert_with(std::time::Instant::now);
    if at.elapsed() < DRAIN_GRACE {
        return Ok(false);
    }
    in_step_since.remove(&s.id);
    Ok(true)
}

/// How long decommission waits for an absent agent to come back before giving up on it.
const AGENT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The decommission scripts of a terminating server, one after another through its agent,
/// all within `decommission_timeout`: true once they are over (or there are none, or the
/// server never had an agent), and the instance may go. A failing script does not stop the
/// next one or the termination. Past the timeout, what still runs is cancelled and the
/// instance goes anyway: a stuck script cannot keep a server (and its bill) alive.
async fn decommission_scripts_done(app: &App, s: &Server) -> Result<bool, AppError> {
    let Some(template) = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await? else {
        return Ok(true);
    };
    if template.spec.decommission_scripts.is_empty()
        || app
            .store
            .get_as::<crate::app::agents::AgentRecord>(&s.id.to_string())
            .await?
            .is_none()
    {
        return Ok(true);
    }
    let now = Utc::now();
    let q = Query {
        scope: Some(s.id.to_string()),
        ..Default::default()
    };
    let mut runs: Vec<Run> = app
        .store
        .list_all::<Run>(&q)
        .await?
        .into_iter()
        .filter(|r| r.phase == Phase::Decommission)
        .collect();
    if runs.is_empty() {
        for name in &template.spec.decommission_scripts {
            if let Some(script) = app.store.find_as::<Script>("", name.as_str()).await? {
                runs.push(crate::app::runs::queued(s, &script, Phase::Decommission, "system"));
            }
        }
        if runs.is_empty() {
            return Ok(true);
        }
        app.store.commit(runs.iter().map(Change::insert).collect()).await?;
    }
    runs.sort_by_key(|r| r.id);
    let since = runs.iter().map(|r| r.created_at).min().unwrap_or(now);
    let timeout = app.settings.decommission_timeout;
    let left = chrono::Duration::from_std(timeout).unwrap_or_default() - (now - since);
    // An agent that is gone (its instance died) and has started nothing is given a short grace
    // to reconnect (a control plane that just restarted), not the whole timeout.
    let absent = !app.agent_connected(s.id).await
        && now - since > chrono::Duration::from_std(AGENT_GRACE.min(timeout)).unwrap_or_default()
        && runs.iter().all(|r| r.status == RunStatus::Queued);
    if left <= chrono::Duration::zero() || absent {
        let why = if absent {
            format!(
                "the server's agent has not been connected for {} s",
                AGENT_GRACE.min(timeout).as_secs()
            )
        } else {
            format!("the decommission timeout of {} s passed", timeout.as_secs())
        };
        let mut changes = vec![];
        for mut r in runs.into_iter().filter(|r| !r.status.is_finished()) {
            if r.status == RunStatus::Running {
                app.push_agent(s.id, stratus_agent_proto::ControlMessage::Cancel { run: r.id })
                    .await;
            }
            r.status = if r.status == RunStatus::Running {
                RunStatus::TimedOut
            } else {
                RunStatus::Cancelled
            };
            r.finished_at = Some(now);
            r.append_output(&format!("\n[stratus] {why}; the instance is terminated anyway\n"));
            changes.push(Change::update(&mut r, now));
        }
        if !changes.is_empty() {
            app.store.commit(changes).await?;
        }
        warn!(server = %s.name, reason = %why, "decommission scripts cut short; terminating");
        return Ok(true);
    }
    let Some(next) = runs.iter().find(|r| !r.status.is_finished()) else {
        return Ok(true);
    };
    // Sent once; an agent that reconnects without it gets it again on its hello.
    if next.status == RunStatus::Queued && next.sent_at.is_none() && app.agent_connected(s.id).await {
        let script = app.store.find_as::<Script>("", next.script.as_str()).await?;
        if let Some(script) = script {
            let timeout_secs = left.num_seconds().max(1) as u64;
            let mut sent = next.clone();
            sent.sent_at = Some(now);
            sent.timeout_secs = Some(timeout_secs);
            app.store.commit(vec![Change::update(&mut sent, now)]).await?;
            let sr = stratus_agent_proto::ScriptRun {
                run: next.id,
                name: script.spec.name.clone(),
                body: script.spec.body.clone(),
                env: crate::app::gateway::env_for(app, s, &script).await?,
                timeout_secs: Some(timeout_secs),
                phase: Phase::Decommission,
                frequency: script.spec.frequency,
            };
            // Through whichever replica holds the agent. Not delivered (it left meanwhile): it is
            // resent on its hello, as `sent_at` is set.
            app.push_agent(s.id, stratus_agent_proto::ControlMessage::RunScript(sr))
                .await;
        }
    }
    Ok(false)
}

/// Launch missing members and decommission the oldest extra ones.
/// Autoscaling by voting tags (see `Autoscale`): count the operational members' votes and move
/// the desired count when they reach the threshold and the calm time has passed.
async fn vote(
    app: &App,
    a: &mut ServerArray,
    auto: Autoscale,
    members: &[Server],
    now: chrono::DateTime<Utc>,
) -> Result<(), AppError> {
    if a.last_scaled_at
        .is_some_and(|t| (now - t).num_seconds() < i64::from(auto.calm_secs))
    {
        return Ok(());
    }
    // Not while the last change is still under way (members booting or missing): the votes of
    // an array that has not settled would move it again before the new members could vote.
    if members.len() != a.spec.desired as usize || members.iter().any(|m| m.state != ServerState::Operational) {
        return Ok(());
    }
    let operational: Vec<&Server> = members.iter().filter(|m| m.state == ServerState::Operational).collect();
    let votes = |v: &str| {
        operational
            .iter()
            .filter(|m| {
                m.tags
                    .iter()
                    .any(|t| t.namespace() == VOTE_PREDICATE.0 && t.predicate() == VOTE_PREDICATE.1 && t.value() == v)
            })
            .count()
    };
    let (grow, shrink) = (votes("grow"), votes("shrink"));
    let Some(next) = auto.decide(a.spec.desired, a.spec.min, a.spec.max, operational.len(), grow, shrink) else {
        return Ok(());
    };
    let from = a.spec.desired;
    a.spec.desired = next;
    a.last_scaled_at = Some(now);
    let detail = serde_json::json!({
        "from": from, "to": next, "members": operational.len(), "grow": grow, "shrink": shrink,
        "threshold_percent": auto.threshold_percent,
    });
    let entry = audit(
        &Actor::system(),
        "array.autoscale",
        format!("array/{}/{}", a.spec.deployment, a.spec.name),
        detail,
    );
    app.store.commit(vec![Change::update(a, now), entry]).await?;
    info!(array = %a.spec.name, from, to = next, grow, shrink, "autoscaled by votes");
    Ok(())
}

async fn scale_arrays(app: &App) -> Result<(), AppError> {
    let arrays_all = app.store.list_all::<ServerArray>(&Query::default()).await?;
    if arrays_all.is_empty() {
        return Ok(());
    }
    let system = Actor::system();
    for a in arrays_all {
        let q = Query {
            scope: Some(a.spec.deployment.to_string()),
            live_only: true,
            ..Default::default()
        };
        let mut members: Vec<Server> = app
            .store
            .list_all::<Server>(&q)
            .await?
            .into_iter()
            .filter(|s| s.array.as_ref() == Some(&a.spec.name) && s.state != ServerState::Decommissioning)
            .collect();
        let now = Utc::now();
        let mut a = a;
        if let Some(auto) = a.spec.autoscale {
            vote(app, &mut a, auto, &members, now).await?;
        }
        let want = a.spec.desired as usize;
        let result = if members.len() < want {
            let Some(dep) = app.store.find_as::<Deployment>("", a.spec.deployment.as_str()).await? else {
                continue;
            };
            let cat = Catalog::load(&*app.store).await?;
            let mut changes = vec![];
            let mut n = 1;
            while members.len() < want {
                let spec = arrays::member_spec(&a.spec, n);
                n += 1;
                if members.iter().any(|m| m.name == spec.name)
                    || app
                        .store
                        .find_as::<Server>(a.spec.deployment.as_str(), spec.name.as_str())
                        .await?
                        .is_some()
                {
                    continue;
                }
                match build_server(&spec, &dep, &cat, a.next_launch_image.as_ref(), now) {
                    Ok(mut s) => {
                        s.array = Some(a.spec.name.clone());
                        changes.push(Change::insert(&s));
                        changes.push(audit(
                            &system,
                            "array.launch",
                            format!("server/{}/{}", s.deployment, s.name),
                            serde_json::json!({"array": a.spec.name}),
                        ));
                        members.push(s);
                    }
                    Err(e) => {
                        warn!(array = %a.spec.name, error = %e, "cannot launch array member");
                        break;
                    }
                }
            }
            app.store.commit(changes).await
        } else if members.len() > want {
            a.spec.scale_in.order(&mut members);
            let extra = members.len() - want;
            let mut changes = vec![];
            for mut m in members.into_iter().take(extra) {
                let to = ServerState::Decommissioning;
                if m.move_to(to, now).is_ok() {
                    changes.push(audit(
                        &system,
                        "array.shrink",
                        format!("server/{}/{}", m.deployment, m.name),
                        serde_json::json!({"array": a.spec.name}),
                    ));
                    changes.push(Change::update(&mut m, now));
                }
            }
            app.store.commit(changes).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) | Err(StoreError::Stale { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
