//! The PostgreSQL backend: for a control plane that must outlive one machine, and for several
//! `stratus serve` replicas sharing one database.
//!
//! The schema is the SQLite one column for column (`migrations/postgres`), so the two backends
//! share the row decoding and `stratus admin migrate-store` copies rows unchanged. Differences:
//!
//! - No in-process write lock: several replicas write. Optimistic revisions keep updates safe
//!   (an `UPDATE ... WHERE revision = $n` either matches or the change is stale), inserts use
//!   `ON CONFLICT DO NOTHING` so a taken name never aborts the transaction, and a batch that
//!   deadlocks with another (PostgreSQL aborts one of them) or hits a serialization failure is
//!   retried whole, up to [`RETRIES`] times: every change names the revision it expects, so a
//!   retry cannot apply anything twice.
//! - Tag patterns use `LIKE` with `*` → `%`, `?` → `_` and the rest escaped (SQLite uses `GLOB`).
//! - Migrations take PostgreSQL's advisory lock (sqlx does), so replicas starting together
//!   migrate once.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, QueryBuilder};
use stratus_types::audit::AuditEntry;

use crate::sqlite::{COLUMNS, audit_entry, is_unique_violation, record, ts};
use crate::{AuditQuery, Change, Datastore, Kind, Page, Query, Record, Sealed, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How often a batch is retried after a deadlock or serialization failure.
const RETRIES: u32 = 5;

pub struct PostgresStore {
    pool: PgPool,
    /// For new connections outside the pool (leadership); never printed.
    url: String,
    /// This store instance, in its change notes (a replica ignores its own).
    origin: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &crate::redact_url(&self.url))
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Db(e)
}

/// PostgreSQL aborted the transaction to break a deadlock, or could not serialize it: the
/// same batch may simply be tried again.
fn is_retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(d))
        if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user:password@host:port/database`, with `sslmode=...` for
    /// TLS) and bring the schema up to date. `max` connections per replica.
    pub async fn connect(url: &str, max: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse().map_err(db)?;
        let opts = opts.application_name("stratus");
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(db)?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| StoreError::Db(sqlx::Error::Protocol(e.to_string())))?;
        Ok(Self {
            pool,
            url: url.to_string(),
            origin: b.iter().map(|x| format!("{x:02x}")).collect(),
        })
    }

    /// The pool, for tests and the store migration.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This store as one replica of a cluster (its id is the store's origin).
    pub fn cluster(&self) -> crate::cluster::PgCluster {
        crate::cluster::PgCluster::new(self.pool.clone(), self.url.clone(), self.origin.clone())
    }
}

/// What a batch wrote, for other replicas.
fn change_note(origin: &str, changes: &[Change]) -> Option<String> {
    use crate::cluster::{ChangeNote, NOTE_MAX};
    let written: Vec<(String, String)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Put { record, .. } => Some((record.kind.as_str().to_string(), record.id.clone())),
            Change::Delete { kind, id, .. } => Some((kind.as_str().to_string(), id.clone())),
            // New output is a change of its run to whoever watches it.
            Change::Output { run, .. } => Some((Kind::Run.as_str().to_string(), run.clone())),
            _ => None,
        })
        .collect();
    if written.is_empty() {
        return None;
    }
    let mut note = ChangeNote {
        origin: origin.to_string(),
        ..Default::default()
    };
    if written.len() <= NOTE_MAX {
        note.changes = written;
    } else {
        let mut kinds: Vec<String> = written.into_iter().map(|(k, _)| k).collect();
        kinds.sort();
        kinds.dedup();
        note.many = kinds;
    }
    serde_json::to_string(&note).ok()
}

/// A held advisory lock: its transaction, rolled back (and so the lock released) as soon as
/// the guard drops, not whenever the pool next uses the connection.
struct PgLock(Option<sqlx::Transaction<'static, Postgres>>);

impl Drop for PgLock {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = tx.rollback().await;
            });
        }
    }
}

/// The advisory lock key of a named lock: FNV-1a over the name, in a space apart from the
/// leadership's key.
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"stratus-lock:".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A tag pattern (`*` any run, `?` one character) as a `LIKE` pattern with `\` as the escape.
fn like_pattern(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[async_trait]
impl Datastore for PostgresStore {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, id, scope, name, live, state, revision, created_at, updated_at, body FROM resources \
             WHERE kind = $1 AND id = $2",
        )
        .bind(kind.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(record::<PgRow>).transpose()
    }

    async fn find(&self, kind: Kind, scope: &str, name: &str) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, id, scope, name, live, state, revision, created_at, updated_at, body FROM resources \
             WHERE kind = $1 AND scope = $2 AND name = $3 AND live = 1",
        )
        .bind(kind.as_str())
        .bind(scope)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(record::<PgRow>).transpose()
    }

    async fn list(&self, kind: Kind, q: &Query) -> Result<Page, StoreError> {
        let mut b: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM resources r WHERE kind = "));
        b.push_bind(kind.as_str());
        if let Some(s) = &q.scope {
            b.push(" AND scope = ").push_bind(s.clone());
        }
        if let Some(s) = &q.state {
            b.push(" AND state = ").push_bind(s.clone());
        }
        if let Some(n) = &q.name {
            b.push(" AND name = ").push_bind(n.clone());
        }
        if q.live_only {
            b.push(" AND live = 1");
        }
        if let Some(a) = &q.after {
            b.push(" AND id > ").push_bind(a.clone());
        }
        if let Some(sel) = &q.selector {
            for term in sel.terms() {
                b.push(if term.negated { " AND NOT EXISTS" } else { " AND EXISTS" });
                b.push(" (SELECT 1 FROM tags t WHERE t.resource_id = r.id AND t.namespace = ")
                    .push_bind(term.namespace.clone());
                if let Some(p) = &term.predicate {
                    b.push(" AND t.predicate = ").push_bind(p.clone());
                }
                if let Some(v) = &term.pattern {
                    b.push(" AND t.value LIKE ")
                        .push_bind(like_pattern(v))
                        .push(" ESCAPE '\\'");
                }
                b.push(")");
            }
        }
        let limit = q.effective_limit();
        b.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = b.build().fetch_all(&self.pool).await.map_err(db)?;
        let mut items = rows.iter().map(record::<PgRow>).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut tx = self.pool.begin().await.map_err(db)?;
                for change in changes.iter().cloned() {
                    apply(&mut tx, change).await?;
                }
                // Delivered to listeners when (and only if) the transaction commits.
                if let Some(note) = change_note(&self.origin, &changes) {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(crate::cluster::CHANGES_CHANNEL)
                        .bind(note)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)
            }
            .await;
            match result {
                Err(e) if attempt < RETRIES && is_retryable(&e) => {
                    tracing::debug!(attempt, "commit retried after a deadlock or serialization failure");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    async fn output(&self, run: &str) -> Result<Vec<crate::OutputChunk>, StoreError> {
        let rows = sqlx::query("SELECT seq, data FROM run_output WHERE run_id = $1 ORDER BY seq")
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(crate::sqlite::output_chunk).collect())
    }

    async fn output_next(&self, run: &str) -> Result<u64, StoreError> {
        let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM run_output WHERE run_id = $1")
            .bind(run)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(u64::try_from(next).unwrap_or(0))
    }

    async fn sealed(&self, id: &str) -> Result<Option<Sealed>, StoreError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT key_id, nonce, ciphertext FROM secrets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| Sealed {
            key_id: r.get("key_id"),
            nonce: r.get("nonce"),
            ciphertext: r.get("ciphertext"),
        }))
    }

    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut b: QueryBuilder<Postgres> =
            QueryBuilder::new("SELECT id, at, actor, action, target, detail FROM audit_log WHERE 1 = 1");
        if let Some(a) = &q.actor {
            b.push(" AND actor = ").push_bind(a.clone());
        }
        if let Some(a) = &q.action_prefix {
            b.push(" AND left(action, char_length(")
                .push_bind(a.clone())
                .push(")) = ")
                .push_bind(a.clone());
        }
        if let Some(t) = &q.target_prefix {
            b.push(" AND left(target, char_length(")
                .push_bind(t.clone())
                .push(")) = ")
                .push_bind(t.clone());
        }
        if let Some(before) = &q.before {
            b.push(" AND id < ").push_bind(before.clone());
        }
        let limit = if q.limit == 0 { 100 } else { q.limit.min(1000) };
        b.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = b.build().fetch_all(&self.pool).await.map_err(db)?;
        Ok(rows.iter().map(audit_entry).collect())
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn lock(&self, name: &str) -> Result<crate::StoreLock, StoreError> {
        // A transaction-scoped advisory lock: it goes when the transaction does (the guard
        // drops, rolling it back, or its connection dies with a killed replica).
        let key = lock_key(name);
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(crate::StoreLock::new(PgLock(Some(tx))))
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }
}

type Tx = sqlx::Transaction<'static, Postgres>;

async fn apply(tx: &mut Tx, change: Change) -> Result<(), StoreError> {
    match change {
        Change::Put { record: r, expect } => put(tx, r, expect).await,
        Change::Delete { kind, id, expect } => {
            let done = sqlx::query("DELETE FROM resources WHERE kind = $1 AND id = $2 AND revision = $3")
                .bind(kind.as_str())
                .bind(&id)
                .bind(i64::from(expect))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Stale {
                    kind,
                    id,
                    expected: Some(expect),
                });
            }
            sqlx::query("DELETE FROM tags WHERE resource_id = $1")
                .bind(&id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            Ok(())
        }
        Change::PutSealed { id, sealed } => {
            sqlx::query(
                "INSERT INTO secrets (id, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4) ON CONFLICT (id) \
                 DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext",
            )
            .bind(&id)
            .bind(&sealed.key_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(())
        }
        Change::DeleteSealed { id } => {
            sqlx::query("DELETE FROM secrets WHERE id = $1")
                .bind(&id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            Ok(())
        }
        Change::Audit(e) => {
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(e.id.to_string())
            .bind(ts(&e.at))
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(e.detail.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok(())
        }
        Change::Output { run, seq, data } => {
            sqlx::query(
                "INSERT INTO run_output (run_id, seq, bytes, data) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&run)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(data.len() as i64)
            .bind(&data)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            if seq % crate::OUTPUT_TRIM_EVERY == 0 {
                sqlx::query(
                    "DELETE FROM run_output WHERE run_id = $1 AND seq IN (\
                     SELECT seq FROM (SELECT seq, SUM(bytes) OVER (ORDER BY seq DESC) AS tail, \
                     ROW_NUMBER() OVER (ORDER BY seq DESC) AS n FROM run_output WHERE run_id = $1) AS t \
                     WHERE t.tail > $2 OR t.n > $3)",
                )
                .bind(&run)
                .bind(crate::OUTPUT_KEEP_BYTES as i64)
                .bind(crate::OUTPUT_KEEP_CHUNKS as i64)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            Ok(())
        }
    }
}

async fn put(tx: &mut Tx, r: Record, expect: Option<u32>) -> Result<(), StoreError> {
    let body = r.body.to_string();
    let done = match expect {
        None => sqlx::query(
            "INSERT INTO resources (kind, id, scope, name, live, state, revision, created_at, updated_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(r.kind.as_str())
        .bind(&r.id)
        .bind(&r.scope)
        .bind(&r.name)
        .bind(i64::from(r.live))
        .bind(&r.state)
        .bind(i64::from(r.revision))
        .bind(ts(&r.created_at))
        .bind(ts(&r.updated_at))
        .bind(&body)
        .execute(&mut **tx)
        .await
        .map_err(db)?,
        Some(rev) => {
            let result = sqlx::query(
                "UPDATE resources SET scope = $1, name = $2, live = $3, state = $4, revision = $5, updated_at = $6, \
                 body = $7 WHERE kind = $8 AND id = $9 AND revision = $10",
            )
            .bind(&r.scope)
            .bind(&r.name)
            .bind(i64::from(r.live))
            .bind(&r.state)
            .bind(i64::from(r.revision))
            .bind(ts(&r.updated_at))
            .bind(&body)
            .bind(r.kind.as_str())
            .bind(&r.id)
            .bind(i64::from(rev))
            .execute(&mut **tx)
            .await;
            match result {
                Ok(d) => d,
                // An update can only violate the live-name index (a rename or revival).
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict {
                        kind: r.kind,
                        name: r.name,
                    });
                }
                Err(e) => return Err(db(e)),
            }
        }
    };
    if done.rows_affected() == 0 {
        return Err(match expect {
            None if !is_id_taken(tx, &r).await? => StoreError::Conflict {
                kind: r.kind,
                name: r.name,
            },
            _ => StoreError::Stale {
                kind: r.kind,
                id: r.id,
                expected: expect,
            },
        });
    }
    if r.kind == Kind::Server {
        sqlx::query("DELETE FROM tags WHERE resource_id = $1")
            .bind(&r.id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        for t in &r.tags {
            sqlx::query(
                "INSERT INTO tags (resource_id, namespace, predicate, value) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&r.id)
            .bind(t.namespace())
            .bind(t.predicate())
            .bind(t.value())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
    }
    Ok(())
}

async fn is_id_taken(tx: &mut Tx, r: &Record) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources WHERE kind = $1 AND id = $2")
        .bind(r.kind.as_str())
        .bind(&r.id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn tag_patterns_become_like_patterns_with_the_rest_literal() {
        assert_eq!(like_pattern("web-*"), "web-%");
        assert_eq!(like_pattern("a?c"), "a_c");
        assert_eq!(like_pattern("100%_done\\"), "100\\%\\_done\\\\");
    }
}
