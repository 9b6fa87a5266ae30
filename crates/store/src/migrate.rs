//! Moving a control plane's state from SQLite to PostgreSQL (`stratus admin migrate-store`).
//!
//! The two schemas are the same column for column, so rows are copied as they are: resources
//! (with their tag index), encrypted credential values (still sealed under the same master
//! key, which the replicas must share), the audit log, settings and runs' output chunks. The copy reads the SQLite
//! database in one transaction (a consistent snapshot) and writes PostgreSQL in one
//! transaction, so it is whole or absent. The target must be empty: merging two control
//! planes' state is not a migration. Stop the control plane first, or changes made after the
//! snapshot stay behind.

use sqlx::Row;

use crate::{PostgresStore, SqliteStore, StoreError};

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    pub resources: u64,
    pub tags: u64,
    pub secrets: u64,
    pub audit: u64,
    pub settings: u64,
    /// Rows of runs' output (chunks).
    pub output: u64,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Db(e)
}

/// Copy everything from `from` into the empty `to`.
pub async fn sqlite_to_postgres(from: &SqliteStore, to: &PostgresStore) -> Result<Copied, StoreError> {
    let mut read = from.pool().begin().await.map_err(db)?;
    let mut write = to.pool().begin().await.map_err(db)?;
    let existing: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM resources) + (SELECT COUNT(*) FROM audit_log) + (SELECT COUNT(*) FROM settings)",
    )
    .fetch_one(&mut *write)
    .await
    .map_err(db)?;
    if existing > 0 {
        return Err(StoreError::NotEmpty(existing as u64));
    }
    let mut n = Copied::default();
    let rows =
        sqlx::query("SELECT kind, id, scope, name, live, state, revision, created_at, updated_at, body FROM resources")
            .fetch_all(&mut *read)
            .await
            .map_err(db)?;
    for r in &rows {
        sqlx::query(
            "INSERT INTO resources (kind, id, scope, name, live, state, revision, created_at, updated_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(r.get::<String, _>("kind"))
        .bind(r.get::<String, _>("id"))
        .bind(r.get::<String, _>("scope"))
        .bind(r.get::<String, _>("name"))
        .bind(r.get::<i64, _>("live"))
        .bind(r.get::<Option<String>, _>("state"))
        .bind(r.get::<i64, _>("revision"))
        .bind(r.get::<String, _>("created_at"))
        .bind(r.get::<String, _>("updated_at"))
        .bind(r.get::<String, _>("body"))
        .execute(&mut *write)
        .await
        .map_err(db)?;
        n.resources += 1;
    }
    let rows = sqlx::query("SELECT resource_id, namespace, predicate, value FROM tags")
        .fetch_all(&mut *read)
        .await
        .map_err(db)?;
    for r in &rows {
        sqlx::query("INSERT INTO tags (resource_id, namespace, predicate, value) VALUES ($1, $2, $3, $4)")
            .bind(r.get::<String, _>("resource_id"))
            .bind(r.get::<String, _>("namespace"))
            .bind(r.get::<String, _>("predicate"))
            .bind(r.get::<String, _>("value"))
            .execute(&mut *write)
            .await
            .map_err(db)?;
        n.tags += 1;
    }
    let rows = sqlx::query("SELECT id, key_id, nonce, ciphertext FROM secrets")
        .fetch_all(&mut *read)
        .await
        .map_err(db)?;
    for r in &rows {
        sqlx::query("INSERT INTO secrets (id, key_id, nonce, ciphertext) VALUES ($1, $2, $3, $4)")
            .bind(r.get::<String, _>("id"))
            .bind(r.get::<String, _>("key_id"))
            .bind(r.get::<Vec<u8>, _>("nonce"))
            .bind(r.get::<Vec<u8>, _>("ciphertext"))
            .execute(&mut *write)
            .await
            .map_err(db)?;
        n.secrets += 1;
    }
    let rows = sqlx::query("SELECT id, at, actor, action, target, detail FROM audit_log")
        .fetch_all(&mut *read)
        .await
        .map_err(db)?;
    for r in &rows {
        sqlx::query("INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(r.get::<String, _>("id"))
            .bind(r.get::<String, _>("at"))
            .bind(r.get::<String, _>("actor"))
            .bind(r.get::<String, _>("action"))
            .bind(r.get::<String, _>("target"))
            .bind(r.get::<String, _>("detail"))
            .execute(&mut *write)
            .await
            .map_err(db)?;
        n.audit += 1;
    }
    let rows = sqlx::query("SELECT key, value FROM settings")
        .fetch_all(&mut *read)
        .await
        .map_err(db)?;
    for r in &rows {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(r.get::<String, _>("key"))
            .bind(r.get::<String, _>("value"))
            .execute(&mut *write)
            .await
            .map_err(db)?;
        n.settings += 1;
    }
    let rows = sqlx::query("SELECT run_id, seq, bytes, data FROM run_output")
        .fetch_all(&mut *read)
        .await
        .map_err(db)?;
    for r in &rows {
        sqlx::query("INSERT INTO run_output (run_id, seq, bytes, data) VALUES ($1, $2, $3, $4)")
            .bind(r.get::<String, _>("run_id"))
            .bind(r.get::<i64, _>("seq"))
            .bind(r.get::<i64, _>("bytes"))
            .bind(r.get::<String, _>("data"))
            .execute(&mut *write)
            .await
            .map_err(db)?;
        n.output += 1;
    }
    write.commit().await.map_err(db)?;
    read.rollback().await.map_err(db)?;
    Ok(n)
}
