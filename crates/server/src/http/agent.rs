//! The agent's side of the API: enrolment, what an enrolled agent may ask about itself, and
//! its WebSocket connection (handshake, desired state, reports; logic in `app/gateway.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use stratus_agent_proto::limits::MAX_AGENT_FRAME;
use stratus_agent_proto::{
    AgentMessage, ControlMessage, DEAD_AFTER_HEARTBEATS, DEFAULT_HEARTBEAT_SECS, Refused, RefusedReason,
    SUPPORTED_VERSIONS, Welcome, decode_agent, encode_control, negotiate,
};
use stratus_types::server::Server;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{AgentCaller, Body, ConnectingAgent, PeerIp};
use crate::app::agents::{self, EnrolRequest, Enrolled};
use crate::app::hub::SessionSlot;
use crate::app::{App, AppError, boot, gateway};

/// Enrol an instance's agent with its one-time token (and, where the cloud signs them, its
/// instance-identity document); the answer holds the agent's credential, shown once.
#[utoipa::path(post, path = "/agent/enroll", tag = "agent", request_body = EnrolRequest, security(()), responses((status = 200, body = Enrolled), (status = 401, body = stratus_api::error::ErrorBody), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn enroll(
    State(app): State<Arc<App>>,
    PeerIp(peer): PeerIp,
    Body(req): Body<EnrolRequest>,
) -> Result<Json<Enrolled>, ApiError> {
    Ok(Json(agents::enrol(&app, &req, peer).await?))
}

/// What an agent sees of itself.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct AgentSelf {
    server: Server,
    instance_id: String,
    enrolled_at: chrono::DateTime<chrono::Utc>,
}

/// The agent's own server and enrolment.
#[utoipa::path(get, path = "/agent/self", tag = "agent", responses((status = 200, body = AgentSelf), (status = 401, body = stratus_api::error::ErrorBody)))]
async fn whoami(a: AgentCaller) -> Json<AgentSelf> {
    Json(AgentSelf {
        server: a.server,
        instance_id: a.agent.instance_id,
        enrolled_at: a.agent.enrolled_at,
    })
}

/// The agent's one connection (WebSocket): the protocol of the `stratus-agent-proto` crate.
/// A newer connection of the same agent replaces an older one (see `app/hub.rs`); when the
/// control plane holds as many agent sessions as it may, `503` before the upgrade.
#[utoipa::path(get, path = "/agent/connect", tag = "agent", responses((status = 101, description = "switching to the agent protocol"), (status = 401, body = stratus_api::error::ErrorBody), (status = 503, description = "too many agent sessions; retry later")))]
async fn connect(State(app): State<Arc<App>>, ConnectingAgent(a): ConnectingAgent, ws: WebSocketUpgrade) -> Response {
    match app.cluster.open_session(a.server.id) {
        Ok(slot) => ws
            .max_message_size(MAX_AGENT_FRAME)
            .on_upgrade(move |socket| session(app, a, slot, socket)),
        Err(full) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "30")],
            full.to_string(),
        )
            .into_response(),
    }
}

/// How long one write to an agent's socket may take before the session is given up: an agent
/// that stops reading fills its socket's buffers, and must not hold anyone else up. The base,
/// for a small frame; a large one gets [`AGENT_WRITE_MIN_RATE`] on top (see [`write_deadline`]).
pub const AGENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The slowest link a large control frame must still get through: bytes per second.
pub const AGENT_WRITE_MIN_RATE: u64 = 64 * 1024;

/// How long writing a frame of `len` bytes may take: [`AGENT_WRITE_TIMEOUT`] plus its time at
/// [`AGENT_WRITE_MIN_RATE`] (a 16 MiB frame: 10 s + 256 s), so a big frame is not cut on a slow
/// link and then resent and cut again forever.
pub fn write_deadline(len: usize) -> Duration {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    AGENT_WRITE_TIMEOUT + Duration::from_secs(len / AGENT_WRITE_MIN_RATE)
}

/// Send one control message; false when the connection is gone or does not take it in time.
async fn send(socket: &mut WebSocket, msg: &ControlMessage) -> bool {
    match encode_control(msg) {
        Ok(text) => write(socket, Message::Text(text.into())).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a control message");
            false
        }
    }
}

/// Write one frame within its [`write_deadline`].
async fn write(socket: &mut WebSocket, frame: Message) -> bool {
    let deadline = write_deadline(match &frame {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    });
    match tokio::time::timeout(deadline, socket.send(frame)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::warn!(
                timeout_secs = deadline.as_secs(),
                "an agent is not reading its connection; closing it"
            );
            false
        }
    }
}

async fn refuse(socket: &mut WebSocket, reason: RefusedReason, message: String) {
    tracing::warn!(?reason, %message, "agent refused");
    if send(socket, &ControlMessage::Refused(Refused { reason, message })).await {
        let _ = write(socket, Message::Close(None)).await;
    }
}

/// The next agent message: None when the connection ended, Err for a bad frame.
async fn next(socket: &mut WebSocket) -> Option<Result<AgentMessage, String>> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) => return Some(decode_agent(t.as_str()).map_err(|e| e.to_string())),
            Ok(Message::Binary(_)) => return Some(Err("binary frames are not part of the protocol".into())),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn session(app: Arc<App>, a: AgentCaller, slot: SessionSlot, mut socket: WebSocket) {
    let server = a.server.clone();
    let hello = tokio::select! {
        first = tokio::time::timeout(Duration::from_secs(10), next(&mut socket)) => first,
        () = slot.closed() => return,
    };
    let hello = match hello {
        Ok(Some(Ok(AgentMessage::Hello(h)))) => h,
        Ok(Some(Err(e))) => return refuse(&mut socket, RefusedReason::ProtocolError, e).await,
        Ok(None) => return,
        _ => {
            let m = "the first message must be hello, within 10 s".to_string();
            return refuse(&mut socket, RefusedReason::ProtocolError, m).await;
        }
    };
    if server.state == stratus_types::server::ServerState::Terminated {
        let m = format!("server {}/{} is terminated", server.deployment, server.name);
        return refuse(&mut socket, RefusedReason::Terminated, m).await;
    }
    if hello.server != server.id {
        let m = format!("this credential belongs to server {}, not {}", server.id, hello.server);
        return refuse(&mut socket, RefusedReason::WrongServer, m).await;
    }
    let Some(version) = negotiate(&hello.versions, SUPPORTED_VERSIONS) else {
        let m = format!("this control plane speaks protocol versions {SUPPORTED_VERSIONS:?}");
        return refuse(&mut socket, RefusedReason::UnsupportedVersion, m).await;
    };
    let mut gw = gateway::Session::new(server.id);
    let gateway::Greeting {
        resume,
        desired,
        resend,
    } = match gateway::hello(&app, &mut gw, &hello).await {
        Ok(x) => x,
        Err(e) => return refuse(&mut socket, RefusedReason::Unavailable, e.to_string()).await,
    };
    let welcome = Welcome {
        version,
        heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
        resume,
    };
    if !send(&mut socket, &ControlMessage::Welcome(welcome)).await {
        return;
    }
    let nothing_to_boot = desired.boot.is_empty();
    if !send(&mut socket, &ControlMessage::DesiredState(desired)).await {
        return;
    }
    for r in resend {
        if !send(&mut socket, &ControlMessage::RunScript(r)).await {
            return;
        }
    }
    // A template without boot scripts is booted once its agent is connected.
    if nothing_to_boot && let Err(e) = boot::settle_boot(&app, server.id).await {
        tracing::warn!(server = %server.name, error = %e, "cannot settle the boot");
    }
    // A newer connection of this agent took over during the handshake: it has the agent.
    let Some(mut pushed) = slot.attach() else {
        let _ = write(&mut socket, Message::Close(None)).await;
        return;
    };
    tracing::info!(server = %server.name, agent = %hello.agent_version, "agent connected");
    app.agent_claimed(server.id, true).await;
    let dead_after = Duration::from_secs(u64::from(DEFAULT_HEARTBEAT_SECS * DEAD_AFTER_HEARTBEATS));
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(dead_after, next(&mut socket)) => m,
            () = slot.closed() => {
                tracing::info!(server = %server.name, "agent session closed (a newer one replaced it, or it was not taking its messages)");
                let _ = write(&mut socket, Message::Close(None)).await;
                break;
            }
            out = pushed.recv() => {
                let Some(out) = out else { break };
                match &out {
                    ControlMessage::RunScript(r) => gw.track(r),
                    ControlMessage::DesiredState(d) => d.boot.iter().for_each(|r| gw.track(r)),
                    _ => {}
                }
                if !send(&mut socket, &out).await {
                    break;
                }
                if let ControlMessage::Refused(r) = &out {
                    tracing::info!(server = %server.name, reason = ?r.reason, "agent told to go");
                    let _ = write(&mut socket, Message::Close(None)).await;
                    break;
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                refuse(&mut socket, RefusedReason::ProtocolError, e).await;
                break;
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(server = %server.name, "agent silent for too long; closing");
                break;
            }
        };
        let reply = match handle(&app, &mut gw, msg).await {
            Ok(reply) => reply,
            Err(AppError::Forbidden(m)) => {
                refuse(&mut socket, RefusedReason::ProtocolError, m).await;
                break;
            }
            Err(e) => {
                refuse(&mut socket, RefusedReason::Unavailable, e.to_string()).await;
                break;
            }
        };
        if let Some(r) = reply
            && !send(&mut socket, &r).await
        {
            break;
        }
    }
    if slot.release() {
        app.agent_claimed(server.id, false).await;
    }
    tracing::info!(server = %server.name, "agent disconnected");
}

async fn handle(app: &App, gw: &mut gateway::Session, msg: AgentMessage) -> Result<Option<ControlMessage>, AppError> {
    Ok(match msg {
        AgentMessage::Heartbeat { .. } => Some(ControlMessage::Heartbeat { at: chrono::Utc::now() }),
        AgentMessage::Applied { generation } => {
            gateway::applied(app, gw, generation).await?;
            None
        }
        AgentMessage::RunStarted { run, started_at } => {
            gateway::run_started(app, gw, run, started_at).await?;
            None
        }
        AgentMessage::Output(o) => {
            gateway::output(app, gw, o.run, o.seq, &o.data).await?;
            Some(ControlMessage::AckOutput { run: o.run, seq: o.seq })
        }
        AgentMessage::RunFinished(done) => {
            gateway::run_finished(app, gw, &done).await?;
            Some(ControlMessage::AckFinished { run: done.run })
        }
        AgentMessage::TagChange {
            request_id,
            add,
            remove,
        } => Some(match gateway::tag_change(app, gw, &add, &remove).await {
            Ok(tags) => ControlMessage::TagChangeResult { request_id, tags },
            Err(e) => failed(request_id, e)?,
        }),
        AgentMessage::TagQuery { request_id, selector } => Some(match gateway::tag_query(app, gw, &selector).await {
            Ok((servers, truncated)) => ControlMessage::TagQueryResult {
                request_id,
                servers,
                truncated,
            },
            Err(e) => failed(request_id, e)?,
        }),
        AgentMessage::Access { user, kind, from, at } => {
            gateway::access(app, gw, &user, kind, from.as_deref(), at).await?;
            None
        }
        AgentMessage::FileStatus {
            path,
            sha256,
            applied,
            error,
        } => {
            gateway::file_status(app, gw, &path, &sha256, applied, error.as_deref()).await?;
            None
        }
        AgentMessage::ImagePrepared(answer) => {
            crate::app::rebundle::prepared(app, gw.server, &answer).await?;
            None
        }
        AgentMessage::Hello(_) => return Err(AppError::Forbidden("hello twice".into())),
    })
}

/// A request the agent made was refused: the answer for the agent, unless the store failed
/// (then the connection ends and the agent retries later).
fn failed(request_id: u64, e: AppError) -> Result<ControlMessage, AppError> {
    match e {
        AppError::Store(_) => Err(e),
        e => Ok(ControlMessage::RequestFailed {
            request_id,
            message: e.to_string(),
        }),
    }
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(enroll))
        .routes(routes!(whoami))
        .routes(routes!(connect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_gets_the_base_deadline_plus_its_time_at_the_minimum_rate() {
        assert_eq!(write_deadline(0), AGENT_WRITE_TIMEOUT);
        assert_eq!(write_deadline(1000), AGENT_WRITE_TIMEOUT);
        assert_eq!(
            write_deadline(640 * 1024),
            AGENT_WRITE_TIMEOUT + Duration::from_secs(10)
        );
        // The largest frame an agent session carries gets through at 64 KiB/s.
        assert_eq!(
            write_deadline(16 * 1024 * 1024),
            AGENT_WRITE_TIMEOUT + Duration::from_secs(256)
        );
        assert!(write_deadline(usize::MAX) > write_deadline(16 * 1024 * 1024));
    }
}
