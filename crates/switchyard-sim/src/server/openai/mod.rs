//! The OpenAI-compatible API, shaped like `vllm serve`: chat completions, completions,
//! embeddings and models, streaming and not, with vLLM's prefill/decode fields; and
//! OpenAI's two audio routes, answered deterministically without the engine.
//!
//! - [`wire`] — the request bodies and their parsing.
//! - [`generate`] — a generation request's checks, its scheduling, and `--instant`.
//! - [`disagg`] — prefill/decode roles (NixlConnector parameters, SGLang bootstrap rooms).
//! - [`response`] — the answer, whole or as server-sent events.
//! - [`embeddings`] — the `/v1/embeddings` route.
//! - [`audio`] — the `/v1/audio/transcriptions` route (its form read by [`multipart`]).
//! - [`speech`] — the `/v1/audio/speech` route.

mod audio;
mod disagg;
mod embeddings;
mod generate;
mod multipart;
mod response;
mod speech;
mod structured;
mod tools;
mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiError, ServerState};
use crate::tokenizer::{self, Token};
pub use audio::transcriptions;
pub use embeddings::embeddings;
use generate::{generate, instant};
pub use speech::speech;
pub use wire::DP_RANK_HEADER;
use wire::{GenRequest, parse};

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn random_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", fastrand::u128(..))
}

impl ServerState {
    /// The served name a request's `model` refers to (the first one when absent).
    fn resolve_model(&self, model: Option<&str>) -> Result<String, ApiError> {
        let names = &self.cfg.served_model_name;
        match model {
            None => Ok(names[0].clone()),
            Some(m) if names.iter().any(|n| n == m) => Ok(m.to_string()),
            Some(m) => Err(
                ApiError::not_found(format!("The model `{m}` does not exist.")).with_param("model"),
            ),
        }
    }

    /// The data-parallel rank from the header or the body, else round-robin.
    fn pick_rank(&self, headers: &HeaderMap, body_rank: Option<usize>) -> Result<usize, ApiError> {
        let dp = self.engines.len();
        let from_header = match headers.get(DP_RANK_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("{DP_RANK_HEADER} must be an integer"), None)
                    })?,
            ),
        };
        match from_header.or(body_rank) {
            Some(r) if r < dp => Ok(r),
            Some(r) => Err(ApiError::bad_request(
                format!("data parallel rank {r} out of range: this server has {dp} rank(s)"),
                Some("data_parallel_rank"),
            )),
            None => Ok(self.rr.fetch_add(1, Ordering::Relaxed) % dp),
        }
    }

    fn check_length(&self, prompt_len: usize, max_tokens: Option<u32>) -> Result<(), ApiError> {
        let max = self.cfg.max_model_len;
        if prompt_len == 0 {
            return Err(ApiError::bad_request("The prompt is empty", None));
        }
        let requested = prompt_len + max_tokens.unwrap_or(0) as usize;
        if prompt_len > max || requested > max {
            return Err(ApiError::bad_request(
                format!(
                    "This model's maximum context length is {max} tokens. However, you requested \
                     {requested} tokens ({prompt_len} in the messages, {} in the completion). \
                     Please reduce the length of the messages or completion.",
                    max_tokens.unwrap_or(0)
                ),
                None,
            ));
        }
        Ok(())
    }
}

impl ApiError {
    fn with_param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: GenRequest = parse(&body)?;
    let Some(messages) = &req.messages else {
        return Err(ApiError::bad_request(
            "Field required: `messages`",
            Some("messages"),
        ));
    };
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            let p = format!("messages[{i}].role");
            return Err(ApiError::bad_request(
                format!("`{p}` is required and must be a string"),
                Some(&p),
            ));
        }
        if !matches!(
            m.get("content"),
            None | Some(Value::String(_) | Value::Array(_) | Value::Null)
        ) {
            let p = format!("messages[{i}].content");
            return Err(ApiError::bad_request(
                format!("`{p}` must be a string or an array of parts"),
                Some(&p),
            ));
        }
    }
    if st.cfg.instant {
        return instant(&st, req, true);
    }
    let messages: Vec<Value> = messages.iter().cloned().map(Value::Object).collect();
    let prompt = tokenizer::encode(&tokenizer::render_chat(&messages));
    generate(st, &headers, req, prompt, true).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: GenRequest = parse(&body)?;
    let prompt = match &req.prompt {
        None => {
            return Err(ApiError::bad_request(
                "Field required: `prompt`",
                Some("prompt"),
            ));
        }
        Some(_) if st.cfg.instant => return instant(&st, req, false),
        Some(p) => prompt_tokens(p)?,
    };
    generate(st, &headers, req, prompt, false).await
}

/// A completion prompt: text, token ids, or a one-element list of either.
pub(super) fn prompt_tokens(p: &Value) -> Result<Vec<Token>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "`prompt` must be a string, an array of token ids, or a one-element array of either",
            Some("prompt"),
        )
    };
    match p {
        Value::String(s) => Ok(tokenizer::encode(s)),
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            token_ids(items).ok_or_else(bad)
        }
        Value::Array(items) if items.len() == 1 => prompt_tokens(&items[0]),
        Value::Array(items) if items.len() > 1 => Err(ApiError::bad_request(
            "switchyard-sim serves one prompt per request; send the prompts separately",
            Some("prompt"),
        )),
        _ => Err(bad()),
    }
}

pub(super) fn token_ids(items: &[Value]) -> Option<Vec<Token>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

/// `POST /tokenize` (vLLM's): the token ids of `messages` (rendered by the chat
/// template, as a chat completion would be) or of `prompt`, their `count`, and the
/// model's `max_model_len`.
pub async fn tokenize(
    State(st): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}"), None))?;
    let tokens = match (v.get("messages"), v.get("prompt")) {
        (Some(Value::Array(messages)), _) => {
            if let Some(i) = messages
                .iter()
                .position(|m| !m.get("role").is_some_and(Value::is_string))
            {
                let p = format!("messages[{i}].role");
                return Err(ApiError::bad_request(
                    format!("`{p}` is required and must be a string"),
                    Some(&p),
                ));
            }
            tokenizer::encode(&tokenizer::render_chat(messages))
        }
        (Some(_), _) => {
            return Err(ApiError::bad_request(
                "`messages` must be an array",
                Some("messages"),
            ));
        }
        (None, Some(p)) => prompt_tokens(p)?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "Field required: `messages` or `prompt`",
                Some("messages"),
            ));
        }
    };
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": st.cfg.max_model_len,
        "tokens": tokens,
        "token_strs": null,
    })))
}

/// `GET /v1/models`.
pub async fn models(State(st): State<Arc<ServerState>>) -> Json<Value> {
    let created = now_unix();
    let root = &st.cfg.served_model_name[0];
    let data: Vec<Value> = st
        .cfg
        .served_model_name
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": null,
                "max_model_len": st.cfg.max_model_len,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
