//! Vector stores over real HTTP: files uploaded, put in a store, ingested by the
//! gateway's own workers with embeddings from the fleet (`--embedding-model`, through
//! the pipeline), searched; batches; the routes' bad inputs. (The OpenAI SDK suite
//! covers the API's shapes; the stateful crate's tests cover search and ingestion in
//! depth.)

use serde_json::{Value, json};
use switchyard_testkit::*;

async fn bed() -> TestBed {
    TestBed::with(sims(2).await, |c| {
        c.embedding_model = Some(MODEL.into());
    })
    .await
}

async fn until_completed(t: &TestBed, path: &str) -> Value {
    let url = format!("{}{path}", t.url);
    eventually("ingestion to finish", || async {
        t.http.get(&url).await.1["status"] != "in_progress"
    })
    .await;
    t.http.get(&url).await.1
}

/// A store still ingesting is searched (its completed files only) and the answer says
/// how many files are not searched yet.
#[tokio::test]
async fn a_store_still_ingesting_is_searched_and_says_so() {
    let sims = sims(1).await;
    // The embedding model never answers: the file stays in progress.
    set_faults_everywhere(
        &sims,
        &switchyard_sim::Faults {
            hang_rate: 1.0,
            ..Default::default()
        },
    );
    let t = TestBed::with(sims, |c| {
        c.embedding_model = Some(MODEL.into());
    })
    .await;
    let f = upload_file(
        &t.http,
        &t.url,
        "owls.txt",
        "assistants",
        b"Owls hunt at night.",
    )
    .await;
    let (s, vs) = t.post("/v1/vector_stores", &json!({"file_ids": [f]})).await;
    assert_eq!(s, 200, "{vs}");
    let id = vs["id"].as_str().unwrap();
    let resp = t
        .http
        .0
        .post(format!("{}/v1/vector_stores/{id}/search", t.url))
        .json(&json!({"query": "owls at night"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-switchyard-files-in-progress"],
        "1",
        "{:?}",
        resp.headers()
    );
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["data"], json!([]), "{page}");
}

#[tokio::test]
async fn files_are_ingested_through_the_fleet_and_searched() {
    let t = bed().await;
    let a = upload_file(
        &t.http,
        &t.url,
        "glaciers.md",
        "assistants",
        b"Glaciers carve deep valleys as the ice slowly moves downhill.",
    )
    .await;
    let b = upload_file(
        &t.http,
        &t.url,
        "bees.txt",
        "assistants",
        b"Honey bees dance to tell the hive where the flowers are.",
    )
    .await;
    let (s, vs) = t
        .post(
            "/v1/vector_stores",
            &json!({"name": "nature", "file_ids": [a]}),
        )
        .await;
    assert_eq!(s, 200, "{vs}");
    let id = vs["id"].as_str().unwrap().to_string();
    let store = until_completed(&t, &format!("/v1/vector_stores/{id}")).await;
    assert_eq!(store["file_counts"]["completed"], 1, "{store}");
    // The embeddings went through the gateway's own routing to the fleet.
    assert!(
        t.metric(
            "switchyard_requests_total",
            &[("route", "embeddings"), ("status", "200")]
        )
        .await
            >= 1.0
    );

    let (s, batch) = t
        .post(
            &format!("/v1/vector_stores/{id}/file_batches"),
            &json!({"file_ids": [b], "attributes": {"topic": "insects"}}),
        )
        .await;
    assert_eq!(s, 200, "{batch}");
    let bid = batch["id"].as_str().unwrap();
    let done = until_completed(&t, &format!("/v1/vector_stores/{id}/file_batches/{bid}")).await;
    assert_eq!(done["file_counts"]["completed"], 1, "{done}");
    let (_, files) = t
        .http
        .get(&format!(
            "{}/v1/vector_stores/{id}/file_batches/{bid}/files",
            t.url
        ))
        .await;
    assert_eq!(files["data"][0]["id"], b.as_str());

    let (s, r) = t
        .post(
            &format!("/v1/vector_stores/{id}/search"),
            &json!({"query": "where are the flowers, bees?"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "vector_store.search_results.page");
    assert_eq!(r["data"][0]["file_id"], b.as_str());
    assert_eq!(r["data"][0]["attributes"]["topic"], "insects");
    let (_, r) = t
        .post(
            &format!("/v1/vector_stores/{id}/search"),
            &json!({"query": "ice valleys", "filters": {"type": "eq", "key": "topic", "value": "insects"}}),
        )
        .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 1);
    assert_eq!(r["data"][0]["file_id"], b.as_str());
    // Every file is searched: no files-in-progress header.
    let resp = t
        .http
        .0
        .post(format!("{}/v1/vector_stores/{id}/search", t.url))
        .json(&json!({"query": "bees"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("x-switchyard-files-in-progress")
            .is_none()
    );
    // Ingestion and search are on the metrics.
    assert_eq!(
        t.metric(
            "switchyard_vector_store_files_ingested_total",
            &[("status", "completed")]
        )
        .await,
        2.0
    );
    assert!(
        t.metric("switchyard_vector_store_chunks_ingested_total", &[])
            .await
            >= 2.0
    );
    assert_eq!(
        t.metric(
            "switchyard_vector_search_duration_seconds_count",
            &[("outcome", "ok")]
        )
        .await,
        3.0
    );

    let (_, content) = t
        .http
        .get(&format!(
            "{}/v1/vector_stores/{id}/files/{a}/content",
            t.url
        ))
        .await;
    assert!(
        content["data"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Glaciers")
    );

    // Deleting the file removes it from the store.
    let resp = t
        .http
        .0
        .delete(format!("{}/v1/files/{a}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, store) = t
        .http
        .get(&format!("{}/v1/vector_stores/{id}", t.url))
        .await;
    assert_eq!(store["file_counts"]["total"], 1, "{store}");
    let (s, e) = t
        .http
        .get(&format!("{}/v1/vector_stores/{id}/files/{a}", t.url))
        .await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["param"], "file_id");
}

#[tokio::test]
async fn bad_requests_name_their_param_and_reach_no_engine() {
    let t = bed().await;
    let (_, vs) = t.post("/v1/vector_stores", &json!({})).await;
    let id = vs["id"].as_str().unwrap();
    let cases = [
        (
            format!("/v1/vector_stores/{id}/search"),
            json!({"query": "x", "max_num_results": 0}),
            400,
            "max_num_results",
        ),
        (
            format!("/v1/vector_stores/{id}/search"),
            json!({"query": "x", "filters": {"type": "eq", "value": 1}}),
            400,
            "filters.key",
        ),
        (
            "/v1/vector_stores/vs_nope/search".to_string(),
            json!({"query": "x"}),
            404,
            "vector_store_id",
        ),
        (
            format!("/v1/vector_stores/{id}/files"),
            json!({"file_id": "file-nope"}),
            404,
            "file_id",
        ),
        (
            format!("/v1/vector_stores/{id}/file_batches"),
            json!({"file_ids": ["file-nope"]}),
            404,
            "file_ids[0]",
        ),
        (
            "/v1/vector_stores".to_string(),
            json!({"expires_after": {"anchor": "last_active_at", "days": 999}}),
            400,
            "expires_after.days",
        ),
    ];
    for (path, body, status, param) in cases {
        let (s, e) = t.post(&path, &body).await;
        assert_eq!(s, status, "{path} {body}: {e}");
        assert_eq!(e["error"]["param"], param, "{path} {body}: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    // Malformed JSON is a 400, not a 5xx.
    let resp = t
        .http
        .0
        .post(format!("{}/v1/vector_stores/{id}/search", t.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (s, _) = t
        .http
        .get(&format!("{}/v1/vector_stores?limit=abc", t.url))
        .await;
    assert_eq!(s, 400);
    assert_eq!(t.per_server().iter().sum::<u64>(), 0, "no engine was asked");
}
