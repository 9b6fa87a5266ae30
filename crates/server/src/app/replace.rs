//! Replacement: instances are cattle. `replace` launches a new server like the old one (from
//! its template as it is now: a template change is picked up), waits until it is operational,
//! moves the old server's elastic IPs to it, and then terminates the old one (decommission
//! scripts, load-balancer draining). It is a durable operation (`operations.rs`): the request
//! records the successor and the operation together, and the leader carries it through even if
//! the request goes away or the control plane restarts half-way. Load-balancer membership
//! follows by itself: the new server carries the old one's tags, so it joins the pool when it
//! turns operational, and the old one leaves it when it starts decommissioning.
//!
//! Names: the new server is the old one's name with a replacement number, `web-1` → `web-1-r2`
//! → `web-1-r3` (two live servers of a deployment cannot share a name, and both are live during
//! the switch). If the new server strands, nothing else happens: the old one keeps serving, the
//! stranded one is kept for inspection, and the error says why.

use std::time::Duration;

use serde::Serialize;
use stratus_store::TypedStore;
use stratus_types::Name;
use stratus_types::operation::{Operation, OperationKind, Step};
use stratus_types::server::{Server, ServerSpec, ServerState};

use super::resolve::server;
use super::{Actor, App, AppError, OPERATOR, audit};

/// What a replacement did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Replacement {
    /// `deployment/name` of the old server (now terminating).
    pub old: String,
    /// `deployment/name` of its replacement (operational).
    pub new: String,
    /// Elastic IPs moved to the new server, by name.
    pub addresses: Vec<String>,
    /// The operation that did it (`stratus operation show ID`).
    pub operation: stratus_types::OperationId,
}

/// The launch request for a server like `old`, named `name`: its deployment, template (as it
/// is now), cloud, region, inputs and tags, minus its array vote.
pub(crate) fn spec_like(old: &Server, name: Name) -> ServerSpec {
    ServerSpec {
        name,
        deployment: old.deployment.clone(),
        template: old.template.clone(),
        cloud: Some(old.cloud.clone()),
        region: Some(old.region.clone()),
        size: None,
        inputs: old.inputs.clone(),
        tags: old
            .tags
            .iter()
            .filter(|t| !(t.namespace() == "array" && t.predicate() == "vote"))
            .cloned()
            .collect(),
    }
}

/// `web-1` → `web-1-r2`, `web-1-r2` → `web-1-r3`; the first free one.
async fn next_name(app: &App, s: &Server) -> Result<Name, AppError> {
    let name = s.name.as_str();
    let (base, n) = match name.rsplit_once("-r") {
        Some((b, n)) if !b.is_empty() && n.parse::<u32>().is_ok() => (b, n.parse::<u32>().unwrap_or(1)),
        _ => (name, 1),
    };
    for i in n + 1..n + 1000 {
        let candidate = format!("{base}-r{i}");
        let Ok(candidate) = Name::parse(&candidate) else {
            break;
        };
        if app
            .store
            .find_as::<Server>(s.deployment.as_str(), candidate.as_str())
            .await?
            .is_none()
        {
            return Ok(candidate);
        }
    }
    Err(AppError::Conflict(format!(
        "no free replacement name for {}/{name}",
        s.deployment
    )))
}

pub async fn replace(app: &App, actor: &Actor, key: &str) -> Result<Replacement, AppError> {
    actor.require(OPERATOR)?;
    let old = server(&*app.store, key).await?;
    let old_key = format!("{}/{}", old.deployment, old.name);
    if old.state != ServerState::Operational {
        return Err(AppError::BadState(format!(
            "{old_key} is {}; only an operational server is replaced (terminate it instead)",
            old.state
        )));
    }
    if let Some(array) = &old.array {
        return Err(AppError::BadState(format!(
            "{old_key} is a member of array {array}: the array replaces its members (terminate this one, or scale)"
        )));
    }
    // The successor is recorded with the operation, in one transaction: every check (the
    // template as it is now, credentials the requester may attach) happens here, with the
    // requester's authority; the operation does the rest (see operations.rs).
    let spec = spec_like(&old, next_name(app, &old).await?);
    let (new, mut changes) = super::servers::prepare_launch(app, actor, &spec).await?;
    let new_key = format!("{}/{}", new.deployment, new.name);
    let mut op = Operation::new(
        OperationKind::Replace,
        old.id,
        old_key.clone(),
        old.deployment.clone(),
        &actor.name,
        actor.level,
    );
    op.successor = Some(new.id);
    op.successor_name = Some(new_key.clone());
    changes.push(audit(
        actor,
        "server.replace",
        format!("server/{old_key}"),
        serde_json::json!({ "replacement": new_key, "operation": op.id }),
    ));
    super::operations::begin(app, &op, changes).await?;
    // The successor boots, then takes the addresses; then the old server goes.
    let limit = app.settings.boot_deadline + Duration::from_secs(120) + app.settings.decommission_timeout;
    let op = super::operations::wait(app, op.id, limit).await?;
    match op.step {
        Step::Done => Ok(Replacement {
            old: old_key,
            new: new_key,
            addresses: op.addresses,
            operation: op.id,
        }),
        Step::Failed => Err(AppError::BadState(op.error.unwrap_or_default())),
        step => Err(AppError::BadState(format!(
            "the replacement of {old_key} by {new_key} is still under way (operation {}, at {step}); follow it with `stratus operation show {}`",
            op.id, op.id
        ))),
    }
}
