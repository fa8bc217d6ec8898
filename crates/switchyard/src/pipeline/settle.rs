//! The `settle` phase: the one place a request is accounted for — metrics, the access
//! log line, the worker's in-flight slot, breaker outcome and passive health (through
//! the [`Assignment`]), and the admission permit. A request the gateway answered itself
//! settles at once; a proxied one settles when its response body ends, fails, or the
//! client goes away ([`SettledBody`]).
//!
//! The body is the engine's bytes, untouched and unbuffered: hyper polls it only when
//! the client can take more, so back-pressure reaches the engine, and dropping it
//! closes the upstream connection, which cancels the request on the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::admit::Admitted;
use crate::error::ApiError;
use crate::fleet::Verdict;
use crate::metrics::{Metrics, ModelWorker, ReasonLabel, RequestLabels, RouteModel, TokenLabels};
use crate::request::{RequestView, Route};
use crate::routing::Assignment;

/// How a proxied response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Complete,
    UpstreamError,
    ClientGone,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::UpstreamError => "upstream_error",
            Ending::ClientGone => "client_gone",
        }
    }
}

/// A request that ends without an engine's answer (rejected, or every attempt failed).
pub fn rejected(metrics: &Metrics, route: Route, model: &str, request_id: &str, e: &ApiError) {
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.name(),
            model: Arc::from(model),
            worker: Arc::from(""),
            status: e.status.as_u16(),
        })
        .inc();
    tracing::info!(target: "switchyard::access", request_id = %request_id, route = route.name(), status = e.status.as_u16(), error = e.code, "request rejected");
}

/// A request answered from the response cache (`choice`: the model chosen): counted as
/// a `200` with no worker, its duration observed, and logged.
pub fn cached(
    metrics: &Metrics,
    route: Route,
    choice: &crate::selection::ModelChoice,
    request_id: &str,
    start: Instant,
    kind: &'static str,
) {
    let model_key = &choice.key;
    let intent = choice.classified.as_ref().map(|c| &c.intent);
    let elapsed = start.elapsed();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.name(),
            model: model_key.clone(),
            worker: Arc::from(""),
            status: 200,
        })
        .inc();
    metrics
        .duration
        .get_or_create(&RouteModel {
            route: route.name(),
            model: model_key.clone(),
        })
        .observe(elapsed.as_secs_f64());
    metrics.model_request(model_key, intent, 200, elapsed, None);
    tracing::info!(
        target: "switchyard::access",
        request_id = %request_id,
        route = route.name(),
        model = %choice.model,
        status = 200,
        outcome = "cache_hit",
        cache = kind,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
}

/// Everything to settle when a proxied response ends.
pub struct Settle {
    pub start: Instant,
    /// The request; its `model_key` labels the metrics, its `model` the access log.
    pub view: Arc<RequestView>,
    pub assignment: Assignment,
    /// The request got this same failing answer from another worker: blame the request.
    pub excused: bool,
    pub admitted: Admitted,
    pub status: StatusCode,
    pub request_id: String,
    pub metrics: Arc<Metrics>,
    pub attempts: u32,
    pub workflows: Arc<crate::workflows::Workflows>,
    /// The caller's limits and usage, settled with the request.
    pub ticket: Option<crate::tenancy::Ticket>,
    /// The `stream` trace span, open until the last byte (`Span::none()` with tracing
    /// off).
    pub span: tracing::Span,
    /// The parent of the stream span (the `request` span over HTTP), released at the
    /// last byte: a span that was never entered ends when its last handle drops, so the
    /// request's lasts as long as its stream.
    pub request_span: tracing::Span,
}

impl Settle {
    fn finish(mut self, ending: Ending, ttft: Option<Instant>, tail: &[u8]) {
        let worker = self.assignment.worker().clone();
        let verdict = match ending {
            Ending::ClientGone => Verdict::Excused,
            Ending::UpstreamError => Verdict::Failure,
            Ending::Complete if self.excused => Verdict::Excused,
            Ending::Complete => crate::dispatch::verdict(self.status),
        };
        self.assignment.settle(&self.view, verdict);
        let elapsed = self.start.elapsed();
        let route = self.view.route.name();
        let m = &self.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                route,
                model: self.view.model_key.clone(),
                worker: worker.label.clone(),
                status: self.status.as_u16(),
            })
            .inc();
        m.duration
            .get_or_create(&RouteModel {
                route,
                model: self.view.model_key.clone(),
            })
            .observe(elapsed.as_secs_f64());
        let usage = find_usage(tail);
        if let Some(usage) = &usage {
            for &(kind, v) in usage {
                m.tokens
                    .get_or_create(&TokenLabels {
                        model: self.view.model_key.clone(),
                        kind,
                    })
                    .inc_by(v);
            }
        }
        let error_type = match ending {
            Ending::UpstreamError => Some("stream"),
            _ if self.status.is_server_error() => Some("upstream_5xx"),
            _ if self.status.is_client_error() => Some("upstream_4xx"),
            _ => None,
        };
        m.model_request(
            &self.view.model_key,
            self.view.intent.as_ref(),
            self.status.as_u16(),
            elapsed,
            error_type,
        );
        if ending == Ending::UpstreamError {
            m.upstream_errors
                .get_or_create(&ReasonLabel { reason: "stream" })
                .inc();
        }
        // One count of the usage's `prompt`, `completion` or `cached` tokens.
        let get = |k: &str| {
            usage
                .as_ref()?
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| *v)
        };
        if let Some(ticket) = self.ticket.take() {
            let tokens = usage.as_ref().map(|_| crate::tenancy::TokenUsage {
                input: get("prompt").unwrap_or(0),
                cached: get("cached").unwrap_or(0),
                output: get("completion").unwrap_or(0),
            });
            let ok = ending == Ending::Complete && self.status.is_success();
            ticket.finish(&self.view.model, tokens, ok);
        }
        let ttft_ms = ttft.map(|f| f.duration_since(self.start).as_secs_f64() * 1e3);
        if let Some(wf) = &self.view.workflow {
            let tokens = usage.as_ref().map(|_| crate::workflows::TokenUsage {
                prompt: get("prompt").unwrap_or(0),
                completion: get("completion").unwrap_or(0),
                cached: get("cached"),
            });
            self.workflows.record(
                wf,
                &crate::workflows::Outcome {
                    ok: ending == Ending::Complete && self.status.is_success(),
                    usage: tokens,
                    ttft_ms,
                    total_ms: elapsed.as_secs_f64() * 1e3,
                    worker: (worker.api_id.clone(), worker.label.clone()),
                },
            );
        }
        tracing::info!(
            target: "switchyard::access",
            request_id = %self.request_id,
            route,
            model = %self.view.model,
            worker = %worker.label,
            status = self.status.as_u16(),
            outcome = ending.as_str(),
            attempts = self.attempts,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            ttft_ms,
            "request"
        );
        if !self.span.is_disabled() {
            self.span.record("outcome", ending.as_str());
            if ending != Ending::Complete {
                self.span.record("otel.status_code", "error");
            }
            drop(std::mem::replace(&mut self.span, tracing::Span::none()));
            drop(std::mem::replace(
                &mut self.request_span,
                tracing::Span::none(),
            ));
        }
        // The admission permit drops here, after the last byte.
    }
}

/// Bytes kept from the end of a body to find its `usage`.
const TAIL: usize = 8 * 1024;

/// The engine's response body with its settlement attached.
pub struct SettledBody {
    inner: Incoming,
    settle: Option<Settle>,
    first: Option<Instant>,
    tail: Vec<u8>,
    events: Option<SseGaps>,
    /// Set when the gateway asked the engine for the usage the client did not.
    strip: Option<UsageStrip>,
    /// Trailers waiting behind the rest of a held event.
    held: Option<Frame<Bytes>>,
    /// The response cache keeping this answer (a cacheable request that missed).
    capture: Option<super::cache::Capture>,
}

impl SettledBody {
    /// `usage_added`: the gateway added `include_usage` to a stream; the usage event is
    /// read (settlement) but not passed on.
    pub fn new(inner: Incoming, settle: Settle, usage_added: bool) -> Self {
        let events = settle.view.stream.then(SseGaps::default);
        SettledBody {
            inner,
            settle: Some(settle),
            first: None,
            tail: Vec::new(),
            events,
            strip: usage_added.then(UsageStrip::default),
            held: None,
            capture: None,
        }
    }

    /// Gives the engine's body, as it comes (usage event included), to the cache.
    pub fn capturing(mut self, capture: Option<super::cache::Capture>) -> Self {
        self.capture = capture;
        self
    }

    fn on_data(&mut self, data: &Bytes) {
        if let Some(c) = &mut self.capture {
            c.feed(data);
        }
        let now = Instant::now();
        if let Some(s) = &self.settle {
            if self.first.is_none() {
                self.first = Some(now);
                if s.view.stream {
                    s.metrics
                        .ttft
                        .get_or_create(&ModelWorker {
                            model: s.view.model_key.clone(),
                            worker: s.assignment.worker().label.clone(),
                        })
                        .observe(now.duration_since(s.start).as_secs_f64());
                }
            }
            if let Some(events) = &mut self.events {
                let itl = s.metrics.itl.get_or_create(&RouteModel {
                    route: s.view.route.name(),
                    model: s.view.model_key.clone(),
                });
                events.feed(data, now, |gap| itl.observe(gap));
            }
        }
        if data.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TAIL..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(TAIL);
            self.tail.drain(..overflow);
            self.tail.extend_from_slice(data);
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(s) = self.settle.take() {
            if let Some(c) = self.capture.take() {
                let complete = ending == Ending::Complete;
                c.finish(s.status, complete, &s.view.model, s.start.elapsed());
            }
            s.finish(ending, self.first, &self.tail);
        }
    }
}

impl Body for SettledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            return match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        this.on_data(d);
                    }
                    let end = this.inner.is_end_stream();
                    if end {
                        this.finish(Ending::Complete);
                    }
                    let frame = match (&mut this.strip, frame.into_data()) {
                        (Some(strip), Ok(data)) => {
                            let mut out = strip.filter(data);
                            if end {
                                out = [out, strip.rest()].concat().into();
                            }
                            if out.is_empty() && !end {
                                continue;
                            }
                            Frame::data(out)
                        }
                        (_, Ok(data)) => Frame::data(data),
                        // Trailers: what is held of the last event goes first.
                        (Some(strip), Err(trailers)) => {
                            let rest = strip.rest();
                            if rest.is_empty() {
                                trailers
                            } else {
                                this.held = Some(trailers);
                                Frame::data(rest)
                            }
                        }
                        (None, Err(frame)) => frame,
                    };
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    this.finish(Ending::UpstreamError);
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    this.finish(Ending::Complete);
                    match this.strip.as_mut().map(UsageStrip::rest) {
                        Some(rest) if !rest.is_empty() => Poll::Ready(Some(Ok(Frame::data(rest)))),
                        _ => Poll::Ready(None),
                    }
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none()
            && self.strip.as_ref().is_none_or(|s| s.pending.is_empty())
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // With the usage event taken out, the engine's size no longer holds.
        if self.strip.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for SettledBody {
    fn drop(&mut self) {
        self.finish(Ending::ClientGone);
    }
}

/// A whole SSE stream without its usage-only event (a cached stream replayed to a
/// client that did not ask for usage).
pub(super) fn without_usage(stream: Bytes) -> Bytes {
    let mut strip = UsageStrip::default();
    let out = strip.filter(stream);
    let rest = strip.rest();
    if rest.is_empty() {
        out
    } else {
        [out, rest].concat().into()
    }
}

/// Takes the usage-only event (empty `choices` and a `usage` object) out of a stream
/// whose client did not ask for it. Frames pass as they are unless one mentions
/// `usage` or ends inside an event; then complete events pass (the usage-only one
/// parsed to be sure) and a partial one waits for its end. Events end with a blank line,
/// `\n\n` or `\r\n\r\n`.
#[derive(Default)]
struct UsageStrip {
    pending: Vec<u8>,
}

/// The end (exclusive) of the first complete event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether an SSE event is a chunk with no choices and a usage.
fn usage_only(event: &[u8]) -> bool {
    if memchr::memmem::find(event, b"\"usage\"").is_none() {
        return false;
    }
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    serde_json::from_str::<serde_json::Value>(&data).is_ok_and(|v| {
        v["usage"].is_object() && v["choices"].as_array().is_some_and(|c| c.is_empty())
    })
}

impl UsageStrip {
    fn filter(&mut self, data: Bytes) -> Bytes {
        if self.pending.is_empty()
            && (data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n"))
            && memchr::memmem::find(&data, b"\"usage\"").is_none()
        {
            return data;
        }
        self.pending.extend_from_slice(&data);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        while let Some(len) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + len];
            if !usage_only(event) {
                out.extend_from_slice(event);
            }
            start += len;
        }
        self.pending.drain(..start);
        out.into()
    }

    /// What is left at the end of the stream (an event without its blank line).
    fn rest(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending);
        if usage_only(&rest) {
            Bytes::new()
        } else {
            rest.into()
        }
    }
}

/// Finds the server-sent events of a stream that carry generated content (text,
/// reasoning, tool calls) and reports the time between consecutive ones: the
/// inter-token latency as a client sees it. Events may span frames and a frame may hold
/// several; role-only, usage-only and `[DONE]` events carry no content.
#[derive(Default)]
struct SseGaps {
    /// The start of an event whose end has not arrived yet.
    partial: Vec<u8>,
    last: Option<Instant>,
}

/// Longest unfinished event kept while waiting for its end.
const MAX_EVENT: usize = 64 * 1024;

impl SseGaps {
    fn feed(&mut self, data: &[u8], now: Instant, mut observe: impl FnMut(f64)) {
        if self.partial.is_empty() {
            let rest = self.scan(data, now, &mut observe);
            if rest.len() <= MAX_EVENT {
                self.partial.extend_from_slice(rest);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let done = buf.len() - self.scan(&buf, now, &mut observe).len();
            buf.drain(..done);
            if buf.len() <= MAX_EVENT {
                self.partial = buf;
            }
        }
    }

    /// Handles every complete event in `buf`; returns the unfinished rest.
    fn scan<'b>(&mut self, buf: &'b [u8], now: Instant, observe: &mut impl FnMut(f64)) -> &'b [u8] {
        let mut rest = buf;
        while let Some(end) = memchr::memmem::find(rest, b"\n\n") {
            if carries_content(&rest[..end]) {
                if let Some(prev) = self.last {
                    observe(now.duration_since(prev).as_secs_f64());
                }
                self.last = Some(now);
            }
            rest = &rest[end + 2..];
        }
        rest
    }
}

/// Whether one SSE event carries generated content: a non-empty `content`, `text` or
/// `reasoning_content` string, or tool calls.
fn carries_content(event: &[u8]) -> bool {
    const MARKERS: [&[u8]; 4] = [
        b"\"content\":\"",
        b"\"text\":\"",
        b"\"reasoning_content\":\"",
        b"\"tool_calls\":[{",
    ];
    MARKERS.iter().any(|m| {
        memchr::memmem::find_iter(event, m).any(|at| {
            *m == b"\"tool_calls\":[{".as_slice() || event.get(at + m.len()) != Some(&b'"')
        })
    })
}

/// `(kind, count)` from the last `"usage": {...}` object in `tail`, if any.
fn find_usage(tail: &[u8]) -> Option<Vec<(&'static str, u64)>> {
    let pos = memchr::memmem::rfind(tail, b"\"usage\"")?;
    let rest = &tail[pos + 7..];
    let colon = rest.iter().position(|b| *b == b':')?;
    #[derive(serde::Deserialize)]
    struct Details {
        cached_tokens: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        prompt_tokens_details: Option<Details>,
    }
    let mut stream = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<Usage>();
    let usage = stream.next()?.ok()?;
    let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens);
    let out: Vec<(&'static str, u64)> = [
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
        ("cached", cached),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_event_is_taken_out_wherever_the_frames_split() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        let expected = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        // Every way of cutting the stream in two, and byte by byte.
        for cut in 0..=stream.len() {
            let mut strip = UsageStrip::default();
            let mut out = strip
                .filter(Bytes::copy_from_slice(&stream[..cut]))
                .to_vec();
            out.extend_from_slice(&strip.filter(Bytes::copy_from_slice(&stream[cut..])));
            out.extend_from_slice(&strip.rest());
            assert_eq!(out, expected, "cut at {cut}");
        }
        let mut strip = UsageStrip::default();
        let mut out = Vec::new();
        for b in stream {
            out.extend_from_slice(&strip.filter(Bytes::copy_from_slice(&[*b])));
        }
        assert_eq!(out, expected);
        // CRLF line ends and JSON with spaces (other servers than vLLM).
        let crlf = "data: {\"choices\": [{\"text\": \"a\"}]}\r\n\r\ndata: {\"choices\": [], \"usage\": {\"prompt_tokens\": 3}}\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut strip = UsageStrip::default();
        let mut out = strip.filter(Bytes::from_static(crlf.as_bytes())).to_vec();
        out.extend_from_slice(&strip.rest());
        assert_eq!(
            out,
            b"data: {\"choices\": [{\"text\": \"a\"}]}\r\n\r\ndata: [DONE]\r\n\r\n"
        );
        // A final usage event without its blank line is dropped too.
        let mut strip = UsageStrip::default();
        assert!(
            strip
                .filter(Bytes::from_static(b"data: {\"choices\":[],\"usage\":{}}"))
                .is_empty()
        );
        assert!(strip.rest().is_empty());
        // A frame of whole events without a usage passes untouched (no copy).
        let plain = Bytes::from_static(b"data: {\"choices\":[]}\n\n");
        assert_eq!(
            UsageStrip::default().filter(plain.clone()).as_ptr(),
            plain.as_ptr()
        );
    }

    #[test]
    fn usage_is_found_in_json_and_sse_tails() {
        let json = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        assert_eq!(
            find_usage(json).unwrap(),
            vec![("prompt", 12), ("completion", 3), ("cached", 8)]
        );
        let sse = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            find_usage(sse).unwrap(),
            vec![("prompt", 5), ("completion", 2)]
        );
        assert!(find_usage(b"data: [DONE]").is_none());
        assert!(find_usage(b"\"usage\": null").is_none());
    }

    #[test]
    fn only_content_bearing_events_count() {
        assert!(carries_content(
            br#"data: {"choices":[{"delta":{"content":"hi"}}]}"#
        ));
        assert!(carries_content(br#"data: {"choices":[{"text":" x"}]}"#));
        assert!(carries_content(
            br#"data: {"choices":[{"delta":{"reasoning_content":"so"}}]}"#
        ));
        assert!(carries_content(
            br#"data: {"choices":[{"delta":{"tool_calls":[{"id":"c"}]}}]}"#
        ));
        assert!(!carries_content(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!carries_content(
            br#"data: {"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!carries_content(b"data: [DONE]"));
    }

    #[test]
    fn gaps_are_measured_between_events_however_frames_cut_them() {
        let role =
            &b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"[..];
        let tok =
            |t: &str| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n");
        let stream: Vec<u8> = [
            role.to_vec(),
            tok("a").into_bytes(),
            tok("b").into_bytes(),
            tok("c").into_bytes(),
            b"data: [DONE]\n\n".to_vec(),
        ]
        .concat();
        // Whole events per frame, every event in one frame, and frames cut anywhere
        // (including between the two newlines): three content events, two gaps.
        for cut in [1usize, 2, 7, 33, stream.len()] {
            let mut g = SseGaps::default();
            let mut gaps = 0;
            let t0 = Instant::now();
            for (i, frame) in stream.chunks(cut).enumerate() {
                g.feed(
                    frame,
                    t0 + std::time::Duration::from_millis(i as u64),
                    |_| gaps += 1,
                );
            }
            assert_eq!(gaps, 2, "cut {cut}");
        }
    }
}
