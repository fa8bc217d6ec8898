//! The `send` phase: one attempt of a request to the worker(s) selected for it, by one
//! of two strategies — colocated (one worker serves the whole request) or
//! prefill/decode ([`pd`]: a prefill worker, then a decode worker). An attempt either
//! gets response headers to stream back ([`Outcome::Answered`]) or fails before any
//! byte reached the client ([`Outcome::Failed`]), saying whether a retry may help and
//! which worker to avoid. The pipeline sequences attempts; this module decides what an
//! engine's answer means and how long to back off.

pub mod pd;

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::PdMode;
use crate::error::ApiError;
use crate::fleet::{Verdict, WorkerId, WorkerRole};
use crate::metrics::{Metrics, ReasonLabel};
use crate::request::RequestView;
use crate::request::body::{Field, rewrite};
use crate::routing::Assignment;
use crate::shutdown::Shutdown;
use crate::upstream;

/// Retry settings.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

impl RetryConfig {
    /// Backoff before retry number `attempt` (0-based), with jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(attempt as i32);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jitter = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64((capped * jitter).max(0.0))
    }
}

/// Whether an engine's status may be retried on another worker.
pub fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// How an answer with `status` counts against the worker that gave it.
pub fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        408 | 429 => Verdict::Throttled,
        s if s >= 500 => Verdict::Failure,
        _ => Verdict::Success,
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Headers that belong to one connection and are never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Removes connection-specific headers from a response passed back to the client.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let drop: Vec<HeaderName> = h
        .keys()
        .filter(|n| hop_by_hop(n) && *n != header::CONTENT_LENGTH)
        .cloned()
        .collect();
    for n in drop {
        h.remove(n);
    }
}

/// How requests are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One worker serves the whole request.
    Colocated,
    /// A prefill worker, then a decode worker, talking `PdMode`.
    Disaggregated(PdMode),
}

impl Strategy {
    /// The role of the worker an attempt selects first.
    pub fn first_role(self) -> WorkerRole {
        match self {
            Strategy::Colocated => WorkerRole::Regular,
            Strategy::Disaggregated(_) => WorkerRole::Prefill,
        }
    }

    /// The roles of the workers an attempt needs.
    pub fn roles(self) -> &'static [WorkerRole] {
        match self {
            Strategy::Colocated => &[WorkerRole::Regular],
            Strategy::Disaggregated(_) => &[WorkerRole::Prefill, WorkerRole::Decode],
        }
    }

    /// The `reason` label of a retry.
    pub fn retry_reason(self) -> &'static str {
        match self {
            Strategy::Colocated => "upstream_failure",
            Strategy::Disaggregated(_) => "pd_pair",
        }
    }
}

/// Dispatch settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub retry: RetryConfig,
    /// Time allowed until upstream response headers.
    pub timeout: Duration,
    /// `Authorization` sent to engines (`--worker-api-key`).
    pub worker_auth: Option<HeaderValue>,
    /// Forward the client's own `Authorization` (`--forward-client-auth`).
    pub forward_client_auth: bool,
    /// Add `data_parallel_rank` to the body of requests to a data-parallel rank.
    pub dp_rank_in_body: bool,
}

/// Sends attempts upstream.
pub struct Dispatcher {
    pub cfg: DispatchConfig,
    pub strategy: Strategy,
    pub metrics: std::sync::Arc<Metrics>,
    /// Tracks work that outlives an attempt (a prefill answer read in the background).
    pub shutdown: Shutdown,
}

/// What every attempt of one request shares.
pub struct Outgoing<'a> {
    pub view: &'a std::sync::Arc<RequestView>,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    pub request_id: &'a str,
    /// The attempt's trace span: its W3C context goes upstream as `traceparent`
    /// (nothing is added while it is disabled, i.e. with tracing off).
    pub span: &'a tracing::Span,
}

/// The workers selected for one attempt, and how they are used.
pub enum Target {
    /// Colocated: one worker serves the whole request.
    One(Assignment),
    /// Prefill/decode: a worker for each phase, talking `mode`.
    Pair {
        prefill: Assignment,
        decode: Assignment,
        mode: PdMode,
    },
}

/// An attempt's assignment whose verdict waits for the end of the request, so that an
/// answer the request got from several workers can be blamed on the request.
pub struct Charge {
    pub assignment: Assignment,
    pub verdict: Verdict,
    /// The engine's status, when it answered.
    pub answer: Option<StatusCode>,
}

/// An attempt that failed before any byte reached the client.
pub struct Failure {
    /// What the client gets if no retry follows.
    pub error: ApiError,
    /// Whether another attempt may succeed.
    pub retry: bool,
    /// Workers the next attempt should avoid.
    pub avoid: Vec<WorkerId>,
    /// Assignments of this attempt not yet settled.
    pub charges: Vec<Charge>,
}

/// How an attempt ended.
pub enum Outcome {
    /// Headers arrived: stream this body back, and settle `assignment` when it ends.
    Answered {
        response: http::Response<Incoming>,
        assignment: Assignment,
    },
    Failed(Failure),
}

/// What one call to one worker gave, classified the same way for both strategies.
enum Call {
    /// Response headers, whatever the status. A retryable status is already counted in
    /// `upstream_errors` and its `Retry-After` has cooled the worker down.
    Answered(http::Response<Incoming>),
    /// No headers.
    Failed(CallFailure),
}

/// Why a call to a worker failed, and how that counts against it.
struct CallFailure {
    /// What happened, naming the worker by its opaque id.
    why: String,
    verdict: Verdict,
    /// The engine's status, when it answered.
    answer: Option<StatusCode>,
    /// No headers within the request timeout: not worth retrying.
    timeout: bool,
    /// How long the engine asked to be left alone.
    wait: Option<Duration>,
}

impl CallFailure {
    /// The failure an answer with a failing status is.
    fn answered(a: &Assignment, resp: &http::Response<Incoming>) -> Self {
        let status = resp.status();
        CallFailure {
            why: format!("{} answered {status}", a.worker().api_id),
            verdict: verdict(status),
            answer: Some(status),
            timeout: false,
            wait: retry_after(resp.headers()),
        }
    }

    /// The attempt's failure, with `error` for the client.
    fn into_failure(self, error: ApiError, failed: Assignment, others: Vec<Assignment>) -> Failure {
        let avoid = vec![failed.worker().id.clone()];
        let mut charges = vec![Charge {
            assignment: failed,
            verdict: self.verdict,
            answer: self.answer,
        }];
        charges.extend(others.into_iter().map(|assignment| Charge {
            assignment,
            verdict: Verdict::Excused,
            answer: None,
        }));
        Failure {
            error,
            retry: !self.timeout,
            avoid,
            charges,
        }
    }
}

impl Dispatcher {
    /// Sends one attempt. `last` says no retry follows, so a colocated engine's
    /// retryable answer is passed through rather than reported as a failure.
    pub async fn send(&self, target: Target, out: &Outgoing<'_>, last: bool) -> Outcome {
        match target {
            Target::One(a) => self.colocated(a, out, last).await,
            Target::Pair {
                prefill,
                decode,
                mode: PdMode::Vllm,
            } => self.vllm_pair(prefill, decode, out).await,
            Target::Pair {
                prefill,
                decode,
                mode: PdMode::Sglang,
            } => self.sglang_pair(prefill, decode, out).await,
        }
    }

    async fn colocated(&self, a: Assignment, out: &Outgoing<'_>, last: bool) -> Outcome {
        let body = match self.rank_field(&a) {
            Some(rank) => match self.rewritten(out, &[rank]) {
                Ok(b) => b,
                Err(e) => return self.unsent(e, vec![a]),
            },
            None => out.body.clone(),
        };
        match self.call(&a, out, body).await {
            Call::Answered(resp) if retryable(resp.status()) && !last => {
                let f = CallFailure::answered(&a, &resp);
                let error =
                    ApiError::upstream_status(resp.status(), f.wait, format!("Upstream {}", f.why));
                Outcome::Failed(f.into_failure(error, a, Vec::new()))
            }
            Call::Answered(response) => Outcome::Answered {
                response,
                assignment: a,
            },
            Call::Failed(f) => {
                let message = format!("Upstream {}", f.why);
                let error = if f.timeout {
                    ApiError::gateway_timeout(message)
                } else {
                    ApiError::bad_gateway(message)
                };
                Outcome::Failed(f.into_failure(error, a, Vec::new()))
            }
        }
    }

    /// `data_parallel_rank` for the body of a request to `a`'s worker, when it is a
    /// data-parallel rank and `--dp-rank-in-body` is on.
    fn rank_field(&self, a: &Assignment) -> Option<Field<'static>> {
        let rank = a.worker().id.dp_rank.filter(|_| self.cfg.dp_rank_in_body)?;
        Some(("data_parallel_rank", Some(rank.into())))
    }

    /// The request's body with `fields` set or removed.
    fn rewritten(&self, out: &Outgoing<'_>, fields: &[Field<'_>]) -> Result<Bytes, ApiError> {
        Ok(rewrite(out.body, fields)?)
    }

    /// A failure before anything was sent (the request itself is at fault).
    fn unsent(&self, error: ApiError, assignments: Vec<Assignment>) -> Outcome {
        Outcome::Failed(Failure {
            error,
            retry: false,
            avoid: Vec::new(),
            charges: assignments
                .into_iter()
                .map(|assignment| Charge {
                    assignment,
                    verdict: Verdict::Excused,
                    answer: None,
                })
                .collect(),
        })
    }

    /// Sends `body` to the assignment's worker and classifies what comes back: counts
    /// upstream errors, and cools a worker down when it asks to wait.
    async fn call(&self, a: &Assignment, out: &Outgoing<'_>, body: Bytes) -> Call {
        let w = a.worker();
        let req = self.upstream_request(a, out, body);
        let (reason, why) =
            match tokio::time::timeout(self.cfg.timeout, upstream::local().request(req)).await {
                Ok(Ok(resp)) => {
                    if retryable(resp.status()) {
                        self.upstream_error("status");
                        if let Some(d) = retry_after(resp.headers()) {
                            w.cool_down(d);
                        }
                    }
                    return Call::Answered(resp);
                }
                Err(_) => (
                    "timeout",
                    format!(
                        "{} did not answer within {} s",
                        w.api_id,
                        self.cfg.timeout.as_secs()
                    ),
                ),
                Ok(Err(e)) => {
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why = format!("{why}: {s}");
                        source = s.source();
                    }
                    tracing::debug!(worker = %w.label, error = %why, "upstream request failed");
                    ("connect", format!("{} unreachable: {why}", w.api_id))
                }
            };
        self.upstream_error(reason);
        Call::Failed(CallFailure {
            why,
            verdict: Verdict::Failure,
            answer: None,
            timeout: reason == "timeout",
            wait: None,
        })
    }

    fn upstream_error(&self, reason: &'static str) {
        self.metrics
            .upstream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn upstream_request(
        &self,
        a: &Assignment,
        out: &Outgoing<'_>,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let worker = a.worker();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = worker.uri(out.view.route.path());
        let h = req.headers_mut();
        for (name, value) in out.headers {
            if hop_by_hop(name) || name == header::AUTHORIZATION {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        if let Some(host) = worker.host_header() {
            h.insert(header::HOST, host.clone());
        }
        if let Some(auth) = &self.cfg.worker_auth {
            h.insert(header::AUTHORIZATION, auth.clone());
        } else if self.cfg.forward_client_auth
            && let Some(auth) = out.headers.get(header::AUTHORIZATION)
        {
            h.insert(header::AUTHORIZATION, auth.clone());
        }
        if let Ok(v) = HeaderValue::from_str(out.request_id) {
            h.insert(HeaderName::from_static("x-request-id"), v);
        }
        if let Some(rank) = worker.id.dp_rank {
            h.insert(
                HeaderName::from_static("x-data-parallel-rank"),
                HeaderValue::from(rank),
            );
        }
        crate::telemetry::inject(out.span, h);
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let r = RetryConfig {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(r.backoff(0), Duration::from_millis(100));
        assert_eq!(r.backoff(1), Duration::from_millis(200));
        assert_eq!(r.backoff(5), Duration::from_millis(300));
        let j = RetryConfig { jitter: 0.5, ..r };
        for _ in 0..50 {
            let b = j.backoff(0);
            assert!(
                b >= Duration::from_millis(50) && b <= Duration::from_millis(150),
                "{b:?}"
            );
        }
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()));
        }
        for s in [200, 400, 401, 404, 413, 501] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()));
        }
        assert_eq!(verdict(StatusCode::OK), Verdict::Success);
        assert_eq!(
            verdict(StatusCode::BAD_REQUEST),
            Verdict::Success,
            "the request's fault"
        );
        assert_eq!(verdict(StatusCode::TOO_MANY_REQUESTS), Verdict::Throttled);
        assert_eq!(verdict(StatusCode::INTERNAL_SERVER_ERROR), Verdict::Failure);
    }
}
