//! Fixtures shared by the stateful tests: a SQLite file of its own, and (from the
//! library) a PostgreSQL database of its own per test, removed when the test ends.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use switchyard_stateful::responses::service::{
    Answer, Created, Engine, EngineError, Responses, TokenCount, sse_chunks,
};

use switchyard_stateful::store::StoreConfig;
#[allow(unused_imports)]
pub use switchyard_stateful::testing::PgDatabase;

pub fn config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_string(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    }
}

/// A SQLite file in a directory of its own, removed when dropped.
pub struct SqliteFile(std::path::PathBuf);

impl SqliteFile {
    pub fn new(test: &str) -> SqliteFile {
        let dir =
            std::env::temp_dir().join(format!("switchyard-store-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SqliteFile(dir)
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.0.join("state.db").display())
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The simulator as the engine; every body it was sent, with its session key.
pub struct SimEngine {
    pub http: reqwest::Client,
    pub url: String,
    pub sent: Arc<Mutex<Vec<(Value, String)>>>,
}

impl Engine for SimEngine {
    fn chat(
        &self,
        body: Value,
        session: String,
        _owner: String,
    ) -> BoxFuture<'static, Result<Answer, EngineError>> {
        self.sent
            .lock()
            .unwrap()
            .push((body.clone(), session.clone()));
        let (http, url) = (self.http.clone(), self.url.clone());
        Box::pin(async move {
            let down = |e: reqwest::Error| EngineError {
                status: 502,
                code: "engine_unreachable".into(),
                message: e.to_string(),
            };
            let resp = http
                .post(format!("{url}/v1/chat/completions"))
                .header("x-session-id", session)
                .json(&body)
                .send()
                .await
                .map_err(down)?;
            let status = resp.status().as_u16();
            if status != 200 {
                let v: Value = resp.json().await.unwrap_or_default();
                return Err(EngineError {
                    status,
                    code: v["error"]["code"]
                        .as_str()
                        .unwrap_or("engine_error")
                        .to_string(),
                    message: v["error"]["message"].as_str().unwrap_or("").to_string(),
                });
            }
            if body["stream"] == true {
                Ok(Answer::Stream(sse_chunks(Box::pin(resp.bytes_stream()))))
            } else {
                Ok(Answer::Complete(resp.json().await.map_err(down)?))
            }
        })
    }

    fn count_tokens(
        &self,
        body: Value,
        _session: String,
        _owner: String,
    ) -> BoxFuture<'static, Result<TokenCount, EngineError>> {
        let (http, url) = (self.http.clone(), self.url.clone());
        Box::pin(async move {
            let v: Value = http
                .post(format!("{url}/tokenize"))
                .json(&body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| EngineError {
                    status: 502,
                    code: "engine_unreachable".into(),
                    message: e.to_string(),
                })?
                .json()
                .await
                .unwrap_or_default();
            Ok(TokenCount::from_tokenize(&v).expect("a count"))
        })
    }
}

/// A non-streamed response created for the `default` owner.
pub async fn create_json(svc: &Responses, body: &Value) -> Value {
    match svc.create(body, "default").await {
        Ok(Created::Json(v)) => v,
        Ok(Created::Events(_)) => panic!("a stream for {body}"),
        Err(e) => panic!("{body}: {e:?}"),
    }
}

/// The simulator's `/v1/embeddings` as the embedding model. While `gate` is closed
/// (`Some` with no permits) every request waits for a permit: a test holds ingestion in
/// the middle of a file for as long as it needs.
pub struct SimEmbedder {
    pub http: reqwest::Client,
    pub url: String,
    pub model: String,
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl SimEmbedder {
    pub fn new(url: &str, model: &str) -> SimEmbedder {
        SimEmbedder {
            http: reqwest::Client::new(),
            url: url.to_string(),
            model: model.to_string(),
            calls: Default::default(),
            gate: None,
        }
    }
}

impl switchyard_stateful::vector::embed::Embedder for SimEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'static, Result<Vec<Vec<f32>>, EngineError>> {
        let (http, url, model) = (self.http.clone(), self.url.clone(), self.model.clone());
        let calls = self.calls.clone();
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Some(g) = gate {
                g.acquire().await.unwrap().forget();
            }
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let n = texts.len();
            let v: Value = http
                .post(format!("{url}/v1/embeddings"))
                .json(&serde_json::json!({"model": model, "input": texts}))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| EngineError {
                    status: 502,
                    code: "engine_unreachable".into(),
                    message: e.to_string(),
                })?
                .json()
                .await
                .unwrap_or_default();
            switchyard_stateful::vector::embed::from_answer(&v, n)
        })
    }
}

/// The `data:` payloads of a streamed response's SSE events, parsed.
pub fn events_of(raw: &[String]) -> Vec<Value> {
    raw.iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
