//! Servers, arrays and runs. A server is addressed by id or `deployment/name` (URL-encode the
//! slash: `/servers/prod%2Fweb-1`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stratus_api::params::{ListParams, OperationListParams, RunListParams, ScaleRequest, ServerListParams, TagChange};
use stratus_api::views::Page;
use stratus_types::operation::Operation;
use stratus_types::run::{Rollout, Run};
use stratus_types::server::{ArraySpec, Server, ServerArray, ServerSpec};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Body, Caller, Q};
use crate::app::{App, arrays, deploys, operations, rollouts, runs, servers};

/// List servers, filtered by deployment, state and tag selector.
#[utoipa::path(get, path = "/servers", tag = "servers", params(ServerListParams), responses((status = 200, body = Page<Server>)))]
async fn list(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<ServerListParams>,
) -> Result<Json<Page<Server>>, ApiError> {
    Ok(Json(servers::list(&app, &c.0, &p).await?))
}

/// Launch a server; it starts `pending` and the orchestrator takes it from there.
#[utoipa::path(post, path = "/servers", tag = "servers", request_body = ServerSpec, responses((status = 201, body = Server), (status = 400, body = stratus_api::error::ErrorBody)))]
async fn launch(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(spec): Body<ServerSpec>,
) -> Result<(StatusCode, Json<Server>), ApiError> {
    Ok((StatusCode::CREATED, Json(servers::launch(&app, &c.0, &spec).await?)))
}

#[utoipa::path(get, path = "/servers/{key}", tag = "servers", params(("key" = String, Path, description = "id or deployment/name")), responses((status = 200, body = Server), (status = 404, body = stratus_api::error::ErrorBody)))]
async fn show(State(app): State<Arc<App>>, c: Caller, Path(key): Path<String>) -> Result<Json<Server>, ApiError> {
    Ok(Json(servers::show(&app, &c.0, &key).await?))
}

/// Terminate: decommission scripts run, then the instance is destroyed.
#[utoipa::path(delete, path = "/servers/{key}", tag = "servers", params(("key" = String, Path)), responses((status = 202, body = Server), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn terminate(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(key): Path<String>,
) -> Result<(StatusCode, Json<Server>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(servers::terminate(&app, &c.0, &key).await?)))
}

/// Replace the server: launch a new one like it, wait until it is operational, move its
/// elastic IPs, then terminate the old one. Answers when done (or when the new one strands:
/// 409, and the old one keeps serving). The work goes on if the client goes away.
#[utoipa::path(post, path = "/servers/{key}/replace", tag = "servers", params(("key" = String, Path)), responses((status = 200, body = crate::app::replace::Replacement), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn replace_server(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(key): Path<String>,
) -> Result<Json<crate::app::replace::Replacement>, ApiError> {
    let actor = c.0;
    let job = tokio::spawn(async move { crate::app::replace::replace(&app, &actor, &key).await });
    let result = job
        .await
        .map_err(|e| ApiError(crate::app::AppError::BadState(format!("the replacement stopped: {e}"))))?;
    Ok(Json(result?))
}

/// Rebundle the server for an array: its agent prepares the instance (refusing, with nothing
/// changed, if a secret input's value is in its file system), it leaves its load balancers,
/// its instance is stopped and captured as a new version of the image, which becomes the
/// array's next-launch image, and the server is terminated (or relaunched). Answers when done.
/// The work goes on if the client goes away.
#[utoipa::path(post, path = "/servers/{key}/rebundle", tag = "servers", params(("key" = String, Path)), request_body = crate::app::rebundle::RebundleRequest, responses((status = 200, body = crate::app::rebundle::Rebundled), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn rebundle_server(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(key): Path<String>,
    Body(r): Body<crate::app::rebundle::RebundleRequest>,
) -> Result<Json<crate::app::rebundle::Rebundled>, ApiError> {
    let actor = c.0;
    let job = tokio::spawn(async move { crate::app::rebundle::rebundle(&app, &actor, &key, &r).await });
    let result = job
        .await
        .map_err(|e| ApiError(crate::app::AppError::BadState(format!("the rebundle stopped: {e}"))))?;
    Ok(Json(result?))
}

/// Rebuild the array's image: launch a builder from the template as it is now (on the
/// template's own image), wait until it is operational, and rebundle it for the array.
#[utoipa::path(post, path = "/arrays/{deployment}/{name}/rebundle", tag = "arrays", params(("deployment" = String, Path), ("name" = String, Path)), request_body = crate::app::rebundle::RebuildRequest, responses((status = 200, body = crate::app::rebundle::Rebundled), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn rebundle_array(
    State(app): State<Arc<App>>,
    c: Caller,
    Path((d, n)): Path<(String, String)>,
    Body(r): Body<crate::app::rebundle::RebuildRequest>,
) -> Result<Json<crate::app::rebundle::Rebundled>, ApiError> {
    let actor = c.0;
    let job = tokio::spawn(async move { crate::app::rebundle::rebuild(&app, &actor, &d, &n, &r).await });
    let result = job
        .await
        .map_err(|e| ApiError(crate::app::AppError::BadState(format!("the rebuild stopped: {e}"))))?;
    Ok(Json(result?))
}

/// Reboot the server's instance: same instance, disk and addresses; init and every-boot
/// scripts run again.
#[utoipa::path(post, path = "/servers/{key}/reboot", tag = "servers", params(("key" = String, Path)), responses((status = 200, body = Server), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn reboot(State(app): State<Arc<App>>, c: Caller, Path(key): Path<String>) -> Result<Json<Server>, ApiError> {
    Ok(Json(servers::reboot(&app, &c.0, &key).await?))
}

/// The last 64 KiB of the instance's console output, as plain text.
#[utoipa::path(get, path = "/servers/{key}/console", tag = "servers", params(("key" = String, Path)), responses((status = 200, body = String, content_type = "text/plain"), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn console(State(app): State<Arc<App>>, c: Caller, Path(key): Path<String>) -> Result<String, ApiError> {
    Ok(servers::console(&app, &c.0, &key).await?)
}

/// Add and remove tags.
#[utoipa::path(post, path = "/servers/{key}/tags", tag = "servers", params(("key" = String, Path)), request_body = TagChange, responses((status = 200, body = Server)))]
async fn tags(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(key): Path<String>,
    Body(change): Body<TagChange>,
) -> Result<Json<Server>, ApiError> {
    Ok(Json(servers::change_tags(&app, &c.0, &key, &change).await?))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ArrayListParams {
    deployment: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

#[utoipa::path(get, path = "/arrays", tag = "arrays", params(ArrayListParams), responses((status = 200, body = Page<ServerArray>)))]
async fn list_arrays(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<ArrayListParams>,
) -> Result<Json<Page<ServerArray>>, ApiError> {
    Ok(Json(arrays::list(&app, &c.0, p.deployment, p.limit, p.after).await?))
}

#[utoipa::path(post, path = "/arrays", tag = "arrays", request_body = ArraySpec, responses((status = 201, body = ServerArray)))]
async fn create_array(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(spec): Body<ArraySpec>,
) -> Result<(StatusCode, Json<ServerArray>), ApiError> {
    Ok((StatusCode::CREATED, Json(arrays::create(&app, &c.0, &spec).await?)))
}

#[utoipa::path(get, path = "/arrays/{deployment}/{name}", tag = "arrays", params(("deployment" = String, Path), ("name" = String, Path)), responses((status = 200, body = ServerArray)))]
async fn show_array(
    State(app): State<Arc<App>>,
    c: Caller,
    Path((d, n)): Path<(String, String)>,
) -> Result<Json<ServerArray>, ApiError> {
    Ok(Json(arrays::show(&app, &c.0, &d, &n).await?))
}

#[utoipa::path(delete, path = "/arrays/{deployment}/{name}", tag = "arrays", params(("deployment" = String, Path), ("name" = String, Path)), responses((status = 204)))]
async fn delete_array(
    State(app): State<Arc<App>>,
    c: Caller,
    Path((d, n)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    arrays::delete(&app, &c.0, &d, &n).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the desired number of servers.
#[utoipa::path(post, path = "/arrays/{deployment}/{name}/scale", tag = "arrays", params(("deployment" = String, Path), ("name" = String, Path)), request_body = ScaleRequest, responses((status = 200, body = ServerArray)))]
async fn scale(
    State(app): State<Arc<App>>,
    c: Caller,
    Path((d, n)): Path<(String, String)>,
    Body(r): Body<ScaleRequest>,
) -> Result<Json<ServerArray>, ApiError> {
    Ok(Json(arrays::scale(&app, &c.0, &d, &n, r.desired).await?))
}

#[utoipa::path(get, path = "/runs", tag = "runs", params(RunListParams), responses((status = 200, body = Page<Run>)))]
async fn list_runs(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<RunListParams>,
) -> Result<Json<Page<Run>>, ApiError> {
    Ok(Json(runs::list(&app, &c.0, &p).await?))
}

/// Start an operational script on a server (through its connected agent); follow it with
/// `GET /runs/{id}`.
#[utoipa::path(post, path = "/runs", tag = "runs", request_body = crate::app::gateway::StartRun, responses((status = 201, body = Run), (status = 400, body = stratus_api::error::ErrorBody), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn start_run(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(req): Body<crate::app::gateway::StartRun>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(crate::app::gateway::start_run(&app, &c.0, &req).await?),
    ))
}

#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = Run)))]
async fn show_run(State(app): State<Arc<App>>, c: Caller, Path(id): Path<String>) -> Result<Json<Run>, ApiError> {
    Ok(Json(runs::show(&app, &c.0, &id).await?))
}

/// Cancel a run: a queued one at once, a running one through its agent (which stops the
/// script's processes and reports it `cancelled`).
#[utoipa::path(post, path = "/runs/{id}/cancel", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = Run), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn cancel_run(State(app): State<Arc<App>>, c: Caller, Path(id): Path<String>) -> Result<Json<Run>, ApiError> {
    Ok(Json(runs::cancel(&app, &c.0, &id).await?))
}

/// Start an operational script on every server a tag selector picks, a few at a time, stopping
/// after too many failures.
#[utoipa::path(post, path = "/rollouts", tag = "runs", request_body = rollouts::StartRollout, responses((status = 201, body = Rollout), (status = 400, body = stratus_api::error::ErrorBody), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn start_rollout(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(req): Body<rollouts::StartRollout>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    Ok((StatusCode::CREATED, Json(rollouts::start(&app, &c.0, &req).await?)))
}

/// Deploy an application archive to every operational server a tag selector picks whose
/// template names an application: a rollout of the built-in `stratus-deploy` run (one server at
/// a time unless `concurrency` says otherwise). The archive's content is pinned at the start.
#[utoipa::path(post, path = "/deploys", tag = "runs", request_body = deploys::StartDeploy, responses((status = 201, body = Rollout), (status = 400, body = stratus_api::error::ErrorBody), (status = 404, body = stratus_api::error::ErrorBody), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn start_deploy(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(req): Body<deploys::StartDeploy>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    Ok((StatusCode::CREATED, Json(deploys::start(&app, &c.0, &req).await?)))
}

#[utoipa::path(get, path = "/rollouts", tag = "runs", params(ListParams), responses((status = 200, body = Page<Rollout>)))]
async fn list_rollouts(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<ListParams>,
) -> Result<Json<Page<Rollout>>, ApiError> {
    Ok(Json(rollouts::list(&app, &c.0, p.after, p.limit).await?))
}

#[utoipa::path(get, path = "/rollouts/{id}", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = Rollout)))]
async fn show_rollout(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(rollouts::show(&app, &c.0, &id).await?))
}

/// Cancel a rollout: no new run starts, queued runs are cancelled, running ones are stopped.
#[utoipa::path(post, path = "/rollouts/{id}/cancel", tag = "runs", params(("id" = String, Path)), responses((status = 200, body = Rollout), (status = 409, body = stratus_api::error::ErrorBody)))]
async fn cancel_rollout(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(rollouts::cancel(&app, &c.0, &id).await?))
}

/// Durable operations (replaces, rebundles): where each stands, of one server when given.
#[utoipa::path(get, path = "/operations", tag = "servers", params(OperationListParams), responses((status = 200, body = Page<Operation>)))]
async fn list_operations(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<OperationListParams>,
) -> Result<Json<Page<Operation>>, ApiError> {
    Ok(Json(
        operations::list(&app, &c.0, p.server.as_deref(), p.after, p.limit).await?,
    ))
}

#[utoipa::path(get, path = "/operations/{id}", tag = "servers", params(("id" = String, Path)), responses((status = 200, body = Operation), (status = 404, body = stratus_api::error::ErrorBody)))]
async fn show_operation(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiError> {
    Ok(Json(operations::get(&app, &c.0, &id).await?))
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(list, launch))
        .routes(routes!(show, terminate))
        .routes(routes!(tags))
        .routes(routes!(reboot))
        .routes(routes!(console))
        .routes(routes!(list_arrays, create_array))
        .routes(routes!(show_array, delete_array))
        .routes(routes!(scale))
        .routes(routes!(list_runs, start_run))
        .routes(routes!(show_run))
        .routes(routes!(cancel_run))
        .routes(routes!(list_rollouts, start_rollout))
        .routes(routes!(start_deploy))
        .routes(routes!(replace_server))
        .routes(routes!(rebundle_server))
        .routes(routes!(rebundle_array))
        .routes(routes!(show_rollout))
        .routes(routes!(cancel_rollout))
        .routes(routes!(list_operations))
        .routes(routes!(show_operation))
}
