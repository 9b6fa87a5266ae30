//! The agent's side of the API: enrolment, and what an enrolled agent may ask about itself.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use stratus_types::server::Server;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{AgentCaller, Body};
use crate::app::App;
use crate::app::agents::{self, EnrolRequest, Enrolled};

/// Enrol an instance's agent with its one-time token (and, where the cloud signs them, its
/// instance-identity document); the answer holds the agent's credential, shown once.
#[utoipa::path(post, path = "/agent/enroll", tag = "agent", request_body = EnrolRequest, security(()), responses((status = 200, body = Enrolled), (status = 401, body = stratus_api::error::ErrorBody), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn enroll(State(app): State<Arc<App>>, Body(req): Body<EnrolRequest>) -> Result<Json<Enrolled>, ApiError> {
    Ok(Json(agents::enrol(&app, &req).await?))
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

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(enroll)).routes(routes!(whoami))
}
