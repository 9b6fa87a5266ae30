//! Stratus state: the [`Datastore`] contract, its SQLite implementation (the embedded default)
//! and its PostgreSQL one (for several replicas).
//!
//! The app layer sees typed resources; backends see [`Record`]s: the columns a backend indexes
//! and queries (kind, id, scope, name, state, liveness, revision, tags) plus the whole value as
//! JSON. This keeps a backend small (a PostgreSQL one is the same handful of statements in
//! another dialect) while the app layer never writes SQL.
//!
//! Writes go through [`Datastore::commit`]: a batch of [`Change`]s applied in one transaction,
//! all or nothing. Every `Put` states the revision it expects to replace (optimistic
//! concurrency), so two writers racing on one resource cannot silently lose an update, and an
//! audit entry is written in the same transaction as the change it records.

pub mod cluster;
pub mod migrate;
mod postgres;
mod record;
mod sqlite;
mod typed;

pub use postgres::PostgresStore;
pub use record::{
    AuditQuery, Change, Kind, OUTPUT_KEEP_BYTES, OUTPUT_KEEP_CHUNKS, OUTPUT_TRIM_EVERY, OutputChunk, Page, Query,
    Record, Sealed,
};
pub use sqlite::SqliteStore;
pub use typed::{Resource, TemplateVersion, TypedStore};

#[cfg(any(test, feature = "contract"))]
pub mod contract;
#[cfg(any(test, feature = "contract"))]
pub mod testing;

use async_trait::async_trait;
use stratus_types::audit::AuditEntry;

/// A database URL fit for logs and errors: the password (in the user part or a `password=`
/// parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if let Some((userinfo, host)) = authority.rsplit_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            out = format!("{scheme}://{user}:***@{host}{tail}");
        }
    }
    if let Some((head, query)) = out.clone().split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}?{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive() {
        for (url, want) in [
            ("postgres://u:secret@db:5432/s", "postgres://u:***@db:5432/s"),
            (
                "postgres://u:p%40ss@db/s?sslmode=require",
                "postgres://u:***@db/s?sslmode=require",
            ),
            (
                "postgres://u@db/s?password=secret&sslmode=verify-full",
                "postgres://u@db/s?password=***&sslmode=verify-full",
            ),
            ("postgres://db/s", "postgres://db/s"),
            ("postgres://u:a@b@db/s", "postgres://u:***@db/s"),
        ] {
            assert_eq!(redact_url(url), want);
        }
    }
}

/// What can go wrong in the store. Conflicts and staleness are the caller's to handle; the rest
/// are the backend failing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} already exists")]
    Conflict { kind: Kind, name: String },
    #[error("{kind} {id} was changed by someone else (expected revision {expected:?}); reload and retry")]
    Stale {
        kind: Kind,
        id: String,
        expected: Option<u32>,
    },
    #[error("{kind} {id} does not exist")]
    Missing { kind: Kind, id: String },
    #[error("stored {kind} {id} cannot be read")]
    Corrupt {
        kind: Kind,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("stored row {id} has kind {kind:?}, which this version does not know (written by a newer Stratus?)")]
    UnknownKind { kind: String, id: String },
    #[error("database error")]
    Db(#[source] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("the target store already holds {0} rows; state is copied into an empty database only")]
    NotEmpty(u64),
}

/// The contract every backend keeps. `tests/contract.rs` holds the suite each one must pass.
#[async_trait]
pub trait Datastore: Send + Sync + std::fmt::Debug {
    /// One resource by id, live or not.
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError>;
    /// The live resource of this kind with this name in this scope.
    async fn find(&self, kind: Kind, scope: &str, name: &str) -> Result<Option<Record>, StoreError>;
    /// A page of resources in id (creation) order.
    async fn list(&self, kind: Kind, query: &Query) -> Result<Page, StoreError>;
    /// Apply every change or none.
    async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError>;
    /// An encrypted credential value.
    async fn sealed(&self, id: &str) -> Result<Option<Sealed>, StoreError>;
    /// A run's stored output chunks (see [`Change::Output`]), in order.
    async fn output(&self, run: &str) -> Result<Vec<OutputChunk>, StoreError>;
    /// The chunk a run's output expects next: one past the highest stored (0 without any).
    async fn output_next(&self, run: &str) -> Result<u64, StoreError>;
    /// Audit entries, newest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// A control-plane setting (small values such as the instance id).
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Set a setting only if it has none yet; returns the value now stored.
    async fn init_setting(&self, key: &str, value: &str) -> Result<String, StoreError>;
    /// Hold the lock `name` until the returned guard drops: across every control plane sharing
    /// the store (PostgreSQL: an advisory lock in a transaction of its own; SQLite: this
    /// process, the only one). For short read-decide-commit sections such as handing out an
    /// elastic IP or deleting a blob no object uses.
    async fn lock(&self, name: &str) -> Result<StoreLock, StoreError>;
}

/// A held [`Datastore::lock`]; dropping it releases the lock.
pub struct StoreLock(#[allow(dead_code)] Box<dyn Send>);

impl StoreLock {
    pub fn new(held: impl Send + 'static) -> Self {
        Self(Box::new(held))
    }
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}
