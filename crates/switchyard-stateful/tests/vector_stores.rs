//! Vector stores against the simulator's embeddings, on a SQLite file of their own:
//! ingestion (parse, chunk, embed, store) and its counts, hybrid search with filters,
//! isolation between stores, deleting files, batches (cancel, and a restart in the
//! middle of one), files that fail, expiry, and every bad input. PostgreSQL without
//! pgvector refuses vector stores with a 503 that says what to install.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use serde_json::{Value, json};
use switchyard_stateful::files::blobs::{ByteStream, LocalBlobs};
use switchyard_stateful::files::{FileMeta, Files};
use switchyard_stateful::store::Store;
use switchyard_stateful::vector::VectorStores;
use switchyard_stateful::vector::embed::Embedder;
use switchyard_stateful::vector::search::{Mode, SearchOptions};

mod common;
use common::{PgDatabase, SimEmbedder, SqliteFile, config};

static NOW: AtomicI64 = AtomicI64::new(2_000_000);

fn now() -> i64 {
    NOW.load(Ordering::SeqCst)
}

const OWNER: &str = "default";

const VOLCANO: &str = "Volcanoes form where molten rock rises through the crust. An eruption \
    sends lava, ash and gas into the air; basalt lava flows far before it cools into dark rock.";
const BREAD: &str = "Sourdough bread rises thanks to a starter of wild yeast and lactic bacteria. \
    Bakers feed the starter with flour and water, then knead, proof and bake the dough.";
const TRAINS: &str = "Night trains carry sleeping passengers between distant cities. The \
    locomotive pulls couchettes and sleeper cars along the track while the timetable keeps \
    every stop on schedule.";

struct Bed {
    _sim: switchyard_sim::SimHandle,
    _db: SqliteFile,
    _blobs: tempdir::Dir,
    store: Arc<Store>,
    files: Files,
    vs: VectorStores,
    sim_url: String,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("switchyard-vs-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn sim() -> switchyard_sim::SimHandle {
    switchyard_sim::spawn(switchyard_sim::SimConfig {
        instant: true,
        embedding_dim: 256,
        served_model_name: vec!["embedder".into()],
        ..switchyard_sim::SimConfig::default()
    })
    .await
    .unwrap()
}

impl Bed {
    async fn new(test: &str) -> Bed {
        let db = SqliteFile::new(test);
        let url = db.url();
        Bed::at(&url, db, test).await
    }

    /// On the database at `url` (kept alive by `db`).
    async fn at(url: &str, db: SqliteFile, test: &str) -> Bed {
        let sim = sim().await;
        let blobs = tempdir::Dir::new(test);
        let (store, files, vs) =
            open(url, &blobs.0, SimEmbedder::new(&sim.url(), "embedder")).await;
        Bed {
            sim_url: sim.url(),
            _sim: sim,
            _db: db,
            _blobs: blobs,
            store,
            files,
            vs,
        }
    }

    async fn upload(&self, name: &str, purpose: &str, bytes: Vec<u8>) -> String {
        let stream: ByteStream<'static> =
            Box::pin(futures_util::stream::iter([Ok(Bytes::from(bytes))]));
        let staged = self.files.stage(stream).await.unwrap();
        let meta = FileMeta::parse(Some(name), Some(purpose), None, None).unwrap();
        let f = self.files.create(OWNER, &meta, staged).await.unwrap();
        f["id"].as_str().unwrap().to_string()
    }

    async fn text(&self, name: &str, text: &str) -> String {
        self.upload(name, "assistants", text.as_bytes().to_vec())
            .await
    }

    async fn chunks(&self, file_id: &str) -> i64 {
        let r = self
            .store
            .fetch_optional(
                "SELECT COUNT(*) AS n FROM vector_store_chunks WHERE file_id = $1",
                &[file_id.into()],
            )
            .await
            .unwrap()
            .unwrap();
        sqlx::Row::get(&r, "n")
    }

    /// SQLite: the vectors in the vec0 index of the test embedder's dimension.
    async fn vectors(&self) -> i64 {
        let r = self
            .store
            .fetch_optional("SELECT COUNT(*) AS n FROM vector_store_vec_256", &[])
            .await
            .unwrap()
            .unwrap();
        sqlx::Row::get(&r, "n")
    }

    async fn search(&self, store: &str, body: Value) -> Value {
        self.vs.search_api(OWNER, store, &body).await.unwrap()
    }
}

async fn open(
    url: &str,
    blobs: &std::path::Path,
    embedder: SimEmbedder,
) -> (Arc<Store>, Files, VectorStores) {
    let store = Arc::new(Store::open(&config(url), 0).await.unwrap());
    let files = Files::new(
        store.clone(),
        Arc::new(LocalBlobs::new(blobs).unwrap()),
        1 << 20,
    )
    .with_clock(now);
    let embedder: Arc<dyn Embedder> = Arc::new(embedder);
    let vs = VectorStores::new(store.clone(), files.clone(), Some(embedder)).with_clock(now);
    (store, files, vs)
}

fn file_ids(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["file_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_store_ingests_its_files_and_finds_them_by_meaning_and_words() {
    ingest_and_search(Bed::new("ingest").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_postgres_with_pgvector_and_its_hnsw_index() {
    let pg = tokio::task::spawn_blocking(switchyard_stateful::testing::PgVectorServer::start)
        .await
        .unwrap();
    let b = Bed::at(pg.url(), SqliteFile::new("pg-unused"), "ingest-pg").await;
    assert!(b.store.vectors().is_ok(), "{:?}", b.store.vectors());
    ingest_and_search(b).await;
    drop(pg);
}

async fn ingest_and_search(b: Bed) {
    let pg = b.store.backend() == switchyard_stateful::store::Backend::Postgres;
    let volcano = b.text("volcano.md", VOLCANO).await;
    let bread = b.text("bread.txt", BREAD).await;
    let trains = b
        .text(
            "trains.html",
            &format!("<html><body><h1>Trains</h1><p>{TRAINS}</p></body></html>"),
        )
        .await;
    let vs =
        b.vs.create(
            OWNER,
            &json!({"name": "notes", "file_ids": [volcano, bread], "metadata": {"team": "docs"}}),
        )
        .await
        .unwrap();
    let id = vs["id"].as_str().unwrap();
    assert!(id.starts_with("vs_"));
    assert_eq!(vs["status"], "in_progress");
    assert_eq!(vs["file_counts"]["in_progress"], 2);
    assert_eq!(vs["file_counts"]["total"], 2);
    assert_eq!(vs["metadata"]["team"], "docs");

    // A store still ingesting answers from what is ready: nothing yet.
    let early = b.search(id, json!({"query": "lava eruption"})).await;
    assert_eq!(early["data"].as_array().unwrap().len(), 0);

    assert_eq!(b.vs.ingest_all().await.unwrap(), 2);
    let vs = b.vs.get(OWNER, id).await.unwrap();
    assert_eq!(vs["status"], "completed", "{vs}");
    assert_eq!(vs["file_counts"]["completed"], 2);
    assert!(vs["usage_bytes"].as_i64().unwrap() > (VOLCANO.len() + BREAD.len()) as i64);

    let f =
        b.vs.add_file(
            OWNER,
            id,
            &json!({"file_id": trains, "attributes": {"kind": "travel", "year": 2024}}),
        )
        .await
        .unwrap();
    assert_eq!(f["status"], "in_progress");
    assert_eq!(f["object"], "vector_store.file");
    assert_eq!(
        f["chunking_strategy"]["static"]["max_chunk_size_tokens"],
        800
    );
    b.vs.ingest_all().await.unwrap();
    let f = b.vs.get_file(OWNER, id, &trains).await.unwrap();
    assert_eq!(f["status"], "completed");
    assert_eq!(f["attributes"]["year"], 2024);
    // HTML is searched as text.
    let content = b.vs.file_content(OWNER, id, &trains).await.unwrap();
    let text = content["data"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("couchettes") && !text.contains("<p>"),
        "{text}"
    );

    for (q, want) in [
        ("lava and basalt from an eruption", &volcano),
        ("how do bakers feed a sourdough starter", &bread),
        ("sleeper cars on the night train", &trains),
    ] {
        let r = b
            .search(id, json!({"query": q, "max_num_results": 3}))
            .await;
        assert_eq!(file_ids(&r)[0], want.as_str(), "{q}: {r}");
        let top = &r["data"][0];
        let s = top["score"].as_f64().unwrap();
        assert!(s > 0.0 && s <= 1.0, "{r}");
        assert!(top["filename"].as_str().unwrap().contains('.'));
        assert_eq!(top["content"][0]["type"], "text");
        assert_eq!(r["search_query"][0], q);
    }
    // Scores are in order; a threshold drops the weak ones.
    let all = b
        .search(id, json!({"query": "lava eruption", "max_num_results": 10}))
        .await;
    let scores: Vec<f64> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let top = b
        .search(id, json!({"query": "lava eruption", "ranking_options": {"score_threshold": scores[0] - 1e-9}}))
        .await;
    assert_eq!(file_ids(&top), vec![volcano.as_str()]);
    // ranker none: cosine similarity of the dense list alone.
    let dense = b
        .search(
            id,
            json!({"query": "lava eruption", "ranking_options": {"ranker": "none"}}),
        )
        .await;
    assert_eq!(file_ids(&dense)[0], volcano);
    // Several queries, and the rewritten query shown.
    let many = b
        .search(id, json!({"query": ["What is a starter?", "Where does lava come from?"], "rewrite_query": true}))
        .await;
    assert_eq!(many["search_query"], json!(["starter", "lava come"]));
    let found = file_ids(&many);
    assert!(
        found.contains(&bread.as_str()) && found.contains(&volcano.as_str()),
        "{many}"
    );
    // Filters on attributes.
    let travel = b
        .search(
            id,
            json!({"query": "lava", "filters": {"type": "eq", "key": "kind", "value": "travel"}}),
        )
        .await;
    assert_eq!(file_ids(&travel), vec![trains.as_str()]);
    let none = b
        .search(
            id,
            json!({"query": "lava", "filters": {"type": "and", "filters": [
                {"type": "eq", "key": "kind", "value": "travel"},
                {"type": "lt", "key": "year", "value": 2000}
            ]}}),
        )
        .await;
    assert!(none["data"].as_array().unwrap().is_empty());

    // Another store never answers with this one's chunks.
    let other =
        b.vs.create(OWNER, &json!({"file_ids": [trains]}))
            .await
            .unwrap();
    let other_id = other["id"].as_str().unwrap();
    b.vs.ingest_all().await.unwrap();
    let r = b
        .search(other_id, json!({"query": "lava basalt eruption sourdough"}))
        .await;
    assert_eq!(
        file_ids(&r).iter().filter(|f| **f != trains).count(),
        0,
        "{r}"
    );

    // Lists, modify, and another owner sees nothing.
    let list = b.vs.list(OWNER, None, None, None, None).await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(list["data"][0]["id"], other_id, "newest first");
    let page =
        b.vs.list(OWNER, None, None, Some(1), Some("asc"))
            .await
            .unwrap();
    assert_eq!(page["data"][0]["id"], id);
    assert_eq!(page["has_more"], true);
    let next =
        b.vs.list(OWNER, Some(id), None, Some(1), Some("asc"))
            .await
            .unwrap();
    assert_eq!(next["data"][0]["id"], other_id);
    assert_eq!(next["has_more"], false);
    let back =
        b.vs.list(OWNER, None, Some(other_id), Some(1), Some("asc"))
            .await
            .unwrap();
    assert_eq!(back["data"][0]["id"], id);
    let files =
        b.vs.list_files(OWNER, id, None, Some("completed"), None, None, None, None)
            .await
            .unwrap();
    assert_eq!(files["data"].as_array().unwrap().len(), 3);
    let renamed =
        b.vs.modify(
            OWNER,
            id,
            &json!({"name": "renamed", "metadata": {"k": "v"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (renamed["name"].as_str(), renamed["metadata"]["k"].as_str()),
        (Some("renamed"), Some("v"))
    );
    assert_eq!(b.vs.get("someone-else", id).await.unwrap_err().status, 404);
    assert_eq!(
        b.vs.search_api("someone-else", id, &json!({"query": "lava"}))
            .await
            .unwrap_err()
            .status,
        404
    );

    if pg {
        let r = b
            .store
            .fetch_all(
                "SELECT indexname::text AS n FROM pg_indexes WHERE indexname = 'vector_store_chunks_hnsw_256'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "the HNSW index of 256-dimension chunks");
    }
    // Removing a file from a store removes its chunks from that store only.
    b.vs.delete_file(OWNER, id, &trains).await.unwrap();
    let r = b.search(id, json!({"query": "night trains sleeper"})).await;
    assert!(!file_ids(&r).contains(&trains.as_str()));
    assert!(b.chunks(&trains).await > 0, "still in the other store");
    let deleted = b.vs.delete(OWNER, other_id).await.unwrap();
    assert_eq!(deleted["deleted"], true);
    assert_eq!(b.chunks(&trains).await, 0);
    assert_eq!(b.vs.get(OWNER, other_id).await.unwrap_err().status, 404);
}

/// SQLite's nearest-neighbour search applies the attribute filter inside its scan: a
/// file that passes the filter is found even when many closer chunks of other files
/// do not pass it. And a database whose chunks predate the vec0 index gets one, built
/// from the chunks, at its first search.
#[tokio::test]
async fn filters_apply_inside_the_nearest_neighbour_search() {
    knn_filter(Bed::new("knn-filter").await).await;
}

/// The same on PostgreSQL: pgvector's iterative index scan keeps going until the
/// filtered search has its k results.
#[tokio::test]
async fn filters_apply_inside_the_nearest_neighbour_search_on_postgres() {
    let pg = tokio::task::spawn_blocking(switchyard_stateful::testing::PgVectorServer::start)
        .await
        .unwrap();
    knn_filter(Bed::at(pg.url(), SqliteFile::new("pg-unused-knn"), "knn-pg").await).await;
}

async fn knn_filter(b: Bed) {
    let lava = "Lava flows from the volcano after the eruption. ".repeat(1000);
    let noise = b.text("lava.txt", &lava).await;
    let target = b
        .text("bread.txt", "Bakers feed the sourdough starter with flour.")
        .await;
    let vs = b.vs.create(OWNER, &json!({})).await.unwrap();
    let id = vs["id"].as_str().unwrap().to_string();
    let small = json!({"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}});
    b.vs.add_file(
        OWNER,
        &id,
        &json!({"file_id": noise, "chunking_strategy": small}),
    )
    .await
    .unwrap();
    b.vs.add_file(
        OWNER,
        &id,
        &json!({"file_id": target, "attributes": {"kind": "kitchen"}}),
    )
    .await
    .unwrap();
    b.vs.ingest_all().await.unwrap();
    assert!(
        b.chunks(&noise).await > 60,
        "more lava chunks than the search's depth"
    );
    let query = json!({
        "query": "lava from the volcano eruption",
        "max_num_results": 1,
        "ranking_options": {"ranker": "none"},
        "filters": {"type": "eq", "key": "kind", "value": "kitchen"},
    });
    assert_eq!(
        file_ids(&b.search(&id, query.clone()).await),
        vec![target.as_str()]
    );

    if b.store.backend() == switchyard_stateful::store::Backend::Postgres {
        return;
    }
    // Without its index (a database from before it): rebuilt at the next search.
    b.store
        .write(switchyard_stateful::store::Write::one(
            "DROP TABLE vector_store_vec_256",
            vec![],
        ))
        .await
        .unwrap();
    let embedder: Arc<dyn Embedder> = Arc::new(SimEmbedder::new(&b.sim_url, "embedder"));
    let fresh = VectorStores::new(b.store.clone(), b.files.clone(), Some(embedder)).with_clock(now);
    let found = fresh.search_api(OWNER, &id, &query).await.unwrap();
    assert_eq!(file_ids(&found), vec![target.as_str()]);
    let unfiltered = fresh
        .search_api(OWNER, &id, &json!({"query": "lava from the volcano eruption", "ranking_options": {"ranker": "none"}}))
        .await
        .unwrap();
    assert_eq!(file_ids(&unfiltered)[0], noise.as_str());
}

/// In a large table, keyword search leaves out the terms in more than half of the
/// chunks (they weigh nothing in BM25, and matching them means ranking every chunk): a
/// query of a common and a rare term matches the rare term's chunks only; a query of
/// common terms alone keeps them. (The threshold is lowered to this test's 12 chunks.)
#[tokio::test]
async fn common_terms_are_left_out_of_keyword_search() {
    common_terms(Bed::new("common-terms").await).await;
}

#[tokio::test]
async fn common_terms_on_postgres() {
    let pg = tokio::task::spawn_blocking(switchyard_stateful::testing::PgVectorServer::start)
        .await
        .unwrap();
    common_terms(Bed::at(pg.url(), SqliteFile::new("pg-unused-common"), "common-pg").await).await;
}

async fn common_terms(b: Bed) {
    let mut ids = Vec::new();
    for i in 0..12 {
        let rare = if i >= 10 {
            " with a rare xylophone"
        } else {
            ""
        };
        ids.push(
            b.text(
                &format!("note{i}.txt"),
                &format!("A common harbour note number {i}{rare}."),
            )
            .await,
        );
    }
    let vs = b.vs.create(OWNER, &json!({"file_ids": ids})).await.unwrap();
    let id = vs["id"].as_str().unwrap().to_string();
    b.vs.ingest_all().await.unwrap();
    // The planner's statistics are PostgreSQL's term counts (ingestion refreshes them
    // every 5000 chunks).
    if b.store.backend() == switchyard_stateful::store::Backend::Postgres {
        b.store
            .write(switchyard_stateful::store::Write::one(
                "ANALYZE vector_store_chunks",
                vec![],
            ))
            .await
            .unwrap();
    }
    let embedder: Arc<dyn Embedder> = Arc::new(SimEmbedder::new(&b.sim_url, "embedder"));
    let keyword = |vs: &VectorStores, q: &'static str| {
        let vs = vs.clone();
        let id = id.clone();
        async move {
            let opts = SearchOptions {
                max_results: 50,
                mode: Mode::Keyword,
                ..SearchOptions::default()
            };
            let (_, hits) = vs
                .search(OWNER, &[id], &[q.to_string()], &opts, "query")
                .await
                .unwrap();
            let mut files: Vec<String> = hits.into_iter().map(|h| h.file_id).collect();
            files.sort();
            files
        }
    };
    let mut rare = ids[10..].to_vec();
    rare.sort();
    let all = {
        let mut all = ids.clone();
        all.sort();
        all
    };
    // The default threshold (10 000 chunks): every term counts.
    assert_eq!(keyword(&b.vs, "harbour xylophone").await, all);
    let large = VectorStores::new(b.store.clone(), b.files.clone(), Some(embedder))
        .with_clock(now)
        .with_common_terms_from(10);
    assert_eq!(keyword(&large, "harbour xylophone").await, rare);
    assert_eq!(keyword(&large, "xylophone").await, rare);
    assert_eq!(
        keyword(&large, "common harbour").await,
        all,
        "all common: kept"
    );
}

#[tokio::test]
async fn deleting_a_file_removes_its_chunks_from_every_store() {
    let b = Bed::new("delete").await;
    let volcano = b.text("volcano.md", VOLCANO).await;
    let one =
        b.vs.create(OWNER, &json!({"file_ids": [volcano]}))
            .await
            .unwrap();
    let two =
        b.vs.create(OWNER, &json!({"file_ids": [volcano]}))
            .await
            .unwrap();
    b.vs.ingest_all().await.unwrap();
    assert!(b.chunks(&volcano).await >= 2);
    assert_eq!(b.vectors().await, b.chunks(&volcano).await);
    b.files.delete(&volcano, OWNER).await.unwrap();
    assert_eq!(b.chunks(&volcano).await, 0);
    assert_eq!(b.vectors().await, 0, "the vec0 index loses them too");
    for vs in [&one, &two] {
        let id = vs["id"].as_str().unwrap();
        let v = b.vs.get(OWNER, id).await.unwrap();
        assert_eq!(v["file_counts"]["total"], 0, "{v}");
        assert!(
            b.search(id, json!({"query": "lava"})).await["data"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn files_that_cannot_be_read_fail_and_the_rest_complete() {
    let b = Bed::new("failures").await;
    let good = b.text("volcano.md", VOLCANO).await;
    let pdf = b
        .upload(
            "broken.pdf",
            "assistants",
            b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage".to_vec(),
        )
        .await;
    let binary = b
        .upload("weights.bin", "fine-tune", vec![0, 159, 146, 150, 1, 2, 3])
        .await;
    let real_pdf = b
        .upload(
            "paper.pdf",
            "assistants",
            switchyard_stateful::testing::tiny_pdf("Glaciers carve valleys"),
        )
        .await;
    let vs =
        b.vs.create(OWNER, &json!({"file_ids": [good, pdf, binary, real_pdf]}))
            .await
            .unwrap();
    let id = vs["id"].as_str().unwrap();
    b.vs.ingest_all().await.unwrap();
    let v = b.vs.get(OWNER, id).await.unwrap();
    assert_eq!(
        v["file_counts"],
        json!({"in_progress": 0, "completed": 2, "failed": 2, "cancelled": 0, "total": 4})
    );
    assert_eq!(v["status"], "completed");
    let broken = b.vs.get_file(OWNER, id, &pdf).await.unwrap();
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["last_error"]["code"], "invalid_file");
    let bin = b.vs.get_file(OWNER, id, &binary).await.unwrap();
    assert_eq!(bin["last_error"]["code"], "unsupported_file");
    assert!(
        bin["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("supported: txt"),
        "{bin}"
    );
    let failed =
        b.vs.list_files(OWNER, id, None, Some("failed"), None, None, None, None)
            .await
            .unwrap();
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);
    // The PDF's text layer is searchable.
    let r = b.search(id, json!({"query": "glaciers valleys"})).await;
    assert_eq!(file_ids(&r)[0], real_pdf);
}

#[tokio::test]
async fn a_cancelled_batch_keeps_nothing_of_its_files() {
    let b = Bed::new("cancel").await;
    let vs = b.vs.create(OWNER, &json!({})).await.unwrap();
    let id = vs["id"].as_str().unwrap();
    let a = b.text("a.md", VOLCANO).await;
    let c = b.text("c.md", BREAD).await;
    let batch =
        b.vs.create_batch(
            OWNER,
            id,
            &json!({"file_ids": [a, c], "attributes": {"source": "wiki"}}),
        )
        .await
        .unwrap();
    assert_eq!(batch["object"], "vector_store.files_batch");
    assert_eq!(batch["status"], "in_progress");
    assert_eq!(batch["file_counts"]["in_progress"], 2);
    let bid = batch["id"].as_str().unwrap();
    let cancelled = b.vs.cancel_batch(OWNER, id, bid).await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["file_counts"]["cancelled"], 2);
    assert_eq!(b.vs.ingest_all().await.unwrap(), 0);
    let listed =
        b.vs.list_files(OWNER, id, Some(bid), None, None, None, None, None)
            .await
            .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "cancelled" && f["attributes"]["source"] == "wiki")
    );
    assert_eq!(b.chunks(&a).await, 0);

    // `files` gives each its own attributes; added again, a file starts over.
    let again = b
        .vs
        .create_batch(OWNER, id, &json!({"files": [{"file_id": a, "attributes": {"n": 1}}, {"file_id": c, "attributes": {"n": 2}}]}))
        .await
        .unwrap();
    b.vs.ingest_all().await.unwrap();
    let done =
        b.vs.get_batch(OWNER, id, again["id"].as_str().unwrap())
            .await
            .unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["file_counts"]["completed"], 2);
    let f = b.vs.get_file(OWNER, id, &c).await.unwrap();
    assert_eq!(f["attributes"]["n"], 2);
}

#[tokio::test]
async fn ingestion_resumes_after_a_restart_in_the_middle_of_a_batch() {
    let sim = sim().await;
    let db = SqliteFile::new("restart");
    let blobs = tempdir::Dir::new("restart");
    // One embedding request goes through; the next waits until the test lets it.
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let mut held = SimEmbedder::new(&sim.url(), "embedder");
    held.gate = Some(gate.clone());
    let calls = held.calls.clone();
    let (store, files, vs) = open(&db.url(), &blobs.0, held).await;
    let b = Bed {
        sim_url: sim.url(),
        _sim: sim,
        _db: db,
        _blobs: blobs,
        store,
        files,
        vs,
    };
    let ids = [
        b.text("v.md", VOLCANO).await,
        b.text("b.md", BREAD).await,
        b.text("t.md", TRAINS).await,
    ];
    let store_id = b.vs.create(OWNER, &json!({})).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let batch =
        b.vs.create_batch(OWNER, &store_id, &json!({"file_ids": ids}))
            .await
            .unwrap();
    let bid = batch["id"].as_str().unwrap().to_string();
    assert!(b.vs.ingest_next().await.unwrap(), "the first file");
    // The second file's job is claimed and held in its embedding request…
    let vs = b.vs.clone();
    let running = tokio::spawn(async move { vs.ingest_next().await });
    loop {
        let leased = b
            .store
            .fetch_optional(
                "SELECT COUNT(*) AS n FROM vector_store_files WHERE lease_until IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .unwrap();
        if sqlx::Row::get::<i64, _>(&leased, "n") == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // …when the gateway stops.
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the first file was embedded"
    );
    running.abort();
    let _ = running.await;
    let Bed {
        _sim,
        _db,
        _blobs,
        store,
        files,
        vs,
        ..
    } = b;
    drop((files, vs));
    Arc::try_unwrap(store)
        .ok()
        .expect("the only handle")
        .close()
        .await;

    // A new process over the same database picks the batch up where it stopped.
    let (store, files, vs) = open(
        &_db.url(),
        &_blobs.0,
        SimEmbedder::new(&_sim.url(), "embedder"),
    )
    .await;
    let b = Bed {
        sim_url: _sim.url(),
        _sim,
        _db,
        _blobs,
        store,
        files,
        vs,
    };
    let mid = b.vs.get_batch(OWNER, &store_id, &bid).await.unwrap();
    assert_eq!(mid["file_counts"]["completed"], 1);
    assert_eq!(mid["file_counts"]["in_progress"], 2);
    assert_eq!(b.vs.resume_jobs().await.unwrap(), 2);
    assert_eq!(b.vs.ingest_all().await.unwrap(), 2);
    let done = b.vs.get_batch(OWNER, &store_id, &bid).await.unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["file_counts"]["completed"], 3);
    // Each file's chunks once: nothing of the interrupted attempt stayed.
    for id in &ids {
        let content = b.vs.file_content(OWNER, &store_id, id).await.unwrap();
        assert_eq!(
            b.chunks(id).await,
            content["data"].as_array().unwrap().len() as i64
        );
        assert_eq!(b.chunks(id).await, 1);
    }
    let r = b
        .search(&store_id, json!({"query": "sourdough starter"}))
        .await;
    assert_eq!(file_ids(&r)[0], ids[1]);
}

#[tokio::test]
async fn a_store_expires_after_its_days_of_inactivity() {
    let b = Bed::new("expiry").await;
    let vs =
        b.vs.create(
            OWNER,
            &json!({"expires_after": {"anchor": "last_active_at", "days": 2}}),
        )
        .await
        .unwrap();
    let id = vs["id"].as_str().unwrap();
    assert_eq!(vs["expires_at"], now() + 2 * 86_400);
    assert_eq!(vs["expires_after"]["days"], 2);
    // A search is activity: the expiry moves.
    NOW.fetch_add(86_400, Ordering::SeqCst);
    b.search(id, json!({"query": "anything"})).await;
    let v = b.vs.get(OWNER, id).await.unwrap();
    assert_eq!(v["expires_at"], now() + 2 * 86_400);
    NOW.fetch_add(2 * 86_400 + 1, Ordering::SeqCst);
    assert_eq!(b.vs.get(OWNER, id).await.unwrap()["status"], "expired");
    assert_eq!(b.vs.purge_expired().await.unwrap(), 0, "a day of grace");
    NOW.fetch_add(86_400, Ordering::SeqCst);
    assert_eq!(b.vs.purge_expired().await.unwrap(), 1);
    assert_eq!(b.vs.get(OWNER, id).await.unwrap_err().status, 404);
}

#[tokio::test]
async fn every_bad_input_names_its_param() {
    let b = Bed::new("bad").await;
    let good = b.text("v.md", VOLCANO).await;
    let id =
        b.vs.create(OWNER, &json!({"file_ids": [good]}))
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "search",
            json!({"query": "x", "max_num_results": 0}),
            400,
            "max_num_results",
        ),
        (
            "search",
            json!({"query": "x", "max_num_results": 51}),
            400,
            "max_num_results",
        ),
        ("search", json!({"query": ""}), 400, "query"),
        ("search", json!({"query": [1]}), 400, "query"),
        (
            "search",
            json!({"query": "x", "filters": {"type": "like", "key": "a", "value": 1}}),
            400,
            "filters.type",
        ),
        (
            "search",
            json!({"query": "x", "filters": {"type": "and", "filters": [{"type": "eq", "key": "a"}]}}),
            400,
            "filters.filters[0].value",
        ),
        (
            "search",
            json!({"query": "x", "ranking_options": {"ranker": "best"}}),
            400,
            "ranking_options.ranker",
        ),
        (
            "search",
            json!({"query": "x", "ranking_options": {"score_threshold": 2}}),
            400,
            "ranking_options.score_threshold",
        ),
        (
            "search",
            json!({"query": "x", "rewrite_query": "yes"}),
            400,
            "rewrite_query",
        ),
        (
            "create",
            json!({"file_ids": ["file-nope"]}),
            404,
            "file_ids[0]",
        ),
        ("create", json!({"file_ids": "file-x"}), 400, "file_ids"),
        (
            "create",
            json!({"expires_after": {"anchor": "last_active_at", "days": 0}}),
            400,
            "expires_after.days",
        ),
        (
            "create",
            json!({"expires_after": {"anchor": "created_at", "days": 1}}),
            400,
            "expires_after.anchor",
        ),
        (
            "create",
            json!({"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 10, "chunk_overlap_tokens": 0}}}),
            400,
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        ("create", json!({"metadata": {"k": 1}}), 400, "metadata"),
        ("create", json!({"name": 5}), 400, "name"),
        ("add", json!({}), 400, "file_id"),
        ("add", json!({"file_id": "file-nope"}), 404, "file_id"),
        (
            "add",
            json!({"file_id": good, "attributes": {"k": [1]}}),
            400,
            "attributes",
        ),
        (
            "batch",
            json!({"file_ids": [good, "file-nope"]}),
            404,
            "file_ids[1]",
        ),
        ("batch", json!({"file_ids": []}), 400, "file_ids"),
        (
            "batch",
            json!({"file_ids": [good], "files": []}),
            400,
            "files",
        ),
        (
            "batch",
            json!({"files": [{"attributes": {}}]}),
            400,
            "files[0].file_id",
        ),
    ];
    for (op, body, status, param) in cases {
        let e = match op {
            "search" => b.vs.search_api(OWNER, &id, &body).await,
            "create" => b.vs.create(OWNER, &body).await,
            "add" => b.vs.add_file(OWNER, &id, &body).await,
            _ => b.vs.create_batch(OWNER, &id, &body).await,
        }
        .expect_err(&format!("{op} {body}"));
        assert_eq!(
            (e.status, e.param.as_deref()),
            (status, Some(param)),
            "{op} {body}: {}",
            e.message
        );
    }
    // Unknown ids.
    let e =
        b.vs.search_api(OWNER, "vs_nope", &json!({"query": "x"}))
            .await
            .unwrap_err();
    assert_eq!(
        (e.status, e.param.as_deref()),
        (404, Some("vector_store_id"))
    );
    let e = b.vs.get_file(OWNER, &id, "file-nope").await.unwrap_err();
    assert_eq!((e.status, e.param.as_deref()), (404, Some("file_id")));
    let e = b.vs.get_batch(OWNER, &id, "vsfb_nope").await.unwrap_err();
    assert_eq!((e.status, e.param.as_deref()), (404, Some("batch_id")));
    let e =
        b.vs.list_files(OWNER, &id, None, Some("done"), None, None, None, None)
            .await
            .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("filter"));
    let e =
        b.vs.list(OWNER, None, None, Some(101), None)
            .await
            .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("limit"));
    // Nothing above reached the embedding model but the one good file's ingestion.
    let _ = &b.sim_url;
}

#[tokio::test]
async fn postgres_without_pgvector_refuses_vector_stores_and_says_what_to_install() {
    let db = PgDatabase::new("vs_nopgvector").await;
    let store = Arc::new(Store::open(&config(&db.url()), 0).await.unwrap());
    if store.vectors().is_ok() {
        // This server has pgvector: the refusal cannot be shown here.
        return;
    }
    let dir = tempdir::Dir::new("nopgvector");
    let files = Files::new(
        store.clone(),
        Arc::new(LocalBlobs::new(&dir.0).unwrap()),
        1 << 20,
    );
    let vs = VectorStores::new(store, files, None);
    let e = vs.create(OWNER, &json!({"name": "x"})).await.unwrap_err();
    assert_eq!(e.status, 503);
    assert_eq!(e.code.as_deref(), Some("vector_search_unavailable"));
    assert!(e.message.contains("pgvector"), "{}", e.message);
}
