//! Rebundling: a converged server becomes an image its array launches from, so the next
//! members boot in a fraction of the time (`stratus server rebundle SERVER --for ARRAY`).
//!
//! ```text
//!  API: checks ──▶ rebundle.step = preparing ──▶ agent: PrepareImage (secrets to look for)
//!                                                   │ refused: a secret in a file, a run going
//!                                                   ├──────────▶ step = refused; nothing changed (409)
//!                                                   ▼
//!  gateway: ImagePrepared ──▶ step = prepared, server decommissioning (no decommission scripts:
//!                             the agent has no identity left to run them)
//!  reconcile: drained from its load balancers ──▶ stop ──▶ capture_image ──▶ new image version
//!             (provenance) + array's next-launch image ──▶ step = captured ──▶ terminate
//!  operation (operations.rs): waits for the capture; `--then relaunch` launches a new server
//!  of the same name; the API answers with the version once the operation is done
//! ```
//!
//! Decisions, and why:
//! - The preparation runs on the instance, through the agent (see `stratus_agent::prepare`),
//!   because on a real cloud only the instance reaches the disk the snapshot is made of.
//! - It runs while the server still serves; only a prepared server leaves its pools. A refusal
//!   therefore costs nothing: the server carries on.
//! - The image is a separate multi-cloud image, `<template>-bundle` unless named: making the
//!   capture the current version of the template's own base image would change what every other
//!   template on that image boots.
//! - Per-image scripts the source ran to the end are recorded in the version's provenance with
//!   their content hash; a server booted from it skips exactly those (a changed script runs
//!   again). The record survives rebundling a server that itself booted from a bundle.
//! - A capture that fails after the preparation terminates the server anyway: it has no identity
//!   to serve with. The error says so; rebundle another server.
//! - The agent looks for the value of every credential that ever reached the server, not only
//!   its own `cred:` inputs: template and deployment inputs, script defaults, and per-run
//!   inputs of its runs and rollouts all became environment variables a script could have
//!   written into a file (`secrets_of`).
//! - On the fake cloud with simulated agents there is no agent: the preparation is recorded as
//!   simulated, and the fake driver captures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use stratus_agent_proto::{ImagePrepared, SecretString};
use stratus_cloud::{CloudDriver, InstanceState};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::Name;
use stratus_types::deployment::Deployment;
use stratus_types::image::{Image, ImageSpec, ImageVersion, NativeImage, Provenance};
use stratus_types::input::InputValue;
use stratus_types::operation::{Operation, OperationKind, Step};
use stratus_types::run::{Phase, Run, RunStatus};
use stratus_types::script::{Frequency, Script};
use stratus_types::server::Server;
use stratus_types::server::{AfterRebundle, ImageRef, Rebundle, RebundleStep, ServerArray, ServerSpec, ServerState};
use stratus_types::template::ServerTemplate;
use stratus_types::{ImageId, ServerId};

use super::resolve::server;
use super::{Actor, App, AppError, OPERATOR, audit};

/// What `POST /servers/{key}/rebundle` takes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebundleRequest {
    /// The array (in the server's deployment) whose next launches use the image.
    pub array: String,
    /// The multi-cloud image that gets the new version (default `<template>-bundle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What becomes of the server once captured (default: terminate).
    #[serde(default)]
    pub then: AfterRebundle,
}

/// What a rebundle did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rebundled {
    /// `deployment/name` of the source server (terminated).
    pub server: String,
    pub array: String,
    pub image: String,
    pub version: u32,
    pub native_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// What the preparation removed.
    pub removed: Vec<String>,
    /// From the request to the image in place.
    pub seconds: f64,
    /// `deployment/name` of the server launched in its place (`then = relaunch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaunched: Option<String>,
    /// The operation that did it (`stratus operation show ID`).
    pub operation: stratus_types::OperationId,
}

/// The longest from the preparation to the terminated server (drain, stop, capture).
const CAPTURE_WAIT: Duration = Duration::from_secs(1800);
/// The longest a cloud may take to stop the instance before the capture gives up.
const STOP_WAIT: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

fn default_image(template: &Name) -> Result<Name, AppError> {
    let base: String = template.as_str().chars().take(56).collect();
    Name::parse(&format!("{}-bundle", base.trim_end_matches(['-', '_', '.'])))
        .map_err(|e| AppError::invalid("image", e.problem))
}

pub async fn rebundle(app: &App, actor: &Actor, key: &str, req: &RebundleRequest) -> Result<Rebundled, AppError> {
    actor.require(OPERATOR)?;
    let started = std::time::Instant::now();
    let mut s = server(&*app.store, key).await?;
    let skey = format!("{}/{}", s.deployment, s.name);
    if s.state != ServerState::Operational {
        return Err(AppError::BadState(format!(
            "{skey} is {}; only an operational server is rebundled",
            s.state
        )));
    }
    if s.rebundle.as_ref().is_some_and(Rebundle::in_progress) {
        return Err(AppError::Conflict(format!("{skey} is being rebundled already")));
    }
    let array = Name::parse(&req.array).map_err(|e| AppError::invalid("array", e.problem))?;
    let a = super::arrays::find(app, s.deployment.as_str(), array.as_str()).await?;
    if a.spec.template != s.template {
        return Err(AppError::invalid(
            "array",
            format!(
                "array {array} launches template {}, and {skey} runs template {}: an image fits only its own template",
                a.spec.template, s.template
            ),
        ));
    }
    let dep = super::apply::deployment(&*app.store, s.deployment.as_str()).await?;
    let array_cloud = a.spec.cloud.clone().or(dep.spec.cloud.clone());
    if array_cloud.as_ref().is_some_and(|c| c != &s.cloud) {
        return Err(AppError::invalid(
            "array",
            format!(
                "array {array} launches on cloud {}, and {skey} runs on {}: the image would exist on the wrong cloud",
                array_cloud.unwrap_or_else(|| s.cloud.clone()),
                s.cloud
            ),
        ));
    }
    let image = match &req.image {
        Some(n) => Name::parse(n).map_err(|e| AppError::invalid("image", e.problem))?,
        None => default_image(&s.template)?,
    };
    if let Some(existing) = app.store.find_as::<Image>("", image.as_str()).await?
        && existing.versions.iter().any(|v| v.provenance.is_none())
    {
        return Err(AppError::invalid(
            "image",
            format!(
                "image {image} has versions that were not captured (a base image); captures go into an image of their own: name another with --image"
            ),
        ));
    }
    let Some(instance) = s.instance_id.clone() else {
        return Err(AppError::BadState(format!("{skey} has no instance")));
    };
    let driver = app.drivers.for_cloud(&*app.store, &s.cloud).await?;
    let simulated = driver.simulated() && app.settings.simulate_agents;
    if !simulated && !app.agent_connected(s.id).await {
        return Err(AppError::BadState(format!(
            "the agent of {skey} is not connected; it prepares the instance, so try again when it is"
        )));
    }
    let open = open_runs(app, s.id).await?;
    if let Some(r) = open.first() {
        return Err(AppError::Conflict(format!(
            "run {} ({}) of {skey} is {:?}; wait for it or cancel it, then rebundle",
            r.id, r.script, r.status
        )));
    }
    // Refused now, with nothing started, if a credential it had may no longer be handed over;
    // the operation looks the values up again when it asks the agent.
    secrets_of(app, &s).await?;
    // A relaunch is checked now with the requester's authority (its template, inputs and the
    // credentials it attaches), though it is launched once the capture is done.
    if req.then == AfterRebundle::Relaunch && s.array.is_none() {
        super::servers::prepare_launch(app, actor, &super::replace::spec_like(&s, s.name.clone())).await?;
    }
    let now = Utc::now();
    s.rebundle = Some(Rebundle {
        array: array.clone(),
        image: image.clone(),
        then: req.then,
        requested_by: actor.name.clone(),
        requested_at: now,
        step: RebundleStep::Preparing,
        removed: vec![],
        secret_found_in: vec![],
        error: None,
        prepared_at: None,
        captured_at: None,
        version: None,
    });
    let target = format!("server/{skey}");
    // The operation asks the agent, waits for its answer, and relaunches if asked: it goes on
    // if this request is gone or the control plane restarts (see operations.rs).
    let kind = OperationKind::Rebundle {
        array: array.clone(),
        image: image.clone(),
        then: req.then,
    };
    let op = Operation::new(kind, s.id, skey.clone(), s.deployment.clone(), &actor.name, actor.level);
    super::operations::begin(
        app,
        &op,
        vec![
            Change::update(&mut s, now),
            audit(
                actor,
                "server.rebundle",
                target,
                serde_json::json!({ "array": array, "image": image, "instance": instance, "then": req.then, "operation": op.id }),
            ),
        ],
    )
    .await?;
    let op = super::operations::wait(app, op.id, super::operations::PREPARE_WAIT + CAPTURE_WAIT).await?;
    match op.step {
        Step::Done => {}
        Step::Failed => {
            let msg = op.error.unwrap_or_default();
            let now = super::operations::server_by_id(app, s.id).await?;
            let refused = now.rebundle.is_some_and(|r| r.step == RebundleStep::Refused);
            return Err(if refused {
                AppError::Conflict(msg)
            } else {
                AppError::BadState(msg)
            });
        }
        step => {
            return Err(AppError::BadState(format!(
                "the rebundle of {skey} is still under way (operation {}, at {step}); follow it with `stratus operation show {}`",
                op.id, op.id
            )));
        }
    }
    let done = super::operations::server_by_id(app, s.id).await?;
    let reb = done.rebundle.clone().expect("set above");
    let version = reb.version.unwrap_or_default();
    let img = super::resolve::named::<Image>(&*app.store, image.as_str()).await?;
    let v = img.version(version).cloned();
    let native = v
        .as_ref()
        .and_then(|v| v.clouds.get(&s.cloud))
        .map(|n| n.native_id.clone());
    Ok(Rebundled {
        server: skey,
        array: array.to_string(),
        image: image.to_string(),
        version,
        native_id: native.unwrap_or_default(),
        size_bytes: v.and_then(|v| v.provenance).and_then(|p| p.size_bytes),
        removed: reb.removed,
        seconds: started.elapsed().as_secs_f64(),
        relaunched: op.successor_name,
        operation: op.id,
    })
}

/// Poll the server until `done` holds (or the time is up: `None`).
async fn wait_for(
    app: &App,
    id: ServerId,
    limit: Duration,
    done: impl Fn(&Server) -> bool,
) -> Result<Option<Server>, AppError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s: Server = app
            .store
            .get_as(&id.to_string())
            .await?
            .ok_or_else(|| AppError::not_found("server", id.to_string()))?;
        if done(&s) {
            return Ok(Some(s));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_runs(app: &App, server: ServerId) -> Result<Vec<Run>, AppError> {
    let q = Query {
        scope: Some(server.to_string()),
        ..Default::default()
    };
    Ok(app
        .store
        .list_all::<Run>(&q)
        .await?
        .into_iter()
        .filter(|r| !r.status.is_finished())
        .collect())
}

/// The values of every credential that ever reached the server, for the agent to look for:
/// its own inputs (template < deployment < server, merged at launch); its template's, its
/// deployment's and its array's inputs as they are now (they may have changed since); the
/// defaults of every script it was given (its template's boot, operational and decommission
/// scripts, and the script of every run on it); and the per-run inputs of every run on it
/// (operational runs, rollouts, deploys). A credential deleted since has no value to look for;
/// one now outside the deployment's scope refuses the rebundle.
pub(crate) async fn secrets_of(app: &App, s: &Server) -> Result<Vec<SecretString>, AppError> {
    let mut creds = BTreeSet::new();
    let mut add = |inputs: &stratus_types::input::Inputs| {
        for v in inputs.values() {
            if let InputValue::Cred(name) = v {
                creds.insert(name.to_string());
            }
        }
    };
    add(&s.inputs);
    let mut scripts: BTreeSet<String> = BTreeSet::new();
    if let Some(t) = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await? {
        add(&t.spec.inputs);
        let spec = &t.spec;
        for n in spec
            .boot_scripts
            .iter()
            .chain(&spec.operational_scripts)
            .chain(&spec.decommission_scripts)
        {
            scripts.insert(n.to_string());
        }
    }
    if let Some(d) = app.store.find_as::<Deployment>("", s.deployment.as_str()).await? {
        add(&d.spec.inputs);
    }
    if let Some(array) = &s.array
        && let Some(a) = app
            .store
            .find_as::<ServerArray>(s.deployment.as_str(), array.as_str())
            .await?
    {
        add(&a.spec.inputs);
    }
    let q = Query {
        scope: Some(s.id.to_string()),
        ..Default::default()
    };
    for r in app.store.list_all::<Run>(&q).await? {
        for v in r.inputs.values() {
            if let Some(name) = v.strip_prefix("cred:") {
                creds.insert(name.to_string());
            }
        }
        scripts.insert(r.script.to_string());
    }
    for name in &scripts {
        if let Some(script) = app.store.find_as::<Script>("", name).await? {
            for d in &script.spec.inputs {
                if let Some(InputValue::Cred(c)) = &d.default {
                    creds.insert(c.to_string());
                }
            }
        }
    }
    // A credential now outside the deployment's scope may still have reached the server before
    // its scope was narrowed. Its value must not go to the agent now, and without it the image
    // cannot be checked: the rebundle is refused (fail closed), naming the credential.
    let mut out = vec![];
    for name in &creds {
        match super::credentials::reveal_for(app, name, s.deployment.as_str()).await {
            Ok(secret) if !secret.expose().is_empty() => out.push(SecretString::new(secret.expose())),
            Ok(_) | Err(AppError::NotFound { .. }) => {}
            Err(AppError::BadState(why)) => {
                return Err(AppError::BadState(format!(
                    "credential {name} reached {}/{} but cannot be looked for in its file system now ({why}); \
                     widen its scope to the deployment for the rebundle, or launch a fresh server and rebundle that",
                    s.deployment, s.name
                )));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The agent answered `PrepareImage` (or the control plane answered for a simulated or
/// absent one). Prepared: the server starts leaving (load balancers first), and the
/// orchestrator captures it.
pub async fn prepared(app: &App, server: ServerId, answer: &ImagePrepared) -> Result<(), AppError> {
    let mut s: Server = app
        .store
        .get_as(&server.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("server", server.to_string()))?;
    let Some(r) = s.rebundle.as_mut().filter(|r| r.step == RebundleStep::Preparing) else {
        tracing::warn!(server = %server, "an image preparation answer nobody asked for; ignored");
        return Ok(());
    };
    let now = Utc::now();
    let target = format!("server/{}/{}", s.deployment, s.name);
    let mut changes = vec![];
    match &answer.error {
        Some(e) => {
            r.step = RebundleStep::Refused;
            r.error = Some(e.clone());
            r.secret_found_in = answer.secret_found_in.clone();
            changes.push(audit(
                &Actor::system(),
                "server.rebundle_refused",
                target,
                serde_json::json!({ "error": e, "files": answer.secret_found_in }),
            ));
        }
        None => {
            r.step = RebundleStep::Prepared;
            r.prepared_at = Some(now);
            r.removed = answer.removed.clone();
            changes.push(audit(
                &Actor::system(),
                "server.rebundle_prepared",
                target,
                serde_json::json!({ "removed": answer.removed }),
            ));
            s.move_to(ServerState::Decommissioning, now)
                .map_err(|e| AppError::BadState(e.to_string()))?;
        }
    }
    changes.push(Change::update(&mut s, now));
    app.commit(changes).await
}

/// The orchestrator's part, for a prepared server that has left its load balancers: stop the
/// instance, capture it, record the image version and point the array at it. `Ok(false)`: the
/// instance is still stopping, or the cloud throttled us (call again). Failures are recorded on the server (`Failed`) and
/// the termination goes on.
pub async fn capture(app: &App, s: &mut Server, driver: &dyn CloudDriver) -> Result<bool, AppError> {
    let Some(reb) = s.rebundle.clone().filter(|r| r.step == RebundleStep::Prepared) else {
        return Ok(true);
    };
    let now = Utc::now();
    let outcome = match s.instance_id.clone() {
        None => Err("the server has no instance".to_string()),
        Some(id) => match stopped(driver, &id).await {
            Ok(false) if now - reb.prepared_at.unwrap_or(now) < STOP_WAIT => return Ok(false),
            Ok(false) => Err(format!(
                "the instance did not stop within {} minutes",
                STOP_WAIT.num_minutes()
            )),
            Err(e) => Err(e),
            Ok(true) => match record(app, s, &reb, &id, driver).await {
                // Throttled: the capture is asked again (it is idempotent by its label).
                Ok(None) => return Ok(false),
                Ok(Some(done)) => Ok(done),
                Err(e) => Err(e),
            },
        },
    };
    let now = Utc::now();
    let target = format!("server/{}/{}", s.deployment, s.name);
    let mut changes = vec![];
    let r = s.rebundle.as_mut().expect("checked above");
    match outcome {
        Ok((version, image_changes)) => {
            r.step = RebundleStep::Captured;
            r.version = Some(version);
            r.captured_at = Some(now);
            changes.extend(image_changes);
        }
        Err(e) => {
            tracing::warn!(server = %target, error = %e, "capture failed");
            r.step = RebundleStep::Failed;
            r.error = Some(format!("capture failed: {e}"));
            changes.push(audit(
                &Actor::system(),
                "server.rebundle_failed",
                target,
                serde_json::json!({ "error": e }),
            ));
        }
    }
    changes.push(Change::update(s, now));
    app.store.commit(changes).await?;
    Ok(true)
}

/// Stop the instance if it runs; true once it is stopped.
async fn stopped(driver: &dyn CloudDriver, id: &str) -> Result<bool, String> {
    // A throttled or unanswered call is not a failure: "not stopped yet", asked again.
    let settle = |e: stratus_cloud::CloudError| {
        if e.is_transient() {
            Ok(None)
        } else {
            Err(super::error_chain(&e))
        }
    };
    let state = match driver.describe(id).await {
        Ok(i) => Some(i.map(|i| i.state)),
        Err(e) => settle(e)?,
    };
    let Some(state) = state else { return Ok(false) };
    match state {
        Some(InstanceState::Stopped) => Ok(true),
        Some(InstanceState::Running | InstanceState::Pending) => {
            if let Err(e) = driver.stop(id).await {
                settle(e)?;
                return Ok(false);
            }
            Ok(matches!(driver.describe(id).await, Ok(Some(i)) if i.state == InstanceState::Stopped))
        }
        Some(InstanceState::Stopping) => Ok(false),
        Some(InstanceState::Terminated) | None => Err("the instance is gone".into()),
    }
}

/// Capture the stopped instance and build the store changes that register it: the image's
/// new version (with provenance), the array's next-launch image and an audit entry. `None`:
/// the cloud throttled the capture (asked again on the next pass, under the same label).
async fn record(
    app: &App,
    s: &Server,
    reb: &Rebundle,
    instance: &str,
    driver: &dyn CloudDriver,
) -> Result<Option<(u32, Vec<Change>)>, String> {
    let existing = app
        .store
        .find_as::<Image>("", reb.image.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let version = existing.as_ref().map_or(1, |i| i.current_version() + 1);
    // Named by the source server, not the version: a capture retried after a crash finds the
    // image it made under the same name even if another rebundle took the version number since.
    let label = format!("{}-{}", reb.image, s.id);
    let captured = match driver.capture_image(instance, &label).await {
        Ok(c) => c,
        Err(e) if e.is_transient() => return Ok(None),
        Err(e) => return Err(super::error_chain(&e)),
    };
    let base = super::resolve::named::<Image>(&*app.store, s.image.as_str()).await.ok();
    let base_native = base
        .as_ref()
        .and_then(|i| i.version(s.image_version))
        .and_then(|v| v.clouds.get(&s.cloud).cloned());
    let provenance = Provenance {
        source_server: s.id,
        source_name: format!("{}/{}", s.deployment, s.name),
        array: Some(reb.array.clone()),
        template: s.template.clone(),
        template_hash: s.template_hash.clone(),
        captured_at: Utc::now(),
        base: Some(ImageRef {
            image: s.image.clone(),
            version: s.image_version,
        }),
        baked: baked(app, s).await.map_err(|e| e.to_string())?,
        size_bytes: captured.size_bytes,
    };
    let native = NativeImage {
        native_id: captured.native_id.clone(),
        default_size: base_native.as_ref().and_then(|n| n.default_size.clone()),
        login_user: s.login_user.clone(),
    };
    let clouds: BTreeMap<Name, NativeImage> = [(s.cloud.clone(), native)].into();
    let now = Utc::now();
    let v = ImageVersion {
        version,
        clouds: clouds.clone(),
        provenance: Some(provenance),
        created_at: now,
    };
    let mut changes = vec![];
    match existing {
        Some(mut i) => {
            i.spec.clouds = clouds;
            i.versions.push(v);
            changes.push(Change::update(&mut i, now));
        }
        None => {
            let i = Image {
                id: ImageId::new(),
                revision: 1,
                created_at: now,
                updated_at: now,
                spec: ImageSpec {
                    name: reb.image.clone(),
                    description: format!("servers of template {} rebundled for their arrays", s.template),
                    clouds,
                },
                versions: vec![v],
            };
            changes.push(Change::insert(&i));
        }
    }
    if let Some(mut a) = app
        .store
        .find_as::<ServerArray>(s.deployment.as_str(), reb.array.as_str())
        .await
        .map_err(|e| e.to_string())?
    {
        a.next_launch_image = Some(ImageRef {
            image: reb.image.clone(),
            version,
        });
        changes.push(Change::update(&mut a, now));
    }
    changes.push(audit(
        &Actor::system(),
        "image.capture",
        format!("image/{}", reb.image),
        serde_json::json!({
            "version": version,
            "native_id": captured.native_id,
            "size_bytes": captured.size_bytes,
            "source": format!("{}/{}", s.deployment, s.name),
            "array": reb.array,
        }),
    ));
    tracing::info!(image = %reb.image, version, native_id = %captured.native_id, "captured");
    Ok(Some((version, changes)))
}

/// The per-image scripts of the server's template that are in its file system now: those it ran
/// to the end at this revision, and those its own image had baked in (same hash).
async fn baked(app: &App, s: &Server) -> Result<BTreeMap<Name, String>, AppError> {
    let mut out = BTreeMap::new();
    let Some(t) = app.store.find_as::<ServerTemplate>("", s.template.as_str()).await? else {
        return Ok(out);
    };
    let inherited = baked_into(app, s).await?;
    let q = Query {
        scope: Some(s.id.to_string()),
        ..Default::default()
    };
    let runs: Vec<Run> = app.store.list_all::<Run>(&q).await?;
    for name in &t.spec.boot_scripts {
        let Some(script) = app.store.find_as::<Script>("", name.as_str()).await? else {
            continue;
        };
        if script.spec.frequency != Frequency::PerImage {
            continue;
        }
        let hash = script.spec.body_hash();
        let ran = runs.iter().any(|r| {
            r.phase == Phase::Boot
                && &r.script == name
                && r.status == RunStatus::Succeeded
                && r.script_revision == script.revision
        });
        if ran || inherited.get(name) == Some(&hash) {
            out.insert(name.clone(), hash);
        }
    }
    Ok(out)
}

/// The per-image scripts the image version a server boots from has baked in (empty for a base
/// image).
pub async fn baked_into(app: &App, s: &Server) -> Result<BTreeMap<Name, String>, AppError> {
    Ok(app
        .store
        .find_as::<Image>("", s.image.as_str())
        .await?
        .and_then(|i| i.version(s.image_version).cloned())
        .and_then(|v| v.provenance)
        .map(|p| p.baked)
        .unwrap_or_default())
}

/// What `POST /arrays/{deployment}/{name}/rebundle` takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    /// As for a server's rebundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Rebuild an array's image from scratch: launch a builder server from the template as it is
/// now, on the template's own image (not a bundle), wait until it is operational, and
/// rebundle it for the array. What makes a stale image fresh. The builder carries the array's
/// inputs and tags, minus load-balancer and vote tags, so it never takes traffic.
pub async fn rebuild(
    app: &App,
    actor: &Actor,
    deployment: &str,
    array: &str,
    req: &RebuildRequest,
) -> Result<Rebundled, AppError> {
    actor.require(OPERATOR)?;
    let a = super::arrays::find(app, deployment, array).await?;
    let mut n = 1;
    let name = loop {
        let candidate =
            Name::parse(&format!("{}-bundler-{n}", a.spec.name)).map_err(|e| AppError::invalid("array", e.problem))?;
        if app
            .store
            .find_as::<Server>(deployment, candidate.as_str())
            .await?
            .is_none()
        {
            break candidate;
        }
        n += 1;
    };
    let spec = ServerSpec {
        name,
        deployment: a.spec.deployment.clone(),
        template: a.spec.template.clone(),
        cloud: a.spec.cloud.clone(),
        region: None,
        size: a.spec.size.clone(),
        inputs: a.spec.inputs.clone(),
        tags: a
            .spec
            .tags
            .iter()
            .filter(|t| t.namespace() != "lb" && t.namespace() != "array")
            .cloned()
            .collect(),
    };
    let builder = super::servers::launch(app, actor, &spec).await?;
    let bkey = format!("{}/{}", builder.deployment, builder.name);
    let limit = app.settings.boot_deadline + Duration::from_secs(60);
    let up = wait_for(app, builder.id, limit, |s| {
        matches!(
            s.state,
            ServerState::Operational | ServerState::Stranded | ServerState::Terminated
        )
    })
    .await?;
    match up {
        Some(s) if s.state == ServerState::Operational => {}
        other => {
            let why = other
                .and_then(|s| s.stranded)
                .map_or_else(|| "it did not become operational in time".to_string(), |r| r.message);
            return Err(AppError::BadState(format!(
                "the builder {bkey} did not converge ({why}); it is kept for inspection: `stratus server show {bkey}`, then terminate it"
            )));
        }
    }
    let req = RebundleRequest {
        array: a.spec.name.to_string(),
        image: req.image.clone(),
        then: AfterRebundle::Terminate,
    };
    rebundle(app, actor, &bkey, &req).await
}
