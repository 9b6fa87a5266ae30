//! The artifact store: buckets, objects, and the signed URLs instances fetch them with.
//!
//! The catalogue (which key of which bucket holds which content) is in the store; the bytes are
//! blobs named by their SHA-256 ([`crate::blobs`]). An upload is hashed while it streams, kept
//! only when whole, and then switched in by one store write, so a reader sees the old object or
//! the new one and never a mix. A blob no object refers to any more is deleted at once.
//!
//! Instances hold no bucket credentials: the control plane hands them a URL that names one
//! object's one content and expires ([`fetch_url`]); the agent verifies the SHA-256 it was told
//! before it uses the file. Overwriting the key makes older URLs answer 404, so an instance never
//! gets content other than the one its run was given.
//!
//! A fetch URL is a capability, so it lives no longer than whoever it was minted for
//! ([`Minter`], signed into the URL): a URL a person asked for (operators only, at most
//! [`URL_TTL_MAX`]) stops working when the API token that asked is revoked or expires, or its
//! user loses the operator role; a URL in a run, a deploy or a watched file is minted for that
//! server's agent and stops working when the agent's credential does (the server is
//! terminated). Agents cannot ask for URLs; they get them only for their own runs' artifacts.

use bytes::Bytes;
use chrono::Utc;
use futures_util::Stream;
use stratus_api::views::{FetchUrl, Page};
use stratus_store::{Change, Query, TypedStore};
use stratus_types::artifact::{Bucket, Object, is_sha256_hex};
use stratus_types::input::check_object_key;
use stratus_types::{BucketId, Name, ObjectId, ServerId, TokenId};

use super::resolve::named;
use super::{Actor, App, AppError, OBSERVER, OPERATOR, audit};
use crate::blobs::{BlobError, ByteStream};

/// Default and longest life of a fetch URL a person asks for.
pub const URL_TTL_DEFAULT: u64 = 900;
pub const URL_TTL_MAX: u64 = 3600;
/// Life of the fetch URLs in an agent's runs, deploys and watched files.
pub const URL_TTL_AGENT: u64 = 3600;
/// The path fetch URLs use, under the API prefix.
pub const FETCH_PATH: &str = "/api/v1/artifacts/fetch";

impl From<BlobError> for AppError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::TooLarge { .. } => AppError::TooLarge(e.to_string()),
            BlobError::HashMismatch { .. } | BlobError::Body(_) => AppError::invalid("body", e.to_string()),
            other => AppError::Blob(other),
        }
    }
}

fn bucket_name(name: &str) -> Result<Name, AppError> {
    Name::parse(name).map_err(|e| AppError::invalid("bucket", e.problem))
}

fn key_ok(key: &str) -> Result<(), AppError> {
    check_object_key(key).map_err(|p| AppError::invalid("key", p))
}

pub async fn create_bucket(app: &App, actor: &Actor, name: &str) -> Result<Bucket, AppError> {
    actor.require(OPERATOR)?;
    let name = bucket_name(name)?;
    let now = Utc::now();
    let b = Bucket {
        id: BucketId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        name: name.clone(),
        created_by: actor.name.clone(),
    };
    app.commit(vec![
        Change::insert(&b),
        audit(actor, "bucket.create", format!("bucket/{name}"), &name),
    ])
    .await?;
    Ok(b)
}

pub async fn list_buckets(
    app: &App,
    actor: &Actor,
    limit: Option<u32>,
    after: Option<String>,
) -> Result<Page<Bucket>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Bucket>(&q).await?;
    Ok(Page { items, next })
}

pub async fn show_bucket(app: &App, actor: &Actor, name: &str) -> Result<Bucket, AppError> {
    actor.require(OBSERVER)?;
    named::<Bucket>(&*app.store, name)
        .await
        .map_err(|_| missing_bucket(name))
}

fn missing_bucket(name: &str) -> AppError {
    AppError::Missing(format!(
        "bucket {:?} does not exist; create it with `stratus artifact mb {}`",
        stratus_types::name::truncate(name),
        stratus_types::name::truncate(name)
    ))
}

/// Only an empty bucket can be deleted.
pub async fn delete_bucket(app: &App, actor: &Actor, name: &str) -> Result<(), AppError> {
    actor.require(OPERATOR)?;
    let b = named::<Bucket>(&*app.store, name).await?;
    let q = Query {
        scope: Some(b.name.to_string()),
        limit: 1,
        ..Default::default()
    };
    if !app.store.list_as::<Object>(&q).await?.0.is_empty() {
        return Err(AppError::Conflict(format!(
            "bucket {name} is not empty; delete its objects first (`stratus artifact ls {name}`)"
        )));
    }
    app.commit(vec![
        Change::delete(&b),
        audit(actor, "bucket.delete", format!("bucket/{name}"), &b.name),
    ])
    .await
}

async fn object(app: &App, bucket: &str, key: &str) -> Result<Object, AppError> {
    app.store
        .find_as::<Object>(bucket, key)
        .await?
        .ok_or_else(|| AppError::not_found("object", format!("{bucket}/{key}")))
}

/// Store an upload under `bucket/key` (replacing what the key held). `expect` is the SHA-256
/// the content must have. Nothing changes unless the whole body arrived, within the size limit,
/// with the expected hash.
pub async fn put<S, E>(
    app: &App,
    actor: &Actor,
    bucket: &str,
    key: &str,
    body: S,
    expect: Option<&str>,
) -> Result<Object, AppError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    actor.require(OPERATOR)?;
    key_ok(key)?;
    if let Some(e) = expect
        && !is_sha256_hex(e)
    {
        return Err(AppError::invalid("sha256", "must be 64 lower-case hex digits"));
    }
    let b = named::<Bucket>(&*app.store, bucket)
        .await
        .map_err(|_| missing_bucket(bucket))?;
    let staged = app.blobs.stage(body, expect).await?;
    let stored = staged.stored.clone();
    // The blob is kept and the catalogue switched under one lock, which the sweep of unreferenced
    // blobs also takes: a blob is never deleted between "it is there" and "an object refers to it".
    let _guard = app.store.lock(BLOB_LOCK).await?;
    app.blobs.keep(&staged).await?;
    let now = Utc::now();
    let (obj, old) = match app.store.find_as::<Object>(b.name.as_str(), key).await? {
        Some(mut o) => {
            let old = o.sha256.clone();
            o.sha256 = stored.sha256.clone();
            o.size = stored.size;
            o.updated_by = actor.name.clone();
            let change = Change::update(&mut o, now);
            (o, Some((old, change)))
        }
        None => (
            Object {
                id: ObjectId::new(),
                revision: 1,
                created_at: now,
                updated_at: now,
                bucket: b.name.clone(),
                key: key.to_string(),
                size: stored.size,
                sha256: stored.sha256.clone(),
                updated_by: actor.name.clone(),
            },
            None,
        ),
    };
    let detail = serde_json::json!({"size": obj.size, "sha256": obj.sha256});
    let entry = audit(actor, "object.put", format!("object/{bucket}/{key}"), detail);
    let (change, old_sha) = match old {
        Some((old, change)) => (change, Some(old)),
        None => (Change::insert(&obj), None),
    };
    if let Err(e) = app.commit(vec![change, entry]).await {
        sweep(app, &obj.sha256).await;
        return Err(e);
    }
    if let Some(old) = old_sha
        && old != obj.sha256
    {
        sweep(app, &old).await;
    }
    drop(_guard);
    super::watched::object_changed(app, bucket, key).await;
    Ok(obj)
}

/// Keeping a blob and switching an object to it, and sweeping unreferenced blobs, take this
/// store lock: across replicas, a blob is never deleted between "it is there" and "an object
/// refers to it".
const BLOB_LOCK: &str = "artifact-blobs";

/// Delete the blob if no object refers to it (the caller holds [`BLOB_LOCK`]). A failure is
/// logged, not returned: the object write it follows has happened.
async fn sweep(app: &App, sha256: &str) {
    let q = Query {
        state: Some(sha256.to_string()),
        limit: 1,
        ..Default::default()
    };
    match app.store.list_as::<Object>(&q).await {
        Ok((refs, _)) if refs.is_empty() => {
            if let Err(e) = app.blobs.delete(sha256).await {
                tracing::warn!(%sha256, error = %super::error_chain(&e), "could not delete an unreferenced blob");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%sha256, error = %e, "could not check a blob's references"),
    }
}

pub async fn show(app: &App, actor: &Actor, bucket: &str, key: &str) -> Result<Object, AppError> {
    actor.require(OBSERVER)?;
    key_ok(key)?;
    object(app, bucket, key).await
}

/// The object and its content.
pub async fn get(app: &App, actor: &Actor, bucket: &str, key: &str) -> Result<(Object, ByteStream), AppError> {
    let o = show(app, actor, bucket, key).await?;
    let body = app.blobs.get(&o.sha256).await?;
    Ok((o, body))
}

pub async fn delete(app: &App, actor: &Actor, bucket: &str, key: &str) -> Result<(), AppError> {
    actor.require(OPERATOR)?;
    key_ok(key)?;
    let _guard = app.store.lock(BLOB_LOCK).await?;
    let o = object(app, bucket, key).await?;
    let entry = audit(actor, "object.delete", format!("object/{bucket}/{key}"), &o.sha256);
    app.commit(vec![Change::delete(&o), entry]).await?;
    sweep(app, &o.sha256).await;
    drop(_guard);
    super::watched::object_changed(app, bucket, key).await;
    Ok(())
}

/// Objects of a bucket in key order, optionally under a prefix.
pub async fn list(
    app: &App,
    actor: &Actor,
    bucket: &str,
    prefix: Option<&str>,
    limit: Option<u32>,
    after: Option<&str>,
) -> Result<Page<Object>, AppError> {
    actor.require(OBSERVER)?;
    let b = named::<Bucket>(&*app.store, bucket).await?;
    let limit = super::page_limit(limit)? as usize;
    let q = Query {
        scope: Some(b.name.to_string()),
        ..Default::default()
    };
    let mut items: Vec<Object> = app
        .store
        .list_all::<Object>(&q)
        .await?
        .into_iter()
        .filter(|o| prefix.is_none_or(|p| o.key.starts_with(p)))
        .filter(|o| after.is_none_or(|a| o.key.as_str() > a))
        .collect();
    items.sort_by(|a, b| a.key.cmp(&b.key));
    let next = (items.len() > limit).then(|| items[limit - 1].key.clone());
    items.truncate(limit);
    Ok(Page { items, next })
}

/// Whom a fetch URL was minted for; it works only while they may still fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minter {
    /// A person's API token (its id).
    Token(TokenId),
    /// A server's agent (its server's id).
    Agent(ServerId),
}

impl Minter {
    /// As the URL's `by` field: `t.ID` or `a.ID`.
    pub fn encode(&self) -> String {
        match self {
            Self::Token(id) => format!("t.{id}"),
            Self::Agent(id) => format!("a.{id}"),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (kind, id) = s.split_once('.')?;
        match kind {
            "t" => id.parse().ok().map(Self::Token),
            "a" => id.parse().ok().map(Self::Agent),
            _ => None,
        }
    }
}

/// A URL that fetches the object's current content without a token until it expires, while
/// `by` may still fetch. `base` is prefixed (the control plane's public URL for people; empty
/// for agents, which resolve it against the URL they reach the control plane at).
pub fn signed_url(app: &App, o: &Object, ttl_secs: u64, base: &str, by: Minter) -> FetchUrl {
    let cap = match by {
        Minter::Token(_) => URL_TTL_MAX,
        Minter::Agent(_) => URL_TTL_AGENT,
    };
    let expires_at = Utc::now() + chrono::Duration::seconds(ttl_secs.min(cap) as i64);
    let expires = expires_at.timestamp();
    let by = by.encode();
    let sig = app
        .keys
        .fetch_signature(o.bucket.as_str(), &o.key, &o.sha256, expires, &by);
    let query = [
        ("bucket", o.bucket.as_str()),
        ("key", o.key.as_str()),
        ("sha256", o.sha256.as_str()),
        ("expires", &expires.to_string()),
        ("by", &by),
        ("sig", &sig),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", percent_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    FetchUrl {
        url: format!("{}{FETCH_PATH}?{query}", base.trim_end_matches('/')),
        sha256: o.sha256.clone(),
        size: o.size,
        expires_at,
    }
}

/// A fetch URL for a server's agent (a run's artifact input, a deploy's archive, a watched
/// file): bound to that server's agent credential.
pub fn agent_url(app: &App, o: &Object, server: ServerId) -> FetchUrl {
    signed_url(app, o, URL_TTL_AGENT, "", Minter::Agent(server))
}

/// Percent-encode everything but RFC 3986's unreserved characters and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `POST /buckets/{bucket}/url`: a fetch URL for a person (or a script outside Stratus).
pub async fn fetch_url(
    app: &App,
    actor: &Actor,
    bucket: &str,
    key: &str,
    ttl_secs: Option<u64>,
) -> Result<FetchUrl, AppError> {
    actor.require(OPERATOR)?;
    // A URL lives no longer than the token that asked for it; without one there is nothing
    // to bind it to.
    let Some(token) = actor.token else {
        return Err(AppError::Forbidden("fetch URLs are minted for API tokens only".into()));
    };
    let ttl = ttl_secs.unwrap_or(URL_TTL_DEFAULT);
    if ttl == 0 || ttl > URL_TTL_MAX {
        return Err(AppError::invalid("ttl_secs", format!("must be 1-{URL_TTL_MAX}")));
    }
    let o = show(app, actor, bucket, key).await?;
    let entry = audit(
        actor,
        "object.url",
        format!("object/{bucket}/{key}"),
        serde_json::json!({"ttl_secs": ttl}),
    );
    app.commit(vec![entry]).await?;
    Ok(signed_url(app, &o, ttl, &app.settings.public_url, Minter::Token(token)))
}

/// A signed fetch URL's fields.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub sha256: &'a str,
    pub expires: i64,
    pub by: &'a str,
    pub sig: &'a str,
}

/// Answer a signed fetch URL: the object, if the signature holds, the URL has not expired, its
/// minter may still fetch, and the key still holds the content the URL names.
pub async fn fetch(app: &App, u: Signed<'_>) -> Result<(Object, ByteStream), AppError> {
    let Signed {
        bucket,
        key,
        sha256,
        expires,
        by,
        sig,
    } = u;
    if !app.keys.fetch_signature_ok(bucket, key, sha256, expires, by, sig) {
        return Err(AppError::Forbidden(
            "the URL's signature does not match; ask for a new URL".into(),
        ));
    }
    if Utc::now().timestamp() > expires {
        return Err(AppError::Forbidden("the URL has expired; ask for a new one".into()));
    }
    let minter = Minter::parse(by).ok_or_else(|| AppError::Forbidden("the URL names no minter".into()))?;
    if !minter_may_fetch(app, minter).await? {
        return Err(AppError::Forbidden(
            "the token or agent this URL was made for is revoked, expired or no longer allowed; ask for a new URL"
                .into(),
        ));
    }
    let o = match app.store.find_as::<Object>(bucket, key).await? {
        Some(o) if o.sha256 == sha256 => o,
        _ => {
            return Err(AppError::Missing(format!(
                "object {bucket}/{key} was deleted or overwritten since the URL was made; ask for a new URL"
            )));
        }
    };
    let body = app.blobs.get(&o.sha256).await?;
    Ok((o, body))
}

/// Whether a URL's minter may still fetch: the token exists (not revoked), has not expired and
/// its user is still an operator; the agent is still enrolled for its server's instance and
/// the server is not terminated.
async fn minter_may_fetch(app: &App, minter: Minter) -> Result<bool, AppError> {
    match minter {
        Minter::Token(id) => {
            let Some(rec) = app.store.get_as::<super::users::TokenRecord>(&id.to_string()).await? else {
                return Ok(false);
            };
            if rec.info.expires_at.is_some_and(|e| e < Utc::now()) {
                return Ok(false);
            }
            let user = app
                .store
                .get_as::<stratus_types::user::User>(&rec.user_id.to_string())
                .await?;
            Ok(user.is_some_and(|u| Actor::user(&u).require(OPERATOR).is_ok()))
        }
        Minter::Agent(server) => {
            let id = server.to_string();
            let Some(rec) = app.store.get_as::<super::agents::AgentRecord>(&id).await? else {
                return Ok(false);
            };
            let s = app.store.get_as::<stratus_types::server::Server>(&id).await?;
            Ok(s.is_some_and(|s| {
                s.state != stratus_types::server::ServerState::Terminated
                    && s.instance_id.as_deref() == Some(rec.instance_id.as_str())
            }))
        }
    }
}
