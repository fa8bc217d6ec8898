//! `POST /route`: the gateway picks the use case and model for a query, runs it through
//! the pipeline in-process, and keeps the decision in a session so follow-ups skip
//! classification ("bypass") until the subject or modality changes. The decision is
//! `select_model`'s (`selection::use_cases`); generation is an ordinary chat request
//! through every phase (worker selection with the session id as the affinity key,
//! retries, the model's fallback chain). docs/route-api.md has the contract.
//!
//! A session store that fails never fails the request: the query is classified in full
//! and answered without a session (`session_degraded: true`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};

use super::{Admitted, Pipeline, RequestContext};
use crate::config::use_cases::Modality;
use crate::error::ApiError;
use crate::metrics::{ReasonLabel, RouteLabels, RoutePathLabel};
use crate::request::Route;
use crate::request::route::RouteRequest;
use crate::selection::use_cases::{ContextChanged, UseCaseInfo, classification_text};
use crate::state::counters::{self, Counters};
use crate::state::{Session, Stores, Turn, random_id};

/// Largest engine answer `/route` reads when not streaming.
const ANSWER_LIMIT: usize = 16 << 20;

/// `/route`'s settings.
#[derive(Clone, Debug)]
pub struct RouteSettings {
    /// Messages of history kept per session and sent with each follow-up.
    pub history_messages: usize,
    pub max_query_bytes: usize,
}

/// The `/route` API.
pub struct RouteApi {
    pub pipeline: Arc<Pipeline>,
    pub stores: Stores,
    /// This replica's own totals, answered by `/stats` when the shared ones are
    /// unreadable.
    local: counters::Memory,
    settings: RouteSettings,
}

/// How the use case and model were decided.
struct Decision {
    case: UseCaseInfo,
    model: Arc<str>,
    confidence: f64,
    bypass: bool,
    changed: Option<ContextChanged>,
    routing_ms: f64,
}

/// What a turn leaves behind for the session and the stats.
struct Turned {
    answer: String,
    usage: Value,
    /// The model that answered (a fallback's, if one did) and its worker.
    model: Option<String>,
    worker: Option<String>,
}

/// The id a tenant's session is stored under: the `default` tenant's as the client
/// names it, another's behind its tenant id and a `/` (which neither id may hold), so
/// tenants never see, continue or overwrite each other's sessions.
pub fn scoped_session(owner: &str, id: &str) -> String {
    crate::tenancy::scoped(owner, '/', id)
}

/// The id a client knows a stored session by.
pub fn unscoped_session<'a>(owner: &str, stored: &'a str) -> &'a str {
    crate::tenancy::unscoped(owner, '/', stored).unwrap_or(stored)
}

/// How a session's user is stored: a non-default tenant's users are
/// `tenant\u{1f}user`, so two tenants' users of one name never share the per-user
/// session cap (a user id holds no control characters).
pub fn scoped_user(owner: &str, user: &str) -> String {
    crate::tenancy::scoped(owner, '\u{1f}', user)
}

/// The user id a client knows, from its stored form.
pub fn unscoped_user<'a>(owner: &str, stored: &'a str) -> &'a str {
    crate::tenancy::unscoped(owner, '\u{1f}', stored).unwrap_or(stored)
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// A failure in `/route`'s shape, which also carries the OpenAI error object.
fn failure(e: &ApiError, use_case: Option<&str>, routing_ms: f64, request_id: &str) -> Response {
    let body = json!({
        "success": false,
        "error_message": e.message,
        "use_case": use_case,
        "routing_time": routing_ms,
        "request_id": request_id,
        "error": {"message": e.message, "type": e.kind(), "param": e.param, "code": e.code},
    });
    let mut resp = (e.status, axum::Json(body)).into_response();
    if let Some(secs) = e.retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    for (n, v) in &e.headers {
        resp.headers_mut().insert(n.clone(), v.clone());
    }
    resp
}

/// The error inside a gateway or engine error body, with its status.
fn error_of(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let retry = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut e = match status.as_u16() {
        400..=499 => ApiError::bad_request(message, None),
        503 => ApiError::unavailable("no_healthy_model", message, retry.unwrap_or(1)),
        504 => ApiError::gateway_timeout(message),
        _ => ApiError::bad_gateway(message),
    };
    e.status = status;
    if retry.is_some() {
        e.retry_after_secs = retry;
    }
    // The gateway's own refusals keep their code and their x-ratelimit-* headers.
    if let Some(code) = parsed
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str())
        .and_then(|c| KEPT_CODES.iter().find(|k| **k == c))
    {
        e.code = code;
    }
    e.headers = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-ratelimit-"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    e
}

/// Error codes of the pipeline a `/route` failure passes on as they are.
const KEPT_CODES: [&str; 6] = [
    "rate_limit_exceeded",
    "tokens_exceed_limit",
    "concurrency_limit_exceeded",
    "budget_exceeded",
    "rate_limit_unavailable",
    "model_not_found",
];

/// The model and worker the pipeline's routing metadata names.
fn served_by(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let meta: Option<Value> = headers
        .get(super::metadata::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok());
    let field = |k: &str| {
        meta.as_ref()
            .and_then(|m| m[k].as_str())
            .map(str::to_string)
    };
    (field("model_id"), field("worker_id"))
}

impl RouteApi {
    pub fn new(pipeline: Arc<Pipeline>, stores: Stores, settings: RouteSettings) -> RouteApi {
        RouteApi {
            pipeline,
            stores,
            local: counters::Memory::default(),
            settings,
        }
    }

    /// Serves one `/route` request (admitted like any generation request).
    pub async fn handle(self: Arc<Self>, req: axum::extract::Request) -> Response {
        let (parts, body) = req.into_parts();
        let request_id = self.pipeline.request_id(&parts.headers);
        let echo = HeaderValue::from_str(&request_id).ok();
        let mut resp = match self
            .pipeline
            .authenticate(&parts.headers, &parts.extensions)
            .await
        {
            Ok(caller) => self.serve(&parts.headers, body, request_id, caller).await,
            Err(e) => failure(&e, None, 0.0, &request_id),
        };
        if let Some(id) = echo {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-request-id"), id);
        }
        resp
    }

    async fn serve(
        self: Arc<Self>,
        headers: &HeaderMap,
        body: Body,
        request_id: String,
        caller: Arc<crate::tenancy::Caller>,
    ) -> Response {
        let start = Instant::now();
        let admitted = match self.pipeline.admit().await {
            Ok(a) => a,
            Err(e) => return failure(&e, None, 0.0, &request_id),
        };
        let body = match self.pipeline.read_body(Route::Chat, headers, body).await {
            Ok(b) => b,
            Err(e) => return failure(&e, None, 0.0, &request_id),
        };
        let req = match RouteRequest::parse(&body, self.settings.max_query_bytes) {
            Ok(r) => r,
            Err(e) => return failure(&e, None, 0.0, &request_id),
        };
        let routing_start = Instant::now();
        let text = classification_text(&req.query, req.context.as_ref());

        // The session, when the client names one.
        let mut degraded = false;
        let mut existing: Option<Session> = None;
        if let Some(id) = &req.session_id {
            match self
                .stores
                .sessions
                .get(&scoped_session(caller.owner(), id))
                .await
            {
                // Another user's session is not this user's to continue.
                Ok(Some(s))
                    if req.user_id.is_none()
                        || s.user_id.as_deref()
                            == req
                                .user_id
                                .as_deref()
                                .map(|u| scoped_user(caller.owner(), u))
                                .as_deref() =>
                {
                    existing = Some(s)
                }
                Ok(_) if req.require_session => {
                    let e = ApiError::not_found_named(format!(
                        "Session `{id}` does not exist or has expired"
                    ));
                    return failure(&e, None, ms(routing_start), &request_id);
                }
                Ok(_) => {}
                Err(_) => degraded = true,
            }
        }
        let decision = match self
            .decide(&req, &text, existing.as_ref(), routing_start)
            .await
        {
            Ok(d) => d,
            Err((e, case)) => {
                return failure(&e, case.as_deref(), ms(routing_start), &request_id);
            }
        };
        if !self.servable(&decision.model) {
            let e = ApiError::unavailable(
                "no_healthy_model",
                format!(
                    "No healthy worker serves `{}` (use case `{}`) or a model of its fallback chain",
                    decision.model, decision.case.id
                ),
                5,
            );
            return failure(
                &e,
                Some(&decision.case.id),
                decision.routing_ms,
                &request_id,
            );
        }
        if let Some(why) = decision.changed {
            self.pipeline
                .metrics
                .route_context_changes
                .get_or_create(&ReasonLabel {
                    reason: why.as_str(),
                })
                .inc();
        }

        // The session this turn belongs to (none while the store is failing).
        let session_id = match (&existing, degraded) {
            (Some(_), _) => req.session_id.clone(),
            (None, true) => None,
            (None, false) => Some(req.session_id.clone().unwrap_or_else(|| random_id("sess_"))),
        };
        let body = self.chat_body(&req, &decision, existing.as_ref());
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(v) = session_id
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            h.insert(HeaderName::from_static("x-session-id"), v);
        }
        let turn = Pending {
            api: self.clone(),
            req,
            decision,
            existing,
            session_id,
            degraded,
            start,
            request_id,
            owner: caller.tenant.id.clone(),
        };
        let inference_start = Instant::now();
        let resp = self
            .pipeline
            .run(RequestContext {
                route: Route::Chat,
                request_id: turn.request_id.clone(),
                start,
                headers: h,
                body,
                admitted: Admitted::on_behalf(),
                caller: caller.clone(),
                trace: crate::telemetry::current(),
            })
            .await;
        // The client's permit is held until the answer has been sent (a stream's end).
        if turn.req.stream && resp.status().is_success() {
            return turn.stream(resp, inference_start, admitted);
        }
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let bytes = match Limited::new(body, ANSWER_LIMIT).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let e = ApiError::bad_gateway(format!("The answer could not be read: {e}"));
                return turn.failed(&e).await;
            }
        };
        drop(admitted);
        if !status.is_success() {
            let e = error_of(status, &parts.headers, &bytes);
            return turn.failed(&e).await;
        }
        let answer: Option<(String, Value)> =
            serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
                let text = v["choices"][0]["message"]["content"].as_str()?.to_string();
                Some((text, v["usage"].clone()))
            });
        let Some((answer, usage)) = answer else {
            let e = ApiError::bad_gateway("The engine's answer is not a chat completion");
            return turn.failed(&e).await;
        };
        let (model, worker) = served_by(&parts.headers);
        let turned = Turned {
            answer,
            usage,
            model,
            worker,
        };
        axum::Json(turn.finish(turned, inference_start).await).into_response()
    }

    /// Bypass, or full routing: the use case, its model, and how it was decided.
    async fn decide(
        &self,
        req: &RouteRequest,
        text: &str,
        existing: Option<&Session>,
        started: Instant,
    ) -> Result<Decision, (ApiError, Option<String>)> {
        let models = &self.pipeline.models;
        let mut changed = None;
        if let Some(s) = existing {
            let bypass_on = req.bypass_enabled.unwrap_or(s.bypass_enabled);
            if bypass_on && !req.force_route {
                let was = Modality::parse(&s.modality).unwrap_or(Modality::Text);
                changed = models.context_changed(&s.use_case, was, text, req.modality);
                if changed.is_none()
                    && let Some(case) = models.use_case(&s.use_case)
                {
                    return Ok(Decision {
                        case,
                        model: Arc::from(s.model_id.as_str()),
                        confidence: s.confidence,
                        bypass: true,
                        changed: None,
                        routing_ms: ms(started),
                    });
                }
            }
        }
        let choice = models
            .route_use_case(text, req.modality, &self.pipeline.registry, &*self.pipeline)
            .await
            .map_err(|e| (e, None))?;
        let Some(model) = choice.model else {
            let e = ApiError::unavailable(
                "no_model_for_use_case",
                format!(
                    "No model serves use case `{}`: set `use_cases[].model` or give a model the capability",
                    choice.case.id
                ),
                5,
            );
            return Err((e, Some(choice.case.id.to_string())));
        };
        Ok(Decision {
            case: choice.case,
            model,
            confidence: choice.confidence,
            bypass: false,
            changed,
            routing_ms: ms(started),
        })
    }

    /// Whether a healthy, non-draining worker serves `model` or one of its fallbacks.
    fn servable(&self, model: &Arc<str>) -> bool {
        let workers = self.pipeline.registry.all();
        self.pipeline.models.chain_of(model).iter().any(|m| {
            workers
                .iter()
                .any(|w| w.serves(m) && w.is_healthy() && !w.is_draining())
        })
    }

    /// The chat request of a turn: the use case's system prompt, the session's recent
    /// messages, the query.
    fn chat_body(&self, req: &RouteRequest, d: &Decision, existing: Option<&Session>) -> Bytes {
        let mut messages = Vec::new();
        if let Some(sp) = &d.case.system_prompt {
            messages.push(json!({"role": "system", "content": &**sp}));
        }
        if let Some(s) = existing {
            messages.extend(
                s.turns
                    .iter()
                    .map(|t| json!({"role": t.role, "content": t.content})),
            );
        }
        messages.push(json!({"role": "user", "content": req.query}));
        let mut body = json!({
            "model": &*d.model,
            "messages": messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "stream": req.stream,
        });
        if req.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        Bytes::from(serde_json::to_vec(&body).expect("plain data serializes"))
    }

    /// `GET /stats`: the totals (fleet-wide with Redis, else this replica's), averages
    /// in milliseconds.
    pub async fn stats(&self) -> Value {
        let (totals, scope) = match self.stores.counters.read().await {
            Ok(t) => (
                t,
                if self.stores.backend == "redis" {
                    "shared"
                } else {
                    "replica"
                },
            ),
            Err(_) => (
                self.local.read().await.unwrap_or_default(),
                "replica (the shared store is unavailable)",
            ),
        };
        let get = |k: &str| totals.get(k).copied().unwrap_or(0.0);
        let avg = |sum: &str, n: f64| if n > 0.0 { round3(get(sum) / n) } else { 0.0 };
        let total = get("total_requests");
        let bypass = get("bypass_requests");
        let full = get("full_routing_requests");
        let answered = get("answered_requests");
        json!({
            "total_requests": total as u64,
            "bypass_requests": bypass as u64,
            "full_routing_requests": full as u64,
            "session_creations": get("session_creations") as u64,
            "context_changes": get("context_changes") as u64,
            "failed_requests": get("failed_requests") as u64,
            "bypass_rate_percent": if total > 0.0 { round3(100.0 * bypass / total) } else { 0.0 },
            "average_routing_time": avg("routing_ms", full),
            "average_bypass_time": avg("bypass_ms", bypass),
            "average_inference_time": avg("inference_ms", answered),
            "average_total_time": avg("total_ms", answered),
            "time_unit": "ms",
            "scope": scope,
            "backend": self.stores.backend,
        })
    }

    /// Adds a turn's figures to the shared totals and to this replica's.
    async fn count(&self, deltas: &[(&'static str, f64)]) {
        let _ = self.local.add(deltas).await;
        // A failed write is kept by the store and added with the next one.
        let _ = self.stores.counters.add(deltas).await;
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// A turn between its routing decision and its session write.
struct Pending {
    api: Arc<RouteApi>,
    req: RouteRequest,
    decision: Decision,
    existing: Option<Session>,
    session_id: Option<String>,
    degraded: bool,
    start: Instant,
    request_id: String,
    /// The caller's tenant: its sessions are stored under its namespace.
    owner: Arc<str>,
}

impl Pending {
    fn path(&self) -> &'static str {
        if self.decision.bypass {
            "bypass"
        } else {
            "full"
        }
    }

    fn routing_deltas(&self) -> Vec<(&'static str, f64)> {
        let d = &self.decision;
        let mut out = vec![("total_requests", 1.0)];
        if d.bypass {
            out.push(("bypass_requests", 1.0));
            out.push(("bypass_ms", d.routing_ms));
        } else {
            out.push(("full_routing_requests", 1.0));
            out.push(("routing_ms", d.routing_ms));
        }
        if d.changed.is_some() {
            out.push(("context_changes", 1.0));
        }
        out
    }

    fn observe(&self, status: u16) {
        let m = &self.api.pipeline.metrics;
        m.route_requests
            .get_or_create(&RouteLabels {
                use_case: self.decision.case.id.clone(),
                path: self.path(),
                status,
            })
            .inc();
        m.route_routing
            .get_or_create(&RoutePathLabel { path: self.path() })
            .observe(self.decision.routing_ms / 1e3);
        if self.degraded {
            m.route_session_degraded.inc();
        }
    }

    /// The generation failed: the failure, counted.
    /// Counts a turn that got no answer.
    async fn count_failure(&self, status: u16) {
        self.observe(status);
        let mut deltas = self.routing_deltas();
        deltas.push(("failed_requests", 1.0));
        self.api.count(&deltas).await;
    }

    async fn failed(self, e: &ApiError) -> Response {
        self.count_failure(e.status.as_u16()).await;
        failure(
            e,
            Some(&self.decision.case.id),
            self.decision.routing_ms,
            &self.request_id,
        )
    }

    /// Writes the session and the stats for an answered turn; the response fields.
    async fn finish(mut self, t: Turned, inference_start: Instant) -> Value {
        let inference_ms = ms(inference_start);
        let api = self.api.clone();
        let now = api.stores.clock.now_ms();
        let d = &self.decision;
        let history = api.settings.history_messages;
        let mut created = false;
        let session = self.session_id.clone().map(|id| {
            let mut s = self.existing.take().unwrap_or_else(|| {
                created = true;
                Session {
                    session_id: scoped_session(&self.owner, &id),
                    user_id: self
                        .req
                        .user_id
                        .as_deref()
                        .map(|u| scoped_user(&self.owner, u)),
                    use_case: String::new(),
                    model_id: String::new(),
                    endpoint: None,
                    confidence: 0.0,
                    request_count: 0,
                    created_at: now,
                    last_accessed: now,
                    bypass_enabled: true,
                    modality: Modality::Text.as_str().into(),
                    turns: Vec::new(),
                }
            });
            if !d.bypass {
                s.use_case = d.case.id.to_string();
                s.model_id = d.model.to_string();
                s.confidence = d.confidence;
            }
            if let Some(m) = self.req.modality {
                s.modality = m.as_str().into();
            }
            if let Some(b) = self.req.bypass_enabled {
                s.bypass_enabled = b;
            }
            s.endpoint = t.worker.clone().or(s.endpoint.take());
            s.request_count += 1;
            s.last_accessed = now;
            s.turns.push(Turn {
                role: "user".into(),
                content: self.req.query.clone(),
            });
            s.turns.push(Turn {
                role: "assistant".into(),
                content: t.answer.clone(),
            });
            let excess = s.turns.len().saturating_sub(history);
            s.turns.drain(..excess);
            s
        });
        if let Some(s) = &session {
            match api.stores.sessions.put(s, created).await {
                Ok(evicted) => {
                    api.pipeline
                        .metrics
                        .route_session_evictions
                        .inc_by(evicted as u64);
                }
                Err(_) => {
                    self.degraded = true;
                    created = false;
                }
            }
        }
        let session_id = if self.degraded {
            None
        } else {
            self.session_id.clone()
        };
        if created {
            api.pipeline.metrics.route_session_creations.inc();
        }
        let total_ms = ms(self.start);
        self.observe(200);
        let m = &api.pipeline.metrics;
        m.route_inference.observe(inference_ms / 1e3);
        m.route_total.observe(total_ms / 1e3);
        let mut deltas = self.routing_deltas();
        deltas.extend([
            ("answered_requests", 1.0),
            ("inference_ms", inference_ms),
            ("total_ms", total_ms),
        ]);
        if created {
            deltas.push(("session_creations", 1.0));
        }
        api.count(&deltas).await;
        let d = &self.decision;
        let out = json!({
            "success": true,
            "result": t.answer,
            "use_case": &*d.case.id,
            "selected_model": t.model.unwrap_or_else(|| d.model.to_string()),
            "confidence": round3(d.confidence),
            "routing_time": d.routing_ms,
            "bypass_used": d.bypass,
            "context_change": d.changed.map(ContextChanged::as_str),
            "session_id": session_id,
            "new_session": created,
            "session_degraded": self.degraded,
            "inference_time": inference_ms,
            "total_time": total_ms,
            "usage": t.usage,
            "request_id": self.request_id,
        });
        out
    }

    /// The decision as the first event of a stream.
    fn route_event(&self) -> Value {
        let d = &self.decision;
        json!({
            "type": "route",
            "use_case": &*d.case.id,
            "selected_model": &*d.model,
            "confidence": round3(d.confidence),
            "routing_time": d.routing_ms,
            "bypass_used": d.bypass,
            "context_change": d.changed.map(ContextChanged::as_str),
            "session_id": if self.degraded { None } else { self.session_id.clone() },
            "session_degraded": self.degraded,
            "request_id": self.request_id,
        })
    }

    /// Streams the answer as server-sent events: the decision, then each piece of
    /// text, then a `done` event with the times and usage. The engine's stream is read
    /// as the client reads ours; a client that leaves stops it (and no turn is kept).
    fn stream(self, resp: Response, inference_start: Instant, admitted: Admitted) -> Response {
        let (parts, body) = resp.into_parts();
        let (model, worker) = served_by(&parts.headers);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let first = sse(&self.route_event());
        tokio::spawn(async move {
            let _admitted = admitted;
            if tx.send(first).await.is_err() {
                return;
            }
            let mut upstream = body.into_data_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut answer = String::new();
            let mut usage = Value::Null;
            let mut ended = false;
            'read: while let Some(chunk) = upstream.next().await {
                let Ok(chunk) = chunk else { break };
                buf.extend_from_slice(&chunk);
                while let Some(at) = memchr::memmem::find(&buf, b"\n\n") {
                    let event: Vec<u8> = buf.drain(..at + 2).collect();
                    for line in event.split(|b| *b == b'\n') {
                        let Some(data) = line.strip_prefix(b"data:") else {
                            continue;
                        };
                        let data = data.trim_ascii();
                        if data == b"[DONE]" {
                            ended = true;
                            break 'read;
                        }
                        let Ok(v) = serde_json::from_slice::<Value>(data) else {
                            continue;
                        };
                        if v.get("error").is_some() {
                            let msg = v["error"]["message"].as_str().unwrap_or("engine error");
                            let _ = tx
                                .send(sse(&json!({"type": "error", "success": false, "error_message": msg})))
                                .await;
                            break 'read;
                        }
                        if !v["usage"].is_null() {
                            usage = v["usage"].clone();
                        }
                        if let Some(piece) = v["choices"][0]["delta"]["content"].as_str()
                            && !piece.is_empty()
                        {
                            answer.push_str(piece);
                            let ev = sse(&json!({"type": "token", "content": piece}));
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            drop(upstream);
            if !ended {
                let e = ApiError::bad_gateway("The engine's stream ended early");
                let _ = tx
                    .send(sse(
                        &json!({"type": "error", "success": false, "error_message": e.message}),
                    ))
                    .await;
                self.count_failure(502).await;
                return;
            }
            let turned = Turned {
                answer,
                usage,
                model,
                worker,
            };
            let mut out = self.finish(turned, inference_start).await;
            out["type"] = json!("done");
            let _ = tx.send(sse(&out)).await;
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let mut resp = Response::new(Body::from_stream(stream));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}
