//! Every delete removes what its create made (`app/delete.rs`): for each resource, a create
//! then its delete on the fake cloud, and a list of what is left behind — store records of
//! every kind, paths under the data directory, fake clouds and their live instances and
//! images — which must be empty. Servers are terminated, not deleted: their record, runs and
//! finished operations (a rebundle) stay as history, and nothing else may. Also the refusals while something still uses a
//! cloud or an image, each changing nothing. The same on a real local cloud (host network,
//! cgroups, images on disk): `crates/cli/tests/local_cloud.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::{TestServer, assert_error, error_text};
use reqwest::{Method, StatusCode};
use serde_json::json;
use stratus_cloud::fake::FakeCloud;
use stratus_cloud::{CloudDriver, InstanceState};
use stratus_server::drivers::FakeClouds;
use stratus_store::{Kind, Query};

/// What exists, as sets whose difference is what a create-then-delete left behind.
#[derive(Debug, Default, PartialEq, Eq)]
struct World {
    /// `kind id` of every record the store holds, live or not.
    records: BTreeSet<String>,
    /// Paths under the data directory, but the database's own files.
    paths: BTreeSet<String>,
    /// `cloud`, `cloud instance-id` (not terminated) and `cloud image:native-id` (captured).
    cloud: BTreeSet<String>,
}

impl World {
    async fn now(t: &TestServer, fakes: &FakeClouds) -> Self {
        let store = &t.running.as_ref().expect("running").app.store;
        let mut records = BTreeSet::new();
        for kind in Kind::ALL {
            let mut q = Query::default();
            loop {
                let page = store.list(kind, &q).await.expect("list");
                records.extend(page.items.iter().map(|r| format!("{kind:?} {}", r.id)));
                match page.next {
                    Some(n) => q.after = Some(n),
                    None => break,
                }
            }
        }
        let mut paths = BTreeSet::new();
        walk(t.dir.path(), t.dir.path(), &mut paths);
        let all: Vec<(String, Arc<FakeCloud>)> = fakes
            .lock()
            .expect("fakes")
            .iter()
            .map(|(n, f)| (n.to_string(), f.clone()))
            .collect();
        let mut cloud = BTreeSet::new();
        for (name, fake) in all {
            cloud.insert(name.clone());
            for i in fake.list().await.expect("list") {
                if i.state != InstanceState::Terminated {
                    cloud.insert(format!("{name} {}", i.id));
                }
            }
        }
        Self { records, paths, cloud }
    }

    /// What `later` has that `self` has not.
    fn added(&self, later: &World) -> World {
        let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| b.difference(a).cloned().collect();
        World {
            records: diff(&self.records, &later.records),
            paths: diff(&self.paths, &later.paths),
            cloud: diff(&self.cloud, &later.cloud),
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry")) {
        let rel = e.path().strip_prefix(root).expect("under root").display().to_string();
        if rel.starts_with("stratus.db") {
            continue;
        }
        if e.file_type().expect("type").is_dir() {
            walk(root, &e.path(), out);
        }
        out.insert(rel);
    }
}

fn tidy() -> stratus_types::Name {
    stratus_types::Name::parse("tidy").expect("name")
}

/// Make the cloud's driver now, so that only what a scenario makes counts.
async fn opened(t: &TestServer) {
    let app = &t.running.as_ref().expect("running").app;
    app.drivers
        .for_cloud(&*app.store, &tidy())
        .await
        .expect("open the cloud");
}

async fn started() -> (TestServer, FakeClouds) {
    let fakes = FakeClouds::default();
    let shared = fakes.clone();
    let t = TestServer::start_with(move |c| c.fake_clouds = shared).await;
    (t, fakes)
}

/// Nothing but `history` kinds' records were added since `before`.
async fn nothing_left(t: &TestServer, fakes: &FakeClouds, before: &World, history: &[&str], what: &str) {
    let mut left = before.added(&World::now(t, fakes).await);
    left.records
        .retain(|r| !history.iter().any(|h| r.starts_with(&format!("{h} "))));
    assert_eq!(left, World::default(), "{what} left these behind");
}

async fn ok(t: &TestServer, method: Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let (s, v) = t.call(method.clone(), path, body).await;
    assert!(s.is_success(), "{method} {path}: {s} {v}");
    v
}

async fn apply(t: &TestServer, toml: &str) {
    let (s, plan) = t.apply_toml(toml, false).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
}

const CLOUD: &str = r#"
[[cloud]]
name = "tidy"
driver = "fake"
regions = [{ name = "r" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]
address_pools = [{ name = "public", cidr = "198.51.100.0/29" }]

[[image]]
name = "base"
[image.clouds.tidy]
native_id = "hand-named-base"

[[script]]
name = "hello"
frequency = "per-image"
body = "echo hello"

[[template]]
name = "box"
image = "base"
size = "small"
boot_scripts = ["hello"]

[deployment]
name = "tidy"
cloud = "tidy"
"#;

/// Delete what [`CLOUD`] made, users first.
async fn delete_catalog(t: &TestServer) {
    for path in [
        "/deployments/tidy",
        "/templates/box",
        "/scripts/hello",
        "/images/base",
        "/clouds/tidy",
    ] {
        ok(t, Method::DELETE, path, None).await;
    }
}

#[tokio::test]
async fn a_cloud_and_its_catalog_leave_nothing_once_deleted() {
    let (t, fakes) = started().await;
    let before = World::now(&t, &fakes).await;
    apply(&t, CLOUD).await;
    // The cloud is opened (its driver made and cached) by using it.
    ok(
        &t,
        Method::POST,
        "/addresses",
        Some(json!({ "name": "vip", "cloud": "tidy" })),
    )
    .await;
    ok(&t, Method::DELETE, "/addresses/vip", None).await;
    assert!(
        fakes.lock().expect("fakes").contains_key(&tidy()),
        "the cloud was opened"
    );
    delete_catalog(&t).await;
    nothing_left(
        &t,
        &fakes,
        &before,
        &[],
        "a cloud, image, script, template and deployment",
    )
    .await;
    // A cloud of the same name later is a new, empty one.
    apply(&t, CLOUD).await;
    let driver = fakes.lock().expect("fakes").get(&tidy()).cloned();
    assert!(driver.is_none(), "not opened again until used");
}

#[tokio::test]
async fn a_terminated_server_leaves_only_its_history() {
    let (t, fakes) = started().await;
    apply(&t, CLOUD).await;
    opened(&t).await;
    let before = World::now(&t, &fakes).await;
    ok(
        &t,
        Method::POST,
        "/servers",
        Some(json!({ "name": "one", "deployment": "tidy", "template": "box" })),
    )
    .await;
    t.wait_state("tidy/one", "operational").await;
    ok(
        &t,
        Method::POST,
        "/addresses",
        Some(json!({ "name": "vip", "cloud": "tidy" })),
    )
    .await;
    let body = json!({ "server": "tidy/one" });
    ok(&t, Method::POST, "/addresses/vip/associate", Some(body)).await;
    ok(&t, Method::POST, "/addresses/vip/disassociate", None).await;
    ok(&t, Method::DELETE, "/addresses/vip", None).await;
    ok(&t, Method::DELETE, "/servers/tidy%2Fone", None).await;
    t.wait_state("tidy/one", "terminated").await;
    nothing_left(
        &t,
        &fakes,
        &before,
        &["Server", "Run", "Agent"],
        "a server and an address",
    )
    .await;
}

#[tokio::test]
async fn an_array_scaled_in_and_deleted_leaves_only_its_members_history() {
    let (t, fakes) = started().await;
    apply(&t, CLOUD).await;
    opened(&t).await;
    let before = World::now(&t, &fakes).await;
    let array = json!({ "name": "pool", "deployment": "tidy", "template": "box", "min": 0, "max": 2, "desired": 1 });
    ok(&t, Method::POST, "/arrays", Some(array)).await;
    t.wait_for("the member operational", async |t| {
        let (s, v) = t.call(Method::GET, "/servers/tidy%2Fpool-1", None).await;
        (s == StatusCode::OK && v["state"] == "operational").then_some(())
    })
    .await;
    ok(
        &t,
        Method::POST,
        "/arrays/tidy/pool/scale",
        Some(json!({ "desired": 0 })),
    )
    .await;
    t.wait_state("tidy/pool-1", "terminated").await;
    ok(&t, Method::DELETE, "/arrays/tidy/pool", None).await;
    nothing_left(&t, &fakes, &before, &["Server", "Run", "Agent"], "an array").await;
}

#[tokio::test]
async fn credentials_users_and_artifacts_leave_nothing_once_deleted() {
    let (t, fakes) = started().await;
    let before = World::now(&t, &fakes).await;
    let cred = ok(
        &t,
        Method::POST,
        "/credentials",
        Some(json!({ "name": "pw", "value": "s3cret-value" })),
    )
    .await;
    let store = t.running.as_ref().expect("running").app.store.clone();
    let id = cred["id"].as_str().expect("id").to_string();
    assert!(store.sealed(&id).await.expect("sealed").is_some());
    ok(&t, Method::DELETE, "/credentials/pw", None).await;
    assert!(
        store.sealed(&id).await.expect("sealed").is_none(),
        "the sealed value goes too"
    );

    ok(
        &t,
        Method::POST,
        "/users",
        Some(json!({ "name": "carol", "roles": ["observer"] })),
    )
    .await;
    let key = json!({ "public_key": common::ed25519_key(42, "carol") });
    ok(&t, Method::POST, "/users/carol/keys", Some(key)).await;
    let token = json!({ "user": "carol", "description": "ci" });
    let token = ok(&t, Method::POST, "/tokens", Some(token)).await["token"].clone();
    ok(&t, Method::DELETE, "/users/carol", None).await;
    let (s, _) = t.call_as(token.as_str(), Method::GET, "/clouds", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the user's token died with them");

    ok(&t, Method::POST, "/buckets", Some(json!({ "name": "apps" }))).await;
    for (key, body) in [("a.txt", "one"), ("b.txt", "two"), ("a.txt", "three")] {
        let url = format!("{}/api/v1/buckets/apps/object?key={key}", t.url);
        let resp = t
            .http
            .put(url)
            .bearer_auth(&t.token)
            .body(body)
            .send()
            .await
            .expect("put");
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    for key in ["a.txt", "b.txt"] {
        ok(&t, Method::DELETE, &format!("/buckets/apps/object?key={key}"), None).await;
    }
    ok(&t, Method::DELETE, "/buckets/apps", None).await;
    nothing_left(
        &t,
        &fakes,
        &before,
        &[],
        "a credential, a user, a bucket and its objects",
    )
    .await;
}

/// The captured versions of an image (a rebundled server) are deleted on the cloud with the
/// image; the base image, named by hand, is not Stratus's and stays on the cloud.
#[tokio::test]
async fn deleting_an_image_deletes_its_captured_native_images() {
    let (t, fakes) = started().await;
    apply(&t, CLOUD).await;
    opened(&t).await;
    let before = World::now(&t, &fakes).await;
    let body = json!({ "name": "pool", "deployment": "tidy", "template": "box", "min": 0, "max": 2, "desired": 0 });
    ok(&t, Method::POST, "/arrays", Some(body)).await;
    let server = json!({ "name": "golden", "deployment": "tidy", "template": "box" });
    ok(&t, Method::POST, "/servers", Some(server)).await;
    t.wait_state("tidy/golden", "operational").await;
    let r = ok(
        &t,
        Method::POST,
        "/servers/tidy%2Fgolden/rebundle",
        Some(json!({ "array": "pool", "image": "captured" })),
    )
    .await;
    let native = r["native_id"].as_str().expect("native id").to_string();
    t.wait_state("tidy/golden", "terminated").await;
    let fake = fakes.lock().expect("fakes").get(&tidy()).cloned().expect("the cloud");
    assert!(fake.image_exists(&native).await.expect("exists"), "captured: {r}");

    // In use as the array's next launch: refused, and the image stays.
    let (s, v) = t.delete("/images/captured").await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(error_text(&v).contains("tidy/pool"), "{v}");
    assert!(fake.image_exists(&native).await.expect("exists"));

    ok(&t, Method::DELETE, "/arrays/tidy/pool", None).await;
    ok(&t, Method::DELETE, "/images/captured", None).await;
    assert!(
        !fake.image_exists(&native).await.expect("exists"),
        "the native image went too"
    );
    nothing_left(
        &t,
        &fakes,
        &before,
        &["Server", "Run", "Agent", "Operation"],
        "a captured image",
    )
    .await;
    delete_catalog(&t).await;
    assert!(
        fake.image_exists("hand-named-base").await.expect("exists"),
        "an image named by hand is not Stratus's to delete"
    );
}

/// A refused delete answers `409` naming `names`, and changes nothing anywhere.
async fn refused(t: &TestServer, fakes: &FakeClouds, path: &str, names: &str) {
    let before = World::now(t, fakes).await;
    let (s, v) = t.delete(path).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(error_text(&v).contains(names), "{path}: the refusal names {names}: {v}");
    assert_eq!(World::now(t, fakes).await, before, "{path}: a refusal changes nothing");
}

#[tokio::test]
async fn a_cloud_or_image_still_in_use_is_refused_and_nothing_changes() {
    let (t, fakes) = started().await;
    apply(&t, CLOUD).await;
    ok(
        &t,
        Method::POST,
        "/addresses",
        Some(json!({ "name": "vip", "cloud": "tidy" })),
    )
    .await;
    let server = json!({ "name": "one", "deployment": "tidy", "template": "box" });
    ok(&t, Method::POST, "/servers", Some(server)).await;
    t.wait_state("tidy/one", "operational").await;
    // The template moves to another image; the live server still runs `base`.
    let other = "[[image]]\nname = \"other\"\n[image.clouds.tidy]\nnative_id = \"other-1\"\n\n[[script]]";
    let moved = CLOUD
        .replace("image = \"base\"", "image = \"other\"")
        .replace("[[script]]", other);
    apply(&t, &moved).await;
    refused(&t, &fakes, "/images/base", "tidy/one").await;
    refused(&t, &fakes, "/clouds/tidy", "tidy/one").await;
    ok(&t, Method::DELETE, "/servers/tidy%2Fone", None).await;
    t.wait_state("tidy/one", "terminated").await;
    // Then the cloud is refused for each other thing that uses it, in turn.
    refused(&t, &fakes, "/clouds/tidy", "images").await;
    for p in ["/templates/box", "/images/base", "/images/other"] {
        ok(&t, Method::DELETE, p, None).await;
    }
    refused(&t, &fakes, "/clouds/tidy", "addresses").await;
    ok(&t, Method::DELETE, "/addresses/vip", None).await;
    refused(&t, &fakes, "/clouds/tidy", "deployments").await;
    ok(&t, Method::DELETE, "/deployments/tidy", None).await;
    ok(&t, Method::DELETE, "/clouds/tidy", None).await;
    assert!(
        !fakes.lock().expect("fakes").contains_key(&tidy()),
        "the fake cloud is gone"
    );
}
