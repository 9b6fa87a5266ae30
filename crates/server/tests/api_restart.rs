//! A restart of the control plane loses nothing: every resource keeps its id and state, tokens
//! keep working, credentials can still be decrypted, the audit log is kept, and work that was
//! asked for before the restart is finished after it.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const STATS_PASSWORD: &str = "restart-stats-password";

/// A control plane with a bit of everything: the example deployment, a user with a key and a
/// token, an address on a server, an array, a terminated server, tags, a second template version.
async fn busy() -> (TestServer, String) {
    let t = TestServer::start().await;
    example_credential(&t, STATS_PASSWORD).await;
    t.example().await;
    let token = t.user_token("otto", &["operator"]).await;
    let (s, v) = t
        .post(
            "/users/otto/keys",
            json!({ "public_key": ed25519_key(3, "otto@laptop") }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t.post("/addresses", json!({ "name": "vip", "cloud": "sandbox" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post("/addresses/vip/associate", json!({ "server": "example/app-1" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .post(
            &format!("{}/tags", server_path("example/app-2")),
            json!({ "add": ["maint:drain=true"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "web", "deployment": "example", "template": "app", "max": 4, "desired": 2 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call_as(
            Some(&token),
            Method::POST,
            "/servers",
            Some(json!({ "name": "app-3", "deployment": "example", "template": "app" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    t.wait_state(&id, "operational").await;
    assert_eq!(t.delete(&server_path(&id)).await.0, StatusCode::ACCEPTED);
    t.wait_state(&id, "terminated").await;
    let (s, v) = t
        .apply_toml(
            &EXAMPLE.replace("apt-get install -y nginx", "apt-get install -y nginx-full"),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    settled(&t, 2).await;
    (t, token)
}

/// Wait until the array has `n` operational members and nothing else is on its way anywhere.
async fn settled(t: &TestServer, n: usize) {
    t.wait_for("the deployment to settle", async |t: &TestServer| {
        let all = t.list_all("/servers?all=true").await;
        let members = all
            .iter()
            .filter(|s| s["array"] == "web" && s["state"] == "operational")
            .count();
        let moving = all
            .iter()
            .any(|s| !matches!(s["state"].as_str(), Some("operational" | "terminated")));
        (members == n && !moving).then_some(())
    })
    .await;
}

/// Everything a user can read, including what the snapshot leaves out: runs, template
/// versions, and tokens.
async fn everything(t: &TestServer) -> Value {
    let mut all = t.snapshot().await;
    let extra = all.as_object_mut().unwrap();
    extra.insert("/runs".into(), Value::Array(t.list_all("/runs").await));
    for name in ["app", "lb"] {
        extra.insert(
            format!("/templates/{name}/versions"),
            t.get(&format!("/templates/{name}/versions")).await,
        );
    }
    for user in ["admin", "otto"] {
        extra.insert(
            format!("/users/{user}/tokens"),
            t.get(&format!("/users/{user}/tokens")).await,
        );
    }
    all
}

#[tokio::test]
async fn a_restart_loses_nothing() {
    let (mut t, token) = busy().await;
    let before = everything(&t).await;
    let old_url = t.url.clone();
    let admin_token_file = std::fs::read_to_string(t.dir.path().join("admin.token")).expect("admin token file");

    t.restart().await;
    assert_ne!(t.url, old_url, "a new listener");
    assert!(!t.running.as_ref().unwrap().created_admin, "no second first-start");
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("admin.token")).unwrap(),
        admin_token_file
    );
    let after = everything(&t).await;
    assert_eq!(
        after, before,
        "same resources, ids, states and audit log after the restart"
    );

    // Spot checks of what a user relies on.
    let app1 = t.get(&server_path("example/app-1")).await;
    assert_eq!(
        (&app1["state"], &app1["public_ip"]),
        (&json!("operational"), &t.get("/addresses/vip").await["ip"])
    );
    assert_eq!(t.get("/templates/app").await["version"], 2);
    assert_eq!(t.names("/servers?state=terminated").await, ["app-3"]);
    let (s, v) = t.call_as(Some(&token), Method::GET, "/whoami", None).await;
    assert_eq!(s, StatusCode::OK, "the operator's token still works: {v}");
    assert_eq!(v["user"]["ssh_keys"].as_array().unwrap().len(), 1);
    assert_eq!(t.names("/credentials").await, ["lb-stats"]);
    let app = &t.running.as_ref().unwrap().app;
    let value = stratus_server::app::credentials::reveal(app, "lb-stats")
        .await
        .expect("the credential still decrypts");
    assert_eq!(value.expose(), STATS_PASSWORD);

    // A second restart is no different.
    t.restart().await;
    assert_eq!(everything(&t).await, before);
}

#[tokio::test]
async fn the_restarted_control_plane_carries_on() {
    let (mut t, token) = busy().await;
    let audit_before = t.audit("").await;
    t.restart().await;

    let (s, v) = t
        .call_as(
            Some(&token),
            Method::POST,
            "/servers",
            Some(json!({ "name": "app-4", "deployment": "example", "template": "app" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fresh = t.wait_state("example/app-4", "operational").await;
    assert_eq!(
        fresh["template_version"], 2,
        "launches from the current template version"
    );

    // A server launched before the restart terminates after it, and lets go of its address.
    let id = t.get(&server_path("example/app-1")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.delete(&server_path("example/app-1")).await.0, StatusCode::ACCEPTED);
    t.wait_state(&id, "terminated").await;
    assert!(t.get("/addresses/vip").await.get("server").is_none());

    let (s, v) = t.post("/arrays/example/web/scale", json!({ "desired": 3 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    settled(&t, 3).await;

    let audit_after = t.audit("").await;
    assert!(audit_after.len() > audit_before.len());
    assert_eq!(
        &audit_after[audit_after.len() - audit_before.len()..],
        &audit_before[..],
        "old entries kept, new ones added on top"
    );
    let launches = t.audit("action=server.launch&actor=otto").await;
    let targets: Vec<&str> = launches.iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert_eq!(
        targets,
        ["server/example/app-4", "server/example/app-3"],
        "before and after the restart"
    );
}

#[tokio::test]
async fn a_termination_asked_for_just_before_a_restart_completes_after_it() {
    let (mut t, _) = busy().await;
    let id = t.get(&server_path("example/app-2")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t.delete(&server_path("example/app-2")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    t.restart().await;
    let gone = t.wait_state(&id, "terminated").await;
    assert_eq!(gone["name"], "app-2");
    assert_eq!(
        t.names("/servers?deployment=example&tag=maint:drain").await,
        Vec::<String>::new()
    );
}
