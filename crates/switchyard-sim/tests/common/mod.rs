//! Helpers shared by the simulator's integration tests: start engines, send requests,
//! read metrics. Everything goes over real HTTP on loopback.
#![allow(dead_code)]

use serde_json::{Value, json};
use switchyard_sim::{SimConfig, SimHandle};

/// A fast-running config: 100× real time, small cache.
pub fn fast_config() -> SimConfig {
    SimConfig {
        time_scale: 100.0,
        ..SimConfig::default()
    }
}

pub async fn start(cfg: SimConfig) -> SimHandle {
    switchyard_sim::spawn(cfg).await.expect("simulator starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// POSTs JSON and returns the status and the parsed body.
pub async fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POSTs raw bytes (for malformed bodies).
pub async fn post_raw(url: &str, path: &str, body: &'static str) -> (u16, Value) {
    let resp = client()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({"model": "switchyard/sim-8b", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// A long, deterministic text of about `words` tokens.
pub fn long_text(seed: u32, words: usize) -> String {
    let vocab = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    ];
    (0..words)
        .map(|i| vocab[((i as u32).wrapping_mul(7).wrapping_add(seed * 13) % 10) as usize])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" [{seed}]")
}

/// Asserts an OpenAI-shaped error body with the given code.
pub fn assert_error(body: &Value, code: u16) {
    let e = &body["error"];
    assert_eq!(e["code"], json!(code), "body: {body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
    assert!(e["type"].is_string(), "body: {body}");
    assert!(e.get("param").is_some(), "body: {body}");
}

/// Sum of a metric's samples whose labels contain every `k="v"` in `labels`.
pub async fn metric(url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_str) = series.split_once('{').unwrap_or((series, ""));
        if metric_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_str.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap();
        }
    }
    sum
}

/// Collects an SSE stream's `data:` payloads.
pub async fn sse(url: &str, path: &str, body: &Value) -> (u16, Vec<String>) {
    let resp = client()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let events = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect();
    (status, events)
}

/// Polls `cond` every few milliseconds until it holds, failing after 10 s. For state
/// that changes inside the engine with no event to await (e.g. an abort at the next step).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Reads `sim_timing` of a non-streaming response.
pub fn ttft(body: &Value) -> f64 {
    body["sim_timing"]["ttft_secs"]
        .as_f64()
        .expect("sim_timing.ttft_secs")
}

pub fn cached(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens")
}
