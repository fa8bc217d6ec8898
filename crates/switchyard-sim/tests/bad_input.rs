//! Every malformed request gets vLLM's answer: a 400 (404 for an unknown model) with an
//! OpenAI error body, and never reaches an engine.

use serde_json::{Value, json};
use switchyard_sim::{SchedulingPolicy, SimConfig};
use switchyard_testkit::*;

#[tokio::test]
async fn malformed_requests_get_400_with_error_json() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        max_model_len: 100,
        ..fast()
    })
    .await;
    let url = sim.url();
    for (path, raw) in [
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", "[1, 2]"),
        ("/v1/chat/completions", ""),
        ("/v1/completions", "{\"prompt\": \"x\","),
        ("/v1/embeddings", "nope"),
    ] {
        let (status, body) = http
            .post_raw(&url, path, Some("application/json"), raw)
            .await;
        assert_eq!(status, 400, "{path} {raw}");
        assert_error(&body, 400);
    }
    let long: Vec<u32> = (0..101).collect();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "switchyard/sim-8b"}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": "hello"}),
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"content": "no role"}]}),
            Some("messages[0].role"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 5}]}),
            Some("messages[0].content"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}),
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
            Some("stream"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": -1}),
            Some("temperature"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "min_tokens": 5, "max_tokens": 2}),
            Some("min_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "model": 7}),
            Some("model"),
        ),
        ("/v1/completions", json!({"max_tokens": 3}), Some("prompt")),
        ("/v1/completions", json!({"prompt": 12}), Some("prompt")),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            Some("prompt"),
        ),
        ("/v1/completions", json!({"prompt": [-1]}), Some("prompt")),
        ("/v1/completions", json!({"prompt": long}), None),
        (
            "/v1/completions",
            json!({"prompt": "short", "max_tokens": 100}),
            None,
        ),
        ("/v1/completions", json!({"prompt": ""}), None),
        (
            "/v1/completions",
            json!({"prompt": "x", "data_parallel_rank": 3}),
            Some("data_parallel_rank"),
        ),
        (
            "/v1/embeddings",
            json!({"model": "switchyard/sim-8b"}),
            Some("input"),
        ),
        ("/v1/embeddings", json!({"input": []}), Some("input")),
        ("/v1/embeddings", json!({"input": {"a": 1}}), Some("input")),
        (
            "/v1/embeddings",
            json!({"input": "x", "encoding_format": "hex"}),
            Some("encoding_format"),
        ),
        (
            "/v1/embeddings",
            json!({"input": "x", "dimensions": 5000}),
            Some("dimensions"),
        ),
    ];
    for (path, body, param) in cases {
        let (status, resp) = http.post(&url, path, &body).await;
        assert_eq!(status, 400, "{path} {body} -> {resp}");
        assert_error(&resp, 400);
        if let Some(p) = param {
            assert_eq!(resp["error"]["param"], p, "{body} -> {resp}");
        }
    }
    let too_long = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": (0..101).collect::<Vec<u32>>()}),
        )
        .await
        .1;
    assert!(
        too_long["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 100")
    );
    assert_eq!(
        sim.server(0).requests(),
        0,
        "no bad request reached an engine"
    );
    assert_eq!(
        http.metric(&url, "vllm:prefix_cache_queries_total", &[])
            .await,
        0.0
    );
}

#[tokio::test]
async fn non_integer_priority_is_400_naming_priority() {
    let http = Http::new();
    for policy in [SchedulingPolicy::Fcfs, SchedulingPolicy::Priority] {
        let sim = sims_with(SimConfig {
            scheduling_policy: policy,
            ..fast()
        })
        .await;
        let url = sim.url();
        let bad = [
            json!("high"),
            json!("1"),
            json!(1.5),
            json!(2.0),
            json!(true),
            Value::Null,
            json!([1]),
            json!({"level": 1}),
            json!(9_223_372_036_854_775_808_u64),
        ];
        for priority in bad {
            for (path, mut body) in [
                (
                    "/v1/chat/completions",
                    json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
                ),
                ("/v1/completions", json!({"prompt": "x", "max_tokens": 1})),
                ("/v1/embeddings", json!({"input": "x"})),
            ] {
                body["priority"] = priority.clone();
                let (status, resp) = http.post(&url, path, &body).await;
                assert_eq!(status, 400, "{policy:?} {path} {body} -> {resp}");
                assert_error(&resp, 400);
                assert_eq!(resp["error"]["param"], "priority", "{body} -> {resp}");
                let message = resp["error"]["message"].as_str().unwrap();
                assert!(message.contains("`priority`"), "{message}");
            }
        }
        assert_eq!(
            sim.server(0).requests(),
            0,
            "no bad request reached an engine"
        );
        // Integers, negative ones included, are accepted under either policy.
        for priority in [json!(-3), json!(0), json!(7)] {
            let body = json!({"prompt": "x", "max_tokens": 1, "priority": priority});
            let (status, resp) = http.post(&url, "/v1/completions", &body).await;
            assert_eq!(status, 200, "{policy:?} {body} -> {resp}");
        }
    }
}

#[tokio::test]
async fn unknown_model_is_404() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let body = json!({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}], "prompt": "x", "input": "x"});
        let (status, resp) = http.post(&sim.url(), path, &body).await;
        assert_eq!(status, 404, "{path}");
        assert_error(&resp, 404);
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gpt-17")
        );
    }
}

#[tokio::test]
async fn bad_rank_header_is_400() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    for rank in ["abc", "1"] {
        let resp = http
            .0
            .post(format!("{}/v1/completions", sim.url()))
            .header("x-data-parallel-rank", rank)
            .json(&json!({"prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{rank}");
        assert_error(&resp.json().await.unwrap(), 400);
    }
}

#[test]
fn invalid_config_is_rejected_with_the_option_named() {
    let bad = |c: SimConfig, flag: &str| {
        let err = c.validate().unwrap_err();
        assert!(err.contains(flag), "{err}");
    };
    bad(
        SimConfig {
            block_size: 0,
            ..SimConfig::default()
        },
        "--block-size",
    );
    bad(
        SimConfig {
            time_scale: 0.0,
            ..SimConfig::default()
        },
        "--time-scale",
    );
    bad(
        SimConfig {
            num_gpu_blocks: 1,
            ..SimConfig::default()
        },
        "--num-gpu-blocks",
    );
    bad(
        SimConfig {
            step_time_multiplier: vec![-1.0],
            ..SimConfig::default()
        },
        "--step-time-multiplier",
    );
    bad(
        SimConfig {
            served_model_name: vec![],
            ..SimConfig::default()
        },
        "--served-model-name",
    );
}
