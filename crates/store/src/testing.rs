//! Throw-away PostgreSQL databases for tests of any crate (feature `contract`), on the server
//! `scripts/test-postgres.sh` starts and names in `STRATUS_TEST_POSTGRES`.

use sqlx::Connection;

/// The tests' PostgreSQL server. Tests that need it are not skipped without it.
pub fn server_url() -> String {
    std::env::var("STRATUS_TEST_POSTGRES").expect(
        "STRATUS_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts a private PostgreSQL \
         server (scripts/test-postgres.sh) and sets it",
    )
}

/// A fresh database `stratus_t_<random>`, dropped (with its connections) when this is dropped;
/// one a killed test leaves behind goes at the next `scripts/test-postgres.sh`.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        let name = format!("stratus_t_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
        let server = server_url();
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .expect("connect to the test server");
        // The name is ours (hex digits), not input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let (root, _) = server.rsplit_once('/').expect("a URL with a database");
        Self {
            url: format!("{root}/{name}"),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&server_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}
