//! The Responses API over real HTTP through the gateway, in front of simulated
//! engines: a response and its chain are served through the routing pipeline (a chain
//! stays on one engine), streamed as semantic events, read back, listed and deleted;
//! every bad input is a 4xx naming its field that never reaches an engine.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_testkit::*;

async fn bed() -> TestBed {
    TestBed::with(sims(4).await, |c| c.policy = PolicyKind::CacheAware).await
}

fn text_of(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .filter_map(|c| c["text"].as_str())
        .collect()
}

#[tokio::test]
async fn a_chain_of_responses_is_served_stored_and_kept_on_one_engine() {
    // The chain's root is its session key: a session-keyed policy keeps it on one
    // engine even though the first turn's instructions are not sent with later ones.
    let t = TestBed::with(sims(4).await, |c| c.policy = PolicyKind::ConsistentHash).await;
    let briefing = prompt_text(3, 600);
    let (s, r1) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "instructions": briefing, "input": "Hello", "max_output_tokens": 16}),
        )
        .await;
    assert_eq!(s, 200, "{r1}");
    assert_eq!(r1["object"], "response");
    let mut prev = r1["id"].as_str().unwrap().to_string();
    for turn in 0..4 {
        let (s, r) = t
            .post(
                "/v1/responses",
                &json!({"model": MODEL, "input": format!("Turn {turn}"), "previous_response_id": prev,
                        "max_output_tokens": 16}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["previous_response_id"], prev.as_str());
        prev = r["id"].as_str().unwrap().to_string();
    }
    let served = t.per_server();
    assert_eq!(
        served.iter().filter(|n| **n > 0).count(),
        1,
        "a chain stays on one engine: {served:?}"
    );
    // Later turns found the chain's context in that engine's cache.
    let (_, last) = t.http.get(&format!("{}/v1/responses/{prev}", t.url)).await;
    assert_eq!(last["status"], "incomplete");
    assert!(
        last["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{last}"
    );
    let (s, items) = t
        .http
        .get(&format!(
            "{}/v1/responses/{prev}/input_items?order=asc",
            t.url
        ))
        .await;
    assert_eq!(s, 200, "{items}");
    assert_eq!(items["data"][0]["content"][0]["text"], "Turn 3");

    // Deleted, it is gone.
    let resp = t
        .http
        .0
        .delete(format!("{}/v1/responses/{prev}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["deleted"], true);
    let (s, body) = t.http.get(&format!("{}/v1/responses/{prev}", t.url)).await;
    assert_eq!(s, 404, "{body}");
}

#[tokio::test]
async fn a_streamed_response_sends_semantic_events_and_is_stored_as_streamed() {
    let t = bed().await;
    let resp = t
        .http
        .0
        .post(format!("{}/v1/responses", t.url))
        .json(&json!({"model": MODEL, "input": "Tell me a story", "stream": true, "max_output_tokens": 24}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .unwrap()
                .to_string();
            let data = serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
            (name, data)
        })
        .collect();
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.incomplete");
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64);
        assert_eq!(data["type"], name.as_str());
    }
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let id = events[0].1["response"]["id"].as_str().unwrap();
    let (_, stored) = t.http.get(&format!("{}/v1/responses/{id}", t.url)).await;
    assert_eq!(text_of(&stored), deltas);
    assert_eq!(stored["usage"]["output_tokens"], 24);
}

#[tokio::test]
async fn bad_responses_requests_are_4xx_naming_the_field_and_reach_no_engine() {
    let t = TestBed::with(sims(2).await, |c| c.max_payload_size = 8192).await;
    let cases = [
        (json!({"input": "x"}), 400, Some("model")),
        (json!({"model": MODEL}), 400, Some("input")),
        (
            json!({"model": MODEL, "input": [{"type": "nonsense"}]}),
            400,
            Some("input[0].type"),
        ),
        (
            json!({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}),
            400,
            Some("input[0].role"),
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}),
            400,
            Some("conversation"),
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_unknown"}),
            404,
            Some("previous_response_id"),
        ),
        (
            json!({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}),
            400,
            Some("input[0].call_id"),
        ),
        (
            json!({"model": MODEL, "input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": 7}}}}),
            400,
            Some("text.format.schema"),
        ),
        (
            json!({"model": MODEL, "input": "x", "temperature": 9}),
            400,
            Some("temperature"),
        ),
    ];
    for (body, status, param) in cases {
        let (s, e) = t.post("/v1/responses", &body).await;
        assert_eq!(s, status, "{body}: {e}");
        assert_eq!(e["error"]["param"].as_str(), param, "{body}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{e}"
        );
    }
    // Not JSON; too large.
    let resp = t
        .http
        .0
        .post(format!("{}/v1/responses", t.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (s, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "x".repeat(10_000)}),
        )
        .await;
    assert_eq!(s, 413, "{e}");
    let (s, _) = t
        .http
        .get(&format!("{}/v1/responses/resp_missing", t.url))
        .await;
    assert_eq!(s, 404);
    let (s, e) = t
        .http
        .get(&format!(
            "{}/v1/responses/resp_missing/input_items?limit=0",
            t.url
        ))
        .await;
    assert_eq!(s, 400, "{e}");
    // Stream-again arguments, a cancel and a count of what does not exist, and counts
    // of bad requests.
    for (path, param) in [
        ("/v1/responses/resp_x/input_items?limit=many", "limit"),
        ("/v1/conversations/conv_x/items?limit=many", "limit"),
        ("/v1/files?limit=many", "limit"),
        ("/v1/files?purpose=nope", "purpose"),
        ("/v1/responses/resp_x?stream=maybe", "stream"),
        (
            "/v1/responses/resp_x?stream=true&starting_after=-1",
            "starting_after",
        ),
        ("/v1/responses/resp_x?starting_after=3", "starting_after"),
    ] {
        let (s, e) = t.http.get(&format!("{}{path}", t.url)).await;
        assert_eq!(s, 400, "{path}: {e}");
        assert_eq!(e["error"]["param"], param, "{path}: {e}");
    }
    let (s, e) = t
        .post("/v1/responses/resp_missing/cancel", &json!({}))
        .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (404, Some("response_id"))
    );
    for (body, param) in [
        (json!({"input": "x"}), "model"),
        (
            json!({"model": MODEL, "input": [{"type": "nonsense"}]}),
            "input[0].type",
        ),
        (
            json!({"model": MODEL, "input": "x", "previous_response_id": "resp_unknown"}),
            "previous_response_id",
        ),
    ] {
        let (s, e) = t.post("/v1/responses/input_tokens", &body).await;
        assert!(s == 400 || s == 404, "{body}: {e}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
    assert_eq!(
        t.per_server().iter().sum::<u64>(),
        0,
        "no engine saw any of them"
    );
}

/// Responses by status, tool-call rounds, storage latencies and the pool, on the
/// gateway's metrics.
#[tokio::test]
async fn responses_are_counted_on_the_metrics() {
    let t = TestBed::with(sims(1).await, |_| {}).await;
    let (s, r) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "Hello", "max_output_tokens": 16}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let tools = json!([{"type": "function", "name": "get_weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let (s, r) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "Weather in Oslo?", "tools": tools}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["output"][0]["type"], "function_call", "{r}");
    let labels = |status| [("status", status), ("background", "false")];
    assert_eq!(
        t.metric("switchyard_responses_total", &labels("incomplete"))
            .await,
        1.0
    );
    assert_eq!(
        t.metric("switchyard_responses_total", &labels("completed"))
            .await,
        1.0
    );
    assert_eq!(
        t.metric("switchyard_response_tool_rounds_total", &[]).await,
        1.0
    );
    assert_eq!(
        t.metric("switchyard_response_tool_calls_total", &[]).await,
        1.0
    );
    let (s, _) = t
        .http
        .get(&format!(
            "{}/v1/responses/{}",
            t.url,
            r["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    // One write each (answered whole, stored once); one read.
    for (op, least) in [("read", 1.0), ("write", 2.0)] {
        let n = t
            .metric(
                "switchyard_store_operation_duration_seconds_count",
                &[("op", op), ("outcome", "ok")],
            )
            .await;
        assert!(n >= least, "{op}: {n}");
    }
    eventually("the pool is reported", || async {
        t.metric("switchyard_store_pool_connections", &[("state", "max")])
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let db = switchyard_stateful::testing::PgDatabase::new("ready").await;
    let url = db.url();
    let t = TestBed::with(sims(1).await, |c| c.database_url = Some(url)).await;
    for path in ["/readiness", "/ready"] {
        let (s, r) = t.http.get(&format!("{}{path}", t.url)).await;
        assert_eq!(s, 200, "{path}: {r}");
        assert_eq!(r["database"]["backend"], "postgres");
        assert_eq!(r["database"]["status"], "up");
    }
    let (s, _) = t.http.get(&format!("{}/live", t.url)).await;
    assert_eq!(s, 200);
    let (_, h) = t.http.get(&format!("{}/health", t.url)).await;
    assert_eq!(h["database"]["status"], "up", "{h}");
    // Whether vector search is there, and if not, why (this PostgreSQL has no pgvector).
    let vectors = &h["database"]["vectors"];
    assert!(
        vectors["available"] == true || vectors["reason"].as_str().unwrap().contains("pgvector"),
        "{h}"
    );
    // The database goes away: not ready, and a response cannot be stored (503, no
    // address in the answer).
    db.remove().await;
    let (s, r) = t.http.get(&format!("{}/readiness", t.url)).await;
    assert_eq!(s, 503, "{r}");
    assert_eq!(r["status"], "not_ready");
    assert_eq!(r["database"]["status"], "down");
    let (s, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "x", "max_output_tokens": 16}),
        )
        .await;
    assert_eq!(s, 503, "{e}");
    assert_eq!(e["error"]["code"], "store_unavailable");
    assert!(!e.to_string().contains("127.0.0.1"), "{e}");
}

/// The gateway binary on `port`, storing in `db`, in front of `workers`.
#[cfg(unix)]
fn gateway_process(dir: &std::path::Path, db: &str, workers: &[String], port: u16) -> Child {
    let run = std::fs::read_dir(dir).map_or(0, |d| d.count());
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--database-url", db, "--log-level", "warn"])
            .args(["--worker-urls", &workers.join(",")])
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &free_port().to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .stdout(std::fs::File::create(dir.join(format!("out.{run}"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("err.{run}"))).unwrap())
            .spawn()
            .expect("the binary starts"),
    )
}

/// A background response whose gateway process is killed while it runs is `failed`
/// (`server_restarted`) when the gateway starts again on the same database, and its
/// input is kept: no half-written response.
#[cfg(unix)]
#[tokio::test]
async fn a_background_response_cut_short_by_a_crash_is_failed_at_restart() {
    let held = serving("held-model", 1).await;
    set_faults_everywhere(
        &held,
        &switchyard_sim::Faults {
            stall_after_chunks: Some(3),
            ..Default::default()
        },
    );
    let dir = std::env::temp_dir().join(format!("switchyard-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("state.db").display());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = Http::new();
    let ready = || async {
        matches!(http.0.get(format!("{url}/readiness")).send().await, Ok(r) if r.status() == 200)
    };
    let mut first = gateway_process(&dir, &db, &held.urls(), port);
    eventually("the gateway is ready", ready).await;
    let (s, r) = http
        .post(
            &url,
            "/v1/responses",
            &json!({"model": "held-model", "input": "a long task", "background": true}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "queued");
    let id = r["id"].as_str().unwrap().to_string();
    // The engine has it (and holds it).
    eventually("the response runs", || async {
        http.get(&format!("{url}/v1/responses/{id}")).await.1["status"] == "in_progress"
    })
    .await;
    first.kill();

    let _second = gateway_process(&dir, &db, &held.urls(), port);
    eventually("the gateway is ready again", ready).await;
    let (s, after) = http.get(&format!("{url}/v1/responses/{id}")).await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["status"], "failed", "{after}");
    assert_eq!(after["error"]["code"], "server_error");
    assert_eq!(after["error"]["reason"], "server_restarted");
    let (s, items) = http
        .get(&format!("{url}/v1/responses/{id}/input_items"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(items["data"][0]["content"][0]["text"], "a long task");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Input longer than the model's context: with `truncation: disabled` (the default) the
/// engine's refusal is a 400 `context_length_exceeded` naming `input`; with `auto`, the
/// chain's oldest turn is left out and the response is served.
#[tokio::test]
async fn input_too_long_is_400_naming_input_unless_truncated() {
    let sims = sims_with(switchyard_sim::SimConfig {
        engines: 1,
        time_scale: 100.0,
        max_model_len: 400,
        ..Default::default()
    })
    .await;
    let t = TestBed::with(sims, |_| {}).await;
    let (s, first) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": prompt_text(1, 150), "max_output_tokens": 16}),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    let next = |truncation: &str| {
        json!({"model": MODEL, "input": prompt_text(2, 150), "previous_response_id": first["id"],
               "max_output_tokens": 16, "truncation": truncation})
    };
    let (s, e) = t.post("/v1/responses", &next("disabled")).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    assert_eq!(e["error"]["param"], "input");
    let (s, r) = t.post("/v1/responses", &next("auto")).await;
    assert_eq!(s, 200, "{r}");
    assert!(
        r["usage"]["input_tokens"].as_u64().unwrap() + 16 <= 400,
        "{r}"
    );
}
