//! The store as the app layer uses it: every committed change to a server wakes whoever waits
//! on [`ServerChanges`] (the load-balancer sync), wherever in the control plane it was made.

use std::sync::Arc;

use async_trait::async_trait;
use stratus_store::{AuditQuery, Change, Datastore, Kind, Page, Query, Record, Sealed, StoreError};
use stratus_types::audit::AuditEntry;
use tokio::sync::Notify;

/// Notified after each commit that wrote a server.
pub type ServerChanges = Arc<Notify>;

/// A [`Datastore`] that signals server changes; everything else passes through.
#[derive(Debug)]
pub struct Watched {
    inner: Arc<dyn Datastore>,
    servers: ServerChanges,
}

impl Watched {
    pub fn new(inner: Arc<dyn Datastore>, servers: ServerChanges) -> Self {
        Self { inner, servers }
    }
}

fn writes_a_server(changes: &[Change]) -> bool {
    changes.iter().any(|c| match c {
        Change::Put { record, .. } => record.kind == Kind::Server,
        Change::Delete { kind, .. } => *kind == Kind::Server,
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
    async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let server = writes_a_server(&changes);
        self.inner.commit(changes).await?;
        if server {
            self.servers.notify_one();
        }
        Ok(())
    }
    async fn sealed(&self, id: &str) -> Result<Option<Sealed>, StoreError> {
        self.inner.sealed(id).await
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
}
