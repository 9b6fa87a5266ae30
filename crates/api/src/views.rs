//! Response shapes beyond the domain types.

use stratus_types::user::{ApiToken, User};

/// One page of a list; pass `next` as `after` to get the following page.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    Create,
    Update,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PlannedChange {
    /// `cloud`, `image`, `script`, `template`, `deployment`, `server`, `array`.
    pub kind: String,
    pub name: String,
    pub action: PlanAction,
    /// What differs, for updates; notes such as fields that cannot change in place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub changes: Vec<PlannedChange>,
    /// False for a dry run.
    pub applied: bool,
}

impl Plan {
    pub fn count(&self, action: PlanAction) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }
}

/// A new token: the secret is shown here once and never again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TokenCreated {
    pub token: String,
    pub info: ApiToken,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Whoami {
    pub user: User,
}

/// The resolved size for a request on one cloud.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResolvedSize {
    pub cloud: String,
    pub size: stratus_types::size::InstanceSize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// A short-lived URL for one object's current content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FetchUrl {
    /// Absolute (for people) or relative to the control plane's URL (for agents).
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}
