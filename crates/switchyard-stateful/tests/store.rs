//! The store on a real SQLite file and a real PostgreSQL (127.0.0.1:5432, a database of
//! its own per test, dropped afterwards): migrations, all-or-nothing writes, SQLite's
//! batching writer, recovery of responses a dead gateway left running, retention, and
//! two replicas on one PostgreSQL.

use sqlx::Row;
use switchyard_stateful::store::{Backend, Store, StoreError, Val, Write};

mod common;
use common::{PgDatabase, SqliteFile, config};

fn insert_response(id: &str, status: &str, created_at: i64, lease_until: Option<i64>) -> Write {
    Write::one(
        "INSERT INTO responses (id, created_at, updated_at, status, model, request, lease_until) \
         VALUES ($1, $2, $2, $3, 'm', '{}', $4)",
        vec![
            id.into(),
            created_at.into(),
            status.into(),
            lease_until.into(),
        ],
    )
}

fn insert_item(response: &str, seq: i64) -> (String, Vec<Val>) {
    (
        "INSERT INTO response_items (response_id, seq, kind, item_id, item) \
         VALUES ($1, $2, 'output', $3, '{}')"
            .to_string(),
        vec![
            response.into(),
            seq.into(),
            format!("msg_{response}_{seq}").into(),
        ],
    )
}

async fn status(store: &Store, id: &str) -> Option<(String, Option<String>)> {
    store
        .fetch_optional(
            "SELECT status, error FROM responses WHERE id = $1",
            &[id.into()],
        )
        .await
        .unwrap()
        .map(|r| {
            (
                r.get::<String, _>("status"),
                r.get::<Option<String>, _>("error"),
            )
        })
}

async fn count(store: &Store, table: &str) -> i64 {
    store
        .fetch_optional(&format!("SELECT COUNT(*) AS n FROM {table}"), &[])
        .await
        .unwrap()
        .unwrap()
        .get::<i64, _>("n")
}

/// What both backends must do.
async fn writes_are_all_or_nothing(store: &Store) {
    let (sql, args) = insert_item("resp_a", 0);
    let n = store
        .write(insert_response("resp_a", "completed", 100, None).then(sql, args))
        .await
        .unwrap();
    assert_eq!(n, [1, 1]);
    // The second statement fails (an item of a response that does not exist): the
    // first is rolled back with it.
    let (sql, args) = insert_item("resp_missing", 0);
    let err = store
        .write(insert_response("resp_b", "completed", 100, None).then(sql, args))
        .await;
    assert!(matches!(err, Err(StoreError::Db(_))), "{err:?}");
    assert_eq!(
        status(store, "resp_b").await,
        None,
        "no half-written response"
    );
    assert_eq!(count(store, "response_items").await, 1);
    // Deleting a response deletes what belongs to it.
    store
        .write(Write::one(
            "DELETE FROM responses WHERE id = $1",
            vec!["resp_a".into()],
        ))
        .await
        .unwrap();
    assert_eq!(count(store, "response_items").await, 0);
}

/// Many writes at once all land (SQLite: one writer, batched commits), and a bad one
/// among them fails alone.
async fn concurrent_writes_all_land(store: &std::sync::Arc<Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("resp_c{i}");
            let (sql, args) = if i == 77 {
                insert_item("resp_nobody", 0)
            } else {
                insert_item(&id, 0)
            };
            store
                .write(insert_response(&id, "completed", 200, None).then(sql, args))
                .await
                .is_ok()
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.unwrap());
    }
    assert_eq!(ok, 199);
    assert_eq!(count(store, "responses").await, 199);
    assert_eq!(count(store, "response_items").await, 199);
}

async fn retention_purges_old_finished_objects(store: &Store) {
    let (sql, args) = insert_item("resp_old", 0);
    store
        .write(insert_response("resp_old", "completed", 10, None).then(sql, args))
        .await
        .unwrap();
    store
        .write(insert_response(
            "resp_old_running",
            "in_progress",
            10,
            Some(i64::MAX),
        ))
        .await
        .unwrap();
    store
        .write(Write::one(
            "INSERT INTO conversations (id, created_at, metadata) VALUES ($1, $2, '{}')",
            vec!["conv_old".into(), 10i64.into()],
        ))
        .await
        .unwrap();
    let items_before = count(store, "response_items").await;
    let (responses, conversations) = store.purge_before(50).await.unwrap();
    assert_eq!((responses, conversations), (1, 1));
    assert_eq!(status(store, "resp_old").await, None);
    assert_eq!(count(store, "response_items").await, items_before - 1);
    assert_eq!(
        status(store, "resp_old_running").await.unwrap().0,
        "in_progress",
        "a running response is never purged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_migrates_writes_atomically_batches_and_purges() {
    let file = SqliteFile::new("basics");
    let store = std::sync::Arc::new(Store::open(&config(&file.url()), 1000).await.unwrap());
    assert_eq!(store.backend(), Backend::Sqlite);
    store.ping().await.unwrap();
    writes_are_all_or_nothing(&store).await;
    concurrent_writes_all_land(&store).await;
    retention_purges_old_finished_objects(&store).await;
}

#[tokio::test]
async fn sqlite_fails_what_a_stopped_gateway_left_running() {
    let file = SqliteFile::new("recovery");
    let store = Store::open(&config(&file.url()), 1000).await.unwrap();
    for (id, state) in [
        ("resp_q", "queued"),
        ("resp_r", "in_progress"),
        ("resp_d", "completed"),
    ] {
        // Even a lease that has not run out: an embedded database has one gateway.
        store
            .write(insert_response(id, state, 1000, Some(i64::MAX)))
            .await
            .unwrap();
    }
    store.close().await;
    let store = Store::open(&config(&file.url()), 2000).await.unwrap();
    for id in ["resp_q", "resp_r"] {
        let (s, error) = status(&store, id).await.unwrap();
        assert_eq!(s, "failed", "{id}");
        let error: serde_json::Value = serde_json::from_str(&error.unwrap()).unwrap();
        assert_eq!(error["code"], "server_restarted");
    }
    assert_eq!(status(&store, "resp_d").await.unwrap().0, "completed");
}

#[tokio::test]
async fn an_in_memory_sqlite_store_keeps_its_data_across_connections() {
    let store = Store::open(&config("sqlite::memory:"), 0).await.unwrap();
    store
        .write(insert_response("resp_m", "completed", 1, None))
        .await
        .unwrap();
    assert_eq!(status(&store, "resp_m").await.unwrap().0, "completed");
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error() {
    for url in ["mysql://x", "", "redis://127.0.0.1"] {
        let err = Store::open(&config(url), 0).await.err().unwrap();
        assert!(matches!(err, StoreError::Config(_)), "{url}: {err}");
        assert!(err.to_string().contains("--database-url"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_migrates_once_for_replicas_and_writes_atomically() {
    let db = PgDatabase::new("basics").await;
    // Two replicas start together: the migrations run once, under PostgreSQL's lock.
    let cfg = config(&db.url());
    let (a, b) = tokio::join!(Store::open(&cfg, 1000), Store::open(&cfg, 1000));
    let (a, b) = (std::sync::Arc::new(a.unwrap()), b.unwrap());
    assert_eq!(a.backend(), Backend::Postgres);
    writes_are_all_or_nothing(&a).await;
    concurrent_writes_all_land(&a).await;
    // The other replica sees the same rows.
    assert_eq!(count(&b, "responses").await, 199);
    retention_purges_old_finished_objects(&b).await;
    let (size, _idle) = a.pool_use();
    assert!(size >= 1);
}

#[tokio::test]
async fn postgres_fails_only_responses_whose_replica_stopped_renewing_the_lease() {
    let db = PgDatabase::new("recovery").await;
    let store = Store::open(&config(&db.url()), 1000).await.unwrap();
    // A live replica's lease runs to 2000; a dead one's ran out at 900.
    store
        .write(insert_response("resp_live", "in_progress", 800, Some(2000)))
        .await
        .unwrap();
    store
        .write(insert_response("resp_dead", "in_progress", 800, Some(900)))
        .await
        .unwrap();
    // Another replica starts at 1000: only the abandoned one fails.
    let other = Store::open(&config(&db.url()), 1000).await.unwrap();
    assert_eq!(status(&other, "resp_dead").await.unwrap().0, "failed");
    assert_eq!(status(&other, "resp_live").await.unwrap().0, "in_progress");
    // Once its lease runs out unrenewed, the live one's replica is taken as dead too.
    assert_eq!(other.fail_abandoned(Some(2001), 2001).await.unwrap(), 1);
    assert_eq!(status(&store, "resp_live").await.unwrap().0, "failed");
}

/// SQLite has vector search compiled in (sqlite-vec, on every connection the pool
/// opens) and full-text search (FTS5); a PostgreSQL without pgvector opens anyway and
/// says what to install.
#[tokio::test]
async fn vector_search_is_there_or_says_what_is_missing() {
    let file = SqliteFile::new("vectors");
    let store = Store::open(&config(&file.url()), 0).await.unwrap();
    let version = store.vectors().unwrap();
    assert!(version.starts_with('v'), "{version}");
    let row = store
        .fetch_optional(
            "SELECT vec_distance_cosine(vec_f32('[1, 0]'), vec_f32('[0, 1]')) AS d",
            &[],
        )
        .await
        .unwrap()
        .unwrap();
    let d: f64 = sqlx::Row::get(&row, "d");
    assert!((d - 1.0).abs() < 1e-6, "{d}");
    store
        .write(Write::one(
            "CREATE VIRTUAL TABLE probe_fts USING fts5(text)",
            vec![],
        ))
        .await
        .unwrap();

    // The shared PostgreSQL of these machines has no pgvector.
    let db = PgDatabase::new("vectors").await;
    let pg = Store::open(&config(&db.url()), 0).await.unwrap();
    match pg.vectors() {
        Ok(v) => assert!(!v.is_empty()),
        Err(why) => assert!(why.contains("pgvector") && why.contains("CREATE EXTENSION")),
    }
}

/// Several processes (here: stores) opening one new SQLite file at once all start: one
/// that loses the race to create a migration's tables ("already exists") runs the
/// migrations again and finds it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_one_new_sqlite_file_at_once_all_start() {
    let file = SqliteFile::new("open-race");
    let url = file.url();
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::open(&config(&url), 0).await.map(|_| ()) })
    });
    for r in futures_util::future::join_all(opens).await {
        r.unwrap().unwrap();
    }
}
