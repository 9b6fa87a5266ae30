//! The dashboard: a page and its script and style, compiled into the binary (no CDN, no build
//! step), and the live-update stream it listens to.
//!
//! The page is a small single-page application over the public API: it signs in with an API
//! token (kept in the tab's session storage, sent as a bearer token, never in a URL), and it
//! re-reads what it shows when `GET /api/v1/events` announces a change. The stream carries
//! only kinds and ids; everything shown is read through the API with the user's own
//! permissions.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::Caller;
use crate::app::{App, OBSERVER};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// Everything from this origin only: no inline script, no third-party anything.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// The dashboard's routes (outside `/api/v1`).
pub fn routes() -> axum::Router<Arc<App>> {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { Redirect::to("/ui/") }))
        .route("/ui", axum::routing::get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", axum::routing::get(index))
        .route("/ui/app.js", axum::routing::get(script))
        .route("/ui/app.css", axum::routing::get(style))
}

/// Live changes, as server-sent events: `change` events `{"kind": "server", "id": "..."}` for
/// every committed change to a server, run, rollout, deployment or array, and `lagged` when
/// this listener fell behind (re-read everything). A comment every 15 s keeps the connection
/// open through proxies.
#[utoipa::path(get, path = "/events", tag = "events", responses((status = 200, content_type = "text/event-stream", body = String)))]
async fn events(
    State(app): State<Arc<App>>,
    c: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    c.0.require(OBSERVER)?;
    let rx = app.changes.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(change) => Event::default()
                .event("change")
                .data(serde_json::to_string(&change).unwrap_or_default()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

pub fn api_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(events))
}
