//! What a server should hold: its agent's desired state, built from the store.
//!
//! The desired state is the current boot's runs (created once, on the first boot, and re-sent
//! with the same ids on every reconnect), the server's tags, its managed files and its login
//! accounts, under the generation kept in its [`AgentRecord`]. Building it reads and, for a
//! first boot, creates runs; it sends nothing: the gateway sends it on a hello, and
//! [`super::announce`] when something it is made of changes.

use chrono::Utc;
use stratus_agent_proto::{DesiredState, EnvVar, Generation};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::ServerId;
use stratus_types::input::InputValue;
use stratus_types::run::{Phase, Run};
use stratus_types::script::{Frequency, Script};
use stratus_types::server::{Server, ServerState};
use stratus_types::template::ServerTemplate;

use super::agents::AgentRecord;
use super::{App, AppError};

pub(crate) async fn server_of(app: &App, id: ServerId) -> Result<Server, AppError> {
    app.store
        .get_as(&id.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("server", id.to_string()))
}

pub(crate) async fn agent_record(app: &App, server: ServerId) -> Result<AgentRecord, AppError> {
    app.store
        .get_as::<AgentRecord>(&server.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("agent", server.to_string()))
}

/// Queued runs of the template's boot scripts whose frequency `include` accepts, in order.
pub(crate) async fn new_boot_runs(
    app: &App,
    s: &Server,
    include: impl Fn(Frequency) -> bool,
) -> Result<Vec<Run>, AppError> {
    let Some(template) = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await? else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    // The application goes in place first, once per instance (later versions come with
    // `stratus deploy`, and survive a reboot).
    if include(Frequency::PerInstance)
        && let Some(run) = super::deploys::boot_run(app, s, &template).await?
    {
        out.push(run);
    }
    // A rebundled image has the per-image scripts its source ran baked in: skipped while
    // unchanged.
    let baked = if include(Frequency::PerImage) {
        super::rebundle::baked_into(app, s).await?
    } else {
        Default::default()
    };
    for name in &template.spec.boot_scripts {
        if let Some(script) = app.store.find_as::<Script>("", name.as_str()).await?
            && include(script.spec.frequency)
            && !(script.spec.frequency == Frequency::PerImage && baked.get(name) == Some(&script.spec.body_hash()))
        {
            out.push(super::runs::queued(s, &script, Phase::Boot, "system"));
        }
    }
    Ok(out)
}

/// The server's desired state: its current boot's runs (created on the first boot) and its
/// tags, under the generation last issued.
pub async fn desired_state(app: &App, server: ServerId) -> Result<DesiredState, AppError> {
    let mut rec = agent_record(app, server).await?;
    let s: Server = server_of(app, server).await?;
    if rec.boot_runs.is_empty() && s.state == ServerState::Booting {
        // The first boot: every boot script, whatever its frequency. Runs recorded before the
        // agent record kept the list are reused, so nothing is created twice.
        let q = Query {
            scope: Some(s.id.to_string()),
            ..Default::default()
        };
        let mut runs: Vec<Run> = app
            .store
            .list_all::<Run>(&q)
            .await?
            .into_iter()
            .filter(|r| r.phase == Phase::Boot)
            .collect();
        let mut changes = vec![];
        if runs.is_empty() {
            runs = new_boot_runs(app, &s, |_| true).await?;
            changes.extend(runs.iter().map(Change::insert));
        }
        if !runs.is_empty() {
            rec.boot_runs = runs.iter().map(|r| r.id).collect();
            changes.push(Change::update(&mut rec, Utc::now()));
            app.store.commit(changes).await?;
        }
    }
    let mut boot = vec![];
    for id in &rec.boot_runs {
        let Some(run) = app.store.get_as::<Run>(&id.to_string()).await? else {
            continue;
        };
        match super::runs::delivery(app, &s, &run, None).await {
            Ok(Some(sr)) => boot.push(sr),
            Ok(None) => {}
            // Inputs that cannot be delivered (a missing archive or credential) fail the run
            // with the reason, which strands the boot, instead of failing the connection.
            Err(e @ (AppError::BadState(_) | AppError::NotFound { .. } | AppError::Missing(_))) => {
                super::boot::undeliverable(app, run, &e.to_string()).await?;
                // The rest of the boot is not sent: the boot stops at its first failure.
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(DesiredState {
        generation: Generation(rec.generation.max(1)),
        boot,
        tags: s.tags.clone(),
        files: super::watched::files_for(app, &s).await?,
        logins: Some(super::logins::logins_for(app, &s).await?),
    })
}

/// The script's inputs as environment variables: text as is, `cred:` decrypted into the frame
/// (marked secret, so the agent masks it), `env:` read by the agent from its own environment.
pub(crate) async fn env_for(app: &App, s: &Server, script: &Script) -> Result<Vec<EnvVar>, AppError> {
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
                let secret = super::credentials::reveal_for(app, name.as_str(), s.deployment.as_str()).await?;
                EnvVar::secret(&decl.name, secret.expose())
            }
            InputValue::Env(var) => EnvVar::instance(&decl.name, var),
            InputValue::Artifact { bucket, key } => {
                let o = app
                    .store
                    .find_as::<stratus_types::artifact::Object>(bucket, key)
                    .await?
                    .ok_or_else(|| {
                        AppError::BadState(format!(
                            "input {}: artifact {bucket}/{key} does not exist; upload it with `stratus artifact put FILE {bucket}/{key}`",
                            decl.name
                        ))
                    })?;
                // Relative: the agent resolves it against the URL it reaches this control
                // plane at (a local cloud's gateway, a public URL).
                let url = super::artifacts::agent_url(app, &o, s.id);
                EnvVar {
                    name: decl.name.to_string(),
                    value: stratus_agent_proto::EnvValue::Artifact(stratus_agent_proto::ArtifactRef {
                        url: url.url,
                        sha256: o.sha256.clone(),
                        size: o.size,
                        name: key.rsplit('/').next().unwrap_or(key).to_string(),
                    }),
                }
            }
        });
    }
    Ok(env)
}
