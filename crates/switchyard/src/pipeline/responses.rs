//! The Responses API's engine (docs/responses.md): the chat completions the stateful
//! layer builds run through this pipeline in-process, so selection, cache-aware
//! routing, retries, fallbacks and metrics apply to them as to any client's. The
//! client's admission permit is held by the API's handler; these run on its behalf.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use switchyard_stateful::responses::service::{
    Answer, Engine, EngineError, TokenCount, sse_chunks,
};

use super::admit::Admitted;
use super::{Pipeline, RequestContext};
use crate::request::Route;

/// Largest non-streamed engine answer read.
const ANSWER_LIMIT: usize = 64 << 20;

pub struct PipelineEngine(pub Arc<Pipeline>);

fn engine_error(status: u16, body: &[u8]) -> EngineError {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    EngineError {
        status,
        code: v["error"]["code"]
            .as_str()
            .unwrap_or(if status >= 500 {
                "server_error"
            } else {
                "invalid_request"
            })
            .to_string(),
        message: v["error"]["message"]
            .as_str()
            .unwrap_or("The engine request failed")
            .to_string(),
    }
}

async fn read(body: Body) -> Result<Bytes, EngineError> {
    Limited::new(body, ANSWER_LIMIT)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| EngineError {
            status: 502,
            code: "bad_gateway".into(),
            message: format!("The engine's answer could not be read: {e}"),
        })
}

impl PipelineEngine {
    /// Runs one JSON body through the pipeline on `route`, with the routing session.
    async fn send(
        pipeline: Arc<Pipeline>,
        route: Route,
        body: &Value,
        session: &str,
        caller: Arc<crate::tenancy::Caller>,
        cacheable: bool,
    ) -> Result<Body, EngineError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let (false, Ok(v)) = (session.is_empty(), HeaderValue::from_str(session)) {
            headers.insert(HeaderName::from_static("x-session-id"), v);
        }
        let ctx = RequestContext {
            route,
            request_id: crate::state::random_id("req_"),
            start: Instant::now(),
            headers,
            body: Bytes::from(body.to_string()),
            admitted: Admitted::on_behalf(),
            caller,
            trace: crate::telemetry::current(),
        };
        let resp = if cacheable {
            pipeline.run_cached(ctx).await
        } else {
            pipeline.run(ctx).await
        };
        let status = resp.status().as_u16();
        let body = resp.into_body();
        if status != 200 {
            return Err(engine_error(status, &read(body).await?));
        }
        Ok(body)
    }
}

fn not_json(e: serde_json::Error) -> EngineError {
    EngineError {
        status: 502,
        code: "bad_gateway".into(),
        message: format!("The engine's answer is not JSON: {e}"),
    }
}

impl PipelineEngine {
    /// A chat through the pipeline, through its response cache when `cacheable`.
    fn ask(
        &self,
        body: Value,
        session: String,
        owner: String,
        cacheable: bool,
    ) -> BoxFuture<'static, Result<Answer, EngineError>> {
        let pipeline = self.0.clone();
        Box::pin(async move {
            let caller = pipeline.tenancy.on_behalf_of(&owner);
            let body_out =
                Self::send(pipeline, Route::Chat, &body, &session, caller, cacheable).await?;
            if body["stream"] == true {
                return Ok(Answer::Stream(sse_chunks(Box::pin(
                    body_out.into_data_stream(),
                ))));
            }
            let bytes = read(body_out).await?;
            serde_json::from_slice(&bytes)
                .map(Answer::Complete)
                .map_err(not_json)
        })
    }
}

impl Engine for PipelineEngine {
    fn chat(
        &self,
        body: Value,
        session: String,
        owner: String,
    ) -> BoxFuture<'static, Result<Answer, EngineError>> {
        self.ask(body, session, owner, false)
    }

    fn chat_cacheable(
        &self,
        body: Value,
        session: String,
        owner: String,
    ) -> BoxFuture<'static, Result<Answer, EngineError>> {
        self.ask(body, session, owner, true)
    }

    fn count_tokens(
        &self,
        body: Value,
        session: String,
        owner: String,
    ) -> BoxFuture<'static, Result<TokenCount, EngineError>> {
        let pipeline = self.0.clone();
        Box::pin(async move {
            let caller = pipeline.tenancy.on_behalf_of(&owner);
            let out = Self::send(pipeline, Route::Tokenize, &body, &session, caller, false).await?;
            let v: Value = serde_json::from_slice(&read(out).await?).map_err(not_json)?;
            TokenCount::from_tokenize(&v).ok_or_else(|| EngineError {
                status: 502,
                code: "bad_gateway".into(),
                message: "The engine's /tokenize answer has no `count`".into(),
            })
        })
    }
}

/// Vector stores' embedding model (`--embedding-model`), served by the fleet through
/// this pipeline: routing, retries and metrics apply as to any client's embeddings.
pub struct PipelineEmbedder {
    pub pipeline: Arc<Pipeline>,
    pub model: String,
}

impl switchyard_stateful::vector::embed::Embedder for PipelineEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'static, Result<Vec<Vec<f32>>, EngineError>> {
        let pipeline = self.pipeline.clone();
        let n = texts.len();
        let body = serde_json::json!({
            "model": self.model, "input": texts, "encoding_format": "float",
        });
        Box::pin(async move {
            // No session key: embeddings share no prefix worth keeping together. The
            // gateway's own work (ingestion, query embedding) is counted as `_gateway`.
            let caller = pipeline.tenancy.internal();
            let out =
                PipelineEngine::send(pipeline, Route::Embeddings, &body, "", caller, false).await?;
            let v: Value = serde_json::from_slice(&read(out).await?).map_err(not_json)?;
            switchyard_stateful::vector::embed::from_answer(&v, n)
        })
    }
}
