//! A generation request: the checks vLLM makes, the sequence submitted to a
//! data-parallel rank's engine, and `--instant` mode.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use super::super::{ApiError, ServerState};
use super::disagg::disaggregation;
use super::response::{Output, complete_response, stream_response};
use super::structured::forced_output;
use super::tools::{quoting_answer, tool_call};
use super::wire::GenRequest;
use super::{now_unix, random_id};
use crate::kv_cache::hash_block;
use crate::scheduler::{FinishReason, SeqSpec};
use crate::tokenizer::{self, Token};

/// `--instant`: answer at once with a fixed completion of `max_tokens` (default 16)
/// tokens, without tokenizing, caching or scheduling — an engine that costs nothing,
/// for measuring a gateway's own overhead. Usage reports no prompt tokens.
/// Whether a request's `stream_options` asks for usage.
fn includes_usage(req: &GenRequest) -> bool {
    req.stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
}

pub(super) fn instant(st: &ServerState, req: GenRequest, chat: bool) -> Result<Response, ApiError> {
    let model = st.resolve_model(req.model.as_deref())?;
    let tool = if chat {
        tool_call(&req, st.cfg.seed)?
    } else {
        None
    };
    let forced = match &tool {
        Some(t) => Some(t.pieces.clone()),
        None => forced_output(&req, st.cfg.seed)?.or_else(|| quoting_answer(&req)),
    };
    let max = if chat {
        req.max_completion_tokens.or(req.max_tokens)
    } else {
        req.max_tokens
    };
    let n = match &forced {
        Some(pieces) => max.map_or(pieces.len() as u32, |m| m.min(pieces.len() as u32)),
        None => max.unwrap_or(16),
    };
    let out = Output {
        chat,
        id: random_id(if chat { "chatcmpl" } else { "cmpl" }),
        created: now_unix(),
        model,
        target: n,
        finish: if n as usize == forced.as_ref().map_or(usize::MAX, Vec::len) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        },
        kv: None,
        forced: None,
        tool: tool.as_ref().map(|t| (t.id.clone(), t.name.clone())),
        details: st.cfg.enable_prompt_tokens_details,
        timing: st.cfg.sim_timing,
        include_usage: req.stream == Some(true) && includes_usage(&req),
    };
    let tokens: Vec<&str> = match &forced {
        Some(pieces) => pieces[..n as usize].iter().map(String::as_str).collect(),
        None => (0..n)
            .map(|i| tokenizer::token_text(tokenizer::generated_token(st.cfg.seed, i)))
            .collect(),
    };
    let usage = out.usage_of(0, n, 0);
    if req.stream == Some(true) {
        let mut frames = Vec::with_capacity(tokens.len() + 3);
        if chat {
            frames.push(out.chunk(None, true, None));
        }
        for (i, t) in tokens.iter().enumerate() {
            let finish = (i + 1 == tokens.len()).then(|| out.finish_str(out.finish));
            frames.push(out.piece(i, t, finish));
        }
        if out.include_usage {
            frames.push(out.event(json!({"id": out.id, "object": if chat { "chat.completion.chunk" } else { "text_completion" },
                "created": out.created, "model": out.model, "choices": [], "usage": usage})));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .body(Body::from_stream(stream))
            .expect("static headers are valid"));
    }
    let text: String = tokens.concat();
    let finish = out.finish_str(out.finish);
    let choice = if chat {
        json!({"index": 0, "message": out.message(&text), "logprobs": null, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
    };
    Ok(Json(
        json!({"id": out.id, "object": if chat { "chat.completion" } else { "text_completion" },
        "created": out.created, "model": out.model, "choices": [choice], "usage": usage}),
    )
    .into_response())
}

pub(super) async fn generate(
    st: Arc<ServerState>,
    headers: &HeaderMap,
    req: GenRequest,
    prompt: Vec<Token>,
    chat: bool,
) -> Result<Response, ApiError> {
    let model = st.resolve_model(req.model.as_deref())?;
    if let Some(n) = req.n
        && n != 1
    {
        return Err(ApiError::bad_request(
            format!("n={n} is not supported: switchyard-sim generates exactly one choice (n=1)"),
            Some("n"),
        ));
    }
    if let Some(t) = req.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(ApiError::bad_request(
            "temperature must be a non-negative number",
            Some("temperature"),
        ));
    }
    let max_tokens = if chat {
        req.max_completion_tokens.or(req.max_tokens)
    } else {
        req.max_tokens
    };
    if max_tokens == Some(0) {
        return Err(ApiError::bad_request(
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ));
    }
    if let (Some(min), Some(max)) = (req.min_tokens, max_tokens)
        && min > max
    {
        return Err(ApiError::bad_request(
            "min_tokens must be less than or equal to max_tokens",
            Some("min_tokens"),
        ));
    }
    let prompt_len = prompt.len();
    st.check_length(prompt_len, max_tokens)?;
    let rank = st.pick_rank(headers, req.data_parallel_rank)?;
    let mut disagg = disaggregation(&st, &req, prompt_len).await?;

    let seed = match req.seed {
        Some(s) => s as u64,
        None => hash_block(st.cfg.seed, &prompt),
    };
    let room_left = (st.cfg.max_model_len - prompt_len) as u32;
    let tool = if chat { tool_call(&req, seed)? } else { None };
    let forced = match &tool {
        Some(t) => Some(t.pieces.clone()),
        None => forced_output(&req, seed)?.or_else(|| quoting_answer(&req)),
    };
    let (target, finish) = match (max_tokens, &forced) {
        (m, Some(pieces)) => {
            let n = (pieces.len() as u32).min(room_left);
            match m {
                Some(m) if m < n => (m, FinishReason::Length),
                _ if n < pieces.len() as u32 => (n, FinishReason::Length),
                _ => (n, FinishReason::Stop),
            }
        }
        (Some(m), None) => (m, FinishReason::Length),
        (None, None) if req.ignore_eos == Some(true) => (room_left, FinishReason::Length),
        (None, None) => {
            let mut rng = fastrand::Rng::with_seed(seed);
            let sampled = st
                .cfg
                .output_len
                .sample(&mut rng)
                .max(req.min_tokens.unwrap_or(0));
            if sampled >= room_left {
                (room_left, FinishReason::Length)
            } else {
                (sampled, FinishReason::Stop)
            }
        }
    };
    if target == 0 {
        return Err(ApiError::bad_request(
            "The prompt leaves no room for output tokens",
            None,
        ));
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let spec = SeqSpec {
        prompt,
        max_tokens: target,
        finish_reason: finish,
        seed,
        remote_kv_tokens: disagg.remote_kv_tokens,
        arrival: st.clock.now(),
        priority: req.priority,
        tx,
    };
    st.requests[rank].fetch_add(1, Ordering::Relaxed);
    if !st.engines[rank].submit(spec) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine stopped",
        ));
    }
    let out = Output {
        chat,
        id: random_id(if chat { "chatcmpl" } else { "cmpl" }),
        created: now_unix(),
        model,
        target,
        finish,
        kv: disagg.return_kv_params.then(|| (st.clone(), rank)),
        forced,
        tool: tool.map(|t| (t.id, t.name)),
        details: st.cfg.enable_prompt_tokens_details,
        timing: st.cfg.sim_timing,
        include_usage: req.stream == Some(true) && includes_usage(&req),
    };
    if req.stream == Some(true) {
        Ok(stream_response(out, rx, disagg.room.take()))
    } else {
        complete_response(out, rx, disagg.room.take()).await
    }
}
