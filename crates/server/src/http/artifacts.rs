//! The artifact store over HTTP: buckets, objects (streamed both ways), signed fetch URLs.
//!
//! Object keys may hold `/`, so they travel in the query string (`?key=web/v1.tar.gz`). Uploads
//! are streamed to the blob backend without the API's body limit; the store's own object limit
//! applies instead. Downloads carry `x-stratus-sha256` so a client can verify what it got.

use std::sync::Arc;

use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stratus_api::params::{
    CreateBucket, FetchParams, FetchUrlRequest, ListParams, ObjectListParams, ObjectParams, PutObjectParams,
};
use stratus_api::views::{FetchUrl, Page};
use stratus_types::artifact::{Bucket, Object};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{Body, Caller, Q};
use crate::app::{App, artifacts};
use crate::blobs::ByteStream;

/// The header that carries an object's SHA-256 on downloads.
pub const SHA256_HEADER: &str = "x-stratus-sha256";

#[utoipa::path(get, path = "/buckets", tag = "artifacts", params(ListParams), responses((status = 200, body = Page<Bucket>)))]
async fn list_buckets(
    State(app): State<Arc<App>>,
    c: Caller,
    Q(p): Q<ListParams>,
) -> Result<Json<Page<Bucket>>, ApiError> {
    Ok(Json(artifacts::list_buckets(&app, &c.0, p.limit, p.after).await?))
}

#[utoipa::path(post, path = "/buckets", tag = "artifacts", request_body = CreateBucket, responses((status = 201, body = Bucket)))]
async fn create_bucket(
    State(app): State<Arc<App>>,
    c: Caller,
    Body(r): Body<CreateBucket>,
) -> Result<(StatusCode, Json<Bucket>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(artifacts::create_bucket(&app, &c.0, &r.name).await?),
    ))
}

#[utoipa::path(get, path = "/buckets/{bucket}", tag = "artifacts", params(("bucket" = String, Path)), responses((status = 200, body = Bucket)))]
async fn show_bucket(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
) -> Result<Json<Bucket>, ApiError> {
    Ok(Json(artifacts::show_bucket(&app, &c.0, &bucket).await?))
}

/// Delete an empty bucket.
#[utoipa::path(delete, path = "/buckets/{bucket}", tag = "artifacts", params(("bucket" = String, Path)), responses((status = 204), (status = 409)))]
async fn delete_bucket(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
) -> Result<StatusCode, ApiError> {
    artifacts::delete_bucket(&app, &c.0, &bucket).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The bucket's objects in key order.
#[utoipa::path(get, path = "/buckets/{bucket}/objects", tag = "artifacts", params(("bucket" = String, Path), ObjectListParams), responses((status = 200, body = Page<Object>)))]
async fn list_objects(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
    Q(p): Q<ObjectListParams>,
) -> Result<Json<Page<Object>>, ApiError> {
    Ok(Json(
        artifacts::list(&app, &c.0, &bucket, p.prefix.as_deref(), p.limit, p.after.as_deref()).await?,
    ))
}

/// Upload an object (the raw body), replacing what the key held. With `sha256`, content with
/// another hash is refused and nothing changes.
#[utoipa::path(put, path = "/buckets/{bucket}/object", tag = "artifacts", params(("bucket" = String, Path), PutObjectParams), request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, body = Object), (status = 413)))]
async fn put_object(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
    Q(p): Q<PutObjectParams>,
    body: axum::body::Body,
) -> Result<Json<Object>, ApiError> {
    let stream = body.into_data_stream();
    Ok(Json(
        artifacts::put(&app, &c.0, &bucket, &p.key, stream, p.sha256.as_deref()).await?,
    ))
}

fn download(o: &Object, body: ByteStream) -> Response {
    let mut r = axum::body::Body::from_stream(body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(o.size));
    if let Ok(v) = HeaderValue::from_str(&o.sha256) {
        h.insert(SHA256_HEADER, v);
    }
    r
}

/// Download an object's content.
#[utoipa::path(get, path = "/buckets/{bucket}/object", tag = "artifacts", params(("bucket" = String, Path), ObjectParams), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>)))]
async fn get_object(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
    Q(p): Q<ObjectParams>,
) -> Result<Response, ApiError> {
    let (o, body) = artifacts::get(&app, &c.0, &bucket, &p.key).await?;
    Ok(download(&o, body))
}

#[utoipa::path(delete, path = "/buckets/{bucket}/object", tag = "artifacts", params(("bucket" = String, Path), ObjectParams), responses((status = 204)))]
async fn delete_object(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
    Q(p): Q<ObjectParams>,
) -> Result<StatusCode, ApiError> {
    artifacts::delete(&app, &c.0, &bucket, &p.key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An object's size and SHA-256.
#[utoipa::path(get, path = "/buckets/{bucket}/object-info", tag = "artifacts", params(("bucket" = String, Path), ObjectParams), responses((status = 200, body = Object)))]
async fn object_info(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
    Q(p): Q<ObjectParams>,
) -> Result<Json<Object>, ApiError> {
    Ok(Json(artifacts::show(&app, &c.0, &bucket, &p.key).await?))
}

/// A short-lived URL that fetches the object's current content without a token, while the
/// token that asked for it is valid (operator).
#[utoipa::path(post, path = "/buckets/{bucket}/url", tag = "artifacts", params(("bucket" = String, Path)), request_body = FetchUrlRequest, responses((status = 200, body = FetchUrl)))]
async fn fetch_url(
    State(app): State<Arc<App>>,
    c: Caller,
    Path(bucket): Path<String>,
    Body(r): Body<FetchUrlRequest>,
) -> Result<Json<FetchUrl>, ApiError> {
    Ok(Json(
        artifacts::fetch_url(&app, &c.0, &bucket, &r.key, r.ttl_secs).await?,
    ))
}

/// Fetch an object by a signed URL (no token: the signature is the permission).
#[utoipa::path(get, path = "/artifacts/fetch", tag = "artifacts", security(()), params(FetchParams), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 403), (status = 404)))]
async fn fetch(State(app): State<Arc<App>>, Q(p): Q<FetchParams>) -> Result<Response, ApiError> {
    let signed = artifacts::Signed {
        bucket: &p.bucket,
        key: &p.key,
        sha256: &p.sha256,
        expires: p.expires,
        by: &p.by,
        sig: &p.sig,
    };
    let (o, body) = artifacts::fetch(&app, signed).await?;
    Ok(download(&o, body))
}

pub fn routes() -> OpenApiRouter<Arc<App>> {
    // Uploads stream to the blob backend under the store's own size limit.
    let uploads = OpenApiRouter::new()
        .routes(routes!(put_object, get_object, delete_object))
        .layer(DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes(routes!(list_buckets, create_bucket))
        .routes(routes!(show_bucket, delete_bucket))
        .routes(routes!(list_objects))
        .routes(routes!(object_info))
        .routes(routes!(fetch_url))
        .routes(routes!(fetch))
        .merge(uploads)
}
