//! Rollouts: one operational script on every server a tag selector picks, a few at a time.
//!
//! `POST /rollouts` selects the live servers (of one deployment, if given) whose tags match the
//! selector, records one queued run per server that can run the script (operational, its
//! template offers it) and lists the others as skipped with the reason. A driver task then
//! hands runs to their agents, at most `concurrency` at a time, in server-name order. Each
//! failure (failed, timed out, or a server that went away mid-run) counts against
//! `max_errors`; once more than `max_errors` runs have failed no new run starts, the runs not
//! yet started are cancelled and the rollout is `stopped`, while the ones already running
//! finish (as SSM does). Cancelling a rollout cancels its queued runs and sends a `Cancel` to
//! its running ones.
//!
//! The driver keeps nothing that is not in the store: a control plane that restarts picks each
//! running rollout up again ([`resume_all`]). Runs still queued are handed out again; one that
//! had already reached its agent is not run twice, since an agent runs a run id at most once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use stratus_agent_proto::ControlMessage;
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::run::{Phase, Rollout, RolloutStatus, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerState};
use stratus_types::tag::Selector;
use stratus_types::template::ServerTemplate;
use stratus_types::{Name, RolloutId, RunId};

use super::{Actor, App, AppError, OBSERVER, OPERATOR, audit};

/// The most servers one rollout may select.
pub const MAX_SERVERS: usize = 10_000;
/// Concurrency when none is given.
pub const DEFAULT_CONCURRENCY: u32 = 10;
/// How often a driver looks at its runs when no run finishes (a run whose server went away).
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// What `POST /rollouts` takes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    /// The operational script.
    pub script: String,
    /// A tag selector (`role=app`, `lb:pool=*`, `env=prod app:*`; terms are ANDed).
    pub selector: String,
    /// Only servers of this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Without `deployment`, a selector that matches servers of several deployments is refused
    /// unless this is true (a rollout never reaches another deployment silently).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_deployments: bool,
    /// Runs at a time (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Failures tolerated before the rollout stops (default 0: the first failure stops it).
    #[serde(default)]
    pub max_errors: u32,
    /// Kill each script after this many seconds (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

pub async fn start(app: &Arc<App>, actor: &Actor, req: &StartRollout) -> Result<Rollout, AppError> {
    actor.require(OPERATOR)?;
    let script_name = Name::parse(&req.script).map_err(|e| AppError::invalid("script", e.to_string()))?;
    let script = app
        .store
        .find_as::<Script>("", script_name.as_str())
        .await?
        .ok_or_else(|| AppError::not_found("script", script_name.as_str()))?;
    let (deployment, matched) = select(app, &req.selector, req.deployment.as_deref(), req.all_deployments).await?;
    let mut offers = std::collections::HashMap::new();
    let mut runs = vec![];
    let mut skipped = vec![];
    for s in &matched {
        if s.state != ServerState::Operational {
            skipped.push(format!("{}/{}: {}", s.deployment, s.name, s.state));
            continue;
        }
        if !offers.contains_key(&s.template) {
            let t = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await?;
            let offered = t.is_some_and(|t| t.spec.operational_scripts.contains(&script_name));
            offers.insert(s.template.clone(), offered);
        }
        if !offers[&s.template] {
            skipped.push(format!(
                "{}/{}: template {} does not offer {}",
                s.deployment, s.name, s.template, script_name
            ));
            continue;
        }
        runs.push(super::runs::queued(s, &script, Phase::Operational, &actor.name));
    }
    let detail = serde_json::json!({ "script": script_name });
    launch(
        app,
        actor,
        Planned {
            script: script_name,
            selector: req.selector.clone(),
            deployment,
            concurrency: req.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            max_errors: req.max_errors,
            timeout_secs: req.timeout_secs,
            runs,
            skipped,
            audit: detail,
            action: "rollout.start",
        },
    )
    .await
}

/// The live servers a selector picks (of one deployment, when given), in deployment and name
/// order; at most [`MAX_SERVERS`].
///
/// Without a deployment, servers of several deployments are picked only when the caller asked
/// for that (`all_deployments`): tags such as `lb:pool=www` are commonly the same in staging and
/// production, and a deploy meant for one must not reach the other unnoticed.
pub(crate) async fn select(
    app: &App,
    selector: &str,
    deployment: Option<&str>,
    all_deployments: bool,
) -> Result<(Option<Name>, Vec<Server>), AppError> {
    let selector = Selector::parse(selector).map_err(|e| AppError::invalid("selector", e.to_string()))?;
    let deployment = match deployment {
        Some(d) => Some(Name::parse(d).map_err(|e| AppError::invalid("deployment", e.to_string()))?),
        None => None,
    };
    let q = Query {
        scope: deployment.as_ref().map(ToString::to_string),
        live_only: true,
        ..Default::default()
    };
    let mut matched: Vec<Server> = app
        .store
        .list_all::<Server>(&q)
        .await?
        .into_iter()
        .filter(|s| selector.matches(&s.tags))
        .collect();
    matched.sort_by(|a, b| (&a.deployment, &a.name).cmp(&(&b.deployment, &b.name)));
    if deployment.is_none() && !all_deployments {
        let mut spans: Vec<&str> = matched.iter().map(|s| s.deployment.as_str()).collect();
        spans.dedup();
        if spans.len() > 1 {
            return Err(AppError::invalid(
                "deployment",
                format!(
                    "the selector matches servers of {} deployments ({}); name one with `deployment` \
                     (--deployment), or set `all_deployments` (--all-deployments) to reach them all",
                    spans.len(),
                    spans.join(", ")
                ),
            ));
        }
    }
    if matched.len() > MAX_SERVERS {
        return Err(AppError::invalid(
            "selector",
            format!(
                "matches {} servers; one rollout takes at most {MAX_SERVERS}",
                matched.len()
            ),
        ));
    }
    Ok((deployment, matched))
}

/// A rollout ready to start: its queued runs (one per server) and what was skipped.
#[derive(Debug)]
pub(crate) struct Planned {
    pub script: Name,
    pub selector: String,
    pub deployment: Option<Name>,
    pub concurrency: u32,
    pub max_errors: u32,
    pub timeout_secs: Option<u64>,
    pub runs: Vec<Run>,
    pub skipped: Vec<String>,
    /// What the audit entry records besides the counts.
    pub audit: serde_json::Value,
    pub action: &'static str,
}

/// Record the rollout and its runs in one write, and start driving it.
pub(crate) async fn launch(app: &Arc<App>, actor: &Actor, p: Planned) -> Result<Rollout, AppError> {
    if p.concurrency == 0 || p.concurrency > MAX_SERVERS as u32 {
        return Err(AppError::invalid(
            "concurrency",
            format!("must be between 1 and {MAX_SERVERS}"),
        ));
    }
    if p.timeout_secs == Some(0) {
        return Err(AppError::invalid("timeout_secs", "must be at least 1"));
    }
    if p.runs.is_empty() {
        return Err(AppError::BadState(format!(
            "no operational server matching {:?} can run {}{}",
            p.selector,
            p.script,
            if p.skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", summary(&p.skipped))
            }
        )));
    }
    let id = RolloutId::new();
    let mut runs = p.runs;
    for r in &mut runs {
        r.rollout = Some(id);
    }
    let rollout = Rollout {
        id,
        revision: 1,
        script: p.script,
        selector: p.selector,
        deployment: p.deployment,
        concurrency: p.concurrency,
        max_errors: p.max_errors,
        timeout_secs: p.timeout_secs,
        status: RolloutStatus::Running,
        runs: runs.iter().map(|r| r.id).collect(),
        skipped: p.skipped,
        started: 0,
        succeeded: 0,
        failed: 0,
        cancelled: 0,
        requested_by: actor.name.clone(),
        created_at: Utc::now(),
        finished_at: None,
    };
    let mut detail = p.audit;
    if let Some(map) = detail.as_object_mut() {
        map.insert("selector".into(), rollout.selector.clone().into());
        map.insert("servers".into(), rollout.runs.len().into());
        map.insert("concurrency".into(), rollout.concurrency.into());
        map.insert("max_errors".into(), rollout.max_errors.into());
    }
    let mut changes: Vec<Change> = runs.iter().map(Change::insert).collect();
    changes.push(Change::insert(&rollout));
    changes.push(audit(actor, p.action, format!("rollout/{id}"), detail));
    app.commit(changes).await?;
    // The leader drives rollouts; another replica's commit reaches it as a change note.
    if app.cluster.is_leader() {
        start_driver(app, id);
    }
    Ok(rollout)
}

/// Drive `id` here unless a driver already does.
fn start_driver(app: &Arc<App>, id: RolloutId) {
    let mut driven = app.rollout_drivers.lock().unwrap_or_else(|e| e.into_inner());
    driven.retain(|_, t| !t.is_finished());
    if driven.contains_key(&id) {
        return;
    }
    driven.insert(id, tokio::spawn(drive(app.clone(), id)));
}

/// Stop every driver of this process (the leadership went elsewhere; the new leader resumes
/// the rollouts from the store).
pub fn stop_all(app: &App) {
    let mut driven = app.rollout_drivers.lock().unwrap_or_else(|e| e.into_inner());
    for (_, t) in driven.drain() {
        t.abort();
    }
}

/// At most the first few skipped servers, for an error message.
fn summary(skipped: &[String]) -> String {
    let mut s = skipped.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if skipped.len() > 3 {
        s.push_str(&format!("; and {} more", skipped.len() - 3));
    }
    s
}

pub async fn list(
    app: &App,
    actor: &Actor,
    after: Option<String>,
    limit: Option<u32>,
) -> Result<Page<Rollout>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Rollout>(&q).await?;
    Ok(Page { items, next })
}

pub async fn show(app: &App, actor: &Actor, id: &str) -> Result<Rollout, AppError> {
    actor.require(OBSERVER)?;
    if id.parse::<uuid::Uuid>().is_err() {
        return Err(AppError::invalid("id", "is not a rollout id"));
    }
    app.store
        .get_as::<Rollout>(id)
        .await?
        .ok_or_else(|| AppError::not_found("rollout", id))
}

/// Cancel a rollout: no new run starts; queued runs are cancelled, running ones are sent a
/// `Cancel` (the driver does both as soon as it sees the status).
pub async fn cancel(app: &App, actor: &Actor, id: &str) -> Result<Rollout, AppError> {
    actor.require(OPERATOR)?;
    // The driver writes the rollout after every step: retry a write that lost to it.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match try_cancel(app, actor, id).await {
            Err(AppError::Stale(_)) if attempts < 10 => continue,
            other => return other,
        }
    }
}

async fn try_cancel(app: &App, actor: &Actor, id: &str) -> Result<Rollout, AppError> {
    let mut r = show(app, actor, id).await?;
    if r.status.is_finished() {
        return Err(AppError::BadState(
            format!("rollout {id} is already {:?}", r.status).to_lowercase(),
        ));
    }
    r.status = RolloutStatus::Cancelled;
    let now = Utc::now();
    app.commit(vec![
        Change::update(&mut r, now),
        audit(actor, "rollout.cancel", format!("rollout/{id}"), serde_json::json!({})),
    ])
    .await?;
    app.run_ended();
    Ok(r)
}

/// Start a driver for every rollout left running (after a restart).
pub async fn resume_all(app: &Arc<App>) {
    let q = Query {
        state: Some("running".into()),
        ..Default::default()
    };
    match app.store.list_all::<Rollout>(&q).await {
        Ok(list) => {
            for r in list {
                start_driver(app, r.id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot resume rollouts"),
    }
}

/// Drive one rollout to its end.
pub async fn drive(app: Arc<App>, id: RolloutId) {
    let mut finished = app.run_finished.subscribe();
    let mut driver = Driver::default();
    loop {
        finished.mark_unchanged();
        match driver.step(&app, id).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(rollout = %id, error = %e, "rollout step failed; retrying"),
        }
        let _ = tokio::time::timeout(IDLE_CHECK, finished.changed()).await;
    }
}

/// What a driver knows between steps; rebuilt from the store on its first step. The counts
/// live here and are written onto the rollout each step, so a step whose rollout write loses
/// to a cancel loses nothing.
#[derive(Default)]
struct Driver {
    loaded: bool,
    pending: VecDeque<RunId>,
    in_flight: HashSet<RunId>,
    started: u32,
    succeeded: u32,
    failed: u32,
    cancelled: u32,
}

impl Driver {
    fn count(&mut self, status: RunStatus) {
        match status {
            RunStatus::Succeeded => self.succeeded += 1,
            RunStatus::Cancelled => self.cancelled += 1,
            _ => self.failed += 1,
        }
    }

    /// Sort the rollout's runs into pending, in flight and counted.
    async fn load(&mut self, app: &App, ro: &Rollout) -> Result<(), AppError> {
        for run_id in &ro.runs {
            let Some(r) = app.store.get_as::<Run>(&run_id.to_string()).await? else {
                continue;
            };
            if r.sent_at.is_some() {
                self.started += 1;
            }
            if r.status.is_finished() {
                self.count(r.status);
            } else if r.sent_at.is_none() {
                self.pending.push_back(*run_id);
            } else {
                self.in_flight.insert(*run_id);
            }
        }
        self.loaded = true;
        Ok(())
    }

    /// One look at the rollout: count finished runs, start more or stop. True when it is over.
    async fn step(&mut self, app: &App, id: RolloutId) -> Result<bool, AppError> {
        let Some(mut ro) = app.store.get_as::<Rollout>(&id.to_string()).await? else {
            return Ok(true);
        };
        if ro.finished_at.is_some() {
            return Ok(true);
        }
        if !self.loaded {
            self.load(app, &ro).await?;
        }
        let now = Utc::now();
        // Runs in flight: finished ones are counted; one whose server went away fails.
        for run_id in self.in_flight.clone() {
            let Some(mut r) = app.store.get_as::<Run>(&run_id.to_string()).await? else {
                self.in_flight.remove(&run_id);
                continue;
            };
            if !r.status.is_finished() {
                let s: Option<Server> = app.store.get_as(&r.server.to_string()).await?;
                let gone = s.is_none_or(|s| {
                    matches!(
                        s.state,
                        ServerState::Stranded | ServerState::Terminated | ServerState::Decommissioning
                    )
                });
                if !gone {
                    continue;
                }
                r.status = RunStatus::Failed;
                r.finished_at = Some(now);
                r.append_output("\n[stratus] the server stopped being operational while this ran\n");
                if !committed(app, &mut r, now).await? {
                    continue; // it changed meanwhile: look again next step
                }
            }
            self.in_flight.remove(&run_id);
            self.count(r.status);
        }
        let cancelled = ro.status == RolloutStatus::Cancelled;
        if cancelled || self.failed > ro.max_errors {
            let note = if cancelled {
                "[stratus] not run: the rollout was cancelled\n".to_string()
            } else {
                format!(
                    "[stratus] not run: the rollout stopped after {} failures (max errors {})\n",
                    self.failed, ro.max_errors
                )
            };
            while let Some(run_id) = self.pending.front().copied() {
                if let Some(mut r) = app.store.get_as::<Run>(&run_id.to_string()).await?
                    && !r.status.is_finished()
                {
                    r.status = RunStatus::Cancelled;
                    r.finished_at = Some(now);
                    r.append_output(&note);
                    if !committed(app, &mut r, now).await? {
                        break; // changed meanwhile: next step
                    }
                    self.cancelled += 1;
                }
                self.pending.pop_front();
            }
            if cancelled {
                for run_id in &self.in_flight {
                    if let Some(r) = app.store.get_as::<Run>(&run_id.to_string()).await? {
                        app.push_agent(r.server, ControlMessage::Cancel { run: *run_id }).await;
                    }
                }
            } else {
                ro.status = RolloutStatus::Stopped;
            }
        }
        // Start runs up to the concurrency limit.
        while ro.status == RolloutStatus::Running
            && self.failed <= ro.max_errors
            && self.in_flight.len() < ro.concurrency as usize
        {
            let Some(run_id) = self.pending.pop_front() else { break };
            let Some(mut r) = app.store.get_as::<Run>(&run_id.to_string()).await? else {
                continue;
            };
            if r.status.is_finished() {
                self.count(r.status); // cancelled on its own
                continue;
            }
            // Recorded as sent before it is sent: a restart then never sends it twice from
            // here (the agent's hello gets it again if it was lost on the way).
            r.sent_at = Some(now);
            r.timeout_secs = ro.timeout_secs;
            if !committed(app, &mut r, now).await? {
                self.pending.push_front(run_id);
                break;
            }
            self.started += 1;
            match dispatch(app, &r, ro.timeout_secs).await {
                Ok(()) => {
                    self.in_flight.insert(run_id);
                }
                Err(why) => {
                    r.status = RunStatus::Failed;
                    r.finished_at = Some(now);
                    r.append_output(&format!("[stratus] not run: {why}\n"));
                    if committed(app, &mut r, now).await? {
                        self.failed += 1;
                    } else {
                        self.in_flight.insert(run_id);
                    }
                }
            }
        }
        let done = self.pending.is_empty() && self.in_flight.is_empty();
        (ro.started, ro.succeeded, ro.failed, ro.cancelled) =
            (self.started, self.succeeded, self.failed, self.cancelled);
        if done {
            ro.finished_at = Some(now);
            if ro.status == RolloutStatus::Running {
                ro.status = if self.failed == 0 && self.cancelled == 0 {
                    RolloutStatus::Succeeded
                } else if self.failed > ro.max_errors {
                    RolloutStatus::Stopped
                } else {
                    RolloutStatus::Failed
                };
            }
        }
        match app.store.commit(vec![Change::update(&mut ro, now)]).await {
            Ok(()) => Ok(done),
            // Somebody cancelled it meanwhile: the next step sees it.
            Err(stratus_store::StoreError::Stale { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Write a run; false when somebody changed it first (it is then looked at again).
async fn committed(app: &App, r: &mut Run, now: chrono::DateTime<Utc>) -> Result<bool, AppError> {
    match app.store.commit(vec![Change::update(r, now)]).await {
        Ok(()) => Ok(true),
        Err(stratus_store::StoreError::Stale { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Hand a run to its server's agent (with the script and inputs as they are now).
async fn dispatch(app: &App, r: &Run, timeout_secs: Option<u64>) -> Result<(), String> {
    let server: Server = match app.store.get_as(&r.server.to_string()).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err("the server no longer exists".into()),
        Err(e) => return Err(e.to_string()),
    };
    if server.state != ServerState::Operational {
        return Err(format!("the server is {}", server.state));
    }
    let sr = match super::runs::delivery(app, &server, r, timeout_secs).await {
        Ok(Some(sr)) => sr,
        Ok(None) => return Err(format!("script {} no longer exists", r.script)),
        Err(e) => return Err(e.to_string()),
    };
    if app.push_agent(server.id, ControlMessage::RunScript(sr)).await {
        Ok(())
    } else {
        Err("the server's agent is not connected".into())
    }
}
