//! The SQLite backend: the embedded default.
//!
//! WAL mode with `synchronous = NORMAL` (durable across process crashes, which is what a
//! restart of the control plane needs); one in-process write lock so writers queue instead of
//! failing with `SQLITE_BUSY`; readers run in parallel on the pool.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use stratus_types::audit::AuditEntry;
use tokio::sync::Mutex;

use crate::{AuditQuery, Change, Datastore, Kind, OutputChunk, Page, Query, Record, Sealed, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    write: Mutex<()>,
    /// Named locks ([`Datastore::lock`]): one process uses a SQLite store.
    locks: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Mutex<()>>>>,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Db(e)
}

impl SqliteStore {
    /// Open (creating if needed) the database file and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        Self::with_options(opts, 8).await
    }

    /// A private in-memory database (tests).
    pub async fn memory() -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:").map_err(db)?;
        // One connection: every connection to `:memory:` would be a separate database.
        Self::with_options(opts, 1).await
    }

    /// The pool, for the store migration.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn with_options(opts: SqliteConnectOptions, max: u32) -> Result<Self, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(opts)
            .await
            .map_err(db)?;
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        Ok(Self {
            pool,
            write: Mutex::new(()),
            locks: Default::default(),
        })
    }
}

pub(crate) fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    // Fixed width so that text order is time order.
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A `resources` row as a [`Record`], for any backend whose rows decode text and 64-bit
/// integers (the schemas are column for column the same).
pub(crate) fn record<R>(row: &R) -> Result<Record, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let kind_s: String = row.get("kind");
    let id: String = row.get("id");
    let kind = Kind::parse(&kind_s).ok_or_else(|| StoreError::UnknownKind {
        kind: kind_s.clone(),
        id: id.clone(),
    })?;
    let body: String = row.get("body");
    let body = serde_json::from_str(&body).map_err(|source| StoreError::Corrupt {
        kind,
        id: id.clone(),
        source,
    })?;
    Ok(Record {
        kind,
        id,
        scope: row.get("scope"),
        name: row.get("name"),
        live: row.get::<i64, _>("live") != 0,
        state: row.get("state"),
        revision: u32::try_from(row.get::<i64, _>("revision")).unwrap_or(0),
        created_at: time(&row.get::<String, _>("created_at")),
        updated_at: time(&row.get::<String, _>("updated_at")),
        // Tags are indexed on write; readers get them from the typed value.
        tags: Vec::new(),
        body,
    })
}

/// An audit row as an entry (both backends).
pub(crate) fn audit_entry<R>(r: &R) -> AuditEntry
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'x> sqlx::Decode<'x, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = r.get("id");
    let detail: String = r.get("detail");
    AuditEntry {
        id: id.parse().unwrap_or_default(),
        at: time(&r.get::<String, _>("at")),
        actor: r.get("actor"),
        action: r.get("action"),
        target: r.get("target"),
        detail: serde_json::from_str(&detail).unwrap_or_default(),
    }
}

/// SQLite GLOB with `*` and `?` as in tag patterns; `[` is escaped as a one-character class.
fn glob_pattern(p: &str) -> String {
    p.replace('[', "[[]")
}

pub(crate) const COLUMNS: &str = "kind, id, scope, name, live, state, revision, created_at, updated_at, body";

#[async_trait]
impl Datastore for SqliteStore {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query("SELECT kind, id, scope, name, live, state, revision, created_at, updated_at, body FROM resources WHERE kind = ? AND id = ?")
            .bind(kind.as_str())
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(record::<SqliteRow>).transpose()
    }

    async fn find(&self, kind: Kind, scope: &str, name: &str) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query("SELECT kind, id, scope, name, live, state, revision, created_at, updated_at, body FROM resources WHERE kind = ? AND scope = ? AND name = ? AND live = 1")
            .bind(kind.as_str())
            .bind(scope)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(record::<SqliteRow>).transpose()
    }

    async fn list(&self, kind: Kind, q: &Query) -> Result<Page, StoreError> {
        let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {COLUMNS} FROM resources r WHERE kind = "));
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
                    b.push(" AND t.value GLOB ").push_bind(glob_pattern(v));
                }
                b.push(")");
            }
        }
        let limit = q.effective_limit();
        b.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit) + 1);
        let rows = b.build().fetch_all(&self.pool).await.map_err(db)?;
        let mut items = rows.iter().map(record::<SqliteRow>).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin().await.map_err(db)?;
        for change in changes {
            apply(&mut tx, change).await?;
        }
        tx.commit().await.map_err(db)
    }

    async fn sealed(&self, id: &str) -> Result<Option<Sealed>, StoreError> {
        let row = sqlx::query("SELECT key_id, nonce, ciphertext FROM secrets WHERE id = ?")
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

    async fn output(&self, run: &str) -> Result<Vec<OutputChunk>, StoreError> {
        let rows = sqlx::query("SELECT seq, data FROM run_output WHERE run_id = ? ORDER BY seq")
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows.iter().map(output_chunk).collect())
    }

    async fn output_next(&self, run: &str) -> Result<u64, StoreError> {
        let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM run_output WHERE run_id = ?")
            .bind(run)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(u64::try_from(next).unwrap_or(0))
    }

    async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut b: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id, at, actor, action, target, detail FROM audit_log WHERE 1 = 1");
        if let Some(a) = &q.actor {
            b.push(" AND actor = ").push_bind(a.clone());
        }
        if let Some(a) = &q.action_prefix {
            // length() counts characters, as substr() does (a byte length would not).
            b.push(" AND substr(action, 1, length(")
                .push_bind(a.clone())
                .push(")) = ")
                .push_bind(a.clone());
        }
        if let Some(t) = &q.target_prefix {
            b.push(" AND substr(target, 1, length(")
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
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn lock(&self, name: &str) -> Result<crate::StoreLock, StoreError> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        Ok(crate::StoreLock::new(m.lock_owned().await))
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let _guard = self.write.lock().await;
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }
}

async fn apply(tx: &mut sqlx::Transaction<'static, Sqlite>, change: Change) -> Result<(), StoreError> {
    match change {
        Change::Put { record: r, expect } => put(tx, r, expect).await,
        Change::Delete { kind, id, expect } => {
            let done = sqlx::query("DELETE FROM resources WHERE kind = ? AND id = ? AND revision = ?")
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
            sqlx::query("DELETE FROM tags WHERE resource_id = ?")
                .bind(&id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            Ok(())
        }
        Change::PutSealed { id, sealed } => {
            sqlx::query("INSERT INTO secrets (id, key_id, nonce, ciphertext) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext")
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
            sqlx::query("DELETE FROM secrets WHERE id = ?")
                .bind(&id)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            Ok(())
        }
        Change::Audit(e) => {
            sqlx::query("INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)")
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
            let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
            sqlx::query("INSERT INTO run_output (run_id, seq, bytes, data) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(&run)
                .bind(seq_i)
                .bind(data.len() as i64)
                .bind(&data)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            if seq % crate::OUTPUT_TRIM_EVERY == 0 {
                sqlx::query(TRIM_OUTPUT)
                    .bind(&run)
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

/// Drop a run's oldest output chunks beyond the caps (bytes and chunks, counted from the
/// newest).
const TRIM_OUTPUT: &str = "DELETE FROM run_output WHERE run_id = ? AND seq IN (\
     SELECT seq FROM (SELECT seq, SUM(bytes) OVER (ORDER BY seq DESC) AS tail, \
     ROW_NUMBER() OVER (ORDER BY seq DESC) AS n FROM run_output WHERE run_id = ?) AS t \
     WHERE t.tail > ? OR t.n > ?)";

/// An output row as a chunk (both backends).
pub(crate) fn output_chunk<R>(r: &R) -> OutputChunk
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'x> sqlx::Decode<'x, R::Database> + sqlx::Type<R::Database>,
    i64: for<'x> sqlx::Decode<'x, R::Database> + sqlx::Type<R::Database>,
{
    OutputChunk {
        seq: u64::try_from(r.get::<i64, _>("seq")).unwrap_or(0),
        data: r.get("data"),
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

async fn put(tx: &mut sqlx::Transaction<'static, Sqlite>, r: Record, expect: Option<u32>) -> Result<(), StoreError> {
    let body = r.body.to_string();
    // `ON CONFLICT DO NOTHING` instead of catching the unique violation: the transaction stays
    // usable (PostgreSQL aborts a transaction on a violation), and zero rows means "taken".
    let done = match expect {
        None => sqlx::query(
            "INSERT INTO resources (kind, id, scope, name, live, state, revision, created_at, updated_at, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
                "UPDATE resources SET scope = ?, name = ?, live = ?, state = ?, revision = ?, updated_at = ?, body = ? \
                 WHERE kind = ? AND id = ? AND revision = ?",
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
        sqlx::query("DELETE FROM tags WHERE resource_id = ?")
            .bind(&r.id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        for t in &r.tags {
            sqlx::query(
                "INSERT INTO tags (resource_id, namespace, predicate, value) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
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

async fn is_id_taken(tx: &mut sqlx::Transaction<'static, Sqlite>, r: &Record) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources WHERE kind = ? AND id = ?")
        .bind(r.kind.as_str())
        .bind(&r.id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    Ok(n > 0)
}
