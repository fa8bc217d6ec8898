//! The OpenAI-compatible API, shaped like `vllm serve`: chat completions, completions,
//! embeddings and models, streaming and not, with vLLM's prefill/decode fields.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{ApiError, ServerState};
use crate::bootstrap::RoomState;
use crate::config::Role;
use crate::kv_cache::hash_block;
use crate::scheduler::{FinishReason, SeqEvent, SeqSpec, SeqSummary};
use crate::tokenizer::{self, Token};

/// Header that picks the data-parallel rank, as vLLM reads it.
pub const DP_RANK_HEADER: &str = "x-data-parallel-rank";

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// vLLM's `kv_transfer_params` (NixlConnector).
#[derive(Deserialize)]
struct KvTransferParams {
    #[serde(default)]
    do_remote_decode: Option<bool>,
    #[serde(default)]
    do_remote_prefill: Option<bool>,
    remote_block_ids: Option<Vec<u64>>,
    remote_engine_id: Option<String>,
}

/// Fields of chat and completion requests the simulator reads; others are accepted and ignored.
#[derive(Deserialize)]
struct GenRequest {
    model: Option<String>,
    messages: Option<Vec<Map<String, Value>>>,
    prompt: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    min_tokens: Option<u32>,
    ignore_eos: Option<bool>,
    temperature: Option<f64>,
    n: Option<u32>,
    seed: Option<i64>,
    kv_transfer_params: Option<KvTransferParams>,
    bootstrap_host: Option<String>,
    bootstrap_port: Option<u16>,
    bootstrap_room: Option<u64>,
    data_parallel_rank: Option<usize>,
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// Parses a JSON object body into `T`, naming the offending field on error.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object",
            None,
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(
            format!("Invalid value for `{path}`: {}", e.inner()),
            Some(&path),
        )
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_id(prefix: &str) -> String {
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

/// `--instant`: answer at once with a fixed completion of `max_tokens` (default 16)
/// tokens, without tokenizing, caching or scheduling — an engine that costs nothing,
/// for measuring a gateway's own overhead. Usage reports no prompt tokens.
fn instant(st: &ServerState, req: GenRequest, chat: bool) -> Result<Response, ApiError> {
    let model = st.resolve_model(req.model.as_deref())?;
    let n = if chat {
        req.max_completion_tokens.or(req.max_tokens)
    } else {
        req.max_tokens
    }
    .unwrap_or(16);
    let out = Output {
        chat,
        id: random_id(if chat { "chatcmpl" } else { "cmpl" }),
        created: now_unix(),
        model,
        target: n,
        finish: FinishReason::Length,
        kv: None,
    };
    let tokens: Vec<&str> = (0..n)
        .map(|i| tokenizer::token_text(tokenizer::generated_token(st.cfg.seed, i)))
        .collect();
    let usage = json!({"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n,
                       "prompt_tokens_details": {"cached_tokens": 0}});
    if req.stream == Some(true) {
        let mut frames = Vec::with_capacity(tokens.len() + 3);
        if chat {
            frames.push(out.chunk(None, true, None));
        }
        for (i, t) in tokens.iter().enumerate() {
            let finish = (i + 1 == tokens.len()).then_some("length");
            frames.push(out.chunk(Some(t), false, finish));
        }
        if req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
        {
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
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length"})
    };
    Ok(Json(
        json!({"id": out.id, "object": if chat { "chat.completion" } else { "text_completion" },
        "created": out.created, "model": out.model, "choices": [choice], "usage": usage}),
    )
    .into_response())
}

/// A completion prompt: text, token ids, or a one-element list of either.
fn prompt_tokens(p: &Value) -> Result<Vec<Token>, ApiError> {
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

fn token_ids(items: &[Value]) -> Option<Vec<Token>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

/// Marks an SGLang bootstrap room done when the prefill produces its first token,
/// or failed if the request ends before that.
struct RoomGuard {
    st: Arc<ServerState>,
    room: u64,
    prompt_len: usize,
    done: bool,
}

impl RoomGuard {
    fn ready(&mut self) {
        if !self.done {
            self.done = true;
            self.st
                .rooms
                .complete(self.room, RoomState::Ready(self.prompt_len));
        }
    }
}

impl Drop for RoomGuard {
    fn drop(&mut self) {
        if !self.done {
            self.st
                .rooms
                .complete(self.room, RoomState::Failed("prefill aborted".into()));
        }
    }
}

/// Prefill/decode handling decided from the request.
struct Disagg {
    remote_kv_tokens: usize,
    return_kv_params: bool,
    room: Option<RoomGuard>,
}

async fn disaggregation(
    st: &Arc<ServerState>,
    req: &GenRequest,
    prompt_len: usize,
) -> Result<Disagg, ApiError> {
    let role = st.cfg.role;
    let mut out = Disagg {
        remote_kv_tokens: 0,
        return_kv_params: false,
        room: None,
    };
    if let Some(kv) = &req.kv_transfer_params {
        if kv.do_remote_prefill == Some(true) {
            if role == Role::Prefill {
                return Err(ApiError::bad_request(
                    "this engine runs with --role prefill and cannot take do_remote_prefill",
                    Some("kv_transfer_params"),
                ));
            }
            let (Some(ids), Some(_)) = (&kv.remote_block_ids, &kv.remote_engine_id) else {
                return Err(ApiError::bad_request(
                    "do_remote_prefill needs remote_block_ids and remote_engine_id",
                    Some("kv_transfer_params"),
                ));
            };
            out.remote_kv_tokens = (ids.len() * st.cfg.block_size).min(prompt_len);
        }
        if kv.do_remote_decode == Some(true) {
            if role == Role::Decode {
                return Err(ApiError::bad_request(
                    "this engine runs with --role decode and cannot take do_remote_decode",
                    Some("kv_transfer_params"),
                ));
            }
            out.return_kv_params = true;
        }
    }
    if let Some(room) = req.bootstrap_room {
        match role {
            Role::Both => {
                return Err(ApiError::bad_request(
                    "bootstrap_room needs an engine started with --role prefill or --role decode",
                    Some("bootstrap_room"),
                ));
            }
            Role::Prefill => {
                out.room = Some(RoomGuard {
                    st: st.clone(),
                    room,
                    prompt_len,
                    done: false,
                });
            }
            Role::Decode => {
                let (Some(host), Some(port)) = (&req.bootstrap_host, req.bootstrap_port) else {
                    return Err(ApiError::bad_request(
                        "bootstrap_room needs bootstrap_host and bootstrap_port",
                        Some("bootstrap_host"),
                    ));
                };
                wait_for_prefill(st, host, port, room).await?;
                out.remote_kv_tokens = prompt_len;
            }
        }
    }
    Ok(out)
}

/// Asks the prefill engine's bootstrap endpoint whether the room's KV is ready.
async fn wait_for_prefill(
    st: &ServerState,
    host: &str,
    port: u16,
    room: u64,
) -> Result<(), ApiError> {
    let fail = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("KV transfer from prefill failed: {why}"),
        )
    };
    let uri: http::Uri = format!("http://{host}:{port}/sim/bootstrap/{room}")
        .parse()
        .map_err(|e| {
            ApiError::bad_request(
                format!("invalid bootstrap address: {e}"),
                Some("bootstrap_host"),
            )
        })?;
    let fut = st.http.get(uri);
    let resp = tokio::time::timeout(Duration::from_secs(90), fut)
        .await
        .map_err(|_| fail("bootstrap server did not answer".into()))?
        .map_err(|e| fail(format!("bootstrap server unreachable: {e}")))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(fail(format!("bootstrap server answered {}", resp.status())))
    }
}

async fn generate(
    st: Arc<ServerState>,
    headers: &HeaderMap,
    req: GenRequest,
    prompt: Vec<Token>,
    chat: bool,
) -> Result<Response, ApiError> {
    let model = st.resolve_model(req.model.as_deref())?;
    if let Some(n) = req.n {
        if n != 1 {
            return Err(ApiError::bad_request(
                format!(
                    "n={n} is not supported: switchyard-sim generates exactly one choice (n=1)"
                ),
                Some("n"),
            ));
        }
    }
    if let Some(t) = req.temperature {
        if !(t.is_finite() && t >= 0.0) {
            return Err(ApiError::bad_request(
                "temperature must be a non-negative number",
                Some("temperature"),
            ));
        }
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
    if let (Some(min), Some(max)) = (req.min_tokens, max_tokens) {
        if min > max {
            return Err(ApiError::bad_request(
                "min_tokens must be less than or equal to max_tokens",
                Some("min_tokens"),
            ));
        }
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
    let (target, finish) = match max_tokens {
        Some(m) => (m, FinishReason::Length),
        None if req.ignore_eos == Some(true) => (room_left, FinishReason::Length),
        None => {
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
    };
    if req.stream == Some(true) {
        let include_usage = req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(stream_response(out, rx, include_usage, disagg.room.take()))
    } else {
        complete_response(out, rx, disagg.room.take()).await
    }
}

/// What the response needs to know about the request.
struct Output {
    chat: bool,
    id: String,
    created: u64,
    model: String,
    target: u32,
    finish: FinishReason,
    /// Set when the response must carry `kv_transfer_params` for a remote decode.
    kv: Option<(Arc<ServerState>, usize)>,
}

impl Output {
    fn usage(&self, s: &SeqSummary) -> Value {
        json!({
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens as usize,
            "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
        })
    }

    fn kv_params(&self, s: &SeqSummary) -> Value {
        match &self.kv {
            None => Value::Null,
            Some((st, _rank)) => json!({
                "do_remote_prefill": true,
                "do_remote_decode": false,
                "remote_block_ids": s.block_ids,
                "remote_engine_id": st.engine_id,
                "remote_host": st.addr.ip().to_string(),
                "remote_port": st.addr.port(),
                "tp_size": 1,
            }),
        }
    }

    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Bytes {
        let choice = if self.chat {
            let delta = if role {
                json!({"role": "assistant", "content": ""})
            } else {
                json!({"content": text.unwrap_or("")})
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish, "stop_reason": null})
        };
        self.event(json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }))
    }

    fn event(&self, v: Value) -> Bytes {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut buf, &v).expect("serializing JSON to memory");
        buf.extend_from_slice(b"\n\n");
        Bytes::from(buf)
    }
}

fn timing(s: &SeqSummary) -> Value {
    json!({
        "arrival": s.arrival,
        "queue_secs": s.scheduled - s.arrival,
        "ttft_secs": s.first_token - s.arrival,
        "e2e_secs": s.finished - s.arrival,
        "preemptions": s.preemptions,
    })
}

async fn complete_response(
    out: Output,
    mut rx: mpsc::UnboundedReceiver<SeqEvent>,
    mut room: Option<RoomGuard>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let summary = loop {
        match rx.recv().await {
            Some(SeqEvent::Token { token, .. }) => {
                if let Some(r) = room.as_mut() {
                    r.ready();
                }
                text.push_str(tokenizer::token_text(token));
            }
            Some(SeqEvent::Done(s)) => break s,
            None => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine dropped the request",
                ));
            }
        }
    };
    let finish = summary.finish_reason.as_str();
    let choice = if out.chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
               "logprobs": null, "finish_reason": finish, "stop_reason": null})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish,
               "stop_reason": null, "prompt_logprobs": null})
    };
    let body = json!({
        "id": out.id,
        "object": if out.chat { "chat.completion" } else { "text_completion" },
        "created": out.created,
        "model": out.model,
        "choices": [choice],
        "usage": out.usage(&summary),
        "kv_transfer_params": out.kv_params(&summary),
        "sim_timing": timing(&summary),
    });
    Ok(Json(body).into_response())
}

/// Server-sent events: a role chunk, one chunk per token (the last carries
/// `finish_reason`), an optional usage chunk, then `data: [DONE]`.
fn stream_response(
    out: Output,
    rx: mpsc::UnboundedReceiver<SeqEvent>,
    include_usage: bool,
    room: Option<RoomGuard>,
) -> Response {
    struct St {
        out: Output,
        rx: mpsc::UnboundedReceiver<SeqEvent>,
        include_usage: bool,
        room: Option<RoomGuard>,
        emitted: u32,
        queue: VecDeque<Bytes>,
        finished: bool,
    }
    let st = St {
        out,
        rx,
        include_usage,
        room,
        emitted: 0,
        queue: VecDeque::new(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(st, |mut s| async move {
        loop {
            if let Some(b) = s.queue.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(b), s));
            }
            if s.finished {
                return None;
            }
            match s.rx.recv().await {
                Some(SeqEvent::Token { token, .. }) => {
                    if let Some(r) = s.room.as_mut() {
                        r.ready();
                    }
                    if s.out.chat && s.emitted == 0 {
                        s.queue.push_back(s.out.chunk(None, true, None));
                    }
                    s.emitted += 1;
                    let finish = (s.emitted == s.out.target).then_some(s.out.finish.as_str());
                    s.queue.push_back(s.out.chunk(
                        Some(tokenizer::token_text(token)),
                        false,
                        finish,
                    ));
                }
                Some(SeqEvent::Done(summary)) => {
                    if s.include_usage {
                        let usage = s.out.event(json!({
                            "id": s.out.id,
                            "object": if s.out.chat { "chat.completion.chunk" } else { "text_completion" },
                            "created": s.out.created,
                            "model": s.out.model,
                            "choices": [],
                            "usage": s.out.usage(&summary),
                            "kv_transfer_params": s.out.kv_params(&summary),
                            "sim_timing": timing(&summary),
                        }));
                        s.queue.push_back(usage);
                    }
                    s.queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    s.finished = true;
                }
                None => {
                    return Some((Err(std::io::Error::other("engine dropped the request")), s));
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

/// `POST /v1/embeddings`: deterministic unit vectors derived from the input tokens.
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
    let seed = hash_block(0x5EED, tokens);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
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
