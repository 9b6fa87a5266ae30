//! The audit log: who did what to which resource, and how it ended.

use crate::AuditId;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: AuditId,
    pub at: DateTime<Utc>,
    /// The user's name, or `system`.
    pub actor: String,
    /// `<kind>.<verb>`: `server.launch`, `credential.update`, `deployment.apply`.
    pub action: String,
    /// `<kind>/<name or id>`.
    pub target: String,
    /// Details of the request, secrets removed.
    #[serde(default)]
    pub detail: serde_json::Value,
}
