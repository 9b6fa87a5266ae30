//! The control plane's own workings, for admins and observers: its background tasks.

use stratus_api::views::{BackgroundTask, BackgroundTasks, CloudBackoff, TaskOutcome, TaskRun};

use super::{Actor, App, AppError, OBSERVER};
use crate::background::TaskStatus;

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn view(t: TaskStatus) -> BackgroundTask {
    BackgroundTask {
        name: t.name,
        description: t.description,
        period_ms: millis(t.period),
        runs: t.runs,
        running_since: t.running_since,
        last: t.last.map(|l| {
            let (outcome, details, error) = match l.outcome {
                Ok(details) => (TaskOutcome::Ok, details, None),
                Err(e) => (TaskOutcome::Error, serde_json::Value::Null, Some(e)),
            };
            TaskRun {
                started_at: l.started_at,
                duration_ms: millis(l.duration),
                outcome,
                details,
                error,
            }
        }),
    }
}

/// Every background task's status and every cloud's backoff.
pub fn tasks(app: &App, actor: &Actor) -> Result<BackgroundTasks, AppError> {
    actor.require(OBSERVER)?;
    let clouds = app
        .inventory
        .backoffs()
        .into_iter()
        .filter(|(_, b)| b.throttled_total > 0)
        .map(|(cloud, b)| CloudBackoff {
            cloud: cloud.to_string(),
            failures: b.failures,
            retry_in_ms: b.remaining().map_or(0, millis),
            throttled_total: b.throttled_total,
            last_error: b.last_error,
        })
        .collect();
    Ok(BackgroundTasks {
        replica: app.cluster.replica().to_string(),
        leader: app.cluster.is_leader(),
        tasks: app.tasks.statuses().into_iter().map(view).collect(),
        clouds,
    })
}
