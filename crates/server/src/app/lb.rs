//! Load-balancer wiring by tags: which servers a load balancer balances, and the HAProxy
//! configuration the control plane renders for it. (Issue 6, in progress: rendering and
//! membership are here; debounced pushes through the agent come next.)
//!
//! Tags, all in the `lb` namespace:
//!
//! | on | tag | meaning |
//! |---|---|---|
//! | load balancer | `lb:balances=POOL` | balances the pool POOL |
//! | load balancer | `lb:listen=PORT` | listens on PORT (default 80) |
//! | app server | `lb:pool=POOL` | is a member of POOL |
//! | app server | `lb:port=PORT` | serves on PORT (default 80) |
//! | app server | `lb:check=/PATH` | HAProxy's health check path (default `/`) |
//!
//! A pool's members are the *operational* servers of the load balancer's deployment tagged
//! `lb:pool=POOL`; a booting, stranded or terminated server is not one. The configuration is
//! rendered in name order, so the same membership always gives the same text (and an agent
//! that already holds it has nothing to reload). Anything that would have to be escaped in an
//! HAProxy configuration (a pool or path with spaces, quotes or `#`) is refused, not quoted.

use std::fmt::Write;
use std::net::IpAddr;

use stratus_types::server::{Server, ServerState};

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    pub check: String,
}

/// What a load balancer serves: its pool, port and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub listen: u16,
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
    let mut members = vec![];
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
            (Ok(port), true, true) => members.push(Member {
                name: s.name.to_string(),
                ip,
                port,
                check,
            }),
            (Err(e), _, _) => left_out.push(format!("{}: {e}", s.name)),
            (_, false, _) => left_out.push(format!("{}: lb:check={check:?} is not a usable path", s.name)),
            (_, _, false) => left_out.push(format!("{}: the name cannot be an HAProxy server name", s.name)),
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((
        Pool {
            name: name.to_string(),
            listen,
            members,
        },
        left_out,
    ))
}

/// The HAProxy configuration for one load balancer. Health checks take a failing member out
/// of rotation within two seconds (`inter 1s fall 2`) and put it back after one good check.
/// The runtime socket lets the agent reload without dropping established connections
/// (`haproxy -sf`, with `expose-fd listeners` for the seamless handover).
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
        "global\n    maxconn 4096\n    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners\n\n\
         defaults\n    mode http\n    option redispatch\n    retries 2\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout http-request 10s\n\n",
    );
    let _ = writeln!(
        c,
        "frontend {p}\n    bind *:{port}\n    default_backend {p}\n",
        p = pool.name,
        port = pool.listen
    );
    let _ = writeln!(c, "backend {}\n    balance roundrobin", pool.name);
    // One check path per backend: the first member's (they serve the same application).
    let check = pool.members.first().map_or("/", |m| m.check.as_str());
    let _ = writeln!(c, "    option httpchk GET {check}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_types::tag::Tag;

    fn server(name: &str, state: ServerState, ip: &str, tags: &[&str]) -> Server {
        let mut s: Server = serde_json::from_value(serde_json::json!({
            "id": stratus_types::ServerId::new(), "revision": 1, "name": name, "deployment": "web",
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
            server("app-2", Operational, "10.0.0.3", &["lb:pool=www", "lb:port=8080"]),
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
