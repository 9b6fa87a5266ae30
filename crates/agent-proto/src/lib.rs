//! The protocol between the Stratus control plane and the agent on every instance.
//!
//! The agent dials **out**: one WebSocket per agent, opened by the agent, so nothing has to reach
//! into an instance and a server is never stranded because the control plane could not get in.
//! Every frame is one JSON text message: an [`AgentMessage`] from the agent or a
//! [`ControlMessage`] from the control plane, each an object tagged by `"type"`. This crate is
//! the whole contract: the messages, their [`limits`], strict decoding ([`decode_agent`],
//! [`decode_control`]) and encoding, and the [`Masker`] both sides use to keep credential values
//! out of output. It does no I/O.
//!
//! ```text
//!  agent                                                              control plane
//!    |  1. connect: WebSocket, per-instance credential ---------------------->|
//!    |  2. Hello {versions, server, boot_id, last_generation, unacked} ------>|
//!    |<------------------ Welcome {version, heartbeat_secs, resume}           |
//!    |                    (or Refused {reason, message}, then close)          |
//!    |  3. resume: RunStarted, Output, RunFinished the control plane lacks -->|
//!    |<------------------ 4. DesiredState {generation, boot, tags}            |
//!    |  Applied {generation} ------------------------------------------------>|
//!    |<------------------ 5. RunScript {run, ...} / Cancel {run}              |
//!    |  RunStarted, Output {seq}*, RunFinished ------------------------------>|
//!    |<------------------ 6. AckOutput {run, seq}, AckFinished {run}          |
//!    |  7. TagChange / TagQuery {request_id} -------------------------------->|
//!    |<------------------ TagChangeResult / TagQueryResult / RequestFailed    |
//!    |  8. Heartbeat <-------------------------------------------> Heartbeat  |
//!    |  9. connection lost: back off with jitter, then 1 again                |
//! ```
//!
//! 1. **Connect.** The agent opens a WebSocket to the control plane (TLS; plain only on a local
//!    cloud's private bridge), authenticated by the per-instance credential it received at
//!    enrolment. The credential names the server: every message on the connection is about that
//!    server and no other, and run ids of other servers are refused.
//! 2. **Hello.** The agent's first frame is a [`Hello`]: the protocol versions it speaks, its
//!    build, its server id, its boot id, the last desired-state generation it applied and the
//!    runs it holds unacknowledged results for. The control plane answers [`Welcome`] with the
//!    highest version both speak ([`negotiate`]) and the heartbeat interval, or [`Refused`] and
//!    closes ([`RefusedReason`] says whether and how to retry). Nothing else may come first. A
//!    new connection for a server replaces an older one, which the control plane closes (a
//!    restarted agent wins over a half-open socket). The handshake messages keep their shape in
//!    every version.
//! 3. **Resume: exactly-once delivery.** The agent journals everything on disk before sending it,
//!    and keeps it until it is acknowledged, so nothing produced while disconnected is lost.
//!    `Welcome.resume` says, for each unacknowledged run, the first output chunk the control
//!    plane lacks and whether it holds the finish; the agent drops what is stored and resends the
//!    rest in order (`RunStarted`, then missing `Output`s, then `RunFinished`). The control plane
//!    stores chunk `seq` only if it is the next it expects: an earlier one is a duplicate
//!    (ignored, acknowledged again), a later one a gap, which one ordered WebSocket cannot
//!    produce, so it is a protocol error (`Refused`, close; the next resume fills it).
//!    `RunStarted` is idempotent. So a chunk may be *sent* twice but is *stored* once. A run the
//!    control plane sent that is neither in `unacked` nor finished in its store never reached the
//!    agent: the control plane sends it again, and since the agent runs a run id at most once
//!    (its journal keeps every run id it accepted), a repeat never runs a script twice.
//! 4. **Desired state and generations.** After `Welcome`, and whenever it changes, the control
//!    plane sends the server's [`DesiredState`]: the current boot's runs and the server's tags,
//!    under a [`Generation`]. The agent applies it only if its generation is newer than the last
//!    one it applied ([`Generation::supersedes`]); it records it on disk (readable by root only,
//!    like its credential) and answers `Applied {generation}`. A stale or repeated one changes
//!    nothing and is answered with the generation the agent holds, so the control plane always
//!    learns where the agent stands. Applying runs each boot run not yet run, in order, stopping
//!    at the first failure. A reboot shows as a new boot id in `Hello`: the control plane then
//!    issues a new generation with fresh run ids for the every-boot scripts. The server becomes
//!    operational when every run of its current boot has succeeded, stranded at the first failure.
//! 5. **Runs.** Boot runs arrive in the desired state; operational and decommission runs as
//!    `RunScript` ([`ScriptRun`]: body, environment, optional timeout). For each, the agent sends
//!    `RunStarted`, then [`Output`] chunks numbered from 0 (one sequence for stdout and stderr,
//!    converted by [`LossyUtf8`], masked by [`Masker`], cut by [`split_output`]), then
//!    [`RunFinished`] with its [`Outcome`]. `Cancel` stops a run; the agent enforces
//!    `timeout_secs`. An agent restarted mid-run reports `interrupted` and never reruns it.
//! 6. **Acknowledgements.** `AckOutput {run, seq}` (cumulative: chunks `0..=seq` are stored) and
//!    `AckFinished {run}` (the finish and all `output_chunks` chunks are stored) let the agent
//!    drop what it buffered; it keeps only the run id.
//! 7. **Agent-local requests.** `stratus-agent tag add/remove/query` become `TagChange` and
//!    `TagQuery`, answered by the result with the same `request_id` or `RequestFailed`. They need
//!    an open connection; while disconnected the command fails with a clear message.
//! 8. **Heartbeats.** Each side sends `Heartbeat {at}` after `heartbeat_secs` of sending nothing
//!    else, and closes the connection after [`DEAD_AFTER_HEARTBEATS`] intervals of hearing
//!    nothing. Application heartbeats, not WebSocket pings: they cross proxies that answer pings
//!    themselves, and `at` shows the agent's clock skew.
//! 9. **Reconnect.** On any close or error the agent waits an exponential backoff with full
//!    jitter, from [`RECONNECT_MIN_SECS`] to [`RECONNECT_MAX_SECS`] (jitter spreads ten thousand
//!    agents reconnecting after a control-plane restart), and starts again at step 1.
//!
//! ## Strictness and evolution
//!
//! Each side refuses unknown `"type"`s, unknown fields and anything over a limit, with an error
//! that names the field and quotes at most a short prefix of a value ([`ProtoError`]). So any
//! change to a message is a new protocol version: a side speaks a set of versions, the agent
//! offers all of its own in `Hello`, and the control plane picks the highest they share.
//!
//! ## Secrets
//!
//! Credential values travel to the agent as [`SecretString`] environment values: serialised in
//! the frame, but `***` in every `Debug`/`Display`, so a logged message shows nothing. Neither
//! side ever logs a raw frame. The agent masks secret values in the run's output and errors
//! before sending them, and the control plane masks them again on receipt.

mod agent;
mod control;
mod file;
mod frame;
pub mod limits;
mod mask;
mod output;
mod script;
mod secret;
mod validate;

pub use agent::{AccessKind, AgentMessage, Hello, ImagePrepared, Outcome, Output, RunFinished};
pub use control::{
    ControlMessage, DesiredState, Generation, PeerServer, PrepareImage, Refused, RefusedReason, Resume, Welcome,
};
pub use file::{ArtifactRef, LoginAccount, Logins, ManagedFile, absolute_path_ok, account_name_ok};
pub use frame::{ProtoError, QUOTE_MAX, decode_agent, decode_control, encode_agent, encode_control};
pub use mask::{ENCODED_MIN, MASK, Masker, encoded_forms};
pub use output::{LossyUtf8, OutputStream, split_output};
pub use script::ScriptRun;
pub use secret::{EnvValue, EnvVar, SecretString};

/// The protocol version this build speaks best.
///
/// Version 2 added artifact environment values, managed files in the desired state and
/// `FileStatus`. Version 1 is no longer spoken: no agent of it was ever released (the control
/// plane installs its own build on every instance), so a v1 agent is refused with
/// `unsupported_version` and keeps retrying until it is upgraded.
pub const PROTOCOL_VERSION: u32 = 2;
/// Every protocol version this build speaks.
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];
/// The heartbeat interval a control plane offers unless configured otherwise.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 15;
/// A connection is given up after this many heartbeat intervals without a frame.
pub const DEAD_AFTER_HEARTBEATS: u32 = 3;
/// The agent's first reconnection delay (before jitter).
pub const RECONNECT_MIN_SECS: u32 = 1;
/// The agent's longest reconnection delay (before jitter).
pub const RECONNECT_MAX_SECS: u32 = 60;

/// The highest version in both lists, if any: what the control plane puts in `Welcome`.
pub fn negotiate(offered: &[u32], supported: &[u32]) -> Option<u32> {
    offered.iter().copied().filter(|v| supported.contains(v)).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_shared_version() {
        assert_eq!(negotiate(&[1, 2, 3], &[2, 3, 4]), Some(3));
        assert_eq!(negotiate(&[2], SUPPORTED_VERSIONS), Some(PROTOCOL_VERSION));
        assert_eq!(
            negotiate(&[1], SUPPORTED_VERSIONS),
            None,
            "version 1 is no longer spoken"
        );
        assert_eq!(negotiate(&[7, 8], &[1]), None);
        assert_eq!(negotiate(&[], &[1]), None);
    }

    #[test]
    fn the_generation_rule() {
        let applied = Generation(5);
        assert!(Generation(6).supersedes(applied));
        assert!(!Generation(5).supersedes(applied), "a repeat is a no-op");
        assert!(!Generation(4).supersedes(applied), "a stale one is ignored");
        assert!(Generation::FIRST.supersedes(Generation::NONE));
        assert_eq!(Generation::NONE.next(), Generation::FIRST);
        assert_eq!(Generation(u64::MAX).next(), Generation(u64::MAX));
    }
}
