//! Extractors: the caller (bearer token), and JSON/query bodies whose rejections become API
//! errors that name the problem.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use stratus_api::error::ErrorCode;

use super::error::{ApiError, body};
use crate::app::{Actor, App, AppError, users};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        // The access guard (`http::access`) authenticated the caller already.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let (user, token) = users::authenticate_token(&*app.store, bearer(parts)?).await?;
        Ok(Caller(Actor::user(&user).with_token(token.info.id)))
    }
}

/// An enrolled agent, by its credential (never a user's token).
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub agent: crate::app::agents::AgentRecord,
    pub server: stratus_types::server::Server,
}

impl FromRequestParts<Arc<App>> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        if let Some(a) = parts.extensions.get::<AgentCaller>() {
            if a.server.state == stratus_types::server::ServerState::Terminated {
                return Err(AppError::Unauthenticated.into());
            }
            return Ok(a.clone());
        }
        let (agent, server) = crate::app::agents::authenticate(app, bearer(parts)?).await?;
        Ok(AgentCaller { agent, server })
    }
}

/// The bearer token of a request.
pub(super) fn bearer(parts: &Parts) -> Result<&str, AppError> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(AppError::Unauthenticated)
}

/// An agent opening its connection: like [`AgentCaller`], but the agent of a terminated server
/// gets through, to be told so.
#[derive(Debug, Clone)]
pub struct ConnectingAgent(pub AgentCaller);

impl FromRequestParts<Arc<App>> for ConnectingAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        if let Some(a) = parts.extensions.get::<AgentCaller>() {
            return Ok(Self(a.clone()));
        }
        let (agent, server) = crate::app::agents::identify(app, bearer(parts)?).await?;
        Ok(Self(AgentCaller { agent, server }))
    }
}

/// The address the request's TCP connection came from, when the server was started with it
/// (`into_make_service_with_connect_info`); `None` otherwise.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        Ok(Self(peer))
    }
}

/// A JSON body; malformed JSON and unknown fields are `invalid_input` with serde's message
/// (which names the field), and too large a body is `payload_too_large`.
#[derive(Debug)]
pub struct Body<T>(pub T);

pub struct BodyRejection(JsonRejection);

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        let r = self.0;
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return body(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("the request body is over {} bytes", super::BODY_MAX),
                vec![],
            );
        }
        let detail = match &r {
            JsonRejection::JsonDataError(e) => std::error::Error::source(e).map_or(e.body_text(), |s| s.to_string()),
            _ => r.body_text(),
        };
        // serde_json's "at line 1 column 65" points into the wire JSON, not anything the user wrote.
        let detail = match detail.rfind(" at line ") {
            Some(i) if detail[i..].contains(" column ") => detail[..i].to_string(),
            _ => detail,
        };
        // axum reports data errors as `path.to[0].field: problem`; split that into `fields`.
        let fields = match detail.split_once(": ") {
            Some((path, problem)) if !path.is_empty() && !path.contains(' ') => {
                vec![stratus_types::FieldError::new(path, problem)]
            }
            _ => vec![],
        };
        let message = format!("invalid request body: {detail}");
        body(StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, message, fields)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|j| Body(j.0))
            .map_err(BodyRejection)
    }
}

/// Query parameters with the same error treatment.
#[derive(Debug)]
pub struct Q<T>(pub T);

pub struct QueryError(QueryRejection);

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        body(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidInput,
            format!("invalid query: {}", self.0.body_text()),
            vec![],
        )
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(QueryError)
    }
}
