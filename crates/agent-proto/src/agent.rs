//! Messages from the agent to the control plane.

use std::fmt;

use stratus_types::run::RunStatus;
use stratus_types::tag::{Selector, Tag};
use stratus_types::{RunId, ServerId, Timestamp};

use crate::{Generation, OutputStream};

/// Everything an agent sends. On the wire, a JSON object whose `"type"` names the variant in
/// snake case (`{"type":"run_started","run":"…","started_at":"…"}`); unknown types and unknown
/// fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// The first message on every connection (step 2 of the protocol).
    Hello(Hello),
    /// Sent when the agent has sent nothing else for the heartbeat interval.
    Heartbeat {
        at: Timestamp,
    },
    /// The agent has recorded this desired state (or, for a stale or repeated one, this is the
    /// generation it already holds).
    Applied {
        generation: Generation,
    },
    /// A run's process started (sent again after a reconnect until the run is acknowledged).
    RunStarted {
        run: RunId,
        started_at: Timestamp,
    },
    Output(Output),
    RunFinished(RunFinished),
    /// `stratus-agent tag add/remove`: change this server's tags. Answered by
    /// `TagChangeResult` or `RequestFailed` with the same `request_id`.
    TagChange {
        request_id: u64,
        #[serde(default)]
        add: Vec<Tag>,
        #[serde(default)]
        remove: Vec<Tag>,
    },
    /// `stratus-agent tag query SELECTOR`: other servers' tags and addresses, as this server may
    /// see them. Answered by `TagQueryResult` or `RequestFailed`.
    TagQuery {
        request_id: u64,
        selector: Selector,
    },
    /// (v2) Managed SSH: a managed account logged in (`login`) or used sudo (`sudo`), as the
    /// instance's PAM session hook reported it.
    Access {
        user: String,
        kind: AccessKind,
        /// The remote host of a login, as sshd saw it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        at: Timestamp,
    },
    /// (v2) The outcome of applying one managed file of the desired state: `sha256` is the
    /// content now in place, `error` why the new content was refused (its check failed, the
    /// write failed) or its reload failed.
    FileStatus {
        path: String,
        /// The SHA-256 of the content the desired state asked for.
        sha256: String,
        /// The file on disk has that content now.
        applied: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// (v2) The answer to `PrepareImage`.
    ImagePrepared(ImagePrepared),
}

/// How the preparation for an image capture went. Refused (`error` set): nothing was removed,
/// the agent carries on. Done: what was removed, and the agent is about to go quiet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePrepared {
    /// Why the agent refused (a secret was found, a run is still going, a removal failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Files that hold a secret value (never the value): the reason for a refusal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_found_in: Vec<String>,
    /// What was removed or emptied, one line per kind (`ssh host keys: 6 files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// What a managed account did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    Login,
    Sudo,
}

/// The agent introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Every protocol version the agent speaks; the control plane picks the highest it shares.
    pub versions: Vec<u32>,
    /// The agent's build, for the record (`stratus-agent 0.1.0`).
    pub agent_version: String,
    /// The server this agent runs on. Must be the server its credential was issued for.
    pub server: ServerId,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a new value means the instance
    /// rebooted, so every-boot scripts are due again.
    pub boot_id: String,
    /// The last desired-state generation the agent applied ([`Generation::NONE`] if none).
    pub last_generation: Generation,
    /// Runs the agent holds results for that the control plane has not acknowledged as
    /// finished: still running, or with output or a finish not yet acknowledged.
    #[serde(default)]
    pub unacked: Vec<RunId>,
}

/// A chunk of a run's output, already masked by the agent.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub run: RunId,
    /// 0 for the run's first chunk (both streams share one sequence), then one more each time.
    pub seq: u64,
    pub stream: OutputStream,
    /// UTF-8 text; the agent converts binary output lossily (see [`crate::LossyUtf8`]). At most
    /// [`crate::limits::MAX_OUTPUT_DATA`] bytes, never empty, no NUL.
    pub data: String,
    /// When the agent read it.
    pub at: Timestamp,
}

/// Output's `Debug` shows the size of `data`, not the text (which can be 64 KiB).
impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("run", &self.run)
            .field("seq", &self.seq)
            .field("stream", &self.stream)
            .field("data_bytes", &self.data.len())
            .field("at", &self.at)
            .finish()
    }
}

/// A run is over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFinished {
    pub run: RunId,
    pub outcome: Outcome,
    /// Set when `outcome` is `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the process: set when `outcome` is `signalled`; may be set for
    /// `timed_out` and `cancelled` (the signal the agent sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// What went wrong, for a person (masked, at most [`crate::limits::MAX_MESSAGE`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub finished_at: Timestamp,
    /// How many `Output` messages the run produced: their `seq`s are `0..output_chunks`. The
    /// control plane acknowledges the finish only once it holds all of them.
    pub output_chunks: u64,
    /// The total bytes of their `data`.
    pub output_bytes: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The process exited with `exit_code` (0 is success).
    Exited,
    /// The process was killed by `signal`, not by the agent.
    Signalled,
    /// It ran longer than its `timeout_secs` and the agent killed it.
    TimedOut,
    /// A `Cancel` arrived: the agent killed it, or it had not started yet.
    Cancelled,
    /// It could not be started (`error` says why: no interpreter, no disk space, ...).
    FailedToStart,
    /// The agent restarted or the instance rebooted while it ran: how it ended is unknown.
    /// (The agent never runs it again; a run id runs at most once.)
    Interrupted,
    /// A per-instance script that already succeeded on this instance: not run again.
    Skipped,
}

impl RunFinished {
    /// The run's status as the control plane records it.
    pub fn status(&self) -> RunStatus {
        match self.outcome {
            Outcome::Exited if self.exit_code == Some(0) => RunStatus::Succeeded,
            Outcome::Skipped => RunStatus::Succeeded,
            Outcome::TimedOut => RunStatus::TimedOut,
            Outcome::Cancelled => RunStatus::Cancelled,
            Outcome::Exited | Outcome::Signalled | Outcome::FailedToStart | Outcome::Interrupted => RunStatus::Failed,
        }
    }
}
