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
        files
            .get(kept["id"].as_str().unwrap(), "other")
            .await
            .unwrap_err()
            .status,
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

/// An `input_file` part is sent to the engine as the file's text (a PDF's text layer
/// here), headed by its name, and stored as the part it was; an unknown file is a 404
/// naming the part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_files_are_sent_as_their_text() {
    let sim = switchyard_sim::spawn(switchyard_sim::SimConfig {
        time_scale: 100.0,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-input-files-{}", std::process::id()));
    let store = Arc::new(Store::open(&config("sqlite::memory:"), 0).await.unwrap());
    let files = Files::new(
        store.clone(),
        Arc::new(LocalBlobs::new(&dir).unwrap()),
        1 << 20,
    );
    let pdf = switchyard_stateful::testing::tiny_pdf("The launch code is tangerine.");
    let staged = files
        .stage(Box::pin(futures_util::stream::iter([Ok(Bytes::from(pdf))])))
        .await
        .unwrap();
    let meta = FileMeta::parse(Some("memo.pdf"), Some("user_data"), None, None).unwrap();
    let file = files.create("default", &meta, staged).await.unwrap();
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let engine = common::SimEngine {
        http: reqwest::Client::new(),
        url: sim.url(),
        sent: sent.clone(),
    };
    let svc = switchyard_stateful::responses::service::Responses::new(store, Arc::new(engine))
        .with_files(files);
    let model = switchyard_sim::SimConfig::default().served_model_name[0].clone();
    let body = serde_json::json!({"model": model, "max_output_tokens": 16, "input": [{
    "role": "user", "content": [
        {"type": "input_text", "text": "What is the code?"},
        {"type": "input_file", "file_id": file["id"]},
    ]}]});
    let r = common::create_json(&svc, &body).await;
    let messages = sent.lock().unwrap().last().unwrap().0["messages"].to_string();
    assert!(messages.contains("[memo.pdf]"), "{messages}");
    assert!(messages.contains("launch code is tangerine"), "{messages}");
    let items = svc
        .input_items(r["id"].as_str().unwrap(), "default", None, None, None)
        .await
        .unwrap();
    assert_eq!(items["data"][0]["content"][1]["type"], "input_file");
    let mut missing = body.clone();
    missing["input"][0]["content"][1]["file_id"] = "file-missing".into();
    let e = svc.create(&missing, "default").await.err().unwrap();
    assert_eq!(
        (e.status, e.param.as_deref()),
        (404, Some("input[0].content[1].file_id"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
