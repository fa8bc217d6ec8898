//! Fixtures shared by the stateful tests: a SQLite file of its own and a PostgreSQL
//! database of its own per test, removed when the test ends.
#![allow(dead_code)]

use std::time::Duration;

use sqlx::{Connection, Executor};
use switchyard_stateful::store::StoreConfig;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_string(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    }
}

/// A SQLite file in a directory of its own, removed when dropped.
pub struct SqliteFile(std::path::PathBuf);

impl SqliteFile {
    pub fn new(test: &str) -> SqliteFile {
        let dir =
            std::env::temp_dir().join(format!("switchyard-store-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SqliteFile(dir)
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.0.join("state.db").display())
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
