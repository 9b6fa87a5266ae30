//! Several replicas of the control plane on one PostgreSQL database.
//!
//! Any replica serves the API and takes agent connections (behind a TCP or HTTP load balancer).
//! What they coordinate through the database (`stratus_store::cluster`):
//!
//! - **One leader runs the background work**: the orchestrator, the load-balancer sync and the
//!   rollout drivers start when this replica takes the leadership's advisory lock and stop if
//!   it loses it ([`supervise`]). A killed leader's lock goes with its connection, and another
//!   replica takes over within about a second. With SQLite there is one process, always leader.
//! - **Messages reach agents wherever they are connected**: [`App::push_agent`] sends on this
//!   replica's connection, or leaves the message in the outbox of the replica holding it and
//!   wakes that one (`NOTIFY`), which sends it ([`listen`]). Outbox rows are sealed
//!   (`KeyRing::seal_relay`: AEAD under a key derived from the shared master key, bound to the
//!   receiving replica and the server), since run frames carry decrypted credential values; a
//!   row that does not open (a replica with another `master.key`, a row moved or changed) is
//!   dropped with a warning, and what matters is resent when the agent reconnects.
//! - **Changes are heard everywhere**: each commit notifies what it wrote; the other replicas
//!   announce it to their live views and their load-balancer sync, count finished runs, and the
//!   leader's orchestrator wakes up and picks up rollouts started elsewhere.
//!
//! Agents connected to a replica that dies reconnect (with backoff) through the load balancer
//! to a survivor, which claims them; runs they were sent and had not finished are resumed as
//! after any reconnect.

use std::sync::Arc;
use std::time::Duration;

use stratus_agent_proto::ControlMessage;
use stratus_store::Kind;
use stratus_store::cluster::{CHANGES_CHANNEL, ChangeNote, OUTBOX_CHANNEL, PgCluster};
use stratus_types::ServerId;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::App;
use crate::app::hub::{Hub, HubFull, SessionSlot};

/// How this control plane shares the work with others.
#[derive(Debug)]
pub struct Cluster {
    pg: Option<PgCluster>,
    leader: watch::Sender<bool>,
    /// The agent sessions this replica holds. Private: the one way to send to an agent is
    /// [`App::push_agent`], which finds the replica holding it, so no caller can mistake "not
    /// connected here" for "not connected".
    hub: Hub,
}

impl Cluster {
    /// One process (SQLite): always the leader.
    pub fn single(hub: Hub) -> Self {
        Self {
            pg: None,
            leader: watch::Sender::new(true),
            hub,
        }
    }

    /// A replica of a PostgreSQL cluster: leader once elected.
    pub fn postgres(pg: PgCluster, hub: Hub) -> Self {
        Self {
            pg: Some(pg),
            leader: watch::Sender::new(false),
            hub,
        }
    }

    /// Open a session for an agent connecting to this replica (see [`Hub::open`]).
    pub fn open_session(&self, server: ServerId) -> Result<SessionSlot, HubFull> {
        self.hub.open(server)
    }

    /// Whether this replica (not another) holds a session of the server's agent.
    pub fn holds(&self, server: ServerId) -> bool {
        self.hub.is_connected(server)
    }

    /// How many agents have a session on this replica.
    pub fn sessions_here(&self) -> usize {
        self.hub.connected()
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    pub fn pg(&self) -> Option<&PgCluster> {
        self.pg.as_ref()
    }

    /// This replica's id (`local` without a cluster).
    pub fn replica(&self) -> &str {
        self.pg.as_ref().map_or("local", PgCluster::replica)
    }
}

impl App {
    /// Send to a server's agent, on this replica's connection or through the replica that holds
    /// it. False when no live replica holds a connection of it.
    pub async fn push_agent(&self, server: ServerId, msg: ControlMessage) -> bool {
        if self.cluster.hub.is_connected(server) {
            return self.cluster.hub.push(server, msg);
        }
        let Some(pg) = self.cluster.pg() else {
            return false;
        };
        let owner = match pg.owner(&server.to_string()).await {
            Ok(Some(o)) => o,
            Ok(None) => return false,
            Err(e) => {
                warn!(%server, error = %e, "cannot look up the agent's replica");
                return false;
            }
        };
        let frame = match stratus_agent_proto::encode_control(&msg) {
            Ok(f) => f,
            Err(e) => {
                warn!(%server, error = %e, "cannot relay a message the agent would refuse");
                return false;
            }
        };
        // Run frames carry decrypted inputs: never in the database in clear.
        let sealed = match self.keys.seal_relay(&owner, &server.to_string(), &frame) {
            Ok(s) => s,
            Err(e) => {
                warn!(%server, error = %e, "cannot seal a message to relay");
                return false;
            }
        };
        match pg.relay(&owner, &server.to_string(), &sealed).await {
            Ok(()) => true,
            Err(e) => {
                warn!(%server, error = %e, "cannot relay a message to the agent's replica");
                false
            }
        }
    }

    /// Whether some live replica holds a connection of the server's agent.
    pub async fn agent_connected(&self, server: ServerId) -> bool {
        if self.cluster.hub.is_connected(server) {
            return true;
        }
        match self.cluster.pg() {
            Some(pg) => pg.owner(&server.to_string()).await.ok().flatten().is_some(),
            None => false,
        }
    }

    /// Record that this replica holds the agent's connection (or no longer does).
    pub async fn agent_claimed(&self, server: ServerId, held: bool) {
        let Some(pg) = self.cluster.pg() else { return };
        let id = server.to_string();
        let done = if held {
            pg.claim(&id).await
        } else {
            pg.release(&id).await
        };
        if let Err(e) = done {
            warn!(%server, error = %e, "cannot record the agent's connection");
        }
    }
}

/// The background work running here; stopped when dropped, so that aborting [`supervise`]
/// (a control plane stopping) stops what it started too.
struct Work {
    app: Arc<App>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Work {
    fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        crate::app::rollouts::stop_all(&self.app);
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run the leader's background work while this replica leads (always, without a cluster).
pub async fn supervise(app: Arc<App>) {
    let mut leads = app.cluster.leader.subscribe();
    let mut work = Work {
        app: app.clone(),
        tasks: vec![],
    };
    loop {
        if !*leads.borrow_and_update() {
            if leads.changed().await.is_err() {
                return;
            }
            continue;
        }
        info!(
            replica = app.cluster.replica(),
            "leading: orchestrator, load-balancer sync and rollouts run here"
        );
        // Each task runs a pass at once: load balancers connected before get their
        // configuration checked, rollouts left running go on (see `reconcile::spawn_all`).
        work.tasks = crate::reconcile::spawn_all(&app);
        while *leads.borrow_and_update() {
            if leads.changed().await.is_err() {
                break;
            }
        }
        warn!(
            replica = app.cluster.replica(),
            "no longer leading; background work stops here"
        );
        work.stop();
    }
}

/// Keep this replica alive in the cluster table and take the leadership when it is free.
pub async fn elect(app: Arc<App>, api_url: String) {
    let Some(pg) = app.cluster.pg().cloned() else { return };
    let mut candidate = None;
    loop {
        let leads = match &mut candidate {
            None => match pg.candidate().await {
                Ok(c) => {
                    candidate = Some(c);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "cannot reach the database for the leadership");
                    false
                }
            },
            Some(c) => match c.try_lead().await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "the leadership connection failed");
                    candidate = None;
                    false
                }
            },
        };
        app.cluster
            .leader
            .send_if_modified(|l| std::mem::replace(l, leads) != leads);
        if let Err(e) = pg.heartbeat(&api_url, leads).await {
            warn!(error = %e, "cannot record this replica as alive");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Hear the other replicas: messages for agents connected here, and what they committed.
pub async fn listen(app: Arc<App>) {
    let Some(pg) = app.cluster.pg().cloned() else { return };
    loop {
        let mut listener = match pg.listen().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot listen to the other replicas; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Whatever was left while nobody listened.
        deliver(&app, &pg).await;
        loop {
            match listener.recv().await {
                Ok(n) if n.channel() == OUTBOX_CHANNEL => {
                    if n.payload() == pg.replica() {
                        deliver(&app, &pg).await;
                    }
                }
                Ok(n) if n.channel() == CHANGES_CHANNEL => {
                    if let Ok(note) = serde_json::from_str::<ChangeNote>(n.payload())
                        && note.origin != pg.replica()
                    {
                        heard(&app, &note).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "lost the connection to the other replicas; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Send the messages other replicas left for agents connected here.
async fn deliver(app: &App, pg: &PgCluster) {
    let messages = match pg.take().await {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "cannot take relayed messages");
            return;
        }
    };
    for (server, sealed) in messages {
        let frame = match app.keys.open_relay(pg.replica(), &server, &sealed) {
            Ok(f) => f,
            Err(e) => {
                warn!(%server, error = %e, "a relayed message cannot be opened; dropped");
                continue;
            }
        };
        let (Ok(id), Ok(msg)) = (
            server.parse::<uuid::Uuid>(),
            stratus_agent_proto::decode_control(&frame),
        ) else {
            warn!(%server, "a relayed message is unreadable; dropped");
            continue;
        };
        if !app.cluster.hub.push(ServerId(id), msg) {
            // The agent left meanwhile: what matters is resent when it reconnects.
            tracing::debug!(%server, "a relayed message found its agent gone");
        }
    }
}

/// Another replica committed `note`: tell whoever here waits on such changes.
async fn heard(app: &Arc<App>, note: &ChangeNote) {
    let kinds: Vec<&str> = note
        .changes
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(note.many.iter().map(String::as_str))
        .collect();
    if kinds.contains(&Kind::Server.as_str()) {
        app.servers_changed.notify_one();
    }
    for (kind, id) in &note.changes {
        if let Some(k) = Kind::parse(kind) {
            let _ = app.changes.send(crate::watch::Change {
                kind: k.as_str(),
                id: id.clone(),
            });
        }
    }
    if kinds.contains(&Kind::Run.as_str()) {
        app.run_finished.send_modify(|n| *n = n.wrapping_add(1));
    }
    app.poke();
    if app.cluster.is_leader() && kinds.contains(&Kind::Rollout.as_str()) {
        crate::app::rollouts::resume_all(app).await;
    }
}
