//! Termination: a `decommissioning` server's decommission scripts run one after another
//! through its agent (simulated on the fake cloud), its load balancers drain it, then every
//! instance launched for it (the recorded one and any the cloud's inventory shows, from a
//! launch whose answer was lost) is terminated, its elastic IPs and open runs released.

use chrono::Utc;
use stratus_cloud::CloudDriver;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::address::Address;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerState};
use stratus_types::template::ServerTemplate;
use tracing::{info, warn};

use super::inventory::Snapshot;
use super::simulated_runs;
use crate::app::{App, AppError};

pub(super) async fn decommission(
    app: &App,
    mut s: Server,
    driver: &dyn CloudDriver,
    inventory: &Snapshot,
) -> Result<(), AppError> {
    let now = Utc::now();
    let mut changes = vec![];
    // A server prepared for a rebundle has no agent identity left: no decommission scripts.
    let capturing = s
        .rebundle
        .as_ref()
        .is_some_and(|r| r.step == stratus_types::server::RebundleStep::Prepared);
    let simulated = driver.simulated() && app.settings.simulate_agents;
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
    if capturing && !crate::app::rebundle::capture(app, &mut s, driver).await? {
        return Ok(()); // still stopping
    }
    // The recorded instance, plus any the cloud has for this server but we did not record (a
    // launch whose answer was lost): nothing may be left running and billing. A server with
    // no recorded instance waits for an inventory taken after its termination began, which
    // shows every launch made before; one with a recorded instance cannot have another (a
    // retried launch returns the instance it finds), and the `gc` task collects any stray.
    if s.instance_id.is_none() && s.decommissioning_since.is_some_and(|t| inventory.taken_at < t) {
        return Ok(());
    }
    let mut ids: Vec<String> = s.instance_id.iter().cloned().collect();
    ids.extend(inventory.of_server(s.id).iter().cloned());
    ids.sort();
    ids.dedup();
    for id in &ids {
        app.inventory
            .call(&s.cloud, || format!("terminating {id}"), driver.terminate(id))
            .await?;
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
                env: crate::app::desired::env_for(app, s, &script).await?,
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
