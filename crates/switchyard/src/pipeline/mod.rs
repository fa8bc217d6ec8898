//! The request pipeline: the only place that sequences a request. A request's life is
//! a sequence of named phases over one [`RequestContext`]:
//!
//! ```text
//! admit ─▶ select_model ─▶ cache ─▶ select_worker ─▶ send ─▶ settle
//!           (selection)     │  HIT     (routing)    (dispatch)
//!                           │               ▲             │
//!                           │               └── retry ◀───┘  failed before any byte
//!                           └─▶ settle (answered from the cache)   reached the client
//! ```
//!
//! - [`admit`]: request id, the caller (`crate::tenancy`), rate limit and concurrency
//!   queue; the caller's model list and limits are checked once the model is chosen.
//! - `select_model`: the request is parsed once (its prompt streamed into the prefix
//!   hasher), then [`ModelSelector`] resolves the model.
//! - [`cache`]: the response cache (off unless configured): a hit is answered here, a
//!   miss's answer is kept when it ends complete.
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
mod backend;
pub mod cache;
mod chain;
pub mod metadata;
pub mod responses;
pub mod route;
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
use crate::request::{RequestView, Route, SessionHeaders};
use crate::routing::prefix::BlockHasher;
use crate::routing::{Assignment, Selected, WorkerSelector};
use crate::selection::ModelSelector;
use crate::telemetry::{self, TARGET as TRACE};
use crate::tenancy::{Caller, Tenancy};
pub use admit::{Admission, AdmissionConfig, Admitted};
use chain::Plan;
use metadata::RoutingMetadata;
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
    /// Who sent it (its tenant's limits and usage apply).
    pub caller: Arc<Caller>,
    /// The parent of the phases' trace spans: the `request` span of `serve_http`, or
    /// an in-process caller's [`telemetry::current`] (`Span::none()` with tracing off).
    pub trace: tracing::Span,
}

/// Settings of the entry steps.
pub struct EntryConfig {
    /// Headers a request id is taken from, first present wins.
    pub request_id_headers: Vec<HeaderName>,
    pub session: SessionHeaders,
    /// Largest request body accepted.
    pub max_payload_size: usize,
    /// `--routing-metadata-in-body`.
    pub metadata_in_body: bool,
    /// `--forward-workflow-metadata`.
    pub forward_workflow_metadata: bool,
    /// `--forward-priority`.
    pub forward_priority: bool,
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
    /// Live multi-agent workflows and their message queues.
    pub workflows: Arc<crate::workflows::Workflows>,
    /// Keys, tenants, their limits and usage.
    pub tenancy: Arc<Tenancy>,
    /// The response cache (docs/caching.md); `None`: off.
    pub cache: Option<Arc<cache::ResponseCache>>,
}

/// The client address of a connection (set by the listener), for the failed-auth limit.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::IpAddr);

/// The client address a request came from, when the listener recorded it.
pub fn client_addr(ext: &http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<ClientAddr>().map(|a| a.0)
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

    /// Who sent a request (the `admit` phase's first step).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        ext: &http::Extensions,
    ) -> Result<Arc<Caller>, ApiError> {
        self.tenancy.authenticate(headers, client_addr(ext)).await
    }

    /// The `admit` phase's rate limit and concurrency queue, for a request already
    /// authenticated.
    pub async fn admit(&self) -> Result<Admitted, ApiError> {
        self.admission.admit(|| None).await
    }

    /// A generation request arriving over HTTP: every phase, with the request id echoed.
    /// The body is read before admission: a request that must queue is placed by the
    /// workflow priority it carries. With tracing on, the request is one `request` span
    /// (a child of the client's `traceparent`, if any) over the phases' spans.
    pub async fn serve_http(&self, route: Route, req: axum::extract::Request) -> Response {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let request_id = self.request_id(&parts.headers);
        // The request span is never entered: the phases name it as their parent, so the
        // untraced path awaits nothing more than it did before tracing (no wrapper).
        let trace = telemetry::request_span(
            &parts.method,
            parts.uri.path(),
            Some(route.path()),
            Some(&request_id),
            &parts.headers,
        );
        let echo = http::HeaderValue::from_str(&request_id).ok();
        let admit = telemetry::span(|| tracing::info_span!(target: TRACE, parent: &trace, "admit"));
        let mut resp = match self.authenticate(&parts.headers, &parts.extensions).await {
            Err(e) => e.into_response(),
            Ok(caller) => match self.read_body(route, &parts.headers, body).await {
                Err(e) => {
                    // The rest of the body was not read: this connection cannot carry
                    // another request, and the client must know not to reuse it.
                    let mut resp = self.reject(route, "", &request_id, e);
                    resp.headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                    resp
                }
                Ok(body) => {
                    let headers = &parts.headers;
                    let priority = || crate::request::workflow::priority_hint(headers, &body);
                    match self.admission.admit(priority).await {
                        Err(e) => e.into_response(),
                        Ok(admitted) => {
                            drop(admit);
                            let ctx = RequestContext {
                                route,
                                request_id,
                                start,
                                headers: parts.headers,
                                body,
                                admitted,
                                caller,
                                trace: trace.clone(),
                            };
                            self.execute(ctx, true).await
                        }
                    }
                }
            },
        };
        if let Some(id) = echo {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-request-id"), id);
        }
        // Every answer on a cached route says what the cache did; one refused before
        // the cache phase (key, body, model, limits) did not use it.
        if let Some(c) = &self.cache
            && cache::cacheable_route(route)
            && !resp.headers().contains_key(cache::X_CACHE)
        {
            c.bypassed("rejected");
            resp.headers_mut()
                .insert(cache::X_CACHE, http::HeaderValue::from_static("BYPASS"));
        }
        telemetry::record_status(&trace, resp.status());
        resp
    }

    /// Reads a body of `route`'s media type (JSON, or multipart for an audio upload)
    /// of at most `--max-payload-size` bytes.
    pub async fn read_body(
        &self,
        route: Route,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Bytes, ApiError> {
        let want = route.mime();
        let ct = headers.get(header::CONTENT_TYPE);
        // JSON may come without a Content-Type; a multipart body needs its boundary.
        if ct.is_some() || want != "application/json" {
            let ct = ct.and_then(|v| v.to_str().ok()).unwrap_or("");
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case(want) {
                return Err(ApiError::bad_request(
                    format!("Content-Type must be {want}, not `{ct}`"),
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
    /// In-process callers' requests are not cached ([`Pipeline::run_cached`] is).
    pub async fn run(&self, ctx: RequestContext) -> Response {
        self.execute(ctx, false).await
    }

    /// `run` through the response cache: a client's request, or the engine call of a
    /// response that keeps nothing (`store: false`, docs/caching.md). The cache decides
    /// by the route, the body and the headers whether it applies.
    pub async fn run_cached(&self, ctx: RequestContext) -> Response {
        self.execute(ctx, true).await
    }

    /// `run`, through the response cache when `cached`.
    async fn execute(&self, ctx: RequestContext, cached: bool) -> Response {
        let RequestContext {
            route,
            request_id,
            start,
            mut headers,
            body,
            admitted,
            caller,
            trace,
        } = ctx;
        // The cache's headers: read (a malformed one is the client's error), and the
        // gateway's own not forwarded.
        let response_cache = self
            .cache
            .as_ref()
            .filter(|_| cached && cache::cacheable_route(route));
        let directives = match response_cache
            .map(|_| cache::directives(&headers))
            .transpose()
        {
            Ok(d) => d,
            Err(e) => return self.reject(route, "", &request_id, e),
        };
        headers.remove(cache::X_CACHE_SEMANTIC);
        // Parse once; the prompt streams into the prefix hasher.
        let mut hasher = BlockHasher::new(self.workers.prefix_block_size());
        let mut view =
            match RequestView::parse(route, &headers, &body, &self.entry.session, &mut hasher) {
                Ok(v) => v,
                Err(e) => return self.reject(route, "", &request_id, e),
            };
        view.prefix_blocks = hasher.finish();
        if self.workers.reads_tokens() {
            view.body = body.clone();
        }
        // Another tenant's workflow of the same name is another workflow.
        if let Some(wf) = &view.workflow
            && caller.owner() != crate::tenancy::DEFAULT_TENANT
        {
            let mut scoped = crate::request::workflow::Workflow::clone(wf);
            scoped.id = Arc::from(crate::request::workflow::scoped_id(caller.owner(), &wf.id));
            view.workflow = Some(Arc::new(scoped));
        }
        // A workflow's request joins it; its metadata is the gateway's, not the engine's.
        let body = match &view.workflow {
            Some(wf) => {
                view.workflow_homes = self.workflows.arrive(wf).await;
                let mut fields: Vec<crate::request::body::Field<'_>> = Vec::new();
                if view.has_workflow_metadata && !self.entry.forward_workflow_metadata {
                    fields.push(("workflow_metadata", None));
                }
                if let (true, Some(p)) = (self.entry.forward_priority, wf.priority) {
                    // vLLM schedules lower values first.
                    fields.push(("priority", Some(serde_json::json!(-(p.round() as i64)))));
                }
                if fields.is_empty() {
                    body
                } else {
                    match crate::request::body::rewrite(&body, &fields) {
                        Ok(b) => {
                            view.model_span = None;
                            b
                        }
                        Err(e) => return self.reject(route, "", &request_id, e.into()),
                    }
                }
            }
            None => body,
        };

        // select_model
        let span = telemetry::span(|| {
            tracing::info_span!(
                target: TRACE,
                parent: &trace,
                "select_model",
                requested = %view.model,
                model = tracing::field::Empty,
                intent = tracing::field::Empty,
            )
        });
        let selected =
            telemetry::traced!(span, self.models.select(&view, &body, &self.registry, self));
        if !span.is_disabled()
            && let Ok(c) = &selected
        {
            span.record("model", &*c.model);
            if let Some(cl) = &c.classified {
                span.record("intent", &*cl.intent);
            }
        }
        drop(span);
        let mut choice = match selected {
            Ok(c) => c,
            Err(mut e) => {
                // A restricted caller is told only of the models it may use.
                if let (true, Some(allowed)) =
                    (e.code == "model_not_found", caller.allowed_models())
                {
                    e = ApiError::model_not_found(&view.model, &allowed);
                }
                return self.reject(route, "", &request_id, e);
            }
        };
        view.intent = choice.classified.as_ref().map(|c| c.intent.clone());
        // The caller's model list and limits (the chain keeps only models it may use).
        if let Some(f) = &choice.fallbacks
            && f.iter().any(|m| !caller.may_use(m))
        {
            let kept: Vec<Arc<str>> = f.iter().filter(|m| caller.may_use(m)).cloned().collect();
            choice.fallbacks = (!kept.is_empty()).then(|| kept.into());
        }
        // Embeddings and token counts generate nothing: their cost is their input (an
        // embedding body is almost all input).
        let cost = match route {
            Route::Embeddings => self.tenancy.estimate(body.len(), Some(0)),
            Route::Tokenize => self.tenancy.estimate(view.prompt_bytes, Some(0)),
            _ => self.tenancy.estimate(view.prompt_bytes, view.max_tokens),
        };
        let ticket = match self.tenancy.admit(&caller, &choice.model, cost).await {
            Ok(t) => t,
            Err(e) => {
                self.tenancy.refused(
                    &caller,
                    &choice.model,
                    e.status == StatusCode::TOO_MANY_REQUESTS,
                );
                return self.reject(route, &choice.key, &request_id, e);
            }
        };
        // cache: a hit is answered here (no engine; no tokens charged), a miss goes on
        // and its answer is kept.
        let mut pending = None;
        let mut x_cache = None;
        if let (Some(rc), Some(d)) = (response_cache, &directives) {
            match rc
                .lookup(route, d, &body, &choice.model, caller.owner())
                .await
            {
                cache::Lookup::Hit(hit) => {
                    drop(admitted);
                    let kind = if hit.similarity.is_some() {
                        "semantic"
                    } else {
                        "exact"
                    };
                    let strip_usage = view.stream && view.stream_options != Some(true);
                    let mut resp = rc.respond(hit, strip_usage);
                    for (name, value) in ticket.headers() {
                        resp.headers_mut().insert(name, value);
                    }
                    ticket.finish(
                        &choice.model,
                        Some(crate::tenancy::TokenUsage::default()),
                        true,
                    );
                    settle::cached(&self.metrics, route, &choice, &request_id, start, kind);
                    return resp;
                }
                cache::Lookup::Miss(p) => {
                    pending = Some(p);
                    x_cache = Some(http::HeaderValue::from_static("MISS"));
                }
                cache::Lookup::Bypass(_) => {
                    x_cache = Some(http::HeaderValue::from_static("BYPASS"));
                }
            }
        }
        // A stream's usage reconciles its tokens and bills it: asked of the engine when
        // the client did not ask, and taken out of the client's stream again (settle).
        let usage_added = view.stream
            && view.stream_options != Some(true)
            && matches!(route, Route::Chat | Route::Completions);
        let body = if usage_added {
            let mut options = match view.stream_options {
                // The client's other options are kept (a rare path: the body is parsed).
                Some(_) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|mut v| v.get_mut("stream_options").map(serde_json::Value::take))
                    .filter(serde_json::Value::is_object)
                    .unwrap_or_else(|| serde_json::json!({})),
                None => serde_json::json!({}),
            };
            options["include_usage"] = serde_json::json!(true);
            match crate::request::body::rewrite(&body, &[("stream_options", Some(options))]) {
                Ok(b) => {
                    view.model_span = None;
                    b
                }
                Err(e) => return self.reject(route, "", &request_id, e.into()),
            }
        } else {
            body
        };
        let mut plan = match Plan::new(&choice, view, &body) {
            Ok(p) => p,
            Err(e) => return self.reject(route, "", &request_id, e),
        };
        // select_worker and send, until answered or out of retries.
        let answered = self
            .attempt_until_answered(&mut plan, &headers, &body, &request_id, &trace)
            .await;
        let mut meta = RoutingMetadata::new(&choice, &plan, start);

        // settle
        match answered {
            Ok(Answered {
                response,
                assignment,
                excused,
                attempts,
            }) => {
                meta.worker_id = Some(assignment.worker().api_id.clone());
                let (mut parts, incoming) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if usage_added {
                    // The usage event is taken out: the length is no longer the engine's.
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                }
                meta.set_header(&mut parts.headers);
                for (name, value) in ticket.headers() {
                    parts.headers.insert(name, value);
                }
                if let Some(x) = x_cache {
                    parts.headers.insert(cache::X_CACHE, x);
                }
                // Only a 200's body is gathered for the cache.
                let capture = match (response_cache, pending) {
                    (Some(rc), Some(p)) if parts.status == StatusCode::OK => {
                        let ct = parts
                            .headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("application/json")
                            .to_string();
                        Some(rc.capture(p, ct))
                    }
                    _ => None,
                };
                let inject = self.entry.metadata_in_body
                    && !plan.view.stream
                    && parts.status.is_success()
                    && metadata::is_json(&parts.headers);
                // The stream span: headers arrived, until the last byte (settle).
                let span = telemetry::span(|| {
                    tracing::info_span!(
                        target: TRACE,
                        parent: &trace,
                        "stream",
                        http.response.status_code = parts.status.as_u16(),
                        outcome = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                    )
                });
                let settle = Settle {
                    span,
                    request_span: trace,
                    start,
                    view: plan.view,
                    assignment,
                    excused,
                    admitted,
                    status: parts.status,
                    request_id,
                    metrics: self.metrics.clone(),
                    attempts,
                    workflows: self.workflows.clone(),
                    ticket: Some(ticket),
                };
                let body = SettledBody::new(incoming, settle, usage_added).capturing(capture);
                if inject {
                    return meta.into_body(parts, body).await;
                }
                Response::from_parts(parts, Body::new(body))
            }
            Err(mut e) => {
                drop(admitted);
                e.headers.extend(ticket.headers());
                // No engine answered: nothing was generated, the reservation goes back.
                let none = crate::tenancy::TokenUsage::default();
                ticket.finish(&plan.view.model, Some(none), false);
                self.metrics.model_request(
                    &plan.view.model_key,
                    plan.view.intent.as_ref(),
                    e.status.as_u16(),
                    start.elapsed(),
                    Some(e.code),
                );
                let mut resp = self.reject(route, &plan.view.model_key, &request_id, e);
                meta.set_header(resp.headers_mut());
                if let Some(x) = x_cache {
                    resp.headers_mut().insert(cache::X_CACHE, x);
                }
                resp
            }
        }
    }

    /// `select_worker` then `send`, retried with backoff and re-selection while an
    /// attempt fails before any byte reached the client and the retry budget lasts,
    /// walking the model's fallback chain (the rule: docs/model-selection.md):
    /// - a model none of whose workers is eligible is skipped without a send;
    /// - a model always gets its first send; a further send on it goes ahead only if
    ///   one of its workers has not failed this request yet and the budget left after
    ///   it still holds one send for each model after it in the chain, else the
    ///   request moves on to the next model;
    /// - every send, on whichever model, counts against `--retry-max-retries` + 1, with
    ///   the usual backoff between them.
    ///
    /// The error is what the client gets when no attempt was answered. `trace`: the
    /// parent of the selection and attempt spans.
    async fn attempt_until_answered(
        &self,
        plan: &mut Plan<'_>,
        headers: &HeaderMap,
        original: &Bytes,
        request_id: &str,
        trace: &tracing::Span,
    ) -> Result<Answered, ApiError> {
        let strategy = self.dispatcher.strategy;
        let retry = &self.dispatcher.cfg.retry;
        let budget = retry.max_retries.saturating_add(1);
        let mut avoid: Vec<WorkerId> = Vec::new();
        let mut charges: Vec<Charge> = Vec::new();
        let mut last_error: Option<ApiError> = None;
        let mut failed_last = false;
        let mut sent = 0u32;
        let mut attempt = 0u32;
        while attempt < budget {
            if failed_last {
                tokio::time::sleep(retry.backoff(attempt - 1)).await;
            }
            failed_last = false;
            let left_after = budget - attempt - 1;
            if plan.sends_here > 0
                && plan.has_next()
                && ((left_after as usize) < plan.after() || self.tried_all(plan, &avoid))
            {
                self.advance(plan, original)?;
            }
            let may_wait = !plan.has_next();
            let model = plan.view.model.clone();
            let span = telemetry::span(|| {
                tracing::info_span!(
                    target: TRACE,
                    parent: trace,
                    "select_worker",
                    model = %model,
                    worker.url = tracing::field::Empty,
                    reason = tracing::field::Empty,
                )
            });
            let selected = telemetry::traced!(
                span,
                self.select_worker(&model, &plan.view, &avoid, attempt, may_wait)
            );
            if !span.is_disabled()
                && let Ok(t) = &selected
            {
                span.record("worker.url", &*target_url(t));
                span.record("reason", target_reason(t));
            }
            drop(span);
            let target = match selected {
                Ok(t) => t,
                Err(Unselected::Refused(id)) => {
                    avoid.push(id);
                    attempt += 1;
                    continue;
                }
                Err(Unselected::None(role)) => {
                    if plan.has_next() {
                        self.advance(plan, original)?;
                        continue;
                    }
                    if last_error.is_none() {
                        last_error = Some(self.no_worker(role, plan));
                    }
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
            plan.sends_here += 1;
            plan.sent += 1;
            // One attempt span per send; its context is what the engine receives as
            // `traceparent`.
            let span = telemetry::span(|| {
                tracing::info_span!(
                    target: TRACE,
                    parent: trace,
                    "attempt",
                    otel.kind = "client",
                    attempt = sent,
                    model = %model,
                    worker.url = %target_url(&target),
                    http.response.status_code = tracing::field::Empty,
                    error = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                )
            });
            let out = Outgoing {
                view: &plan.view,
                headers,
                body: &plan.body,
                request_id,
                span: &span,
            };
            let last = attempt + 1 == budget;
            let outcome = telemetry::traced!(span, self.dispatcher.send(target, &out, last));
            if !span.is_disabled() {
                match &outcome {
                    Outcome::Answered { response, .. } => {
                        span.record("http.response.status_code", response.status().as_u16());
                        if response.status().is_server_error() {
                            span.record("otel.status_code", "error");
                        }
                    }
                    Outcome::Failed(f) => {
                        // The engine's status, when it answered one (a retryable 5xx).
                        if let Some(status) = f.charges.iter().find_map(|c| c.answer) {
                            span.record("http.response.status_code", status.as_u16());
                        }
                        span.record("error", tracing::field::display(&f.error));
                        span.record("otel.status_code", "error");
                    }
                }
            }
            drop(span);
            match outcome {
                Outcome::Answered {
                    response,
                    assignment,
                } => {
                    let last = (assignment.worker().id.clone(), response.status());
                    let excused = blame(&plan.view, charges, Some(&last));
                    return Ok(Answered {
                        response,
                        assignment,
                        excused,
                        attempts: sent,
                    });
                }
                Outcome::Failed(f) => {
                    tracing::debug!(error = %f.error, attempt, model = %model, "attempt failed");
                    avoid.extend(f.avoid);
                    charges.extend(f.charges);
                    last_error = Some(f.error);
                    failed_last = true;
                    attempt += 1;
                    if !f.retry {
                        break;
                    }
                }
            }
        }
        blame(&plan.view, charges, None);
        Err(last_error.unwrap_or_else(|| self.no_worker(strategy.first_role(), plan)))
    }

    /// Whether, for some role an attempt needs, every eligible worker of the current
    /// model has failed this request (so a retry could only go back to one of them).
    fn tried_all(&self, plan: &Plan<'_>, avoid: &[WorkerId]) -> bool {
        self.dispatcher.strategy.roles().iter().any(|role| {
            self.registry
                .candidates(&plan.view.model, *role)
                .iter()
                .all(|w| avoid.contains(&w.id))
        })
    }

    /// Moves `plan` to the next model of its chain (counted as a fallback).
    fn advance(&self, plan: &mut Plan<'_>, original: &Bytes) -> Result<(), ApiError> {
        let from = plan.view.model.clone();
        let to = plan.next_model().expect("called with a next model").clone();
        let key = self.models.key_of(&to, &self.registry);
        plan.advance(original, key)?;
        self.metrics
            .fallbacks
            .get_or_create(&crate::metrics::FallbackLabels { from, to })
            .inc();
        Ok(())
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
        may_wait: bool,
    ) -> Result<Target, Unselected> {
        let wait = may_wait && attempt > 0;
        match self.dispatcher.strategy {
            Strategy::Colocated => {
                let a = self
                    .select_role(model, WorkerRole::Regular, view, avoid, wait)
                    .await?;
                Ok(Target::One(a))
            }
            // A token count needs no decode: a prefill worker has the same tokenizer
            // and context length.
            Strategy::Disaggregated(_) if view.route == Route::Tokenize => {
                let a = self
                    .select_role(model, WorkerRole::Prefill, view, avoid, wait)
                    .await?;
                Ok(Target::One(a))
            }
            Strategy::Disaggregated(mode) => {
                let prefill = self
                    .select_role(model, WorkerRole::Prefill, view, avoid, wait)
                    .await?;
                let decode = self
                    .select_role(model, WorkerRole::Decode, view, avoid, wait)
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
        may_wait: bool,
    ) -> Result<Assignment, Unselected> {
        let mut selected = self.workers.select(role, view, avoid);
        if matches!(selected, Selected::NoCandidate)
            && may_wait
            && let Some(wait) = self.workers.cooling(model, role)
            && wait <= self.dispatcher.cfg.retry.max_backoff
        {
            tokio::time::sleep(wait).await;
            selected = self.workers.select(role, view, avoid);
        }
        match selected {
            Selected::Assigned(a) => {
                self.share_home(role, view, &a).await;
                Ok(a)
            }
            Selected::Refused(id) => Err(Unselected::Refused(id)),
            Selected::NoCandidate => Err(Unselected::None(role)),
        }
    }

    /// Tells the other replicas (through the shared store) the home the workflow-aware
    /// policy placed a workflow on, when they did not know it. Awaited, so that the
    /// workflow's next request finds it on any replica (once per placement).
    async fn share_home(&self, role: WorkerRole, view: &RequestView, a: &Assignment) {
        let Some(wf) = &view.workflow else { return };
        if !self.workflows.is_shared()
            || !matches!(
                a.reason(),
                "workflow_home" | "workflow_placed" | "workflow_migrated"
            )
        {
            return;
        }
        let label = &a.worker().label;
        if view.workflow_homes[role.index()].as_ref() != Some(label) {
            self.workflows.publish_home(wf, role, label).await;
        }
    }

    /// The answer when no worker can take the request (counted as a rejection); it
    /// names the whole chain when the request had fallbacks.
    fn no_worker(&self, role: WorkerRole, plan: &Plan<'_>) -> ApiError {
        self.metrics.reject("no_worker");
        let which = match role {
            WorkerRole::Regular => String::new(),
            r => format!("{} ", r.as_str()),
        };
        let message = match plan.chain() {
            None => format!(
                "No healthy {which}worker is available for model `{}`",
                plan.view.model
            ),
            Some(chain) => format!(
                "No healthy {which}worker is available for any model in the fallback chain {chain}"
            ),
        };
        ApiError::unavailable("no_healthy_worker", message, 1)
    }

    /// Settles a request the gateway answers itself, and answers it.
    fn reject(&self, route: Route, model: &str, request_id: &str, e: ApiError) -> Response {
        settle::rejected(&self.metrics, route, model, request_id, &e);
        e.into_response()
    }
}

/// The worker (or prefill worker, then decode worker) of an attempt, for its spans.
/// Called only with tracing on.
fn target_url(t: &Target) -> String {
    match t {
        Target::One(a) => a.worker().label.to_string(),
        Target::Pair {
            prefill, decode, ..
        } => format!("{} {}", prefill.worker().label, decode.worker().label),
    }
}

/// Why the policy chose an attempt's (first) worker, for its span.
fn target_reason(t: &Target) -> &'static str {
    match t {
        Target::One(a) | Target::Pair { prefill: a, .. } => a.reason(),
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
    if let Some((id, status)) = last
        && *status == poison
    {
        got_500.push(id);
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
