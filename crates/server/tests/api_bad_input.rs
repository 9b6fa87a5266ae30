//! Bad input, resource by resource. Each refusal is a JSON error with a stable code whose
//! message or fields name the field and the problem, and each changes nothing: the lists and the
//! audit log read the same afterwards. Also the planner's promises: an apply is all or nothing,
//! a dry run writes nothing, a second apply of the same file is all `unchanged`, and a changed
//! script gives the templates that use it a new version.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A control plane running the example deployment, and a snapshot of it.
async fn example() -> (TestServer, Value) {
    let t = TestServer::start().await;
    t.example().await;
    let snap = t.snapshot().await;
    (t, snap)
}

/// Assert a refusal with `code` whose message or fields mention every one of `words`.
fn refused(status: StatusCode, body: &Value, want: StatusCode, code: &str, words: &[&str], what: &str) {
    assert_eq!(status, want, "{what}: {body}");
    assert_error(status, body, want, code);
    let text = error_text(body);
    for w in words {
        assert!(
            text.contains(&w.to_lowercase()),
            "{what}: the error should mention {w:?}: {body}"
        );
    }
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let (t, before) = example().await;
    let posts = [
        "/scripts",
        "/templates",
        "/clouds",
        "/servers",
        "/apply",
        "/users",
        "/credentials",
        "/addresses",
        "/arrays",
        "/tokens",
    ];
    for path in posts {
        let (s, v) = t.send_raw(Method::POST, path, "application/json", "{,}").await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["json", "key must be a string"],
            path,
        );
        let (s, v) = t.send_raw(Method::POST, path, "application/json", "").await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["json", "eof"], path);
        let (s, v) = t.send_raw(Method::POST, path, "application/json", "[1, 2]").await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["invalid type"], path);
        let (s, v) = t.send_raw(Method::POST, path, "text/plain", "name=x").await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["content-type"], path);
    }
    let (s, v) = t
        .send_raw(
            Method::PUT,
            "/scripts/install-nginx",
            "application/json",
            "{\"name\": \"install-nginx\",, }",
        )
        .await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["json"],
        "PUT /scripts",
    );
    let (s, v) = t
        .send_raw(
            Method::POST,
            &format!("{}/tags", server_path("example/app-1")),
            "application/json",
            "{\"add\": [",
        )
        .await;
    refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["json"], "POST tags");
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn unknown_fields_are_named() {
    let (t, before) = example().await;
    let cases = [
        (
            "/templates",
            json!({ "name": "t2", "image": "debian-12", "boot_script": ["install-nginx"] }),
            "boot_script",
        ),
        (
            "/scripts",
            json!({ "name": "s2", "body": "true", "input": [] }),
            "input",
        ),
        (
            "/clouds",
            json!({ "name": "c2", "driver": "fake", "region": [], "regions": [{ "name": "r" }], "sizes": [] }),
            "region",
        ),
        ("/deployments", json!({ "name": "d2", "clouds": "sandbox" }), "clouds"),
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "example", "template": "app", "tag": ["a:b=c"] }),
            "tag",
        ),
        ("/users", json!({ "name": "dave", "role": ["admin"] }), "role"),
        (
            "/arrays",
            json!({ "name": "w", "deployment": "example", "template": "app", "max": 2, "desired": 1, "size_": "small" }),
            "size_",
        ),
        ("/apply", json!({ "document": { "servers": [] } }), "servers"),
        ("/apply", json!({ "document": {}, "dry-run": true }), "dry-run"),
    ];
    for (path, body, field) in cases {
        let (s, v) = t.post(path, body).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &[&format!("unknown field `{field}`")],
            path,
        );
    }
    let (s, v) = t
        .post(
            "/templates",
            json!({ "name": "t2", "image": "debian-12", "boot_script": [] }),
        )
        .await;
    assert!(
        error_text(&v).contains("boot_scripts"),
        "the error lists the known fields: {s} {v}"
    );
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn taken_names_conflict() {
    let (t, _) = example().await;
    let (s, v) = t.post("/users", json!({ "name": "erin" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t.post("/addresses", json!({ "name": "vip", "cloud": "sandbox" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .post(
            "/arrays",
            json!({ "name": "web", "deployment": "example", "template": "app", "max": 1, "desired": 0 }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let before = t.snapshot().await;

    let sizes = json!([{ "name": "small", "cpus": 1, "memory": "512MiB" }]);
    let cases = [
        (
            "/clouds",
            json!({ "name": "sandbox", "driver": "fake", "regions": [{ "name": "r" }], "sizes": sizes }),
            "sandbox",
        ),
        (
            "/images",
            json!({ "name": "debian-12", "clouds": { "sandbox": { "native_id": "other" } } }),
            "debian-12",
        ),
        (
            "/scripts",
            json!({ "name": "install-nginx", "body": "echo again" }),
            "install-nginx",
        ),
        ("/templates", json!({ "name": "app", "image": "debian-12" }), "app"),
        ("/deployments", json!({ "name": "example" }), "example"),
        (
            "/servers",
            json!({ "name": "app-1", "deployment": "example", "template": "app" }),
            "app-1",
        ),
        ("/users", json!({ "name": "erin" }), "erin"),
        (
            "/credentials",
            json!({ "name": "lb-stats", "value": "another" }),
            "lb-stats",
        ),
        ("/addresses", json!({ "name": "vip", "cloud": "sandbox" }), "vip"),
        (
            "/arrays",
            json!({ "name": "web", "deployment": "example", "template": "app", "max": 1, "desired": 0 }),
            "web",
        ),
    ];
    for (path, body, name) in cases {
        let (s, v) = t.post(path, body).await;
        refused(s, &v, StatusCode::CONFLICT, "conflict", &[name, "already exists"], path);
    }
    assert_eq!(t.snapshot().await, before, "nothing was replaced");
    assert_eq!(
        t.get("/scripts/install-nginx").await["body"],
        "apt-get install -y nginx"
    );
}

#[tokio::test]
async fn unknown_references_are_named() {
    let (t, _) = example().await;
    let (s, v) = t.post("/addresses", json!({ "name": "vip", "cloud": "sandbox" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let before = t.snapshot().await;
    let cases = [
        (
            "/templates",
            json!({ "name": "t2", "image": "debian-12", "boot_scripts": ["install-nginx", "nope"] }),
            vec!["boot_scripts[1]", "no script named nope"],
        ),
        (
            "/templates",
            json!({ "name": "t2", "image": "ubuntu", "boot_scripts": ["gone-1", "gone-2"] }),
            vec!["image", "ubuntu", "boot_scripts[0]", "boot_scripts[1]", "gone-2"],
        ),
        (
            "/templates",
            json!({ "name": "t2", "image": "debian-12", "inputs": { "STATS_PASSWORD": "cred:nope" } }),
            vec!["inputs.stats_password", "no such input"],
        ),
        (
            "/templates",
            json!({ "name": "t2", "image": "debian-12", "boot_scripts": ["configure-lb"], "inputs": { "STATS_PASSWORD": "cred:nope" } }),
            vec!["inputs.stats_password", "no credential named nope"],
        ),
        (
            "/images",
            json!({ "name": "i2", "clouds": { "aws": { "native_id": "ami-1" } } }),
            vec!["clouds.aws", "no cloud named aws"],
        ),
        (
            "/deployments",
            json!({ "name": "d2", "cloud": "aws" }),
            vec!["deployment.cloud", "no cloud named aws"],
        ),
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "example", "template": "nope" }),
            vec!["template", "no template named nope"],
        ),
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "example", "template": "app", "region": "mars" }),
            vec!["region", "mars", "local"],
        ),
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "example", "template": "app", "size": { "cpus": 64, "memory": "1TiB" } }),
            vec!["size"],
        ),
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "example", "template": "app", "inputs": { "APP_PROT": "80" } }),
            vec!["inputs.app_prot", "app_port"],
        ),
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "example", "template": "lb", "inputs": { "STATS_PASSWORD": "plain" } }),
            vec!["inputs.stats_password", "cred"],
        ),
        (
            "/addresses",
            json!({ "name": "vip", "cloud": "sandbox", "pool": "private" }),
            vec!["pool", "private"],
        ),
        (
            "/arrays",
            json!({ "name": "w", "deployment": "example", "template": "nope", "max": 2, "desired": 1 }),
            vec!["template", "nope"],
        ),
    ];
    for (path, body, words) in &cases {
        let (s, v) = t.post(path, body.clone()).await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", words, path);
        assert!(!error_fields(&v).is_empty(), "{path}: fields name each problem: {v}");
    }
    let missing = [
        (
            "/servers",
            json!({ "name": "app-9", "deployment": "nope", "template": "app" }),
            "deployment",
        ),
        ("/addresses", json!({ "name": "vip", "cloud": "nope" }), "cloud"),
        (
            "/addresses/none/associate",
            json!({ "server": "example/app-1" }),
            "address",
        ),
        ("/arrays/example/none/scale", json!({ "desired": 1 }), "array"),
        (
            "/users/nobody/keys",
            json!({ "public_key": ed25519_key(1, "") }),
            "user",
        ),
    ];
    for (path, body, kind) in missing {
        let (s, v) = t.post(path, body).await;
        refused(
            s,
            &v,
            StatusCode::NOT_FOUND,
            "not_found",
            &[kind, "does not exist"],
            path,
        );
    }
    let (s, v) = t
        .post("/addresses/vip/associate", json!({ "server": "example/nope" }))
        .await;
    refused(
        s,
        &v,
        StatusCode::NOT_FOUND,
        "not_found",
        &["example/nope"],
        "associate",
    );
    let (s, v) = t
        .post("/addresses/vip/associate", json!({ "server": "no-slash" }))
        .await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["server", "deployment/name"],
        "associate",
    );
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn invalid_tags_and_selectors_are_refused() {
    let (t, before) = example().await;
    let tags = format!("{}/tags", server_path("example/app-1"));
    let bad_tags = [
        ("no-colon", "namespace:predicate=value"),
        ("lb:pool", "=value"),
        ("lb:pool=", "value is empty"),
        ("lb pool:x=1", "namespace"),
        ("lb:po ol=1", "predicate"),
        (":x=1", "namespace is empty"),
        ("lb:pool=a\u{7}b", "control character"),
    ];
    for (tag, why) in bad_tags {
        let (s, v) = t.post(&tags, json!({ "add": [tag] })).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["add[0]", "invalid tag", why],
            tag,
        );
        let (s, v) = t.post(&tags, json!({ "add": ["ok:tag=1"], "remove": [tag] })).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["remove[0]", why],
            tag,
        );
        let (s, v) = t
            .post(
                "/servers",
                json!({ "name": "app-9", "deployment": "example", "template": "app", "tags": ["a:b=c", tag] }),
            )
            .await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["tags[1]", why], tag);
    }
    let long_value = format!("lb:pool={}", "v".repeat(256));
    let (s, v) = t.post(&tags, json!({ "add": [long_value] })).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["add[0]", "limit is 255"],
        "long tag value",
    );

    let bad_selectors = [
        ("", "empty"),
        ("lb:", "predicate is empty"),
        ("!", "namespace"),
        ("lb", "namespace:predicate"),
        ("lb:pool=www,,x:y", "namespace"),
        ("lb:p\u{1}=x", "contains"),
    ];
    for (sel, why) in bad_selectors {
        let (s, v) = t.call(Method::GET, &format!("/servers?tag={}", enc(sel)), None).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["tag", "invalid tag selector", why],
            sel,
        );
        assert_eq!(error_fields(&v), ["tag"]);
    }
    let many = vec!["a:b"; 33].join(",");
    let (s, v) = t.call(Method::GET, &format!("/servers?tag={}", enc(&many)), None).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["tag", "limit is 32"],
        "33 terms",
    );
    let (s, v) = t.call(Method::GET, "/servers?state=sleeping", None).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["state", "sleeping"],
        "state filter",
    );
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn bad_names_are_refused_without_echoing_them_whole() {
    let (t, before) = example().await;
    let huge = "x".repeat(10 * 1024);
    let hostile = format!("a\u{202e}{}", "\u{200b}".repeat(2000));
    let names: [(&str, &str); 9] = [
        ("Web", "lowercase letter"),
        ("1web", "lowercase letter"),
        ("web-", "must not end"),
        ("we b", "contains ' '"),
        ("web/../x", "contains '/'"),
        ("", "must not be empty"),
        (&"a".repeat(64), "limit is 63"),
        (&huge, "limit is 63"),
        (&hostile, "limit is 63"),
    ];
    let bodies = |n: &str| {
        [
            ("/scripts", json!({ "name": n, "body": "true" })),
            ("/templates", json!({ "name": n, "image": "debian-12" })),
            ("/deployments", json!({ "name": n })),
            (
                "/servers",
                json!({ "name": n, "deployment": "example", "template": "app" }),
            ),
            ("/users", json!({ "name": n })),
            ("/credentials", json!({ "name": n, "value": "v" })),
            ("/addresses", json!({ "name": n, "cloud": "sandbox" })),
        ]
    };
    for (name, why) in names {
        for (path, body) in bodies(name) {
            let (s, v) = t.post(path, body).await;
            refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["name", why], path);
            assert!(
                v.to_string().len() < 1024,
                "{path}: the error does not echo the whole input ({} bytes)",
                v.to_string().len()
            );
        }
    }
    let (s, v) = t
        .post("/scripts", json!({ "name": "a\u{202e}b", "body": "true" }))
        .await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["name", "contains"],
        "bidi override",
    );
    assert!(
        !v.to_string().contains('\u{202e}'),
        "a bidi override is shown escaped: {v}"
    );

    for path in [
        format!("/scripts/{}", enc(&huge)),
        format!("/servers/{}", enc(&format!("example/{huge}"))),
        format!("/users/{}", enc(&hostile)),
    ] {
        let (s, v) = t.call(Method::GET, &path, None).await;
        refused(
            s,
            &v,
            StatusCode::NOT_FOUND,
            "not_found",
            &["does not exist"],
            "long path",
        );
        assert!(
            v.to_string().len() < 1024,
            "a long path is not echoed whole: {} bytes",
            v.to_string().len()
        );
    }
    let (s, v) = t.call(Method::GET, &format!("/servers/{}", enc(&huge)), None).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["server", "neither a server id nor deployment/name"],
        "server key",
    );
    assert!(v.to_string().len() < 1024);
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn other_field_problems_are_named() {
    let (t, before) = example().await;
    let cases = [
        (
            "/scripts",
            json!({ "name": "s2", "body": "   " }),
            vec!["body", "is empty"],
        ),
        (
            "/scripts",
            json!({ "name": "s2", "body": "x".repeat(1024 * 1024 + 1) }),
            vec!["body", "limit is 1048576"],
        ),
        (
            "/scripts",
            json!({ "name": "s2", "body": "true", "inputs": [{ "name": "PATH" }] }),
            vec!["inputs[0].name", "reserved"],
        ),
        (
            "/scripts",
            json!({ "name": "s2", "body": "true", "frequency": "hourly" }),
            vec!["frequency", "hourly"],
        ),
        (
            "/clouds",
            json!({ "name": "c2", "driver": "fake", "regions": [], "sizes": [] }),
            vec!["regions", "sizes", "at least one"],
        ),
        (
            "/clouds",
            json!({ "name": "c2", "driver": "gcp", "regions": [{ "name": "r" }], "sizes": [] }),
            vec!["driver", "gcp"],
        ),
        (
            "/templates",
            json!({ "name": "t2", "image": "debian-12", "firewall": [{ "protocol": "tcp", "ports": 70000 }] }),
            vec!["firewall[0].ports", "70000"],
        ),
        (
            "/users",
            json!({ "name": "fred", "email": "not-an-email" }),
            vec!["email", "not an email address"],
        ),
        (
            "/users",
            json!({ "name": "fred", "roles": ["superuser"] }),
            vec!["roles[0]", "unknown role"],
        ),
        (
            "/credentials",
            json!({ "name": "c2", "value": "" }),
            vec!["value", "is empty"],
        ),
        (
            "/tokens",
            json!({ "user": "admin", "ttl_hours": 0 }),
            vec!["ttl_hours", "between 1 and"],
        ),
        (
            "/users/admin/keys",
            json!({ "public_key": "ssh-ed25519 not*base64" }),
            vec!["public_key", "base64"],
        ),
        (
            "/users/admin/keys",
            json!({ "public_key": "-----BEGIN OPENSSH PRIVATE KEY-----" }),
            vec!["public_key", "private key"],
        ),
        (
            "/users/admin/keys",
            json!({ "public_key": "ssh-dss AAAAB3NzaC1kc3M=" }),
            vec!["public_key", "not supported"],
        ),
        (
            "/arrays",
            json!({ "name": "w", "deployment": "example", "template": "app", "min": 3, "max": 2, "desired": 2 }),
            vec!["min", "above max"],
        ),
        (
            "/apply",
            json!({ "document": { "server": [{ "name": "a", "template": "app" }] } }),
            vec!["deployment", "need a [deployment]"],
        ),
    ];
    for (path, body, words) in &cases {
        let (s, v) = t.post(path, body.clone()).await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", words, path);
    }
    let (s, v) = t
        .put(
            "/scripts/install-nginx",
            json!({ "name": "configure-lb", "body": "true" }),
        )
        .await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["name", "configure-lb", "install-nginx"],
        "PUT other name",
    );
    let (s, v) = t.put("/users/admin", json!({ "name": "root" })).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["name", "renamed"],
        "rename user",
    );
    let (s, v) = t.delete("/tokens/not-a-uuid").await;
    refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["id"], "revoke");
    let (s, v) = t.call(Method::GET, "/runs/42", None).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["id", "not a run id"],
        "run id",
    );
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let (t, before) = example().await;
    let big = format!("{{\"name\": \"big\", \"body\": \"{}\"}}", "x".repeat(9 * 1024 * 1024));
    for path in ["/scripts", "/apply"] {
        let (s, v) = t.send_raw(Method::POST, path, "application/json", big.clone()).await;
        refused(
            s,
            &v,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &["8388608"],
            path,
        );
    }
    assert_eq!(t.snapshot().await, before);
}

#[tokio::test]
async fn page_limits_and_query_parameters_are_checked() {
    let (t, _) = example().await;
    for list in [
        "/servers",
        "/scripts",
        "/templates",
        "/users",
        "/credentials",
        "/addresses",
        "/arrays",
        "/runs",
        "/audit",
    ] {
        let (s, v) = t.call(Method::GET, &format!("{list}?limit=0"), None).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["limit", "at least 1"],
            list,
        );
        assert_eq!(error_fields(&v), ["limit"]);
        let (s, v) = t.call(Method::GET, &format!("{list}?limit=5000"), None).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["limit", "5000", "maximum of 1000"],
            list,
        );
        let (s, v) = t.call(Method::GET, &format!("{list}?limit=ten"), None).await;
        refused(
            s,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &["limit", "invalid"],
            list,
        );
        let (s, v) = t.call(Method::GET, &format!("{list}?color=red"), None).await;
        refused(s, &v, StatusCode::BAD_REQUEST, "invalid_input", &["color"], list);
        assert_eq!(
            t.call(Method::GET, &format!("{list}?limit=1000"), None).await.0,
            StatusCode::OK,
            "{list}"
        );
    }
    assert_eq!(t.get("/servers?limit=1").await["items"].as_array().unwrap().len(), 1);
}

/// A file like [`EXAMPLE`] with a new script, template and server, one of them bad.
fn file_with(bad: &str) -> String {
    let script = "\n[[script]]\nname = \"tune\"\nbody = \"sysctl -w x=1\"\n";
    let template = if bad == "template" {
        "\n[[template]]\nname = \"tuned\"\nimage = \"debian-12\"\nboot_scripts = [\"tune\", \"missing\"]\n"
    } else {
        "\n[[template]]\nname = \"tuned\"\nimage = \"debian-12\"\nboot_scripts = [\"tune\"]\n"
    };
    let server = if bad == "server" {
        "\n[[server]]\nname = \"tuned-1\"\ntemplate = \"nope\"\n"
    } else {
        "\n[[server]]\nname = \"tuned-1\"\ntemplate = \"tuned\"\n"
    };
    // Servers and arrays follow the [deployment] table in EXAMPLE; catalog entries may go first.
    format!(
        "{script}{template}{}{server}",
        EXAMPLE.replace(
            "name = \"debian-12\"\n[image.clouds.sandbox]",
            "name = \"debian-12\"\ndescription = \"changed\"\n[image.clouds.sandbox]"
        )
    )
}

#[tokio::test]
async fn an_apply_with_one_bad_entry_creates_nothing() {
    let t = TestServer::start().await;
    example_credential(&t, "pw-for-atomicity").await;
    let before = t.snapshot().await;
    let (s, v) = t.apply_toml(&file_with("template"), false).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["template[0].boot_scripts[1]", "no script named missing"],
        "bad template",
    );
    assert_eq!(t.snapshot().await, before, "not even the good entries were created");

    let (s, v) = t.apply_toml(&file_with("server"), false).await;
    refused(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        &["server[3].template", "no template named nope"],
        "bad server",
    );
    assert_eq!(t.snapshot().await, before);

    // Now with the example in place: a bad file changes neither the catalog nor the servers.
    t.example().await;
    let before = t.snapshot().await;
    for bad in ["template", "server"] {
        let (s, v) = t.apply_toml(&file_with(bad), false).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
        assert_eq!(
            t.snapshot().await,
            before,
            "{bad}: the good updates were not applied either"
        );
    }
    assert!(t.get("/images/debian-12").await.get("description").is_none());
    let (s, plan) = t.apply_toml(&file_with("none"), false).await;
    assert_eq!(s, StatusCode::OK, "the corrected file applies: {plan}");
    t.wait_state("example/tuned-1", "operational").await;
}

/// `(kind, name) -> action` of a plan.
fn actions(plan: &Value) -> Vec<(String, String, String)> {
    plan["changes"]
        .as_array()
        .expect("a plan has changes")
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().into(),
                c["name"].as_str().unwrap().into(),
                c["action"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn action_of<'a>(acts: &'a [(String, String, String)], kind: &str, name: &str) -> &'a str {
    acts.iter()
        .find(|(k, n, _)| k == kind && n == name)
        .map(|(_, _, a)| a.as_str())
        .unwrap_or_else(|| panic!("no {kind} {name} in {acts:?}"))
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_shows_the_plan() {
    let t = TestServer::start().await;
    example_credential(&t, "pw-for-dry-run").await;
    let before = t.snapshot().await;
    let (s, plan) = t.apply_toml(EXAMPLE, true).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["applied"], false);
    let acts = actions(&plan);
    assert_eq!(acts.len(), 10, "{acts:?}");
    assert!(acts.iter().all(|(_, _, a)| a == "create"), "{acts:?}");
    assert_eq!(t.snapshot().await, before, "a dry run writes nothing");

    t.example().await;
    let before = t.snapshot().await;
    let (s, plan) = t.apply_toml(&file_with("none"), true).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let acts = actions(&plan);
    for (kind, name, want) in [
        ("script", "tune", "create"),
        ("template", "tuned", "create"),
        ("server", "tuned-1", "create"),
        ("image", "debian-12", "update"),
        ("script", "install-nginx", "unchanged"),
        ("template", "app", "unchanged"),
        ("deployment", "example", "unchanged"),
        ("server", "app-1", "unchanged"),
    ] {
        assert_eq!(action_of(&acts, kind, name), want, "{kind} {name}");
    }
    assert_eq!(plan["applied"], false);
    assert_eq!(t.snapshot().await, before, "a dry run writes nothing");
    let (s, v) = t.call(Method::GET, &server_path("example/tuned-1"), None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn applying_the_same_file_twice_changes_nothing_the_second_time() {
    let t = TestServer::start().await;
    t.example().await;
    let before = t.snapshot().await;
    let (s, plan) = t.apply_toml(EXAMPLE, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let acts = actions(&plan);
    assert_eq!(acts.len(), 10);
    assert!(acts.iter().all(|(_, _, a)| a == "unchanged"), "{acts:?}");
    assert_eq!(
        t.snapshot().await,
        before,
        "no writes and no audit entry for an unchanged apply"
    );
}

#[tokio::test]
async fn changing_a_script_gives_its_templates_a_new_version() {
    let t = TestServer::start().await;
    t.example().await;
    let app_v1 = t.get("/templates/app").await;
    let lb_v1 = t.get("/templates/lb").await;

    let changed = EXAMPLE.replace("apt-get install -y nginx", "apt-get install -y nginx-full");
    let (s, plan) = t.apply_toml(&changed, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let acts = actions(&plan);
    assert_eq!(action_of(&acts, "script", "install-nginx"), "update");
    assert_eq!(action_of(&acts, "template", "app"), "update");
    assert_eq!(action_of(&acts, "template", "lb"), "unchanged");
    let notes = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "template" && c["name"] == "app")
        .unwrap()["notes"]
        .to_string();
    assert!(
        notes.contains("script install-nginx changed") && notes.contains("new version 2"),
        "{notes}"
    );

    let app_v2 = t.get("/templates/app").await;
    assert_eq!(app_v2["version"], 2);
    assert_ne!(app_v2["content_hash"], app_v1["content_hash"]);
    assert_eq!(
        t.get("/templates/lb").await,
        lb_v1,
        "a template not using the script is untouched"
    );
    let server = t.get(&server_path("example/app-1")).await;
    assert_eq!(
        (&server["template_version"], &server["template_hash"]),
        (&json!(1), &app_v1["content_hash"]),
        "running servers keep what they were launched from"
    );
    let server_note = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "server" && c["name"] == "app-1")
        .unwrap()["notes"]
        .to_string();
    assert!(server_note.contains("template version differs"), "{server_note}");

    // The same through the script's own endpoint: its templates follow.
    let (s, v) = t.put("/scripts/install-nginx", json!({ "name": "install-nginx", "frequency": "per-instance", "body": "apt-get install -y nginx-light", "inputs": [{ "name": "APP_PORT", "default": "8080" }] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let app_v3 = t.get("/templates/app").await;
    assert_eq!(app_v3["version"], 3);
    assert_ne!(app_v3["content_hash"], app_v2["content_hash"]);
    let versions: Vec<Value> = t
        .get("/templates/app/versions")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].clone())
        .collect();
    assert_eq!(versions, [json!(1), json!(2), json!(3)]);
}
