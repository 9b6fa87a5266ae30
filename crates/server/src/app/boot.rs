//! A server's boot: its boot runs settle it `operational` (all succeeded) or `stranded` (the
//! first that did not, with its script, exit code and output tail).

use chrono::Utc;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::ServerId;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::server::{Server, ServerState, StrandedReason};

use super::agents::AgentRecord;
use super::{App, AppError};

/// A run whose inputs cannot be delivered fails with the reason (and a boot run strands its
/// server, as a failing script would).
pub(crate) async fn undeliverable(app: &App, mut run: Run, why: &str) -> Result<(), AppError> {
    if run.status.is_finished() {
        return Ok(());
    }
    let now = Utc::now();
    run.status = RunStatus::Failed;
    run.finished_at = Some(now);
    run.append_output(&format!("[stratus] cannot deliver this run: {why}\n"));
    let server = run.server;
    app.store.commit(vec![Change::update(&mut run, now)]).await?;
    app.run_ended();
    if run.phase == Phase::Boot {
        settle_boot(app, server).await?;
    }
    Ok(())
}

/// Move a booting server on if its boot is decided (all runs succeeded — also when it has
/// none — or one failed).
pub async fn settle_boot(app: &App, server: ServerId) -> Result<(), AppError> {
    let Some(mut s) = app.store.get_as::<Server>(&server.to_string()).await? else {
        return Ok(());
    };
    if s.state != ServerState::Booting {
        return Ok(());
    }
    // The current boot's runs (a reboot starts a new list); without an agent record, every
    // boot run the server has.
    let current = app
        .store
        .get_as::<AgentRecord>(&server.to_string())
        .await?
        .map(|a| a.boot_runs);
    let q = Query {
        scope: Some(server.to_string()),
        ..Default::default()
    };
    let mut runs: Vec<Run> = app
        .store
        .list_all::<Run>(&q)
        .await?
        .into_iter()
        .filter(|r| r.phase == Phase::Boot)
        .filter(|r| current.as_ref().is_none_or(|c| c.is_empty() || c.contains(&r.id)))
        .collect();
    // In boot order: the boot is decided by its first run that did not succeed, once that one
    // has finished (a later run cancelled because of it may be reported first).
    let order = |r: &Run| current.as_ref().and_then(|c| c.iter().position(|id| *id == r.id));
    runs.sort_by_key(|r| (order(r), r.id));
    let now = Utc::now();
    let first_open = runs.iter().find(|r| r.status != RunStatus::Succeeded);
    if let Some(failed) = first_open.filter(|r| r.status.is_finished()) {
        let failed = super::runs::with_output(app, failed.clone()).await?;
        let tail: String = failed
            .output
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let reason = StrandedReason {
            step: failed.script.to_string(),
            message: format!("boot script {} {:?}", failed.script, failed.status).to_lowercase(),
            exit_code: failed.exit_code,
            output_tail: tail,
        };
        s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
    } else if first_open.is_none() {
        s.move_to(ServerState::Operational, now)
            .map_err(|e| AppError::BadState(e.to_string()))?;
    } else {
        return Ok(());
    }
    app.commit(vec![Change::update(&mut s, now)]).await
}
