//! Agent-local commands: `stratus-agent tag add/remove/list/query`, for scripts on the
//! instance. The running agent listens on `STATE/agent.sock` (0600, root only); each script's
//! environment names it in `STRATUS_AGENT_SOCKET`. One JSON request line, one JSON answer line.
//!
//! `tag list` is answered from the desired state the agent holds; `add`, `remove` and `query`
//! go to the control plane over the agent's connection (an agent acts only as its own server;
//! a query sees its own deployment), waiting up to 30 s for a connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stratus_agent_proto::{AgentMessage, ControlMessage, PeerServer};
use stratus_types::tag::{Selector, Tag};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::AgentError;
use crate::connection::Agent;

/// The longest request line the socket reads.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    TagList {},
    TagChange {
        #[serde(default)]
        add: Vec<Tag>,
        #[serde(default)]
        remove: Vec<Tag>,
    },
    TagQuery {
        selector: Selector,
    },
    /// From the PAM session hook: a managed account logged in or used sudo.
    Access {
        user: String,
        kind: stratus_agent_proto::AccessKind,
        #[serde(default)]
        from: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Tags(Vec<Tag>),
    Servers { servers: Vec<PeerServer>, truncated: bool },
    Done,
    Error(String),
}

/// Listen on the agent's socket (a stale one from an earlier run is replaced).
pub fn serve(agent: Arc<Agent>) -> Result<(), AgentError> {
    let path = agent.cfg.socket_path();
    let state = |e| AgentError::State {
        path: path.display().to_string(),
        source: e,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(state(e)),
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(state)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(state)?;
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = tokio::io::BufReader::new(r).take(MAX_REQUEST as u64 + 1);
                let mut line = String::new();
                let answer = match r.read_line(&mut line).await {
                    Ok(n) if n > MAX_REQUEST => Answer::Error(format!("the request is over {MAX_REQUEST} bytes")),
                    Ok(_) => match serde_json::from_str::<Request>(line.trim_end()) {
                        Ok(req) => answer(&agent, req).await,
                        Err(e) => Answer::Error(format!("malformed request: {e}")),
                    },
                    Err(e) => Answer::Error(format!("cannot read the request: {e}")),
                };
                let mut out = serde_json::to_vec(&answer).unwrap_or_default();
                out.push(b'\n');
                let _ = w.write_all(&out).await;
            });
        }
    });
    Ok(())
}

use tokio::io::AsyncReadExt as _;

async fn answer(agent: &Agent, req: Request) -> Answer {
    match req {
        Request::Access { user, kind, from } => {
            // Only accounts Stratus manages are reported (root's own logins are not ours).
            let host = crate::accounts::Host::new(&agent.cfg.state_dir);
            if !host.managed().contains(&user) {
                return Answer::Done;
            }
            let msg = AgentMessage::Access {
                user,
                kind,
                from: from.map(|f| f.chars().filter(|c| !c.is_control()).take(255).collect()),
                at: chrono::Utc::now(),
            };
            if agent.send_event(msg) {
                Answer::Done
            } else {
                Answer::Error("the agent's queue is full".into())
            }
        }
        Request::TagList {} => Answer::Tags(agent.recorded.lock().unwrap_or_else(|e| e.into_inner()).tags.clone()),
        Request::TagChange { add, remove } => {
            match agent
                .request(|request_id| AgentMessage::TagChange {
                    request_id,
                    add,
                    remove,
                })
                .await
            {
                Ok(ControlMessage::TagChangeResult { tags, .. }) => Answer::Tags(tags),
                Ok(ControlMessage::RequestFailed { message, .. }) => Answer::Error(message),
                Ok(other) => Answer::Error(format!("unexpected answer: {other:?}")),
                Err(e) => Answer::Error(e),
            }
        }
        Request::TagQuery { selector } => {
            match agent
                .request(|request_id| AgentMessage::TagQuery { request_id, selector })
                .await
            {
                Ok(ControlMessage::TagQueryResult { servers, truncated, .. }) => Answer::Servers { servers, truncated },
                Ok(ControlMessage::RequestFailed { message, .. }) => Answer::Error(message),
                Ok(other) => Answer::Error(format!("unexpected answer: {other:?}")),
                Err(e) => Answer::Error(e),
            }
        }
    }
}

/// `stratus-agent access-event`: run by PAM (`pam_exec`) when a session opens for sshd or
/// sudo. Reports a managed account's login or sudo to the running agent, from PAM's
/// environment; quiet, quick, and always exit 0 (a report must never block a login).
pub fn access_event(state_dir: Option<&Path>) -> std::process::ExitCode {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if var("PAM_TYPE").as_deref() != Some("open_session") {
        return std::process::ExitCode::SUCCESS;
    }
    let (kind, user) = match var("PAM_SERVICE").as_deref() {
        Some("sshd") => (stratus_agent_proto::AccessKind::Login, var("PAM_USER")),
        // sudo's PAM user is the target (root); the one who asked is the requesting user.
        Some("sudo") => (stratus_agent_proto::AccessKind::Sudo, var("PAM_RUSER")),
        _ => return std::process::ExitCode::SUCCESS,
    };
    let Some(user) = user else {
        return std::process::ExitCode::SUCCESS;
    };
    let req = Request::Access {
        user,
        kind,
        from: var("PAM_RHOST"),
    };
    let _ = ask(&socket_path(state_dir), &req);
    std::process::ExitCode::SUCCESS
}

/// `stratus-agent tag ARGS`: parse, ask the running agent, print. The exit code: 0 done,
/// 1 refused or failed, 2 a usage error.
pub fn tag_command(args: &[String], state_dir: Option<&Path>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let json = args.iter().any(|a| a == "--json");
    let args: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "--json").collect();
    let usage = "usage: stratus-agent tag add TAG... | remove TAG... | list | query SELECTOR  [--json]";
    let parse_tags = |list: &[&str]| -> Result<Vec<Tag>, String> {
        if list.is_empty() {
            return Err("give at least one tag (namespace:predicate=value)".into());
        }
        list.iter()
            .map(|t| Tag::parse(t).map_err(|e| format!("{t:?}: {}", e.problem)))
            .collect()
    };
    let req = match args.as_slice() {
        ["list"] => Ok(Request::TagList {}),
        ["add", rest @ ..] => parse_tags(rest).map(|add| Request::TagChange { add, remove: vec![] }),
        ["remove", rest @ ..] => parse_tags(rest).map(|remove| Request::TagChange { add: vec![], remove }),
        ["query", rest @ ..] if !rest.is_empty() => Selector::parse(&rest.join(" "))
            .map(|selector| Request::TagQuery { selector })
            .map_err(|e| format!("selector: {}", e.problem)),
        _ => Err(usage.to_string()),
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stratus-agent tag: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = socket_path(state_dir);
    match ask(&socket, &req) {
        Ok(Answer::Error(e)) | Err(e) => {
            eprintln!("stratus-agent tag: {e}");
            ExitCode::from(1)
        }
        Ok(a) => {
            print(&a, json);
            ExitCode::SUCCESS
        }
    }
}

fn socket_path(state_dir: Option<&Path>) -> PathBuf {
    if let Some(s) = std::env::var_os("STRATUS_AGENT_SOCKET") {
        return s.into();
    }
    state_dir
        .unwrap_or(Path::new(crate::DEFAULT_STATE_DIR))
        .join("agent.sock")
}

/// One request to the running agent.
pub fn ask(socket: &Path, req: &Request) -> Result<Answer, String> {
    let mut conn = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the agent at {}: {e} (is stratus-agent running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    conn.write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the agent: {e}"))?;
    serde_json::from_str(answer.trim_end()).map_err(|e| format!("a malformed answer from the agent: {e}"))
}

fn print(a: &Answer, json: bool) {
    if json {
        let v = match a {
            Answer::Tags(t) => serde_json::json!(t),
            Answer::Servers { servers, truncated } => serde_json::json!({ "servers": servers, "truncated": truncated }),
            Answer::Done => serde_json::json!({}),
            Answer::Error(e) => serde_json::json!({ "error": e }),
        };
        println!("{v}");
        return;
    }
    match a {
        Answer::Tags(tags) => {
            for t in tags {
                println!("{t}");
            }
        }
        Answer::Servers { servers, truncated } => {
            let ip = |ip: Option<std::net::IpAddr>| ip.map_or("-".to_string(), |i| i.to_string());
            for s in servers {
                let tags: Vec<String> = s.tags.iter().map(ToString::to_string).collect();
                println!("{} {} {} {}", s.name, ip(s.private_ip), ip(s.public_ip), tags.join(","));
            }
            if *truncated {
                eprintln!("(more servers matched; refine the selector)");
            }
        }
        Answer::Done => {}
        Answer::Error(e) => eprintln!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives on the socket is a request or an error, never a panic; a request
        /// that parses prints back to one that parses the same.
        #[test]
        fn any_line_is_a_request_or_an_error(line in ".{0,300}") {
            if let Ok(req) = serde_json::from_str::<Request>(&line) {
                let again: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
                prop_assert_eq!(again, req);
            }
        }

        #[test]
        fn tag_changes_round_trip(ns in "[a-z]{1,8}", pred in "[a-z_]{1,8}", value in "[a-zA-Z0-9./=:-]{0,20}") {
            let line = format!(r#"{{"op":"tag_change","add":["{ns}:{pred}={value}"]}}"#);
            if let Ok(req) = serde_json::from_str::<Request>(&line) {
                let again: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
                prop_assert_eq!(again, req);
            }
        }
    }

    #[test]
    fn requests_are_strict() {
        let ok: Request = serde_json::from_str(r#"{"op":"tag_change","add":["a:b=c"]}"#).unwrap();
        assert!(matches!(ok, Request::TagChange { .. }));
        for bad in [
            r#"{"op":"tag_change","add":["no-namespace"]}"#,
            r#"{"op":"tag_list","extra":1}"#,
            r#"{"op":"rm -rf"}"#,
            r#"{"op":"tag_query","selector":""}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
