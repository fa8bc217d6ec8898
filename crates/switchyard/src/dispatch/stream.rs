//! The response body passed back to the client: the engine's bytes, untouched and
//! unbuffered (hyper polls it only when the client can take more, so back-pressure
//! reaches the engine). It carries the request's accounting — in-flight slot, breaker
//! permit, policy hook, metrics, access log — and settles it exactly once, when the
//! stream ends, fails, or the client goes away (dropping it closes the upstream
//! connection, which cancels the request on the engine).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::fleet::{InFlight, Permit};
use crate::metrics::{Metrics, ModelWorker, RequestLabels, RouteModel, TokenLabels};
use crate::request::RequestView;
use crate::routing::Policy;

const TAIL: usize = 8 * 1024;

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    UpstreamError,
    ClientGone,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientGone => "client_gone",
        }
    }
}

/// Everything to settle when a response ends.
pub struct Settle {
    pub start: Instant,
    pub view: Arc<RequestView>,
    pub in_flight: InFlight,
    pub permit: Option<Permit>,
    /// The gateway's concurrency permit (`--max-concurrent-requests`), released with
    /// the body.
    pub admission: Option<tokio::sync::OwnedSemaphorePermit>,
    pub status: StatusCode,
    pub request_id: String,
    pub metrics: Arc<Metrics>,
    pub policy: Arc<dyn Policy>,
    pub passive_failure_threshold: u32,
    pub attempts: u32,
}

/// The engine's response body with its accounting attached.
pub struct ObservedBody {
    inner: Incoming,
    settle: Option<Settle>,
    first: Option<Instant>,
    last: Option<Instant>,
    tail: Vec<u8>,
}

impl ObservedBody {
    pub fn new(inner: Incoming, settle: Settle) -> Self {
        ObservedBody {
            inner,
            settle: Some(settle),
            first: None,
            last: None,
            tail: Vec::new(),
        }
    }

    fn on_data(&mut self, data: &Bytes) {
        let now = Instant::now();
        if let Some(s) = &self.settle {
            match self.last {
                None => {
                    self.first = Some(now);
                    if s.view.stream {
                        s.metrics
                            .ttft
                            .get_or_create(&ModelWorker {
                                model: s.view.model.clone(),
                                worker: s.in_flight.worker().label.clone(),
                            })
                            .observe(now.duration_since(s.start).as_secs_f64());
                    }
                }
                Some(prev) if s.view.stream => {
                    s.metrics
                        .itl
                        .get_or_create(&RouteModel {
                            route: s.view.route.name(),
                            model: s.view.model.clone(),
                        })
                        .observe(now.duration_since(prev).as_secs_f64());
                }
                Some(_) => {}
            }
        }
        self.last = Some(now);
        if data.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TAIL..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(TAIL);
            self.tail.drain(..overflow);
            self.tail.extend_from_slice(data);
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some(s) = self.settle.take() else { return };
        let worker = s.in_flight.worker().clone();
        let success = outcome == Outcome::Complete && s.status.as_u16() < 500;
        match (outcome, s.permit) {
            (Outcome::ClientGone, permit) => drop(permit),
            (_, Some(p)) => p.record(success),
            (_, None) => {}
        }
        if outcome != Outcome::ClientGone
            && worker.record_upstream(success, s.passive_failure_threshold)
        {
            tracing::warn!(worker = %worker.label, "worker ejected after consecutive upstream failures");
        }
        s.policy.on_finished(&worker, &s.view, success);
        let elapsed = s.start.elapsed();
        let route = s.view.route.name();
        s.metrics
            .requests
            .get_or_create(&RequestLabels {
                route,
                model: s.view.model.clone(),
                worker: worker.label.clone(),
                status: s.status.as_u16(),
            })
            .inc();
        s.metrics
            .duration
            .get_or_create(&RouteModel {
                route,
                model: s.view.model.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(usage) = find_usage(&self.tail) {
            for (kind, v) in usage {
                s.metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        model: s.view.model.clone(),
                        kind,
                    })
                    .inc_by(v);
            }
        }
        if outcome == Outcome::UpstreamError {
            s.metrics
                .upstream_errors
                .get_or_create(&crate::metrics::ReasonLabel { reason: "stream" })
                .inc();
        }
        let ttft_ms = self
            .first
            .map(|f| f.duration_since(s.start).as_secs_f64() * 1e3);
        tracing::info!(
            target: "switchyard::access",
            request_id = %s.request_id,
            route,
            model = %s.view.model,
            worker = %worker.label,
            status = s.status.as_u16(),
            outcome = outcome.as_str(),
            attempts = s.attempts,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            ttft_ms,
            "request"
        );
        // `s.in_flight` drops here: the worker's slot is released after the last byte.
    }
}

/// `(kind, count)` from the last `"usage": {...}` object in `tail`, if any.
fn find_usage(tail: &[u8]) -> Option<Vec<(&'static str, u64)>> {
    let needle = b"\"usage\"";
    let pos = tail.windows(needle.len()).rposition(|w| w == needle)?;
    let rest = &tail[pos + needle.len()..];
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

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.on_data(d);
                }
                if this.inner.is_end_stream() {
                    this.finish(Outcome::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.finish(Outcome::UpstreamError);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish(Outcome::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(Outcome::ClientGone);
    }
}

#[cfg(test)]
mod tests {
    use super::find_usage;

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
}
