//! Files on a clock the test moves: an expired file is gone from reads and lists at
//! once, and the purge deletes its row and bytes; on SQLite and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use switchyard_stateful::files::blobs::{ByteStream, LocalBlobs};
use switchyard_stateful::files::{FileMeta, Files};
use switchyard_stateful::store::Store;

mod common;
use common::{PgDatabase, SqliteFile, config};

static NOW: AtomicI64 = AtomicI64::new(1_000_000);

fn now() -> i64 {
    NOW.load(Ordering::SeqCst)
}

fn bytes(text: &'static str) -> ByteStream<'static> {
    Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(
        text.as_bytes(),
    ))]))
}

async fn expiry_works(url: &str, dir: &std::path::Path) {
    let store = Arc::new(Store::open(&config(url), 0).await.unwrap());
    let files = Files::new(store, Arc::new(LocalBlobs::new(dir).unwrap()), 1 << 20).with_clock(now);
    let upload = |name: &str, expires: Option<&str>| {
        FileMeta::parse(Some(name), Some("user_data"), None, expires).unwrap()
    };
    let staged = files.stage(bytes("# short-lived")).await.unwrap();
    let brief = files
        .create("default", &upload("brief.md", Some("3600")), staged)
        .await
        .unwrap();
    let staged = files.stage(bytes("# kept")).await.unwrap();
    let kept = files
        .create("default", &upload("kept.md", None), staged)
        .await
        .unwrap();
    let id = brief["id"].as_str().unwrap();
    assert_eq!(brief["expires_at"], now() + 3600);
    assert!(dir.join(id).exists());

    NOW.fetch_add(3601, Ordering::SeqCst);
    assert_eq!(files.get(id, "default").await.unwrap_err().status, 404);
    let listed = files.list("default", None, None, None, None).await.unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![kept["id"].as_str().unwrap()]);
    assert_eq!(files.purge_expired().await.unwrap(), 1);
    assert!(!dir.join(id).exists(), "the bytes went with the row");
    assert_eq!(files.purge_expired().await.unwrap(), 0);
    // Another owner sees nothing of this one's.
    assert_eq!(
        files.get(kept["id"].as_str().unwrap(), "other").await.unwrap_err().status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_expire_on_sqlite_and_postgres() {
    let sqlite = SqliteFile::new("files");
    let dir = std::env::temp_dir().join(format!("switchyard-files-{}", std::process::id()));
    expiry_works(&sqlite.url(), &dir.join("sqlite")).await;
    let db = PgDatabase::new("files").await;
    expiry_works(&db.url(), &dir.join("postgres")).await;
    let _ = std::fs::remove_dir_all(&dir);
}
