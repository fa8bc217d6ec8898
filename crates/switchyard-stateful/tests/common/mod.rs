//! Fixtures shared by the stateful tests: a SQLite file of its own, and (from the
//! library) a PostgreSQL database of its own per test, removed when the test ends.
#![allow(dead_code)]

use std::time::Duration;

use switchyard_stateful::store::StoreConfig;
pub use switchyard_stateful::testing::PgDatabase;

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
