//! The HTTP API: thin handlers that extract, call the app layer, and return views.
//!
//! Every route is under `/api/v1` and needs `Authorization: Bearer <token>` except `health`,
//! the OpenAPI document, agent enrolment (its one-time token is in the body) and signed
//! artifact fetches (the signature is the permission). Routes and the OpenAPI document come from the same handler
//! annotations (`utoipa-axum`), so the document cannot drift from the code. Who may call each
//! route is one table, [`access`], checked before any handler runs.

pub mod access;
mod agent;
pub mod artifacts;
mod catalog;
mod error;
mod extract;
mod misc;
mod servers;
mod ui;

use std::sync::Arc;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use stratus_api::views::Health;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

pub use error::ApiError;
pub use extract::Caller;

/// Requests larger than this are refused with `payload_too_large`.
pub const BODY_MAX: usize = 8 * 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "Stratus API", description = "Self-hosted multi-cloud server management."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/health", security(()), responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The API routes and their OpenAPI document.
pub fn api() -> (axum::Router<Arc<App>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .merge(catalog::routes())
        .merge(servers::routes())
        .merge(misc::routes())
        .merge(agent::routes())
        .merge(artifacts::routes())
        .merge(ui::api_routes())
        .split_for_parts()
}

/// The whole HTTP service: `/api/v1/...` plus the OpenAPI document.
pub fn router(app: Arc<App>) -> axum::Router {
    let (api, mut doc) = api();
    doc.servers = Some(vec![utoipa::openapi::Server::new(stratus_api::API_PREFIX)]);
    let doc = Arc::new(doc);
    let openapi = axum::routing::get(move || {
        let doc = doc.clone();
        async move { Json((*doc).clone()) }
    });
    axum::Router::new()
        .nest(stratus_api::API_PREFIX, api.route("/openapi.json", openapi))
        .merge(ui::routes())
        // Before every handler, on matched routes only: the access table (deny by default).
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), access::guard))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(BODY_MAX))
        // The span names the path, not the query: a signed fetch URL's query is a capability.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(app)
}
