//! Clouds, images, scripts, templates, deployments: the same five routes each. Create and
//! update go through the deployment-file planner, so they are checked exactly like `apply`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stratus_api::file::DeploymentFile;
use stratus_api::params::{ListParams, ResolveSizeParams};
use stratus_api::views::{Page, ResolvedSize};
use stratus_types::cloud::{Cloud, CloudSpec};
use stratus_types::deployment::{Deployment, DeploymentSpec};
use stratus_types::image::{Image, ImageSpec};
use stratus_types::script::{Script, ScriptSpec};
use stratus_types::size::{SizeConstraints, SizeRequest};
use stratus_types::template::{ServerTemplate, TemplateSpec};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Body, Caller, Q};
use crate::app::apply::{Mode, apply};
use crate::app::delete::delete;
use crate::app::resolve::{page, show};
use crate::app::{App, AppError};

async fn upsert<T: stratus_store::Resource>(
    app: &App,
    caller: &Caller,
    file: DeploymentFile,
    name: &str,
    mode: Mode,
) -> Result<T, ApiError> {
    apply(app, &caller.0, &file, mode, false).await?;
    Ok(show::<T>(app, &caller.0, name).await?)
}

fn same_name(path: &str, body: &str) -> Result<(), ApiError> {
    if path == body {
        Ok(())
    } else {
        Err(AppError::invalid("name", format!("the body names {body:?} but the path {path:?}")).into())
    }
}

macro_rules! catalog {
    ($m:ident, $tag:literal, $list:literal, $one:literal, $kind:literal, $spec:ty, $view:ty, |$s:ident| $file:expr) => {
        mod $m {
            use super::*;

            /// List (paged).
            #[utoipa::path(get, path = $list, tag = $tag, params(ListParams), responses((status = 200, body = Page<$view>)))]
            pub async fn list(State(app): State<Arc<App>>, c: Caller, Q(p): Q<ListParams>) -> Result<Json<Page<$view>>, ApiError> {
                Ok(Json(page::<$view>(&app, &c.0, p.limit, p.after).await?))
            }

            /// Create; `409 conflict` if the name is taken.
            #[utoipa::path(post, path = $list, tag = $tag, request_body = $spec, responses((status = 201, body = $view), (status = 400, body = stratus_api::error::ErrorBody), (status = 409, body = stratus_api::error::ErrorBody)))]
            pub async fn create(State(app): State<Arc<App>>, c: Caller, Body($s): Body<$spec>) -> Result<(StatusCode, Json<$view>), ApiError> {
                let name = $s.name.to_string();
                let v = upsert::<$view>(&app, &c, $file, &name, Mode::CreateOnly).await?;
                Ok((StatusCode::CREATED, Json(v)))
            }

            /// Show one by name.
            #[utoipa::path(get, path = $one, tag = $tag, params(("name" = String, Path)), responses((status = 200, body = $view), (status = 404, body = stratus_api::error::ErrorBody)))]
            pub async fn get(State(app): State<Arc<App>>, c: Caller, Path(name): Path<String>) -> Result<Json<$view>, ApiError> {
                Ok(Json(show::<$view>(&app, &c.0, &name).await?))
            }

            /// Create or update (idempotent).
            #[utoipa::path(put, path = $one, tag = $tag, params(("name" = String, Path)), request_body = $spec, responses((status = 200, body = $view), (status = 400, body = stratus_api::error::ErrorBody)))]
            pub async fn put(State(app): State<Arc<App>>, c: Caller, Path(name): Path<String>, Body($s): Body<$spec>) -> Result<Json<$view>, ApiError> {
                same_name(&name, $s.name.as_str())?;
                Ok(Json(upsert::<$view>(&app, &c, $file, &name, Mode::Upsert).await?))
            }

            /// Delete; `409 conflict` while something uses it.
            #[utoipa::path(delete, path = $one, tag = $tag, params(("name" = String, Path)), responses((status = 204), (status = 409, body = stratus_api::error::ErrorBody)))]
            pub async fn remove(State(app): State<Arc<App>>, c: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
                delete(&app, &c.0, $kind, &name).await?;
                Ok(StatusCode::NO_CONTENT)
            }
        }
    };
}

catalog!(
    clouds,
    "clouds",
    "/clouds",
    "/clouds/{name}",
    "cloud",
    CloudSpec,
    Cloud,
    |s| DeploymentFile {
        clouds: vec![s],
        ..Default::default()
    }
);
catalog!(
    images,
    "images",
    "/images",
    "/images/{name}",
    "image",
    ImageSpec,
    Image,
    |s| DeploymentFile {
        images: vec![s],
        ..Default::default()
    }
);
catalog!(
    scripts,
    "scripts",
    "/scripts",
    "/scripts/{name}",
    "script",
    ScriptSpec,
    Script,
    |s| DeploymentFile {
        scripts: vec![s],
        ..Default::default()
    }
);
catalog!(
    templates,
    "templates",
    "/templates",
    "/templates/{name}",
    "template",
    TemplateSpec,
    ServerTemplate,
    |s| DeploymentFile {
        templates: vec![s],
        ..Default::default()
    }
);
catalog!(
    deployments,
    "deployments",
    "/deployments",
    "/deployments/{name}",
    "deployment",
    DeploymentSpec,
    Deployment,
    |s| DeploymentFile {
        deployment: Some(s),
        ..Default::default()
    }
);

/// Resolve a size request on a cloud: a name, or `cpus=N,memory=SIZE` constraints.
#[utoipa::path(get, path = "/clouds/{name}/sizes/resolve", tag = "clouds", params(("name" = String, Path), ResolveSizeParams), responses((status = 200, body = ResolvedSize)))]
async fn resolve_size(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
    Q(p): Q<ResolveSizeParams>,
) -> Result<Json<ResolvedSize>, ApiError> {
    let cloud = show::<Cloud>(&app, &c.0, &name).await?;
    let req = parse_size(&p.size)?;
    let size = req
        .resolve(&cloud.spec.sizes)
        .map_err(|e| AppError::invalid("size", e.to_string()))?;
    Ok(Json(ResolvedSize {
        cloud: name,
        size: size.clone(),
    }))
}

/// `m1.small`, or `cpus=2,memory=4GiB` (either key may be left out; cpus defaults to 1).
pub fn parse_size(s: &str) -> Result<SizeRequest, AppError> {
    if !s.contains('=') {
        let req = SizeRequest::Named(s.to_string());
        req.validate().map_err(AppError::from)?;
        return Ok(req);
    }
    let mut c = SizeConstraints {
        cpus: 1,
        memory: stratus_types::size::Memory::from_mib(0)?,
    };
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| AppError::invalid("size", format!("{part:?} is not key=value")))?;
        match k.trim() {
            "cpus" => {
                c.cpus = v
                    .trim()
                    .parse()
                    .map_err(|_| AppError::invalid("size", format!("cpus {v:?} is not a number")))?
            }
            "memory" => {
                c.memory = stratus_types::size::Memory::parse(v).map_err(|e| AppError::invalid("size", e.problem))?
            }
            other => {
                return Err(AppError::invalid(
                    "size",
                    format!("unknown constraint {other:?}; use cpus and memory"),
                ));
            }
        }
    }
    let req = SizeRequest::Constraints(c);
    req.validate().map_err(AppError::from)?;
    Ok(req)
}

/// Every version of a template, oldest first.
#[utoipa::path(get, path = "/templates/{name}/versions", tag = "templates", params(("name" = String, Path)), responses((status = 200, body = Vec<ServerTemplate>)))]
async fn template_versions(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<ServerTemplate>>, ApiError> {
    Ok(Json(crate::app::resolve::template_versions(&app, &c.0, &name).await?))
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(clouds::list, clouds::create))
        .routes(routes!(clouds::get, clouds::put, clouds::remove))
        .routes(routes!(resolve_size))
        .routes(routes!(images::list, images::create))
        .routes(routes!(images::get, images::put, images::remove))
        .routes(routes!(scripts::list, scripts::create))
        .routes(routes!(scripts::get, scripts::put, scripts::remove))
        .routes(routes!(templates::list, templates::create))
        .routes(routes!(templates::get, templates::put, templates::remove))
        .routes(routes!(template_versions))
        .routes(routes!(deployments::list, deployments::create))
        .routes(routes!(deployments::get, deployments::put, deployments::remove))
}
