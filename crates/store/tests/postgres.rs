//! The Datastore contract on a real PostgreSQL server (scripts/test-postgres.sh starts one and
//! sets STRATUS_TEST_POSTGRES), each run in databases of its own; plus what only PostgreSQL
//! has to show: writers on separate connections (replicas) racing on one resource, and a
//! second store migrating the same database at once.

use stratus_store::contract;
use stratus_store::testing::TestDatabase;
use stratus_store::{Change, Datastore, PostgresStore, StoreError, TypedStore};
use stratus_types::deployment::Deployment;

#[tokio::test]
async fn contract_on_postgres() {
    let dbs = std::sync::Mutex::new(vec![]);
    contract::run_all(|| async {
        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(&db.url, 4).await.expect("connect");
        dbs.lock().expect("lock").push(db);
        Box::new(store) as Box<dyn Datastore>
    })
    .await;
}

/// Two stores on one database, as two replicas: each sees the other's writes, and of two
/// updates of the same revision exactly one wins; concurrent first starts migrate once.
#[tokio::test]
async fn two_replicas_share_one_database() {
    let db = TestDatabase::create().await;
    let url = db.url.clone();
    let (a, b) = tokio::join!(PostgresStore::connect(&url, 4), PostgresStore::connect(&url, 4));
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    let d = contract::deployment("shared");
    a.commit(vec![Change::insert(&d)]).await.expect("insert");
    let seen: Deployment = b.find_as("", "shared").await.expect("find").expect("b sees a's write");
    assert_eq!(seen, d);
    // Both load revision 1 and write: one is stale.
    let (mut x, mut y) = (seen.clone(), seen);
    x.spec.description = "from a".into();
    y.spec.description = "from b".into();
    let now = chrono::Utc::now();
    let (ra, rb) = tokio::join!(
        a.commit(vec![Change::update(&mut x, now)]),
        b.commit(vec![Change::update(&mut y, now)])
    );
    assert!(
        matches!(
            (&ra, &rb),
            (Ok(()), Err(StoreError::Stale { .. })) | (Err(StoreError::Stale { .. }), Ok(()))
        ),
        "exactly one wins: {ra:?} {rb:?}"
    );
    // Many writers inserting the same name: one row.
    let mut tasks = vec![];
    for i in 0..8 {
        let store = if i % 2 == 0 { &a } else { &b };
        tasks.push(store.commit(vec![Change::insert(&contract::deployment("race"))]));
    }
    let results = futures_util::future::join_all(tasks).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.is_err())
            .all(|r| matches!(r, Err(StoreError::Conflict { .. }))),
        "{results:?}"
    );
    // A lock held through one replica's store holds the other's back until it is dropped.
    let held = a.lock("addresses:aws").await.expect("lock");
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), b.lock("addresses:aws")).await;
    assert!(waited.is_err(), "the other replica waits");
    drop(held);
    let _got = tokio::time::timeout(std::time::Duration::from_secs(5), b.lock("addresses:aws"))
        .await
        .expect("released across replicas")
        .expect("lock");
    drop((a, b));
}

/// A bad URL or an unreachable server is a clear error, not a hang (a server that is down is
/// retried for the pool's 10 s acquire timeout first).
#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["mysql://x@127.0.0.1/db", "postgres://postgres@127.0.0.1:1/none"] {
        let started = std::time::Instant::now();
        let e = PostgresStore::connect(url, 1).await.expect_err(url);
        assert!(!e.to_string().is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{url}");
    }
}

/// `stratus admin migrate-store`'s copy: everything a SQLite control plane holds reads the same
/// from PostgreSQL afterwards (resources, tag selectors, sealed values, audit, settings, runs'
/// output), and a
/// second copy into the now non-empty database is refused and changes nothing.
#[tokio::test]
async fn a_sqlite_control_plane_moves_to_postgres_whole() {
    use stratus_store::{AuditQuery, Kind, Query, Sealed};
    use stratus_types::audit::AuditEntry;
    use stratus_types::server::Server;
    let dir = tempfile::tempdir().expect("tmp");
    let from = stratus_store::SqliteStore::open(&dir.path().join("s.db"))
        .await
        .expect("sqlite");
    let dep = contract::deployment("prod");
    let mut changes = vec![Change::insert(&dep)];
    for i in 0..30 {
        let tags: &[&str] = if i % 3 == 0 {
            &["lb:pool=www", "role:tier=web"]
        } else {
            &["role:tier=db"]
        };
        changes.push(Change::insert(&contract::server(&format!("s-{i}"), "prod", tags)));
    }
    changes.push(Change::PutSealed {
        id: "cred-1".into(),
        sealed: Sealed {
            key_id: "k1".into(),
            nonce: vec![7; 24],
            ciphertext: vec![1, 2, 3, 255],
        },
    });
    for action in ["server.launch", "credential.create", "server.terminate"] {
        changes.push(Change::Audit(AuditEntry {
            id: stratus_types::AuditId::new(),
            at: chrono::Utc::now(),
            actor: "admin".into(),
            action: action.into(),
            target: "server/prod/s-1".into(),
            detail: serde_json::json!({ "n": 1 }),
        }));
    }
    for seq in 0..3 {
        changes.push(Change::Output {
            run: "run-1".into(),
            seq,
            data: format!("line {seq}\n"),
        });
    }
    from.commit(changes).await.expect("populate");
    from.init_setting("instance_id", "abc-123").await.expect("setting");

    let db = TestDatabase::create().await;
    let url = db.url.clone();
    let to = PostgresStore::connect(&url, 4).await.expect("postgres");
    let copied = stratus_store::migrate::sqlite_to_postgres(&from, &to)
        .await
        .expect("migrate");
    assert_eq!(
        (
            copied.resources,
            copied.tags,
            copied.secrets,
            copied.audit,
            copied.settings,
            copied.output
        ),
        (31, 40, 1, 3, 1, 3)
    );
    assert_eq!(
        to.output("run-1").await.expect("b"),
        from.output("run-1").await.expect("a"),
        "runs' output chunks"
    );

    for kind in Kind::ALL {
        let q = Query {
            limit: 1000,
            ..Default::default()
        };
        let (a, b) = (
            from.list(kind, &q).await.expect("a"),
            to.list(kind, &q).await.expect("b"),
        );
        assert_eq!(a.items, b.items, "{kind:?}");
    }
    let web = Query {
        selector: Some("lb:pool=www,role:tier=web".parse().expect("selector")),
        limit: 1000,
        ..Default::default()
    };
    let names = |p: stratus_store::Page| {
        p.items
            .iter()
            .map(|r| {
                serde_json::from_value::<Server>(r.body.clone())
                    .expect("server")
                    .name
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let want = names(from.list(Kind::Server, &web).await.expect("a"));
    assert_eq!(want.len(), 10);
    assert_eq!(names(to.list(Kind::Server, &web).await.expect("b")), want);
    assert_eq!(
        to.sealed("cred-1").await.expect("b"),
        from.sealed("cred-1").await.expect("a")
    );
    let q = AuditQuery::default();
    assert_eq!(to.audit(&q).await.expect("b"), from.audit(&q).await.expect("a"));
    assert_eq!(to.setting("instance_id").await.expect("b").as_deref(), Some("abc-123"));

    let again = stratus_store::migrate::sqlite_to_postgres(&from, &to).await;
    assert!(matches!(again, Err(StoreError::NotEmpty(_))), "{again:?}");
    assert_eq!(to.audit(&q).await.expect("b").len(), 3, "nothing was added");
    drop(to);
}
