//! Load-balancer wiring by tags: which servers a load balancer balances, the HAProxy
//! configuration the control plane renders for it, and keeping that configuration in step
//! with the pool through the load balancer's agent.
//!
//! Tags, all in the `lb` namespace:
//!
//! | on | tag | meaning |
//! |---|---|---|
//! | load balancer | `lb:balances=POOL` | balances the pool POOL |
//! | load balancer | `lb:listen=PORT` | listens on PORT (default 80) |
//! | load balancer | `lb:check=/PATH` | HAProxy's health check path for the pool |
//! | app server | `lb:pool=POOL` | is a member of POOL |
//! | app server | `lb:port=PORT` | serves on PORT (default 80) |
//! | app server | `lb:check=/PATH` | the check path it asks for (see below) |
//!
//! **Health checks** are one per pool and belong to the load balancer: its own `lb:check` wins.
//! Without one, the members' `lb:check` is used only when every member asks for the same path;
//! when they disagree the pool is checked at `/` and the disagreement is reported — no member
//! decides how the others are checked. The `lb` namespace is reserved for users: a server's
//! own agent cannot set or remove `lb:` tags (see `Tag::agent_may_set`), so a compromised
//! instance can neither join a pool nor change how one is checked.
//!
//! A pool's members are the *operational* servers of the load balancer's deployment tagged
//! `lb:pool=POOL`; a booting, stranded, decommissioning or terminated server is not one. The
//! configuration is rendered in name order, so the same membership always gives the same text
//! (and an agent that already holds it has nothing to reload). Anything that would have to be
//! escaped in an HAProxy configuration (a pool or path with spaces, quotes or `#`) is refused,
//! not quoted.
//!
//! **Delivery.** The configuration is a managed file of the load balancer's desired state
//! (`/etc/haproxy/haproxy.cfg`): its agent checks it with `haproxy -c`, keeps the old file if
//! the check fails, and reloads HAProxy seamlessly. HAProxy runs in master-worker mode (`-W`),
//! started by the first reload; later reloads send the master `SIGUSR2`, so it re-reads the
//! file and starts new workers on the listening sockets it holds, while the old workers finish
//! the connections they have. No connection is refused or cut by a pool change.
//!
//! **When.** Every committed change to a server wakes the `lb-sync` task ([`LbSync`]). It waits [`DEBOUNCE`] more so a
//! burst (an array scaling by ten) becomes one reload, renders every load balancer's
//! configuration and pushes a new desired-state generation to each one whose configuration
//! changed. A load balancer that is not connected gets it at its next hello.
//!
//! **Draining.** A terminating member leaves the pool when it leaves `operational`, before its
//! decommission scripts run. Its instance is destroyed only after every load balancer of its
//! pool has reported the configuration without it applied ([`in_step`]), within a bound, so
//! requests in flight finish on a member that still exists.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use stratus_agent_proto::ManagedFile;
use stratus_store::{Query, TypedStore};
use stratus_types::ServerId;
use stratus_types::server::{Server, ServerState};
use stratus_types::tag::Selector;

use super::{App, AppError};

/// How long [`sync`] waits after a server change for more before it renders.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Where a load balancer's agent keeps the configuration.
pub const HAPROXY_CFG: &str = "/etc/haproxy/haproxy.cfg";
/// Refuses a configuration HAProxy would not load; the old one keeps serving.
const HAPROXY_CHECK: &str = r#"haproxy -c -q -f "$STRATUS_CANDIDATE""#;
/// Start HAProxy (master-worker) or make the running master reload seamlessly. The pid file
/// is trusted only if it names a running `haproxy` (after a reboot it may name anything).
const HAPROXY_RELOAD: &str = r#"mkdir -p /run/haproxy
pid=$(cat /run/haproxy.pid 2>/dev/null | head -n 1)
if [ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = haproxy ]; then
  kill -USR2 "$pid"
else
  haproxy -W -D -p /run/haproxy.pid -f /etc/haproxy/haproxy.cfg
fi"#;

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// What a load balancer serves: its pool, port and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub listen: u16,
    /// The health-check path of every member (see the module docs).
    pub check: String,
    pub members: Vec<Member>,
}

/// A tag's value on a server (`lb:PREDICATE=value`).
fn lb_tag<'a>(s: &'a Server, predicate: &str) -> Option<&'a str> {
    s.tags
        .iter()
        .find(|t| t.namespace() == "lb" && t.predicate() == predicate)
        .map(|t| t.value())
}

fn port(value: Option<&str>, what: &str) -> Result<u16, String> {
    match value {
        None => Ok(80),
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("lb:{what}={v:?} is not a port (1-65535)")),
    }
}

/// A name HAProxy takes as an identifier without quoting.
fn identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// A health-check path HAProxy takes without quoting.
fn check_path(s: &str) -> bool {
    s.starts_with('/') && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic() && !b"#\"'\\".contains(&b))
}

/// The pool `lb` balances, from its tags and the servers of its deployment. `None` when it is
/// not a load balancer. Members whose tags cannot be used are left out and reported.
pub fn pool_of(lb: &Server, servers: &[Server]) -> Option<Result<(Pool, Vec<String>), String>> {
    let name = lb_tag(lb, "balances")?;
    Some(pool(lb, name, servers))
}

fn pool(lb: &Server, name: &str, servers: &[Server]) -> Result<(Pool, Vec<String>), String> {
    if !identifier(name) {
        return Err(format!(
            "lb:balances={name:?}: a pool name is letters, digits, '_', '-', '.', ':'"
        ));
    }
    let listen = port(lb_tag(lb, "listen"), "listen")?;
    let lb_check = match lb_tag(lb, "check") {
        Some(c) if !check_path(c) => return Err(format!("lb:check={c:?} is not a usable path")),
        other => other,
    };
    let mut members = vec![];
    let mut asked = std::collections::BTreeSet::new();
    let mut left_out = vec![];
    for s in servers {
        if s.deployment != lb.deployment || s.state != ServerState::Operational || lb_tag(s, "pool") != Some(name) {
            continue;
        }
        let Some(ip) = s.private_ip else {
            left_out.push(format!("{}: no private address", s.name));
            continue;
        };
        let check = lb_tag(s, "check").unwrap_or("/").to_string();
        match (
            port(lb_tag(s, "port"), "port"),
            check_path(&check),
            identifier(s.name.as_str()),
        ) {
            (Ok(port), true, true) => {
                asked.insert(check);
                members.push(Member {
                    name: s.name.to_string(),
                    ip,
                    port,
                })
            }
            (Err(e), _, _) => left_out.push(format!("{}: {e}", s.name)),
            (_, false, _) => left_out.push(format!("{}: lb:check={check:?} is not a usable path", s.name)),
            (_, _, false) => left_out.push(format!("{}: the name cannot be an HAProxy server name", s.name)),
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let check = match (lb_check, asked.len()) {
        (Some(c), _) => c.to_string(),
        (None, 1) => asked.pop_first().unwrap_or_else(|| "/".into()),
        (None, 0) => "/".into(),
        (None, _) => {
            left_out.push(format!(
                "members disagree on lb:check ({}); the pool is checked at / — set lb:check on the load balancer",
                asked.into_iter().collect::<Vec<_>>().join(", ")
            ));
            "/".into()
        }
    };
    Ok((
        Pool {
            name: name.to_string(),
            listen,
            check,
            members,
        },
        left_out,
    ))
}

/// The HAProxy configuration for one load balancer. Health checks take a failing member out
/// of rotation within two seconds (`inter 1s fall 2`) and put it back after one good check. A
/// request whose connection to a member fails is retried on another member (`redispatch`), so
/// a member that dies between two checks costs the client nothing. Old workers get 30 s after
/// a reload to finish their connections (`hard-stop-after`).
pub fn render(lb: &str, pool: &Pool) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Rendered by Stratus for load balancer {lb}: pool {}, {} member(s).\n\
         # Do not edit: the control plane rewrites this file when the pool changes.",
        pool.name,
        pool.members.len()
    );
    c.push_str(
        "global\n    maxconn 4096\n    hard-stop-after 30s\n    stats socket /run/haproxy/admin.sock mode 600 level admin\n\n\
         defaults\n    mode http\n    option redispatch 1\n    retries 3\n    retry-on conn-failure empty-response response-timeout\n    \
         timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    timeout http-request 10s\n\n",
    );
    let _ = writeln!(
        c,
        "frontend {p}\n    bind *:{port}\n    default_backend {p}\n",
        p = pool.name,
        port = pool.listen
    );
    let _ = writeln!(c, "backend {}\n    balance roundrobin", pool.name);
    let _ = writeln!(c, "    option httpchk GET {}", pool.check);
    c.push_str("    default-server inter 1s fall 2 rise 1\n");
    for m in &pool.members {
        let addr = match m.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", m.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", m.port),
        };
        let _ = writeln!(c, "    server {} {addr} check", m.name);
    }
    c
}

/// The managed files of a server: a load balancer's HAProxy configuration; none for others.
pub async fn files_for(app: &App, s: &Server) -> Result<Vec<ManagedFile>, AppError> {
    if lb_tag(s, "balances").is_none() {
        return Ok(vec![]);
    }
    let q = Query {
        scope: Some(s.deployment.to_string()),
        live_only: true,
        ..Default::default()
    };
    let servers = app.store.list_all::<Server>(&q).await?;
    let Some(pool) = pool_of(s, &servers) else {
        return Ok(vec![]);
    };
    let (pool, left_out) = match pool {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(lb = %s.name, deployment = %s.deployment, error = %e, "load balancer tags");
            return Ok(vec![]);
        }
    };
    for why in left_out {
        tracing::warn!(lb = %s.name, deployment = %s.deployment, member = %why, "left out of the pool");
    }
    Ok(vec![ManagedFile {
        check: Some(HAPROXY_CHECK.into()),
        reload: Some(HAPROXY_RELOAD.into()),
        ..ManagedFile::inline(HAPROXY_CFG, render(&format!("{}/{}", s.deployment, s.name), &pool))
    }])
}

/// The live servers that balance a pool.
async fn balancers(app: &App) -> Result<Vec<Server>, AppError> {
    let q = Query {
        selector: Some(Selector::parse("lb:balances").expect("a presence selector")),
        live_only: true,
        ..Default::default()
    };
    Ok(app.store.list_all::<Server>(&q).await?)
}

/// The `lb-sync` background task: keeps every load balancer's configuration in step with its
/// pool (see the module docs), woken by every committed server change.
#[derive(Debug, Default)]
pub struct LbSync {
    /// What each load balancer was last sent, by content hash.
    sent: HashMap<ServerId, String>,
}

#[async_trait::async_trait]
impl crate::background::BackgroundTask for LbSync {
    async fn activate(&mut self, app: &Arc<App>) -> crate::background::Outcome {
        tokio::time::sleep(DEBOUNCE).await;
        let (balancers, pushed) = sync_once(app, &mut self.sent)
            .await
            .map_err(|e| super::error_chain(&e))?;
        Ok(serde_json::json!({ "load_balancers": balancers, "pushed": pushed }))
    }
}

/// Push a new configuration to each connected load balancer whose configuration changed:
/// (load balancers, pushes).
async fn sync_once(app: &App, sent: &mut HashMap<ServerId, String>) -> Result<(usize, usize), AppError> {
    let lbs = balancers(app).await?;
    let (count, mut pushed) = (lbs.len(), 0);
    sent.retain(|id, _| lbs.iter().any(|s| s.id == *id));
    for lb in lbs {
        if !app.agent_connected(lb.id).await {
            // It gets the configuration with its desired state at its next hello.
            sent.remove(&lb.id);
            continue;
        }
        let files = super::watched::files_for(app, &lb).await?;
        let hash = files.iter().map(ManagedFile::sha256).collect::<Vec<_>>().join(",");
        if sent.get(&lb.id) != Some(&hash) {
            super::announce::desired_changed(app, lb.id).await;
            tracing::info!(lb = %lb.name, deployment = %lb.deployment, "load balancer configuration sent");
            sent.insert(lb.id, hash);
            pushed += 1;
        }
    }
    Ok((count, pushed))
}

/// Has every connected load balancer of `member`'s pool applied a configuration rendered from
/// the pool as it is now? (A load balancer that is not connected cannot be waited for.)
pub async fn in_step(app: &App, member: &Server) -> Result<bool, AppError> {
    let Some(pool) = lb_tag(member, "pool") else {
        return Ok(true);
    };
    for lb in balancers(app).await? {
        if lb.deployment != member.deployment
            || lb_tag(&lb, "balances") != Some(pool)
            || !app.agent_connected(lb.id).await
        {
            continue;
        }
        let want: Vec<String> = files_for(app, &lb).await?.iter().map(ManagedFile::sha256).collect();
        let rec = super::desired::agent_record(app, lb.id).await?;
        if want.iter().any(|sha| {
            rec.files
                .get(HAPROXY_CFG)
                .is_none_or(|f| &f.sha256 != sha || !f.applied)
        }) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_types::tag::Tag;

    fn server(name: &str, state: ServerState, ip: &str, tags: &[&str]) -> Server {
        let mut s: Server = serde_json::from_value(serde_json::json!({
            "id": ServerId::new(), "revision": 1, "name": name, "deployment": "web",
            "template": "t", "cloud": "c", "region": "r", "image": "i", "image_version": 1,
            "native_image": "n", "size": "s", "template_version": 1, "template_hash": "h",
            "state": state, "inputs": {}, "tags": [], "login_user": "root",
            "created_at": chrono::Utc::now(), "updated_at": chrono::Utc::now(),
        }))
        .expect("a server");
        s.private_ip = ip.parse().ok();
        s.tags = tags.iter().map(|t| Tag::parse(t).expect("tag")).collect();
        s
    }

    #[test]
    fn a_pool_is_its_operational_members_in_name_order() {
        use ServerState::*;
        let lb = server("lb-1", Operational, "10.0.0.1", &["lb:balances=www", "lb:listen=8000"]);
        let servers = vec![
            server(
                "app-2",
                Operational,
                "10.0.0.3",
                &["lb:pool=www", "lb:port=8080", "lb:check=/health"],
            ),
            server(
                "app-1",
                Operational,
                "10.0.0.2",
                &["lb:pool=www", "lb:port=8080", "lb:check=/health"],
            ),
            server("app-3", Booting, "10.0.0.4", &["lb:pool=www"]),
            server("app-4", Stranded, "10.0.0.5", &["lb:pool=www"]),
            server("api-1", Operational, "10.0.0.6", &["lb:pool=api"]),
            server("bad-1", Operational, "10.0.0.7", &["lb:pool=www", "lb:port=http"]),
        ];
        let (pool, left_out) = pool_of(&lb, &servers).unwrap().unwrap();
        let names: Vec<&str> = pool.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["app-1", "app-2"]);
        assert_eq!(pool.listen, 8000);
        assert_eq!(left_out.len(), 1);
        assert!(left_out[0].contains("not a port"), "{left_out:?}");
        let cfg = render("web/lb-1", &pool);
        assert!(cfg.contains("bind *:8000"), "{cfg}");
        assert!(
            cfg.contains("server app-1 10.0.0.2:8080 check\n    server app-2 10.0.0.3:8080 check"),
            "{cfg}"
        );
        assert!(cfg.contains("option httpchk GET /health"), "{cfg}");
        // The same membership renders the same text, whatever the input order.
        let mut reversed = servers.clone();
        reversed.reverse();
        let (again, _) = pool_of(&lb, &reversed).unwrap().unwrap();
        assert_eq!(render("web/lb-1", &again), cfg);
        // Not a load balancer; a pool name that would need quoting.
        assert!(pool_of(&servers[0], &servers).is_none());
        let hostile = server("lb-2", Operational, "10.0.0.9", &["lb:balances=a b"]);
        if let Some(r) = pool_of(&hostile, &servers) {
            assert!(r.is_err());
        }
    }

    /// No member decides how the others are checked: the load balancer's own `lb:check` wins,
    /// and members that disagree get the default, reported.
    #[test]
    fn the_health_check_belongs_to_the_load_balancer() {
        use ServerState::*;
        let member = |name: &str, ip: &str, check: Option<&str>| {
            let mut tags = vec!["lb:pool=www".to_string()];
            tags.extend(check.map(|c| format!("lb:check={c}")));
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            server(name, Operational, ip, &tags)
        };
        let agreeing = vec![
            member("app-1", "10.0.0.2", Some("/health")),
            member("app-2", "10.0.0.3", Some("/health")),
        ];
        let plain_lb = server("lb-1", Operational, "10.0.0.1", &["lb:balances=www"]);
        let (pool, left_out) = pool_of(&plain_lb, &agreeing).unwrap().unwrap();
        assert_eq!((pool.check.as_str(), left_out.len()), ("/health", 0));
        // A member (listed first by name) asking for a path the others do not: the default.
        let mut disagreeing = agreeing.clone();
        disagreeing.push(member("aaa", "10.0.0.4", Some("/always-200")));
        let (pool, left_out) = pool_of(&plain_lb, &disagreeing).unwrap().unwrap();
        assert_eq!(pool.check, "/");
        assert_eq!(pool.members.len(), 3);
        assert!(left_out.iter().any(|w| w.contains("disagree")), "{left_out:?}");
        // A member without lb:check asks for the default `/`, which disagrees with /health.
        let mut mixed = agreeing.clone();
        mixed.push(member("app-3", "10.0.0.5", None));
        assert_eq!(pool_of(&plain_lb, &mixed).unwrap().unwrap().0.check, "/");
        // The load balancer's own tag wins over every member's.
        let lb = server("lb-1", Operational, "10.0.0.1", &["lb:balances=www", "lb:check=/ready"]);
        let (pool, _) = pool_of(&lb, &disagreeing).unwrap().unwrap();
        assert_eq!(pool.check, "/ready");
        assert!(render("web/lb-1", &pool).contains("option httpchk GET /ready\n"));
        let bad = server("lb-1", Operational, "10.0.0.1", &["lb:balances=www", "lb:check=nope"]);
        assert!(pool_of(&bad, &agreeing).unwrap().is_err());
    }

    /// HAProxy itself accepts what is rendered (`haproxy -c`), with members and without.
    #[test]
    fn haproxy_accepts_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let lb = server("lb-1", ServerState::Operational, "10.0.0.1", &["lb:balances=www"]);
        for servers in [
            vec![],
            vec![server(
                "app-1",
                ServerState::Operational,
                "10.0.0.2",
                &["lb:pool=www", "lb:port=8080"],
            )],
        ] {
            let (pool, _) = pool_of(&lb, &servers).unwrap().unwrap();
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, render("web/lb-1", &pool)).unwrap();
            let out = std::process::Command::new("haproxy")
                .arg("-c")
                .arg("-f")
                .arg(&file)
                .output()
                .expect("haproxy (scripts/host-packages.sh installs it)");
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
