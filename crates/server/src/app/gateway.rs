//! The agent gateway's logic: what a connected agent is told and what its reports change.
//! The WebSocket plumbing is in `http/agent.rs`; this is transport-free.
//!
//! 1. **Hello.** The agent's unacknowledged runs are answered with where each stands in the
//!    store (`Welcome.resume`: the next output chunk expected, whether the finish is held), so
//!    it resends exactly what is missing. Its boot id is recorded; a new one on an operational
//!    server is a reboot (see [`hello`]).
//! 2. **Desired state.** The server's current boot runs and tags under a generation kept in
//!    its [`AgentRecord`]. The first boot's runs are created once (`queued`) on the first
//!    connection and re-sent with the same ids on a reconnect, so nothing is created twice; a
//!    tag change issues a new generation ([`desired_changed`]).
//! 3. **Reports.** Each `run_started`, `output` and `run_finished` updates that run, after
//!    checking it belongs to the agent's own server (anything else is a protocol error: the
//!    connection is closed, no other server is touched). Output is masked with the run's
//!    secrets before it is stored, as a row of the run-output table (the run's record is not
//!    rewritten; see `runs.rs`). The next chunk the store expects makes delivery exactly-once:
//!    a chunk below it is a duplicate (acknowledged, not stored), one above it a gap.
//! 4. **Boot.** When every run of the current boot has succeeded the server is `operational`;
//!    the first that fails strands it with the script's name, exit code and output tail.
//! 5. **Tags.** `stratus-agent tag add/remove` changes the agent's own server's tags;
//!    `tag query` sees the servers of its own deployment.

use std::collections::HashMap;

use chrono::Utc;
use stratus_agent_proto::{ControlMessage, DesiredState, Generation, Hello, Masker, PeerServer, Resume, ScriptRun};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::input::InputValue;
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::{Frequency, Script};
use stratus_types::server::{Server, ServerState};
use stratus_types::tag::{Selector, Tag};
use stratus_types::template::ServerTemplate;
use stratus_types::{RunId, ServerId};

use super::{App, AppError};

/// A connected agent's runs: the maskers that keep their secrets out of stored output.
#[derive(Debug, Default)]
pub struct Session {
    pub server: ServerId,
    maskers: HashMap<RunId, Masker>,
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
    }
}

pub use super::hub::MAX_SESSIONS_DEFAULT;

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
    // Per-run inputs: declared by the script, of a fitting kind, credentials that exist.
    let mut with_inputs = server.clone();
    let mut errs = stratus_types::Invalid::default();
    for (name, raw) in &req.inputs {
        let field = format!("inputs.{}", stratus_types::name::truncate(name));
        let Some(decl) = script.spec.inputs.iter().find(|d| &d.name == name) else {
            errs.push(stratus_types::FieldError::new(
                field,
                format!("script {} declares no such input", script.spec.name),
            ));
            continue;
        };
        match InputValue::parse(raw) {
            Ok(v) if v.fits(decl.kind) => {
                with_inputs.inputs.insert(name.clone(), v);
            }
            Ok(v) => errs.push(stratus_types::FieldError::new(
                field,
                format!("a {} value does not fit a {} input", v.kind(), decl.kind),
            )),
            Err(e) => errs.push(stratus_types::FieldError::new(field, e.problem)),
        }
    }
    errs.into_result()?;
    // A per-run `cred:` input hands the value to this run's script: the actor must be allowed
    // to attach it (the server's deployment is checked when the value is revealed below).
    let mut attached = super::credentials::Attachments::new();
    let place = format!("a run of {} on {}/{}", script.spec.name, server.deployment, server.name);
    let overrides: stratus_types::input::Inputs = req
        .inputs
        .keys()
        .filter_map(|k| with_inputs.inputs.get_key_value(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    super::credentials::attachments(&overrides, None, &place, &mut attached);
    if !attached.is_empty() {
        super::credentials::require_attach(actor, &super::credentials::all(app).await?, &attached)?;
    }
    let mut run = super::runs::queued(&with_inputs, &script, Phase::Operational, &actor.name);
    run.sent_at = Some(Utc::now());
    run.timeout_secs = req.timeout_secs;
    let sr = ScriptRun {
        run: run.id,
        name: script.spec.name.clone(),
        body: script.spec.body.clone(),
        env: super::desired::env_for(app, &with_inputs, &script).await?,
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
    if !app.push_agent(server.id, ControlMessage::RunScript(sr)).await {
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
    /// Input values for this run only (`NAME: value`, values as in files: text, `cred:NAME`,
    /// `env:NAME`, `artifact:BUCKET/KEY`); they override the server's. Only inputs the script
    /// declares are taken.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub inputs: std::collections::BTreeMap<String, String>,
}

/// The agent said hello: record its boot, notice a reboot, and answer with where its
/// unacknowledged runs stand and the desired state to send.
///
/// A reboot is a boot id different from the last hello's. An operational server then boots
/// again: its every-boot scripts get fresh runs under a new generation, and it is `booting`
/// until they succeed (`stranded` at the first failure). Per-instance scripts do not run again.
pub async fn hello(app: &App, session: &mut Session, hello: &Hello) -> Result<Greeting, AppError> {
    let resume = resume(app, session, &hello.unacked).await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match record_boot(app, session.server, &hello.boot_id).await {
            Err(AppError::Stale(_)) if attempts < 5 => continue,
            other => other?,
        }
        break;
    }
    let desired = super::desired::desired_state(app, session.server).await?;
    for sr in &desired.boot {
        session.track(sr);
    }
    let resend = unreceived(app, session, &hello.unacked).await?;
    Ok(Greeting {
        resume,
        desired,
        resend,
    })
}

/// What the control plane answers a hello with.
#[derive(Debug)]
pub struct Greeting {
    pub resume: Vec<Resume>,
    pub desired: DesiredState,
    /// Operational and decommission runs sent before that the agent does not hold: the
    /// connection they went out on died before they arrived. Sent again after the desired state.
    pub resend: Vec<ScriptRun>,
}

async fn unreceived(app: &App, session: &mut Session, unacked: &[RunId]) -> Result<Vec<ScriptRun>, AppError> {
    let q = Query {
        scope: Some(session.server.to_string()),
        state: Some("queued".into()),
        ..Default::default()
    };
    let mut out = vec![];
    let runs = app.store.list_all::<Run>(&q).await?;
    let Some(server) = app.store.get_as::<Server>(&session.server.to_string()).await? else {
        return Ok(out);
    };
    for r in runs {
        if r.phase == Phase::Boot || r.sent_at.is_none() || unacked.contains(&r.id) {
            continue;
        }
        let sr = match super::runs::delivery(app, &server, &r, r.timeout_secs).await {
            Ok(Some(sr)) => sr,
            Ok(None) => continue,
            Err(e @ (AppError::BadState(_) | AppError::NotFound { .. } | AppError::Missing(_))) => {
                super::boot::undeliverable(app, r, &e.to_string()).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        session.track(&sr);
        out.push(sr);
    }
    Ok(out)
}

/// Where each run the agent holds stands in the store. Another server's run or an unknown one
/// is answered finished: there is nowhere to deliver it.
async fn resume(app: &App, session: &Session, unacked: &[RunId]) -> Result<Vec<Resume>, AppError> {
    let mut out = Vec::with_capacity(unacked.len());
    for id in unacked {
        let r: Option<Run> = app.store.get_as(&id.to_string()).await?;
        out.push(match r {
            Some(r) if r.server == session.server => Resume {
                run: r.id,
                next_seq: super::runs::next_seq(app, &r).await?,
                finished: r.status.is_finished(),
            },
            _ => Resume {
                run: *id,
                next_seq: 0,
                finished: true,
            },
        });
    }
    Ok(out)
}

async fn record_boot(app: &App, server: ServerId, boot_id: &str) -> Result<(), AppError> {
    let mut rec = super::desired::agent_record(app, server).await?;
    let mut s: Server = super::desired::server_of(app, server).await?;
    let rebooted = rec.boot_id.as_deref().is_some_and(|b| b != boot_id);
    if !rebooted && rec.boot_id.is_some() && rec.generation > 0 {
        return Ok(());
    }
    let now = Utc::now();
    rec.boot_id = Some(boot_id.to_string());
    rec.generation = rec.generation.max(1);
    let mut changes = vec![];
    if rebooted && s.state == ServerState::Operational {
        let runs = super::desired::new_boot_runs(app, &s, |f| f == Frequency::EveryBoot).await?;
        let target = format!("server/{}/{}", s.deployment, s.name);
        changes.push(super::audit(
            &super::Actor::system(),
            "server.rebooted",
            target,
            serde_json::json!({ "every_boot_runs": runs.iter().map(|r| r.id).collect::<Vec<_>>() }),
        ));
        if !runs.is_empty() {
            rec.generation += 1;
            rec.boot_runs = runs.iter().map(|r| r.id).collect();
            changes.extend(runs.iter().map(Change::insert));
            s.move_to(ServerState::Booting, now)
                .map_err(|e| AppError::BadState(e.to_string()))?;
            changes.push(Change::update(&mut s, now));
        }
    }
    changes.push(Change::update(&mut rec, now));
    app.commit(changes).await
}

/// The agent applied a generation.
pub async fn applied(app: &App, session: &Session, generation: Generation) -> Result<(), AppError> {
    let mut rec = super::desired::agent_record(app, session.server).await?;
    if rec.applied_generation != generation.0 {
        rec.applied_generation = generation.0;
        // Losing this race to a newer change is fine: the next `applied` records it.
        match app.store.commit(vec![Change::update(&mut rec, Utc::now())]).await {
            Ok(()) | Err(stratus_store::StoreError::Stale { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A managed account logged in or used sudo on the agent's server: an audit entry whose actor
/// is the agent that reported it (from its credential, never from the frame), with the account
/// it names in the detail. An agent can only vouch for its own server, so the entry says "the
/// agent of X reports that account U logged in", not "U did this"; an account the control plane
/// does not know as a user is marked as such.
pub async fn access(
    app: &App,
    session: &Session,
    user: &str,
    kind: stratus_agent_proto::AccessKind,
    from: Option<&str>,
    at: chrono::DateTime<Utc>,
) -> Result<(), AppError> {
    let s = super::desired::server_of(app, session.server).await?;
    let known = app
        .store
        .find_as::<stratus_types::user::User>("", user)
        .await?
        .is_some();
    let action = match kind {
        stratus_agent_proto::AccessKind::Login => "server.login",
        stratus_agent_proto::AccessKind::Sudo => "server.sudo",
    };
    let truncate = |v: &str| stratus_types::name::truncate(v);
    let detail = serde_json::json!({
        "user": truncate(user),
        "known_user": known,
        "from": from.map(truncate),
        "at": at,
    });
    app.store
        .commit(vec![super::audit(
            &super::Actor::agent(&s),
            action,
            format!("server/{}/{}", s.deployment, s.name),
            detail,
        )])
        .await?;
    Ok(())
}

/// The agent applied (or refused) a managed file. A refusal is logged and audited once per
/// content, so an operator sees why a load balancer kept its old configuration.
///
/// The record keeps reports of the files the server's desired state manages and of no others
/// (at most [`stratus_agent_proto::limits::MAX_FILES`]; each report's size is bounded by the
/// protocol): a report on any other path is ignored (it can race a template change that
/// dropped the file) and changes nothing, and reports of files no longer managed are dropped
/// with the next write. A report must name the content the desired state gives the path (what
/// the agent applies): one on other content is stale or made up and is ignored, so alternating
/// contents cannot start a watched file's script again and again.
pub async fn file_status(
    app: &App,
    session: &Session,
    path: &str,
    sha256: &str,
    applied: bool,
    error: Option<&str>,
) -> Result<(), AppError> {
    let mut rec = super::desired::agent_record(app, session.server).await?;
    // Each managed path with the content it should hold.
    let managed: Vec<(String, String)> = {
        let s = super::desired::server_of(app, session.server).await?;
        super::watched::files_for(app, &s)
            .await?
            .into_iter()
            .map(|f| {
                let sha = f.sha256();
                (f.path, sha)
            })
            .collect()
    };
    let cap = stratus_agent_proto::limits::MAX_FILES;
    let Some((_, desired)) = managed.iter().find(|(p, _)| p == path) else {
        // Not an attack by itself: a report can race a template change that dropped the file.
        // Dropped (the session stays up), nothing recorded.
        tracing::debug!(
            server = %session.server,
            path = %stratus_types::name::truncate(path),
            managed = managed.len(),
            "a file report for a file this server's desired state does not manage; ignored"
        );
        return Ok(());
    };
    if sha256 != desired {
        // A report on other content than the desired one: stale (it raced a change of the
        // content) or made up. Only the desired content's reports change the record, so an
        // agent cannot start a watched file's script by alternating contents.
        tracing::debug!(server = %session.server, %path, "a file report for content that is not the desired one; ignored");
        return Ok(());
    }
    rec.files.retain(|p, _| managed.iter().any(|(m, _)| m == p));
    if rec.files.len() >= cap && !rec.files.contains_key(path) {
        return Err(AppError::Forbidden(format!(
            "a file report for {}: the server already has reports of {cap} files, the most kept",
            stratus_types::name::truncate(path)
        )));
    }
    let before = rec.files.get(path).cloned();
    let already_audited = before
        .as_ref()
        .and_then(|b| b.failure_audited.as_deref())
        .is_some_and(|a| a == sha256);
    let state = super::agents::FileState {
        sha256: sha256.to_string(),
        applied,
        error: error.map(str::to_string),
        at: Utc::now(),
        failure_audited: (already_audited || error.is_some()).then(|| sha256.to_string()),
    };
    // New content in place where other content was: a watched file changed on a running server.
    let changed = applied && before.as_ref().is_some_and(|b| b.applied && b.sha256 != sha256);
    let unchanged = before
        .as_ref()
        .is_some_and(|b| b.sha256 == state.sha256 && b.applied == state.applied && b.error == state.error);
    if unchanged {
        return Ok(());
    }
    let mut changes = vec![];
    if let Some(e) = error.filter(|_| !already_audited) {
        let s = super::desired::server_of(app, session.server).await?;
        tracing::warn!(server = %s.name, deployment = %s.deployment, %path, error = %e, "a managed file was not applied cleanly");
        let detail = serde_json::json!({ "path": path, "sha256": sha256, "applied": applied, "error": e });
        changes.push(super::audit(
            &super::Actor::agent(&s),
            "server.file_failed",
            format!("server/{}/{}", s.deployment, s.name),
            detail,
        ));
    }
    rec.files.insert(path.to_string(), state);
    changes.push(Change::update(&mut rec, Utc::now()));
    match app.store.commit(changes).await {
        Ok(()) => {}
        // A newer generation raced this report; the next report records it.
        Err(stratus_store::StoreError::Stale { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if changed {
        let s = super::desired::server_of(app, session.server).await?;
        super::watched::file_changed(app, &s, path).await?;
    }
    Ok(())
}

/// `stratus-agent tag add/remove`: the agent changes its own server's tags (audited as the
/// agent). An agent may change its own server's tags, except those of the namespaces reserved
/// for users (`lb`, `stratus`, `array` but `array:vote`: see [`Tag::agent_may_set`]), and none
/// of another's. A change naming a reserved tag is refused whole and changes nothing.
pub async fn tag_change(app: &App, session: &Session, add: &[Tag], remove: &[Tag]) -> Result<Vec<Tag>, AppError> {
    let reserved: Vec<String> = add
        .iter()
        .chain(remove)
        .filter(|t| !t.agent_may_set())
        .map(ToString::to_string)
        .collect();
    if !reserved.is_empty() {
        // At most three named, so the answer fits an agent frame whatever the request held.
        let more = match reserved.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        return Err(AppError::Forbidden(format!(
            "an agent cannot change {}{more}: the namespaces {} are set by users (the template's \
             default_tags or `stratus server tag`), only array:vote is the agent's",
            reserved[..reserved.len().min(3)].join(", "),
            stratus_types::tag::RESERVED_FOR_USERS.join(", ")
        )));
    }
    let s: Server = super::desired::server_of(app, session.server).await?;
    // Operator level for the tag change itself; the name is the credential's server's.
    let actor = super::Actor {
        level: super::OPERATOR,
        ..super::Actor::agent(&s)
    };
    let change = stratus_api::params::TagChange {
        add: add.to_vec(),
        remove: remove.to_vec(),
    };
    let s = super::servers::change_tags(app, &actor, &session.server.to_string(), &change).await?;
    Ok(s.tags)
}

/// `stratus-agent tag query SELECTOR`: the live servers of the agent's own deployment whose tags
/// match, by name, with their addresses. A server sees its own deployment and nothing else.
pub async fn tag_query(app: &App, session: &Session, selector: &Selector) -> Result<(Vec<PeerServer>, bool), AppError> {
    let me: Server = super::desired::server_of(app, session.server).await?;
    let q = Query {
        scope: Some(me.deployment.to_string()),
        live_only: true,
        ..Default::default()
    };
    let mut peers: Vec<PeerServer> = app
        .store
        .list_all::<Server>(&q)
        .await?
        .into_iter()
        .filter(|s| selector.matches(&s.tags))
        .map(|s| PeerServer {
            id: s.id,
            name: s.name,
            tags: s.tags,
            private_ip: s.private_ip,
            public_ip: s.public_ip,
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = peers.len() > stratus_agent_proto::limits::MAX_PEERS;
    peers.truncate(stratus_agent_proto::limits::MAX_PEERS);
    Ok((peers, truncated))
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

/// Store one output chunk (masked again with the run's secrets) in the run-output table: the
/// run's record is not rewritten. Returns false for a duplicate (a chunk below the run's stored
/// sequence, resent after a reconnect): stored once, acked again.
pub async fn output(app: &App, session: &mut Session, run: RunId, seq: u64, data: &str) -> Result<bool, AppError> {
    let r = own_run(app, session, run).await?;
    // For a run the control plane already ended (cancelled before the agent reported):
    // nowhere to go. Acknowledged only, as a duplicate is.
    if r.status.is_finished() {
        return Ok(false);
    }
    let next = super::runs::next_seq(app, &r).await?;
    if seq < next {
        return Ok(false);
    }
    if seq > next {
        return Err(AppError::Forbidden(format!(
            "run {run}: output {seq} arrived, but the next expected is {next}"
        )));
    }
    let masked = masker(app, session, &r).await.push(data);
    // Stored at most once even if two connections of the agent race (the chunk's key).
    app.store
        .commit(vec![Change::Output {
            run: run.to_string(),
            seq,
            data: masked,
        }])
        .await?;
    Ok(true)
}

/// The masker for a run's output: the one built when the run was sent on this connection, else
/// one rebuilt from the run's recorded `cred:` inputs (a run resumed after a reconnect or a
/// control-plane restart).
async fn masker<'a>(app: &App, session: &'a mut Session, r: &Run) -> &'a mut Masker {
    let mut secrets = vec![];
    if !session.maskers.contains_key(&r.id) {
        for v in r.inputs.values() {
            if let Some(name) = v.strip_prefix("cred:") {
                match super::credentials::reveal(app, name).await {
                    Ok(secret) => secrets.push(secret),
                    Err(e) => tracing::warn!(run = %r.id, error = %e, "cannot load a credential to mask output with"),
                }
            }
        }
    }
    session
        .maskers
        .entry(r.id)
        .or_insert_with(|| Masker::new(secrets.iter().map(|s| s.expose())))
}

/// Record the end of a run and move the server on when its boot is decided.
pub async fn run_finished(
    app: &App,
    session: &mut Session,
    done: &stratus_agent_proto::RunFinished,
) -> Result<(), AppError> {
    let mut r = own_run(app, session, done.run).await?;
    if !r.status.is_finished() {
        let arrived = super::runs::next_seq(app, &r).await?;
        if arrived < done.output_chunks {
            return Err(AppError::Forbidden(format!(
                "run {}: finished after {} output chunks, but only {arrived} arrived",
                done.run, done.output_chunks
            )));
        }
        let rest = masker(app, session, &r).await.finish();
        r.append_output(&rest);
        r.status = done.status();
        r.exit_code = done.exit_code;
        r.finished_at = Some(done.finished_at);
        if let Some(e) = &done.error {
            let e = masker(app, session, &r).await.mask(e);
            r.append_output(&format!("\n[stratus-agent] {e}\n"));
        }
        app.store.commit(vec![Change::update(&mut r, Utc::now())]).await?;
        app.run_ended();
    }
    if r.phase == Phase::Boot {
        super::boot::settle_boot(app, session.server).await?;
    }
    Ok(())
}
