//! Messages from the control plane to the agent, and the desired-state generation.

use std::net::IpAddr;

use stratus_types::tag::Tag;
use stratus_types::{Name, RunId, ServerId, Timestamp};

use crate::ScriptRun;

/// Everything the control plane sends. On the wire, a JSON object whose `"type"` names the
/// variant in snake case; unknown types and unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// The answer to a `Hello` the control plane accepts.
    Welcome(Welcome),
    /// The answer to a `Hello` it does not accept, or a last word before it closes the
    /// connection; the agent obeys [`RefusedReason`].
    Refused(Refused),
    /// What this server should be: its boot runs and tags, under a generation.
    DesiredState(DesiredState),
    /// Run a script now (operational and decommission runs; never boot runs).
    RunScript(ScriptRun),
    /// Stop a run: the agent signals its process group (TERM, then KILL after a grace period)
    /// and reports outcome `cancelled`. A run that already finished or is unknown is ignored.
    Cancel { run: RunId },
    /// The control plane has stored the run's output chunks `0..=seq`: the agent may drop them.
    AckOutput { run: RunId, seq: u64 },
    /// The control plane has stored the run's finish (and so all of it): the agent may forget
    /// everything but the run id.
    AckFinished { run: RunId },
    /// The server's tags after a `TagChange`.
    TagChangeResult { request_id: u64, tags: Vec<Tag> },
    /// The answer to a `TagQuery`: the matching servers this server may see, by name.
    TagQueryResult {
        request_id: u64,
        servers: Vec<PeerServer>,
        /// More servers matched than [`crate::limits::MAX_PEERS`]; refine the selector.
        #[serde(default)]
        truncated: bool,
    },
    /// A `TagChange` or `TagQuery` was refused (invalid tag, not allowed, ...).
    RequestFailed { request_id: u64, message: String },
    /// Sent when the control plane has sent nothing else for the heartbeat interval.
    Heartbeat { at: Timestamp },
    /// (v2) Prepare this instance to be captured as an image (`stratus server rebundle`). The
    /// agent answers with `ImagePrepared`. Having prepared, it has no identity left: it closes
    /// the connection and waits, without reconnecting, to be stopped.
    PrepareImage(PrepareImage),
}

/// What `PrepareImage` asks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareImage {
    /// Values that must not end up in the image (the server's secret inputs). If the file
    /// system holds one, the agent refuses and changes nothing.
    #[serde(default)]
    pub secrets: Vec<crate::SecretString>,
}

/// The control plane accepts the connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The protocol version of the rest of the connection: the highest both sides speak.
    pub version: u32,
    /// Each side sends a `Heartbeat` after this many seconds of sending nothing else, and gives
    /// the connection up after [`crate::DEAD_AFTER_HEARTBEATS`] intervals of hearing nothing.
    pub heartbeat_secs: u32,
    /// Where each run of the `Hello`'s `unacked` list stands in the control plane's store.
    #[serde(default)]
    pub resume: Vec<Resume>,
}

/// Where one unacknowledged run stands, so the agent resends exactly what is missing. A run the
/// control plane does not know for this server (its store was restored from an older backup) is
/// answered `finished: true`: there is nowhere to deliver it, and the agent drops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub run: RunId,
    /// The first output chunk the control plane does not hold (0 if it holds none).
    pub next_seq: u64,
    /// The control plane already holds the run's finish: the agent drops the run.
    pub finished: bool,
}

/// The control plane refuses the connection (and closes it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refused {
    pub reason: RefusedReason,
    /// For a person: what was wrong and what to do.
    pub message: String,
}

/// Why a connection was refused, and what the agent does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedReason {
    /// No protocol version in common. The agent keeps retrying at its longest backoff (the
    /// control plane or the agent may be upgraded).
    UnsupportedVersion,
    /// The `Hello` named a server other than the one the agent's credential belongs to. The
    /// agent retries at its longest backoff and logs an error.
    WrongServer,
    /// The server is terminated: the agent stops and does not reconnect.
    Terminated,
    /// The agent broke the protocol (a malformed or out-of-order message). It reconnects with
    /// backoff and starts over with a `Hello`.
    ProtocolError,
    /// The control plane is busy or shutting down: reconnect with backoff.
    Unavailable,
}

/// The desired state of a server, under a generation (step 4 of the protocol). The agent applies
/// it only if its generation is newer than the last one it applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub generation: Generation,
    /// The runs of the current boot, in order: each runs after the previous one succeeded, and
    /// the first failure ends the boot (the rest are reported `cancelled`). Every run has phase
    /// `boot`; a run id the agent already ran is not run again.
    #[serde(default)]
    pub boot: Vec<ScriptRun>,
    /// The server's tags, for `stratus-agent tag list` (and scripts) without a round trip.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// (v2) Files the agent keeps as given (a load balancer's configuration), applied before
    /// the boot runs start. A file that was managed and is no longer listed is left as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::ManagedFile>,
    /// (v2) Managed SSH: the accounts Stratus keeps on this server. `None`: managed SSH says
    /// nothing (accounts are left as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logins: Option<crate::Logins>,
}

/// A desired-state generation: counts up by one each time the control plane changes what a
/// server should be. [`Generation::NONE`] (0) is "nothing applied yet"; the first desired state
/// is generation 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    pub const NONE: Self = Self(0);
    pub const FIRST: Self = Self(1);

    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The generation rule: a desired state is applied only if its generation is newer than the
    /// last applied one. A stale or repeated one changes nothing (the agent answers `Applied`
    /// with the generation it holds).
    pub fn supersedes(self, last_applied: Generation) -> bool {
        self > last_applied
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Another server, as a `TagQuery` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerServer {
    pub id: ServerId,
    pub name: Name,
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
}
