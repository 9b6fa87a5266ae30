//! The agent gateway's logic: what a connected agent is told and what its reports change.
//! The WebSocket plumbing is in `http/agent.rs`; this is transport-free.
//!
//! 1. After `hello`, a booting server's agent gets its desired state: generation 1 with the
//!    boot scripts as runs. The runs are created once (`queued`) on the first connection and
//!    re-sent with the same ids on a reconnect, so nothing is created twice.
//! 2. Each `run_started`, `output` and `run_finished` updates that run, after checking it
//!    belongs to the agent's own server (anything else is a protocol error: the connection is
//!    closed, no other server is touched). Output is masked with the run's secrets before it
//!    is stored; a chunk whose `seq` was already stored is a duplicate and only acknowledged.
//! 3. When every boot run has succeeded the server is `operational`; the first that fails
//!    strands it with the script's name, exit code and the tail of its output.

use std::collections::HashMap;

use chrono::Utc;
use stratus_agent_proto::{ControlMessage, EnvVar, Masker, ScriptRun};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::input::InputValue;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerState, StrandedReason};
use stratus_types::template::ServerTemplate;
use stratus_types::{RunId, ServerId};

use super::{App, AppError};

/// A connected agent's runs: the maskers that keep their secrets out of stored output, and
/// the next output `seq` expected per run.
#[derive(Debug, Default)]
pub struct Session {
    pub server: ServerId,
    maskers: HashMap<RunId, Masker>,
    next_seq: HashMap<RunId, u64>,
}

impl Session {
    pub fn new(server: ServerId) -> Self {
        Self {
            server,
            ..Self::default()
        }
    }

    /// Track a run sent to the agent (its secrets, its output sequence).
    pub fn track(&mut self, run: &ScriptRun) {
        self.maskers.insert(run.run, Masker::for_run(run));
        self.next_seq.entry(run.run).or_insert(0);
    }
}

/// The connected agents: a way to push a message to a server's agent.
#[derive(Debug, Default)]
pub struct Hub {
    agents: std::sync::Mutex<HashMap<ServerId, (u64, tokio::sync::mpsc::Sender<ControlMessage>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Hub {
    /// Register a connection; the returned key unregisters exactly this one (a newer
    /// connection of the same agent replaces it).
    pub fn register(&self, server: ServerId, tx: tokio::sync::mpsc::Sender<ControlMessage>) -> u64 {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(server, (key, tx));
        key
    }

    pub fn unregister(&self, server: ServerId, key: u64) {
        let mut a = self.lock();
        if a.get(&server).is_some_and(|(k, _)| *k == key) {
            a.remove(&server);
        }
    }

    /// Push to the server's agent; false when it is not connected.
    pub async fn push(&self, server: ServerId, msg: ControlMessage) -> bool {
        let tx = self.lock().get(&server).map(|(_, tx)| tx.clone());
        match tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }

    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, (u64, tokio::sync::mpsc::Sender<ControlMessage>)>> {
        self.agents.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Start an operational script on a server through its connected agent.
pub async fn start_run(app: &App, actor: &super::Actor, req: &StartRun) -> Result<Run, AppError> {
    actor.require(super::OPERATOR)?;
    let server = super::resolve::server(&*app.store, &req.server).await?;
    if server.state != ServerState::Operational {
        return Err(AppError::BadState(format!(
            "server {}/{} is {}; operational scripts run on operational servers",
            server.deployment, server.name, server.state
        )));
    }
    let template = app
        .store
        .find_as::<ServerTemplate>("", server.template.as_str())
        .await?
        .ok_or_else(|| AppError::not_found("template", server.template.as_str()))?;
    if !template
        .spec
        .operational_scripts
        .iter()
        .any(|n| n.as_str() == req.script)
    {
        let offered: Vec<String> = template
            .spec
            .operational_scripts
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(AppError::invalid(
            "script",
            format!(
                "template {} offers no operational script {:?}; it offers: {}",
                template.spec.name,
                stratus_types::name::truncate(&req.script),
                if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                }
            ),
        ));
    }
    let script = app
        .store
        .find_as::<Script>("", &req.script)
        .await?
        .ok_or_else(|| AppError::not_found("script", &req.script))?;
    let run = super::runs::queued(&server, &script, Phase::Operational, &actor.name);
    let sr = ScriptRun {
        run: run.id,
        name: script.spec.name.clone(),
        body: script.spec.body.clone(),
        env: env_for(app, &server, &script).await?,
        timeout_secs: req.timeout_secs,
        phase: Phase::Operational,
        frequency: script.spec.frequency,
    };
    let target = format!("server/{}/{}", server.deployment, server.name);
    app.commit(vec![
        Change::insert(&run),
        super::audit(
            actor,
            "run.start",
            target,
            serde_json::json!({ "script": req.script, "run": run.id }),
        ),
    ])
    .await?;
    if !app.agents.push(server.id, ControlMessage::RunScript(sr)).await {
        let mut r = run.clone();
        r.status = RunStatus::Failed;
        r.finished_at = Some(Utc::now());
        r.append_output("[stratus] the server's agent is not connected; nothing ran\n");
        app.store.commit(vec![Change::update(&mut r, Utc::now())]).await?;
        return Err(AppError::BadState(format!(
            "the agent of server {}/{} is not connected; the run {} was recorded as failed",
            server.deployment, server.name, run.id
        )));
    }
    Ok(run)
}

/// What `POST /runs` takes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The operational script (one the server's template offers).
    pub script: String,
    /// Server id or `deployment/name`.
    pub server: String,
    /// Kill the script after this many seconds (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The boot scripts of a booting server as runs to send (created on first call).
pub async fn boot_runs(app: &App, session: &mut Session, server: &Server) -> Result<Vec<ScriptRun>, AppError> {
    if server.state != ServerState::Booting {
        return Ok(vec![]);
    }
    let Some(template) = app
        .store
        .find_as::<ServerTemplate>("", server.template.as_str())
        .await?
    else {
        return Ok(vec![]);
    };
    let q = Query {
        scope: Some(server.id.to_string()),
        ..Default::default()
    };
    let existing: Vec<Run> = app
        .store
        .list_all::<Run>(&q)
        .await?
        .into_iter()
        .filter(|r| r.phase == Phase::Boot)
        .collect();
    let mut out = vec![];
    let mut created = vec![];
    for name in &template.spec.boot_scripts {
        let Some(script) = app.store.find_as::<Script>("", name.as_str()).await? else {
            continue;
        };
        let run = match existing.iter().find(|r| &r.script == name) {
            Some(r) => r.clone(),
            None => {
                let r = super::runs::queued(server, &script, Phase::Boot, "system");
                created.push(Change::insert(&r));
                r
            }
        };
        let env = env_for(app, server, &script).await?;
        let sr = ScriptRun {
            run: run.id,
            name: script.spec.name.clone(),
            body: script.spec.body.clone(),
            env,
            timeout_secs: None,
            phase: Phase::Boot,
            frequency: script.spec.frequency,
        };
        session.track(&sr);
        out.push(sr);
    }
    if !created.is_empty() {
        app.store.commit(created).await?;
    }
    Ok(out)
}

/// The script's inputs as environment variables: text as is, `cred:` decrypted into the frame
/// (marked secret, so the agent masks it), `env:` read by the agent from its own environment.
async fn env_for(app: &App, s: &Server, script: &Script) -> Result<Vec<EnvVar>, AppError> {
    let mut env = vec![];
    for decl in &script.spec.inputs {
        // The server's value (template < deployment < server, merged at launch), else the
        // script's own default.
        let Some(value) = s.inputs.get(&decl.name).or(decl.default.as_ref()) else {
            continue;
        };
        env.push(match value {
            InputValue::Text(t) => EnvVar::text(&decl.name, t),
            InputValue::Cred(name) => {
                let secret = super::credentials::reveal(app, name.as_str()).await?;
                EnvVar::secret(&decl.name, secret.expose())
            }
            InputValue::Env(var) => EnvVar::instance(&decl.name, var),
            InputValue::Artifact { .. } => {
                return Err(AppError::BadState(format!(
                    "input {} is an artifact; artifact inputs are not delivered yet",
                    decl.name
                )));
            }
        });
    }
    Ok(env)
}

/// The run, if it is this session's server's; otherwise a protocol error.
async fn own_run(app: &App, session: &Session, run: RunId) -> Result<Run, AppError> {
    let r: Option<Run> = app.store.get_as(&run.to_string()).await?;
    match r {
        Some(r) if r.server == session.server => Ok(r),
        _ => Err(AppError::Forbidden(format!("run {run} is not this agent's"))),
    }
}

pub async fn run_started(app: &App, session: &Session, run: RunId, at: chrono::DateTime<Utc>) -> Result<(), AppError> {
    let mut r = own_run(app, session, run).await?;
    if r.status == RunStatus::Queued {
        r.status = RunStatus::Running;
        r.started_at = Some(at);
        app.store.commit(vec![Change::update(&mut r, Utc::now())]).await?;
    }
    Ok(())
}

/// Store one output chunk (masked). Returns false for a duplicate (already stored).
pub async fn output(app: &App, session: &mut Session, run: RunId, seq: u64, data: &str) -> Result<bool, AppError> {
    let mut r = own_run(app, session, run).await?;
    let next = session.next_seq.entry(run).or_insert(0);
    if seq < *next {
        return Ok(false);
    }
    if seq > *next {
        return Err(AppError::BadState(format!(
            "run {run}: output {seq} arrived before {next}"
        )));
    }
    let masked = match session.maskers.get_mut(&run) {
        Some(m) => m.push(data),
        None => data.to_string(),
    };
    r.append_output(&masked);
    app.store.commit(vec![Change::update(&mut r, Utc::now())]).await?;
    *next += 1;
    Ok(true)
}

/// Record the end of a run and move the server on when its boot is decided.
pub async fn run_finished(
    app: &App,
    session: &mut Session,
    done: &stratus_agent_proto::RunFinished,
) -> Result<(), AppError> {
    let mut r = own_run(app, session, done.run).await?;
    if !r.status.is_finished() {
        if let Some(m) = session.maskers.get_mut(&done.run) {
            let rest = m.finish();
            r.append_output(&rest);
        }
        r.status = done.status();
        r.exit_code = done.exit_code;
        r.finished_at = Some(done.finished_at);
        if let Some(e) = &done.error {
            r.append_output(&format!("\n[stratus-agent] {e}\n"));
        }
        app.store.commit(vec![Change::update(&mut r, Utc::now())]).await?;
    }
    if r.phase == Phase::Boot {
        settle_boot(app, session.server).await?;
    }
    Ok(())
}

/// Move a booting server on if its boot is decided (all runs succeeded — also when it has
/// none — or one failed).
pub async fn settle_boot(app: &App, server: ServerId) -> Result<(), AppError> {
    let Some(mut s) = app.store.get_as::<Server>(&server.to_string()).await? else {
        return Ok(());
    };
    if s.state != ServerState::Booting {
        return Ok(());
    }
    let q = Query {
        scope: Some(server.to_string()),
        ..Default::default()
    };
    let runs: Vec<Run> = app
        .store
        .list_all::<Run>(&q)
        .await?
        .into_iter()
        .filter(|r| r.phase == Phase::Boot)
        .collect();
    let now = Utc::now();
    if let Some(failed) = runs
        .iter()
        .find(|r| r.status.is_finished() && r.status != RunStatus::Succeeded)
    {
        let tail: String = failed
            .output
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let reason = StrandedReason {
            step: failed.script.to_string(),
            message: format!("boot script {} {:?}", failed.script, failed.status).to_lowercase(),
            exit_code: failed.exit_code,
            output_tail: tail,
        };
        s.strand(reason, now).map_err(|e| AppError::BadState(e.to_string()))?;
    } else if runs.iter().all(|r| r.status == RunStatus::Succeeded) {
        s.move_to(ServerState::Operational, now)
            .map_err(|e| AppError::BadState(e.to_string()))?;
    } else {
        return Ok(());
    }
    app.commit(vec![Change::update(&mut s, now)]).await
}
