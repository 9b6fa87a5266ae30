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

/// `GET /admin/tasks`: the control plane's background tasks and each cloud's backoff.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BackgroundTasks {
    /// The replica that answered (`local` without a cluster).
    pub replica: String,
    /// Whether it leads (only the leader runs the tasks; another shows what it ran when it led).
    pub leader: bool,
    pub tasks: Vec<BackgroundTask>,
    /// Clouds that throttled the orchestrator since it started.
    pub clouds: Vec<CloudBackoff>,
}

/// One background task and how its last pass went.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BackgroundTask {
    /// `lifecycle`, `lifecycle/CLOUD`, `drift`, `arrays`, `lb-sync`, `rollouts`, `gc`.
    pub name: String,
    pub description: String,
    /// It runs at least this often (and when woken by a change).
    pub period_ms: u64,
    /// Passes finished since this replica started it.
    pub runs: u64,
    /// A pass is under way, since then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<TaskRun>,
}

/// A finished pass.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TaskRun {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration_ms: u64,
    /// `ok` or `error`.
    pub outcome: TaskOutcome,
    /// What the pass did (task-specific counts).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Ok,
    Error,
}

/// A cloud's backoff: the orchestrator calls it again after `retry_in_ms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CloudBackoff {
    pub cloud: String,
    /// Throttled answers in a row (0: not backing off).
    pub failures: u32,
    pub retry_in_ms: u64,
    /// Throttled answers since the control plane started.
    pub throttled_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
