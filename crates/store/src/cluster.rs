//! What several control-plane replicas sharing one PostgreSQL database coordinate through it
//! (the control plane's `cluster` module drives it):
//!
//! - **Liveness**: each replica upserts its row of `replicas` every second ([`PgCluster::heartbeat`]);
//!   one not seen for [`ALIVE`] is gone.
//! - **Leadership**: the replica holding a PostgreSQL advisory lock on a connection of its own
//!   runs the background work (orchestrator, load-balancer sync, rollouts). The lock goes when
//!   that connection does (a killed replica's socket closes), so the next replica to try takes
//!   over ([`PgCluster::try_lead`], [`Leadership::holds`]).
//! - **Agent connections**: `agent_connections` says which replica holds each agent's WebSocket
//!   ([`PgCluster::claim`], [`PgCluster::release`], [`PgCluster::owner`]).
//! - **Relaying**: a message for an agent on another replica goes into `outbox` and a
//!   `NOTIFY stratus_outbox` names the replica, which takes its rows ([`PgCluster::relay`],
//!   [`PgCluster::take`]).
//! - **Changes**: every commit of [`crate::PostgresStore`] notifies `stratus_changes` with what
//!   it wrote, so replicas announce each other's changes (live views, the load-balancer sync).

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};

use crate::StoreError;

/// A replica not seen for this long is gone.
pub const ALIVE: Duration = Duration::from_secs(10);
/// The advisory lock key of leadership ("Stratus1").
const LEADER_KEY: i64 = 0x5374_7261_7475_7331;
/// The channel `NOTIFY` uses for outbox rows (payload: the replica that should take them).
pub const OUTBOX_CHANNEL: &str = "stratus_outbox";
/// The channel of committed changes (payload: [`ChangeNote`] as JSON).
pub const CHANGES_CHANNEL: &str = "stratus_changes";
/// Most changes named one by one in a note; more become `many`.
pub const NOTE_MAX: usize = 40;

/// What one commit changed, as other replicas hear of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeNote {
    /// The store instance that committed it (a replica ignores its own).
    pub origin: String,
    /// (kind, id) of each resource written, up to [`NOTE_MAX`].
    pub changes: Vec<(String, String)>,
    /// More were written than listed: the kinds of all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub many: Vec<String>,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Db(e)
}

/// One replica's view of the cluster tables.
#[derive(Debug, Clone)]
pub struct PgCluster {
    pool: PgPool,
    url: String,
    replica: String,
}

/// A connection of its own that may take, and then holds, the leadership's advisory lock.
#[derive(Debug)]
pub struct Candidate {
    conn: PgConnection,
    leads: bool,
}

impl Candidate {
    /// Take the lock if nobody holds it; true while this connection holds it. An error means
    /// the connection is gone (and the lock with it): make a new candidate.
    pub async fn try_lead(&mut self) -> Result<bool, StoreError> {
        if self.leads {
            tokio::time::timeout(Duration::from_secs(3), self.conn.ping())
                .await
                .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?
                .map_err(db)?;
            return Ok(true);
        }
        let got: bool = tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_KEY)
                .fetch_one(&mut self.conn),
        )
        .await
        .map_err(|_| StoreError::Db(sqlx::Error::PoolTimedOut))?
        .map_err(db)?;
        self.leads = got;
        Ok(got)
    }
}

impl PgCluster {
    pub(crate) fn new(pool: PgPool, url: String, replica: String) -> Self {
        Self { pool, url, replica }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// This replica is alive (and says whether it leads), reachable for people at `api_url`.
    pub async fn heartbeat(&self, api_url: &str, leader: bool) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicas (id, url, leader, seen_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, leader = excluded.leader, seen_at = now()",
        )
        .bind(&self.replica)
        .bind(api_url)
        .bind(leader)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        // Replicas gone for a minute are forgotten (their connections with them).
        sqlx::query("DELETE FROM replicas WHERE seen_at < now() - interval '60 seconds'")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM agent_connections WHERE replica NOT IN (SELECT id FROM replicas)")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The live replicas: (id, url, leader), by id.
    pub async fn replicas(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        sqlx::query_as(
            "SELECT id, url, leader FROM replicas WHERE seen_at > now() - make_interval(secs => $1) ORDER BY id",
        )
        .bind(ALIVE.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// A new leadership candidate (a connection of its own, outside the pool).
    pub async fn candidate(&self) -> Result<Candidate, StoreError> {
        let opts: sqlx::postgres::PgConnectOptions = self.url.parse().map_err(db)?;
        let conn = PgConnection::connect_with(&opts.application_name("stratus-leader"))
            .await
            .map_err(db)?;
        Ok(Candidate { conn, leads: false })
    }

    /// This replica holds `server`'s agent connection now.
    pub async fn claim(&self, server: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agent_connections (server_id, replica, since) VALUES ($1, $2, now()) \
             ON CONFLICT (server_id) DO UPDATE SET replica = excluded.replica, since = now()",
        )
        .bind(server)
        .bind(&self.replica)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// This replica no longer holds `server`'s agent connection (if another took it since,
    /// that stays).
    pub async fn release(&self, server: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM agent_connections WHERE server_id = $1 AND replica = $2")
            .bind(server)
            .bind(&self.replica)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The live replica other than this one that holds `server`'s agent connection, if any.
    pub async fn owner(&self, server: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT c.replica FROM agent_connections c JOIN replicas r ON r.id = c.replica \
             WHERE c.server_id = $1 AND c.replica <> $2 AND r.seen_at > now() - make_interval(secs => $3)",
        )
        .bind(server)
        .bind(&self.replica)
        .bind(ALIVE.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    /// Leave `message` for `server`'s agent at `replica`, and wake that replica.
    pub async fn relay(&self, replica: &str, server: &str, message: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("INSERT INTO outbox (replica, server_id, message) VALUES ($1, $2, $3)")
            .bind(replica)
            .bind(server)
            .bind(message)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(OUTBOX_CHANNEL)
            .bind(replica)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// The messages left for this replica, oldest first, removed as they are taken.
    pub async fn take(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut rows: Vec<(i64, String, String)> =
            sqlx::query_as("DELETE FROM outbox WHERE replica = $1 RETURNING id, server_id, message")
                .bind(&self.replica)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.sort_by_key(|r| r.0);
        Ok(rows.into_iter().map(|(_, s, m)| (s, m)).collect())
    }

    /// A listener on the outbox and change channels.
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut l = PgListener::connect_with(&self.pool).await.map_err(db)?;
        l.listen_all([OUTBOX_CHANNEL, CHANGES_CHANNEL]).await.map_err(db)?;
        Ok(l)
    }
}
