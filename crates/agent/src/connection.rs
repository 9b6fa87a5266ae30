//! The connection: hello, desired state, boot runs, heartbeats; reconnect with backoff.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use stratus_agent_proto::{
    AgentMessage, ControlMessage, Generation, Hello, Outcome, Output, PROTOCOL_VERSION, RECONNECT_MAX_SECS,
    RECONNECT_MIN_SECS, RunFinished, ScriptRun, decode_control, encode_agent, split_output,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::{AgentConfig, UserData};
use crate::{AgentError, enrol, runner};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Run forever: enrol if needed, connect, serve; on failure wait (backoff with jitter) and
/// try again. Returns only for errors no retry can fix (a refused enrolment).
pub async fn run_forever(cfg: AgentConfig) -> AgentError {
    let mut failures = 0u32;
    loop {
        match once(&cfg).await {
            Err(e @ (AgentError::Enrolment { .. } | AgentError::Identity { .. })) => return e,
            Err(AgentError::Refused(m)) if m.starts_with("wrong_server") => return AgentError::Refused(m),
            Err(e) => tracing::warn!(error = %e, "connection ended"),
            Ok(()) => failures = 0,
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// Exponential backoff with full jitter: uniform in [min, min(max, min·2^n)].
pub fn backoff(failures: u32) -> Duration {
    let cap = u64::from(RECONNECT_MAX_SECS).min(u64::from(RECONNECT_MIN_SECS) << failures.min(6)) * 1000;
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let min = u64::from(RECONNECT_MIN_SECS) * 1000;
    Duration::from_millis(min + u64::from_le_bytes(b) % (cap.saturating_sub(min) + 1))
}

async fn once(cfg: &AgentConfig) -> Result<(), AgentError> {
    let ud = enrol::user_data(cfg).await?;
    let token = enrol::credential(cfg, &ud).await?;
    let mut ws = connect(&ud, &token).await?;
    send(&mut ws, hello(&ud)).await?;
    let heartbeat = match recv(&mut ws).await? {
        ControlMessage::Welcome(w) => Duration::from_secs(u64::from(w.heartbeat_secs.max(1))),
        ControlMessage::Refused(r) => {
            return Err(AgentError::Refused(
                format!("{:?}: {}", r.reason, r.message).to_lowercase(),
            ));
        }
        other => return Err(AgentError::Protocol(format!("expected welcome, got {other:?}"))),
    };
    tracing::info!(server = %ud.server_id, "connected");
    let mut tick = tokio::time::interval(heartbeat);
    loop {
        tokio::select! {
            msg = recv(&mut ws) => match msg? {
                ControlMessage::DesiredState(d) => {
                    for r in &d.boot {
                        execute(cfg, &mut ws, r).await?;
                    }
                    send(&mut ws, AgentMessage::Applied { generation: d.generation }).await?;
                }
                ControlMessage::RunScript(r) => execute(cfg, &mut ws, &r).await?,
                ControlMessage::Refused(r) => return Err(AgentError::Refused(format!("{:?}: {}", r.reason, r.message).to_lowercase())),
                _ => {}
            },
            _ = tick.tick() => send(&mut ws, AgentMessage::Heartbeat { at: chrono::Utc::now() }).await?,
        }
    }
}

fn hello(ud: &UserData) -> AgentMessage {
    AgentMessage::Hello(Hello {
        versions: vec![PROTOCOL_VERSION],
        agent_version: env!("CARGO_PKG_VERSION").into(),
        server: ud.server_id,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        last_generation: Generation::NONE,
        unacked: vec![],
    })
}

async fn connect(ud: &UserData, token: &str) -> Result<Ws, AgentError> {
    let base = ud.stratus_url.trim_end_matches('/');
    let url = format!("{}/api/v1/agent/connect", base.replacen("http", "ws", 1));
    let unreachable = |e: String| AgentError::Unreachable {
        url: url.clone(),
        detail: e,
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| unreachable(e.to_string()))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| unreachable("bad credential".into()))?;
    req.headers_mut().insert("authorization", auth);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, msg: AgentMessage) -> Result<(), AgentError> {
    let text = encode_agent(&msg).map_err(|e| AgentError::Protocol(e.to_string()))?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| AgentError::Protocol(format!("send: {e}")))
}

async fn recv(ws: &mut Ws) -> Result<ControlMessage, AgentError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return decode_control(t.as_str()).map_err(|e| AgentError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(AgentError::Protocol("the control plane closed the connection".into()));
            }
            Some(Err(e)) => return Err(AgentError::Protocol(e.to_string())),
            Some(Ok(_)) => {}
        }
    }
}

/// Run one script unless it already ran here, streaming its output; report the end.
async fn execute(cfg: &AgentConfig, ws: &mut Ws, r: &ScriptRun) -> Result<(), AgentError> {
    let done_marker = cfg.runs_dir().join(r.run.to_string());
    let state = |e| AgentError::State {
        path: cfg.runs_dir().display().to_string(),
        source: e,
    };
    if done_marker.exists() {
        return Ok(()); // finished before a reconnect: never run twice
    }
    let started_marker = cfg.runs_dir().join(format!("{}.started", r.run));
    if started_marker.exists() {
        // It started before the connection dropped (or the agent restarted) and its end was
        // never reported: at most once, so it is reported interrupted, not run again.
        let finished = RunFinished {
            run: r.run,
            outcome: Outcome::Interrupted,
            exit_code: None,
            signal: None,
            error: Some("the agent lost its connection or restarted while this ran; it was not run again".into()),
            finished_at: chrono::Utc::now(),
            output_chunks: 0,
            output_bytes: 0,
        };
        send(ws, AgentMessage::RunFinished(finished)).await?;
        std::fs::write(&done_marker, b"").map_err(state)?;
        return Ok(());
    }
    std::fs::create_dir_all(cfg.runs_dir()).map_err(state)?;
    std::fs::write(&started_marker, b"").map_err(state)?;
    send(
        ws,
        AgentMessage::RunStarted {
            run: r.run,
            started_at: chrono::Utc::now(),
        },
    )
    .await?;
    let (tx, mut rx) = mpsc::channel(64);
    let work = cfg.state_dir.clone();
    let script = r.clone();
    let job = tokio::spawn(async move { runner::run(&script, &work, tx).await });
    let (mut seq, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = rx.recv().await {
        for piece in split_output(&chunk.data) {
            bytes += piece.len() as u64;
            let out = Output {
                run: r.run,
                seq,
                stream: chunk.stream,
                data: piece.to_string(),
                at: chrono::Utc::now(),
            };
            send(ws, AgentMessage::Output(out)).await?;
            seq += 1;
        }
    }
    let ended = job
        .await
        .map_err(|e| AgentError::Protocol(format!("script task: {e}")))?;
    let outcome = match (&ended.exit_code, &ended.signal, &ended.error) {
        _ if ended.timed_out => Outcome::TimedOut,
        (_, _, Some(_)) => Outcome::FailedToStart,
        (Some(_), _, _) => Outcome::Exited,
        (None, Some(_), _) => Outcome::Signalled,
        _ => Outcome::FailedToStart,
    };
    let finished = RunFinished {
        run: r.run,
        outcome,
        // A script that ran out of time was killed: it has a signal, not an exit code.
        exit_code: if ended.timed_out { None } else { ended.exit_code },
        signal: ended.signal,
        error: ended.error,
        finished_at: chrono::Utc::now(),
        output_chunks: seq,
        output_bytes: bytes,
    };
    send(ws, AgentMessage::RunFinished(finished)).await?;
    std::fs::write(&done_marker, b"").map_err(state)?;
    Ok(())
}
