//! The store as the app layer uses it: every committed change to a server wakes whoever waits
//! on [`ServerChanges`] (the load-balancer sync), and every committed change to a resource a
//! person watches (servers, runs, rollouts, deployments, arrays) is announced on [`Changes`]
//! (the dashboard's live updates), wherever in the control plane it was made.

use std::sync::Arc;

use async_trait::async_trait;
use stratus_store::{AuditQuery, Change as StoreChange, Datastore, Kind, Page, Query, Record, Sealed, StoreError};
use stratus_types::audit::AuditEntry;
use tokio::sync::Notify;

/// Notified after each commit that wrote a server.
pub type ServerChanges = Arc<Notify>;

/// One committed change, as the dashboard hears of it: the kind and the id (no content: a
/// listener reads what it may see through the API).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub id: String,
}

/// Announces committed changes; receivers that fall behind skip ahead (they re-read anyway).
pub type Changes = tokio::sync::broadcast::Sender<Change>;

/// Kinds whose changes are announced.
const ANNOUNCED: &[Kind] = &[Kind::Server, Kind::Run, Kind::Rollout, Kind::Deployment, Kind::Array];

/// A [`Datastore`] that signals changes; everything else passes through.
#[derive(Debug)]
pub struct Watched {
    inner: Arc<dyn Datastore>,
    servers: ServerChanges,
    changes: Changes,
}

impl Watched {
    pub fn new(inner: Arc<dyn Datastore>, servers: ServerChanges, changes: Changes) -> Self {
        Self {
            inner,
            servers,
            changes,
        }
    }
}

fn announced(changes: &[StoreChange]) -> Vec<Change> {
    changes
        .iter()
        .filter_map(|c| match c {
            StoreChange::Put { record, .. } if ANNOUNCED.contains(&record.kind) => Some(Change {
                kind: record.kind.as_str(),
                id: record.id.clone(),
            }),
            StoreChange::Delete { kind, id, .. } if ANNOUNCED.contains(kind) => Some(Change {
                kind: kind.as_str(),
                id: id.clone(),
            }),
            // New output is a change of its run to whoever watches it.
            StoreChange::Output { run, .. } => Some(Change {
                kind: Kind::Run.as_str(),
                id: run.clone(),
            }),
            _ => None,
        })
        .collect()
}

fn writes_a_server(changes: &[StoreChange]) -> bool {
    changes.iter().any(|c| match c {
        StoreChange::Put { record, .. } => record.kind == Kind::Server,
        StoreChange::Delete { kind, .. } => *kind == Kind::Server,
        _ => false,
    })
}

#[async_trait]
impl Datastore for Watched {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(kind, id).await
    }
    async fn find(&self, kind: Kind, scope: &str, name: &str) -> Result<Option<Record>, StoreError> {
        self.inner.find(kind, scope, name).await
    }
    async fn list(&self, kind: Kind, query: &Query) -> Result<Page, StoreError> {
        self.inner.list(kind, query).await
    }
    async fn commit(&self, changes: Vec<StoreChange>) -> Result<(), StoreError> {
        let server = writes_a_server(&changes);
        let announce = if self.changes.receiver_count() > 0 {
            announced(&changes)
        } else {
            vec![]
        };
        self.inner.commit(changes).await?;
        if server {
            self.servers.notify_one();
        }
        for c in announce {
            let _ = self.changes.send(c);
        }
        Ok(())
    }
    async fn sealed(&self, id: &str) -> Result<Option<Sealed>, StoreError> {
        self.inner.sealed(id).await
    }
    async fn output(&self, run: &str) -> Result<Vec<stratus_store::OutputChunk>, StoreError> {
        self.inner.output(run).await
    }
    async fn output_next(&self, run: &str) -> Result<u64, StoreError> {
        self.inner.output_next(run).await
    }
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(query).await
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(key).await
    }
    async fn init_setting(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.inner.init_setting(key, value).await
    }
    async fn lock(&self, name: &str) -> Result<stratus_store::StoreLock, StoreError> {
        self.inner.lock(name).await
    }
}
