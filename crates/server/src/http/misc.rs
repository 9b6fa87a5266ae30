//! Credentials, users and keys, tokens, addresses, the audit log, and `apply`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stratus_api::params::{
    AddKeyRequest, ApplyRequest, AssociateRequest, AuditParams, BuildImageRequest, CreateTokenRequest,
    ImportImageRequest, ListParams,
};
use stratus_api::views::{Page, Plan, TokenCreated, Whoami};
use stratus_types::address::{Address, AddressSpec};
use stratus_types::audit::AuditEntry;
use stratus_types::credential::{Credential, CredentialSpec};
use stratus_types::image::Image;
use stratus_types::user::{ApiToken, User, UserSpec};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Body, Caller, Q};
use crate::app::apply::{Mode, apply};
use crate::app::{App, AppError, addresses, audit, credentials, users};

/// Apply a deployment file (or only plan it with `dry_run`).
#[utoipa::path(post, path = "/apply", tag = "apply", request_body = ApplyRequest, responses((status = 200, body = Plan), (status = 400, body = stratus_api::error::ErrorBody)))]
async fn apply_file(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(r): Body<ApplyRequest>,
) -> Result<Json<Plan>, ApiError> {
    Ok(Json(apply(&app, &c.0, &r.document, Mode::Upsert, r.dry_run).await?))
}

#[utoipa::path(get, path = "/whoami", tag = "users", responses((status = 200, body = Whoami)))]
async fn whoami(State(app): State<Arc<App>>, c: Caller) -> Result<Json<Whoami>, ApiError> {
    Ok(Json(Whoami {
        user: users::whoami(&app, &c.0).await?,
    }))
}

#[utoipa::path(get, path = "/credentials", tag = "credentials", params(ListParams), responses((status = 200, body = Page<Credential>)))]
async fn list_credentials(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<ListParams>,
) -> Result<Json<Page<Credential>>, ApiError> {
    Ok(Json(credentials::list(&app, &c.0, p.limit, p.after).await?))
}

/// Create a credential (admins). The value is encrypted at rest and never returned.
#[utoipa::path(post, path = "/credentials", tag = "credentials", request_body = CredentialSpec, responses((status = 201, body = Credential)))]
async fn create_credential(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(spec): Body<CredentialSpec>,
) -> Result<(StatusCode, Json<Credential>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(credentials::put(&app, &c.0, &spec, true).await?),
    ))
}

#[utoipa::path(get, path = "/credentials/{name}", tag = "credentials", params(("name" = String, Path)), responses((status = 200, body = Credential)))]
async fn show_credential(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    Ok(Json(credentials::show(&app, &c.0, &name).await?))
}

/// Create or replace a credential's value.
#[utoipa::path(put, path = "/credentials/{name}", tag = "credentials", params(("name" = String, Path)), request_body = CredentialSpec, responses((status = 200, body = Credential)))]
async fn put_credential(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(spec): Body<CredentialSpec>,
) -> Result<Json<Credential>, ApiError> {
    if spec.name.as_str() != name {
        return Err(AppError::invalid("name", "the body and the path name different credentials").into());
    }
    Ok(Json(credentials::put(&app, &c.0, &spec, false).await?))
}

#[utoipa::path(delete, path = "/credentials/{name}", tag = "credentials", params(("name" = String, Path)), responses((status = 204)))]
async fn delete_credential(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    credentials::delete(&app, &c.0, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/users", tag = "users", params(ListParams), responses((status = 200, body = Page<User>)))]
async fn list_users(State(app): State<Arc<App>>, c: Caller, Q(p): Q<ListParams>) -> Result<Json<Page<User>>, ApiError> {
    Ok(Json(users::list(&app, &c.0, p.limit, p.after).await?))
}

#[utoipa::path(post, path = "/users", tag = "users", request_body = UserSpec, responses((status = 201, body = User)))]
async fn create_user(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(spec): Body<UserSpec>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    Ok((StatusCode::CREATED, Json(users::create(&app, &c.0, &spec).await?)))
}

#[utoipa::path(get, path = "/users/{name}", tag = "users", params(("name" = String, Path)), responses((status = 200, body = User)))]
async fn show_user(State(app): State<Arc<App>>, c: Caller, Path(name): Path<String>) -> Result<Json<User>, ApiError> {
    Ok(Json(users::show(&app, &c.0, &name).await?))
}

/// Where the user may log in (managed SSH), and whether each server's agent has applied the
/// current state of that access (a grant or a revocation is in effect there).
#[utoipa::path(get, path = "/users/{name}/access", tag = "users", params(("name" = String, Path)), responses((status = 200, body = Vec<crate::app::logins::ServerAccess>)))]
async fn user_access(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<crate::app::logins::ServerAccess>>, ApiError> {
    Ok(Json(crate::app::logins::access(&app, &c.0, &name).await?))
}

/// Change a user's email and roles.
#[utoipa::path(put, path = "/users/{name}", tag = "users", params(("name" = String, Path)), request_body = UserSpec, responses((status = 200, body = User)))]
async fn update_user(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(spec): Body<UserSpec>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(users::update(&app, &c.0, &name, &spec).await?))
}

#[utoipa::path(delete, path = "/users/{name}", tag = "users", params(("name" = String, Path)), responses((status = 204)))]
async fn delete_user(State(app): State<Arc<App>>, c: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    users::delete(&app, &c.0, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Register an SSH public key.
#[utoipa::path(post, path = "/users/{name}/keys", tag = "users", params(("name" = String, Path)), request_body = AddKeyRequest, responses((status = 201, body = User)))]
async fn add_key(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(r): Body<AddKeyRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(users::add_key(&app, &c.0, &name, &r.public_key).await?),
    ))
}

/// Remove a key by fingerprint (`SHA256:…`, URL-encoded).
#[utoipa::path(delete, path = "/users/{name}/keys/{fingerprint}", tag = "users", params(("name" = String, Path), ("fingerprint" = String, Path)), responses((status = 200, body = User)))]
async fn remove_key(
    State(app): State<Arc<App>>,
    c: Caller,
    Path((name, fp)): Path<(String, String)>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(users::remove_key(&app, &c.0, &name, &fp).await?))
}

#[utoipa::path(get, path = "/users/{name}/tokens", tag = "users", params(("name" = String, Path)), responses((status = 200, body = Vec<ApiToken>)))]
async fn list_tokens(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(users::list_tokens(&app, &c.0, &name).await?))
}

/// Create an API token; the token is in this response only.
#[utoipa::path(post, path = "/tokens", tag = "users", request_body = CreateTokenRequest, responses((status = 201, body = TokenCreated)))]
async fn create_token(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(r): Body<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    Ok((StatusCode::CREATED, Json(users::create_token(&app, &c.0, &r).await?)))
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "users", params(("id" = String, Path)), responses((status = 204)))]
async fn revoke_token(State(app): State<Arc<App>>, c: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    users::revoke_token(&app, &c.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/addresses", tag = "addresses", params(ListParams), responses((status = 200, body = Page<Address>)))]
async fn list_addresses(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<ListParams>,
) -> Result<Json<Page<Address>>, ApiError> {
    Ok(Json(addresses::list(&app, &c.0, p.limit, p.after).await?))
}

/// Allocate an elastic IP from a cloud's pool.
#[utoipa::path(post, path = "/addresses", tag = "addresses", request_body = AddressSpec, responses((status = 201, body = Address)))]
async fn allocate(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(spec): Body<AddressSpec>,
) -> Result<(StatusCode, Json<Address>), ApiError> {
    Ok((StatusCode::CREATED, Json(addresses::allocate(&app, &c.0, &spec).await?)))
}

#[utoipa::path(get, path = "/addresses/{name}", tag = "addresses", params(("name" = String, Path)), responses((status = 200, body = Address)))]
async fn show_address(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Address>, ApiError> {
    Ok(Json(addresses::show(&app, &c.0, &name).await?))
}

#[utoipa::path(delete, path = "/addresses/{name}", tag = "addresses", params(("name" = String, Path)), responses((status = 204)))]
async fn release(State(app): State<Arc<App>>, c: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    addresses::release(&app, &c.0, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Point the address at a server (moving it from another one at once).
#[utoipa::path(post, path = "/addresses/{name}/associate", tag = "addresses", params(("name" = String, Path)), request_body = AssociateRequest, responses((status = 200, body = Address)))]
async fn associate(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(r): Body<AssociateRequest>,
) -> Result<Json<Address>, ApiError> {
    Ok(Json(addresses::associate(&app, &c.0, &name, &r.server).await?))
}

#[utoipa::path(post, path = "/addresses/{name}/disassociate", tag = "addresses", params(("name" = String, Path)), responses((status = 200, body = Address)))]
async fn disassociate(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Address>, ApiError> {
    Ok(Json(addresses::disassociate(&app, &c.0, &name).await?))
}

/// Build a Debian image with debootstrap on a local cloud and register it under this image
/// name (a cached build with the same inputs is reused). Admin only; takes a minute or two.
#[utoipa::path(post, path = "/images/{name}/build", tag = "images", params(("name" = String, Path)), request_body = BuildImageRequest, responses((status = 200, body = Image)))]
async fn build_image(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(r): Body<BuildImageRequest>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(crate::app::images::build(&app, &c.0, &name, &r).await?))
}

/// Import a root file system tarball from the control plane's machine into a local cloud and
/// register it under this image name. Admin only.
#[utoipa::path(post, path = "/images/{name}/import", tag = "images", params(("name" = String, Path)), request_body = ImportImageRequest, responses((status = 200, body = Image)))]
async fn import_image(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(r): Body<ImportImageRequest>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(crate::app::images::import(&app, &c.0, &name, &r).await?))
}

/// Every version of an image, oldest first: provenance, whether it is stale (its template
/// changed since the capture) and who uses it.
#[utoipa::path(get, path = "/images/{name}/versions", tag = "images", params(("name" = String, Path)), responses((status = 200, body = Vec<crate::app::images::VersionView>)))]
async fn image_versions(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<crate::app::images::VersionView>>, ApiError> {
    Ok(Json(crate::app::images::versions(&app, &c.0, &name).await?))
}

/// Delete the image's captured versions older than the newest `keep`, except those in use,
/// with their native images.
#[utoipa::path(post, path = "/images/{name}/gc", tag = "images", params(("name" = String, Path)), request_body = crate::app::images::GcRequest, responses((status = 200, body = crate::app::images::GcResult)))]
async fn image_gc(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Body(r): Body<crate::app::images::GcRequest>,
) -> Result<Json<crate::app::images::GcResult>, ApiError> {
    Ok(Json(crate::app::images::gc(&app, &c.0, &name, &r).await?))
}

/// The control plane's background tasks: each one's last pass (start, duration, outcome) and
/// run count, and the clouds that throttled it.
#[utoipa::path(get, path = "/admin/tasks", tag = "admin", responses((status = 200, body = stratus_api::views::BackgroundTasks)))]
async fn admin_tasks(
    State(app): State<Arc<App>>,
    c: Caller,
) -> Result<Json<stratus_api::views::BackgroundTasks>, ApiError> {
    Ok(Json(crate::app::admin::tasks(&app, &c.0)?))
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams), responses((status = 200, body = Vec<AuditEntry>)))]
async fn audit_log(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(audit::list(&app, &c.0, &p).await?))
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(apply_file))
        .routes(routes!(whoami))
        .routes(routes!(list_credentials, create_credential))
        .routes(routes!(show_credential, put_credential, delete_credential))
        .routes(routes!(list_users, create_user))
        .routes(routes!(show_user, update_user, delete_user))
        .routes(routes!(add_key))
        .routes(routes!(user_access))
        .routes(routes!(remove_key))
        .routes(routes!(list_tokens))
        .routes(routes!(create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_addresses, allocate))
        .routes(routes!(show_address, release))
        .routes(routes!(associate))
        .routes(routes!(disassociate))
        .routes(routes!(audit_log))
        .routes(routes!(admin_tasks))
        .routes(routes!(build_image))
        .routes(routes!(import_image))
        .routes(routes!(image_versions))
        .routes(routes!(image_gc))
}
