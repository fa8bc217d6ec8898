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
    /// The roles of the workers one attempt needs, in the order they are selected.
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
}

/// The workers selected for one attempt, in [`Strategy::roles`] order.
pub type Target = Vec<Assignment>;

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

/// Why a call got no response headers.
enum CallError {
    Timeout,
    Unreachable(String),
}

impl Dispatcher {
    /// Sends one attempt. `last` says no retry follows, so a retryable answer is passed
    /// through rather than reported as a failure.
    pub async fn send(&self, target: Target, out: &Outgoing<'_>, last: bool) -> Outcome {
        match self.strategy {
            Strategy::Colocated => {
                let a = target.into_iter().next().expect("one worker per attempt");
                self.colocated(a, out, last).await
            }
            Strategy::Disaggregated(mode) => {
                let mut it = target.into_iter();
                let (p, d) = (it.next(), it.next());
                let (Some(p), Some(d)) = (p, d) else {
                    unreachable!("prefill/decode attempts get a prefill and a decode worker");
                };
                match mode {
                    PdMode::Vllm => self.vllm_pair(p, d, out).await,
                    PdMode::Sglang => self.sglang_pair(p, d, out).await,
                }
            }
        }
    }

    async fn colocated(&self, a: Assignment, out: &Outgoing<'_>, last: bool) -> Outcome {
        let w = a.worker().clone();
        let body = match w.id.dp_rank {
            Some(rank) if self.cfg.dp_rank_in_body => {
                match self.rewritten(out, &[("data_parallel_rank", Some(rank.into()))]) {
                    Ok(b) => b,
                    Err(e) => return self.unsent(e, vec![a]),
                }
            }
            _ => out.body.clone(),
        };
        match self.call(&a, out, body).await {
            Err(CallError::Timeout) => {
                self.upstream_error("timeout");
                Outcome::Failed(Failure {
                    error: self.timeout_error(&w.api_id),
                    retry: false,
                    avoid: vec![w.id.clone()],
                    charges: vec![Charge {
                        assignment: a,
                        verdict: Verdict::Failure,
                        answer: None,
                    }],
                })
            }
            Err(CallError::Unreachable(e)) => {
                self.upstream_error("connect");
                tracing::debug!(worker = %w.label, error = %e, "upstream request failed");
                Outcome::Failed(Failure {
                    error: ApiError::bad_gateway(format!("Upstream {} failed: {e}", w.api_id)),
                    retry: true,
                    avoid: vec![w.id.clone()],
                    charges: vec![Charge {
                        assignment: a,
                        verdict: Verdict::Failure,
                        answer: None,
                    }],
                })
            }
            Ok(resp) if retryable(resp.status()) && !last => {
                self.upstream_error("status");
                let status = resp.status();
                let wait = retry_after(resp.headers());
                if let Some(d) = wait {
                    w.cool_down(d);
                }
                Outcome::Failed(Failure {
                    error: ApiError::upstream_status(
                        status,
                        wait,
                        format!("Upstream {} answered {status}", w.api_id),
                    ),
                    retry: true,
                    avoid: vec![w.id.clone()],
                    charges: vec![Charge {
                        assignment: a,
                        verdict: verdict(status),
                        answer: Some(status),
                    }],
                })
            }
            Ok(response) => Outcome::Answered {
                response,
                assignment: a,
            },
        }
    }

    /// The request's body with `fields` set or removed.
    fn rewritten(&self, out: &Outgoing<'_>, fields: &[Field<'_>]) -> Result<Bytes, ApiError> {
        rewrite(out.body, fields)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}"), None))
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

    fn timeout_error(&self, worker: &str) -> ApiError {
        ApiError::gateway_timeout(format!(
            "Upstream {worker} did not answer within {} s",
            self.cfg.timeout.as_secs()
        ))
    }

    /// Sends `body` to the assignment's worker; the response once its headers arrive.
    async fn call(
        &self,
        a: &Assignment,
        out: &Outgoing<'_>,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, CallError> {
        let req = self.upstream_request(a, out, body);
        match tokio::time::timeout(self.cfg.timeout, upstream::local().request(req)).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(e)) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                Err(CallError::Unreachable(why))
            }
            Ok(Ok(resp)) => Ok(resp),
        }
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
        } else if self.cfg.forward_client_auth {
            if let Some(auth) = out.headers.get(header::AUTHORIZATION) {
                h.insert(header::AUTHORIZATION, auth.clone());
            }
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
