//! Messages relayed between replicas through PostgreSQL's `outbox` are sealed: a run frame
//! with a secret input, started on the replica that does not hold the agent's connection,
//! reaches the agent, and the row it passed through (captured by a trigger as it was inserted,
//! before the other replica took it) holds neither the secret nor its base64 or hex forms.
//! Needs PostgreSQL (`scripts/test-postgres.sh` sets STRATUS_TEST_POSTGRES).

mod common;

use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use common::agent::{self, recv_work};
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;
use stratus_agent_proto::{AgentMessage, ControlMessage, ImagePrepared};
use stratus_store::testing::TestDatabase;

const VALUE: &str = "Rl5-relayed-secret-value-0c7d2e";

const CATALOG: &str = r#"
[[cloud]]
name = "sandbox"
driver = "fake"
regions = [{ name = "local", zones = ["a"] }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]

[[image]]
name = "debian-12"
[image.clouds.sandbox]
native_id = "debian-12-base"
default_size = "small"

[[script]]
name = "use-db"
frequency = "on-demand"
body = "echo using the database"
inputs = [{ name = "DB_PASS", kind = "cred" }]

[[template]]
name = "db-app"
image = "debian-12"
operational_scripts = ["use-db"]
inputs = { DB_PASS = "cred:db" }

[deployment]
name = "example"
cloud = "sandbox"
"#;

/// Copy every `outbox` row, as inserted, into `outbox_seen`.
const CAPTURE: &[&str] = &[
    "CREATE TABLE outbox_seen (replica TEXT, server_id TEXT, message TEXT)",
    "CREATE FUNCTION outbox_seen_f() RETURNS trigger AS $$ BEGIN \
       INSERT INTO outbox_seen VALUES (NEW.replica, NEW.server_id, NEW.message); RETURN NEW; \
     END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER outbox_seen_t AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_seen_f()",
];

/// A second replica on the same database and master key.
async fn second_replica(a: &TestServer, store: &str) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("master.key");
    std::fs::copy(a.dir.path().join("master.key"), &key).expect("copy the master key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut c = config(dir.path());
    c.store_url = Some(store.to_string());
    c.simulate_agents = false;
    let running = stratus_server::start(c).await.expect("start the second replica");
    TestServer {
        url: running.url.clone(),
        running: Some(running),
        token: a.token.clone(),
        dir,
        http: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn a_relayed_run_frame_reaches_the_agent_and_its_outbox_row_is_sealed() {
    let db = TestDatabase::create().await;
    let a = TestServer::start_with(|c| {
        c.store_url = Some(db.url.clone());
        c.simulate_agents = false;
    })
    .await;
    let mut sql = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    for stmt in CAPTURE {
        sqlx::query(*stmt)
            .execute(&mut sql)
            .await
            .expect("install the capture trigger");
    }
    let b = second_replica(&a, &db.url).await;
    let (s, v) = a.post("/credentials", json!({ "name": "db", "value": VALUE })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = a.apply_toml(CATALOG, false).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The agent enrols and connects to replica B.
    let e = agent::enrol(&a, "db-1", "db-app").await;
    let mut ws = agent::connect(&b, &e.token).await;
    agent::handshake(&mut ws, &e.id).await;
    a.wait_state(&e.id, "operational").await;
    let id = stratus_types::ServerId(e.id.parse().expect("id"));
    a.wait_for("replica A to see B holding the agent", async |a| {
        a.running.as_ref()?.app.agent_connected(id).await.then_some(())
    })
    .await;

    // A run started on replica A goes through the outbox to B and on to the agent.
    let (s, v) = a.post("/runs", json!({ "script": "use-db", "server": e.id })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ControlMessage::RunScript(r) = recv_work(&mut ws).await else {
        panic!("expected the run")
    };
    assert!(r.secrets().any(|s| s == VALUE), "the agent gets the value");

    let rows: Vec<(String, String, String)> = sqlx::query_as("SELECT replica, server_id, message FROM outbox_seen")
        .fetch_all(&mut sql)
        .await
        .expect("read the captured rows");
    assert!(
        rows.iter().any(|(_, s, _)| s == &e.id),
        "the run went through the outbox: {rows:?}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        VALUE.to_string(),
        b64.encode(VALUE),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(VALUE),
        hex::encode(VALUE),
        hex::encode_upper(VALUE),
    ];
    for (replica, server, message) in &rows {
        // Failures name the form, never print the row (it would hold the value).
        assert!(
            message.starts_with("sealed1:"),
            "the row for {server} at {replica} is not sealed"
        );
        for (i, f) in forms.iter().enumerate() {
            assert!(
                !message.contains(f.as_str()),
                "the row for {server} at {replica} holds form {i} of the value"
            );
        }
        assert!(
            !message.contains("use-db") && !message.contains("DB_PASS"),
            "the frame is sealed whole"
        );
    }
    // Taken: nothing is left behind in the outbox.
    let left: (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(&mut sql)
        .await
        .expect("count");
    assert_eq!(left.0, 0);
    drop(ws);
    sql.close().await.ok();
    for t in [a, b] {
        if let Some(r) = t.running {
            r.stop();
        }
    }
}

/// The template of the next test: a decommission script, and an array to rebundle into.
const OTHER_REPLICA: &str = r#"
[[script]]
name = "bye"
frequency = "on-demand"
body = "echo bye"

[[template]]
name = "web"
image = "debian-12"
decommission_scripts = ["bye"]

[[array]]
name = "webs"
template = "web"
min = 0
max = 3
desired = 0
"#;

/// Wait for the agent's next message that is not a heartbeat and passes `want`.
async fn next(ws: &mut agent::Ws, what: &str, want: impl Fn(&ControlMessage) -> bool) -> ControlMessage {
    let wait = async {
        loop {
            let m = recv_work(ws).await;
            if want(&m) {
                return m;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Everything the leader or an API call sends to an agent held by the other replica arrives:
/// a login revoked, a rebundle's preparation, and the decommission script of a termination,
/// whose output is stored. The leader (A) runs the orchestrator; the agents are on B.
#[tokio::test]
async fn an_agent_on_the_other_replica_gets_revocations_rebundles_and_its_decommission() {
    let db = TestDatabase::create().await;
    let a = TestServer::start_with(|c| {
        c.store_url = Some(db.url.clone());
        c.simulate_agents = false;
    })
    .await;
    a.wait_for("replica A to lead", async |a| {
        a.running.as_ref()?.app.cluster.is_leader().then_some(())
    })
    .await;
    let b = second_replica(&a, &db.url).await;
    let (s, v) = a.post("/credentials", json!({ "name": "db", "value": VALUE })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = a.apply_toml(&format!("{CATALOG}\n{OTHER_REPLICA}"), false).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let held_by_b = async |name: &str| {
        let e = agent::enrol(&a, name, "web").await;
        let mut ws = agent::connect(&b, &e.token).await;
        agent::handshake(&mut ws, &e.id).await;
        a.wait_state(&e.id, "operational").await;
        let id = stratus_types::ServerId(e.id.parse().expect("id"));
        let bapp = &b.running.as_ref().expect("running").app;
        assert!(bapp.cluster.holds(id), "B holds the agent");
        assert!(!a.running.as_ref().expect("running").app.cluster.holds(id));
        (e, ws)
    };
    let (web1, mut ws1) = held_by_b("web-1").await;
    let (web2, mut ws2) = held_by_b("web-2").await;

    // A login granted and revoked on A reaches the agent on B.
    let (s, v) = a
        .post("/users", json!({ "name": "alice", "roles": ["server_login:example"] }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = a
        .post("/users/alice/keys", json!({ "public_key": ed25519_key(7, "alice") }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let has_alice = |m: &ControlMessage, yes: bool| {
        matches!(m, ControlMessage::DesiredState(d)
            if d.logins.as_ref().is_some_and(|l| l.accounts.iter().any(|a| a.name == "alice") == yes))
    };
    next(&mut ws1, "alice's account", |m| has_alice(m, true)).await;
    let (s, v) = a.put("/users/alice", json!({ "name": "alice", "roles": [] })).await;
    assert!(s.is_success(), "{v}");
    next(&mut ws1, "alice's account revoked", |m| has_alice(m, false)).await;

    // A rebundle started on A: the preparation reaches the agent on B, and its answer
    // (through B) lets the leader capture the instance.
    let path = format!("/servers/{}/rebundle", web1.id);
    let rebundle = a.post(&path, json!({ "array": "webs", "image": "web-bundle" }));
    let answer = async {
        next(&mut ws1, "the rebundle's preparation", |m| {
            matches!(m, ControlMessage::PrepareImage(_))
        })
        .await;
        agent::send(
            &mut ws1,
            AgentMessage::ImagePrepared(ImagePrepared {
                removed: vec!["/var/log/app.log".into()],
                ..Default::default()
            }),
        )
        .await;
    };
    let ((s, v), ()) = tokio::join!(rebundle, answer);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 1, "{v}");
    a.wait_state(&web1.id, "terminated").await;

    // A termination on A: the leader's decommission script reaches the agent on B, and the
    // output the agent sends to B is stored.
    let (s, v) = a.delete(&format!("/servers/{}", web2.id)).await;
    assert!(s.is_success(), "{v}");
    let ControlMessage::RunScript(r) = next(&mut ws2, "the decommission script", |m| {
        matches!(m, ControlMessage::RunScript(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(r.name.as_str(), "bye");
    agent::run(&mut ws2, &r, "bye\n", 0).await;
    a.wait_state(&web2.id, "terminated").await;
    let run = a.get(&format!("/runs/{}", r.run)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "bye\n", "{run}");

    drop((ws1, ws2));
    for t in [a, b] {
        if let Some(r) = t.running {
            r.stop();
        }
    }
}
