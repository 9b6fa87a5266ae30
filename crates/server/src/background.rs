//! Background tasks: the leader's recurring work, each in its own tokio task, each showing how
//! it went (`GET /api/v1/admin/tasks`, `stratus admin tasks`).
//!
//! Modelled on omicron's `nexus/src/app/background`: a task is a value with one method,
//! [`BackgroundTask::activate`], that does one idempotent pass and says what it did (a small
//! JSON value) or why it failed. [`spawn`] runs it in a loop that waits for the first of:
//!
//! ```text
//!   its period elapsed ─┐
//!   app.poke()  ────────┼─▶ activate() ─▶ status: runs+1, started, duration, details | error
//!   servers changed ────┘        (activations that arrive during a run coalesce into one)
//! ```
//!
//! Tasks never call one another and never wait on one another: a pass that is slow (a cloud
//! that answers slowly) holds up only its own task. Several signals arriving while a pass runs
//! make one more pass, not many (`watch` and `Notify` both coalesce).
//!
//! The registry ([`Registry`], `App::tasks`) keeps each task's status, by name, whether or not
//! this replica runs it: a replica that is not the leader shows what it ran when it led (the
//! API says whether it leads). The set of tasks and their periods is in `reconcile::spawn_all`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::app::App;

/// One pass of a task: `Ok(details)` or the error to show.
pub type Outcome = Result<serde_json::Value, String>;

#[async_trait]
pub trait BackgroundTask: Send {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome;
}

/// What wakes a task besides its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// `App::poke` (a change the app layer made, a change another replica committed).
    Pokes,
    /// A committed change of a server (the load-balancer sync).
    ServersChanged,
}

/// How a task is run.
#[derive(Debug, Clone)]
pub struct TaskDef {
    pub name: String,
    pub description: String,
    pub period: Duration,
    pub wakes: &'static [Wake],
}

impl TaskDef {
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        period: Duration,
        wakes: &'static [Wake],
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            period,
            wakes,
        }
    }
}

/// The last finished pass of a task.
#[derive(Debug, Clone)]
pub struct LastRun {
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    pub outcome: Outcome,
}

/// A task's status, as the API shows it.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub name: String,
    pub description: String,
    pub period: Duration,
    pub runs: u64,
    /// A pass is under way, since then.
    pub running_since: Option<DateTime<Utc>>,
    pub last: Option<LastRun>,
}

/// Every task's status, by name.
#[derive(Debug, Default)]
pub struct Registry {
    tasks: Mutex<BTreeMap<String, Arc<Mutex<TaskStatus>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    fn register(&self, def: &TaskDef) -> Arc<Mutex<TaskStatus>> {
        let status = Arc::new(Mutex::new(TaskStatus {
            name: def.name.clone(),
            description: def.description.clone(),
            period: def.period,
            runs: 0,
            running_since: None,
            last: None,
        }));
        lock(&self.tasks).insert(def.name.clone(), status.clone());
        status
    }

    /// Forget a task that no longer exists (a deleted cloud's).
    pub fn remove(&self, name: &str) {
        lock(&self.tasks).remove(name);
    }

    /// Every task's status, by name.
    pub fn statuses(&self) -> Vec<TaskStatus> {
        lock(&self.tasks).values().map(|s| lock(s).clone()).collect()
    }

    /// One task's status.
    pub fn status(&self, name: &str) -> Option<TaskStatus> {
        lock(&self.tasks).get(name).map(|s| lock(s).clone())
    }
}

/// Clears `running_since` when a pass ends, also when the task is aborted mid-pass (the
/// leadership moved): the status must not claim a pass that nobody runs.
struct Running<'a>(&'a Mutex<TaskStatus>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(self.0).running_since = None;
    }
}

/// Run `task` until the returned handle is aborted.
pub fn spawn(app: &Arc<App>, def: TaskDef, task: impl BackgroundTask + 'static) -> tokio::task::JoinHandle<()> {
    let status = app.tasks.register(&def);
    tokio::spawn(run(app.clone(), def, task, status))
}

async fn run(app: Arc<App>, def: TaskDef, mut task: impl BackgroundTask, status: Arc<Mutex<TaskStatus>>) {
    let mut pokes = app.poke.subscribe();
    let by_pokes = def.wakes.contains(&Wake::Pokes);
    let by_servers = def.wakes.contains(&Wake::ServersChanged);
    loop {
        // Pokes from here on wake the next pass; those during this pass make one more.
        pokes.mark_unchanged();
        pass(&app, &mut task, &status).await;
        tokio::select! {
            _ = tokio::time::sleep(def.period) => {}
            r = pokes.changed(), if by_pokes => if r.is_err() { return },
            _ = app.servers_changed.notified(), if by_servers => {}
        }
    }
}

async fn pass(app: &Arc<App>, task: &mut impl BackgroundTask, status: &Mutex<TaskStatus>) {
    let started_at = Utc::now();
    lock(status).running_since = Some(started_at);
    let _running = Running(status);
    let t0 = Instant::now();
    let outcome = task.activate(app).await;
    let mut s = lock(status);
    s.runs += 1;
    s.last = Some(LastRun {
        started_at,
        duration: t0.elapsed(),
        outcome,
    });
}
