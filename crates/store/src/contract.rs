//! The contract every [`Datastore`] backend passes. Each function is one behaviour; a backend's
//! test file calls them all with a fresh, empty store (see `tests/sqlite.rs`).

use std::future::Future;

use chrono::Utc;
use stratus_types::audit::AuditEntry;
use stratus_types::deployment::{Deployment, DeploymentSpec};
use stratus_types::server::{Server, ServerState};
use stratus_types::tag::{Selector, Tag};
use stratus_types::{AuditId, DeploymentId, Name, ServerId};

use crate::{AuditQuery, Change, Datastore, Query, Sealed, StoreError, TypedStore};

fn name(s: &str) -> Name {
    Name::parse(s).expect("test name")
}

pub fn deployment(n: &str) -> Deployment {
    let now = Utc::now();
    Deployment {
        id: DeploymentId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        spec: DeploymentSpec {
            name: name(n),
            description: String::new(),
            cloud: None,
            inputs: Default::default(),
        },
    }
}

pub fn server(n: &str, deployment: &str, tags: &[&str]) -> Server {
    let now = Utc::now();
    Server {
        id: ServerId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        name: name(n),
        deployment: name(deployment),
        template: name("web"),
        template_version: 1,
        template_hash: "0".repeat(64),
        cloud: name("fake"),
        region: "r1".into(),
        size: "small".into(),
        image: name("debian"),
        image_version: 1,
        native_image: "img-1".into(),
        login_user: "root".into(),
        array: None,
        inputs: Default::default(),
        tags: tags.iter().map(|t| Tag::parse(t).expect("test tag")).collect(),
        state: ServerState::Pending,
        stranded: None,
        instance_id: None,
        private_ip: None,
        public_ip: None,
        launched_at: None,
        booting_since: None,
        operational_at: None,
        decommissioning_since: None,
        terminated_at: None,
        rebundle: None,
    }
}

/// Insert, read back by id and by name; the value is unchanged.
pub async fn round_trip(store: &dyn Datastore) {
    let d = deployment("prod");
    store.commit(vec![Change::insert(&d)]).await.expect("insert");
    let by_id: Deployment = store.get_as(&d.id.to_string()).await.expect("get").expect("present");
    assert_eq!(by_id, d);
    let by_name: Deployment = store.find_as("", "prod").await.expect("find").expect("present");
    assert_eq!(by_name, d);
    assert!(store.find_as::<Deployment>("", "nope").await.expect("find").is_none());
}

/// A second live resource with the same name is a conflict, and the batch changes nothing.
pub async fn duplicate_names_conflict_atomically(store: &dyn Datastore) {
    let a = deployment("dup");
    store.commit(vec![Change::insert(&a)]).await.expect("insert");
    let other = deployment("other");
    let again = deployment("dup");
    let err = store
        .commit(vec![Change::insert(&other), Change::insert(&again)])
        .await
        .expect_err("conflict");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(
        store.find_as::<Deployment>("", "other").await.expect("find").is_none(),
        "batch was not atomic"
    );
}

/// An update must name the revision it replaces; a stale writer fails.
pub async fn stale_updates_fail(store: &dyn Datastore) {
    let mut d = deployment("rev");
    store.commit(vec![Change::insert(&d)]).await.expect("insert");
    let mut stale = d.clone();
    d.spec.description = "first".into();
    store
        .commit(vec![Change::update(&mut d, Utc::now())])
        .await
        .expect("update");
    assert_eq!(d.revision, 2);
    stale.spec.description = "second".into();
    let err = store
        .commit(vec![Change::update(&mut stale, Utc::now())])
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::Stale { .. }), "{err:?}");
    let now: Deployment = store.get_as(&d.id.to_string()).await.expect("get").expect("present");
    assert_eq!(now.spec.description, "first");
    store.commit(vec![Change::delete(&now)]).await.expect("delete");
    assert!(
        store
            .get_as::<Deployment>(&d.id.to_string())
            .await
            .expect("get")
            .is_none()
    );
}

/// Names are unique among live records only: a terminated server frees its name.
pub async fn terminated_servers_free_their_name(store: &dyn Datastore) {
    let mut s = server("web-1", "prod", &[]);
    store.commit(vec![Change::insert(&s)]).await.expect("insert");
    s.state = ServerState::Terminated;
    store
        .commit(vec![Change::update(&mut s, Utc::now())])
        .await
        .expect("terminate");
    let s2 = server("web-1", "prod", &[]);
    store.commit(vec![Change::insert(&s2)]).await.expect("name reused");
    let found: Server = store.find_as("prod", "web-1").await.expect("find").expect("present");
    assert_eq!(found.id, s2.id);
    // Same name in another deployment is fine too.
    store
        .commit(vec![Change::insert(&server("web-1", "staging", &[]))])
        .await
        .expect("other scope");
}

/// Pages follow creation order and cover everything exactly once.
pub async fn paging_covers_everything_once(store: &dyn Datastore) {
    let all: Vec<Server> = (0..25).map(|i| server(&format!("s{i}"), "pg", &[])).collect();
    store
        .commit(all.iter().map(Change::insert).collect())
        .await
        .expect("insert");
    let mut q = Query {
        scope: Some("pg".into()),
        limit: 10,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let (page, next) = store.list_as::<Server>(&q).await.expect("list");
        assert!(page.len() <= 10);
        seen.extend(page.into_iter().map(|s| s.id));
        match next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, all.iter().map(|s| s.id).collect::<Vec<_>>());
}

/// Filters by state and by tag selector (exact, wildcard, presence, absence, combined).
pub async fn selectors_and_filters(store: &dyn Datastore) {
    let mut lb = server("lb", "sel", &["lb:balances=www", "role:kind=lb"]);
    lb.state = ServerState::Operational;
    let a = server("app-a", "sel", &["lb:pool=www", "app:version=1.2.3"]);
    let b = server(
        "app-b",
        "sel",
        &["lb:pool=www", "app:version=2.0.0", "maint:drain=true"],
    );
    store
        .commit(vec![Change::insert(&lb), Change::insert(&a), Change::insert(&b)])
        .await
        .expect("insert");
    let names = |sel: &str| {
        let q = Query {
            scope: Some("sel".into()),
            selector: Some(Selector::parse(sel).expect("selector")),
            ..Default::default()
        };
        async move {
            let (v, _) = store.list_as::<Server>(&q).await.expect("list");
            v.into_iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(names("lb:pool=www").await, ["app-a", "app-b"]);
    assert_eq!(names("app:version=1.*").await, ["app-a"]);
    assert_eq!(names("app:version=?.?.?").await, ["app-a", "app-b"]);
    assert_eq!(names("lb:*").await, ["lb", "app-a", "app-b"]);
    assert_eq!(names("lb:pool,!maint:drain").await, ["app-a"]);
    assert_eq!(names("role:kind=lb,lb:balances=www").await, ["lb"]);
    assert!(names("nothing:here").await.is_empty());
    let q = Query {
        scope: Some("sel".into()),
        state: Some("operational".into()),
        ..Default::default()
    };
    assert_eq!(store.list_as::<Server>(&q).await.expect("list").0.len(), 1);
}

/// A glob metacharacter of the backend (`[`) in a tag value is matched literally.
pub async fn selector_patterns_are_literal_except_wildcards(store: &dyn Datastore) {
    let s = server("odd", "lit", &["x:y=a[b]c"]);
    store.commit(vec![Change::insert(&s)]).await.expect("insert");
    for (sel, want) in [
        ("x:y=a[b]c", 1),
        ("x:y=a[b]*", 1),
        ("x:y=abc", 0),
        ("x:y=a%", 0),
        ("x:y=a_b_c", 0),
    ] {
        let q = Query {
            selector: Some(Selector::parse(sel).expect("selector")),
            ..Default::default()
        };
        assert_eq!(store.list_as::<Server>(&q).await.expect("list").0.len(), want, "{sel}");
    }
}

/// Sealed values and audit entries are written in the same batch as the change.
pub async fn sealed_and_audit(store: &dyn Datastore) {
    let sealed = Sealed {
        key_id: "k1".into(),
        nonce: vec![1; 24],
        ciphertext: vec![9; 40],
    };
    let entry = |action: &str| AuditEntry {
        id: AuditId::new(),
        at: Utc::now(),
        actor: "admin".into(),
        action: action.into(),
        target: "credential/db".into(),
        detail: serde_json::json!({"x": 1}),
    };
    store
        .commit(vec![
            Change::PutSealed {
                id: "c1".into(),
                sealed: sealed.clone(),
            },
            Change::Audit(entry("credential.create")),
        ])
        .await
        .expect("commit");
    assert_eq!(store.sealed("c1").await.expect("sealed"), Some(sealed));
    store
        .commit(vec![Change::Audit(entry("server.launch"))])
        .await
        .expect("commit");
    let all = store.audit(&AuditQuery::default()).await.expect("audit");
    assert_eq!(
        all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["server.launch", "credential.create"]
    );
    let q = AuditQuery {
        action_prefix: Some("credential.".into()),
        ..Default::default()
    };
    assert_eq!(store.audit(&q).await.expect("audit").len(), 1);
    store
        .commit(vec![Change::DeleteSealed { id: "c1".into() }])
        .await
        .expect("delete");
    assert!(store.sealed("c1").await.expect("sealed").is_none());
}

/// Settings are set once and then kept.
pub async fn settings_are_set_once(store: &dyn Datastore) {
    assert_eq!(store.setting("k").await.expect("get"), None);
    assert_eq!(store.init_setting("k", "first").await.expect("init"), "first");
    assert_eq!(store.init_setting("k", "second").await.expect("init"), "first");
}

/// A named lock is held by one holder at a time, other names are independent, and dropping
/// the guard releases it.
pub async fn locks_exclude(store: &dyn Datastore) {
    use std::time::Duration;
    let held = store.lock("addresses:aws").await.expect("lock");
    let again = tokio::time::timeout(Duration::from_millis(300), store.lock("addresses:aws")).await;
    assert!(again.is_err(), "a held lock is not taken twice");
    let other = tokio::time::timeout(Duration::from_secs(5), store.lock("artifact-blobs"))
        .await
        .expect("another name is free")
        .expect("lock");
    drop(other);
    drop(held);
    let _back = tokio::time::timeout(Duration::from_secs(5), store.lock("addresses:aws"))
        .await
        .expect("released when the guard dropped")
        .expect("lock");
}

fn chunk(run: &str, seq: u64, data: &str) -> Change {
    Change::Output {
        run: run.into(),
        seq,
        data: data.into(),
    }
}

/// Output chunks are stored beside their run, in order, each at most once (a repeat keeps
/// the first), atomically with the rest of their batch, and per run.
pub async fn output_chunks_are_stored_once_in_order(store: &dyn Datastore) {
    store
        .commit(vec![
            chunk("r1", 0, "one\n"),
            chunk("r1", 1, "two\n"),
            chunk("r2", 0, "other\n"),
        ])
        .await
        .expect("commit");
    store
        .commit(vec![chunk("r1", 1, "TWO AGAIN\n"), chunk("r1", 2, "three\n")])
        .await
        .expect("a repeat is ignored");
    let out = store.output("r1").await.expect("output");
    let got: Vec<(u64, &str)> = out.iter().map(|c| (c.seq, c.data.as_str())).collect();
    assert_eq!(got, [(0, "one\n"), (1, "two\n"), (2, "three\n")]);
    assert_eq!(store.output_next("r1").await.expect("next"), 3);
    assert_eq!(store.output_next("nope").await.expect("next"), 0);
    assert_eq!(store.output("r2").await.expect("output").len(), 1);
    assert!(store.output("nope").await.expect("output").is_empty());
    // A batch that fails stores none of its chunks.
    let d = deployment("out");
    store.commit(vec![Change::insert(&d)]).await.expect("insert");
    let failed = store.commit(vec![chunk("r3", 0, "lost\n"), Change::insert(&d)]).await;
    assert!(failed.is_err());
    assert!(store.output("r3").await.expect("output").is_empty());
}

/// A run keeps the tail of its output: at most OUTPUT_KEEP_BYTES and OUTPUT_KEEP_CHUNKS
/// once a trimming chunk (a multiple of OUTPUT_TRIM_EVERY) arrives; the newest chunks stay.
pub async fn output_keeps_the_tail_within_its_caps(store: &dyn Datastore) {
    let big = "x".repeat(40 * 1024);
    let changes = (0..=64u64).map(|i| chunk("big", i, &big)).collect();
    store.commit(changes).await.expect("commit");
    let out = store.output("big").await.expect("output");
    let bytes: u64 = out.iter().map(|c| c.data.len() as u64).sum();
    assert!(bytes <= crate::OUTPUT_KEEP_BYTES, "{bytes} bytes kept");
    assert!(
        bytes > crate::OUTPUT_KEEP_BYTES - 41 * 1024,
        "only what exceeds is dropped"
    );
    let seqs: Vec<u64> = out.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.last(), Some(&64), "the newest is kept");
    assert_eq!(store.output_next("big").await.expect("next"), 65);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a contiguous tail: {seqs:?}");
    // Tiny chunks: bounded by count.
    // The last is a trimming one.
    let n = crate::OUTPUT_KEEP_CHUNKS + crate::OUTPUT_TRIM_EVERY + 1;
    let changes = (0..n).map(|i| chunk("tiny", i, ".")).collect();
    store.commit(changes).await.expect("commit");
    let out = store.output("tiny").await.expect("output");
    assert_eq!(out.len() as u64, crate::OUTPUT_KEEP_CHUNKS);
    assert_eq!(out.last().map(|c| c.seq), Some(n - 1));
}

/// Run every contract check; `fresh` makes a new empty store for each.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Box<dyn Datastore>>,
{
    round_trip(&*fresh().await).await;
    duplicate_names_conflict_atomically(&*fresh().await).await;
    stale_updates_fail(&*fresh().await).await;
    terminated_servers_free_their_name(&*fresh().await).await;
    paging_covers_everything_once(&*fresh().await).await;
    selectors_and_filters(&*fresh().await).await;
    selector_patterns_are_literal_except_wildcards(&*fresh().await).await;
    sealed_and_audit(&*fresh().await).await;
    settings_are_set_once(&*fresh().await).await;
    locks_exclude(&*fresh().await).await;
    output_chunks_are_stored_once_in_order(&*fresh().await).await;
    output_keeps_the_tail_within_its_caps(&*fresh().await).await;
}
