//! Every resource through the HTTP API, as a user drives it: create, read, update, list with
//! paging, delete (and refusals while in use); servers through their lifecycle on the fake
//! cloud; arrays, runs, users, tokens and roles, addresses, the audit log, and the open routes.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One catalog kind: its collection path, a create body, and an update of it.
struct Catalog {
    path: &'static str,
    create: Value,
    update: Value,
}

fn catalog() -> Vec<Catalog> {
    let sizes = json!([{ "name": "small", "cpus": 1, "memory": "512MiB" }]);
    vec![
        Catalog {
            path: "/clouds",
            create: json!({ "name": "lab", "driver": "fake", "regions": [{ "name": "r1" }], "sizes": sizes }),
            update: json!({ "name": "lab", "driver": "fake", "description": "updated", "regions": [{ "name": "r1" }], "sizes": sizes }),
        },
        Catalog {
            path: "/images",
            create: json!({ "name": "base", "clouds": { "lab": { "native_id": "base-1" } } }),
            update: json!({ "name": "base", "description": "updated", "clouds": { "lab": { "native_id": "base-1" } } }),
        },
        Catalog {
            path: "/scripts",
            create: json!({ "name": "hello", "body": "echo hello", "frequency": "per-instance" }),
            update: json!({ "name": "hello", "description": "updated", "body": "echo hello", "frequency": "per-instance" }),
        },
        Catalog {
            path: "/templates",
            create: json!({ "name": "web", "image": "base", "size": "small", "boot_scripts": ["hello"] }),
            update: json!({ "name": "web", "description": "updated", "image": "base", "size": "small", "boot_scripts": ["hello"] }),
        },
        Catalog {
            path: "/deployments",
            create: json!({ "name": "staging", "cloud": "lab" }),
            update: json!({ "name": "staging", "description": "updated", "cloud": "lab" }),
        },
    ]
}

#[tokio::test]
async fn catalog_resources_are_created_read_updated_listed_and_deleted() {
    let t = TestServer::start().await;
    let mut ids = vec![];
    for c in catalog() {
        let name = c.create["name"].as_str().unwrap();
        let one = format!("{}/{name}", c.path);
        let (s, created) = t.post(c.path, c.create.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "POST {}: {created}", c.path);
        assert_eq!(created["name"], name);
        assert!(created["id"].is_string(), "{created}");
        assert_eq!(t.get(&one).await, created, "GET shows what POST returned");

        let (s, updated) = t.put(&one, c.update.clone()).await;
        assert_eq!(s, StatusCode::OK, "PUT {one}: {updated}");
        assert_eq!(updated["id"], created["id"], "an update keeps the id");
        assert_eq!(updated["description"], "updated");
        assert_eq!(t.get(&one).await["description"], "updated");

        assert_eq!(t.names(c.path).await, vec![name.to_string()], "{} lists it", c.path);
        ids.push((one, created["id"].clone()));
    }
    // Delete in reverse order of dependency: each is free once its users are gone.
    for (one, _) in ids.iter().rev() {
        let (s, v) = t.delete(one).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "DELETE {one}: {v}");
        let (s, v) = t.call(Method::GET, one, None).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    for c in catalog() {
        assert!(t.names(c.path).await.is_empty(), "{} is empty again", c.path);
    }
}

#[tokio::test]
async fn updating_a_template_through_put_makes_a_new_version() {
    let t = TestServer::start().await;
    for c in catalog().into_iter().take(3) {
        assert_eq!(t.post(c.path, c.create).await.0, StatusCode::CREATED);
    }
    let (_, v1) = t.post("/templates", catalog()[3].create.clone()).await;
    let (s, v2) = t
        .put(
            "/templates/web",
            json!({ "name": "web", "image": "base", "size": "small", "default_tags": ["role:web=yes"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v2}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v2["version"], 2);
    assert_ne!(v1["content_hash"], v2["content_hash"]);
    let versions = t.get("/templates/web/versions").await;
    let listed: Vec<&Value> = versions.as_array().unwrap().iter().map(|v| &v["version"]).collect();
    assert_eq!(listed, [&json!(1), &json!(2)]);
}

#[tokio::test]
async fn lists_page_with_limit_and_after() {
    let t = TestServer::start().await;
    let mut made = vec![];
    for i in 0..5 {
        let name = format!("script-{i}");
        let (s, v) = t.post("/scripts", json!({ "name": name, "body": "true" })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        made.push(name);
    }
    let first = t.get("/scripts?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next"].as_str().expect("a full page has next");
    let second = t.get(&format!("/scripts?limit=2&after={}", enc(next))).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    let next = second["next"].as_str().expect("another full page");
    let third = t.get(&format!("/scripts?limit=2&after={}", enc(next))).await;
    assert_eq!(third["items"].as_array().unwrap().len(), 1);
    assert!(third.get("next").is_none(), "the last page has no next: {third}");

    let paged: Vec<String> = [first, second, third]
        .iter()
        .flat_map(|p| {
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(paged, made, "pages hold every item once, in creation order");
    let whole: Vec<String> = t.get("/scripts").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(whole, made);
}

#[tokio::test]
async fn deleting_what_is_in_use_is_refused_with_conflict() {
    let t = TestServer::start().await;
    t.example().await;
    let refusals = [
        ("/scripts/install-nginx", "app"),
        ("/images/debian-12", "app"),
        ("/clouds/sandbox", "example/lb-1"),
        ("/templates/app", "example/app-1"),
        ("/deployments/example", "app-1"),
    ];
    for (path, user) in refusals {
        let (s, v) = t.delete(path).await;
        assert_error(s, &v, StatusCode::CONFLICT, "conflict");
        assert!(
            error_text(&v).contains(user),
            "{path}: the refusal names what uses it ({user}): {v}"
        );
        assert_eq!(
            t.call(Method::GET, path, None).await.0,
            StatusCode::OK,
            "{path} is still there"
        );
    }
    // Once nothing uses it, it goes.
    let (s, v) = t.post("/scripts", json!({ "name": "unused", "body": "true" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(t.delete("/scripts/unused").await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_launched_server_becomes_operational_and_terminates() {
    let t = TestServer::start().await;
    t.example().await;
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "app-3", "deployment": "example", "template": "app", "tags": ["team:owner=web"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"], "pending");
    let id = v["id"].as_str().unwrap().to_string();

    let up = t.wait_state("example/app-3", "operational").await;
    assert_eq!(up["id"], id.as_str());
    assert!(up["instance_id"].is_string() && up["private_ip"].is_string(), "{up}");
    assert_eq!(up["size"], "small", "the image's default size");
    let tags: Vec<&str> = up["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"lb:pool=www") && tags.contains(&"team:owner=web"),
        "template and own tags: {tags:?}"
    );

    let (s, v) = t.delete(&server_path("example/app-3")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let gone = t.wait_state(&id, "terminated").await;
    assert!(gone["terminated_at"].is_string(), "{gone}");

    // By name, a terminated server is still found (the newest one of that name) until a new
    // live server takes the name.
    let by_name = t.get(&server_path("example/app-3")).await;
    assert_eq!(
        (by_name["id"].as_str(), by_name["state"].as_str()),
        (Some(id.as_str()), Some("terminated"))
    );
    assert!(
        !t.names("/servers").await.contains(&"app-3".to_string()),
        "live lists leave it out"
    );
    assert_eq!(t.names("/servers?state=terminated").await, ["app-3"]);
    assert!(t.names("/servers?all=true").await.contains(&"app-3".to_string()));
    let (s, v) = t.delete(&server_path(&id)).await;
    assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
}

#[tokio::test]
async fn server_tags_change_and_drive_list_filters() {
    let t = TestServer::start().await;
    t.example().await;
    // A second deployment with a server of the same name.
    let (s, v) = t
        .post("/deployments", json!({ "name": "other", "cloud": "sandbox" }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "app-1", "deployment": "other", "template": "app" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    t.wait_state("other/app-1", "operational").await;

    let (s, v) = t
        .post(
            &format!("{}/tags", server_path("example/app-1")),
            json!({ "add": ["maint:drain=true"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["tags"].as_array().unwrap().contains(&json!("maint:drain=true")),
        "{v}"
    );

    let ex = |q: &str| format!("/servers?deployment=example&tag={}", enc(q));
    let mut cases: Vec<(String, Vec<&str>)> = vec![
        (ex("lb:pool=www"), vec!["app-1", "app-2"]),
        (ex("lb:pool=www,!maint:drain"), vec!["app-2"]),
        (ex("!lb:pool"), vec!["lb-1"]),
        (ex("lb:*"), vec!["lb-1", "app-1", "app-2"]),
        (ex("lb:pool=w*"), vec!["app-1", "app-2"]),
        (ex("maint:drain=true"), vec!["app-1"]),
        ("/servers?deployment=other".into(), vec!["app-1"]),
        (
            "/servers?deployment=example&state=operational".into(),
            vec!["lb-1", "app-1", "app-2"],
        ),
        ("/servers?state=pending".into(), vec![]),
        (
            format!("/servers?tag={}", enc("lb:pool=www")),
            vec!["app-1", "app-2", "app-1"],
        ),
    ];
    for (path, want) in cases.drain(..) {
        assert_eq!(t.names(&path).await, want, "{path}");
    }

    let (s, v) = t
        .post(
            &format!("{}/tags", server_path("example/app-1")),
            json!({ "remove": ["maint:drain=true", "lb:pool=www"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(t.names(&ex("maint:drain")).await.is_empty());
    assert_eq!(t.names(&ex("lb:pool=www")).await, ["app-2"]);
    assert_eq!(t.get(&server_path("example/app-1")).await["tags"], json!([]));
}

/// Live members of an array, once there are `n` of them and all are operational.
async fn members_when(t: &TestServer, array: &str, n: usize) -> Vec<Value> {
    t.wait_for(
        &format!("array {array} at {n} operational members"),
        async |t: &TestServer| {
            let live: Vec<Value> = t
                .list_all("/servers?deployment=example")
                .await
                .into_iter()
                .filter(|s| s["array"] == array)
                .collect();
            (live.len() == n && live.iter().all(|s| s["state"] == "operational")).then_some(live)
        },
    )
    .await
}

#[tokio::test]
async fn arrays_scale_up_and_down_to_desired() {
    let t = TestServer::start().await;
    t.example().await;
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "web", "deployment": "example", "template": "app", "max": 5, "desired": 2 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first = members_when(&t, "web", 2).await;

    let (s, v) = t.post("/arrays/example/web/scale", json!({ "desired": 4 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["desired"], 4);
    members_when(&t, "web", 4).await;

    let (s, v) = t.post("/arrays/example/web/scale", json!({ "desired": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let left = members_when(&t, "web", 1).await;
    assert!(
        !first.iter().any(|m| m["id"] == left[0]["id"]),
        "the oldest members go first"
    );
    let gone = t
        .wait_for("three members terminated", async |t: &TestServer| {
            let done: Vec<Value> = t
                .list_all("/servers?state=terminated")
                .await
                .into_iter()
                .filter(|s| s["array"] == "web")
                .collect();
            (done.len() == 3).then_some(done)
        })
        .await;
    assert_eq!(gone.len(), 3);

    let (s, v) = t.post("/arrays/example/web/scale", json!({ "desired": 6 })).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert_eq!(error_fields(&v), ["desired"]);
    let (s, v) = t.delete("/arrays/example/web").await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        t.post("/arrays/example/web/scale", json!({ "desired": 0 })).await.0,
        StatusCode::OK
    );
    members_when(&t, "web", 0).await;
    assert_eq!(t.delete("/arrays/example/web").await.0, StatusCode::NO_CONTENT);
    assert!(t.names("/arrays").await.is_empty());
}

#[tokio::test]
async fn an_array_in_a_deployment_file_is_kept_at_desired() {
    let t = TestServer::start().await;
    t.example().await;
    let file = format!("{EXAMPLE}\n[[array]]\nname = \"workers\"\ntemplate = \"app\"\nmin = 1\nmax = 3\ndesired = 2\n");
    let (s, plan) = t.apply_toml(&file, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert!(
        plan["changes"]
            .as_array()
            .unwrap()
            .contains(&json!({ "kind": "array", "name": "workers", "action": "create" })),
        "{plan}"
    );
    let members = members_when(&t, "workers", 2).await;
    let mut names: Vec<&str> = members.iter().map(|m| m["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["workers-1", "workers-2"]);
    assert_eq!(t.get("/arrays/example/workers").await["desired"], 2);
}

#[tokio::test]
async fn boot_runs_are_recorded_per_server() {
    let t = TestServer::start().await;
    t.example().await;
    let runs = t.list_all(&format!("/runs?server={}", enc("example/app-1"))).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        (&run["script"], &run["phase"], &run["status"], &run["server_name"]),
        (
            &json!("install-nginx"),
            &json!("boot"),
            &json!("succeeded"),
            &json!("app-1")
        )
    );
    assert_eq!(&t.get(&format!("/runs/{}", run["id"].as_str().unwrap())).await, run);

    let lb = t.get(&server_path("example/lb-1")).await;
    let lb_runs = t
        .list_all(&format!("/runs?server={}", lb["id"].as_str().unwrap()))
        .await;
    assert_eq!(lb_runs.len(), 1);
    assert_eq!(lb_runs[0]["script"], "configure-lb");
    assert_eq!(
        lb_runs[0]["inputs"],
        json!({ "STATS_PASSWORD": "cred:lb-stats" }),
        "credential inputs show by name"
    );
    assert_eq!(t.list_all("/runs?status=succeeded").await.len(), 3);
    let (s, v) = t
        .call(Method::GET, &format!("/runs?server={}", enc("example/nope")), None)
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn users_get_roles_and_ssh_keys() {
    let t = TestServer::start().await;
    let (s, alice) = t
        .post(
            "/users",
            json!({ "name": "alice", "email": "alice@example.com", "roles": ["operator"] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{alice}");
    assert_eq!(alice["roles"], json!(["operator"]));
    let (s, v) = t
        .put(
            "/users/alice",
            json!({ "name": "alice", "email": "alice@example.org", "roles": ["observer", "server_login:example"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let shown = t.get("/users/alice").await;
    assert_eq!(
        (&shown["roles"], &shown["email"]),
        (
            &json!(["observer", "server_login:example"]),
            &json!("alice@example.org")
        )
    );
    assert_eq!(t.post("/users", json!({ "name": "bob" })).await.0, StatusCode::CREATED);
    assert_eq!(t.names("/users").await, ["admin", "alice", "bob"]);

    let key = ed25519_key(7, "alice@laptop");
    let (s, v) = t.post("/users/alice/keys", json!({ "public_key": key })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fp = v["ssh_keys"][0]["fingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_string();
    assert!(fp.starts_with("SHA256:"), "{fp}");

    let (s, v) = t.post("/users/bob/keys", json!({ "public_key": key })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(
        error_text(&v).contains("alice"),
        "the refusal says whose key it is: {v}"
    );
    assert_eq!(t.get("/users/bob").await["ssh_keys"], json!([]));
    let (s, v) = t.post("/users/alice/keys", json!({ "public_key": key })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    let (s, v) = t
        .post("/users/bob/keys", json!({ "public_key": ed25519_key(8, "") }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "a different key is fine: {v}");

    let (s, v) = t.delete(&format!("/users/alice/keys/{}", enc(&fp))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(t.get("/users/alice").await["ssh_keys"], json!([]));
    let (s, v) = t.delete(&format!("/users/alice/keys/{}", enc(&fp))).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");

    assert_eq!(t.delete("/users/bob").await.0, StatusCode::NO_CONTENT);
    assert_eq!(t.names("/users").await, ["admin", "alice"]);
    let (s, v) = t
        .put("/users/admin", json!({ "name": "admin", "roles": ["observer"] }))
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        t.get("/users/admin").await["roles"],
        json!(["admin"]),
        "the last admin stays admin"
    );
}

#[tokio::test]
async fn tokens_work_until_revoked() {
    let t = TestServer::start().await;
    let token = t.user_token("carol", &["operator"]).await;
    let (s, v) = t.call_as(Some(&token), Method::GET, "/whoami", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"]["name"], "carol");

    let listed = t.get("/users/carol/tokens").await;
    let id = listed[0]["id"].as_str().expect("a token id").to_string();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&token), "the token itself is never listed");

    assert_eq!(t.delete(&format!("/tokens/{id}")).await.0, StatusCode::NO_CONTENT);
    let (s, v) = t.call_as(Some(&token), Method::GET, "/whoami", None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(t.get("/users/carol/tokens").await, json!([]));
    assert_eq!(
        t.call(Method::GET, "/whoami", None).await.0,
        StatusCode::OK,
        "the admin's token is unaffected"
    );
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do() {
    let t = TestServer::start().await;
    t.example().await;
    let observer = t.user_token("olga", &["observer"]).await;
    let operator = t.user_token("otto", &["operator"]).await;
    let script = json!({ "name": "by-olga", "body": "true" });

    assert_eq!(
        t.call_as(Some(&observer), Method::GET, "/servers", None).await.0,
        StatusCode::OK
    );
    let before = t.snapshot().await;
    for (method, path, body) in [
        (Method::POST, "/scripts", Some(script.clone())),
        (
            Method::POST,
            "/servers",
            Some(json!({ "name": "app-9", "deployment": "example", "template": "app" })),
        ),
        (Method::DELETE, "/servers/example%2Fapp-1", None),
        (
            Method::POST,
            "/apply",
            Some(json!({ "document": { "script": [script.clone()] } })),
        ),
    ] {
        let (s, v) = t.call_as(Some(&observer), method.clone(), path, body).await;
        assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            error_text(&v).contains("operator"),
            "{method} {path}: says which role it needs: {v}"
        );
    }
    let (s, v) = t
        .call_as(
            Some(&operator),
            Method::POST,
            "/credentials",
            Some(json!({ "name": "x", "value": "y" })),
        )
        .await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    let (s, v) = t
        .call_as(
            Some(&operator),
            Method::POST,
            "/users",
            Some(json!({ "name": "mallory", "roles": ["admin"] })),
        )
        .await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    for token in [None, Some("stratus_not-a-real-token"), Some("garbage")] {
        let (s, v) = t.call_as(token, Method::GET, "/servers", None).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
        let (s, v) = t.call_as(token, Method::POST, "/scripts", Some(script.clone())).await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    assert_eq!(t.snapshot().await, before, "refused requests changed nothing");

    let (s, v) = t.call_as(Some(&operator), Method::POST, "/scripts", Some(script)).await;
    assert_eq!(s, StatusCode::CREATED, "an operator may: {v}");
}

#[tokio::test]
async fn addresses_are_allocated_moved_and_released() {
    let t = TestServer::start().await;
    t.example().await;
    let (s, a) = t.post("/addresses", json!({ "name": "vip", "cloud": "sandbox" })).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let ip = a["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("198.51.100."), "from the cloud's pool: {ip}");
    assert_eq!(a["pool"], "public");

    let (s, v) = t
        .post("/addresses/vip/associate", json!({ "server": "example/app-1" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(t.get(&server_path("example/app-1")).await["public_ip"], ip.as_str());

    let (s, v) = t
        .post("/addresses/vip/associate", json!({ "server": "example/app-2" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(t.get(&server_path("example/app-2")).await["public_ip"], ip.as_str());
    assert!(
        t.get(&server_path("example/app-1")).await.get("public_ip").is_none(),
        "moved away from app-1"
    );
    assert_eq!(
        t.get("/addresses/vip").await["server"],
        t.get(&server_path("example/app-2")).await["id"]
    );

    let (s, v) = t.delete("/addresses/vip").await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    let (s, v) = t.post("/addresses/vip/disassociate", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("server").is_none(), "{v}");
    assert!(t.get(&server_path("example/app-2")).await.get("public_ip").is_none());
    let (s, v) = t.post("/addresses/vip/disassociate", json!({})).await;
    assert_error(s, &v, StatusCode::CONFLICT, "bad_state");

    assert_eq!(t.delete("/addresses/vip").await.0, StatusCode::NO_CONTENT);
    assert!(t.names("/addresses").await.is_empty());
}

#[tokio::test]
async fn an_address_pool_runs_out_and_a_terminated_server_lets_go() {
    let t = TestServer::start().await;
    t.example().await;
    // 198.51.100.0/29 has six usable addresses.
    let mut ips = vec![];
    for i in 0..6 {
        let (s, v) = t
            .post("/addresses", json!({ "name": format!("ip-{i}"), "cloud": "sandbox" }))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ips.push(v["ip"].as_str().unwrap().to_string());
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "every address is different");
    let (s, v) = t
        .post("/addresses", json!({ "name": "ip-6", "cloud": "sandbox" }))
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(error_text(&v).contains("full"), "{v}");

    let (s, v) = t
        .post("/addresses/ip-0/associate", json!({ "server": "example/app-2" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = t.get(&server_path("example/app-2")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.delete(&server_path("example/app-2")).await.0, StatusCode::ACCEPTED);
    let gone = t.wait_state(&id, "terminated").await;
    assert!(gone.get("public_ip").is_none(), "{gone}");
    assert!(
        t.get("/addresses/ip-0").await.get("server").is_none(),
        "the address is free again"
    );
    let (s, v) = t.post("/addresses/ip-0/associate", json!({ "server": id })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
}

#[tokio::test]
async fn the_audit_log_shows_who_launched_what() {
    let t = TestServer::start().await;
    t.example().await;
    let operator = t.user_token("otto", &["operator"]).await;
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "app-3", "deployment": "example", "template": "app" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call_as(
            Some(&operator),
            Method::POST,
            "/servers",
            Some(json!({ "name": "app-4", "deployment": "example", "template": "app" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let launches = t.audit("action=server.").await;
    let seen: Vec<(&str, &str, &str)> = launches
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("otto", "server.launch", "server/example/app-4"),
            ("admin", "server.launch", "server/example/app-3")
        ],
        "newest first"
    );
    let by_admin = t.audit("action=server.&actor=admin").await;
    assert_eq!(by_admin.len(), 1);
    assert_eq!(by_admin[0]["detail"]["name"], "app-3");
    let applied = t.audit(&format!("target={}", enc("deployment/example"))).await;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["action"], "deployment.apply");
}

#[tokio::test]
async fn openapi_and_health_need_no_token() {
    let t = TestServer::start().await;
    let (s, doc) = t.call_as(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let paths = doc["paths"].as_object().expect("an OpenAPI document has paths");
    for p in [
        "/servers",
        "/apply",
        "/servers/{key}",
        "/arrays/{deployment}/{name}/scale",
        "/audit",
        "/health",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(
        doc["components"]["securitySchemes"]["bearer"].is_object(),
        "documents the bearer token"
    );

    let (s, health) = t.call_as(None, Method::GET, "/health", None).await;
    assert_eq!(s, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    let (s, v) = t.call_as(None, Method::GET, "/nowhere", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
}
