//! Durable operations: a multi-step change the control plane carries through to the end even if
//! it restarts, or its leader dies, half-way.
//!
//! An operation is a record in the store with the step it stands at. The leader's operation
//! driver (`crates/server/src/app/operations.rs`) executes the step, then records the next one;
//! a step whose effect is a store write (a server launched, an address moved) is committed in
//! the same transaction as the step after it, so a step that took effect is never repeated; any
//! other step only makes calls that are safe to repeat (an address already on the successor is
//! skipped, a server already leaving is not terminated again, a capture under the same name
//! returns the image already made, an agent asked again to prepare answers the same). After a restart or a failover the driver picks every
//! unfinished operation up from the step it recorded.
//!
//! ```text
//! replace:   (request: successor recorded) boot ──▶ move_addresses ──▶ terminate_old ──▶ done
//!                        │ (the successor strands, or is not operational in time)
//!                        └──▶ failed (the old server keeps serving and its addresses)
//!
//! rebundle:  prepare ──▶ capture ──▶ relaunch ──▶ done
//!               │           │  (then = terminate, or an array member: relaunch is skipped)
//!               │           └──▶ failed (the capture failed; the server is terminated anyway)
//!               └──▶ failed (the agent refused, or did not answer: nothing changed)
//! ```

use chrono::{DateTime, Utc};

use crate::server::AfterRebundle;
use crate::{Name, OperationId, ServerId};

/// One durable operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: OperationId,
    #[serde(default)]
    pub revision: u32,
    /// What it does, with what only this kind needs.
    pub kind: OperationKind,
    /// The server it is about.
    pub server: ServerId,
    /// `deployment/name` of that server.
    pub server_name: String,
    pub deployment: Name,
    pub step: Step,
    /// The server that takes over (replace) or is launched in its place (rebundle, relaunch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<ServerId>,
    /// `deployment/name` of the successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_name: Option<String>,
    /// Elastic IPs moved to the successor, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub requested_by: String,
    /// The permission level its requester had: later steps act with that authority, no more.
    #[serde(default)]
    pub requester_level: u8,
    /// When the current step last asked someone to act (an agent to prepare its instance):
    /// asked again if no answer comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the current step began (its deadline counts from here).
    pub step_started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// The kinds of operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OperationKind {
    /// A successor like the server, then the switch (`stratus server replace`).
    Replace,
    /// The server captured as a version of an array's image (`stratus server rebundle`).
    Rebundle {
        array: Name,
        image: Name,
        then: AfterRebundle,
    },
}

impl OperationKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            OperationKind::Replace => "replace",
            OperationKind::Rebundle { .. } => "rebundle",
        }
    }
}

/// Where an operation stands: the step it executes next, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Replace: wait until the successor is operational.
    Boot,
    /// Replace: move the old server's elastic IPs to the successor.
    MoveAddresses,
    /// Replace: terminate the old server (decommission scripts, draining).
    TerminateOld,
    /// Rebundle: the agent prepares the instance (asked again if it does not answer).
    Prepare,
    /// Rebundle: the orchestrator stops, captures and terminates the instance.
    Capture,
    /// Rebundle with `then = relaunch`: a server like it under its name.
    Relaunch,
    /// Finished: everything took effect.
    Done,
    /// Finished without taking effect, or half-way (see `error`).
    Failed,
}

impl Step {
    pub fn is_finished(self) -> bool {
        matches!(self, Step::Done | Step::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Boot => "boot",
            Step::MoveAddresses => "move_addresses",
            Step::TerminateOld => "terminate_old",
            Step::Prepare => "prepare",
            Step::Capture => "capture",
            Step::Relaunch => "relaunch",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Operation {
    /// A new operation at its first step, asked for by `by` with permission `level`.
    pub fn new(
        kind: OperationKind,
        server: ServerId,
        server_name: String,
        deployment: Name,
        by: &str,
        level: u8,
    ) -> Self {
        let now = Utc::now();
        let step = match kind {
            OperationKind::Replace => Step::Boot,
            OperationKind::Rebundle { .. } => Step::Prepare,
        };
        Self {
            id: OperationId::new(),
            revision: 0,
            kind,
            server,
            server_name,
            deployment,
            step,
            successor: None,
            successor_name: None,
            addresses: vec![],
            error: None,
            requested_by: by.to_string(),
            requester_level: level,
            asked_at: None,
            created_at: now,
            updated_at: now,
            step_started_at: now,
            finished_at: None,
        }
    }

    /// Move on to `step` (finished steps record when).
    pub fn advance(&mut self, step: Step, now: DateTime<Utc>) {
        self.step = step;
        self.step_started_at = now;
        self.asked_at = None;
        if step.is_finished() {
            self.finished_at = Some(now);
        }
    }

    /// End it as failed, saying why.
    pub fn fail(&mut self, error: String, now: DateTime<Utc>) {
        self.error = Some(error);
        self.advance(Step::Failed, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_start_at_their_first_step_and_round_trip() {
        let r = Operation::new(
            OperationKind::Replace,
            ServerId::new(),
            "d/web-1".into(),
            "d".parse().unwrap(),
            "alice",
            2,
        );
        assert_eq!(r.step, Step::Boot);
        let b = Operation::new(
            OperationKind::Rebundle {
                array: "workers".parse().unwrap(),
                image: "w-bundle".parse().unwrap(),
                then: AfterRebundle::Relaunch,
            },
            ServerId::new(),
            "d/golden".into(),
            "d".parse().unwrap(),
            "alice",
            2,
        );
        assert_eq!(b.step, Step::Prepare);
        for op in [r, b] {
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<Operation>(&json).unwrap(), op);
        }
    }

    #[test]
    fn finishing_records_when() {
        let mut op = Operation::new(
            OperationKind::Replace,
            ServerId::new(),
            "d/w".into(),
            "d".parse().unwrap(),
            "a",
            2,
        );
        let now = Utc::now();
        op.advance(Step::Boot, now);
        assert!(op.finished_at.is_none() && !op.step.is_finished());
        op.fail("no".into(), now);
        assert_eq!(
            (op.step, op.finished_at, op.error.as_deref()),
            (Step::Failed, Some(now), Some("no"))
        );
    }
}
