//! The orchestrator's background tasks (the table is in the module docs of `reconcile`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stratus_store::{Query, TypedStore};
use stratus_types::Name;
use stratus_types::cloud::Cloud;
use tokio::task::JoinHandle;

use crate::app::{App, AppError};
use crate::background::{BackgroundTask, Outcome, TaskDef, Wake, spawn};

const POKED: &[Wake] = &[Wake::Pokes];

fn shown(e: &AppError) -> String {
    crate::app::error_chain(e)
}

/// Start every task; the handles stop them (aborting the `lifecycle` task stops the per-cloud
/// ones it started).
pub fn spawn_all(app: &Arc<App>) -> Vec<JoinHandle<()>> {
    let every = app.settings.reconcile_interval;
    vec![
        spawn(
            app,
            TaskDef::new("lifecycle", "one lifecycle task per declared cloud", every, POKED),
            Lifecycle::default(),
        ),
        spawn(
            app,
            TaskDef::new(
                "drift",
                "operational servers against their cloud's inventory; tags pushed",
                every,
                POKED,
            ),
            Drift,
        ),
        spawn(
            app,
            TaskDef::new("arrays", "array sizes and autoscaling votes", every, POKED),
            Arrays,
        ),
        spawn(
            app,
            TaskDef::new(
                "lb-sync",
                "load-balancer configurations pushed when their pools change",
                Duration::from_secs(30),
                &[Wake::ServersChanged],
            ),
            crate::app::lb::LbSync::default(),
        ),
        spawn(
            app,
            TaskDef::new("rollouts", "a driver for every running rollout", every * 5, &[]),
            Rollouts,
        ),
        spawn(
            app,
            TaskDef::new(
                "gc",
                "instances of terminated servers; stale drain marks",
                every * 30,
                &[],
            ),
            Gc,
        ),
        spawn(
            app,
            TaskDef::new(
                "operations",
                "durable replaces and rebundles, one step at a time",
                every,
                POKED,
            ),
            crate::app::operations::Driver,
        ),
    ]
}

/// Keeps one `lifecycle/CLOUD` task per declared cloud.
#[derive(Debug, Default)]
struct Lifecycle {
    clouds: HashMap<Name, JoinHandle<()>>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        for (_, t) in self.clouds.drain() {
            t.abort();
        }
    }
}

#[async_trait]
impl BackgroundTask for Lifecycle {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome {
        let declared: Vec<Name> = app
            .store
            .list_all::<Cloud>(&Query::default())
            .await
            .map_err(|e| shown(&e.into()))?
            .into_iter()
            .map(|c| c.spec.name)
            .collect();
        self.clouds.retain(|name, task| {
            let keep = declared.contains(name);
            if !keep {
                task.abort();
                app.tasks.remove(&format!("lifecycle/{name}"));
                app.inventory.forget(name);
            }
            keep
        });
        for name in declared {
            self.clouds.entry(name.clone()).or_insert_with(|| {
                let def = TaskDef::new(
                    format!("lifecycle/{name}"),
                    format!("launch, boot and terminate the servers of cloud {name}"),
                    app.settings.reconcile_interval,
                    POKED,
                );
                spawn(app, def, CloudLifecycle { cloud: name })
            });
        }
        Ok(serde_json::json!({ "clouds": self.clouds.len() }))
    }
}

struct CloudLifecycle {
    cloud: Name,
}

#[async_trait]
impl BackgroundTask for CloudLifecycle {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome {
        super::lifecycle(app, &self.cloud)
            .await
            .map_err(|e| shown(&e))?
            .outcome()
    }
}

struct Drift;

#[async_trait]
impl BackgroundTask for Drift {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome {
        super::drift::pass(app).await.map_err(|e| shown(&e))?.outcome()
    }
}

struct Arrays;

#[async_trait]
impl BackgroundTask for Arrays {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome {
        super::scale_arrays(app).await.map_err(|e| shown(&e))?;
        Ok(serde_json::Value::Null)
    }
}

struct Rollouts;

#[async_trait]
impl BackgroundTask for Rollouts {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome {
        crate::app::rollouts::resume_all(app).await;
        let driven = app
            .rollout_drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|t| !t.is_finished())
            .count();
        Ok(serde_json::json!({ "driven": driven }))
    }
}

struct Gc;

#[async_trait]
impl BackgroundTask for Gc {
    async fn activate(&mut self, app: &Arc<App>) -> Outcome {
        let c = super::gc::pass(app).await.map_err(|e| shown(&e))?;
        if let Some((cloud, why)) = c.skipped.first() {
            return Err(format!("cloud {cloud} not collected: {why}"));
        }
        Ok(serde_json::to_value(&c).unwrap_or_default())
    }
}
