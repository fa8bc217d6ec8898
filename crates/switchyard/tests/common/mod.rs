//! Test helpers: simulated engines, a gateway in front of them, a scriptable raw
//! upstream for byte-level checks, and small HTTP helpers. Real HTTP on loopback only.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Config, Gateway, PolicyKind};
use switchyard_sim::{SimConfig, SimHandle};

pub const MODEL: &str = "switchyard/sim-8b";

/// `n` simulated engines at 100× real time.
pub async fn sims(n: usize) -> SimHandle {
    sims_with(SimConfig {
        engines: n,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await
}

pub async fn sims_with(cfg: SimConfig) -> SimHandle {
    switchyard_sim::spawn(cfg).await.expect("simulator starts")
}

/// A gateway config on ephemeral ports with fast health checks.
pub fn config(urls: Vec<String>, policy: PolicyKind) -> Config {
    Config {
        port: 0,
        prometheus_port: 0,
        admin_port: 0,
        worker_urls: urls,
        policy,
        health_check_interval_secs: 1,
        health_check_timeout_secs: 1,
        retry_initial_backoff_ms: 1,
        retry_max_backoff_ms: 50,
        ..Config::default()
    }
}

pub async fn gateway(cfg: Config) -> Gateway {
    Gateway::start(cfg).await.expect("gateway starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

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

pub fn chat(content: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// A long system prompt of roughly `words` words, distinct per `seed`.
pub fn system_prompt(seed: u32, words: usize) -> String {
    let vocab = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    ];
    let mut s = format!("[{seed}] ");
    for i in 0..words {
        s.push_str(vocab[((i as u32).wrapping_mul(7).wrapping_add(seed) % 10) as usize]);
        s.push(' ');
    }
    s
}

pub fn chat_with_system(system: &str, question: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}], "max_tokens": max_tokens})
}

/// OpenAI-shaped error body with this status-specific `code` string.
pub fn assert_error(body: &Value, code: &str) {
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
}

/// Requests each simulated server has accepted.
pub fn per_server(sims: &SimHandle) -> Vec<u64> {
    sims.servers().iter().map(|s| s.requests()).collect()
}

/// Sum of a metric's samples whose label text contains every `k="v"`.
pub async fn metric(metrics_url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client()
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

pub fn metrics_url(gw: &Gateway) -> String {
    format!("http://{}", gw.metrics_addr)
}

/// Polls until `cond` holds (10 s limit): for state that changes in background tasks
/// (health checks, scrapes) with nothing to await.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the gateway reports `worker_url` healthy.
pub async fn worker_healthy(gw_url: &str, worker_url: &str) -> bool {
    let v: Value = client()
        .get(format!("{gw_url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["url"] == worker_url && w["healthy"] == true)
}

pub fn shared<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// `GET /workers` on the gateway's worker API: `{"workers": [...]}`.
pub async fn admin_workers(gw: &Gateway) -> Value {
    client()
        .get(format!("http://{}/workers", gw.admin_addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
