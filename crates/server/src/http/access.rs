//! Who may call which route: one table, enforced in one place.
//!
//! [`API`] has a row for every route of the public API (method + path template exactly as in
//! the OpenAPI document, under `/api/v1`) and [`OUTSIDE`] for the routes outside it (the
//! dashboard's files). [`guard`] runs on every matched route before its handler: it looks the
//! route up by axum's [`MatchedPath`], checks the caller against the row and hands the
//! authenticated caller on to the handler (the `Caller` and `AgentCaller` extractors take it
//! from there). A route without a row is refused (deny by default), and the authorization
//! matrix test (`tests/authz_matrix.rs`) fails when a route has no row or a row no route.
//!
//! The app layer's `actor.require(LEVEL)` calls stay as defence in depth and must agree with
//! this table; the matrix test checks the outcomes of both together, route by route, for every
//! kind of caller. Finer rules that need the resource stay in the app layer: which token is
//! the caller's own (`DELETE /tokens/{id}`, `POST /tokens` for another user), which servers a
//! user without a role sees in their own access list.
//!
//! ```text
//! request ─▶ router (matched path) ─▶ guard: row? ──no──▶ 403 (no rule) / 405 (no such method)
//!                                        │ yes
//!                                        ▼
//!                         credential fits the row? ──no──▶ 401 (none/unknown) / 403 (role)
//!                                        │ yes
//!                                        ▼
//!                               handler (app layer re-checks its role)
//! ```

use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stratus_api::error::ErrorCode;

use super::error::{ApiError, body};
use super::extract::{AgentCaller, Caller, bearer};
use crate::app::{ADMIN, Actor, App, AppError, OBSERVER, OPERATOR, agents, users};

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token: health, the OpenAPI document, the dashboard's files.
    Public,
    /// Anyone: the body's one-time enrolment token is the permission (checked by the handler).
    Enrolment,
    /// No token: the URL's signature is the permission (checked by the handler against the
    /// token or agent that minted it).
    SignedUrl,
    /// Any signed-in user, whatever their roles; the handler acts on the caller's own things
    /// only (whoami, their own tokens).
    User,
    /// The user the path's `{name}` names, or a user with at least this level.
    SelfOr(u8),
    /// A user with at least this level ([`OBSERVER`], [`OPERATOR`], [`ADMIN`]).
    Role(u8),
    /// An enrolled agent whose server is not terminated; it acts only as its own server (the
    /// handlers take the server from the credential, never from the request).
    Agent,
    /// An enrolled agent, even of a terminated server (its connection is opened only to tell it
    /// to stop).
    AgentConnect,
}

/// One route and the access it needs.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn row(method: &'static str, path: &'static str, access: Access) -> Row {
    Row { method, path, access }
}

use Access::{Agent, AgentConnect, Enrolment, Public, Role, SelfOr, SignedUrl, User};

const OBS: Access = Role(OBSERVER);
const OPS: Access = Role(OPERATOR);
const ADM: Access = Role(ADMIN);

/// The routes under `/api/v1`, by the path templates of the OpenAPI document.
pub const API: &[Row] = &[
    row("GET", "/health", Public),
    row("GET", "/openapi.json", Public),
    // The catalogue: read by observers, changed by operators (like `apply`).
    row("GET", "/clouds", OBS),
    row("POST", "/clouds", OPS),
    row("GET", "/clouds/{name}", OBS),
    row("PUT", "/clouds/{name}", OPS),
    row("DELETE", "/clouds/{name}", OPS),
    row("GET", "/clouds/{name}/sizes/resolve", OBS),
    row("GET", "/images", OBS),
    row("POST", "/images", OPS),
    row("GET", "/images/{name}", OBS),
    row("PUT", "/images/{name}", OPS),
    row("DELETE", "/images/{name}", OPS),
    row("POST", "/images/{name}/build", ADM),
    row("POST", "/images/{name}/import", ADM),
    row("GET", "/images/{name}/versions", OBS),
    row("POST", "/images/{name}/gc", OPS),
    row("GET", "/scripts", OBS),
    row("POST", "/scripts", OPS),
    row("GET", "/scripts/{name}", OBS),
    row("PUT", "/scripts/{name}", OPS),
    row("DELETE", "/scripts/{name}", OPS),
    row("GET", "/templates", OBS),
    row("POST", "/templates", OPS),
    row("GET", "/templates/{name}", OBS),
    row("PUT", "/templates/{name}", OPS),
    row("DELETE", "/templates/{name}", OPS),
    row("GET", "/templates/{name}/versions", OBS),
    row("GET", "/deployments", OBS),
    row("POST", "/deployments", OPS),
    row("GET", "/deployments/{name}", OBS),
    row("PUT", "/deployments/{name}", OPS),
    row("DELETE", "/deployments/{name}", OPS),
    row("POST", "/apply", OPS),
    // Credentials: names and metadata for observers, values never; changed by admins.
    row("GET", "/credentials", OBS),
    row("POST", "/credentials", ADM),
    row("GET", "/credentials/{name}", OBS),
    row("PUT", "/credentials/{name}", ADM),
    row("DELETE", "/credentials/{name}", ADM),
    // Users: everyone manages their own keys and tokens and sees their own access.
    row("GET", "/whoami", User),
    row("GET", "/users", OBS),
    row("POST", "/users", ADM),
    row("GET", "/users/{name}", OBS),
    row("PUT", "/users/{name}", ADM),
    row("DELETE", "/users/{name}", ADM),
    row("GET", "/users/{name}/access", SelfOr(OBSERVER)),
    row("POST", "/users/{name}/keys", SelfOr(ADMIN)),
    row("DELETE", "/users/{name}/keys/{fingerprint}", SelfOr(ADMIN)),
    row("GET", "/users/{name}/tokens", SelfOr(ADMIN)),
    // The body names the user: their own, or an admin's for anyone (app layer).
    row("POST", "/tokens", User),
    // Their own token, or an admin for anyone's (app layer: only the record knows whose).
    row("DELETE", "/tokens/{id}", User),
    row("GET", "/addresses", OBS),
    row("POST", "/addresses", OPS),
    row("GET", "/addresses/{name}", OBS),
    row("DELETE", "/addresses/{name}", OPS),
    row("POST", "/addresses/{name}/associate", OPS),
    row("POST", "/addresses/{name}/disassociate", OPS),
    row("GET", "/audit", OBS),
    // The control plane's background tasks: how its work goes, nothing secret.
    row("GET", "/admin/tasks", OBS),
    // Servers, arrays, runs, rollouts.
    row("GET", "/servers", OBS),
    row("POST", "/servers", OPS),
    row("GET", "/servers/{key}", OBS),
    row("DELETE", "/servers/{key}", OPS),
    row("POST", "/servers/{key}/replace", OPS),
    row("POST", "/servers/{key}/rebundle", OPS),
    row("POST", "/servers/{key}/reboot", OPS),
    row("GET", "/servers/{key}/console", OBS),
    row("POST", "/servers/{key}/tags", OPS),
    row("GET", "/arrays", OBS),
    row("POST", "/arrays", OPS),
    row("GET", "/arrays/{deployment}/{name}", OBS),
    row("DELETE", "/arrays/{deployment}/{name}", OPS),
    row("POST", "/arrays/{deployment}/{name}/scale", OPS),
    row("POST", "/arrays/{deployment}/{name}/rebundle", OPS),
    row("GET", "/runs", OBS),
    row("POST", "/runs", OPS),
    row("GET", "/runs/{id}", OBS),
    row("POST", "/runs/{id}/cancel", OPS),
    row("GET", "/rollouts", OBS),
    row("POST", "/rollouts", OPS),
    row("GET", "/rollouts/{id}", OBS),
    row("POST", "/rollouts/{id}/cancel", OPS),
    row("GET", "/operations", OBS),
    row("GET", "/operations/{id}", OBS),
    row("POST", "/deploys", OPS),
    // The artifact store. A fetch URL is a capability: operators mint them (agents get them
    // in their own runs); fetching needs only the URL.
    row("GET", "/buckets", OBS),
    row("POST", "/buckets", OPS),
    row("GET", "/buckets/{bucket}", OBS),
    row("DELETE", "/buckets/{bucket}", OPS),
    row("GET", "/buckets/{bucket}/objects", OBS),
    row("GET", "/buckets/{bucket}/object", OBS),
    row("PUT", "/buckets/{bucket}/object", OPS),
    row("DELETE", "/buckets/{bucket}/object", OPS),
    row("GET", "/buckets/{bucket}/object-info", OBS),
    row("POST", "/buckets/{bucket}/url", OPS),
    row("GET", "/artifacts/fetch", SignedUrl),
    row("GET", "/events", OBS),
    // Agents: their own credential only, never a user's token.
    row("POST", "/agent/enroll", Enrolment),
    row("GET", "/agent/self", Agent),
    row("GET", "/agent/connect", AgentConnect),
];

/// The routes outside `/api/v1`: the dashboard, which signs in through the API itself.
pub const OUTSIDE: &[Row] = &[
    row("GET", "/", Public),
    row("GET", "/ui", Public),
    row("GET", "/ui/", Public),
    row("GET", "/ui/app.js", Public),
    row("GET", "/ui/app.css", Public),
];

/// The rows of a matched path (a full path, as axum matched it).
pub fn rows_for(matched: &str) -> impl Iterator<Item = &'static Row> + '_ {
    let (table, path) = match matched.strip_prefix(stratus_api::API_PREFIX) {
        Some(rest) if rest.starts_with('/') => (API, rest),
        _ => (OUTSIDE, matched),
    };
    table.iter().filter(move |r| r.path == path)
}

/// The row of a request: HEAD is answered like GET.
pub fn lookup(method: &Method, matched: &str) -> Option<&'static Row> {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    rows_for(matched).find(|r| r.method == method)
}

/// The middleware: check the caller against the route's row before the handler runs.
pub async fn guard(
    State(app): State<Arc<App>>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(matched) = matched else {
        return no_rule("an unmatched route");
    };
    let Some(row) = lookup(req.method(), matched.as_str()) else {
        let allowed: Vec<&str> = rows_for(matched.as_str()).map(|r| r.method).collect();
        if allowed.is_empty() {
            return no_rule(matched.as_str());
        }
        let message = format!(
            "{} is not allowed on {}; it takes {}",
            req.method(),
            matched.as_str(),
            allowed.join(", ")
        );
        return body(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::InvalidInput, message, vec![]);
    };
    let name = params
        .ok()
        .and_then(|p| p.iter().find(|(k, _)| *k == "name").map(|(_, v)| v.to_string()));
    let (parts, b) = req.into_parts();
    let admitted = admit(&app, row.access, &parts, name.as_deref()).await;
    req = Request::from_parts(parts, b);
    match admitted {
        Ok(Admitted::Nobody) => {}
        Ok(Admitted::User(actor)) => {
            req.extensions_mut().insert(Caller(actor));
        }
        Ok(Admitted::Agent(agent)) => {
            req.extensions_mut().insert(agent);
        }
        Err(e) => return ApiError(e).into_response(),
    }
    next.run(req).await
}

/// Who got through.
enum Admitted {
    Nobody,
    User(Actor),
    Agent(AgentCaller),
}

async fn admit(
    app: &App,
    access: Access,
    parts: &axum::http::request::Parts,
    name: Option<&str>,
) -> Result<Admitted, AppError> {
    match access {
        Public | Enrolment | SignedUrl => Ok(Admitted::Nobody),
        User => Ok(Admitted::User(user(app, parts).await?)),
        SelfOr(level) => {
            let actor = user(app, parts).await?;
            if name != Some(actor.name.as_str()) {
                actor.require(level)?;
            }
            Ok(Admitted::User(actor))
        }
        Role(level) => {
            let actor = user(app, parts).await?;
            actor.require(level)?;
            Ok(Admitted::User(actor))
        }
        Agent => {
            let (agent, server) = agents::authenticate(app, bearer(parts)?).await?;
            Ok(Admitted::Agent(AgentCaller { agent, server }))
        }
        AgentConnect => {
            let (agent, server) = agents::identify(app, bearer(parts)?).await?;
            Ok(Admitted::Agent(AgentCaller { agent, server }))
        }
    }
}

async fn user(app: &App, parts: &axum::http::request::Parts) -> Result<Actor, AppError> {
    let (user, token) = users::authenticate_token(&*app.store, bearer(parts)?).await?;
    Ok(Actor::user(&user).with_token(token.info.id))
}

fn no_rule(what: &str) -> Response {
    tracing::error!(route = %what, "a route has no row in the access table; refused");
    body(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "this route has no access rule; it is refused until it gets one".into(),
        vec![],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_has_one_row() {
        let mut seen = std::collections::HashSet::new();
        for r in API.iter().chain(OUTSIDE) {
            assert!(seen.insert((r.method, r.path)), "two rows for {} {}", r.method, r.path);
        }
    }

    /// The rows that let in callers without a role, pinned here by hand: the matrix test takes
    /// its expectations from the table, so widening a row there would pass it. A change to this
    /// list is a change to the threat model (docs/SECURITY.md) and must be made on purpose.
    #[test]
    fn the_rows_open_to_callers_without_a_role_are_exactly_these() {
        let mut open: Vec<String> = API
            .iter()
            .chain(OUTSIDE)
            .filter(|r| !matches!(r.access, Role(_) | Agent | AgentConnect))
            .map(|r| format!("{} {} {:?}", r.method, r.path, r.access))
            .collect();
        open.sort();
        let mut expected = vec![
            format!("GET /health {Public:?}"),
            format!("GET /openapi.json {Public:?}"),
            format!("GET /whoami {User:?}"),
            format!("GET /users/{{name}}/access {:?}", SelfOr(OBSERVER)),
            format!("POST /users/{{name}}/keys {:?}", SelfOr(ADMIN)),
            format!("DELETE /users/{{name}}/keys/{{fingerprint}} {:?}", SelfOr(ADMIN)),
            format!("GET /users/{{name}}/tokens {:?}", SelfOr(ADMIN)),
            format!("POST /tokens {User:?}"),
            format!("DELETE /tokens/{{id}} {User:?}"),
            format!("GET /artifacts/fetch {SignedUrl:?}"),
            format!("POST /agent/enroll {Enrolment:?}"),
            format!("GET / {Public:?}"),
            format!("GET /ui {Public:?}"),
            format!("GET /ui/ {Public:?}"),
            format!("GET /ui/app.js {Public:?}"),
            format!("GET /ui/app.css {Public:?}"),
        ];
        expected.sort();
        assert_eq!(open, expected);
    }

    #[test]
    fn lookups_go_by_method_and_full_path() {
        let get = |m: Method, p: &str| lookup(&m, p).map(|r| r.access);
        assert_eq!(get(Method::GET, "/api/v1/servers/{key}"), Some(OBS));
        assert_eq!(get(Method::DELETE, "/api/v1/servers/{key}"), Some(OPS));
        assert_eq!(get(Method::HEAD, "/api/v1/health"), Some(Public));
        assert_eq!(get(Method::PATCH, "/api/v1/servers/{key}"), None);
        assert_eq!(get(Method::GET, "/ui/app.js"), Some(Public));
        // An API path is not looked up among the outside rows and the other way round.
        assert_eq!(get(Method::GET, "/health"), None);
        assert_eq!(get(Method::GET, "/api/v1/ui/app.js"), None);
        assert_eq!(get(Method::GET, "/api/v1x/health"), None);
    }
}
