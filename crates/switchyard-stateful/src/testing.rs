//! Test fixtures for suites that need a database of their own: a PostgreSQL database
//! created on the local server (127.0.0.1:5432, user `postgres`, as in CI) and
//! dropped when the fixture is.

use sqlx::{Connection, Executor};

/// The server's maintenance database, used to create and drop test databases.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL database of its own, dropped when the test ends.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    pub async fn new(test: &str) -> PgDatabase {
        sqlx::any::install_default_drivers();
        let name = format!("switchyard_store_{}_{test}", std::process::id());
        let mut admin = sqlx::AnyConnection::connect(ADMIN_URL).await.unwrap();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
            .await
            .unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        PgDatabase { name }
    }

    /// Drops the database now, closing every connection to it (a database that goes
    /// away under a running gateway).
    pub async fn remove(&self) {
        let mut admin = sqlx::AnyConnection::connect(ADMIN_URL).await.unwrap();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .unwrap();
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own runtime: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::AnyConnection::connect(ADMIN_URL).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}
