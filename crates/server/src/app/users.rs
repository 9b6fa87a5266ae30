//! Users, their SSH keys, and API tokens (including the first admin at first start).
//!
//! A token is `stratus_` + 32 random bytes (base64url). Only its SHA-256 is stored, as the
//! token record's name, so looking one up is an indexed read and a database copy holds no
//! usable token.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use stratus_api::params::CreateTokenRequest;
use stratus_api::views::{Page, TokenCreated};
use stratus_store::{Change, Datastore, Kind, Query, Resource, TypedStore};
use stratus_types::sshkey::SshPublicKey;
use stratus_types::user::{ApiToken, Role, User, UserKey, UserSpec};
use stratus_types::{FieldError, Name, TokenId, UserId};

use super::resolve::named;
use super::{ADMIN, Actor, App, AppError, OBSERVER, audit};
use crate::crypto::random_bytes;

/// A stored token: what the API shows plus whose it is and its hash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub info: ApiToken,
    pub user_id: UserId,
    pub hash: String,
    pub revision: u32,
}

impl Resource for TokenRecord {
    const KIND: Kind = Kind::Token;
    fn id_string(&self) -> String {
        self.info.id.to_string()
    }
    fn name_string(&self) -> String {
        self.hash.clone()
    }
    fn scope(&self) -> String {
        "token".into()
    }
    fn revision(&self) -> u32 {
        self.revision
    }
    fn set_revision(&mut self, r: u32) {
        self.revision = r;
    }
    fn created_at(&self) -> DateTime<Utc> {
        self.info.created_at
    }
    fn updated_at(&self) -> DateTime<Utc> {
        self.info.created_at
    }
    fn set_updated_at(&mut self, _: DateTime<Utc>) {}
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token(user: &User, description: &str, ttl_hours: Option<u32>) -> Result<(String, TokenRecord), AppError> {
    let raw: [u8; 32] = random_bytes()?;
    let token = format!(
        "stratus_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let now = Utc::now();
    let info = ApiToken {
        id: TokenId::new(),
        user: user.spec.name.clone(),
        description: description.to_string(),
        created_at: now,
        expires_at: ttl_hours.map(|h| now + Duration::hours(i64::from(h))),
    };
    let rec = TokenRecord {
        info,
        user_id: user.id,
        hash: hash(&token),
        revision: 1,
    };
    Ok((token, rec))
}

/// Who holds this bearer token? Unknown, expired and malformed tokens all get the same answer.
pub async fn authenticate(store: &dyn Datastore, token: &str) -> Result<User, AppError> {
    Ok(authenticate_token(store, token).await?.0)
}

/// [`authenticate`], with the token's record (its id binds what the token mints, such as fetch
/// URLs, to the token's life).
pub async fn authenticate_token(store: &dyn Datastore, token: &str) -> Result<(User, TokenRecord), AppError> {
    if !token.starts_with("stratus_") || token.len() > 128 {
        return Err(AppError::Unauthenticated);
    }
    let rec = store
        .find_as::<TokenRecord>("token", &hash(token))
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if rec.info.expires_at.is_some_and(|e| e < Utc::now()) {
        return Err(AppError::Unauthenticated);
    }
    let user = store
        .get_as::<User>(&rec.user_id.to_string())
        .await?
        .ok_or(AppError::Unauthenticated)?;
    Ok((user, rec))
}

/// At first start (no users at all), create `admin` with a token and return the token.
/// `persist` stores the token (the data directory's `admin.token`) *before* the admin is
/// committed, so a failure cannot leave an admin whose token nobody has.
pub async fn bootstrap_admin(
    store: &dyn Datastore,
    persist: impl FnOnce(&str) -> std::io::Result<()>,
) -> Result<bool, AppError> {
    let (users, _) = store
        .list_as::<User>(&Query {
            limit: 1,
            ..Default::default()
        })
        .await?;
    if !users.is_empty() {
        return Ok(false);
    }
    let now = Utc::now();
    let admin = User {
        id: UserId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        spec: UserSpec {
            name: Name::parse("admin")?,
            email: String::new(),
            roles: vec![Role::Admin],
        },
        ssh_keys: vec![],
    };
    let (token, rec) = new_token(&admin, "created at first start", None)?;
    persist(&token).map_err(|e| AppError::BadState(format!("cannot store the first admin's token: {e}")))?;
    let system = Actor::system();
    store
        .commit(vec![
            Change::insert(&admin),
            Change::insert(&rec),
            audit(&system, "user.create", "user/admin".into(), "first start"),
        ])
        .await?;
    Ok(true)
}

pub async fn create(app: &App, actor: &Actor, spec: &UserSpec) -> Result<User, AppError> {
    actor.require(ADMIN)?;
    spec.validate()?;
    let now = Utc::now();
    let u = User {
        id: UserId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        spec: spec.clone(),
        ssh_keys: vec![],
    };
    let target = format!("user/{}", spec.name);
    app.commit(vec![Change::insert(&u), audit(actor, "user.create", target, spec)])
        .await?;
    Ok(u)
}

pub async fn update(app: &App, actor: &Actor, name: &str, spec: &UserSpec) -> Result<User, AppError> {
    actor.require(ADMIN)?;
    spec.validate()?;
    if spec.name.as_str() != name {
        return Err(AppError::invalid("name", "users cannot be renamed; create a new user"));
    }
    let mut u = named::<User>(&*app.store, name).await?;
    if u.level() == ADMIN && !spec.roles.contains(&Role::Admin) {
        ensure_other_admin(app, &u).await?;
    }
    u.spec = spec.clone();
    let target = format!("user/{name}");
    app.commit(vec![
        Change::update(&mut u, Utc::now()),
        audit(actor, "user.update", target, spec),
    ])
    .await?;
    // Roles decide logins: grants and revocations go out now.
    super::logins::users_changed(app).await;
    Ok(u)
}

async fn ensure_other_admin(app: &App, u: &User) -> Result<(), AppError> {
    let admins = app
        .store
        .list_all::<User>(&Query::default())
        .await?
        .into_iter()
        .filter(|x| x.level() == ADMIN && x.id != u.id)
        .count();
    if admins == 0 {
        return Err(AppError::Conflict(format!(
            "{} is the last admin; make someone else admin first",
            u.spec.name
        )));
    }
    Ok(())
}

pub async fn delete(app: &App, actor: &Actor, name: &str) -> Result<(), AppError> {
    actor.require(ADMIN)?;
    let u = named::<User>(&*app.store, name).await?;
    if u.level() == ADMIN {
        ensure_other_admin(app, &u).await?;
    }
    let tokens = app
        .store
        .list_all::<TokenRecord>(&Query {
            scope: Some("token".into()),
            ..Default::default()
        })
        .await?;
    let mut changes: Vec<Change> = tokens
        .iter()
        .filter(|t| t.user_id == u.id)
        .map(Change::delete)
        .collect();
    changes.push(Change::delete(&u));
    changes.push(audit(actor, "user.delete", format!("user/{name}"), ()));
    app.commit(changes).await?;
    super::logins::users_changed(app).await;
    Ok(())
}

/// The caller's own user record.
pub async fn whoami(app: &App, actor: &Actor) -> Result<User, AppError> {
    named::<User>(&*app.store, &actor.name).await
}

pub async fn show(app: &App, actor: &Actor, name: &str) -> Result<User, AppError> {
    actor.require(OBSERVER)?;
    named::<User>(&*app.store, name).await
}

pub async fn list(app: &App, actor: &Actor, limit: Option<u32>, after: Option<String>) -> Result<Page<User>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<User>(&q).await?;
    Ok(Page { items, next })
}

/// Register a public key. Users manage their own keys; admins anyone's. A key may belong to one
/// user only, or logins could not be attributed.
pub async fn add_key(app: &App, actor: &Actor, name: &str, line: &str) -> Result<User, AppError> {
    if actor.name != name {
        actor.require(ADMIN)?;
    }
    let key = SshPublicKey::parse(line.trim())?;
    let mut u = named::<User>(&*app.store, name).await?;
    for other in app.store.list_all::<User>(&Query::default()).await? {
        if let Some(k) = other.ssh_keys.iter().find(|k| k.key.fingerprint == key.fingerprint) {
            let whose = if other.id == u.id {
                "this user".to_string()
            } else {
                format!("user {}", other.spec.name)
            };
            return Err(AppError::Conflict(format!(
                "key {} is already registered to {whose}",
                k.key.fingerprint
            )));
        }
    }
    let fp = key.fingerprint.clone();
    u.ssh_keys.push(UserKey {
        key,
        added_at: Utc::now(),
    });
    let target = format!("user/{name}");
    app.commit(vec![
        Change::update(&mut u, Utc::now()),
        audit(actor, "user.key.add", target, serde_json::json!({"fingerprint": fp})),
    ])
    .await?;
    super::logins::users_changed(app).await;
    Ok(u)
}

pub async fn remove_key(app: &App, actor: &Actor, name: &str, fingerprint: &str) -> Result<User, AppError> {
    if actor.name != name {
        actor.require(ADMIN)?;
    }
    let mut u = named::<User>(&*app.store, name).await?;
    let before = u.ssh_keys.len();
    u.ssh_keys.retain(|k| k.key.fingerprint != fingerprint);
    if u.ssh_keys.len() == before {
        return Err(AppError::not_found("ssh key", fingerprint));
    }
    let target = format!("user/{name}");
    app.commit(vec![
        Change::update(&mut u, Utc::now()),
        audit(
            actor,
            "user.key.remove",
            target,
            serde_json::json!({"fingerprint": fingerprint}),
        ),
    ])
    .await?;
    // A removed key must stop working everywhere at once.
    super::logins::users_changed(app).await;
    Ok(u)
}

pub async fn create_token(app: &App, actor: &Actor, req: &CreateTokenRequest) -> Result<TokenCreated, AppError> {
    if actor.name != req.user.as_str() {
        actor.require(ADMIN)?;
    }
    if req.description.len() > 256 {
        return Err(FieldError::new("description", "is longer than 256 bytes").into());
    }
    if req.ttl_hours.is_some_and(|h| h == 0 || h > 24 * 366 * 5) {
        return Err(AppError::invalid("ttl_hours", "must be between 1 and 43920 (5 years)"));
    }
    let user = named::<User>(&*app.store, req.user.as_str()).await?;
    let (token, rec) = new_token(&user, &req.description, req.ttl_hours)?;
    let target = format!("user/{}", req.user);
    app.commit(vec![
        Change::insert(&rec),
        audit(
            actor,
            "token.create",
            target,
            serde_json::json!({"token_id": rec.info.id}),
        ),
    ])
    .await?;
    Ok(TokenCreated { token, info: rec.info })
}

pub async fn list_tokens(app: &App, actor: &Actor, user: &str) -> Result<Vec<ApiToken>, AppError> {
    if actor.name != user {
        actor.require(ADMIN)?;
    }
    let u = named::<User>(&*app.store, user).await?;
    let all = app
        .store
        .list_all::<TokenRecord>(&Query {
            scope: Some("token".into()),
            ..Default::default()
        })
        .await?;
    Ok(all.into_iter().filter(|t| t.user_id == u.id).map(|t| t.info).collect())
}

pub async fn revoke_token(app: &App, actor: &Actor, id: &str) -> Result<(), AppError> {
    if id.parse::<uuid::Uuid>().is_err() {
        return Err(AppError::invalid("id", "is not a token id"));
    }
    let rec = app
        .store
        .get_as::<TokenRecord>(id)
        .await?
        .ok_or_else(|| AppError::not_found("token", id))?;
    if actor.name != rec.info.user.as_str() {
        actor.require(ADMIN)?;
    }
    let target = format!("user/{}", rec.info.user);
    app.commit(vec![
        Change::delete(&rec),
        audit(actor, "token.revoke", target, serde_json::json!({"token_id": id})),
    ])
    .await
}
