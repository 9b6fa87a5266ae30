//! The app layer: every operation of the control plane, independent of HTTP.
//!
//! Handlers call these functions with an [`Actor`] (who asks) and typed parameters; the
//! functions check permissions, validate against what exists, and write through the store in one
//! atomic batch together with the audit entry. Nothing here knows about requests or status
//! codes; [`AppError`] is mapped to HTTP in one place (`http::error`).
//!
//! One file per resource. `apply.rs` holds the planner that deployment files and the
//! single-resource create/update endpoints share, so a template created through the API and one
//! written in a file are checked by the same code.

pub mod addresses;
pub mod admin;
pub mod agents;
pub mod announce;
pub mod apply;
pub mod arrays;
pub mod artifacts;
pub mod audit;
pub mod boot;
pub mod catalog;
pub mod credentials;
pub mod delete;
pub mod deploys;
pub mod desired;
pub mod gateway;
pub mod hub;
pub mod images;
pub mod lb;
pub mod logins;
pub mod operations;
pub mod rebundle;
pub mod replace;
pub mod resolve;
pub mod rollouts;
pub mod runs;
pub mod servers;
pub mod users;
pub mod watched;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use stratus_cloud::CloudError;
use stratus_store::{Change, Datastore, StoreError};
use stratus_types::audit::AuditEntry;
use stratus_types::user::User;
use stratus_types::{AuditId, FieldError, Invalid};

use crate::crypto::{CryptoError, KeyRing};
use crate::drivers::Drivers;

/// What the app layer needs to run.
#[derive(Debug)]
pub struct App {
    pub store: Arc<dyn Datastore>,
    pub keys: Arc<KeyRing>,
    pub drivers: Drivers,
    /// Wakes the background tasks after a change (a counter each task watches; see
    /// `crate::background`).
    pub poke: tokio::sync::watch::Sender<u64>,
    /// The background tasks' statuses (see `crate::background`).
    pub tasks: crate::background::Registry,
    /// Each cloud's inventory snapshot and backoff (see `reconcile::inventory`).
    pub inventory: crate::reconcile::inventory::Inventories,
    /// Counts runs finished (by their agents or by the control plane): rollouts and
    /// decommissions wait on it.
    pub run_finished: tokio::sync::watch::Sender<u64>,
    pub settings: AppSettings,
    /// The artifact store's bytes.
    pub blobs: crate::blobs::Blobs,
    /// Notified after every commit that wrote a server (see `crate::watch`).
    pub servers_changed: crate::watch::ServerChanges,
    /// Committed changes, for live views (see `crate::watch`).
    pub changes: crate::watch::Changes,
    /// When each terminating load-balancer member was first seen drained (see
    /// `reconcile/decommission.rs`).
    pub drained_at: std::sync::Mutex<std::collections::HashMap<stratus_types::ServerId, std::time::Instant>>,
    /// How this control plane shares the work with other replicas (see `crate::cluster`).
    pub cluster: crate::cluster::Cluster,
    /// The rollouts this process drives (the leader's).
    pub rollout_drivers:
        std::sync::Mutex<std::collections::HashMap<stratus_types::RolloutId, tokio::task::JoinHandle<()>>>,
}

/// Behaviour knobs, from the server configuration.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// The URL instances reach the control plane at (written into user-data).
    pub public_url: String,
    /// `public_url` was configured (not derived from the listen address): it then wins over a
    /// local cloud's gateway URL.
    pub public_url_given: bool,
    /// The fake cloud's simulated agent is on (see `Config::simulate_agents`).
    pub simulate_agents: bool,
    /// A booting server whose agent has not finished within this is stranded.
    pub boot_deadline: Duration,
    /// How long a terminating server's decommission scripts may take, all together.
    pub decommission_timeout: Duration,
    /// How often reconcilers run when nothing pokes them.
    pub reconcile_interval: Duration,
    /// A CA certificate (PEM) put in every instance's user-data, for an HTTPS public URL whose
    /// certificate a private CA signed.
    pub agent_ca_pem: Option<String>,
    /// See `Config::agent_source_check`.
    pub agent_source_check: bool,
    /// See `Config::identity_certificates` (DER).
    pub identity_certificates: Vec<Vec<u8>>,
    /// Tests only: stops the operation driver before a step (see `operations::StepGate`).
    pub operation_gate: Option<operations::StepGate>,
}

impl App {
    pub fn poke(&self) {
        self.poke.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A run finished: wake whoever waits on runs.
    pub fn run_ended(&self) {
        self.run_finished.send_modify(|n| *n = n.wrapping_add(1));
        self.poke();
    }

    /// Commit a batch and wake the reconcilers.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), AppError> {
        self.store.commit(changes).await?;
        self.poke();
        Ok(())
    }
}

/// API permission levels (see `Role::level`).
pub const OBSERVER: u8 = 1;
pub const OPERATOR: u8 = 2;
pub const ADMIN: u8 = 3;

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub level: u8,
    /// The API token the request came with (users only): what it mints (fetch URLs) lives no
    /// longer than it does.
    pub token: Option<stratus_types::TokenId>,
}

impl Actor {
    pub fn user(u: &User) -> Self {
        Self {
            name: u.spec.name.to_string(),
            level: u.level(),
            token: None,
        }
    }

    pub fn with_token(self, token: stratus_types::TokenId) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }

    /// A server's agent, as audit entries name it: always derived from the agent's credential
    /// (its server), never from anything the agent sends. It has no API role.
    pub fn agent(s: &stratus_types::server::Server) -> Self {
        Self {
            name: format!("agent:{}/{}", s.deployment, s.name),
            level: 0,
            token: None,
        }
    }

    /// The control plane itself (reconcilers).
    pub fn system() -> Self {
        Self {
            name: "system".into(),
            level: ADMIN,
            token: None,
        }
    }

    pub fn require(&self, level: u8) -> Result<(), AppError> {
        if self.level >= level {
            return Ok(());
        }
        let role = match level {
            ADMIN => "admin",
            OPERATOR => "operator",
            _ => "observer",
        };
        Err(AppError::Forbidden(format!(
            "this needs the {role} role; ask an admin to grant it to {}",
            self.name
        )))
    }
}

/// An audit entry for a batch. `detail` must hold no secret (callers pass specs whose secrets
/// serialise as `***`).
pub fn audit(actor: &Actor, action: &str, target: String, detail: impl Serialize) -> Change {
    Change::Audit(AuditEntry {
        id: AuditId::new(),
        at: Utc::now(),
        actor: actor.name.clone(),
        action: action.into(),
        target,
        detail: serde_json::to_value(detail).unwrap_or_default(),
    })
}

/// Everything an operation can fail with, independent of transport.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(Invalid),
    #[error("{kind} {key:?} does not exist")]
    NotFound { kind: &'static str, key: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Stale(String),
    #[error("{0}")]
    BadState(String),
    #[error(
        "missing, unknown or expired bearer token; log in with `stratus login --token-file DATA_DIR/admin.token` or set STRATUS_TOKEN"
    )]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    /// Not found, with a message that says what to do.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error in the artifact store")]
    Blob(#[source] crate::blobs::BlobError),
    #[error("{context}: {source}")]
    Cloud {
        context: String,
        #[source]
        source: CloudError,
    },
    #[error("internal error in the store")]
    Store(#[source] StoreError),
    #[error("internal error in credential encryption")]
    Crypto(#[source] CryptoError),
}

/// An error and its causes, `a: b: c`, for messages a user acts on (a cloud's or a host tool's
/// own words). Not for internal errors, whose causes go to the log only.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

impl AppError {
    pub fn not_found(kind: &'static str, key: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            key: stratus_types::name::truncate(&key.into()),
        }
    }

    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid(Invalid::one(field, problem))
    }
}

impl From<Invalid> for AppError {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e)
    }
}

impl From<FieldError> for AppError {
    fn from(e: FieldError) -> Self {
        Self::Invalid(e.into())
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { kind, name } => Self::Conflict(format!("{kind} {name:?} already exists")),
            StoreError::Stale { kind, id, .. } => Self::Stale(format!(
                "{kind} {id} was changed by someone else meanwhile; reload and retry"
            )),
            StoreError::Missing { kind, id } => Self::NotFound {
                kind: kind.as_str(),
                key: id,
            },
            other => Self::Store(other),
        }
    }
}

impl From<CryptoError> for AppError {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

/// Default and maximum page sizes for lists.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;

pub fn page_limit(limit: Option<u32>) -> Result<u32, AppError> {
    match limit {
        None => Ok(PAGE_DEFAULT),
        Some(0) => Err(AppError::invalid("limit", "must be at least 1")),
        Some(n) if n > PAGE_MAX => Err(AppError::invalid(
            "limit",
            format!("{n} is over the maximum of {PAGE_MAX}"),
        )),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[test]
    fn the_cause_of_a_cloud_error_is_in_the_message() {
        let io = std::io::Error::other("RTNETLINK answers: File exists");
        let e = stratus_cloud::CloudError::Api(Box::new(io));
        assert_eq!(error_chain(&e), "cloud API call failed: RTNETLINK answers: File exists");
    }
}
