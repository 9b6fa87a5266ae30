//! The Datastore contract on SQLite, in memory and on disk, plus durability across a reopen.

use stratus_store::contract;
use stratus_store::{Change, Datastore, SqliteStore, TypedStore};
use stratus_types::deployment::Deployment;

#[tokio::test]
async fn contract_in_memory() {
    contract::run_all(|| async { Box::new(SqliteStore::memory().await.expect("open")) as Box<dyn Datastore> }).await;
}

#[tokio::test]
async fn contract_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = std::sync::atomic::AtomicU32::new(0);
    let dir_path = dir.path().to_path_buf();
    contract::run_all(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = dir_path.join(format!("db{i}.sqlite"));
        async move { Box::new(SqliteStore::open(&path).await.expect("open")) as Box<dyn Datastore> }
    })
    .await;
}

#[tokio::test]
async fn reopening_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let d = contract::deployment("kept");
    {
        let store = SqliteStore::open(&path).await.expect("open");
        store.commit(vec![Change::insert(&d)]).await.expect("insert");
    }
    let store = SqliteStore::open(&path).await.expect("reopen");
    let back: Deployment = store
        .find_as("", "kept")
        .await
        .expect("find")
        .expect("kept across reopen");
    assert_eq!(back, d);
}
