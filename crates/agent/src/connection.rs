//! The agent at work: runs execute in their own tasks and write to the [`Journal`]; the
//! connection only moves messages, sending what the journal holds that the control plane lacks.
//!
//! Tasks, all in one process:
//! - the **connection** (one at a time; reconnects with backoff): hello with the journal's open
//!   runs, resume from `Welcome.resume`, then a loop over control messages, journal changes
//!   (sent as output and finishes), local requests (tag commands) and heartbeats;
//! - one task per **run** (a script's process; see `runner`), writing output and the finish to
//!   the journal and waking the connection;
//! - the **boot worker**, which runs the current boot list in order;
//! - the **local socket** for `stratus-agent tag ...` (see `local`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use stratus_agent_proto::{
    AgentMessage, ControlMessage, Hello, Outcome, Output, PROTOCOL_VERSION, RECONNECT_MAX_SECS, RECONNECT_MIN_SECS,
    RefusedReason, RunFinished, ScriptRun, decode_control, encode_agent, split_output,
};
use stratus_types::RunId;
use stratus_types::script::Frequency;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::{AgentConfig, UserData};
use crate::journal::{Journal, Known, Recorded, Started, succeeded};
use crate::{AgentError, enrol, runner};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a tag command waits for the connection and then for the answer, by default.
pub const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// What the tasks share.
pub struct Agent {
    pub cfg: AgentConfig,
    pub journal: Journal,
    /// The journal changed (output, a finish): the connection has something to send.
    changed: Notify,
    /// Cancel switches of the runs executing now.
    cancels: Mutex<HashMap<RunId, watch::Sender<bool>>>,
    /// The latest boot list, for the boot worker.
    boot: watch::Sender<Vec<ScriptRun>>,
    /// The desired state as recorded (generation, tags).
    pub recorded: Mutex<Recorded>,
    /// Requests from local commands, for the connection to send.
    requests: mpsc::Sender<(AgentMessage, oneshot::Sender<ControlMessage>)>,
    requests_rx: tokio::sync::Mutex<mpsc::Receiver<(AgentMessage, oneshot::Sender<ControlMessage>)>>,
    /// Whether a connection is up, and to where.
    pub connected: watch::Sender<Option<String>>,
    next_request: std::sync::atomic::AtomicU64,
    /// This agent's server, once the user-data was read.
    server: Mutex<Option<stratus_types::ServerId>>,
    user_data: Mutex<Option<UserData>>,
    /// Managed files this process applied.
    files: tokio::sync::Mutex<crate::files::Applied>,
    /// The current desired state's managed files, for the re-check worker.
    desired_files: Mutex<Vec<stratus_agent_proto::ManagedFile>>,
    /// The instance is being (or was) prepared for an image capture: nothing new starts.
    preparing: std::sync::atomic::AtomicBool,
    /// The preparation is done: the connection ends and the agent goes quiet.
    prepared: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("state_dir", &self.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let journal = Journal::open(&cfg.state_dir).map_err(|e| AgentError::State {
            path: cfg.state_dir.display().to_string(),
            source: e,
        })?;
        let recorded = journal.recorded();
        let (requests, requests_rx) = mpsc::channel(16);
        Ok(Arc::new(Self {
            cfg,
            journal,
            changed: Notify::new(),
            cancels: Mutex::default(),
            boot: watch::Sender::new(vec![]),
            recorded: Mutex::new(recorded),
            requests,
            requests_rx: tokio::sync::Mutex::new(requests_rx),
            connected: watch::Sender::new(None),
            next_request: std::sync::atomic::AtomicU64::new(1),
            server: Mutex::new(None),
            user_data: Mutex::new(None),
            files: Default::default(),
            desired_files: Mutex::default(),
            preparing: Default::default(),
            prepared: Default::default(),
        }))
    }

    fn state_err(&self, e: std::io::Error) -> AgentError {
        AgentError::State {
            path: self.cfg.state_dir.display().to_string(),
            source: e,
        }
    }

    /// Send a request over the live connection (waiting up to `request_wait` for one) and
    /// wait for its answer.
    /// Send a message that expects no answer (sent by the connection when there is one; up to
    /// the channel's capacity wait for the next one).
    pub fn send_event(&self, msg: AgentMessage) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.requests.try_send((msg, tx)).is_ok()
    }

    pub async fn request(&self, make: impl FnOnce(u64) -> AgentMessage) -> Result<ControlMessage, String> {
        let mut up = self.connected.subscribe();
        let wait = self.cfg.request_wait;
        let url = match tokio::time::timeout(wait, up.wait_for(Option::is_some)).await {
            Ok(Ok(u)) => u.clone().unwrap_or_default(),
            _ => {
                return Err(format!(
                    "not connected to the control plane (waited {} s); try again",
                    wait.as_secs()
                ));
            }
        };
        let id = self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((make(id), tx))
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(format!("the connection to {url} dropped before an answer; try again")),
            Err(_) => Err(format!("no answer from {url} within {} s", wait.as_secs())),
        }
    }
}

/// Run forever: recover the journal, start the boot worker and the local socket, then connect,
/// serve, and reconnect with backoff. Returns `Ok` when the control plane says the server is
/// terminated, and an error for what no retry can fix (a refused enrolment, a wrong server).
pub async fn run_forever(cfg: AgentConfig) -> Result<(), AgentError> {
    let agent = Agent::new(cfg)?;
    let cut = agent.journal.recover().map_err(|e| agent.state_err(e))?;
    for run in cut {
        tracing::warn!(%run, "a run was cut short by an agent restart; reported interrupted");
    }
    tokio::spawn(boot_worker(agent.clone()));
    tokio::spawn(recheck_worker(agent.clone()));
    crate::local::serve(agent.clone())?;
    let mut failures = 0u32;
    let mut not_yet = 0u32;
    loop {
        match once(&agent).await {
            Err(e @ AgentError::Enrolment { .. }) => return Err(e),
            // Quick retries (100-200 ms) for a while, then the usual backoff.
            Err(AgentError::NotYet(m)) if not_yet < NOT_YET_RETRIES => {
                not_yet += 1;
                tracing::debug!(message = %m, "enrolment not possible yet; retrying");
                let mut b = [0u8; 1];
                let _ = getrandom::fill(&mut b);
                tokio::time::sleep(Duration::from_millis(100 + u64::from(b[0]) * 100 / 255)).await;
                continue;
            }
            Err(AgentError::Refused(RefusedReason::Terminated, m)) => {
                tracing::info!(message = %m, "the server is terminated; the agent stops");
                return Ok(());
            }
            Err(e @ AgentError::Refused(RefusedReason::WrongServer, _)) => return Err(e),
            Err(AgentError::Prepared) => {
                // The answer is out; the identity goes last, then the agent waits to be
                // stopped. Exiting would make the instance's init start it again, to enrol
                // with a token already used.
                if let Err(e) = std::fs::remove_dir_all(&agent.cfg.state_dir) {
                    tracing::warn!(error = %e, "cannot remove the state directory");
                }
                tracing::info!("prepared for an image capture; waiting to be stopped");
                std::future::pending::<()>().await;
            }
            Err(e) => tracing::warn!(error = %e, "connection ended"),
            Ok(()) => failures = 0,
        }
        agent.connected.send_replace(None);
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// Quick enrolment retries while the control plane records the launch (about 10 s worth).
const NOT_YET_RETRIES: u32 = 70;

/// Exponential backoff with full jitter: uniform in [min, min(max, min·2^n)].
pub fn backoff(failures: u32) -> Duration {
    let cap = u64::from(RECONNECT_MAX_SECS).min(u64::from(RECONNECT_MIN_SECS) << failures.min(6)) * 1000;
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let min = u64::from(RECONNECT_MIN_SECS) * 1000;
    Duration::from_millis(min + u64::from_le_bytes(b) % (cap.saturating_sub(min) + 1))
}

/// The boot identity: the kernel's boot id and the start time of PID 1. Inside a PID
/// namespace (a local cloud's instance shares the host's kernel) the kernel boot id stays the
/// same across an instance reboot, while PID 1 — the instance's init — starts again; on a VM
/// both change. Either way a reboot gives a new value.
pub fn boot_id() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let init = crate::journal::start_time(1).unwrap_or(0);
    format!("{kernel}:{init}")
}

/// Where the connection stands on one open run.
#[derive(Debug, Default)]
struct Cursor {
    offset: u64,
    next_seq: u64,
    started_sent: bool,
    finished_sent: bool,
}

async fn once(agent: &Arc<Agent>) -> Result<(), AgentError> {
    let cfg = &agent.cfg;
    // Read once: on a local cloud the metadata service goes away with the control plane, and
    // the user-data does not change.
    let known = agent.user_data.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ud = match known {
        Some(ud) => ud,
        None => {
            let ud = enrol::user_data(cfg).await?;
            *agent.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(ud.server_id);
            *agent.user_data.lock().unwrap_or_else(|e| e.into_inner()) = Some(ud.clone());
            ud
        }
    };
    let tls = tls_config(agent, &ud)?;
    let token = enrol::credential(cfg, &ud, &tls).await?;
    let mut ws = connect(&ud, &token, &tls).await?;
    let open = agent.journal.open_runs().map_err(|e| agent.state_err(e))?;
    let last_generation = agent.recorded.lock().unwrap_or_else(|e| e.into_inner()).generation;
    send(
        &mut ws,
        AgentMessage::Hello(Hello {
            versions: vec![PROTOCOL_VERSION],
            agent_version: env!("CARGO_PKG_VERSION").into(),
            server: ud.server_id,
            boot_id: boot_id(),
            last_generation,
            unacked: open
                .iter()
                .copied()
                .take(stratus_agent_proto::limits::MAX_RUNS)
                .collect(),
        }),
    )
    .await?;
    let welcome = match recv(&mut ws).await? {
        ControlMessage::Welcome(w) => w,
        ControlMessage::Refused(r) => return Err(AgentError::Refused(r.reason, r.message)),
        other => return Err(AgentError::Protocol(format!("expected welcome, got {other:?}"))),
    };
    let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
    let mut cursors: BTreeMap<RunId, Cursor> = open.iter().map(|r| (*r, Cursor::default())).collect();
    for r in &welcome.resume {
        if r.finished {
            // The control plane holds the finish (or has nowhere to put it): drop it. A run
            // still executing is left to finish, unreported.
            let _ = agent.journal.close(r.run).map_err(|e| agent.state_err(e));
            cursors.remove(&r.run);
        } else if let Some(c) = cursors.get_mut(&r.run) {
            c.next_seq = r.next_seq;
        }
    }
    tracing::info!(server = %ud.server_id, "connected");
    agent.connected.send_replace(Some(ud.stratus_url.clone()));
    let mut requests = agent.requests_rx.lock().await;
    let mut pending: HashMap<u64, oneshot::Sender<ControlMessage>> = HashMap::new();
    let mut tick = tokio::time::interval(heartbeat);
    loop {
        flush(agent, &mut ws, &mut cursors).await?;
        if agent.prepared.load(std::sync::atomic::Ordering::SeqCst) {
            // The preparation's answer was queued before the flag was set: send it, then go.
            while let Ok((msg, _)) = requests.try_recv() {
                send(&mut ws, msg).await?;
            }
            let _ = ws.close(None).await;
            return Err(AgentError::Prepared);
        }
        tokio::select! {
            msg = recv(&mut ws) => {
                let msg = msg?;
                if let Some(id) = request_id(&msg) {
                    if let ControlMessage::TagChangeResult { tags, .. } = &msg {
                        let mut rec = agent.recorded.lock().unwrap_or_else(|e| e.into_inner());
                        rec.tags = tags.clone();
                        let _ = agent.journal.record(&rec);
                    }
                    if let Some(tx) = pending.remove(&id) {
                        let _ = tx.send(msg);
                    }
                    continue;
                }
                handle(agent, &mut ws, &mut cursors, msg).await?;
            }
            () = agent.changed.notified() => {}
            Some((msg, answer)) = requests.recv() => {
                if let AgentMessage::TagChange { request_id, .. } | AgentMessage::TagQuery { request_id, .. } = &msg {
                    pending.insert(*request_id, answer);
                }
                send(&mut ws, msg).await?;
            }
            _ = tick.tick() => send(&mut ws, AgentMessage::Heartbeat { at: chrono::Utc::now() }).await?,
        }
    }
}

fn request_id(msg: &ControlMessage) -> Option<u64> {
    match msg {
        ControlMessage::TagChangeResult { request_id, .. }
        | ControlMessage::TagQueryResult { request_id, .. }
        | ControlMessage::RequestFailed { request_id, .. } => Some(*request_id),
        _ => None,
    }
}

async fn handle(
    agent: &Arc<Agent>,
    ws: &mut Ws,
    cursors: &mut BTreeMap<RunId, Cursor>,
    msg: ControlMessage,
) -> Result<(), AgentError> {
    match msg {
        ControlMessage::DesiredState(d) => {
            let held = {
                let mut rec = agent.recorded.lock().unwrap_or_else(|e| e.into_inner());
                if d.generation.supersedes(rec.generation) {
                    *rec = Recorded {
                        generation: d.generation,
                        tags: d.tags.clone(),
                    };
                    agent.journal.record(&rec).map_err(|e| agent.state_err(e))?;
                }
                rec.generation
            };
            // The current generation's boot list goes to the worker even when repeated: an
            // agent restarted mid-boot continues it (runs already in the journal are skipped).
            if d.generation >= held {
                // Files first: a boot script may start the service whose configuration this is.
                let mut applied = agent.files.lock().await;
                let source = file_source(agent);
                *agent.desired_files.lock().unwrap_or_else(|e| e.into_inner()) = d.files.clone();
                for f in &d.files {
                    let status = applied.apply(f, source.as_ref()).await;
                    if let Some(e) = &status.error {
                        tracing::warn!(path = %f.path, error = %e, "managed file");
                    }
                    let msg = AgentMessage::FileStatus {
                        path: f.path.clone(),
                        sha256: f.sha256(),
                        applied: status.applied,
                        error: status
                            .error
                            .map(|e| e.chars().take(stratus_agent_proto::limits::MAX_MESSAGE / 2).collect()),
                    };
                    send(ws, msg).await?;
                }
                drop(applied);
                // Managed SSH: accounts and keys before the boot runs, so a boot script can
                // rely on them; a revocation applies as soon as it arrives.
                if let Some(logins) = d.logins.clone() {
                    let host = crate::accounts::Host::new(&agent.cfg.state_dir);
                    let report = tokio::task::spawn_blocking(move || crate::accounts::apply(&host, &logins))
                        .await
                        .unwrap_or_default();
                    if !report.revoked.is_empty() {
                        tracing::info!(accounts = ?report.revoked, "logins revoked");
                    }
                    for p in &report.problems {
                        tracing::warn!(problem = %p, "managed SSH");
                    }
                }
                for r in &d.boot {
                    cursors.entry(r.run).or_default();
                }
                agent.boot.send_replace(d.boot);
            }
            send(ws, AgentMessage::Applied { generation: held }).await?;
        }
        ControlMessage::RunScript(r) => {
            if agent.journal.accept(r.run).map_err(|e| agent.state_err(e))? {
                cursors.entry(r.run).or_default();
                let agent = agent.clone();
                tokio::spawn(async move { execute(&agent, r).await });
            }
        }
        ControlMessage::PrepareImage(p) => {
            if agent.preparing.swap(true, std::sync::atomic::Ordering::SeqCst) {
                tracing::warn!("an image preparation is already under way; ignoring a second one");
            } else {
                tokio::spawn(prepare_image(agent.clone(), p));
            }
        }
        ControlMessage::Cancel { run } => cancel(agent, run)?,
        ControlMessage::AckFinished { run } => {
            agent.journal.close(run).map_err(|e| agent.state_err(e))?;
            cursors.remove(&run);
        }
        ControlMessage::Refused(r) => return Err(AgentError::Refused(r.reason, r.message)),
        // Acknowledged output changes nothing here: what to resend is decided at the next
        // resume, from the control plane's own count.
        ControlMessage::AckOutput { .. } | ControlMessage::Heartbeat { .. } | ControlMessage::Welcome(_) => {}
        ControlMessage::TagChangeResult { .. }
        | ControlMessage::TagQueryResult { .. }
        | ControlMessage::RequestFailed { .. } => {}
    }
    Ok(())
}

/// Prepare the instance for an image capture (see [`crate::prepare`]) and answer. A refusal
/// changes nothing; success sets `prepared`, which ends the connection.
async fn prepare_image(agent: Arc<Agent>, p: stratus_agent_proto::PrepareImage) {
    let answer = match prepare_steps(&agent, p).await {
        Ok(removed) => stratus_agent_proto::ImagePrepared {
            removed,
            ..Default::default()
        },
        Err((error, found)) => {
            tracing::warn!(error = %error, "image preparation refused");
            agent.preparing.store(false, std::sync::atomic::Ordering::SeqCst);
            stratus_agent_proto::ImagePrepared {
                error: Some(error),
                secret_found_in: found,
                removed: vec![],
            }
        }
    };
    let ok = answer.error.is_none();
    let (tx, _rx) = oneshot::channel();
    let _ = agent.requests.send((AgentMessage::ImagePrepared(answer), tx)).await;
    if ok {
        tracing::info!("prepared for an image capture");
        agent.prepared.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    agent.changed.notify_one();
}

type Refusal = (String, Vec<String>);

async fn prepare_steps(agent: &Agent, p: stratus_agent_proto::PrepareImage) -> Result<Vec<String>, Refusal> {
    let running: Vec<RunId> = agent
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .collect();
    if let Some(run) = running.first() {
        return Err((
            format!("run {run} is still running; wait for it or cancel it, then rebundle"),
            vec![],
        ));
    }
    let target = crate::prepare::Target {
        root: agent.cfg.image_root.clone(),
        state_dir: agent.cfg.state_dir.clone(),
        accounts: crate::accounts::Host::new(&agent.cfg.state_dir),
    };
    let scan_target = target.clone();
    let found = tokio::task::spawn_blocking(move || {
        let secrets: Vec<&[u8]> = p.secrets.iter().map(|s| s.expose().as_bytes()).collect();
        crate::prepare::scan(&scan_target.root, &scan_target.state_dir, &secrets)
    })
    .await
    .map_err(|e| (format!("the scan failed: {e}"), vec![]))?
    .map_err(|e| (format!("cannot scan the file system: {e}"), vec![]))?;
    if !found.is_empty() {
        return Err((
            format!(
                "a secret input's value is stored in {} file(s) ({}); the image would carry it. Have the boot                  scripts write it at every boot instead, or remove it, then rebundle",
                found.len(),
                found.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
            found,
        ));
    }
    tokio::task::spawn_blocking(move || crate::prepare::clean(&target))
        .await
        .map_err(|e| (format!("the clean-up failed: {e}"), vec![]))?
        .map_err(|e| (format!("the clean-up failed: {e}"), vec![]))
}

/// Stop a run: signal a running one; a boot run not yet started is recorded cancelled.
fn cancel(agent: &Agent, run: RunId) -> Result<(), AgentError> {
    let switch = agent
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&run)
        .cloned();
    if let Some(s) = switch {
        s.send_replace(true);
        return Ok(());
    }
    let queued_boot = agent.boot.borrow().iter().any(|r| r.run == run);
    if queued_boot && agent.journal.accept(run).map_err(|e| agent.state_err(e))? {
        finish_without_running(agent, run, Outcome::Cancelled, "cancelled before it started")?;
    }
    Ok(())
}

/// Send what the journal holds that this connection has not sent: run by run in the order
/// they were created (ids are time-ordered), each in its own order.
async fn flush(agent: &Agent, ws: &mut Ws, cursors: &mut BTreeMap<RunId, Cursor>) -> Result<(), AgentError> {
    for (run, c) in cursors.iter_mut() {
        if c.finished_sent {
            continue;
        }
        if agent.journal.known(*run) != Known::Open {
            continue;
        }
        if !c.started_sent
            && let Some(s) = agent.journal.started(*run)
        {
            send(
                ws,
                AgentMessage::RunStarted {
                    run: *run,
                    started_at: s.at,
                },
            )
            .await?;
            c.started_sent = true;
        }
        // Read the finish first: output written before it is then all on disk.
        let finished = agent.journal.finished(*run);
        let (chunks, offset) = agent
            .journal
            .read_output(*run, c.offset)
            .map_err(|e| agent.state_err(e))?;
        c.offset = offset;
        for out in chunks {
            if out.seq < c.next_seq {
                continue; // the control plane has it
            }
            c.next_seq = out.seq + 1;
            send(ws, AgentMessage::Output(out)).await?;
        }
        if let Some(f) = finished
            && c.next_seq >= f.output_chunks
        {
            send(ws, AgentMessage::RunFinished(f)).await?;
            c.finished_sent = true;
        }
    }
    Ok(())
}

/// Record a run as ended without running it (skipped, or cancelled before its turn).
fn finish_without_running(agent: &Agent, run: RunId, outcome: Outcome, why: &str) -> Result<(), AgentError> {
    agent
        .journal
        .finish(&RunFinished {
            run,
            outcome,
            exit_code: None,
            signal: None,
            error: Some(why.into()),
            finished_at: chrono::Utc::now(),
            output_chunks: 0,
            output_bytes: 0,
        })
        .map_err(|e| agent.state_err(e))?;
    agent.changed.notify_one();
    Ok(())
}

/// The boot worker: run the current boot list in order, each run once, stopping at the first
/// failure (the rest are recorded cancelled); per-instance scripts that already succeeded on
/// this instance are skipped.
/// How the agent fetches sourced file content (once it knows its control plane).
fn file_source(agent: &Agent) -> Option<crate::files::Source> {
    let ud = agent.user_data.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    let tls = tls_config(agent, &ud).ok()?;
    Some(crate::files::Source {
        http: enrol::http(&tls).ok()?,
        base: ud.stratus_url.clone(),
        cache: crate::fetch::cache_dir(&agent.cfg.state_dir),
    })
}

/// Files with a re-check interval (watched files) are compared with their content that often;
/// one that drifted (edited or removed on the instance) gets its content back from the
/// verified cache, and the control plane hears about it.
async fn recheck_worker(agent: Arc<Agent>) {
    let mut last: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if agent.preparing.load(std::sync::atomic::Ordering::SeqCst) {
            continue; // nothing is written (or cached) while the instance becomes an image
        }
        let files = agent.desired_files.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = std::time::Instant::now();
        let due: Vec<_> = files
            .into_iter()
            .filter(|f| {
                f.recheck_secs.is_some_and(|secs| {
                    let at = *last.entry(f.path.clone()).or_insert(now);
                    now.duration_since(at) >= Duration::from_secs(u64::from(secs))
                })
            })
            .collect();
        for f in due {
            last.insert(f.path.clone(), now);
            if crate::files::file_sha256(std::path::Path::new(&f.path)).as_deref() == Some(f.sha256().as_str()) {
                continue;
            }
            tracing::warn!(path = %f.path, "a watched file drifted; putting its content back");
            let status = {
                let mut applied = agent.files.lock().await;
                applied.forget(&f.path);
                applied.apply(&f, file_source(&agent).as_ref()).await
            };
            let msg = AgentMessage::FileStatus {
                path: f.path.clone(),
                sha256: f.sha256(),
                applied: status.applied,
                error: status
                    .error
                    .map(|e| e.chars().take(stratus_agent_proto::limits::MAX_MESSAGE / 2).collect()),
            };
            agent.send_event(msg);
        }
    }
}

async fn boot_worker(agent: Arc<Agent>) {
    let mut lists = agent.boot.subscribe();
    loop {
        let list = lists.borrow_and_update().clone();
        let mut failed: Option<String> = None;
        let mut next = None;
        for r in &list {
            match agent.journal.known(r.run) {
                Known::Done(true) => continue,
                Known::Done(false) => failed = failed.or(Some(r.name.to_string())),
                Known::Open => match agent.journal.finished(r.run) {
                    Some(f) if succeeded(&f) => continue,
                    Some(_) => failed = failed.or(Some(r.name.to_string())),
                    None => break, // running: wait for it
                },
                Known::No => {
                    next = Some(r.clone());
                    break;
                }
            }
        }
        let Some(r) = next else {
            if lists.changed().await.is_err() {
                return;
            }
            continue;
        };
        let step = async {
            if !agent.journal.accept(r.run).map_err(|e| agent.state_err(e))? {
                return Ok(());
            }
            if let Some(name) = &failed {
                let why = format!("not run: boot script {name} failed earlier in this boot");
                return finish_without_running(&agent, r.run, Outcome::Cancelled, &why);
            }
            if matches!(r.frequency, Frequency::PerInstance | Frequency::PerImage)
                && agent.journal.per_instance_done(r.name.as_str())
            {
                let why = "already succeeded on this instance (per-instance)";
                return finish_without_running(&agent, r.run, Outcome::Skipped, why);
            }
            execute(&agent, r.clone()).await;
            Ok::<_, AgentError>(())
        };
        if let Err(e) = step.await {
            tracing::error!(error = %e, "boot worker");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Run one accepted script, journaling its start, output and end.
async fn execute(agent: &Arc<Agent>, r: ScriptRun) {
    if let Err(e) = try_execute(agent, &r).await {
        tracing::error!(run = %r.run, error = %e, "cannot journal a run");
    }
    agent.cancels.lock().unwrap_or_else(|e| e.into_inner()).remove(&r.run);
    agent.changed.notify_one();
}

async fn try_execute(agent: &Arc<Agent>, r: &ScriptRun) -> Result<(), AgentError> {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    agent
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(r.run, cancel_tx);
    let (started_tx, started_rx) = oneshot::channel();
    let (tx, mut rx) = mpsc::channel(64);
    let work = agent.cfg.state_dir.clone();
    let script = r.clone();
    let ctl = runner::Control {
        started: Some(started_tx),
        cancel: cancel_rx,
        env: vec![
            (
                "STRATUS_AGENT_SOCKET".into(),
                agent.cfg.socket_path().display().to_string(),
            ),
            ("STRATUS_SERVER_ID".into(), server_id(agent).unwrap_or_default()),
        ],
    };
    let job = match artifacts(agent, r).await {
        Ok(paths) => {
            let mut ctl = ctl;
            ctl.env.extend(paths);
            tokio::spawn(async move { runner::run(&script, &work, tx, ctl).await })
        }
        // Not started: the run fails with the reason. Its control goes (so nobody waits for a
        // process id) and so does the output sender (so there is no output).
        Err(error) => tokio::spawn(async move {
            drop(ctl);
            drop(tx);
            runner::Ended {
                exit_code: None,
                signal: None,
                error: Some(error),
                timed_out: false,
                cancelled: false,
            }
        }),
    };
    if let Ok(pid) = started_rx.await {
        agent
            .journal
            .mark_started(r.run, &Started::now(pid))
            .map_err(|e| agent.state_err(e))?;
        agent.changed.notify_one();
    }
    let (mut seq, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    while let Some(chunk) = rx.recv().await {
        for piece in split_output(&chunk.data) {
            if bytes + piece.len() as u64 > crate::journal::MAX_RUN_OUTPUT {
                dropped += piece.len() as u64;
                continue;
            }
            bytes += piece.len() as u64;
            let out = Output {
                run: r.run,
                seq,
                stream: chunk.stream,
                data: piece.to_string(),
                at: chrono::Utc::now(),
            };
            agent.journal.append(&out).map_err(|e| agent.state_err(e))?;
            seq += 1;
            agent.changed.notify_one();
        }
    }
    if dropped > 0 {
        let note = format!(
            "\n[stratus-agent] {dropped} more bytes of output were dropped (limit {} MiB)\n",
            crate::journal::MAX_RUN_OUTPUT >> 20
        );
        bytes += note.len() as u64;
        let out = Output {
            run: r.run,
            seq,
            stream: stratus_agent_proto::OutputStream::Stderr,
            data: note,
            at: chrono::Utc::now(),
        };
        agent.journal.append(&out).map_err(|e| agent.state_err(e))?;
        seq += 1;
    }
    let ended = job
        .await
        .map_err(|e| AgentError::Protocol(format!("script task: {e}")))?;
    let outcome = match (&ended.exit_code, &ended.signal, &ended.error) {
        _ if ended.timed_out => Outcome::TimedOut,
        _ if ended.cancelled => Outcome::Cancelled,
        (_, _, Some(_)) => Outcome::FailedToStart,
        (Some(_), _, _) => Outcome::Exited,
        (None, Some(_), _) => Outcome::Signalled,
        _ => Outcome::FailedToStart,
    };
    let finished = RunFinished {
        run: r.run,
        outcome,
        // A script that was killed has a signal, not an exit code.
        exit_code: if ended.timed_out || ended.cancelled {
            None
        } else {
            ended.exit_code
        },
        signal: ended.signal,
        error: ended.error,
        finished_at: chrono::Utc::now(),
        output_chunks: seq,
        output_bytes: bytes,
    };
    if succeeded(&finished)
        && matches!(r.frequency, Frequency::PerInstance | Frequency::PerImage)
        && r.phase == stratus_types::run::Phase::Boot
    {
        agent
            .journal
            .mark_per_instance(r.name.as_str())
            .map_err(|e| agent.state_err(e))?;
    }
    agent.journal.finish(&finished).map_err(|e| agent.state_err(e))
}

/// Fetch the run's artifact inputs: `(variable, path)` for each, or why one failed.
async fn artifacts(agent: &Agent, r: &ScriptRun) -> Result<Vec<(String, String)>, String> {
    let wanted: Vec<_> = r
        .env
        .iter()
        .filter_map(|v| match &v.value {
            stratus_agent_proto::EnvValue::Artifact(a) => Some((v.name.clone(), a)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    let ud = agent
        .user_data
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or("the agent has not read its user-data yet")?;
    let tls = tls_config(agent, &ud).map_err(|e| e.to_string())?;
    let http = enrol::http(&tls).map_err(|e| e.to_string())?;
    let cache = crate::fetch::cache_dir(&agent.cfg.state_dir);
    let mut out = vec![];
    for (name, a) in wanted {
        let path = crate::fetch::artifact(&http, &ud.stratus_url, a, &cache).await?;
        out.push((name, path.display().to_string()));
    }
    Ok(out)
}

fn server_id(agent: &Agent) -> Option<String> {
    let s = agent.server.lock().unwrap_or_else(|e| e.into_inner());
    s.map(|id| id.to_string())
}

/// The TLS configuration: the system's CAs, `--ca-file` and the user-data's `ca_pem`.
fn tls_config(agent: &Agent, ud: &UserData) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let mut extra: Vec<Vec<u8>> = vec![];
    if let Some(f) = &agent.cfg.ca_file {
        extra.push(std::fs::read(f).map_err(|e| AgentError::Identity {
            what: f.display().to_string(),
            detail: e.to_string(),
        })?);
    }
    if let Some(pem) = &ud.ca_pem {
        extra.push(pem.as_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = extra.iter().map(Vec::as_slice).collect();
    crate::tls::client_config(&refs)
}

async fn connect(ud: &UserData, token: &str, tls: &Arc<rustls::ClientConfig>) -> Result<Ws, AgentError> {
    let base = ud.stratus_url.trim_end_matches('/');
    let url = format!("{}/api/v1/agent/connect", base.replacen("http", "ws", 1));
    let unreachable = |e: String| AgentError::Unreachable {
        url: url.clone(),
        detail: e,
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| unreachable(e.to_string()))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| unreachable("bad credential".into()))?;
    req.headers_mut().insert("authorization", auth);
    let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
        .await
        .map_err(|e| unreachable(crate::error_chain(&e)))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, msg: AgentMessage) -> Result<(), AgentError> {
    let text = encode_agent(&msg).map_err(|e| AgentError::Protocol(e.to_string()))?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| AgentError::Protocol(format!("send: {e}")))
}

async fn recv(ws: &mut Ws) -> Result<ControlMessage, AgentError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return decode_control(t.as_str()).map_err(|e| AgentError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(AgentError::Protocol("the control plane closed the connection".into()));
            }
            Some(Err(e)) => return Err(AgentError::Protocol(e.to_string())),
            Some(Ok(_)) => {}
        }
    }
}
