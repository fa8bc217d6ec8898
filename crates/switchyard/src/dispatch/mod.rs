//! Dispatch: send a routed request upstream, retrying with exponential backoff and
//! re-selection on connect errors and on 408/429/500/502/503/504 answered before any
//! byte reached the client, then stream the answer back.

pub mod client;
pub mod pd;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;

use crate::error::ApiError;
use crate::fleet::{Registry, Worker, WorkerId};
use crate::metrics::{DecisionLabels, Metrics, ReasonLabel};
use crate::request::RequestView;
use crate::request::set_fields;
use crate::routing::Policies;
use stream::{ObservedBody, Settle};

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

/// Dispatch settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub retry: RetryConfig,
    /// Time allowed until upstream response headers.
    pub timeout: Duration,
    /// `Authorization` sent to engines (`--worker-api-key`).
    pub worker_auth: Option<HeaderValue>,
    /// Forward the client's own `Authorization` (only when the gateway has no keys).
    pub forward_client_auth: bool,
    pub passive_failure_threshold: u32,
    /// Add `data_parallel_rank` to the body of requests to a data-parallel rank.
    pub dp_rank_in_body: bool,
}

/// Sends requests upstream.
pub struct Dispatcher {
    pub cfg: DispatchConfig,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub policies: Arc<Policies>,
    /// Prefill/decode disaggregation, when on.
    pub pd: Option<pd::Pd>,
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
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

impl Dispatcher {
    /// Routes and sends one request; the returned response streams the engine's body.
    pub async fn dispatch(
        &self,
        view: RequestView,
        headers: &HeaderMap,
        body: Bytes,
        request_id: &str,
        start: Instant,
        admission: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Response {
        if let Some(pd) = &self.pd {
            let resp = self
                .dispatch_pd(pd, view, headers, body, request_id, start)
                .await;
            return match admission {
                Some(permit) => crate::server::middleware::hold(resp, permit),
                None => resp,
            };
        }
        let view = Arc::new(view);
        let policy = self.policies.for_model(&view.model);
        let max_attempts = self.cfg.retry.max_retries + 1;
        let mut tried: Vec<WorkerId> = Vec::new();
        let mut last_error: Option<ApiError> = None;
        for attempt in 0..max_attempts {
            let Some(candidates) = self.candidates(&view.model, &tried, attempt).await else {
                break;
            };
            let Some(pick) = policy.pick(&candidates, &view) else {
                break;
            };
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    policy: policy.name(),
                    reason: pick.reason,
                })
                .inc();
            let worker = candidates[pick.index].clone();
            tried.push(worker.id.clone());
            let Some(permit) = worker.breaker.acquire() else {
                continue; // its breaker closed the door since filtering
            };
            if attempt > 0 {
                self.metrics
                    .retries
                    .get_or_create(&ReasonLabel {
                        reason: "upstream_failure",
                    })
                    .inc();
            }
            let in_flight = worker.begin();
            policy.on_routed(&worker, &view);
            let req = self.upstream_request(&worker, &view, headers, body.clone(), request_id);
            let result = tokio::time::timeout(self.cfg.timeout, client::local().request(req)).await;
            let retries_left = attempt + 1 < max_attempts;
            match result {
                Err(_) => {
                    permit.record(false);
                    worker.record_upstream(false, self.cfg.passive_failure_threshold);
                    policy.on_finished(&worker, &view, false);
                    self.upstream_error("timeout");
                    return ApiError::gateway_timeout(format!(
                        "Upstream {} did not answer within {} s",
                        worker.label,
                        self.cfg.timeout.as_secs()
                    ))
                    .into_response();
                }
                Ok(Err(e)) => {
                    permit.record(false);
                    if worker.record_upstream(false, self.cfg.passive_failure_threshold) {
                        tracing::warn!(worker = %worker.label, "worker ejected after consecutive upstream failures");
                    }
                    policy.on_finished(&worker, &view, false);
                    self.upstream_error("connect");
                    tracing::debug!(worker = %worker.label, error = %e, attempt, "upstream request failed");
                    last_error = Some(ApiError::bad_gateway(format!(
                        "Upstream {} failed: {e}",
                        worker.label
                    )));
                }
                Ok(Ok(resp)) if retryable(resp.status()) && retries_left => {
                    let status = resp.status();
                    let wait = retry_after(resp.headers());
                    if let Some(d) = wait {
                        worker.cool_down(d);
                    }
                    let server_error = status.is_server_error();
                    if server_error {
                        permit.record(false);
                    } else {
                        drop(permit);
                    }
                    worker.record_upstream(!server_error, self.cfg.passive_failure_threshold);
                    policy.on_finished(&worker, &view, false);
                    self.upstream_error("status");
                    last_error = Some(ApiError::upstream_status(
                        status,
                        wait,
                        format!("Upstream {} answered {status}", worker.label),
                    ));
                }
                Ok(Ok(resp)) => {
                    let (mut parts, incoming) = resp.into_parts();
                    parts.headers.retain_hop_by_hop();
                    let settle = Settle {
                        start,
                        view: view.clone(),
                        in_flight,
                        permit: Some(permit),
                        admission,
                        status: parts.status,
                        request_id: request_id.to_string(),
                        metrics: self.metrics.clone(),
                        policy: policy.clone(),
                        passive_failure_threshold: self.cfg.passive_failure_threshold,
                        attempts: attempt + 1,
                    };
                    return Response::from_parts(
                        parts,
                        Body::new(ObservedBody::new(incoming, settle)),
                    );
                }
            }
            if retries_left {
                tokio::time::sleep(self.cfg.retry.backoff(attempt)).await;
            }
        }
        match last_error {
            Some(e) => e.into_response(),
            None => {
                self.metrics.reject("no_worker");
                ApiError::unavailable(
                    "no_healthy_worker",
                    format!("No healthy worker is available for model `{}`", view.model),
                    1,
                )
                .into_response()
            }
        }
    }

    /// Workers to choose from on this attempt: eligible ones not yet tried (all eligible
    /// ones if every one was tried). On a retry with none eligible, waits for a worker
    /// cooling down after a Retry-After if that fits within the backoff bound.
    async fn candidates(
        &self,
        model: &str,
        tried: &[WorkerId],
        attempt: u32,
    ) -> Option<Vec<Arc<Worker>>> {
        let mut all = self.registry.candidates(model);
        if all.is_empty() && attempt > 0 {
            let cooling: Vec<Arc<Worker>> = self
                .registry
                .all()
                .iter()
                .filter(|w| w.is_healthy() && w.serves(model) && w.cooling_down())
                .cloned()
                .collect();
            let wait = cooling.iter().map(|w| w.cooldown_remaining()).min()?;
            if wait > self.cfg.retry.max_backoff {
                return None;
            }
            tokio::time::sleep(wait).await;
            all = self.registry.candidates(model);
        }
        if all.is_empty() {
            return None;
        }
        let untried: Vec<Arc<Worker>> = all
            .iter()
            .filter(|w| !tried.contains(&w.id))
            .cloned()
            .collect();
        Some(if untried.is_empty() { all } else { untried })
    }

    fn upstream_error(&self, reason: &'static str) {
        self.metrics
            .upstream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn upstream_request(
        &self,
        worker: &Worker,
        view: &RequestView,
        headers: &HeaderMap,
        body: Bytes,
        request_id: &str,
    ) -> Request<Full<Bytes>> {
        let body = match worker.id.dp_rank {
            Some(rank) if self.cfg.dp_rank_in_body => {
                set_fields(&body, &[("data_parallel_rank", rank.into())]).unwrap_or(body)
            }
            _ => body,
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = worker.uri(view.route.path());
        let h = req.headers_mut();
        for (name, value) in headers {
            if hop_by_hop(name) || name == header::AUTHORIZATION {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        if let Some(auth) = &self.cfg.worker_auth {
            h.insert(header::AUTHORIZATION, auth.clone());
        } else if self.cfg.forward_client_auth {
            if let Some(auth) = headers.get(header::AUTHORIZATION) {
                h.insert(header::AUTHORIZATION, auth.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
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

/// Removes connection-specific headers from a forwarded response.
pub(crate) fn hop_by_hop_headers(h: &mut HeaderMap) {
    h.retain_hop_by_hop();
}

/// Removes connection-specific headers from a forwarded response.
trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for HeaderMap {
    fn retain_hop_by_hop(&mut self) {
        let drop: Vec<HeaderName> = self
            .keys()
            .filter(|n| hop_by_hop(n) && *n != header::CONTENT_LENGTH)
            .cloned()
            .collect();
        for n in drop {
            self.remove(n);
        }
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
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()));
        }
        for s in [200, 400, 401, 404, 413, 501] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()));
        }
    }
}
