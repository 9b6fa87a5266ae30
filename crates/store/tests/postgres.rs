//! The Datastore contract on a real PostgreSQL server (scripts/test-postgres.sh starts one and
//! sets STRATUS_TEST_POSTGRES), each run in databases of its own; plus what only PostgreSQL
//! has to show: writers on separate connections (replicas) racing on one resource, and a
//! second store migrating the same database at once.

use std::sync::Mutex;

use sqlx::Connection;
use stratus_store::contract;
use stratus_store::{Change, Datastore, PostgresStore, StoreError, TypedStore};
use stratus_types::deployment::Deployment;

/// The server's URL; the tests are not skipped without it.
fn server_url() -> String {
    std::env::var("STRATUS_TEST_POSTGRES").expect(
        "STRATUS_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts a private PostgreSQL \
         server (scripts/test-postgres.sh) and sets it",
    )
}

/// Fresh databases `stratus_t_<random>`, dropped by `drop_all` (and by the next
/// scripts/test-postgres.sh if a test dies first).
struct Databases {
    made: Mutex<Vec<String>>,
}

impl Databases {
    fn new() -> Self {
        Self { made: Mutex::default() }
    }

    async fn fresh(&self) -> String {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        let name = format!("stratus_t_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
        let mut admin = sqlx::PgConnection::connect(&server_url()).await.expect("connect");
        // The name is ours (hex digits), not input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create database");
        self.made.lock().expect("lock").push(name.clone());
        let base = server_url();
        let (root, _) = base.rsplit_once('/').expect("a URL with a database");
        format!("{root}/{name}")
    }

    async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.made.lock().expect("lock"));
        let mut admin = sqlx::PgConnection::connect(&server_url()).await.expect("connect");
        for n in names {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{n}\" WITH (FORCE)")))
                .execute(&mut admin)
                .await
                .expect("drop database");
        }
    }
}

#[tokio::test]
async fn contract_on_postgres() {
    let dbs = Databases::new();
    contract::run_all(|| async {
        let url = dbs.fresh().await;
        Box::new(PostgresStore::connect(&url, 4).await.expect("connect")) as Box<dyn Datastore>
    })
    .await;
    dbs.drop_all().await;
}

/// Two stores on one database, as two replicas: each sees the other's writes, and of two
/// updates of the same revision exactly one wins; concurrent first starts migrate once.
#[tokio::test]
async fn two_replicas_share_one_database() {
    let dbs = Databases::new();
    let url = dbs.fresh().await;
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
    drop((a, b));
    dbs.drop_all().await;
}

/// A bad URL or an unreachable server is a clear error, not a hang (a server that is down is
/// retried for the pool's 10 s acquire timeout first).
#[tokio::test]
async fn bad_urls_are_refused() {
    for url in [
        "mysql://x@127.0.0.1/db",
        "not a url",
        "postgres://postgres@127.0.0.1:1/none",
    ] {
        let started = std::time::Instant::now();
        let e = PostgresStore::connect(url, 1).await.expect_err(url);
        assert!(!e.to_string().is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{url}");
    }
}
