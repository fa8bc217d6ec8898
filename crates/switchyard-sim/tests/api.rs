//! Every endpoint of the simulator, streaming and not, over real HTTP.

use serde_json::{Value, json};
use switchyard_sim::{OutputLen, SimConfig};
use switchyard_testkit::*;

#[tokio::test]
async fn chat_completion_has_openai_shape_and_exact_token_count() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let (status, body) = http
        .post(&sim.url(), "/v1/chat/completions", &chat("Hello there", 12))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], "switchyard/sim-8b");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 3);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + 12);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    // The text has exactly the requested number of tokens.
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(
        switchyard_sim::tokenizer::encode(text).len(),
        12,
        "{text:?}"
    );
}

#[tokio::test]
async fn completion_accepts_text_and_token_ids() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert!(body["choices"][0]["text"].is_string());

    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": [1, 2, 3, 4, 5], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": [[7, 8, 9]], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn output_is_deterministic_for_a_seed() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let mut a = chat("same prompt", 10);
    a["seed"] = json!(42);
    let (_, r1) = http.post(&sim.url(), "/v1/chat/completions", &a).await;
    let (_, r2) = http.post(&sim.url(), "/v1/chat/completions", &a).await;
    a["seed"] = json!(43);
    let (_, r3) = http.post(&sim.url(), "/v1/chat/completions", &a).await;
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&r1), text(&r2));
    assert_ne!(text(&r1), text(&r3));
}

#[tokio::test]
async fn output_length_distribution_applies_without_max_tokens() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        output_len: OutputLen::Fixed(7),
        ..fast()
    })
    .await;
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // min_tokens raises the sampled length.
    let (_, body) = http
        .post(
            &sim.url(),
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "min_tokens": 9}),
        )
        .await;
    assert_eq!(body["usage"]["completion_tokens"], 9);
    // max_completion_tokens is honoured for chat.
    let (_, body) = http
        .post(
            &sim.url(),
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3}),
        )
        .await;
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn ignore_eos_without_max_tokens_runs_to_the_context_limit() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        max_model_len: 64,
        output_len: OutputLen::Fixed(2),
        ..fast()
    })
    .await;
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": [1, 2, 3, 4], "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 60);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn chat_stream_has_role_tokens_finish_usage_and_done() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let mut body = chat("Stream to me", 5);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, events) = http.sse(&sim.url(), "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.len(), 1 + 5 + 1, "role + 5 tokens + usage");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for c in &chunks[1..5] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    let usage = &chunks[6];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn completion_stream_without_usage() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let (status, events) = http
        .sse(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": "abc", "max_tokens": 3, "stream": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3], "[DONE]");
    let last: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        embedding_dim: 64,
        ..fast()
    })
    .await;
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/embeddings",
            &json!({"input": ["hello world", "other"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let v: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 64);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let (_, again) = http
        .post(
            &sim.url(),
            "/v1/embeddings",
            &json!({"input": "hello world"}),
        )
        .await;
    assert_eq!(again["data"][0]["embedding"], data[0]["embedding"]);
    assert_ne!(data[1]["embedding"], data[0]["embedding"]);
    // Texts sharing words are closer than texts that share none.
    let (_, more) = http
        .post(
            &sim.url(),
            "/v1/embeddings",
            &json!({"input": ["hello world", "hello big world", "tax forms due"]}),
        )
        .await;
    let vec_of = |i: usize| -> Vec<f64> {
        more["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (a, b, c) = (vec_of(0), vec_of(1), vec_of(2));
    assert!(cos(&a, &b) > 0.5, "{}", cos(&a, &b));
    assert!(cos(&a, &b) > cos(&a, &c) + 0.3);

    let (status, b64) = http
        .post(
            &sim.url(),
            "/v1/embeddings",
            &json!({"input": "hello world", "encoding_format": "base64", "dimensions": 8}),
        )
        .await;
    assert_eq!(status, 200);
    let s = b64["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(s.len(), 44, "8 f32 = 32 bytes = 44 base64 chars");
}

#[tokio::test]
async fn models_lists_every_served_name_with_max_model_len() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        served_model_name: vec!["llama".into(), "meta-llama/Llama-3.1-8B-Instruct".into()],
        max_model_len: 4096,
        ..fast()
    })
    .await;
    let body: Value = http
        .0
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama", "meta-llama/Llama-3.1-8B-Instruct"]);
    assert_eq!(body["data"][0]["max_model_len"], 4096);
    // Either name is accepted.
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["model"], "meta-llama/Llama-3.1-8B-Instruct");
}

#[tokio::test]
async fn health_load_metrics_and_stats() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let c = &http.0;
    let health = c.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let load: Value = c
        .get(format!("{url}/load"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(load, json!({"server_load": 0}));
    let (_, body) = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": "metrics please", "max_tokens": 3}),
        )
        .await;
    let prompt = body["usage"]["prompt_tokens"].as_f64().unwrap();
    let labels = [("model_name", "switchyard/sim-8b"), ("engine", "0")];
    assert_eq!(
        http.metric(&url, "vllm:generation_tokens_total", &labels)
            .await,
        3.0
    );
    assert_eq!(
        http.metric(&url, "vllm:prompt_tokens_total", &labels).await,
        prompt
    );
    assert_eq!(
        http.metric(&url, "vllm:prefix_cache_queries_total", &labels)
            .await,
        prompt
    );
    assert_eq!(
        http.metric(&url, "vllm:time_to_first_token_seconds_count", &labels)
            .await,
        1.0
    );
    assert_eq!(
        http.metric(&url, "vllm:inter_token_latency_seconds_count", &labels)
            .await,
        2.0
    );
    assert_eq!(
        http.metric(&url, "vllm:e2e_request_latency_seconds_count", &labels)
            .await,
        1.0
    );
    assert_eq!(
        http.metric(
            &url,
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        )
        .await,
        1.0
    );
    assert_eq!(
        http.metric(&url, "vllm:num_requests_running", &labels)
            .await,
        0.0
    );
    assert_eq!(
        http.metric(&url, "vllm:num_requests_waiting", &labels)
            .await,
        0.0
    );
    assert_eq!(
        http.metric(&url, "vllm:kv_cache_usage_perc", &labels).await,
        0.0
    );
    assert_eq!(
        http.metric(
            &url,
            "vllm:cache_config_info",
            &[("block_size", "16"), ("num_gpu_blocks", "28000")]
        )
        .await,
        1.0
    );
    let stats: Value = c
        .get(format!("{url}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests_per_rank"], json!([1]));
    assert_eq!(sim.server(0).requests(), 1);
}

#[tokio::test]
async fn several_engines_serve_on_consecutive_independent_ports() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        engines: 3,
        ..fast()
    })
    .await;
    let urls = sim.urls();
    assert_eq!(urls.len(), 3);
    let text = prompt_text(1, 200);
    http.post(
        &urls[0],
        "/v1/completions",
        &json!({"prompt": text, "max_tokens": 1}),
    )
    .await;
    let (_, warm) = http
        .post(
            &urls[0],
            "/v1/completions",
            &json!({"prompt": text, "max_tokens": 1}),
        )
        .await;
    let (_, cold) = http
        .post(
            &urls[1],
            "/v1/completions",
            &json!({"prompt": text, "max_tokens": 1}),
        )
        .await;
    assert!(
        warm["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        sim.servers()
            .iter()
            .map(|s| s.requests())
            .collect::<Vec<_>>(),
        [2, 1, 0]
    );
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let resp = http
        .0
        .get(format!("{}/v2/nothing", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_error(&resp.json().await.unwrap(), 404);
}

#[tokio::test]
async fn instant_mode_answers_without_the_engine() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        instant: true,
        ..SimConfig::default()
    })
    .await;
    let (status, body) = http
        .post(&sim.url(), "/v1/chat/completions", &chat("hi", 5))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(
        switchyard_sim::tokenizer::encode(
            body["choices"][0]["message"]["content"].as_str().unwrap()
        )
        .len(),
        5
    );
    let (status, events) = http
        .sse(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 3, "stream": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 4);
    assert_eq!(events[3], "[DONE]");
    assert_eq!(
        http.metric(&sim.url(), "vllm:prompt_tokens_total", &[])
            .await,
        0.0,
        "the engine never ran"
    );
}

#[tokio::test]
async fn structured_outputs_are_honoured_streaming_or_not() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let schema = json!({"type": "json_schema", "json_schema": {"name": "pick", "schema": {
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": ["code", "math", "chat"]}},
        "required": ["intent"]}}});
    let body = json!({"model": MODEL, "response_format": schema, "max_tokens": 50,
        "messages": [{"role": "system", "content": "choose code, math or chat"},
                     {"role": "user", "content": "is this math? a math question"}]});
    let (status, r) = http.post(&sim.url(), "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, r#"{"intent":"math"}"#);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert_eq!(r["usage"]["completion_tokens"], 5); // 17 characters in pieces of 4

    // The same answer streamed, piece by piece.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (status, events) = http.sse(&sim.url(), "/v1/chat/completions", &stream).await;
    assert_eq!(status, 200);
    let text: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text, content);

    // guided_choice on a completion; too few tokens cut the answer.
    let (_, r) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"model": MODEL,
            "prompt": "Chat with me", "guided_choice": ["code", "chat"]}),
        )
        .await;
    assert_eq!(r["choices"][0]["text"], "chat");
    let (_, r) = http
        .post(&sim.url(), "/v1/chat/completions", &{
            let mut b = body.clone();
            b["max_tokens"] = json!(2);
            b
        })
        .await;
    assert_eq!(r["choices"][0]["message"]["content"], r#"{"intent"#);
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    // A malformed constraint is the client's error.
    let (status, r) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x",
            "response_format": {"type": "xml"}}),
        )
        .await;
    assert_eq!(status, 400, "{r}");
    assert_error(&r, 400);
}

#[tokio::test]
async fn offered_tools_are_called_deterministically_until_a_tool_answers() {
    let http = Http::new();
    for instant in [false, true] {
        let sim = sims_with(SimConfig { instant, ..fast() }).await;
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
        let body = json!({"model": MODEL, "tools": tools, "max_tokens": 50,
            "messages": [{"role": "user", "content": "weather in Oslo?"}]});
        let (status, r) = http.post(&sim.url(), "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        let choice = &r["choices"][0];
        assert_eq!(
            choice["finish_reason"], "tool_calls",
            "instant={instant}: {r}"
        );
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], r#"{"city":"sim"}"#);
        let id = call["id"].as_str().unwrap().to_string();

        // Streamed: the first delta names the call, the rest carry the arguments.
        let mut stream = body.clone();
        stream["stream"] = json!(true);
        let (status, events) = http.sse(&sim.url(), "/v1/chat/completions", &stream).await;
        assert_eq!(status, 200);
        let chunks: Vec<Value> = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call"));
        let args: String = calls
            .iter()
            .map(|c| c["function"]["arguments"].as_str().unwrap())
            .collect();
        assert_eq!(args, r#"{"city":"sim"}"#);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );

        // Once the tool has answered, the model answers in text.
        let mut after = body.clone();
        after["messages"] = json!([
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}
        ]);
        let (status, r) = http.post(&sim.url(), "/v1/chat/completions", &after).await;
        assert_eq!(status, 200, "{r}");
        assert!(r["choices"][0]["message"]["content"].is_string(), "{r}");
        assert_ne!(r["choices"][0]["finish_reason"], "tool_calls");

        // A bad tool is a 400.
        let mut bad = body.clone();
        bad["tools"] = json!([{"type": "function", "function": {}}]);
        let (status, r) = http.post(&sim.url(), "/v1/chat/completions", &bad).await;
        assert_eq!(status, 400, "{r}");
        assert_error(&r, 400);
    }
}

/// vLLM's tokenizer endpoints: `/tokenize` and `/detokenize` round-trip, and the
/// scale-out render endpoints give the same ids as `/tokenize` (403 unless enabled).
#[tokio::test]
async fn tokenize_detokenize_and_render_agree() {
    let http = Http::new();
    let off = sims_with(fast()).await;
    let msgs = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]);
    let (status, body) = http
        .post(
            &off.url(),
            "/v1/chat/completions/render",
            &json!({"messages": msgs}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_error(&body, 403);
    assert_eq!(body["error"]["type"], "PermissionDeniedError");

    let sim = sims_with(SimConfig {
        enable_scale_out: true,
        ..fast()
    })
    .await;
    let url = sim.url();
    let (_, tok) = http
        .post(&url, "/tokenize", &json!({"messages": msgs}))
        .await;
    let (status, render) = http
        .post(
            &url,
            "/v1/chat/completions/render",
            &json!({"model": "switchyard/sim-8b", "messages": msgs, "max_tokens": 7}),
        )
        .await;
    assert_eq!(status, 200, "{render}");
    assert_eq!(render["token_ids"], tok["tokens"]);
    assert!(
        render["request_id"]
            .as_str()
            .unwrap()
            .starts_with("chatcmpl-")
    );
    assert_eq!(render["sampling_params"]["max_tokens"], 7);
    assert_eq!(render["model"], "switchyard/sim-8b");

    let (status, list) = http
        .post(
            &url,
            "/v1/completions/render",
            &json!({"prompt": ["one two", "three"]}),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (item, text) in list.iter().zip(["one two", "three"]) {
        let (_, t) = http.post(&url, "/tokenize", &json!({"prompt": text})).await;
        assert_eq!(item["token_ids"], t["tokens"]);
        let (status, d) = http
            .post(&url, "/detokenize", &json!({"tokens": t["tokens"]}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(d["prompt"], text, "detokenize inverts tokenize");
    }
    assert!(list[1]["request_id"].as_str().unwrap().ends_with("-1"));

    // Bad input: 400 (or 404 for a model) with the field named; never a 5xx.
    for (path, body, status, param) in [
        ("/detokenize", json!({}), 400, "tokens"),
        ("/detokenize", json!({"tokens": [-1]}), 400, "tokens"),
        ("/detokenize", json!({"tokens": "abc"}), 400, "tokens"),
        (
            "/detokenize",
            json!({"tokens": [4000000000u64]}),
            400,
            "tokens",
        ),
        (
            "/detokenize",
            json!({"model": "nope", "tokens": [1]}),
            404,
            "model",
        ),
        ("/v1/completions/render", json!({}), 400, "prompt"),
        (
            "/v1/completions/render",
            json!({"prompt": 5}),
            400,
            "prompt",
        ),
        (
            "/v1/chat/completions/render",
            json!({"messages": []}),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions/render",
            json!({"messages": [{"content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions/render",
            json!({"model": "nope", "messages": msgs}),
            404,
            "model",
        ),
    ] {
        let (got, b) = http.post(&url, path, &body).await;
        assert_eq!(got, status, "{path} {body}: {b}");
        assert_error(&b, status);
        assert_eq!(b["error"]["param"], param, "{path} {body}: {b}");
    }
    let (got, b) = http
        .post_raw(&url, "/detokenize", Some("application/json"), "{")
        .await;
    assert_eq!(got, 400, "{b}");
}

/// With the command line's defaults the answers carry vLLM's fields only: no
/// `sim_timing`, `prompt_tokens_details: null` (vLLM without
/// `--enable-prompt-tokens-details`), `"usage": null` on every chunk of a stream that
/// includes usage but its last, and `/metrics` in Prometheus' text format.
#[tokio::test]
async fn the_command_line_defaults_answer_exactly_as_vllm() {
    use clap::Parser;
    let http = Http::new();
    let sim = sims_with(SimConfig {
        port: 0,
        time_scale: 100.0,
        ..SimConfig::parse_from(["switchyard-sim"])
    })
    .await;
    let url = sim.url();
    let (status, body) = http
        .post(&url, "/v1/chat/completions", &chat("Hello", 3))
        .await;
    assert_eq!(status, 200);
    assert!(body.get("sim_timing").is_none(), "{body}");
    assert_eq!(body["usage"]["prompt_tokens_details"], Value::Null);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let mut req = chat("Hello", 3);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (_, events) = http.sse(&url, "/v1/chat/completions", &req).await;
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (last, rest) = chunks.split_last().unwrap();
    assert!(rest.len() >= 4, "role, 3 tokens: {chunks:?}");
    for c in rest {
        assert_eq!(c.get("usage"), Some(&Value::Null), "{c}");
    }
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(last.get("sim_timing").is_none());
    req["stream_options"] = json!({"include_usage": false});
    let (_, events) = http.sse(&url, "/v1/chat/completions", &req).await;
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage: {c}"
        );
    }

    let resp = http.0.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(!text.contains("# EOF"));
    assert!(
        text.contains("# TYPE vllm:prompt_tokens_total counter\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE vllm:num_requests_running gauge\n"));
    assert!(text.contains("vllm:prompt_tokens_total{"));

    // --enable-prompt-tokens-details and --sim-timing bring them back.
    let on = sims_with(SimConfig {
        port: 0,
        time_scale: 100.0,
        ..SimConfig::parse_from([
            "switchyard-sim",
            "--enable-prompt-tokens-details",
            "--sim-timing",
        ])
    })
    .await;
    let (_, body) = http
        .post(&on.url(), "/v1/chat/completions", &chat("Hello", 3))
        .await;
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(body["sim_timing"]["ttft_secs"].as_f64().unwrap() > 0.0);
}
