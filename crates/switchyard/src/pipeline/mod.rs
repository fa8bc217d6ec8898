//! The request pipeline: the only place that sequences a request. A request's life is
//! five named phases over one [`RequestContext`]:
//!
//! ```text
//! admit ─▶ select_model ─▶ select_worker ─▶ send ─▶ settle
//!           (selection)      (routing)    (dispatch)
//!                  ▲                │
//!                  └── retry ◀──────┘  failed before any byte reached the client
//! ```
//!
//! - [`admit`]: request id, API key, rate limit and concurrency queue.
//! - `select_model`: the request is parsed once (its prompt streamed into the prefix
//!   hasher), then [`ModelSelector`] resolves the model.
//! - `select_worker`: [`WorkerSelector`] picks and leases the worker(s) of one attempt
//!   (one colocated worker, or a prefill/decode pair).
//! - `send`: [`Dispatcher`] runs the attempt with the configured strategy.
//! - [`settle`]: the one place a request is accounted for.
//!
//! HTTP handlers enter through [`Pipeline::serve_http`]; in-process callers (stateful
//! APIs, `/route`) build a [`RequestContext`] and call [`Pipeline::run`], getting the
//! same routing, retries and streaming without a loopback hop. Request id, key check and
//! admission are plain function calls here, not tower layers: on the hot path each
//! layer cost a boxed future and a clone of the request parts (docs/architecture.md).

pub mod admit;
pub mod settle;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, header};

use crate::dispatch::{Charge, Dispatcher, Outcome, Outgoing, Strategy, Target, strip_hop_by_hop};
use crate::error::ApiError;
use crate::fleet::{Registry, Verdict, WorkerId, WorkerRole};
use crate::metrics::{Metrics, ReasonLabel};
use crate::request::body::rewrite;
use crate::request::{RequestView, Route, SessionHeaders};
use crate::routing::prefix::BlockHasher;
use crate::routing::{Assignment, Selected, WorkerSelector};
use crate::selection::ModelSelector;
pub use admit::{Admission, AdmissionConfig, Admitted};
use settle::{Settle, SettledBody};

/// One request on its way through the pipeline.
pub struct RequestContext {
    pub route: Route,
    pub request_id: String,
    /// When the request arrived (latency metrics count from here).
    pub start: Instant,
    /// The client's headers (forwarded, minus hop-by-hop ones and `Authorization`).
    pub headers: HeaderMap,
    /// The request body (forwarded as it is unless a phase must rewrite it).
    pub body: Bytes,
    /// The admission permit, held until the response body has been sent.
    pub admitted: Admitted,
}

/// Settings of the entry steps.
pub struct EntryConfig {
    /// Headers a request id is taken from, first present wins.
    pub request_id_headers: Vec<HeaderName>,
    pub session: SessionHeaders,
    /// Largest request body accepted.
    pub max_payload_size: usize,
}

/// Every phase, assembled.
pub struct Pipeline {
    pub entry: EntryConfig,
    pub admission: Admission,
    pub models: ModelSelector,
    pub workers: Arc<WorkerSelector>,
    pub dispatcher: Dispatcher,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

/// An attempt that got response headers.
struct Answered {
    response: http::Response<hyper::body::Incoming>,
    assignment: Assignment,
    /// Its answer is a failure the request also got elsewhere: blame the request.
    excused: bool,
    attempts: u32,
}

/// Why no worker could be selected for an attempt.
enum Unselected {
    /// The chosen worker's breaker refused at the last moment.
    Refused(WorkerId),
    /// No eligible worker of this role.
    None(WorkerRole),
}

impl Pipeline {
    /// The id of a request with these headers.
    pub fn request_id(&self, headers: &HeaderMap) -> String {
        admit::request_id(&self.entry.request_id_headers, headers)
    }

    /// The `admit` phase: API key, then rate limit and concurrency queue.
    pub async fn admit(&self, headers: &HeaderMap) -> Result<Admitted, ApiError> {
        self.admission.check_key(headers)?;
        self.admission.admit().await
    }

    /// A generation request arriving over HTTP: every phase, with the request id echoed.
    pub async fn serve_http(&self, route: Route, req: axum::extract::Request) -> Response {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let request_id = self.request_id(&parts.headers);
        let echo = http::HeaderValue::from_str(&request_id).ok();
        let mut resp = match self.admit(&parts.headers).await {
            Err(e) => e.into_response(),
            Ok(admitted) => match self.read_body(&parts.headers, body).await {
                Err(e) => {
                    // The rest of the body was not read: this connection cannot carry
                    // another request, and the client must know not to reuse it.
                    let mut resp = self.reject(route, "", &request_id, e);
                    resp.headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    resp
                }
                Ok(body) => {
                    let ctx = RequestContext {
                        route,
                        request_id,
                        start,
                        headers: parts.headers,
                        body,
                        admitted,
                    };
                    self.run(ctx).await
                }
            },
        };
        if let Some(id) = echo {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-request-id"), id);
        }
        resp
    }

    /// Reads a JSON body of at most `--max-payload-size` bytes.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::bad_request(
                    format!("Content-Type must be application/json, not `{ct}`"),
                    None,
                ));
            }
        }
        let limit = self.entry.max_payload_size;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::payload_too_large(limit)
            } else {
                ApiError::bad_request(format!("Could not read the request body: {e}"), None)
            }
        })
    }

    /// Runs an admitted request through `select_model`, `select_worker`, `send` and
    /// `settle`. The response streams the engine's body (or is the gateway's error).
    pub async fn run(&self, ctx: RequestContext) -> Response {
        let RequestContext {
            route,
            request_id,
            start,
            headers,
            body,
            admitted,
        } = ctx;
        // Parse once; the prompt streams into the prefix hasher.
        let mut hasher = BlockHasher::new(self.workers.prefix_block_size());
        let mut view =
            match RequestView::parse(route, &headers, &body, &self.entry.session, &mut hasher) {
                Ok(v) => v,
                Err(e) => return self.reject(route, "", &request_id, e),
            };
        view.prefix_blocks = hasher.finish();

        // select_model
        let choice = match self.models.select(&view, &self.registry) {
            Ok(c) => c,
            Err(e) => return self.reject(route, "", &request_id, e),
        };
        let body = if choice.rewrite {
            match rewrite(&body, &[("model", Some(serde_json::json!(&*choice.model)))]) {
                Ok(b) => b,
                Err(e) => return self.reject(route, "", &request_id, e.into()),
            }
        } else {
            body
        };
        view.model = choice.model.clone();
        view.model_key = choice.key.clone();
        let view = Arc::new(view);
        let out = Outgoing {
            view: &view,
            headers: &headers,
            body: &body,
            request_id: &request_id,
        };
        // select_worker and send, until answered or out of retries.
        let answered = self.attempt_until_answered(&out).await;

        // settle
        match answered {
            Ok(Answered {
                response,
                assignment,
                excused,
                attempts,
            }) => {
                let (mut parts, incoming) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let settle = Settle {
                    start,
                    view,
                    assignment,
                    excused,
                    admitted,
                    status: parts.status,
                    request_id,
                    metrics: self.metrics.clone(),
                    attempts,
                };
                Response::from_parts(parts, Body::new(SettledBody::new(incoming, settle)))
            }
            Err(e) => {
                drop(admitted);
                self.reject(route, &choice.key, &request_id, e)
            }
        }
    }

    /// `select_worker` then `send`, retried with backoff and re-selection while an
    /// attempt fails before any byte reached the client and the retry budget lasts.
    /// The error is what the client gets when no attempt was answered.
    async fn attempt_until_answered(&self, out: &Outgoing<'_>) -> Result<Answered, ApiError> {
        let model = &out.view.model;
        let strategy = self.dispatcher.strategy;
        let retry = &self.dispatcher.cfg.retry;
        let attempts = retry.max_retries.saturating_add(1);
        let mut avoid: Vec<WorkerId> = Vec::new();
        let mut charges: Vec<Charge> = Vec::new();
        let mut last_error: Option<ApiError> = None;
        let mut failed_last = false;
        let mut sent = 0u32;
        for attempt in 0..attempts {
            if failed_last {
                tokio::time::sleep(retry.backoff(attempt - 1)).await;
            }
            failed_last = false;
            let target = match self.select_worker(model, out.view, &avoid, attempt).await {
                Ok(t) => t,
                Err(Unselected::Refused(id)) => {
                    avoid.push(id);
                    continue;
                }
                Err(Unselected::None(role)) => {
                    last_error.get_or_insert_with(|| self.no_worker(role, model));
                    break;
                }
            };
            if sent > 0 {
                self.metrics
                    .retries
                    .get_or_create(&ReasonLabel {
                        reason: strategy.retry_reason(),
                    })
                    .inc();
            }
            sent += 1;
            match self
                .dispatcher
                .send(target, out, attempt + 1 == attempts)
                .await
            {
                Outcome::Answered {
                    response,
                    assignment,
                } => {
                    let last = (assignment.worker().id.clone(), response.status());
                    let excused = blame(out.view, charges, Some(&last));
                    return Ok(Answered {
                        response,
                        assignment,
                        excused,
                        attempts: sent,
                    });
                }
                Outcome::Failed(f) => {
                    tracing::debug!(error = %f.error, attempt, "attempt failed");
                    avoid.extend(f.avoid);
                    charges.extend(f.charges);
                    last_error = Some(f.error);
                    failed_last = true;
                    if !f.retry {
                        break;
                    }
                }
            }
        }
        blame(out.view, charges, None);
        Err(last_error.unwrap_or_else(|| self.no_worker(strategy.first_role(), model)))
    }

    /// `select_worker`: one worker per role the strategy needs. On a retry with none
    /// eligible, waits for a worker cooling down after a Retry-After if that fits within
    /// the backoff bound.
    async fn select_worker(
        &self,
        model: &Arc<str>,
        view: &RequestView,
        avoid: &[WorkerId],
        attempt: u32,
    ) -> Result<Target, Unselected> {
        match self.dispatcher.strategy {
            Strategy::Colocated => {
                let a = self
                    .select_role(model, WorkerRole::Regular, view, avoid, attempt)
                    .await?;
                Ok(Target::One(a))
            }
            Strategy::Disaggregated(mode) => {
                let prefill = self
                    .select_role(model, WorkerRole::Prefill, view, avoid, attempt)
                    .await?;
                let decode = self
                    .select_role(model, WorkerRole::Decode, view, avoid, attempt)
                    .await?;
                Ok(Target::Pair {
                    prefill,
                    decode,
                    mode,
                })
            }
        }
    }

    async fn select_role(
        &self,
        model: &Arc<str>,
        role: WorkerRole,
        view: &RequestView,
        avoid: &[WorkerId],
        attempt: u32,
    ) -> Result<Assignment, Unselected> {
        let mut selected = self.workers.select(role, view, avoid);
        if matches!(selected, Selected::NoCandidate) && attempt > 0 {
            if let Some(wait) = self.workers.cooling(model, role) {
                if wait <= self.dispatcher.cfg.retry.max_backoff {
                    tokio::time::sleep(wait).await;
                    selected = self.workers.select(role, view, avoid);
                }
            }
        }
        match selected {
            Selected::Assigned(a) => Ok(a),
            Selected::Refused(id) => Err(Unselected::Refused(id)),
            Selected::NoCandidate => Err(Unselected::None(role)),
        }
    }

    /// The answer when no worker can take the request (counted as a rejection).
    fn no_worker(&self, role: WorkerRole, model: &str) -> ApiError {
        self.metrics.reject("no_worker");
        let which = match role {
            WorkerRole::Regular => String::new(),
            r => format!("{} ", r.as_str()),
        };
        ApiError::unavailable(
            "no_healthy_worker",
            format!("No healthy {which}worker is available for model `{model}`"),
            1,
        )
    }

    /// Settles a request the gateway answers itself, and answers it.
    fn reject(&self, route: Route, model: &str, request_id: &str, e: ApiError) -> Response {
        settle::rejected(&self.metrics, route, model, request_id, &e);
        e.into_response()
    }
}

/// Settles the charges of failed attempts once the request's fate is known, and says
/// whether the final answer (`last`: worker and status, when an engine gave one) is
/// excused too. A request that never succeeded and got a 500 from at least two
/// different workers is at fault itself (it fails anywhere), so those 500s count
/// against none of them: a poison request cannot eject healthy workers or open their
/// breakers. A request that succeeded somewhere proves the failing workers wrong, and
/// every other failure counts: 502/503/504 mean the workers were unavailable, and a
/// timeout or a refused connection is the worker's.
fn blame(view: &RequestView, charges: Vec<Charge>, last: Option<&(WorkerId, StatusCode)>) -> bool {
    let poison = StatusCode::INTERNAL_SERVER_ERROR;
    let succeeded = last.is_some_and(|(_, s)| s.is_success());
    let mut got_500: Vec<&WorkerId> = charges
        .iter()
        .filter(|c| c.answer == Some(poison))
        .map(|c| &c.assignment.worker().id)
        .collect();
    if let Some((id, status)) = last {
        if *status == poison {
            got_500.push(id);
        }
    }
    let excused = !succeeded && got_500.iter().any(|w| *w != got_500[0]);
    for c in charges {
        let verdict = if excused && c.answer == Some(poison) {
            Verdict::Excused
        } else {
            c.verdict
        };
        c.assignment.settle(view, verdict);
    }
    excused && last.is_some_and(|(_, s)| *s == poison)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::config::Config;
    use crate::fleet::{Registry, Worker, test_worker};
    use crate::routing::tests::view;

    /// Three healthy workers (passive ejection after two failures), a selector, and a
    /// way to lease a given worker.
    fn fleet() -> (Vec<Arc<Worker>>, Arc<WorkerSelector>) {
        let workers: Vec<Arc<Worker>> = (1..=3).map(test_worker).collect();
        let registry = Arc::new(Registry::new(workers.clone()));
        let cfg = Config::default();
        let sel = WorkerSelector::new(
            &cfg,
            registry,
            Arc::new(Metrics::new()),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        (workers, sel)
    }

    fn lease(sel: &WorkerSelector, all: &[Arc<Worker>], w: &Arc<Worker>) -> Assignment {
        let others: Vec<WorkerId> = all
            .iter()
            .filter(|o| o.id != w.id)
            .map(|o| o.id.clone())
            .collect();
        match sel.select(WorkerRole::Regular, &view(vec![], None), &others) {
            Selected::Assigned(a) => {
                assert_eq!(a.worker().id, w.id);
                a
            }
            _ => panic!("a worker"),
        }
    }

    fn failed_with_500(a: Assignment) -> Charge {
        Charge {
            assignment: a,
            verdict: Verdict::Failure,
            answer: Some(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// Whether one more failure ejects `w` (it does when one is already counted).
    fn one_failure_counted(w: &Arc<Worker>) -> bool {
        w.lease().unwrap().settle(Verdict::Failure)
    }

    #[test]
    fn a_500_from_two_workers_is_excused_only_when_nothing_succeeded() {
        let v = view(vec![], None);
        // The request failed on A and B, then C answered: A and B are to blame.
        let (ws, sel) = fleet();
        let charges = vec![
            failed_with_500(lease(&sel, &ws, &ws[0])),
            failed_with_500(lease(&sel, &ws, &ws[1])),
        ];
        let last = (ws[2].id.clone(), StatusCode::OK);
        assert!(!blame(&v, charges, Some(&last)));
        assert!(one_failure_counted(&ws[0]) && one_failure_counted(&ws[1]));

        // It failed the same way on A, B and C: the request is to blame.
        let (ws, sel) = fleet();
        let charges = vec![
            failed_with_500(lease(&sel, &ws, &ws[0])),
            failed_with_500(lease(&sel, &ws, &ws[1])),
        ];
        let last = (ws[2].id.clone(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            blame(&v, charges, Some(&last)),
            "the final answer is excused too"
        );
        assert!(!one_failure_counted(&ws[0]) && !one_failure_counted(&ws[1]));

        // One worker failing twice is that worker's fault.
        let (ws, sel) = fleet();
        let charges = vec![
            failed_with_500(lease(&sel, &ws, &ws[0])),
            failed_with_500(lease(&sel, &ws, &ws[0])),
        ];
        assert!(!blame(&v, charges, None));
        assert!(!ws[0].is_healthy(), "two counted failures eject it");
    }
}
