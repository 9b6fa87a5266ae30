//! `stratus admin tasks`: the control plane's background tasks, typed from the API.

use stratus_api::views::{BackgroundTask, BackgroundTasks, TaskOutcome};

use super::Ctx;
use crate::output::emit_line;

fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let s = (chrono::Utc::now() - t).num_milliseconds().max(0);
    format!("{}.{:01}s ago", s / 1000, (s % 1000) / 100)
}

fn row(t: &BackgroundTask) -> Vec<String> {
    let (started, took, outcome, note) = match &t.last {
        None => ("never".into(), "-".into(), "-".into(), String::new()),
        Some(l) => (
            ago(l.started_at),
            format!("{} ms", l.duration_ms),
            match l.outcome {
                TaskOutcome::Ok => "ok".to_string(),
                TaskOutcome::Error => "error".to_string(),
            },
            l.error.clone().unwrap_or_else(|| {
                if l.details.is_null() {
                    String::new()
                } else {
                    l.details.to_string()
                }
            }),
        ),
    };
    let state = if t.running_since.is_some() { "running" } else { "idle" };
    vec![
        t.name.clone(),
        state.into(),
        t.runs.to_string(),
        started,
        took,
        outcome,
        note,
    ]
}

/// The tasks as a table (JSON with `--json`), then any cloud backing off.
pub async fn tasks(ctx: &Ctx) -> anyhow::Result<()> {
    let v: BackgroundTasks = ctx.client.get_as("/admin/tasks").await?;
    if ctx.json {
        emit_line(&serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let lead = if v.leader { "leader" } else { "not the leader" };
    emit_line(&format!("replica {} ({lead})", v.replica));
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header([
            "TASK",
            "STATE",
            "RUNS",
            "LAST START",
            "DURATION",
            "OUTCOME",
            "DETAILS / ERROR",
        ]);
    for task in &v.tasks {
        t.add_row(row(task));
    }
    emit_line(&t.to_string());
    for c in &v.clouds {
        emit_line(&format!(
            "cloud {}: {} throttled answers; {} in a row, next call in {} ms; last: {}",
            c.cloud,
            c.throttled_total,
            c.failures,
            c.retry_in_ms,
            c.last_error.as_deref().unwrap_or("-")
        ));
    }
    Ok(())
}
