//! The store a benchmark's control plane uses: SQLite on disk by default; with
//! `STRATUS_BENCH_STORE=postgres` a fresh database on the tests' PostgreSQL server
//! (`scripts/test-postgres.sh`, STRATUS_TEST_POSTGRES), dropped at the end.

#![allow(dead_code)]

use stratus_store::testing::TestDatabase;

/// The database to keep, and the store's description for the figures.
pub async fn choose(config: &mut stratus_server::Config) -> (Option<TestDatabase>, &'static str) {
    match std::env::var("STRATUS_BENCH_STORE").as_deref() {
        Ok("postgres") => {
            let db = TestDatabase::create().await;
            config.store_url = Some(db.url.clone());
            (Some(db), "PostgreSQL 15 (local, fsync off)")
        }
        Ok("sqlite") | Err(_) => (None, "SQLite on disk"),
        Ok(other) => panic!("STRATUS_BENCH_STORE={other}: give sqlite or postgres"),
    }
}
