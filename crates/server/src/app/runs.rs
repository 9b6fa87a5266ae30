//! Runs: reading them. Runs are created by the orchestrator (boot, decommission) and, with the
//! agent, by `stratus run`.
//!
//! A run's output is in two places: the chunks its agent sent, in the store's run-output table
//! (append-only, one row per chunk, so a chunk never rewrites the run's record; exactly once
//! per chunk number; the tail within the run's cap), and the run's record, which keeps what the
//! control plane adds (notes, the masked rest at the end) and output stored before the table
//! existed (chunks `0..record.output_seq`). [`with_output`] puts them together in that order
//! (record output from before the table first) as the API shows a run, at most
//! `RUN_OUTPUT_MAX` bytes, the tail. Such a run is for reading: it is never written back.

use chrono::Utc;
use stratus_agent_proto::ControlMessage;
use stratus_api::params::RunListParams;
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::RunId;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::Server;

use super::{Actor, App, AppError, OBSERVER};

pub async fn list(app: &App, actor: &Actor, p: &RunListParams) -> Result<Page<Run>, AppError> {
    actor.require(OBSERVER)?;
    if let Some(id) = &p.rollout {
        return rollout_runs(app, actor, id, p).await;
    }
    let scope = match &p.server {
        Some(key) => Some(super::resolve::server(&*app.store, key).await?.id.to_string()),
        None => None,
    };
    let q = Query {
        scope,
        state: p.status.clone(),
        after: p.after.clone(),
        limit: super::page_limit(p.limit)?,
        ..Default::default()
    };
    let (stored, next) = app.store.list_as::<Run>(&q).await?;
    let mut items = Vec::with_capacity(stored.len());
    for r in stored {
        items.push(with_output(app, r).await?);
    }
    Ok(Page { items, next })
}

/// A page of a rollout's runs, in its order (`after` is a run id of the rollout).
async fn rollout_runs(app: &App, actor: &Actor, id: &str, p: &RunListParams) -> Result<Page<Run>, AppError> {
    let ro = super::rollouts::show(app, actor, id).await?;
    if p.server.is_some() {
        return Err(AppError::invalid("server", "give either server or rollout"));
    }
    let limit = super::page_limit(p.limit)? as usize;
    let start = match &p.after {
        Some(after) => {
            ro.runs
                .iter()
                .position(|r| r.to_string() == *after)
                .ok_or_else(|| AppError::invalid("after", "is not a run of this rollout"))?
                + 1
        }
        None => 0,
    };
    let mut items = vec![];
    let mut next = None;
    for (i, run_id) in ro.runs.iter().enumerate().skip(start) {
        if items.len() == limit {
            next = Some(ro.runs[i - 1].to_string());
            break;
        }
        if let Some(r) = app.store.get_as::<Run>(&run_id.to_string()).await?
            && p.status.as_ref().is_none_or(|st| {
                serde_json::to_value(r.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .as_deref()
                    == Some(st)
            })
        {
            items.push(with_output(app, r).await?);
        }
    }
    Ok(Page { items, next })
}

pub async fn show(app: &App, actor: &Actor, id: &str) -> Result<Run, AppError> {
    let r = record(app, actor, id).await?;
    with_output(app, r).await
}

/// The run's record as stored (its output without the agent's chunks).
async fn record(app: &App, actor: &Actor, id: &str) -> Result<Run, AppError> {
    actor.require(OBSERVER)?;
    if id.parse::<uuid::Uuid>().is_err() {
        return Err(AppError::invalid("id", "is not a run id"));
    }
    app.store
        .get_as::<Run>(id)
        .await?
        .ok_or_else(|| AppError::not_found("run", id))
}

/// The output chunk the run expects next from its agent.
pub async fn next_seq(app: &App, r: &Run) -> Result<u64, AppError> {
    let stored = app.store.output_next(&r.id.to_string()).await?;
    // A run whose earlier chunks went into its record (before the output table).
    Ok(stored.max(r.output_seq))
}

/// The run with its whole output, as the API shows it (see the module documentation).
pub async fn with_output(app: &App, mut r: Run) -> Result<Run, AppError> {
    let chunks = app.store.output(&r.id.to_string()).await?;
    let Some(last) = chunks.last().map(|c| c.seq) else {
        return Ok(r);
    };
    let recorded = std::mem::take(&mut r.output);
    let mut out = String::new();
    if r.output_seq > 0 {
        out.push_str(&recorded);
    }
    // Chunks the store dropped (the run's oldest output, beyond its cap).
    if chunks.first().is_some_and(|c| c.seq > r.output_seq) {
        r.output_truncated = true;
    }
    for c in &chunks {
        out.push_str(&c.data);
    }
    if r.output_seq == 0 {
        out.push_str(&recorded);
    }
    r.output_seq = r.output_seq.max(last + 1);
    // Keeps the tail within RUN_OUTPUT_MAX (and says so).
    r.append_output(&out);
    Ok(r)
}

/// The run as its agent gets it: the script's body as it is now and the inputs delivered
/// (credentials decrypted, artifacts as signed URLs). `None` when its script no longer exists.
/// The built-in deploy run is made by [`super::deploys`].
pub async fn delivery(
    app: &App,
    s: &Server,
    run: &Run,
    timeout_secs: Option<u64>,
) -> Result<Option<stratus_agent_proto::ScriptRun>, AppError> {
    if run.script.as_str() == super::deploys::DEPLOY_SCRIPT {
        return super::deploys::script_run(app, run, timeout_secs).await.map(Some);
    }
    let Some(script) = app.store.find_as::<Script>("", run.script.as_str()).await? else {
        return Ok(None);
    };
    Ok(Some(stratus_agent_proto::ScriptRun {
        run: run.id,
        name: script.spec.name.clone(),
        body: script.spec.body.clone(),
        env: super::desired::env_for(app, s, &script).await?,
        timeout_secs,
        phase: run.phase,
        frequency: script.spec.frequency,
    }))
}

/// A new, queued run of `script` on `s`. Its inputs are recorded as given (`cred:NAME`, never
/// a value), limited to those the script declares.
pub fn queued(s: &Server, script: &Script, phase: Phase, requested_by: &str) -> Run {
    Run {
        id: RunId::new(),
        server: s.id,
        server_name: s.name.clone(),
        deployment: s.deployment.clone(),
        script: script.spec.name.clone(),
        script_revision: script.revision,
        revision: 1,
        phase,
        inputs: s
            .inputs
            .iter()
            .filter(|(k, _)| script.spec.inputs.iter().any(|d| &d.name == *k))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        status: RunStatus::Queued,
        exit_code: None,
        output: String::new(),
        output_truncated: false,
        output_seq: 0,
        rollout: None,
        requested_by: requested_by.into(),
        created_at: Utc::now(),
        sent_at: None,
        timeout_secs: None,
        started_at: None,
        finished_at: None,
    }
}

/// Cancel a run. A queued one is cancelled at once (and its agent told, in case it has it); a
/// running one is cancelled by its agent, which stops the script's processes and reports the
/// run `cancelled`. A run whose agent is not connected cannot be cancelled until it is: the
/// script may still be running on the instance, and the run must not claim otherwise.
pub async fn cancel(app: &App, actor: &Actor, id: &str) -> Result<Run, AppError> {
    actor.require(super::OPERATOR)?;
    // The agent's reports update the run too: retry a write that lost to one.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match try_cancel(app, actor, id).await {
            Err(AppError::Stale(_)) if attempts < 10 => continue,
            other => return other,
        }
    }
}

async fn try_cancel(app: &App, actor: &Actor, id: &str) -> Result<Run, AppError> {
    let mut r = record(app, actor, id).await?;
    let target = format!("run/{id}");
    match r.status {
        s if s.is_finished() => Err(AppError::BadState(format!(
            "run {id} is already {}",
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ))),
        RunStatus::Queued => {
            let now = Utc::now();
            r.status = RunStatus::Cancelled;
            r.finished_at = Some(now);
            r.append_output(&format!("[stratus] cancelled by {} before it started\n", actor.name));
            app.commit(vec![
                Change::update(&mut r, now),
                super::audit(actor, "run.cancel", target, serde_json::json!({})),
            ])
            .await?;
            app.push_agent(r.server, ControlMessage::Cancel { run: r.id }).await;
            app.run_ended();
            with_output(app, r).await
        }
        _ => {
            if !app.push_agent(r.server, ControlMessage::Cancel { run: r.id }).await {
                return Err(AppError::BadState(format!(
                    "the agent of server {}/{} is not connected; run {id} can be cancelled once it reconnects",
                    r.deployment, r.server_name
                )));
            }
            app.commit(vec![super::audit(actor, "run.cancel", target, serde_json::json!({}))])
                .await?;
            with_output(app, r).await
        }
    }
}
