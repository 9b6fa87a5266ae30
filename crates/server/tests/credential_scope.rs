//! Credential scope: who may attach a credential (make its value reach a script) and which
//! deployments' servers may receive it. Every path through which a value could start to flow
//! is tried as an operator (refused, nothing changed) and as an admin (allowed); a credential
//! scoped to other deployments fails where it is resolved, naming the credential and the
//! deployment, never the value.

mod common;

use common::agent::{self, recv_work};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stratus_agent_proto::ControlMessage;

const VALUE: &str = "Vx7-scoped-credential-value-51c9";

/// Admin's catalog: `db-app` hands `cred:db` to its scripts through its inputs; `plain-app`
/// has a script with an optional text input nobody binds.
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
name = "boot-db"
frequency = "every-boot"
body = "echo migrating"
inputs = [{ name = "DB_PASS", kind = "cred" }]

[[script]]
name = "use-db"
frequency = "on-demand"
body = "echo using the database"
inputs = [{ name = "DB_PASS", kind = "cred" }]

[[script]]
name = "plain"
frequency = "on-demand"
body = "echo plain"
inputs = [{ name = "TOKEN", required = false }]

[[template]]
name = "db-app"
image = "debian-12"
boot_scripts = ["boot-db"]
operational_scripts = ["use-db"]
inputs = { DB_PASS = "cred:db" }

[[template]]
name = "plain-app"
image = "debian-12"
operational_scripts = ["plain"]

[deployment]
name = "example"
cloud = "sandbox"
"#;

/// A control plane with the catalog, the credential `db` (default scope: admins attach, every
/// deployment) and an operator's token.
async fn setup(simulate_agents: bool) -> (TestServer, String) {
    let t = TestServer::start_with(|c| c.simulate_agents = simulate_agents).await;
    let (s, v) = t.post("/credentials", json!({ "name": "db", "value": VALUE })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["attach"], "admin", "{v}");
    assert_eq!(v["deployments"], json!(["*"]), "{v}");
    let (s, v) = t.apply_toml(CATALOG, false).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let op = t.user_token("olga", &["operator"]).await;
    (t, op)
}

fn doc(toml_text: &str) -> Value {
    let d = stratus_api::file::parse(toml_text, stratus_api::file::Format::Toml, "t.toml", None).expect("parses");
    serde_json::to_value(d).expect("json")
}

async fn apply_as(t: &TestServer, token: &str, toml_text: &str) -> (StatusCode, Value) {
    t.call_as(
        Some(token),
        Method::POST,
        "/apply",
        Some(json!({ "document": doc(toml_text), "dry_run": false })),
    )
    .await
}

/// Refused as forbidden, naming the credential, without its value.
fn assert_refused(what: &str, status: StatusCode, body: &Value) {
    assert_error(status, body, StatusCode::FORBIDDEN, "forbidden");
    let text = error_text(body);
    assert!(text.contains("credential db"), "{what}: {text}");
    assert!(text.contains("admin role"), "{what}: {text}");
    assert!(!body.to_string().contains(VALUE), "{what}: {body}");
}

/// The changes an operator must not make with an admin-only credential, each as
/// (what, method, path, body); `/apply` bodies are deployment files.
fn attaching_changes() -> Vec<(&'static str, Method, &'static str, Value)> {
    let file = |t: &str| json!({ "document": doc(t), "dry_run": false });
    vec![
        (
            "a new template whose inputs name it",
            Method::POST,
            "/apply",
            file(
                r#"
[[template]]
name = "op-t"
image = "debian-12"
operational_scripts = ["use-db"]
inputs = { DB_PASS = "cred:db" }
"#,
            ),
        ),
        (
            "an existing template given it as an input",
            Method::PUT,
            "/templates/plain-app",
            json!({ "name": "plain-app", "image": "debian-12", "operational_scripts": ["plain"], "inputs": { "TOKEN": "cred:db" } }),
        ),
        (
            "a deployment input",
            Method::PUT,
            "/deployments/example",
            json!({ "name": "example", "cloud": "sandbox", "inputs": { "TOKEN": "cred:db" } }),
        ),
        (
            "a deployment input in a file",
            Method::POST,
            "/apply",
            file("[deployment]\nname = \"example\"\ncloud = \"sandbox\"\ninputs = { TOKEN = \"cred:db\" }\n"),
        ),
        (
            "a server launched with it",
            Method::POST,
            "/servers",
            json!({ "name": "s1", "deployment": "example", "template": "plain-app", "inputs": { "TOKEN": "cred:db" } }),
        ),
        (
            "a server in a file",
            Method::POST,
            "/apply",
            file(
                "[deployment]\nname = \"example\"\ncloud = \"sandbox\"\n[[server]]\nname = \"s2\"\ntemplate = \"plain-app\"\ninputs = { TOKEN = \"cred:db\" }\n",
            ),
        ),
        (
            "an array",
            Method::POST,
            "/arrays",
            json!({ "name": "pool", "deployment": "example", "template": "plain-app", "min": 0, "max": 2, "desired": 0, "inputs": { "TOKEN": "cred:db" } }),
        ),
        (
            "a script default",
            Method::POST,
            "/scripts",
            json!({ "name": "spy-default", "frequency": "on-demand", "body": "echo $P | base64", "inputs": [{ "name": "P", "kind": "cred", "default": "cred:db" }] }),
        ),
        (
            "the body of a script that receives it",
            Method::PUT,
            "/scripts/use-db",
            json!({ "name": "use-db", "frequency": "on-demand", "body": "echo \"$DB_PASS\" | base64", "inputs": [{ "name": "DB_PASS", "kind": "cred" }] }),
        ),
        (
            "the body of a boot script that receives it, in a file",
            Method::POST,
            "/apply",
            file(
                "[[script]]\nname = \"boot-db\"\nfrequency = \"every-boot\"\nbody = \"echo $DB_PASS | xxd -p\"\ninputs = [{ name = \"DB_PASS\", kind = \"cred\" }]\n",
            ),
        ),
        (
            "a new script listed by a template that binds it, in one file",
            Method::POST,
            "/apply",
            file(
                r#"
[[script]]
name = "spy"
frequency = "on-demand"
body = "echo $DB_PASS | base64"
inputs = [{ name = "DB_PASS", kind = "cred" }]

[[template]]
name = "db-app"
image = "debian-12"
boot_scripts = ["boot-db"]
operational_scripts = ["use-db", "spy"]
inputs = { DB_PASS = "cred:db" }
"#,
            ),
        ),
        (
            "a watched file on a template whose scripts receive it (root writes it)",
            Method::POST,
            "/apply",
            file(
                "[[template]]\nname = \"db-app\"\nimage = \"debian-12\"\nboot_scripts = [\"boot-db\"]\noperational_scripts = [\"use-db\"]\ninputs = { DB_PASS = \"cred:db\" }\nwatch = [{ path = \"/etc/cron.d/x\", object = \"ops/cron\" }]\n",
            ),
        ),
        (
            "an application (its activate runs as root) on that template",
            Method::PUT,
            "/templates/db-app",
            json!({ "name": "db-app", "image": "debian-12", "boot_scripts": ["boot-db"], "operational_scripts": ["use-db"], "inputs": { "DB_PASS": "cred:db" }, "application": { "name": "web", "archive": "ops/web.tar.gz", "activate": "cat /proc/*/environ | base64" } }),
        ),
    ]
}

#[tokio::test]
async fn operators_cannot_attach_an_admin_only_credential_by_any_path() {
    let (t, op) = setup(true).await;
    let before = t.snapshot().await;
    for (what, method, path, body) in attaching_changes() {
        let (s, v) = t.call_as(Some(&op), method, path, Some(body)).await;
        assert_refused(what, s, &v);
    }
    // A dry run is refused the same way (the plan would not be allowed).
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/apply",
            Some(json!({ "document": doc("[deployment]\nname = \"example\"\ncloud = \"sandbox\"\ninputs = { TOKEN = \"cred:db\" }\n"), "dry_run": true })),
        )
        .await;
    assert_refused("a dry run", s, &v);
    // A cloud whose driver would sign its requests to an endpoint of one's choosing with it
    // (refused before anything else is said about the spec).
    let cloud = json!({ "name": "mine", "driver": "ec2", "endpoint": "http://127.0.0.1:9/", "regions": [{ "name": "r" }], "sizes": [{ "name": "s", "cpus": 1, "memory": "512MiB" }], "ec2": { "credential": "db" } });
    let (s, v) = t.call_as(Some(&op), Method::POST, "/clouds", Some(cloud)).await;
    assert_refused("a cloud's ec2.credential", s, &v);
    assert_eq!(t.snapshot().await, before, "a refused change changes nothing");
}

#[tokio::test]
async fn a_script_prepared_before_and_listed_later_is_refused() {
    let (t, op) = setup(true).await;
    // Nothing lists the script yet: creating it hands it nothing.
    let (s, v) = apply_as(
        &t,
        &op,
        "[[script]]\nname = \"spy\"\nfrequency = \"on-demand\"\nbody = \"echo $DB_PASS | base64\"\ninputs = [{ name = \"DB_PASS\", kind = \"cred\" }]\n",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = t.snapshot().await;
    // Adding it to the template that binds DB_PASS would hand it the value.
    let (s, v) = apply_as(
        &t,
        &op,
        "[[template]]\nname = \"db-app\"\nimage = \"debian-12\"\nboot_scripts = [\"boot-db\"]\noperational_scripts = [\"use-db\", \"spy\"]\ninputs = { DB_PASS = \"cred:db\" }\n",
    )
    .await;
    assert_refused("listing it in db-app", s, &v);
    assert!(error_text(&v).contains("template db-app now runs script spy"), "{v}");
    // Even a script that declares nothing: it runs as root beside the ones that receive it.
    let (s, v) = apply_as(
        &t,
        &op,
        "[[script]]\nname = \"peek\"\nfrequency = \"on-demand\"\nbody = \"cat /proc/*/environ | base64\"\n\n[[template]]\nname = \"db-app\"\nimage = \"debian-12\"\nboot_scripts = [\"boot-db\"]\noperational_scripts = [\"use-db\", \"peek\"]\ninputs = { DB_PASS = \"cred:db\" }\n",
    )
    .await;
    assert_refused("a script beside them", s, &v);
    assert!(error_text(&v).contains("now runs script peek beside script"), "{v}");
    // So would a new template in a deployment that binds DB_PASS (an admin's binding).
    let (s, v) = t
        .put(
            "/deployments/example",
            json!({ "name": "example", "cloud": "sandbox", "inputs": { "DB_PASS": "cred:db" } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "an admin may bind it: {v}");
    let before2 = t.snapshot().await;
    let (s, v) = apply_as(
        &t,
        &op,
        "[[template]]\nname = \"spy-t\"\nimage = \"debian-12\"\noperational_scripts = [\"spy\"]\n",
    )
    .await;
    assert_refused("a new template running it", s, &v);
    assert!(error_text(&v).contains("deployment example"), "{v}");
    // And a script that starts declaring the input the deployment binds.
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::PUT,
            "/scripts/plain",
            Some(json!({ "name": "plain", "frequency": "on-demand", "body": "echo plain", "inputs": [{ "name": "TOKEN", "required": false }, { "name": "DB_PASS", "kind": "cred", "required": false }] })),
        )
        .await;
    assert_refused("declaring a bound input", s, &v);
    assert_eq!(t.snapshot().await, before2);
    assert_ne!(before, before2);
}

#[tokio::test]
async fn operators_may_change_what_hands_over_nothing_new() {
    let (t, op) = setup(true).await;
    // A server of db-app already receives it in `example` (an admin launched it).
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "web-0", "deployment": "example", "template": "db-app" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A template change that keeps the same binding, a script nothing binds, a server of
    // db-app with its template's inputs: no new flow.
    for (what, file) in [
        (
            "tags of db-app",
            "[[template]]\nname = \"db-app\"\nimage = \"debian-12\"\nboot_scripts = [\"boot-db\"]\noperational_scripts = [\"use-db\"]\ninputs = { DB_PASS = \"cred:db\" }\ndefault_tags = [\"team:name=db\"]\n",
        ),
        (
            "the body of plain",
            "[[script]]\nname = \"plain\"\nfrequency = \"on-demand\"\nbody = \"echo changed\"\ninputs = [{ name = \"TOKEN\", required = false }]\n",
        ),
        (
            "a server of db-app",
            "[deployment]\nname = \"example\"\ncloud = \"sandbox\"\n[[server]]\nname = \"web-1\"\ntemplate = \"db-app\"\n",
        ),
    ] {
        let (s, v) = apply_as(&t, &op, file).await;
        assert_eq!(s, StatusCode::OK, "{what}: {v}");
    }
    // Naming the template's own binding again at launch hands over nothing new.
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/servers",
            Some(json!({ "name": "web-2", "deployment": "example", "template": "db-app", "inputs": { "DB_PASS": "cred:db" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn admins_may_attach_and_so_may_operators_when_the_credential_allows() {
    let (t, op) = setup(true).await;
    for (what, method, path, body) in attaching_changes() {
        let (s, v) = t.call(method, path, Some(body)).await;
        assert!(s.is_success(), "admin: {what}: {s} {v}");
    }
    // Another credential that operators may attach.
    let (s, v) = t
        .post(
            "/credentials",
            json!({ "name": "shared", "value": "x-shared-value", "attach": "operator" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/servers",
            json!({ "name": "s9", "deployment": "example", "template": "plain-app", "inputs": { "TOKEN": "cred:shared" } })
                .into(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The audit log shows the admin's changes; no value anywhere.
    assert!(!t.snapshot().await.to_string().contains(VALUE));
}

#[tokio::test]
async fn per_run_inputs_need_the_attach_role() {
    let (t, op) = setup(false).await;
    let (e, mut ws) = agent::operational(&t, "web-1", "plain-app").await;
    let start = json!({ "script": "plain", "server": e.id, "inputs": { "TOKEN": "cred:db" } });
    let runs_before = t.list_all("/runs").await.len();
    let (s, v) = t.call_as(Some(&op), Method::POST, "/runs", Some(start.clone())).await;
    assert_refused("a per-run input", s, &v);
    assert_eq!(t.list_all("/runs").await.len(), runs_before, "no run was recorded");
    // The operator's own run without it is fine; an admin's with it delivers the value.
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/runs",
            Some(json!({ "script": "plain", "server": e.id })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ControlMessage::RunScript(r) = recv_work(&mut ws).await else {
        panic!("a run")
    };
    assert_eq!(r.secrets().count(), 0);
    agent::run(&mut ws, &r, "ok\n", 0).await;
    let (s, v) = t.post("/runs", start).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ControlMessage::RunScript(r) = recv_work(&mut ws).await else {
        panic!("a run")
    };
    assert!(r.secrets().any(|s| s == VALUE));
}

#[tokio::test]
async fn a_credential_outside_its_deployments_fails_where_it_is_resolved() {
    let (t, _op) = setup(false).await;
    // Booted in `example` while the credential allowed every deployment.
    let e = agent::enrol(&t, "db-1", "db-app").await;
    let mut ws = agent::connect(&t, &e.token).await;
    let desired = agent::handshake(&mut ws, &e.id).await;
    assert!(
        desired.boot[0].secrets().any(|s| s == VALUE),
        "delivered while in scope"
    );
    for r in &desired.boot {
        agent::run(&mut ws, r, "ok\n", 0).await;
    }
    t.wait_state(&e.id, "operational").await;
    // Now it is narrowed to other deployments.
    let (s, v) = t
        .put(
            "/credentials/db",
            json!({ "name": "db", "value": VALUE, "deployments": ["prod-*", "staging"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        t.get("/credentials/db").await["deployments"],
        json!(["prod-*", "staging"])
    );
    let scoped = |body: &Value| {
        let text = error_text(body);
        assert!(
            text.contains("credential db") && text.contains("deployment example"),
            "{text}"
        );
        assert!(!body.to_string().contains(VALUE), "{body}");
    };
    // A run: refused before anything is sent.
    let (s, v) = t.post("/runs", json!({ "script": "use-db", "server": e.id })).await;
    assert_error(s, &v, StatusCode::CONFLICT, "bad_state");
    scoped(&v);
    // A rollout: its run on the server fails with the reason, nothing is sent.
    let (s, v) = t
        .post(
            &format!("{}/tags", server_path(&e.id)),
            json!({ "add": ["role:kind=db"] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .post(
            "/rollouts",
            json!({ "script": "use-db", "selector": "role:kind=db", "deployment": "example" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let rollout = v["id"].as_str().expect("id").to_string();
    let run = t
        .wait_for("the rollout's run to fail", async |t| {
            let runs = t.list_all(&format!("/runs?rollout={rollout}")).await;
            runs.into_iter().find(|r| r["status"] == "failed")
        })
        .await;
    let out = run["output"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        out.contains("credential db") && out.contains("deployment example"),
        "{out}"
    );
    assert!(!out.contains(&VALUE.to_lowercase()));
    // A reboot: the every-boot script's run fails with the reason and strands the server.
    ws.close(None).await.expect("close");
    let mut ws = agent::connect(&t, &e.token).await;
    let (_, desired) = agent::greet(&mut ws, agent::hello(&e.id, "boot-2", vec![])).await;
    assert!(desired.boot.is_empty(), "nothing undeliverable is sent: {desired:?}");
    let server = t.wait_state(&e.id, "stranded").await;
    let runs = t.list_all(&format!("/runs?server={}", e.id)).await;
    let failed = runs
        .iter()
        .find(|r| r["status"] == "failed" && r["script"] == "boot-db")
        .unwrap_or_else(|| panic!("a failed boot run: {runs:?}"));
    let out = failed["output"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        out.contains("credential db") && out.contains("deployment example"),
        "{out}"
    );
    assert!(!server.to_string().contains(VALUE) && !out.contains(&VALUE.to_lowercase()));
    // A new server of the same template in `example`: refused at launch, naming both.
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "db-2", "deployment": "example", "template": "db-app" }),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    scoped(&v);
    // A deployment input naming it, likewise.
    let (s, v) = t
        .put(
            "/deployments/example",
            json!({ "name": "example", "cloud": "sandbox", "inputs": { "DB_PASS": "cred:db" } }),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    scoped(&v);
    // In a matching deployment it works.
    let (s, v) = t
        .post(
            "/deployments",
            json!({ "name": "prod-eu", "cloud": "sandbox", "inputs": { "DB_PASS": "cred:db" } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn bad_scopes_are_refused_and_change_nothing() {
    let (t, _op) = setup(true).await;
    let before = t.snapshot().await;
    let many: Vec<String> = (0..65).map(|i| format!("d{i}")).collect();
    for (what, extra, field) in [
        ("an empty list", json!({ "deployments": [] }), "deployments"),
        ("an empty name", json!({ "deployments": ["ok", ""] }), "deployments[1]"),
        ("a bad name", json!({ "deployments": ["Prod EU"] }), "deployments[0]"),
        ("a bad glob", json!({ "deployments": ["prod-**"] }), "deployments[0]"),
        ("a path", json!({ "deployments": ["../x"] }), "deployments[0]"),
        ("too many", json!({ "deployments": many }), "deployments"),
    ] {
        for (method, path, name) in [
            (Method::POST, "/credentials", "other"),
            (Method::PUT, "/credentials/db", "db"),
        ] {
            let mut body = json!({ "name": name, "value": "v-123456" });
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let (s, v) = t.call(method.clone(), path, Some(body)).await;
            assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
            assert!(error_fields(&v).iter().any(|f| f == field), "{what}: {v}");
        }
    }
    for bad_attach in [json!("observer"), json!("root"), json!(3)] {
        let (s, v) = t
            .post(
                "/credentials",
                json!({ "name": "other", "value": "v-123456", "attach": bad_attach }),
            )
            .await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    }
    assert_eq!(t.snapshot().await, before, "nothing changed");
}

#[tokio::test]
async fn a_value_only_update_keeps_the_scope_and_description() {
    let (t, _op) = setup(true).await;
    let (s, v) = t
        .put(
            "/credentials/db",
            json!({ "name": "db", "value": VALUE, "description": "the db", "deployments": ["prod-*"], "attach": "operator" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A new value only (what a rotation sends): nothing else moves, in the answer or the store.
    let (s, v) = t
        .put("/credentials/db", json!({ "name": "db", "value": "rotated-value-2" }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for c in [v, t.get("/credentials/db").await] {
        assert_eq!(c["deployments"], json!(["prod-*"]), "{c}");
        assert_eq!(c["attach"], "operator", "{c}");
        assert_eq!(c["description"], "the db", "{c}");
    }
    // Each field given alone changes only itself.
    let (s, v) = t
        .put(
            "/credentials/db",
            json!({ "name": "db", "value": "v3-value", "attach": "admin" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["attach"], &v["deployments"]),
        (&json!("admin"), &json!(["prod-*"])),
        "{v}"
    );
    // A new credential still takes the defaults.
    let (s, v) = t
        .put("/credentials/fresh", json!({ "name": "fresh", "value": "f-value" }))
        .await;
    assert!(s.is_success(), "{v}");
    assert_eq!(
        (&v["attach"], &v["deployments"]),
        (&json!("admin"), &json!(["*"])),
        "{v}"
    );
}

#[tokio::test]
async fn a_first_server_of_a_template_in_a_deployment_needs_the_attach_role() {
    let (t, op) = setup(true).await;
    // A deployment of the operator's own, which the default scope `*` covers.
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/deployments",
            Some(json!({ "name": "mine", "cloud": "sandbox" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // An empty array launches nothing: allowed.
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/arrays",
            Some(
                json!({ "name": "idle", "deployment": "mine", "template": "db-app", "min": 0, "max": 3, "desired": 0 }),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let before = t.snapshot().await;
    let file = |t: &str| json!({ "document": doc(t), "dry_run": false });
    let launches = [
        (
            "a launch",
            Method::POST,
            "/servers",
            json!({ "name": "s1", "deployment": "mine", "template": "db-app" }),
        ),
        (
            "a server in a file",
            Method::POST,
            "/apply",
            file(
                "[deployment]\nname = \"mine\"\ncloud = \"sandbox\"\n[[server]]\nname = \"s2\"\ntemplate = \"db-app\"\n",
            ),
        ),
        (
            "an array that starts with a member",
            Method::POST,
            "/arrays",
            json!({ "name": "pool", "deployment": "mine", "template": "db-app", "min": 0, "max": 2, "desired": 1 }),
        ),
        (
            "an array scaled up",
            Method::POST,
            "/arrays/mine/idle/scale",
            json!({ "desired": 1 }),
        ),
        (
            "a new deployment with a server, in one file",
            Method::POST,
            "/apply",
            file(
                "[deployment]\nname = \"prod-x\"\ncloud = \"sandbox\"\n[[server]]\nname = \"s3\"\ntemplate = \"db-app\"\n",
            ),
        ),
    ];
    for (what, method, path, body) in &launches {
        let (s, v) = t.call_as(Some(&op), method.clone(), path, Some(body.clone())).await;
        assert_refused(what, s, &v);
        assert!(error_text(&v).contains("first of template db-app"), "{what}: {v}");
    }
    assert_eq!(t.snapshot().await, before, "a refused launch changes nothing");
    // Once an admin's server of db-app receives it there, the operator's launches add nothing.
    let (s, v) = t
        .post(
            "/servers",
            json!({ "name": "s0", "deployment": "mine", "template": "db-app" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for (what, method, path, body) in launches.into_iter().take(4) {
        let (s, v) = t.call_as(Some(&op), method, path, Some(body)).await;
        assert!(s.is_success(), "{what}: {s} {v}");
    }
    // A template that hands over nothing needs nothing.
    let (s, v) = t
        .call_as(
            Some(&op),
            Method::POST,
            "/servers",
            Some(json!({ "name": "p1", "deployment": "mine", "template": "plain-app" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// `db-web` runs an application (deployed as root) beside a script that receives `cred:db`.
const WEB: &str = r#"
[[template]]
name = "db-web"
image = "debian-12"
operational_scripts = ["use-db"]
inputs = { DB_PASS = "cred:db" }
default_tags = ["lb:pool=www"]
application = { name = "site", archive = "www/site.tar.gz" }
"#;

#[tokio::test]
async fn deploying_to_servers_that_receive_an_admin_only_credential_needs_its_role() {
    let (t, op) = setup(false).await;
    let _ = t.post("/buckets", json!({ "name": "www" })).await;
    let resp = t
        .http
        .put(format!("{}/api/v1/buckets/www/object?key=site.tar.gz", t.url))
        .bearer_auth(&t.token)
        .body(b"an archive".to_vec())
        .send()
        .await
        .expect("put");
    assert!(resp.status().is_success(), "{}", resp.status());
    let (s, v) = t.apply_toml(WEB, false).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_e, _ws) = agent::operational(&t, "web-1", "db-web").await;
    let deploy = json!({ "archive": "www/site.tar.gz", "selector": "lb:pool=www", "deployment": "example" });
    let rollouts = t.list_all("/rollouts").await.len();
    let (s, v) = t
        .call_as(Some(&op), Method::POST, "/deploys", Some(deploy.clone()))
        .await;
    assert_refused("a deploy", s, &v);
    assert!(error_text(&v).contains("server example/web-1"), "{v}");
    assert_eq!(t.list_all("/rollouts").await.len(), rollouts, "nothing was started");
    let (s, v) = t.post("/deploys", deploy).await;
    assert_eq!(s, StatusCode::CREATED, "admin: {v}");
}
