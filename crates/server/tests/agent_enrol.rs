//! Agent enrolment on the fake cloud with its simulated agent off: the test plays the agent,
//! reading the user-data the orchestrator wrote for the instance.

mod common;

use common::{TestServer, assert_error, server_path};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn booting_server(t: &TestServer, name: &str) -> (String, Value) {
    common::agent::booting(t, name, "app").await
}

async fn agent_call(
    t: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    t.call_as(token, method, path, body).await
}

#[tokio::test]
async fn an_agent_enrols_once_and_acts_only_as_its_server() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (id, ud) = booting_server(&t, "app-9").await;
    assert_eq!(ud["server_id"], id.as_str());
    assert!(ud["stratus_url"].as_str().is_some_and(|u| u.starts_with("http://")));
    let token = ud["enrolment_token"].as_str().expect("token").to_string();
    assert!(token.starts_with("stratus_enrol_"));

    // Bad tokens: all the same answer, and nothing changes.
    for bad in [
        String::new(),
        "stratus_enrol_nope".into(),
        "x".repeat(10_000),
        token.to_uppercase(),
    ] {
        let (s, v) = agent_call(
            &t,
            None,
            Method::POST,
            "/agent/enroll",
            Some(json!({ "server_id": id, "enrolment_token": bad })),
        )
        .await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    let (s, v) = agent_call(
        &t,
        None,
        Method::POST,
        "/agent/enroll",
        Some(json!({ "server_id": id, "enrolment_token": token, "extra": 1 })),
    )
    .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");

    // Another server's token does not work for this one.
    let (other, other_ud) = booting_server(&t, "app-10").await;
    let (s, v) = agent_call(
        &t,
        None,
        Method::POST,
        "/agent/enroll",
        Some(json!({ "server_id": id, "enrolment_token": other_ud["enrolment_token"] })),
    )
    .await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");

    // The right one, once.
    let body = json!({ "server_id": id, "enrolment_token": token });
    let (s, v) = agent_call(&t, None, Method::POST, "/agent/enroll", Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let agent_token = v["agent_token"].as_str().expect("agent token").to_string();
    assert!(agent_token.starts_with("stratus_agent_"));
    let (s, v) = agent_call(&t, None, Method::POST, "/agent/enroll", Some(body)).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");

    // The credential is the agent's own server, and only on agent routes.
    let (s, v) = agent_call(&t, Some(&agent_token), Method::GET, "/agent/self", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["server"]["id"], id.as_str());
    let (s, v) = agent_call(&t, Some(&agent_token), Method::GET, "/servers", None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, v) = agent_call(&t, Some(&t.token), Method::GET, "/agent/self", None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, v) = agent_call(&t, None, Method::GET, "/agent/self", None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(
        t.audit("action=agent.enrol")
            .await
            .iter()
            .any(|e| e["target"] == "server/example/app-9")
    );

    // A terminated server's agent is nobody; the other server's token cannot enrol either.
    assert_eq!(t.delete(&server_path(&id)).await.0, StatusCode::ACCEPTED);
    t.wait_state(&id, "terminated").await;
    let (s, v) = agent_call(&t, Some(&agent_token), Method::GET, "/agent/self", None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(t.delete(&server_path(&other)).await.0, StatusCode::ACCEPTED);
    t.wait_state(&other, "terminated").await;
    let (s, v) = agent_call(
        &t,
        None,
        Method::POST,
        "/agent/enroll",
        Some(json!({ "server_id": other, "enrolment_token": other_ud["enrolment_token"] })),
    )
    .await;
    assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
}

#[tokio::test]
async fn user_data_holds_no_secret_but_the_enrolment_token() {
    let t = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&t, "stats-password").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (_, ud) = booting_server(&t, "app-11").await;
    let keys: Vec<&str> = ud.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["enrolment_token", "server_id", "stratus_url"]);
    // A retried launch writes the same user-data: the token is derived, not random.
    let app = &t.running.as_ref().expect("running").app;
    assert_eq!(
        app.keys.enrolment_token(ud["server_id"].as_str().expect("id")),
        ud["enrolment_token"].as_str().expect("token")
    );
}

/// `stratus serve --agent-ca`: the CA goes into every instance's user-data (for an HTTPS public
/// URL signed by a private CA); without it, the user-data has no `ca_pem`.
#[tokio::test]
async fn an_agent_ca_travels_in_the_user_data() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let t = TestServer::start_with(|c| {
        c.simulate_agents = false;
        c.agent_ca_pem = Some(pem.into());
    })
    .await;
    common::example_credential(&t, "stats-password-xyz").await;
    let (s, plan) = t.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (_, ud) = common::agent::booting(&t, "app-9", "app").await;
    assert_eq!(ud["ca_pem"], pem, "{ud}");
    let plain = TestServer::start_with(|c| c.simulate_agents = false).await;
    common::example_credential(&plain, "stats-password-xyz").await;
    let (s, plan) = plain.apply_toml(common::EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let (_, ud) = common::agent::booting(&plain, "app-9", "app").await;
    assert!(ud.get("ca_pem").is_none(), "{ud}");
}
