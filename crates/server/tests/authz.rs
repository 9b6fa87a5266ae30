//! The authorization items of issue 17's finding 9: what a user without an API role sees of the
//! fleet, who the audit log says did what an agent reports, what a signed fetch URL is bound to,
//! and what enrols an agent where the cloud signs no identity.

mod common;

use common::TestServer;
use common::agent::{booting, connect, enrol, handshake, send};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stratus_agent_proto::{AccessKind, AgentMessage, EnvValue};

async fn start() -> TestServer {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    t
}

fn servers_of(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| a["server"].as_str().expect("server").to_string())
        .collect();
    v.sort();
    v
}

/// A user without an API role sees only the servers they may log in to, and only their own
/// list; an observer sees every live server in anyone's.
#[tokio::test]
async fn a_login_only_user_sees_only_the_servers_they_may_log_in_to() {
    let t = TestServer::start().await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let other = common::EXAMPLE
        .replace("name = \"example\"", "name = \"other\"")
        .replace("name = \"lb-1\"", "name = \"secret-lb\"");
    let (s, plan) = t.apply_toml(&other, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let lou = t.user_token("lou", &["server_login:example"]).await;
    let olga = t.user_token("olga", &["observer"]).await;
    t.user_token("sam", &["server_superuser"]).await;

    let (s, v) = t.call_as(Some(&lou), Method::GET, "/users/lou/access", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let seen = servers_of(&v);
    assert_eq!(seen, ["example/app-1", "example/app-2", "example/lb-1"], "{v}");
    assert!(
        !v.to_string().contains("other/"),
        "another deployment's servers leaked: {v}"
    );
    // Not another user's list, whatever it holds.
    for name in ["sam", "olga", "admin"] {
        let (s, _) = t
            .call_as(Some(&lou), Method::GET, &format!("/users/{name}/access"), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{name}");
    }
    // An observer sees every live server, in its own list and in lou's.
    let (s, v) = t.call_as(Some(&olga), Method::GET, "/users/lou/access", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(servers_of(&v).len(), 6, "{v}");
    let (s, v) = t.call_as(Some(&olga), Method::GET, "/users/olga/access", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(servers_of(&v).len(), 6, "{v}");
}

/// An agent reporting a login or sudo names an account: the audit entry's actor is the agent
/// (from its credential), never the user the frame names, whoever that is.
#[tokio::test]
async fn an_agent_cannot_write_audit_entries_as_a_user() {
    let t = start().await;
    let e = enrol(&t, "app-9", "app").await;
    let mut ws = connect(&t, &e.token).await;
    handshake(&mut ws, &e.id).await;
    for (user, kind) in [
        ("admin", AccessKind::Login),
        ("admin", AccessKind::Sudo),
        ("system", AccessKind::Login),
        ("nobody-known", AccessKind::Sudo),
        ("root", AccessKind::Login),
    ] {
        send(
            &mut ws,
            AgentMessage::Access {
                user: user.into(),
                kind,
                from: Some("203.0.113.9".into()),
                at: chrono::Utc::now(),
            },
        )
        .await;
    }
    let entries = t
        .wait_for("five access entries", async |t| {
            let e = t.audit("action=server.").await;
            let access: Vec<Value> = e
                .into_iter()
                .filter(|x| matches!(x["action"].as_str(), Some("server.login" | "server.sudo")))
                .collect();
            (access.len() == 5).then_some(access)
        })
        .await;
    for entry in &entries {
        assert_eq!(entry["actor"], "agent:example/app-9", "{entry}");
        assert_eq!(entry["target"], "server/example/app-9", "{entry}");
    }
    let users: Vec<&str> = entries.iter().map(|e| e["detail"]["user"].as_str().unwrap()).collect();
    assert!(users.contains(&"admin") && users.contains(&"nobody-known"), "{users:?}");
    let known: Vec<bool> = entries
        .iter()
        .filter(|e| e["detail"]["user"] == "nobody-known")
        .map(|e| e["detail"]["known_user"].as_bool().unwrap())
        .collect();
    assert_eq!(known, [false]);
    // Nothing in the log names admin as the actor of anything the agent said.
    for action in ["server.login", "server.sudo"] {
        let by_admin = t.audit(&format!("actor=admin&action={action}")).await;
        assert!(by_admin.is_empty(), "{by_admin:?}");
    }
}

async fn upload(t: &TestServer, bucket: &str, key: &str, body: &'static str) {
    let (s, v) = t.post("/buckets", json!({ "name": bucket })).await;
    assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{v}");
    let resp = t
        .http
        .put(format!("{}/api/v1/buckets/{bucket}/object?key={key}", t.url))
        .bearer_auth(&t.token)
        .body(body)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn mint(t: &TestServer, token: &str, body: Value) -> (StatusCode, Value) {
    t.call_as(Some(token), Method::POST, "/buckets/apps/url", Some(body))
        .await
}

async fn fetch(t: &TestServer, url: &str) -> StatusCode {
    let url = if url.starts_with('/') {
        format!("{}{url}", t.url)
    } else {
        url.to_string()
    };
    t.http.get(url).send().await.expect("fetch").status()
}

/// Fetch URLs: operators mint them (observers and login users do not), for at most an hour,
/// and a URL stops working when the token that minted it is revoked or expires, or its user
/// loses the operator role.
#[tokio::test]
async fn fetch_urls_are_minted_by_operators_and_die_with_their_token() {
    let t = TestServer::start().await;
    upload(&t, "apps", "site.txt", "site").await;
    let olga = t.user_token("olga", &["observer"]).await;
    let lou = t.user_token("lou", &["server_login"]).await;
    for token in [&olga, &lou] {
        let (s, v) = mint(&t, token, json!({ "key": "site.txt" })).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
    let opal = t.user_token("opal", &["operator"]).await;
    // The longest life is an hour; the default a quarter of one.
    for ttl in [3601, 7 * 24 * 3600, 0] {
        let (s, v) = mint(&t, &opal, json!({ "key": "site.txt", "ttl_secs": ttl })).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "ttl {ttl}: {v}");
    }
    let (s, v) = mint(&t, &opal, json!({ "key": "site.txt" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let expires = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        expires <= chrono::Utc::now() + chrono::Duration::seconds(900 + 60),
        "{v}"
    );
    let first = v["url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&t, &first).await, StatusCode::OK);

    // The URL names its minter under the signature: moving it to another token breaks it.
    let tokens = t.get("/users/admin/tokens").await;
    let admin_token_id = tokens[0]["id"].as_str().unwrap();
    let by = first
        .split("by=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let moved = first.replace(&by, &format!("t.{admin_token_id}"));
    assert_eq!(fetch(&t, &moved).await, StatusCode::FORBIDDEN);
    let unbound = first.replace(&format!("by={by}&"), "");
    assert!(matches!(
        fetch(&t, &unbound).await,
        StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN
    ));

    // Its user loses the operator role: the URL stops; given back, it works again.
    let (s, v) = t
        .put("/users/opal", json!({ "name": "opal", "roles": ["observer"] }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(fetch(&t, &first).await, StatusCode::FORBIDDEN);
    let (s, v) = t
        .put("/users/opal", json!({ "name": "opal", "roles": ["operator"] }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(fetch(&t, &first).await, StatusCode::OK);

    // The minting token is revoked: its URLs stop working, another token's go on.
    let (s, v) = t
        .call_as(
            Some(&opal),
            Method::POST,
            "/tokens",
            Some(json!({ "user": "opal", "description": "second" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let second_token = v["token"].as_str().unwrap().to_string();
    let (_, v) = mint(&t, &second_token, json!({ "key": "site.txt" })).await;
    let second = v["url"].as_str().unwrap().to_string();
    let tokens = t.get("/users/opal/tokens").await;
    let first_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["description"] == "test")
        .expect("opal's first token")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = t.delete(&format!("/tokens/{first_id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(fetch(&t, &first).await, StatusCode::FORBIDDEN);
    assert_eq!(fetch(&t, &second).await, StatusCode::OK);
}

/// A token that expires takes its URLs with it.
#[tokio::test]
async fn an_expired_tokens_urls_stop_working() {
    let t = TestServer::start().await;
    upload(&t, "apps", "site.txt", "site").await;
    let opal = t.user_token("opal", &["operator"]).await;
    let (_, v) = mint(&t, &opal, json!({ "key": "site.txt" })).await;
    let url = v["url"].as_str().unwrap().to_string();
    assert_eq!(fetch(&t, &url).await, StatusCode::OK);
    // Expire the token in the store (as time would).
    let app = &t.running.as_ref().unwrap().app;
    let tokens = t.get("/users/opal/tokens").await;
    let id = tokens[0]["id"].as_str().unwrap();
    let mut rec = stratus_store::TypedStore::get_as::<stratus_server::app::users::TokenRecord>(&*app.store, id)
        .await
        .unwrap()
        .unwrap();
    rec.info.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    app.store
        .commit(vec![stratus_store::Change::update(&mut rec, chrono::Utc::now())])
        .await
        .unwrap();
    assert_eq!(fetch(&t, &url).await, StatusCode::FORBIDDEN);
}

/// The URLs in an agent's runs are bound to that server's agent: they work while it is
/// enrolled and its server lives, and stop when the server is terminated.
#[tokio::test]
async fn an_agents_urls_die_with_its_server() {
    let t = start().await;
    upload(&t, "files", "tool.sh", "echo tool").await;
    let (s, v) = t
        .post(
            "/scripts",
            json!({ "name": "use-tool", "frequency": "per-instance", "body": "sh \"$TOOL\"",
                    "inputs": [{ "name": "TOOL", "kind": "artifact", "default": "artifact:files/tool.sh" }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "tooled", "image": "debian-12", "boot_scripts": ["use-tool"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let e = enrol(&t, "tool-1", "tooled").await;
    let mut ws = connect(&t, &e.token).await;
    let d = handshake(&mut ws, &e.id).await;
    let url = match &d.boot[0].env.iter().find(|v| v.name == "TOOL").expect("TOOL").value {
        EnvValue::Artifact(a) => a.url.clone(),
        other => panic!("not an artifact: {other:?}"),
    };
    assert!(
        url.contains(&format!("by=a.{}", e.id)),
        "bound to the server's agent: {url}"
    );
    assert_eq!(fetch(&t, &url).await, StatusCode::OK);
    drop(ws);
    let (s, v) = t.delete(&common::server_path(&e.id)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    t.wait_state(&e.id, "terminated").await;
    assert_eq!(fetch(&t, &url).await, StatusCode::FORBIDDEN);
}

async fn try_enrol(t: &TestServer, id: &str, ud: &Value, doc: Option<Value>) -> (StatusCode, Value) {
    let mut body = json!({ "server_id": id, "enrolment_token": ud["enrolment_token"] });
    if let Some(d) = doc {
        body["identity_document"] = d.to_string().into();
        body["identity_signature"] = "unsigned".into();
    }
    t.call_as(None, Method::POST, "/agent/enroll", Some(body)).await
}

async fn fake(t: &TestServer) -> std::sync::Arc<dyn stratus_cloud::CloudDriver> {
    let app = &t.running.as_ref().unwrap().app;
    app.drivers
        .for_cloud(&*app.store, &"sandbox".parse().unwrap())
        .await
        .expect("driver")
}

/// Where the cloud signs no identity, the enrolment token alone does not enrol: the instance
/// must be the server's, alive, agree with the identity document sent, and be where the
/// connection comes from.
#[tokio::test]
async fn the_token_alone_does_not_enrol_where_the_cloud_signs_no_identity() {
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        c.agent_source_check = true;
    })
    .await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");

    // The connection comes from loopback, not from the instance's private address: refused.
    let (id, ud) = booting(&t, "app-5", "app").await;
    let server = t.get(&common::server_path(&id)).await;
    let instance = server["instance_id"].as_str().unwrap().to_string();
    let (s, v) = try_enrol(&t, &id, &ud, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // Once the instance has the address the connection comes from, it enrols, but only with
    // an identity document that names it (when one is sent).
    let driver = fake(&t).await;
    driver
        .associate_address(&instance, "127.0.0.1".parse().unwrap())
        .await
        .expect("associate");
    let private_ip = server["private_ip"].as_str().unwrap();
    for doc in [
        json!({ "instanceId": "i-someone-else", "privateIp": private_ip }),
        json!({ "instanceId": instance, "privateIp": "10.99.99.99" }),
        json!({ "not": "a document" }),
    ] {
        let (s, v) = try_enrol(&t, &id, &ud, Some(doc.clone())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{doc}: {v}");
    }
    let doc = json!({ "instanceId": instance, "privateIp": private_ip, "region": "local" });
    let (s, v) = try_enrol(&t, &id, &ud, Some(doc)).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // An instance the cloud no longer runs cannot enrol its server, from wherever.
    let (id, ud) = booting(&t, "app-6", "app").await;
    let server = t.get(&common::server_path(&id)).await;
    let instance = server["instance_id"].as_str().unwrap().to_string();
    driver
        .associate_address(&instance, "127.0.0.1".parse().unwrap())
        .await
        .expect("associate");
    driver.terminate(&instance).await.expect("terminate");
    let (s, v) = try_enrol(&t, &id, &ud, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(t.audit("action=agent.enrol").await.len() == 1, "one agent enrolled");
}

/// Behind a proxy (`--agents-behind-proxy`) the source is not checked, the rest is.
#[tokio::test]
async fn behind_a_proxy_the_instance_is_still_described() {
    let t = start().await;
    let (id, ud) = booting(&t, "app-5", "app").await;
    let server = t.get(&common::server_path(&id)).await;
    let instance = server["instance_id"].as_str().unwrap().to_string();
    let (s, v) = try_enrol(&t, &id, &ud, Some(json!({ "instanceId": "i-other" }))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    fake(&t).await.stop(&instance).await.expect("stop");
    let (s, v) = try_enrol(&t, &id, &ud, Some(json!({ "instanceId": instance }))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a stopped instance: {v}");
    fake(&t).await.start(&instance).await.expect("start");
    let (s, v) = try_enrol(&t, &id, &ud, Some(json!({ "instanceId": instance }))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// A throw-away RSA certificate and key (openssl), standing in for AWS's per-region one.
fn rsa_cert(dir: &std::path::Path, name: &str) -> (String, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (std::fs::read_to_string(&cert).expect("cert"), key)
}

/// The base64 RSA-SHA256 signature of `doc` under `key`, as EC2's metadata service gives it.
fn sign(dir: &std::path::Path, key: &std::path::Path, doc: &str) -> String {
    use base64::Engine;
    let doc_file = dir.join("doc.json");
    std::fs::write(&doc_file, doc).expect("doc");
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&doc_file)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

/// With identity certificates configured, the document must be signed by one of them: an
/// unsigned, tampered or foreign-signed document does not enrol; the signed one does.
#[tokio::test]
async fn configured_identity_certificates_must_sign_the_document() {
    let keys = tempfile::tempdir().expect("tmp");
    let (aws_pem, aws_key) = rsa_cert(keys.path(), "aws");
    let (_, other_key) = rsa_cert(keys.path(), "other");
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        c.identity_certificates = vec![aws_pem.clone()];
    })
    .await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (id, ud) = booting(&t, "app-5", "app").await;
    let server = t.get(&common::server_path(&id)).await;
    let doc = json!({ "instanceId": server["instance_id"], "privateIp": server["private_ip"] }).to_string();
    let enrol_with = |doc: String, sig: Option<String>| {
        let mut body = json!({ "server_id": id, "enrolment_token": ud["enrolment_token"], "identity_document": doc });
        if let Some(s) = sig {
            body["identity_signature"] = s.into();
        }
        t.call_as(None, Method::POST, "/agent/enroll", Some(body))
    };
    let (s, v) = enrol_with(doc.clone(), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "unsigned: {v}");
    let (s, v) = enrol_with(doc.clone(), Some(sign(keys.path(), &other_key, &doc))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "another key: {v}");
    let good = sign(keys.path(), &aws_key, &doc);
    let tampered = doc.replace('}', ",\"extra\":1}");
    let (s, v) = enrol_with(tampered, Some(good.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "tampered: {v}");
    let (s, v) = enrol_with(doc.clone(), Some("not base64!".into())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "garbage: {v}");
    let (s, v) = enrol_with(doc, Some(good)).await;
    assert_eq!(s, StatusCode::OK, "signed by the configured certificate: {v}");
}

/// A certificate that is not one stops the start with a clear error.
#[tokio::test]
async fn a_bad_identity_certificate_stops_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = common::config(dir.path());
    c.identity_certificates = vec!["not a certificate".into()];
    let e = stratus_server::start(c).await.expect_err("refused");
    assert!(e.to_string().contains("identity certificate 1"), "{e}");
}
