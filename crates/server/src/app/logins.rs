//! Managed SSH: who may log in to which server, as the accounts of each server's desired
//! state, kept in step by its agent.
//!
//! A user with `server_login` (of the server's deployment, or of all) gets an account named
//! after them on every such server, with exactly their registered keys; `server_superuser`
//! adds passwordless sudo. Any change to users, roles or keys issues a new desired-state
//! generation to the live servers, so a grant or a revocation reaches a connected agent at once;
//! the agent's `applied` answer is the acknowledgement ([`access`] shows it per server).

use serde::Serialize;
use stratus_agent_proto::{LoginAccount, Logins, account_name_ok};
use stratus_store::{Query, TypedStore};
use stratus_types::server::{Server, ServerState};
use stratus_types::user::{Role, User};

use super::{Actor, App, AppError, OBSERVER};

/// What a user may do on a server of `deployment`: (login, sudo).
fn entitlement(u: &User, deployment: &str) -> (bool, bool) {
    let covers = |d: &Option<stratus_types::Name>| d.as_ref().is_none_or(|d| d.as_str() == deployment);
    let mut login = false;
    let mut sudo = false;
    for r in &u.spec.roles {
        match r {
            Role::ServerLogin(d) if covers(d) => login = true,
            Role::ServerSuperuser(d) if covers(d) => {
                login = true;
                sudo = true;
            }
            _ => {}
        }
    }
    (login, sudo)
}

/// The login accounts of a server: every user entitled on its deployment who has keys.
pub async fn logins_for(app: &App, s: &Server) -> Result<Logins, AppError> {
    let users = app.store.list_all::<User>(&Query::default()).await?;
    let mut accounts = vec![];
    for u in users {
        let (login, sudo) = entitlement(&u, s.deployment.as_str());
        if !login || u.ssh_keys.is_empty() {
            continue;
        }
        let name = u.spec.name.to_string();
        if !account_name_ok(&name) {
            tracing::warn!(user = %name, "this user name cannot be a Unix account name; no login");
            continue;
        }
        accounts.push(LoginAccount {
            name,
            keys: u.ssh_keys.iter().map(|k| k.key.line()).collect(),
            sudo,
        });
    }
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    let policy = app
        .store
        .find_as::<stratus_types::template::ServerTemplate>("", s.template.as_str())
        .await?
        .map(|t| t.spec.ssh)
        .unwrap_or_default();
    Ok(Logins {
        accounts,
        end_sessions: policy.end_sessions,
        exclusive: policy.exclusive,
    })
}

/// Users, roles or keys changed: every live server gets a new generation (pushed at once to
/// connected agents).
pub async fn users_changed(app: &App) {
    let q = Query {
        live_only: true,
        ..Default::default()
    };
    match app.store.list_all::<Server>(&q).await {
        Ok(servers) => {
            for s in servers {
                if s.state != ServerState::Terminated {
                    super::announce::desired_changed(app, s.id).await;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot tell the servers about a login change"),
    }
}

/// One server as a user's access shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServerAccess {
    /// `deployment/name`.
    pub server: String,
    pub login: bool,
    pub sudo: bool,
    /// The server's agent has applied the latest desired state, which carries this access
    /// (or its absence): the grant or revocation is in effect there.
    pub acknowledged: bool,
    /// How to log in (when `login`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub private_ip: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub public_ip: Option<std::net::IpAddr>,
}

/// Where a user may log in, and whether each live server has acknowledged the current state
/// of their access.
///
/// Who sees what: an observer (or above) sees anyone's list with every live server (a server
/// where the user has no login shows `login: false`, which is how a revocation is seen to have
/// reached it). A user below observer sees only their own list, and in it only the servers they
/// may log in to: `stratus ssh` needs those, and a `server_login` user must not learn the rest
/// of the fleet (names, addresses) through it.
pub async fn access(app: &App, actor: &Actor, name: &str) -> Result<Vec<ServerAccess>, AppError> {
    if actor.name != name {
        actor.require(OBSERVER)?;
    }
    let whole_fleet = actor.level >= OBSERVER;
    let u = super::resolve::named::<User>(&*app.store, name).await?;
    let q = Query {
        live_only: true,
        ..Default::default()
    };
    let mut out = vec![];
    for s in app.store.list_all::<Server>(&q).await? {
        let (login, sudo) = entitlement(&u, s.deployment.as_str());
        if !login && !whole_fleet {
            continue;
        }
        let acknowledged = match app
            .store
            .get_as::<super::agents::AgentRecord>(&s.id.to_string())
            .await?
        {
            Some(rec) => rec.applied_generation >= rec.generation && rec.generation > 0,
            None => false,
        };
        let ip = s.public_ip.or(s.private_ip);
        out.push(ServerAccess {
            server: format!("{}/{}", s.deployment, s.name),
            login: login && !u.ssh_keys.is_empty(),
            sudo,
            acknowledged,
            ssh: (login && !u.ssh_keys.is_empty())
                .then(|| ip.map(|ip| format!("ssh {}@{ip}", u.spec.name)))
                .flatten(),
            private_ip: s.private_ip,
            public_ip: s.public_ip,
        });
    }
    out.sort_by(|a, b| a.server.cmp(&b.server));
    Ok(out)
}
