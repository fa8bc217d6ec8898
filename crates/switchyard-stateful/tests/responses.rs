//! The Responses service against the simulator over real HTTP (each chat completion
//! recorded as the engine received it), stored in SQLite and in PostgreSQL: create,
//! get, delete and input items; chaining with `previous_response_id` (context rebuilt,
//! instructions not inherited, one routing session per chain); `store: false`;
//! function-tool round trips; streaming; conversations; engine failures.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchyard_sim::SimConfig;
use switchyard_stateful::responses::conversations::Conversations;
use switchyard_stateful::responses::service::{Created, Responses};
use switchyard_stateful::store::Store;

mod common;
use common::{PgDatabase, SimEngine, config};

struct Bed {
    svc: Responses,
    store: Arc<Store>,
    sent: Arc<Mutex<Vec<(Value, String)>>>,
    sim: switchyard_sim::SimHandle,
    model: String,
}

impl Bed {
    async fn new(url: &str) -> Bed {
        let sim = switchyard_sim::spawn(SimConfig {
            time_scale: 100.0,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let models: Value = http
            .get(format!("{}/v1/models", sim.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let model = models["data"][0]["id"].as_str().unwrap().to_string();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let engine = SimEngine {
            http,
            url: sim.url(),
            sent: sent.clone(),
        };
        let store = Arc::new(Store::open(&config(url), 0).await.unwrap());
        Bed {
            svc: Responses::new(store.clone(), Arc::new(engine)),
            store,
            sent,
            sim,
            model,
        }
    }

    async fn create(&self, body: Value) -> Value {
        common::create_json(&self.svc, &body).await
    }

    /// The messages of the last chat completion the engine received, and its session.
    fn last_sent(&self) -> (Vec<Value>, String) {
        let sent = self.sent.lock().unwrap();
        let (body, session) = sent.last().unwrap();
        (
            body["messages"].as_array().unwrap().clone(),
            session.clone(),
        )
    }
}

fn text_of(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

async fn responses_work(url: &str) {
    let b = Bed::new(url).await;
    let m = b.model.clone();

    // Create, get, input items, delete.
    let r1 = b
        .create(
            json!({"model": m, "input": "My name is Ada.", "instructions": "Be formal.",
                       "max_output_tokens": 16, "metadata": {"app": "test"}}),
        )
        .await;
    assert_eq!(r1["object"], "response");
    assert!(r1["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(r1["status"], "incomplete", "16 tokens cut the answer: {r1}");
    assert_eq!(r1["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r1["usage"]["output_tokens"], 16);
    assert_eq!(r1["metadata"]["app"], "test");
    let id1 = r1["id"].as_str().unwrap().to_string();
    let (messages, session1) = b.last_sent();
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "Be formal."})
    );
    assert_eq!(session1, id1, "a chain's root is its routing session");
    let got = b.svc.get(&id1, "default").await.unwrap();
    assert_eq!(got["output"], r1["output"]);
    assert_eq!(got["status"], "incomplete");
    let items = b
        .svc
        .input_items(&id1, "default", None, None, None)
        .await
        .unwrap();
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["content"][0]["text"], "My name is Ada.");
    assert!(items["data"][0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(items["has_more"], false);

    // Chained: the whole context goes to the engine, instructions are not inherited,
    // and the chain keeps its session.
    let r2 = b
        .create(
            json!({"model": m, "input": "What is my name?", "previous_response_id": id1,
                       "max_output_tokens": 16}),
        )
        .await;
    let (messages, session2) = b.last_sent();
    assert_eq!(session2, id1);
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(
        messages[0],
        json!({"role": "user", "content": "My name is Ada."})
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], text_of(&r1));
    assert_eq!(messages[2]["content"], "What is my name?");
    let id2 = r2["id"].as_str().unwrap().to_string();
    let r3 = b
        .create(json!({"model": m, "input": "And again?", "previous_response_id": id2, "max_output_tokens": 16}))
        .await;
    assert_eq!(b.last_sent().0.len(), 5);
    assert_eq!(b.last_sent().1, id1);
    assert_eq!(r3["previous_response_id"], id2.as_str());

    // Unknown, unstored and deleted responses cannot be continued.
    let e = b
        .svc
        .create(
            &json!({"model": m, "input": "x", "previous_response_id": "resp_nope"}),
            "default",
        )
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.status, e.param.as_deref()),
        (404, Some("previous_response_id"))
    );
    let unstored = b
        .create(json!({"model": m, "input": "secret", "store": false, "max_output_tokens": 16}))
        .await;
    let uid = unstored["id"].as_str().unwrap();
    assert_eq!(b.svc.get(uid, "default").await.unwrap_err().status, 404);
    let e = b
        .svc
        .create(
            &json!({"model": m, "input": "x", "previous_response_id": uid}),
            "default",
        )
        .await
        .err()
        .unwrap();
    assert_eq!(e.status, 404);
    // Another owner sees nothing.
    assert_eq!(b.svc.get(&id1, "tenant-b").await.unwrap_err().status, 404);

    // A function-tool round trip.
    let tools = json!([{"type": "function", "name": "get_weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let call = b
        .create(json!({"model": m, "input": "Weather in Oslo?", "tools": tools}))
        .await;
    let fc = call["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap()
        .clone();
    assert_eq!(fc["name"], "get_weather");
    assert_eq!(fc["arguments"], r#"{"city":"sim"}"#);
    assert_eq!(call["tools"][0]["name"], "get_weather");
    let e = b
        .svc
        .create(&json!({"model": m, "tools": tools, "previous_response_id": call["id"],
                        "input": [{"type": "function_call_output", "call_id": "call_unknown", "output": "?"}]}), "default")
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.status, e.param.as_deref()),
        (400, Some("input[0].call_id"))
    );
    let answer = b
        .create(json!({"model": m, "tools": tools, "previous_response_id": call["id"], "max_output_tokens": 16,
                       "input": [{"type": "function_call_output", "call_id": fc["call_id"], "output": "sunny"}]}))
        .await;
    assert!(!text_of(&answer).is_empty(), "{answer}");
    let (messages, _) = b.last_sent();
    assert_eq!(messages[1]["tool_calls"][0]["id"], fc["call_id"]);
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": fc["call_id"], "content": "sunny"})
    );

    // Streaming: semantic events in sequence, and the stored response is the streamed one.
    let Ok(Created::Events(mut events)) = b
        .svc
        .create(&json!({"model": m, "input": "Tell me a story.", "stream": true, "max_output_tokens": 20}), "default")
        .await
    else {
        panic!("a stream");
    };
    let mut all = Vec::new();
    while let Some(e) = events.next().await {
        all.push(e);
    }
    let parsed: Vec<Value> = all
        .iter()
        .map(|e| {
            serde_json::from_str(e.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap()
        })
        .collect();
    assert_eq!(parsed[0]["type"], "response.created");
    assert_eq!(parsed.last().unwrap()["type"], "response.incomplete");
    for (i, p) in parsed.iter().enumerate() {
        assert_eq!(p["sequence_number"], i as u64);
    }
    let streamed: String = parsed
        .iter()
        .filter(|p| p["type"] == "response.output_text.delta")
        .map(|p| p["delta"].as_str().unwrap())
        .collect();
    let sid = parsed[0]["response"]["id"].as_str().unwrap();
    let stored = b.svc.get(sid, "default").await.unwrap();
    assert_eq!(stored["status"], "incomplete");
    assert_eq!(text_of(&stored), streamed);

    // Conversations: each response adds its input and output; the next one sees them.
    let convs = Conversations::new(b.store.clone());
    let conv = convs
        .create(&json!({"metadata": {"topic": "t"}}), "default")
        .await
        .unwrap();
    let cid = conv["id"].as_str().unwrap();
    b.create(json!({"model": m, "input": "first", "conversation": cid, "max_output_tokens": 16}))
        .await;
    b.create(json!({"model": m, "input": "second", "conversation": {"id": cid}, "max_output_tokens": 16})).await;
    let (messages, session) = b.last_sent();
    assert_eq!(session, cid);
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0]["content"], "first");
    // The conversation holds both turns' input and output, oldest first.
    let items = convs
        .list_items(cid, "default", None, None, Some("asc"))
        .await
        .unwrap();
    let kinds: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["role"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["user", "assistant", "user", "assistant"], "{items}");
    // Items added by hand join the context; one deleted leaves it.
    let added = convs
        .add_items(
            cid,
            "default",
            &json!({"items": [{"role": "user", "content": "noted"}]}),
        )
        .await
        .unwrap();
    let added_id = added["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        convs.get_item(cid, "default", &added_id).await.unwrap()["content"][0]["text"],
        "noted"
    );
    convs.delete_item(cid, "default", &added_id).await.unwrap();
    assert_eq!(
        convs
            .get_item(cid, "default", &added_id)
            .await
            .unwrap_err()
            .status,
        404
    );
    let e = convs
        .add_items(
            cid,
            "default",
            &json!({"items": [{"role": "robot", "content": "x"}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("items[0].role"));
    assert_eq!(convs.get(cid, "tenant-b").await.unwrap_err().status, 404);
    let e = b
        .svc
        .create(
            &json!({"model": m, "input": "x", "conversation": cid, "previous_response_id": id1}),
            "default",
        )
        .await
        .err()
        .unwrap();
    assert_eq!((e.status, e.param.as_deref()), (400, Some("conversation")));

    // Delete.
    assert_eq!(
        b.svc.delete(&id1, "default").await.unwrap()["deleted"],
        true
    );
    assert_eq!(b.svc.get(&id1, "default").await.unwrap_err().status, 404);
    assert_eq!(b.svc.delete(&id1, "default").await.unwrap_err().status, 404);

    // An engine that fails: the error is passed on and the response stored as failed.
    b.sim
        .server(0)
        .set_faults(switchyard_sim::Faults {
            error_rate: 1.0,
            error_status: 503,
            ..switchyard_sim::Faults::default()
        })
        .unwrap();
    let e = b
        .svc
        .create(&json!({"model": m, "input": "x"}), "default")
        .await
        .err()
        .unwrap();
    assert_eq!(e.status, 503);
    let failed = b
        .store
        .fetch_all("SELECT id FROM responses WHERE status = 'failed'", &[])
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "the failed response is stored as failed");
    let id: String = sqlx::Row::get(&failed[0], "id");
    let got = b.svc.get(&id, "default").await.unwrap();
    assert_eq!(got["status"], "failed");
    // The SDK's own code, and the gateway's reason beside it.
    assert_eq!(got["error"]["code"], "server_error", "{got}");
    assert!(got["error"]["reason"].is_string(), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_on_sqlite() {
    responses_work("sqlite::memory:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_on_postgres() {
    let db = PgDatabase::new("responses").await;
    responses_work(&db.url()).await;
}
