//! `POST /v1/embeddings`: deterministic unit vectors derived from the input tokens,
//! after the engine has "run" the inputs (they take a scheduler step like a prefill).
//! A vector is the normalised sum of one pseudo-random vector per distinct token, so
//! texts that share words are similar (cosine ≈ the share of tokens in common) and
//! classifiers built on embeddings behave plausibly against the simulator.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::super::{ApiError, ServerState};
use super::wire::{EmbeddingRequest, parse};
use super::{now_unix, random_id, token_ids};
use crate::kv_cache::hash_block;
use crate::scheduler::{FinishReason, SeqEvent, SeqSpec};
use crate::tokenizer::{self, Token};

pub async fn embeddings(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = parse(&body)?;
    let model = st.resolve_model(req.model.as_deref())?;
    let inputs = match &req.input {
        None => {
            return Err(ApiError::bad_request(
                "Field required: `input`",
                Some("input"),
            ));
        }
        Some(v) => embedding_inputs(v)?,
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("encoding_format must be \"float\" or \"base64\", not {other:?}"),
                Some("encoding_format"),
            ));
        }
    };
    let dim = st.cfg.embedding_dim;
    let out_dim = match req.dimensions {
        None => dim,
        Some(d) if d >= 1 && d <= dim => d,
        Some(d) => {
            return Err(ApiError::bad_request(
                format!("dimensions must be between 1 and {dim}, got {d}"),
                Some("dimensions"),
            ));
        }
    };
    for t in &inputs {
        st.check_length(t.len(), None)?;
    }
    let rank = st.pick_rank(&headers, None)?;
    st.requests[rank].fetch_add(1, Ordering::Relaxed);
    let mut pending = Vec::new();
    for tokens in &inputs {
        let (tx, rx) = mpsc::unbounded_channel();
        let spec = SeqSpec {
            prompt: tokens.clone(),
            max_tokens: 0,
            finish_reason: FinishReason::Stop,
            seed: 0,
            remote_kv_tokens: 0,
            arrival: st.clock.now(),
            priority: req.priority,
            tx,
        };
        if !st.engines[rank].submit(spec) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine stopped",
            ));
        }
        pending.push(rx);
    }
    let mut total = 0usize;
    let mut data = Vec::with_capacity(inputs.len());
    for (i, (mut rx, tokens)) in pending.into_iter().zip(&inputs).enumerate() {
        loop {
            match rx.recv().await {
                Some(SeqEvent::Done(_)) => break,
                Some(_) => continue,
                None => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "engine dropped the request",
                    ));
                }
            }
        }
        total += tokens.len();
        let v = embedding_vector(tokens, dim, out_dim);
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(v)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    Ok(Json(json!({
        "id": random_id("embd"),
        "object": "list",
        "created": now_unix(),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }))
    .into_response())
}

fn embedding_inputs(v: &Value) -> Result<Vec<Vec<Token>>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "`input` must be a string, an array of strings, an array of token ids, or an array of token-id arrays",
            Some("input"),
        )
    };
    match v {
        Value::String(s) => Ok(vec![tokenizer::encode(s)]),
        Value::Array(items) if items.is_empty() => Err(ApiError::bad_request(
            "`input` must not be empty",
            Some("input"),
        )),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .map(|s| tokenizer::encode(s.as_str().unwrap_or_default()))
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            Ok(vec![token_ids(items).ok_or_else(bad)?])
        }
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|a| token_ids(a.as_array().map(Vec::as_slice).unwrap_or_default()).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// A unit vector that depends only on the tokens; `out_dim` < `dim` truncates and
/// renormalizes (Matryoshka style).
fn embedding_vector(tokens: &[Token], dim: usize, out_dim: usize) -> Vec<f32> {
    let mut distinct: Vec<Token> = tokens.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut v = vec![0f32; dim];
    for t in &distinct {
        let mut rng = fastrand::Rng::with_seed(hash_block(0x5EED, std::slice::from_ref(t)));
        v.iter_mut().for_each(|x| *x += rng.f32() * 2.0 - 1.0);
    }
    v.truncate(out_dim);
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
