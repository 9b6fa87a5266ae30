//! Managed SSH through simulated agents: which accounts a server's desired state carries (by
//! role scope, keys and template policy), that a revocation is pushed at once, and the
//! acknowledgement the access view shows.

mod common;

use common::agent::{operational, recv_work, send};
use common::{TestServer, ed25519_key};
use reqwest::StatusCode;
use serde_json::json;
use stratus_agent_proto::{AgentMessage, ControlMessage, DesiredState, Logins};

async fn next_logins(ws: &mut common::agent::Ws, want: impl Fn(&Logins) -> bool) -> DesiredState {
    loop {
        if let ControlMessage::DesiredState(d) = recv_work(ws).await
            && d.logins.as_ref().is_some_and(&want)
        {
            return d;
        }
    }
}

#[tokio::test]
async fn logins_follow_roles_keys_and_the_template_policy() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (s, v) = t
        .put(
            "/templates/app",
            json!({ "name": "app", "image": "debian-12", "boot_scripts": ["install-nginx"],
                    "default_tags": ["lb:pool=www"], "ssh": { "end_sessions": false, "exclusive": true } }),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let (e, mut ws) = operational(&t, "app-6", "app").await;
    for (name, role) in [
        ("alice", "server_login:example"),
        ("bob", "server_superuser:other"),
        ("carol", "server_superuser"),
    ] {
        let (s, v) = t.post("/users", json!({ "name": name, "roles": [role] })).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    // Roles without keys give no account; keys make them.
    for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let (s, v) = t
            .post(
                &format!("/users/{name}/keys"),
                json!({ "public_key": ed25519_key(40 + i as u8, name) }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let d = next_logins(&mut ws, |l| l.accounts.len() == 2).await;
    let l = d.logins.expect("logins");
    assert_eq!((l.end_sessions, l.exclusive), (false, true), "the template's policy");
    let names: Vec<(&str, bool)> = l.accounts.iter().map(|a| (a.name.as_str(), a.sudo)).collect();
    assert_eq!(
        names,
        [("alice", false), ("carol", true)],
        "bob's role is for another deployment"
    );
    assert!(
        l.accounts[0].keys[0].starts_with("ssh-ed25519 "),
        "{:?}",
        l.accounts[0].keys
    );

    // Not applied yet: the access view says so; once the agent answers, acknowledged.
    let access = t.get("/users/alice/access").await;
    let me = access
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == "example/app-6")
        .cloned()
        .unwrap();
    assert_eq!(
        (me["login"].as_bool(), me["acknowledged"].as_bool()),
        (Some(true), Some(false)),
        "{me}"
    );
    send(
        &mut ws,
        AgentMessage::Applied {
            generation: d.generation,
        },
    )
    .await;
    let me = t
        .wait_for("the acknowledgement", async |t| {
            let a = t.get("/users/alice/access").await;
            a.as_array()
                .unwrap()
                .iter()
                .find(|s| s["server"] == "example/app-6" && s["acknowledged"] == true)
                .cloned()
        })
        .await;
    assert!(me["ssh"].as_str().unwrap().starts_with("ssh alice@"), "{me}");

    // A revocation goes out at once.
    let (s, v) = t.put("/users/alice", json!({ "name": "alice", "roles": [] })).await;
    assert!(s.is_success(), "{v}");
    let d = next_logins(&mut ws, |l| l.accounts.iter().all(|a| a.name != "alice")).await;
    assert_eq!(d.logins.unwrap().accounts.len(), 1);
    let _ = e;
}
