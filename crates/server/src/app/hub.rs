//! The agent sessions this control plane holds, and pushing messages to them without ever
//! waiting on an agent.
//!
//! ```text
//!  GET /agent/connect ──► Hub::open ──(one per credential: an older session is told to close)
//!        │                   └─ over the total: 503 before the upgrade
//!        ▼
//!  hello, greeting ──► SessionSlot::attach(queue) ──► pushes arrive ──► written to the socket
//!                                                       (each write within a deadline)
//!  Hub::push: try_send; a full queue closes that session (the agent reconnects and gets the
//!  desired state again: generations make the repeat safe) and the sender goes on at once.
//! ```
//!
//! - **One session per agent credential.** A second `connect` of the same agent *replaces* the
//!   first, which is closed. An agent whose TCP connection died without it noticing (a NAT or a
//!   firewall forgot the flow, the instance was paused) reconnects at once and must not be locked
//!   out until the old session's heartbeats run out; and whoever holds the credential can act as
//!   the agent anyway, so refusing the newcomer would protect nothing.
//! - **A bounded number of sessions** ([`MAX_SESSIONS_DEFAULT`], `--max-agent-sessions`),
//!   counted from the upgrade, handshake included.
//! - **No push waits on an agent.** Each session has a queue of [`QUEUE`] messages; a push to a
//!   full queue closes that session instead of waiting, and the session's socket writes have a
//!   deadline (`http/agent.rs`), so an agent that stops reading delays only itself. A key
//!   revocation pushed to every agent of a deployment reaches the others at once.
//!
//! Across replicas (PostgreSQL), the newest connection claims the agent in the database and
//! messages follow the claim; an older session on another replica ends at its next write error
//! or heartbeat timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use stratus_agent_proto::ControlMessage;
use stratus_types::ServerId;
use tokio::sync::{Notify, mpsc};

/// Agent sessions held at once, unless configured otherwise.
pub const MAX_SESSIONS_DEFAULT: usize = 10_000;
/// Messages waiting for one agent; a push beyond closes its session.
pub const QUEUE: usize = 64;

/// The connected agents: a way to push a message to a server's agent.
#[derive(Debug)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sessions: Mutex<HashMap<ServerId, Entry>>,
    next: AtomicU64,
    max: usize,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    /// Set once the handshake is done; `None` again when the queue overflowed.
    tx: Option<mpsc::Sender<ControlMessage>>,
    close: Arc<Notify>,
}

/// The hub holds as many agent sessions as it may.
#[derive(Debug, thiserror::Error)]
#[error("the control plane holds {0} agent sessions, as many as it may (--max-agent-sessions); retry later")]
pub struct HubFull(pub usize);

impl Default for Hub {
    fn default() -> Self {
        Self::new(MAX_SESSIONS_DEFAULT)
    }
}

impl Hub {
    /// A hub holding at most `max` sessions (0: no limit).
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: Mutex::default(),
                next: AtomicU64::new(0),
                max,
            }),
        }
    }

    /// Open the agent's session, closing an older one of the same agent.
    pub fn open(&self, server: ServerId) -> Result<SessionSlot, HubFull> {
        let key = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut sessions = self.inner.lock();
        if let Some(old) = sessions.get(&server) {
            tracing::info!(%server, "the agent connected again; its older session is closed");
            old.close.notify_one();
        } else if self.inner.max != 0 && sessions.len() >= self.inner.max {
            tracing::warn!(%server, limit = self.inner.max, "an agent connection refused: as many agent sessions as allowed (--max-agent-sessions)");
            return Err(HubFull(self.inner.max));
        }
        sessions.insert(
            server,
            Entry {
                key,
                tx: None,
                close: close.clone(),
            },
        );
        Ok(SessionSlot {
            inner: self.inner.clone(),
            server,
            key,
            close,
        })
    }

    /// Queue a message for the server's agent; false when it is not connected here or its
    /// queue is full (then its session is closed). Never waits.
    pub fn push(&self, server: ServerId, msg: ControlMessage) -> bool {
        let mut sessions = self.inner.lock();
        let Some(entry) = sessions.get_mut(&server) else {
            return false;
        };
        let Some(tx) = &entry.tx else { return false };
        match tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%server, queued = QUEUE, "an agent is not taking its messages; its session is closed (it gets the desired state again when it reconnects)");
                entry.tx = None;
                entry.close.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the server's agent has a session here that takes messages.
    pub fn is_connected(&self, server: ServerId) -> bool {
        self.inner.lock().get(&server).is_some_and(|e| e.tx.is_some())
    }

    /// How many agents have a session here that takes messages.
    pub fn connected(&self) -> usize {
        self.inner.lock().values().filter(|e| e.tx.is_some()).count()
    }

    /// Sessions held, handshakes included.
    pub fn sessions(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<ServerId, Entry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remove this session's entry; false if a newer session of the agent holds the place.
    fn remove(&self, server: ServerId, key: u64) -> bool {
        let mut sessions = self.lock();
        match sessions.get(&server) {
            Some(e) if e.key == key => {
                sessions.remove(&server);
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

/// One agent session's place in the hub; dropping it gives the place up.
#[derive(Debug)]
pub struct SessionSlot {
    inner: Arc<Inner>,
    server: ServerId,
    key: u64,
    close: Arc<Notify>,
}

impl SessionSlot {
    /// The handshake is done: pushes queue for this session from now on (the receiver). None
    /// when a newer session of the agent replaced this one meanwhile.
    pub fn attach(&self) -> Option<mpsc::Receiver<ControlMessage>> {
        let mut sessions = self.inner.lock();
        let entry = sessions.get_mut(&self.server).filter(|e| e.key == self.key)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        entry.tx = Some(tx);
        Some(rx)
    }

    /// Resolves when this session must end: replaced by a newer one, or its queue overflowed.
    pub async fn closed(&self) {
        self.close.notified().await;
    }

    /// Give the place up; false if a newer session of the agent holds it (which then owns the
    /// agent's claim across replicas).
    pub fn release(self) -> bool {
        self.inner.remove(self.server, self.key)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.inner.remove(self.server, self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> ControlMessage {
        ControlMessage::Heartbeat { at: chrono::Utc::now() }
    }

    #[tokio::test]
    async fn a_second_session_of_an_agent_closes_the_first() {
        let hub = Hub::new(10);
        let server = ServerId::new();
        let first = hub.open(server).expect("open");
        let _rx1 = first.attach().expect("attached");
        let second = hub.open(server).expect("open again");
        tokio::time::timeout(std::time::Duration::from_secs(10), first.closed())
            .await
            .expect("the first is told to close");
        assert!(first.attach().is_none(), "the first lost its place");
        let mut rx2 = second.attach().expect("attached");
        assert!(!first.release(), "the newer session holds the place");
        assert!(hub.push(server, beat()));
        assert!(rx2.try_recv().is_ok(), "pushes reach the newer session");
        assert!(second.release());
        assert_eq!(hub.sessions(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_session_instead_of_waiting() {
        let hub = Hub::new(10);
        let server = ServerId::new();
        let slot = hub.open(server).expect("open");
        let _rx = slot.attach().expect("attached");
        for _ in 0..QUEUE {
            assert!(hub.push(server, beat()));
        }
        assert!(!hub.push(server, beat()), "a full queue refuses");
        assert!(!hub.is_connected(server));
        tokio::time::timeout(std::time::Duration::from_secs(10), slot.closed())
            .await
            .expect("the session is told to close");
    }

    #[test]
    fn the_total_is_bounded_and_a_dropped_slot_frees_its_place() {
        let hub = Hub::new(2);
        let a = hub.open(ServerId::new()).expect("a");
        let _b = hub.open(ServerId::new()).expect("b");
        assert!(hub.open(ServerId::new()).is_err());
        drop(a);
        assert!(hub.open(ServerId::new()).is_ok());
    }
}
