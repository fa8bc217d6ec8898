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
    check_messages(&req)?;
    if st.cfg.instant {
        return instant(&st, req, true);
    }
    let prompt = chat_prompt(&req);
    generate(st, &headers, req, prompt, true).await
}

/// A chat request's messages, checked as vLLM checks them.
fn check_messages(req: &GenRequest) -> Result<(), ApiError> {
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
    Ok(())
}

/// The token ids of a checked chat request's messages through the chat template.
fn chat_prompt(req: &GenRequest) -> Vec<Token> {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .flatten()
        .cloned()
        .map(Value::Object)
        .collect();
    tokenizer::encode(&tokenizer::render_chat(&messages))
}

/// vLLM's render endpoints answer only on a scale-out server (`--enable-scale-out`).
fn scale_out(st: &ServerState) -> Result<(), ApiError> {
    if st.cfg.enable_scale_out {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "Scale-out endpoints are disabled. Restart with --enable-scale-out to use them.",
        ))
    }
}

/// vLLM's `GenerateRequest`: what a render endpoint answers for one prompt.
fn generate_request(st: &ServerState, req: &GenRequest, id: String, tokens: Vec<Token>) -> Value {
    json!({
        "request_id": id,
        "token_ids": tokens,
        "token_offsets": null,
        "features": null,
        "sampling_params": {
            "max_tokens": req.max_completion_tokens.or(req.max_tokens),
            "min_tokens": req.min_tokens.unwrap_or(0),
            "temperature": req.temperature.unwrap_or(1.0),
            "seed": req.seed,
            "ignore_eos": req.ignore_eos.unwrap_or(false),
        },
        "model": req.model.clone().unwrap_or_else(|| st.cfg.served_model_name[0].clone()),
        "stream": req.stream.unwrap_or(false),
        "stream_options": req.stream_options.as_ref().map(|o| json!({"include_usage": o.include_usage})),
        "cache_salt": null,
        "priority": req.priority,
        "kv_transfer_params": null,
        "ec_transfer_params": null,
    })
}

/// `POST /v1/chat/completions/render` (vLLM scale-out): the chat request's prompt token
/// ids as a `GenerateRequest`, without generating.
pub async fn chat_render(
    State(st): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    scale_out(&st)?;
    let req: GenRequest = parse(&body)?;
    st.resolve_model(req.model.as_deref())?;
    check_messages(&req)?;
    let tokens = chat_prompt(&req);
    Ok(Json(generate_request(
        &st,
        &req,
        random_id("chatcmpl"),
        tokens,
    )))
}

/// `POST /v1/completions/render` (vLLM scale-out): one `GenerateRequest` per prompt.
pub async fn completions_render(
    State(st): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    scale_out(&st)?;
    let req: GenRequest = parse(&body)?;
    st.resolve_model(req.model.as_deref())?;
    let Some(p) = &req.prompt else {
        return Err(ApiError::bad_request(
            "Field required: `prompt`",
            Some("prompt"),
        ));
    };
    // A batch renders each prompt (generation serves one per request).
    let prompts: Vec<&Value> = match p {
        Value::Array(items)
            if items.len() > 1 && items.iter().all(|i| i.is_string() || i.is_array()) =>
        {
            items.iter().collect()
        }
        one => vec![one],
    };
    let base = random_id("cmpl");
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let tokens = prompt_tokens(p)?;
        if tokens.is_empty() {
            return Err(ApiError::bad_request("The prompt is empty", Some("prompt")));
        }
        let id = if prompts.len() == 1 {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        out.push(generate_request(&st, &req, id, tokens));
    }
    Ok(Json(Value::Array(out)))
}

/// `POST /detokenize` (vLLM's): the text of `tokens`.
pub async fn detokenize(
    State(st): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}"), None))?;
    if let Some(m) = v.get("model") {
        st.resolve_model(m.as_str())?;
    }
    let tokens = match v.get("tokens") {
        Some(Value::Array(items)) => token_ids(items).ok_or_else(|| {
            ApiError::bad_request("`tokens` must be an array of token ids", Some("tokens"))
        })?,
        _ => {
            return Err(ApiError::bad_request(
                "Field required: `tokens`",
                Some("tokens"),
            ));
        }
    };
    let prompt = tokenizer::try_decode(&tokens).ok_or_else(|| {
        ApiError::bad_request(
            "`tokens` holds an id outside the vocabulary",
            Some("tokens"),
        )
    })?;
    Ok(Json(json!({"prompt": prompt})))
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
