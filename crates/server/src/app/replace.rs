//! Replacement: instances are cattle. `replace` launches a new server like the old one (from
//! its template as it is now: a template change is picked up), waits until it is operational,
//! moves the old server's elastic IPs to it, and then terminates the old one (decommission
//! scripts, load-balancer draining). Load-balancer membership follows by itself: the new server
//! carries the old one's tags, so it joins the pool when it turns operational, and the old one
//! leaves it when it starts decommissioning.
//!
//! Names: the new server is the old one's name with a replacement number, `web-1` → `web-1-r2`
//! → `web-1-r3` (two live servers of a deployment cannot share a name, and both are live during
//! the switch). If the new server strands, nothing else happens: the old one keeps serving, the
//! stranded one is kept for inspection, and the error says why.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use stratus_store::{Query, TypedStore};
use stratus_types::Name;
use stratus_types::address::Address;
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
    let spec = spec_like(&old, next_name(app, &old).await?);
    let new = super::servers::launch(app, actor, &spec).await?;
    let new_key = format!("{}/{}", new.deployment, new.name);
    app.commit(vec![audit(
        actor,
        "server.replace",
        format!("server/{old_key}"),
        serde_json::json!({ "replacement": new_key }),
    )])
    .await?;
    // Wait for the new one: operational, or the end of its boot (stranded at the deadline).
    let deadline = tokio::time::Instant::now() + app.settings.boot_deadline + Duration::from_secs(60);
    loop {
        let s: Server = app
            .store
            .get_as(&new.id.to_string())
            .await?
            .ok_or_else(|| AppError::not_found("server", &new_key))?;
        match s.state {
            ServerState::Operational => break,
            ServerState::Stranded | ServerState::Terminated | ServerState::Decommissioning => {
                let why = s
                    .stranded
                    .as_ref()
                    .map_or(String::new(), |r| format!(": {}", r.message));
                return Err(AppError::BadState(format!(
                    "the replacement {new_key} is {}{why}; {old_key} keeps serving and keeps its addresses \
                     (look at `stratus server show {new_key}`, then terminate it)",
                    s.state
                )));
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AppError::BadState(format!(
                "the replacement {new_key} did not become operational in time; {old_key} keeps serving"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The switch: elastic IPs first (each moves in one call), then the old server goes.
    let mut moved = vec![];
    for a in app.store.list_all::<Address>(&Query::default()).await? {
        if a.server == Some(old.id) {
            super::addresses::associate(app, actor, a.name.as_str(), &new_key).await?;
            moved.push(a.name.to_string());
        }
    }
    super::servers::terminate(app, actor, &old_key).await?;
    tracing::info!(old = %old_key, new = %new_key, at = %Utc::now(), "replaced");
    Ok(Replacement {
        old: old_key,
        new: new_key,
        addresses: moved,
    })
}
