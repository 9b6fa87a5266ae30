//! The authorization matrix: every route of the OpenAPI document, as every kind of caller,
//! against the one access table in the code (`stratus_server::http::access`).
//!
//! The routes come from the running control plane's `/api/v1/openapi.json`, not from a list
//! here: a route added to the API is called by this test at once, and it fails when the route
//! has no row in the table (or a row names no route). Path parameters name real resources
//! (a deployment, template, server, bucket, object, user, token, run, rollout, array, address,
//! credential), so an admitted call reaches the handler and its app-layer check; bodies are
//! minimal valid ones where that is cheap, and deliberately refused ones where a valid one
//! would start a long operation (an array's rebuild).
//!
//! Each outcome is checked against this test's own reading of the table: admitted → neither
//! 401 nor 403; refused → 401 without a (fitting) credential, 403 for a missing role.

mod common;

use std::collections::BTreeMap;

use common::agent::{Enrolled, connect, enrol, hello, operational, recv_work, send};
use common::{TestServer, enc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stratus_agent_proto::ControlMessage;
use stratus_server::app::{ADMIN, OBSERVER, OPERATOR};
use stratus_server::http::access::{API, Access, OUTSIDE};

/// Who calls.
#[derive(Debug, Clone)]
enum Who {
    Nobody,
    /// A user: name, API level (0 = only `server_login`), token.
    User(&'static str, u8, String),
    /// An enrolled agent (`mine`: the server the resources name; else another server's).
    Agent {
        mine: bool,
        token: String,
    },
}

impl Who {
    fn token(&self) -> Option<&str> {
        match self {
            Who::Nobody => None,
            Who::User(_, _, t) | Who::Agent { token: t, .. } => Some(t),
        }
    }

    fn label(&self) -> String {
        match self {
            Who::Nobody => "no token".into(),
            Who::User(n, l, _) => format!("user {n} (level {l})"),
            Who::Agent { mine: true, .. } => "the server's agent".into(),
            Who::Agent { mine: false, .. } => "another server's agent".into(),
        }
    }
}

/// This test's reading of a row: may `who` call it (with `{name}` = `name`)?
fn admitted(access: Access, who: &Who, name: Option<&str>) -> bool {
    match (access, who) {
        (Access::Public | Access::Enrolment | Access::SignedUrl, _) => true,
        (Access::User, Who::User(..)) => true,
        (Access::SelfOr(level), Who::User(n, l, _)) => name == Some(*n) || *l >= level,
        (Access::Role(level), Who::User(_, l, _)) => *l >= level,
        (Access::Agent | Access::AgentConnect, Who::Agent { .. }) => true,
        _ => false,
    }
}

/// The resources the matrix names.
struct World {
    doc: Value,
    agent_a: Enrolled,
    /// A's connection, open for the test's length.
    _ws: common::agent::Ws,
    enrol_token: String,
    run: String,
    rollout: String,
    fetch_query: String,
    /// Per user: a spare token's id and a registered key's fingerprint.
    spare_token: BTreeMap<&'static str, String>,
    fingerprint: BTreeMap<&'static str, String>,
}

async fn user_with_key(t: &TestServer, name: &'static str, roles: &[&str], seed: u8) -> String {
    let token = if name == "admin" {
        t.token.clone()
    } else {
        t.user_token(name, roles).await
    };
    let key = common::ed25519_key(seed, name);
    let (s, v) = t
        .post(&format!("/users/{name}/keys"), json!({ "public_key": key }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    token
}

async fn setup(t: &TestServer) -> (World, Vec<Who>) {
    common::example_credential(t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let doc =
        stratus_api::file::parse(common::EXAMPLE, stratus_api::file::Format::Toml, "t.toml", None).expect("parses");
    let doc = serde_json::to_value(doc).expect("json");

    // An on-demand script for runs and rollouts, and a template that offers it.
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "status", "frequency": "on-demand", "body": "echo ok" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "ops", "image": "debian-12", "size": "small", "operational_scripts": ["status"], "default_tags": ["app:role=ops"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Two enrolled agents; A's is connected and booted its server (operational: a rollout can
    // run on it), B's is enrolled only.
    let (agent_a, ws) = operational(t, "agent-a", "ops").await;
    let agent_b = enrol(t, "agent-b", "app").await;

    // Users: a target, and one caller per level (admin is the first admin).
    user_with_key(t, "target", &["server_login"], 1).await;
    let lou = user_with_key(t, "lou", &["server_login"], 2).await;
    let olga = user_with_key(t, "olga", &["observer"], 3).await;
    let opal = user_with_key(t, "opal", &["operator"], 4).await;
    let admin = user_with_key(t, "admin", &[], 5).await;
    let mut spare_token = BTreeMap::new();
    let mut fingerprint = BTreeMap::new();
    for name in ["target", "lou", "olga", "opal", "admin"] {
        let (s, v) = t.post("/tokens", json!({ "user": name, "description": "spare" })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        spare_token.insert(name, v["info"]["id"].as_str().expect("id").to_string());
        let u = t.get(&format!("/users/{name}")).await;
        let fp = u["ssh_keys"][0]["fingerprint"].as_str().expect("fingerprint");
        fingerprint.insert(name, fp.to_string());
    }

    // The artifact store, an address, an array, a rollout.
    let (s, v) = t.post("/buckets", json!({ "name": "apps" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let resp = t
        .http
        .put(format!("{}/api/v1/buckets/apps/object?key=web/site.txt", t.url))
        .bearer_auth(&t.token)
        .body("hello")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
    let (s, v) = t.post("/buckets/apps/url", json!({ "key": "web/site.txt" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let url = v["url"].as_str().expect("url");
    let fetch_query = url.split_once('?').expect("query").1.to_string();
    let (s, v) = t
        .post(
            "/addresses",
            json!({ "name": "ip-1", "cloud": "sandbox", "pool": "public" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "web", "deployment": "example", "template": "app", "min": 0, "max": 2, "desired": 0 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/rollouts",
            json!({ "script": "status", "selector": "app:role=ops", "deployment": "example" }),
        )
        .await;
    let rollout = match v["id"].as_str() {
        Some(id) => id.to_string(),
        None => panic!("a rollout to name: {s} {v}"),
    };
    let run = t
        .wait_for("the rollout's run", async |t| {
            let runs = t.get(&format!("/runs?rollout={rollout}")).await;
            runs["items"][0]["id"].as_str().map(str::to_string)
        })
        .await;

    let callers = vec![
        Who::Nobody,
        Who::User("lou", 0, lou),
        Who::Agent {
            mine: true,
            token: agent_a.token.clone(),
        },
        Who::Agent {
            mine: false,
            token: agent_b.token.clone(),
        },
        Who::User("olga", OBSERVER, olga),
        Who::User("opal", OPERATOR, opal),
        Who::User("admin", ADMIN, admin),
    ];
    let enrol_token = t
        .running
        .as_ref()
        .expect("running")
        .app
        .keys
        .enrolment_token(&agent_a.id);
    let world = World {
        doc,
        enrol_token,
        agent_a,
        _ws: ws,
        run,
        rollout,
        fetch_query,
        spare_token,
        fingerprint,
    };
    (world, callers)
}

/// What one call sends.
struct Call {
    path: String,
    body: Option<Value>,
    raw: Option<&'static str>,
}

/// The call of a route for a caller: real resources in the path, a fitting body. `own` fills
/// `{name}` of `/users/...` with the caller's own name instead of another user's.
fn call_for(w: &World, method: &str, template: &str, who: &Who, own: bool, n: usize) -> Call {
    let me = match who {
        Who::User(name, ..) => *name,
        _ => "target",
    };
    let user = if own { me } else { "target" };
    let section = template.split('/').nth(1).unwrap_or_default();
    let name = match section {
        "clouds" => "sandbox",
        "images" => "debian-12",
        "scripts" => "install-nginx",
        "templates" => "app",
        "deployments" => "example",
        "credentials" => "lb-stats",
        "users" => user,
        "addresses" => "ip-1",
        "arrays" => "web",
        _ => "none",
    };
    let id = match section {
        "runs" => w.run.clone(),
        "rollouts" => w.rollout.clone(),
        "tokens" => w.spare_token[me].clone(),
        _ => "none".into(),
    };
    let mut path = template
        .replace("{name}", name)
        .replace("{key}", "example%2Fapp-1")
        .replace("{deployment}", "example")
        .replace("{bucket}", "apps")
        .replace("{fingerprint}", &enc(&w.fingerprint[user]))
        .replace("{id}", &id);
    let query = match template {
        "/clouds/{name}/sizes/resolve" => "size=small".to_string(),
        "/buckets/{bucket}/object" | "/buckets/{bucket}/object-info" => "key=web/site.txt".into(),
        "/artifacts/fetch" => w.fetch_query.clone(),
        _ => String::new(),
    };
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let doc = &w.doc;
    let body = match (method, template) {
        ("PUT", "/buckets/{bucket}/object") => {
            return Call {
                path,
                body: None,
                raw: Some("new content"),
            };
        }
        ("POST" | "PUT", "/clouds" | "/clouds/{name}") => Some(doc["cloud"][0].clone()),
        ("POST" | "PUT", "/images" | "/images/{name}") => Some(doc["image"][0].clone()),
        ("POST" | "PUT", "/scripts" | "/scripts/{name}") => Some(doc["script"][0].clone()),
        ("POST" | "PUT", "/templates" | "/templates/{name}") => Some(doc["template"][0].clone()),
        ("POST" | "PUT", "/deployments" | "/deployments/{name}") => Some(doc["deployment"].clone()),
        ("POST", "/images/{name}/build") => Some(json!({ "cloud": "sandbox" })),
        ("POST", "/images/{name}/import") => Some(json!({ "cloud": "sandbox", "path": "/nonexistent.tar.zst" })),
        ("POST", "/images/{name}/gc") => Some(json!({ "keep": 5 })),
        ("POST", "/apply") => Some(json!({ "document": doc, "dry_run": true })),
        ("POST", "/credentials") => Some(json!({ "name": format!("cred-{n}"), "value": "v" })),
        ("PUT", "/credentials/{name}") => Some(json!({ "name": "lb-stats", "value": "stats-password-xyz" })),
        ("POST", "/users") => Some(json!({ "name": format!("user-{n}"), "roles": [] })),
        ("PUT", "/users/{name}") => Some(json!({ "name": user, "roles": ["server_login"] })),
        ("POST", "/users/{name}/keys") => Some(json!({ "public_key": common::ed25519_key(100 + n as u8, "new") })),
        ("POST", "/tokens") => Some(json!({ "user": me, "description": "matrix" })),
        ("POST", "/addresses") => Some(json!({ "name": format!("ip-{n}x"), "cloud": "sandbox", "pool": "public" })),
        ("POST", "/addresses/{name}/associate") => Some(json!({ "server": "example/app-1" })),
        ("POST", "/servers") => Some(json!({ "name": format!("m-{n}"), "deployment": "example", "template": "app" })),
        ("POST", "/servers/{key}/rebundle") => Some(json!({ "array": "web" })),
        ("POST", "/servers/{key}/tags") => Some(json!({ "add": ["test:matrix=yes"], "remove": [] })),
        ("POST", "/arrays") => Some(json!({
            "name": format!("arr-{n}"), "deployment": "example", "template": "app", "min": 0, "max": 1, "desired": 0
        })),
        ("POST", "/arrays/{deployment}/{name}/scale") => Some(json!({ "desired": 0 })),
        // A valid body would launch a builder and wait for it: refused by its body instead.
        ("POST", "/arrays/{deployment}/{name}/rebundle") => Some(json!({ "not_a_field": true })),
        ("POST", "/runs") => Some(json!({ "script": "status", "server": "example/agent-a" })),
        ("POST", "/rollouts") => {
            Some(json!({ "script": "status", "selector": "app:role=ops", "deployment": "example" }))
        }
        ("POST", "/deploys") => {
            Some(json!({ "archive": "apps/web/site.txt", "selector": "lb:pool=www", "deployment": "example" }))
        }
        ("POST", "/buckets") => Some(json!({ "name": format!("bucket-{n}") })),
        ("POST", "/buckets/{bucket}/url") => Some(json!({ "key": "web/site.txt" })),
        ("POST", "/agent/enroll") => Some(json!({
            // The real one-time token of a server whose agent enrolled: refused as used (409)
            // whoever sends it, since the token, not the caller, is the permission.
            "server_id": w.agent_a.id,
            "enrolment_token": w.enrol_token,
        })),
        ("POST" | "PUT", _) => Some(json!({})),
        _ => None,
    };
    Call { path, body, raw: None }
}

/// Send a call; the status only (a stream such as `/events` is not read).
async fn send_call(t: &TestServer, method: &str, c: &Call, token: Option<&str>) -> (StatusCode, String) {
    let method: Method = method.parse().expect("method");
    let mut req = t.http.request(method, format!("{}/api/v1{}", t.url, c.path));
    if let Some(tok) = token {
        req = req.bearer_auth(tok);
    }
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    if let Some(raw) = c.raw {
        req = req.body(raw);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        resp.text().await.unwrap_or_default()
    } else {
        String::new()
    };
    (status, text)
}

/// The (method, path) pairs of the OpenAPI document.
async fn openapi_routes(t: &TestServer) -> Vec<(String, String)> {
    let doc = t.get("/openapi.json").await;
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch", "head", "options", "trace"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Reads before writes before deletes, so deleting a resource early leaves the others'
    // calls their resources.
    let rank = |m: &str| match m {
        "GET" => 0,
        "DELETE" => 2,
        _ => 1,
    };
    out.sort_by_key(|(m, p)| (rank(m), p.clone()));
    out
}

fn access_of(method: &str, path: &str) -> Option<Access> {
    API.iter()
        .find(|r| r.method == method && r.path == path)
        .map(|r| r.access)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_as_every_caller_matches_the_access_table() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    let (w, callers) = setup(&t).await;
    let routes = openapi_routes(&t).await;

    // Every route of the document has a row, and every row a route (the OpenAPI document
    // itself is the one API route it does not list).
    let mut missing = vec![];
    for (m, p) in &routes {
        if access_of(m, p).is_none() {
            missing.push(format!("{m} {p}"));
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a row in http/access.rs: {missing:?}"
    );
    for r in API {
        let listed = routes.iter().any(|(m, p)| m == r.method && p == r.path);
        assert!(
            listed || (r.method, r.path) == ("GET", "/openapi.json"),
            "row {} {} names no route of the OpenAPI document",
            r.method,
            r.path
        );
    }
    // No agent route names a server in its path: an agent acts only as the server of its
    // credential. (One that did would need a case where another server's agent is refused.)
    for (_, p) in routes.iter().filter(|(_, p)| p.starts_with("/agent/")) {
        assert!(
            !p.contains('{'),
            "agent route {p} takes a parameter: add its cross-server case"
        );
    }

    let mut wrong = vec![];
    let mut n = 0;
    for (method, path) in &routes {
        let access = access_of(method, path).expect("checked above");
        let self_variant = matches!(access, Access::SelfOr(_));
        for who in &callers {
            for own in [false, true] {
                if own && !(self_variant && matches!(who, Who::User(..))) {
                    continue;
                }
                n += 1;
                let c = call_for(&w, method, path, who, own, n);
                let name = path
                    .starts_with("/users/")
                    .then(|| if own { who_name(who) } else { "target" });
                let expect = admitted(access, who, name);
                let (status, text) = send_call(&t, method, &c, who.token()).await;
                let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
                let ok = if expect {
                    !refused
                } else if who.token().is_none() {
                    status == StatusCode::UNAUTHORIZED
                } else {
                    refused
                };
                if !ok {
                    wrong.push(format!(
                        "{method} {} as {}: {status} {text} (table: {access:?}, expected {})",
                        c.path,
                        who.label(),
                        if expect { "admitted" } else { "refused" }
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {n} outcomes disagree with the table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn who_name(who: &Who) -> &'static str {
    match who {
        Who::User(n, ..) => n,
        _ => "target",
    }
}

/// The routes the OpenAPI document does not list: the dashboard's files (public), the OpenAPI
/// document itself, the agent's WebSocket with the wrong credentials, and a path no row names.
#[tokio::test]
async fn routes_outside_the_document_are_in_the_table_too() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for r in OUTSIDE {
        assert_eq!(r.access, Access::Public, "{} {}", r.method, r.path);
        let resp = no_redirects
            .get(format!("{}{}", t.url, r.path))
            .send()
            .await
            .expect("get");
        assert!(
            resp.status().is_success() || resp.status().is_redirection(),
            "{} {}: {}",
            r.method,
            r.path,
            resp.status()
        );
    }
    let (s, _) = t.call_as(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    // A method no row has on a known path is refused before any handler.
    let (s, _) = t.call(Method::PATCH, "/servers/example%2Fx", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

/// The agent's WebSocket: only an agent credential opens it, and an agent acts only as its
/// own server (a hello naming another server is refused, `/agent/self` is always its own).
#[tokio::test]
async fn the_agent_connection_takes_only_its_own_servers_agent() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let a = enrol(&t, "agent-a", "app").await;
    let b = enrol(&t, "agent-b", "app").await;
    let observer = t.user_token("olga", &["observer"]).await;

    // User tokens (even the admin's) and no token cannot open an agent connection.
    let url = format!("{}/api/v1/agent/connect", t.url.replacen("http", "ws", 1));
    for token in [None, Some(t.token.as_str()), Some(observer.as_str())] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.clone().into_client_request().expect("request");
        if let Some(tok) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {tok}").parse().expect("header"));
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
            }
            other => panic!("a non-agent credential opened the agent connection: {other:?}"),
        }
    }

    // B's credential naming A's server in its hello is refused.
    let mut ws = connect(&t, &b.token).await;
    send(&mut ws, hello(&a.id, "boot-1", vec![])).await;
    match recv_work(&mut ws).await {
        ControlMessage::Refused(r) => assert!(r.message.contains("belongs to server"), "{r:?}"),
        other => panic!("another server's agent was answered: {other:?}"),
    }
    // Each agent sees itself only.
    for e in [&a, &b] {
        let (s, v) = t.call_as(Some(&e.token), Method::GET, "/agent/self", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["server"]["id"], e.id.as_str());
    }
}

/// Finer rules the app layer keeps for `User` rows: a token of another user is not the caller's
/// to revoke or mint, unless the caller is an admin.
#[tokio::test]
async fn own_tokens_only_unless_admin() {
    let t = TestServer::start().await;
    let lou = t.user_token("lou", &["server_login"]).await;
    let opal = t.user_token("opal", &["operator"]).await;
    let tokens = t.get("/users/opal/tokens").await;
    let opal_token = tokens[0]["id"].as_str().expect("id").to_string();
    let (s, _) = t
        .call_as(Some(&lou), Method::DELETE, &format!("/tokens/{opal_token}"), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .call_as(
            Some(&lou),
            Method::POST,
            "/tokens",
            Some(json!({ "user": "opal", "description": "stolen" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Still works: nothing was revoked.
    let (s, _) = t.call_as(Some(&opal), Method::GET, "/servers", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Deny by default: a route that has no row is refused before its handler, whoever calls.
#[tokio::test]
async fn a_route_without_a_row_is_refused() {
    use tower::ServiceExt;
    let t = TestServer::start().await;
    let app = t.running.as_ref().expect("running").app.clone();
    let router: axum::Router = axum::Router::new()
        .route("/api/v1/unlisted", axum::routing::get(|| async { "reached" }))
        .route("/api/v1/servers", axum::routing::get(|| async { "reached" }))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            stratus_server::http::access::guard,
        ))
        .with_state(app);
    for (path, token, want) in [
        ("/api/v1/unlisted", Some(t.token.as_str()), StatusCode::FORBIDDEN),
        ("/api/v1/unlisted", None, StatusCode::FORBIDDEN),
        // A listed route behind the same guard: the admin gets through, nobody does not.
        ("/api/v1/servers", Some(t.token.as_str()), StatusCode::OK),
        ("/api/v1/servers", None, StatusCode::UNAUTHORIZED),
    ] {
        let mut req = axum::http::Request::get(path);
        if let Some(tok) = token {
            req = req.header("authorization", format!("Bearer {tok}"));
        }
        let resp = router
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(resp.status(), want, "{path} with token: {}", token.is_some());
    }
}
