//! Runs: one execution of one script on one server.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use crate::{Name, RolloutId, RunId, ServerId};

/// Output kept per run; older output is dropped from the front (the tail matters most).
pub const RUN_OUTPUT_MAX: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Boot,
    Operational,
    Decommission,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Run {
    pub id: RunId,
    pub server: ServerId,
    pub server_name: Name,
    pub deployment: Name,
    pub script: Name,
    pub script_revision: u32,
    /// Counts up on every stored change of the run.
    #[serde(default)]
    pub revision: u32,
    pub phase: Phase,
    /// Inputs as given, by name. Credentials appear as `cred:NAME`, never as their value.
    pub inputs: BTreeMap<String, String>,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Combined output, credentials masked; at most [`RUN_OUTPUT_MAX`] bytes (the tail). (In
    /// the store's record: what the control plane adds, and output stored before agents' chunks
    /// had a table of their own; the API shows it all.)
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub output_truncated: bool,
    /// The next output chunk the control plane expects from the agent: chunks `0..output_seq`
    /// are stored. A resent chunk below it is a duplicate and is not stored twice. (In the
    /// store's record: the chunks stored in the record itself, before the output table.)
    #[serde(default)]
    pub output_seq: u64,
    /// The rollout this run belongs to, for a run started on many servers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutId>,
    /// The user who asked, or `system` for boot and decommission runs.
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    /// When the control plane handed it to the server's agent (a queued run without it has
    /// not been sent: a rollout holds it back). A sent run the agent does not hold when it
    /// reconnects is sent again; the agent runs a run id at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// The agent kills the script after this many seconds (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Run {
    /// Append output, keeping the tail within the limit (cut on a character boundary).
    pub fn append_output(&mut self, chunk: &str) {
        self.output.push_str(chunk);
        if self.output.len() > RUN_OUTPUT_MAX {
            let mut cut = self.output.len() - RUN_OUTPUT_MAX;
            while !self.output.is_char_boundary(cut) {
                cut += 1;
            }
            self.output.drain(..cut);
            self.output_truncated = true;
        }
    }

    /// The last `n` lines of output.
    pub fn output_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// One operational script started on every server a tag selector picks: at most `concurrency`
/// runs at a time, and no new run once more than `max_errors` have failed (SSM's rule: with
/// `max_errors` 0 the first failure stops the rollout).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub id: RolloutId,
    #[serde(default)]
    pub revision: u32,
    pub script: Name,
    /// The tag selector as given.
    pub selector: String,
    /// Only servers of this deployment, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Name>,
    pub concurrency: u32,
    pub max_errors: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    pub status: RolloutStatus,
    /// One run per selected server, in the order they are started. Each is `queued` until the
    /// rollout starts it.
    pub runs: Vec<RunId>,
    /// Servers the selector matched that cannot run the script, with the reason
    /// (`deployment/name: stranded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// How many runs have been handed to their agents.
    #[serde(default)]
    pub started: u32,
    #[serde(default)]
    pub succeeded: u32,
    /// Failed or timed out.
    #[serde(default)]
    pub failed: u32,
    /// Cancelled, or never started because the rollout stopped.
    #[serde(default)]
    pub cancelled: u32,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    Running,
    /// Every run succeeded.
    Succeeded,
    /// Every run finished and some failed, within the error budget.
    Failed,
    /// More than `max_errors` runs failed: the runs not yet started were cancelled.
    Stopped,
    /// Somebody cancelled it.
    Cancelled,
}

impl RolloutStatus {
    pub fn is_finished(self) -> bool {
        self != Self::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_the_tail() {
        let now = Utc::now();
        let mut r = Run {
            id: RunId::new(),
            server: ServerId::new(),
            server_name: Name::parse("s").unwrap(),
            deployment: Name::parse("d").unwrap(),
            script: Name::parse("x").unwrap(),
            script_revision: 1,
            revision: 1,
            phase: Phase::Boot,
            inputs: BTreeMap::new(),
            status: RunStatus::Running,
            exit_code: None,
            output: String::new(),
            output_truncated: false,
            output_seq: 0,
            rollout: None,
            requested_by: "system".into(),
            created_at: now,
            sent_at: None,
            timeout_secs: None,
            started_at: None,
            finished_at: None,
        };
        for i in 0..200_000 {
            r.append_output(&format!("é line {i}\n"));
        }
        assert!(r.output.len() <= RUN_OUTPUT_MAX);
        assert!(r.output_truncated);
        assert_eq!(r.output_tail(1), "é line 199999");
    }
}
