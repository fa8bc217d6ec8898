//! The answer to a generation request: one JSON body, or server-sent events (a role
//! chunk, one chunk per token, an optional usage chunk, then `[DONE]`).

use std::collections::VecDeque;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::super::{ApiError, ServerState};
use super::disagg::RoomGuard;
use crate::scheduler::{FinishReason, SeqEvent, SeqSummary};
use crate::tokenizer;

/// What the response needs to know about the request.
pub(super) struct Output {
    pub(super) chat: bool,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) target: u32,
    pub(super) finish: FinishReason,
    /// Set when the response must carry `kv_transfer_params` for a remote decode.
    pub(super) kv: Option<(Arc<ServerState>, usize)>,
    /// A structured-output answer, one piece per generated token (it replaces the
    /// tokens' text).
    pub(super) forced: Option<Vec<String>>,
    /// The tool call the answer makes (id, function name); `forced` holds its
    /// arguments.
    pub(super) tool: Option<(String, String)>,
    /// `--enable-prompt-tokens-details`: usage reports cached prompt tokens.
    pub(super) details: bool,
    /// `--sim-timing`: answers carry `sim_timing`.
    pub(super) timing: bool,
    /// The stream's `include_usage`: then every chunk but the usage one has
    /// `"usage": null`, as OpenAI and vLLM send them.
    pub(super) include_usage: bool,
}

impl Output {
    /// The text of the `i`-th generated token.
    fn text(&self, i: usize, token: tokenizer::Token) -> &str {
        match &self.forced {
            Some(pieces) => pieces.get(i).map_or("", String::as_str),
            None => tokenizer::token_text(token),
        }
    }

    /// The `finish_reason` of an answer that ended with `f`.
    pub(super) fn finish_str(&self, f: FinishReason) -> &'static str {
        match (&self.tool, f) {
            (Some(_), FinishReason::Stop) => "tool_calls",
            _ => f.as_str(),
        }
    }

    /// A chat answer's `message` for the generated `text`: the text, or the tool call
    /// whose arguments it is.
    pub(super) fn message(&self, text: &str) -> Value {
        match &self.tool {
            Some((id, name)) => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": text}}]}),
            None => json!({"role": "assistant", "content": text, "tool_calls": []}),
        }
    }

    /// The chunk of the `i`-th generated piece: content, or a tool call's arguments
    /// (the first piece also names the call).
    pub(super) fn piece(&self, i: usize, text: &str, finish: Option<&str>) -> Bytes {
        let Some((id, name)) = self.tool.as_ref().filter(|_| self.chat) else {
            return self.chunk(Some(text), false, finish);
        };
        let call = if i == 0 {
            json!({"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": text}})
        } else {
            json!({"index": 0, "function": {"arguments": text}})
        };
        self.chunk_event(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "logprobs": null, "finish_reason": finish}],
        }))
    }

    pub(super) fn usage(&self, s: &SeqSummary) -> Value {
        self.usage_of(s.prompt_tokens, s.completion_tokens, s.cached_tokens)
    }

    /// `usage` for these counts; `prompt_tokens_details` is `null` unless enabled.
    pub(super) fn usage_of(&self, prompt: usize, completion: u32, cached: usize) -> Value {
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion as usize,
            "prompt_tokens_details": if self.details { json!({"cached_tokens": cached}) } else { Value::Null },
        })
    }

    /// `sim_timing` of `s`, when `--sim-timing` asks for it.
    pub(super) fn timing(&self, s: &SeqSummary) -> Option<Value> {
        self.timing.then(|| timing(s))
    }

    pub(super) fn kv_params(&self, s: &SeqSummary) -> Value {
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

    pub(super) fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Bytes {
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
        self.chunk_event(json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }))
    }

    /// A content chunk's event: with `"usage": null` when the stream includes usage.
    fn chunk_event(&self, mut v: Value) -> Bytes {
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        self.event(v)
    }

    pub(super) fn event(&self, v: Value) -> Bytes {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut buf, &v).expect("serializing JSON to memory");
        buf.extend_from_slice(b"\n\n");
        Bytes::from(buf)
    }
}

pub(super) fn timing(s: &SeqSummary) -> Value {
    json!({
        "arrival": s.arrival,
        "queue_secs": s.scheduled - s.arrival,
        "ttft_secs": s.first_token - s.arrival,
        "e2e_secs": s.finished - s.arrival,
        "preemptions": s.preemptions,
        "computed_prompt_tokens": s.computed_prompt_tokens,
    })
}

pub(super) async fn complete_response(
    out: Output,
    mut rx: mpsc::UnboundedReceiver<SeqEvent>,
    mut room: Option<RoomGuard>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut n = 0;
    let summary = loop {
        match rx.recv().await {
            Some(SeqEvent::Token { token, .. }) => {
                if let Some(r) = room.as_mut() {
                    r.ready();
                }
                text.push_str(out.text(n, token));
                n += 1;
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
    let finish = out.finish_str(summary.finish_reason);
    let choice = if out.chat {
        json!({"index": 0, "message": out.message(&text), "logprobs": null, "finish_reason": finish,
               "stop_reason": null})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish,
               "stop_reason": null, "prompt_logprobs": null})
    };
    let mut body = json!({
        "id": out.id,
        "object": if out.chat { "chat.completion" } else { "text_completion" },
        "created": out.created,
        "model": out.model,
        "choices": [choice],
        "usage": out.usage(&summary),
        "kv_transfer_params": out.kv_params(&summary),
    });
    if let Some(t) = out.timing(&summary) {
        body["sim_timing"] = t;
    }
    Ok(Json(body).into_response())
}

/// Server-sent events: a role chunk, one chunk per token (the last carries
/// `finish_reason`), an optional usage chunk, then `data: [DONE]`.
pub(super) fn stream_response(
    out: Output,
    rx: mpsc::UnboundedReceiver<SeqEvent>,
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
        include_usage: out.include_usage,
        out,
        rx,
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
                    let text = s.out.text(s.emitted as usize, token).to_string();
                    s.emitted += 1;
                    let finish =
                        (s.emitted == s.out.target).then(|| s.out.finish_str(s.out.finish));
                    s.queue
                        .push_back(s.out.piece(s.emitted as usize - 1, &text, finish));
                }
                Some(SeqEvent::Done(summary)) => {
                    if s.include_usage {
                        let mut usage = json!({
                            "id": s.out.id,
                            "object": if s.out.chat { "chat.completion.chunk" } else { "text_completion" },
                            "created": s.out.created,
                            "model": s.out.model,
                            "choices": [],
                            "usage": s.out.usage(&summary),
                            "kv_transfer_params": s.out.kv_params(&summary),
                        });
                        if let Some(t) = s.out.timing(&summary) {
                            usage["sim_timing"] = t;
                        }
                        s.queue.push_back(s.out.event(usage));
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
