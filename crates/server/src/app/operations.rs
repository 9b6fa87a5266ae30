//! The operation driver: carries every unfinished [`Operation`] through its steps (the state
//! machines are drawn in `stratus_types::operation`).
//!
//! The request that starts an operation checks everything it can and commits the operation's
//! record together with its first effect (a replacement's successor server, a rebundle's
//! `preparing` mark), so a request that was answered has an operation that will finish. The
//! leader's driver ([`Driver`], a background task) then executes one step at a time, each either a store write
//! committed in the same transaction as the next step, or an idempotent call (moving an address
//! that already moved, terminating a server that is already leaving, asking an agent again) —
//! so a control plane killed at any point, restarted or replaced by another replica, goes on
//! from the recorded step and never repeats one that took effect.
//!
//! The HTTP request waits for the operation and answers with its outcome, as before; if the
//! caller goes away, or the control plane restarts, the operation goes on, and `GET
//! /operations/{id}` (`stratus operation show`) shows where it stands.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use stratus_agent_proto::{ControlMessage, ImagePrepared, PrepareImage};
use stratus_api::views::Page;
use stratus_store::{Change, Kind, Query, StoreError, TypedStore};
use stratus_types::OperationId;
use stratus_types::address::Address;
use stratus_types::operation::{Operation, OperationKind, Step};
use stratus_types::server::{AfterRebundle, RebundleStep, Server, ServerState};
use tracing::{info, warn};

use super::{Actor, App, AppError, OBSERVER, audit};

/// The longest the agent may take to answer a preparation before the rebundle is given up.
pub const PREPARE_WAIT: Duration = Duration::from_secs(600);
/// How long an unanswered preparation waits before the agent is asked again (its answer may
/// have been lost with a connection or a control plane that restarted).
const ASK_AGAIN: Duration = Duration::from_secs(30);
/// A successor has this long past the boot deadline to become operational.
const BOOT_SLACK: Duration = Duration::from_secs(60);

/// A hook tests use to stop the driver before a step: return false and the step waits. This is
/// how the restart tests stop an operation exactly before each step, then kill the control
/// plane there.
#[derive(Clone)]
pub struct StepGate(pub Arc<dyn Fn(&Operation) -> bool + Send + Sync>);

impl std::fmt::Debug for StepGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGate")
    }
}

/// Record a new operation with the changes that are its first effect, in one transaction.
/// A server with an operation under way gets a conflict naming it.
pub async fn begin(app: &App, op: &Operation, mut changes: Vec<Change>) -> Result<(), AppError> {
    changes.push(Change::insert(op));
    match app.store.commit(changes).await {
        Ok(()) => {
            app.poke();
            Ok(())
        }
        Err(StoreError::Conflict {
            kind: Kind::Operation, ..
        }) => {
            let q = Query {
                scope: Some(op.server.to_string()),
                live_only: true,
                ..Default::default()
            };
            let open = app.store.list_all::<Operation>(&q).await?;
            let what = open.first().map_or(String::new(), |o| {
                format!(" ({} {}, at {})", o.kind.as_str(), o.id, o.step)
            });
            Err(AppError::Conflict(format!(
                "{} has an operation under way{what}; wait for it (`stratus operation show ID`)",
                op.server_name
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Wait until the operation finishes, at most `limit`; the operation as it stands then.
pub async fn wait(app: &App, id: OperationId, limit: Duration) -> Result<Operation, AppError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let op = get_any(app, id).await?;
        if op.step.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(op);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_any(app: &App, id: OperationId) -> Result<Operation, AppError> {
    app.store
        .get_as::<Operation>(&id.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("operation", id.to_string()))
}

pub async fn get(app: &App, actor: &Actor, id: &str) -> Result<Operation, AppError> {
    actor.require(OBSERVER)?;
    let id: OperationId = id.parse().map_err(|_| AppError::invalid("id", "not an operation id"))?;
    get_any(app, id).await
}

/// Operations, oldest first (ids are time-ordered); of one server when given.
pub async fn list(
    app: &App,
    actor: &Actor,
    server: Option<&str>,
    after: Option<String>,
    limit: Option<u32>,
) -> Result<Page<Operation>, AppError> {
    actor.require(OBSERVER)?;
    let scope = match server {
        Some(key) => Some(super::resolve::server(&*app.store, key).await?.id.to_string()),
        None => None,
    };
    let q = Query {
        scope,
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Operation>(&q).await?;
    Ok(Page { items, next })
}

/// The leader's operation driver, a background task (`reconcile::spawn_all`): a pass when poked
/// and every reconcile interval.
#[derive(Debug)]
pub struct Driver;

#[async_trait::async_trait]
impl crate::background::BackgroundTask for Driver {
    async fn activate(&mut self, app: &Arc<App>) -> crate::background::Outcome {
        let open = pass(app).await.map_err(|e| super::error_chain(&e))?;
        Ok(serde_json::json!({ "open": open }))
    }
}

/// Advance every unfinished operation as far as it goes now; how many were open.
async fn pass(app: &App) -> Result<usize, AppError> {
    let q = Query {
        live_only: true,
        ..Default::default()
    };
    let open = app.store.list_all::<Operation>(&q).await?;
    let count = open.len();
    for op in open {
        let id = op.id;
        match drive(app, op).await {
            Ok(()) | Err(AppError::Stale(_)) => {}
            // What will not pass by waiting (a successor gone, a name taken, a template deleted,
            // a role the requester lacks) ends the operation; the rest is retried.
            Err(e) if permanent(&e) => {
                let mut op = get_any(app, id).await?;
                if !op.step.is_finished() {
                    let msg = format!("at step {}: {e}", op.step);
                    fail(app, &mut op, msg).await?;
                }
            }
            Err(e) => warn!(operation = %id, error = %e, "operation step failed; retried on the next pass"),
        }
    }
    Ok(count)
}

/// An error that waiting does not cure.
fn permanent(e: &AppError) -> bool {
    matches!(
        e,
        AppError::BadState(_)
            | AppError::NotFound { .. }
            | AppError::Missing(_)
            | AppError::Forbidden(_)
            | AppError::Invalid(_)
            | AppError::Conflict(_)
    )
}

/// What a step did.
enum Flow {
    /// It moved the operation (or what it waits on) on: read it again and go on.
    Next,
    /// It waits for something (a server to boot, an agent to answer).
    Wait,
}

/// Execute steps until the operation waits or ends.
async fn drive(app: &App, mut op: Operation) -> Result<(), AppError> {
    while !op.step.is_finished() {
        if let Some(gate) = &app.settings.operation_gate
            && !(gate.0)(&op)
        {
            return Ok(());
        }
        let flow = match op.kind.clone() {
            OperationKind::Replace => replace_step(app, &mut op).await?,
            OperationKind::Rebundle { then, .. } => rebundle_step(app, &mut op, then).await?,
        };
        if let Flow::Wait = flow {
            return Ok(());
        }
        op = get_any(app, op.id).await?;
    }
    Ok(())
}

/// The authority later steps act with: the requester's, named with the operation.
fn actor(op: &Operation) -> Actor {
    Actor {
        name: format!("{} (operation {})", op.requested_by, op.id),
        level: op.requester_level,
        token: None,
    }
}

pub(crate) async fn server_by_id(app: &App, id: stratus_types::ServerId) -> Result<Server, AppError> {
    app.store
        .get_as::<Server>(&id.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("server", id.to_string()))
}

/// Commit the operation moved to `step` (with `more` changes in the same transaction).
async fn advance(app: &App, op: &mut Operation, step: Step, mut more: Vec<Change>) -> Result<Flow, AppError> {
    let now = Utc::now();
    let from = op.step;
    op.advance(step, now);
    more.push(Change::update(op, now));
    app.commit(more).await?;
    info!(operation = %op.id, kind = op.kind.as_str(), server = %op.server_name, %from, to = %step, "operation step");
    Ok(Flow::Next)
}

async fn fail(app: &App, op: &mut Operation, error: String) -> Result<Flow, AppError> {
    let now = Utc::now();
    warn!(operation = %op.id, kind = op.kind.as_str(), server = %op.server_name, step = %op.step, error = %error, "operation failed");
    op.fail(error.clone(), now);
    let entry = audit(
        &Actor::system(),
        &format!("operation.{}_failed", op.kind.as_str()),
        format!("server/{}", op.server_name),
        serde_json::json!({ "operation": op.id, "error": error }),
    );
    app.commit(vec![Change::update(op, now), entry]).await?;
    Ok(Flow::Next)
}

/// Replace: boot → move_addresses → terminate_old → done.
async fn replace_step(app: &App, op: &mut Operation) -> Result<Flow, AppError> {
    let (Some(new_id), Some(new_key)) = (op.successor, op.successor_name.clone()) else {
        return fail(app, op, "the operation has no successor recorded".into()).await;
    };
    let old_key = op.server_name.clone();
    match op.step {
        Step::Boot => {
            let new = server_by_id(app, new_id).await?;
            match new.state {
                ServerState::Operational => advance(app, op, Step::MoveAddresses, vec![]).await,
                ServerState::Stranded | ServerState::Terminated | ServerState::Decommissioning => {
                    let why = new
                        .stranded
                        .as_ref()
                        .map_or(String::new(), |r| format!(": {}", r.message));
                    let msg = format!(
                        "the replacement {new_key} is {}{why}; {old_key} keeps serving and keeps its addresses \
                         (look at `stratus server show {new_key}`, then terminate it)",
                        new.state
                    );
                    fail(app, op, msg).await
                }
                _ if elapsed(op) > app.settings.boot_deadline + BOOT_SLACK => {
                    let msg = format!(
                        "the replacement {new_key} did not become operational in time; {old_key} keeps serving"
                    );
                    fail(app, op, msg).await
                }
                _ => Ok(Flow::Wait),
            }
        }
        Step::MoveAddresses => {
            if op.addresses.is_empty() {
                // The plan first, so a restart half-way still knows every address to move.
                let plan: Vec<String> = app
                    .store
                    .list_all::<Address>(&Query::default())
                    .await?
                    .into_iter()
                    .filter(|a| a.server == Some(op.server))
                    .map(|a| a.name.to_string())
                    .collect();
                if !plan.is_empty() {
                    op.addresses = plan;
                    let now = Utc::now();
                    app.commit(vec![Change::update(op, now)]).await?;
                }
            }
            for name in op.addresses.clone() {
                let a = super::resolve::named::<Address>(&*app.store, &name).await?;
                if a.server != Some(new_id) {
                    super::addresses::associate(app, &actor(op), &name, &new_key).await?;
                }
            }
            advance(app, op, Step::TerminateOld, vec![]).await
        }
        Step::TerminateOld => {
            let old = server_by_id(app, op.server).await?;
            if !matches!(old.state, ServerState::Decommissioning | ServerState::Terminated) {
                super::servers::terminate(app, &actor(op), &old_key).await?;
            }
            info!(old = %old_key, new = %new_key, "replaced");
            advance(app, op, Step::Done, vec![]).await
        }
        other => fail(app, op, format!("a replace has no step {other}")).await,
    }
}

fn elapsed(op: &Operation) -> Duration {
    (Utc::now() - op.step_started_at).to_std().unwrap_or_default()
}

/// Rebundle: prepare → capture → relaunch → done.
async fn rebundle_step(app: &App, op: &mut Operation, then: AfterRebundle) -> Result<Flow, AppError> {
    let s = server_by_id(app, op.server).await?;
    let Some(reb) = s.rebundle.clone() else {
        return fail(app, op, format!("{} has no rebundle recorded", op.server_name)).await;
    };
    match op.step {
        Step::Prepare => match reb.step {
            RebundleStep::Preparing if elapsed(op) > PREPARE_WAIT => {
                // The agent prepares, answers, and then forgets its identity: an answer lost
                // with a connection cannot be asked for again, so whether it cleaned up is
                // unknown, and the server may no longer have a working agent.
                let msg = format!(
                    "the agent of {} did not answer the preparation within {} s; whether it cleaned up is unknown: \
                     look at `stratus server console {}`, and terminate the server if its agent is gone",
                    op.server_name,
                    PREPARE_WAIT.as_secs(),
                    op.server_name
                );
                let answer = ImagePrepared {
                    error: Some(msg.clone()),
                    ..Default::default()
                };
                super::rebundle::prepared(app, s.id, &answer).await?;
                // A real answer may have come first: then it stands.
                let now = server_by_id(app, s.id).await?;
                match now.rebundle.map(|r| (r.step, r.error)) {
                    Some((RebundleStep::Refused, Some(e))) if e == msg => fail(app, op, msg).await,
                    _ => Ok(Flow::Next),
                }
            }
            RebundleStep::Preparing if s.state != ServerState::Operational => {
                // Terminated (or stranded) meanwhile: its agent must not wipe itself now.
                let msg = format!(
                    "{} became {} before its agent prepared it; nothing was asked of the agent after that",
                    op.server_name, s.state
                );
                let answer = ImagePrepared {
                    error: Some(msg),
                    ..Default::default()
                };
                super::rebundle::prepared(app, s.id, &answer).await?;
                Ok(Flow::Next)
            }
            RebundleStep::Preparing => ask_to_prepare(app, op, &s).await,
            RebundleStep::Refused => {
                let mut msg = format!(
                    "the rebundle of {} was refused and nothing changed: {}",
                    op.server_name,
                    reb.error.unwrap_or_default()
                );
                if !reb.secret_found_in.is_empty() {
                    msg.push_str(&format!(" [files: {}]", reb.secret_found_in.join(", ")));
                }
                fail(app, op, msg).await
            }
            RebundleStep::Prepared | RebundleStep::Captured | RebundleStep::Failed => {
                advance(app, op, Step::Capture, vec![]).await
            }
        },
        // The orchestrator drains, stops, captures and terminates (reconcile/decommission.rs).
        Step::Capture => match (s.state, reb.step) {
            (ServerState::Terminated, RebundleStep::Captured) => {
                let next = if then == AfterRebundle::Relaunch && s.array.is_none() {
                    Step::Relaunch
                } else {
                    Step::Done
                };
                advance(app, op, next, vec![]).await
            }
            (ServerState::Terminated, _) => {
                let msg = format!(
                    "the capture of {} failed, and the server is terminated (its identity was gone): {}; rebundle another server",
                    op.server_name,
                    reb.error.unwrap_or_else(|| "no reason recorded".into())
                );
                fail(app, op, msg).await
            }
            _ => Ok(Flow::Wait),
        },
        Step::Relaunch => {
            let spec = super::replace::spec_like(&s, s.name.clone());
            let (new, mut changes) = super::servers::prepare_launch(app, &actor(op), &spec).await?;
            op.successor = Some(new.id);
            op.successor_name = Some(format!("{}/{}", new.deployment, new.name));
            changes.push(audit(
                &actor(op),
                "server.relaunch",
                format!("server/{}", op.server_name),
                serde_json::json!({ "operation": op.id }),
            ));
            advance(app, op, Step::Done, changes).await
        }
        other => fail(app, op, format!("a rebundle has no step {other}")).await,
    }
}

/// Ask the agent to prepare its instance, once per [`ASK_AGAIN`] until it answers: the agent
/// treats a repeated request like the first (the preparation is idempotent), and the control
/// plane takes the first answer. Simulated agents (the fake cloud) are answered for.
async fn ask_to_prepare(app: &App, op: &mut Operation, s: &Server) -> Result<Flow, AppError> {
    let now = Utc::now();
    let due = op
        .asked_at
        .is_none_or(|at| (now - at).to_std().unwrap_or_default() >= ASK_AGAIN);
    if !due {
        return Ok(Flow::Wait);
    }
    let driver = app.drivers.for_cloud(&*app.store, &s.cloud).await?;
    if driver.simulated() && app.settings.simulate_agents {
        let answer = ImagePrepared {
            removed: vec!["simulated: the fake cloud has no file system".into()],
            ..Default::default()
        };
        super::rebundle::prepared(app, s.id, &answer).await?;
        return Ok(Flow::Next);
    }
    if !app.agent_connected(s.id).await {
        return Ok(Flow::Wait);
    }
    let secrets = match super::rebundle::secrets_of(app, s).await {
        Ok(secrets) => secrets,
        // A credential narrowed away since the request: refused, nothing changed. (A store or
        // key-ring error is retried.)
        Err(e) if permanent(&e) => {
            let answer = ImagePrepared {
                error: Some(e.to_string()),
                ..Default::default()
            };
            super::rebundle::prepared(app, s.id, &answer).await?;
            return Ok(Flow::Next);
        }
        Err(e) => return Err(e),
    };
    op.asked_at = Some(now);
    app.store.commit(vec![Change::update(op, now)]).await?;
    app.push_agent(s.id, ControlMessage::PrepareImage(PrepareImage { secrets }))
        .await;
    Ok(Flow::Wait)
}
