//! The file_search tool of the Responses API against the simulator (which calls the
//! offered search function with the question and quotes result [1] in its answer):
//! the search round, its output item (with and without results), citations, the
//! streamed events, background responses, chains after a search, and bad tools.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_stateful::files::blobs::{ByteStream, LocalBlobs};
use switchyard_stateful::files::{FileMeta, Files};
use switchyard_stateful::responses::service::{Created, Responses};
use switchyard_stateful::store::Store;
use switchyard_stateful::vector::VectorStores;
use switchyard_stateful::vector::embed::Embedder;

mod common;
use common::{SimEmbedder, SimEngine, SqliteFile, config, create_json, events_of};

const MODEL: &str = "sim";
const BREAD: &str = "Sourdough bread rises thanks to a starter of wild yeast. Bakers feed \
    the starter with flour and water every day before they bake.";
const VOLCANO: &str = "Volcanoes form where molten rock rises through the crust of the \
    planet. An eruption sends lava and ash into the air.";

struct Bed {
    _sim: switchyard_sim::SimHandle,
    _db: SqliteFile,
    svc: Responses,
    vs: VectorStores,
    store_id: String,
    bread: String,
    sent: Arc<Mutex<Vec<(Value, String)>>>,
}

impl Bed {
    async fn new(test: &str) -> Bed {
        let sim = switchyard_sim::spawn(switchyard_sim::SimConfig {
            instant: true,
            embedding_dim: 256,
            served_model_name: vec![MODEL.into()],
            ..switchyard_sim::SimConfig::default()
        })
        .await
        .unwrap();
        let db = SqliteFile::new(test);
        let store = Arc::new(Store::open(&config(&db.url()), 0).await.unwrap());
        let blobs =
            std::env::temp_dir().join(format!("switchyard-fs-{}-{test}", std::process::id()));
        let files = Files::new(
            store.clone(),
            Arc::new(LocalBlobs::new(&blobs).unwrap()),
            1 << 20,
        );
        let embedder: Arc<dyn Embedder> = Arc::new(SimEmbedder::new(&sim.url(), MODEL));
        let vs = VectorStores::new(store.clone(), files.clone(), Some(embedder));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let engine = SimEngine {
            http: reqwest::Client::new(),
            url: sim.url(),
            sent: sent.clone(),
        };
        let svc = Responses::new(store, Arc::new(engine))
            .with_files(files.clone())
            .with_vector_stores(vs.clone(), 8);
        let mut ids = Vec::new();
        for (name, text) in [("bread.txt", BREAD), ("volcano.md", VOLCANO)] {
            let stream: ByteStream<'static> =
                Box::pin(futures_util::stream::iter([Ok(Bytes::from(text))]));
            let staged = files.stage(stream).await.unwrap();
            let meta = FileMeta::parse(Some(name), Some("assistants"), None, None).unwrap();
            let f = files.create("default", &meta, staged).await.unwrap();
            ids.push(f["id"].as_str().unwrap().to_string());
        }
        let created = vs
            .create("default", &json!({"file_ids": ids}))
            .await
            .unwrap();
        vs.ingest_all().await.unwrap();
        Bed {
            _sim: sim,
            _db: db,
            svc,
            vs,
            store_id: created["id"].as_str().unwrap().to_string(),
            bread: ids[0].clone(),
            sent,
        }
    }

    fn ask(&self, extra: Value) -> Value {
        let mut body = json!({
            "model": MODEL,
            "input": "How do bakers feed a sourdough starter?",
            "tools": [{"type": "file_search", "vector_store_ids": [self.store_id]}],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }
}

#[tokio::test]
async fn a_question_is_searched_answered_and_cited() {
    let b = Bed::new("fs-whole").await;
    let r = create_json(
        &b.svc,
        &b.ask(json!({"include": ["file_search_call.results"]})),
    )
    .await;
    assert_eq!(r["status"], "completed", "{r}");
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 2, "{r}");
    let call = &out[0];
    assert_eq!(call["type"], "file_search_call");
    assert_eq!(call["status"], "completed");
    assert_eq!(
        call["queries"],
        json!(["How do bakers feed a sourdough starter?"])
    );
    assert_eq!(call["results"][0]["file_id"], b.bread.as_str());
    assert_eq!(call["results"][0]["filename"], "bread.txt");
    assert!(
        call["results"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Sourdough")
    );
    let msg = &out[1];
    let text = msg["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("According to [1], \"Sourdough bread rises"),
        "{text}"
    );
    let ann = &msg["content"][0]["annotations"];
    assert_eq!(ann.as_array().unwrap().len(), 1, "{ann}");
    assert_eq!(ann[0]["type"], "file_citation");
    assert_eq!(ann[0]["file_id"], b.bread.as_str());
    assert_eq!(ann[0]["filename"], "bread.txt");
    assert_eq!(ann[0]["index"], 13);
    assert_eq!(r["tools"][0]["type"], "file_search");
    assert_eq!(r["tools"][0]["vector_store_ids"][0], b.store_id.as_str());

    // The engine was offered the search function, then given the results as a tool
    // message numbered [1].
    let sent = b.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].0["tools"][0]["function"]["name"], "file_search");
    let last = sent[1].0["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "tool");
    assert!(last["content"].as_str().unwrap().contains("[1] bread.txt"));
    // Both rounds share the routing session (one engine's cache).
    assert_eq!(sent[0].1, sent[1].1);

    // Without include, the call has no results; the chain goes on after a search.
    let again = create_json(
        &b.svc,
        &b.ask(json!({"previous_response_id": r["id"], "input": "And volcanoes?", "tool_choice": "none"})),
    )
    .await;
    // (The instant simulator cuts free text at 16 tokens: `incomplete`.)
    assert_ne!(again["status"], "failed", "{again}");
    assert_eq!(again["output"][0]["type"], "message");
    let r = create_json(&b.svc, &b.ask(json!({}))).await;
    assert!(r["output"][0]["results"].is_null(), "{r}");
}

#[tokio::test]
async fn a_streamed_search_sends_its_events_in_order() {
    let b = Bed::new("fs-stream").await;
    let events = match b
        .svc
        .create(&b.ask(json!({"stream": true})), "default")
        .await
    {
        Ok(Created::Events(s)) => s.collect::<Vec<String>>().await,
        _ => panic!("a stream"),
    };
    let events = events_of(&events);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(at("response.created") < at("response.file_search_call.in_progress"));
    assert!(
        at("response.file_search_call.in_progress") < at("response.file_search_call.searching")
    );
    assert!(at("response.file_search_call.searching") < at("response.file_search_call.completed"));
    assert!(at("response.file_search_call.completed") < at("response.output_text.delta"));
    assert!(at("response.output_text.annotation.added") < at("response.output_text.done"));
    assert_eq!(*names.last().unwrap(), "response.completed");
    assert!(
        !names.contains(&"response.function_call_arguments.delta"),
        "the search is not a client call"
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    let added = &events[at("response.output_item.added")];
    assert_eq!(added["item"]["type"], "file_search_call");
    assert_eq!(added["item"]["status"], "in_progress");
    let done = events.last().unwrap();
    let out = done["response"]["output"].as_array().unwrap();
    assert_eq!(out[0]["type"], "file_search_call");
    assert_eq!(out[0]["status"], "completed");
    assert_eq!(
        out[1]["content"][0]["annotations"][0]["file_id"],
        b.bread.as_str()
    );
    // Stored as streamed.
    let stored = b
        .svc
        .get(done["response"]["id"].as_str().unwrap(), "default")
        .await
        .unwrap();
    assert_eq!(stored["output"], done["response"]["output"]);
}

#[tokio::test]
async fn a_background_response_searches_too() {
    let b = Bed::new("fs-background").await;
    let r = create_json(&b.svc, &b.ask(json!({"background": true}))).await;
    let id = r["id"].as_str().unwrap();
    b.svc.until_done(id).await;
    let done = b.svc.get(id, "default").await.unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"][0]["type"], "file_search_call");
    assert_eq!(
        done["output"][1]["content"][0]["annotations"][0]["type"],
        "file_citation"
    );
}

#[tokio::test]
async fn bad_file_search_tools_are_refused_before_the_engine() {
    let b = Bed::new("fs-bad").await;
    let cases = [
        (
            json!({"tools": [{"type": "file_search", "vector_store_ids": ["vs_nope"]}]}),
            404,
            "tools[0].vector_store_ids",
        ),
        (
            json!({"tools": [{"type": "file_search"}]}),
            400,
            "tools[0].vector_store_ids",
        ),
        (
            json!({"tools": [{"type": "file_search", "vector_store_ids": [b.store_id], "max_num_results": 99}]}),
            400,
            "tools[0].max_num_results",
        ),
        (
            json!({"tools": [{"type": "file_search", "vector_store_ids": [b.store_id], "filters": {"type": "eq"}}]}),
            400,
            "tools[0].filters.key",
        ),
        (
            json!({"tools": [{"type": "file_search", "vector_store_ids": [b.store_id]}, {"type": "file_search", "vector_store_ids": [b.store_id]}]}),
            400,
            "tools[1]",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "file_search"}}),
            400,
            "tool_choice",
        ),
        (json!({"max_tool_calls": 0}), 400, "max_tool_calls"),
        // No search provider on this gateway.
        (json!({"tools": [{"type": "web_search"}]}), 400, "tools[0]"),
        (
            json!({"tools": [{"type": "code_interpreter"}]}),
            400,
            "tools[0].type",
        ),
    ];
    for (extra, status, param) in cases {
        let e = b
            .svc
            .create(&b.ask(extra.clone()), "default")
            .await
            .err()
            .unwrap_or_else(|| panic!("{extra}"));
        assert_eq!(
            (e.status, e.param.as_deref()),
            (status, Some(param)),
            "{extra}: {}",
            e.message
        );
    }
    assert!(
        b.sent.lock().unwrap().is_empty(),
        "nothing reached the engine"
    );
    // Forcing the search: the first round is made to call it.
    let r = create_json(
        &b.svc,
        &b.ask(json!({"tool_choice": {"type": "file_search"}, "input": "hello"})),
    )
    .await;
    assert_eq!(r["output"][0]["type"], "file_search_call", "{r}");
    assert_eq!(r["tool_choice"], json!({"type": "file_search"}));
    let sent = b.sent.lock().unwrap().clone();
    assert_eq!(sent[0].0["tool_choice"]["function"]["name"], "file_search");
    assert_eq!(sent[1].0["tool_choice"], "auto", "forced once, then free");
    let _ = &b.vs;
}
