//! Prefill/decode disaggregation. Each attempt picks a pair — a prefill worker with the
//! prefill policy, a decode worker with the decode policy — and runs both phases; a
//! failed attempt is retried with a new pair that avoids the worker of the phase that
//! failed. Both phases hold in-flight slots and breaker permits, and a failure names
//! its phase.
//!
//! - vLLM (NixlConnector): the prefill gets a copy of the request with `max_tokens` 1,
//!   no streaming and `kv_transfer_params.do_remote_decode`; the `kv_transfer_params` it
//!   answers with go into the decode request, whose response streams to the client.
//! - SGLang: both get the request with `bootstrap_host` / `bootstrap_port` /
//!   `bootstrap_room` and are sent at once; the decode's response streams to the client
//!   once the prefill has answered successfully.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::stream::{ObservedBody, Settle};
use super::{Dispatcher, client, hop_by_hop_headers};
use crate::config::PdMode;
use crate::error::ApiError;
use crate::fleet::{InFlight, Permit, Worker, WorkerId, WorkerRole};
use crate::metrics::{DecisionLabels, PhaseLabel, ReasonLabel};
use crate::request::{RequestView, set_fields};
use crate::routing::{Policies, Policy};

/// The prefill and decode pools' policies and protocol.
pub struct Pd {
    pub mode: PdMode,
    pub prefill: Arc<Policies>,
    pub decode: Arc<Policies>,
}

/// Largest prefill response read (it carries one token and the transfer parameters).
const PREFILL_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// One phase of an attempt: its name, worker and policy.
struct Phase<'a> {
    name: &'static str,
    role: WorkerRole,
    worker: Arc<Worker>,
    policy: &'a Arc<dyn Policy>,
}

/// The request being served.
struct Ctx<'a> {
    view: &'a Arc<RequestView>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    request_id: &'a str,
    start: Instant,
    attempt: u32,
}

/// A phase whose response headers arrived with a success status.
struct Sent {
    resp: http::Response<Incoming>,
    permit: Permit,
    in_flight: InFlight,
}

/// Which phase failed, and how to tell the client.
type PairError = (WorkerRole, ApiError);

impl Dispatcher {
    pub(super) async fn dispatch_pd(
        &self,
        pd: &Pd,
        view: RequestView,
        headers: &HeaderMap,
        body: Bytes,
        request_id: &str,
        start: Instant,
    ) -> Response {
        let view = Arc::new(view);
        let pp = pd.prefill.for_model(&view.model);
        let dp = pd.decode.for_model(&view.model);
        let (mut tried_p, mut tried_d) = (Vec::new(), Vec::new());
        let mut last_error: Option<ApiError> = None;
        for attempt in 0..=self.cfg.retry.max_retries {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.retry.backoff(attempt - 1)).await;
            }
            let Some(pw) = self.pick_role(&view, WorkerRole::Prefill, &tried_p, &pp) else {
                last_error.get_or_insert_with(|| no_worker("prefill", &view.model));
                break;
            };
            let Some(dw) = self.pick_role(&view, WorkerRole::Decode, &tried_d, &dp) else {
                last_error.get_or_insert_with(|| no_worker("decode", &view.model));
                break;
            };
            if attempt > 0 {
                self.metrics
                    .retries
                    .get_or_create(&ReasonLabel { reason: "pd_pair" })
                    .inc();
            }
            let (pid, did) = (pw.id.clone(), dw.id.clone());
            let prefill = Phase {
                name: "prefill",
                role: WorkerRole::Prefill,
                worker: pw,
                policy: &pp,
            };
            let decode = Phase {
                name: "decode",
                role: WorkerRole::Decode,
                worker: dw,
                policy: &dp,
            };
            let ctx = Ctx {
                view: &view,
                headers,
                body: &body,
                request_id,
                start,
                attempt,
            };
            let result = match pd.mode {
                PdMode::Vllm => self.vllm_pair(prefill, decode, &ctx).await,
                PdMode::Sglang => self.sglang_pair(prefill, decode, &ctx).await,
            };
            match result {
                Ok(resp) => return resp,
                // Only the worker of the phase that failed is avoided next time.
                Err((failed, e)) => {
                    tracing::debug!(error = %e, attempt, "prefill/decode attempt failed");
                    match failed {
                        WorkerRole::Decode => tried_d.push(did),
                        _ => tried_p.push(pid),
                    }
                    last_error = Some(e);
                }
            }
        }
        last_error
            .unwrap_or_else(|| no_worker("prefill", &view.model))
            .into_response()
    }

    fn pick_role(
        &self,
        view: &RequestView,
        role: WorkerRole,
        tried: &[WorkerId],
        policy: &Arc<dyn Policy>,
    ) -> Option<Arc<Worker>> {
        let all = self.registry.candidates_for(&view.model, role);
        let untried: Vec<Arc<Worker>> = all
            .iter()
            .filter(|w| !tried.contains(&w.id))
            .cloned()
            .collect();
        let candidates = if untried.is_empty() { all } else { untried };
        let pick = policy.pick(&candidates, view)?;
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                policy: policy.name(),
                reason: pick.reason,
            })
            .inc();
        Some(candidates[pick.index].clone())
    }

    /// Sends one phase's request; on failure settles the phase and says why.
    async fn send_phase(
        &self,
        phase: &Phase<'_>,
        ctx: &Ctx<'_>,
        body: Bytes,
    ) -> Result<Sent, PairError> {
        let w = &phase.worker;
        let permit = w
            .breaker
            .acquire()
            .ok_or_else(|| self.phase_error(phase, "its circuit breaker is open".into()))?;
        let in_flight = w.begin();
        phase.policy.on_routed(w, ctx.view);
        let req = self.upstream_request(w, ctx.view, ctx.headers, body, ctx.request_id);
        let started = Instant::now();
        let result = tokio::time::timeout(self.cfg.timeout, client::local().request(req)).await;
        self.metrics
            .pd_phase
            .get_or_create(&PhaseLabel { phase: phase.name })
            .observe(started.elapsed().as_secs_f64());
        let why = match result {
            Ok(Ok(resp)) if resp.status().is_success() => {
                return Ok(Sent {
                    resp,
                    permit,
                    in_flight,
                });
            }
            Ok(Ok(resp)) => format!("{} answered {}", w.label, resp.status()),
            Ok(Err(e)) => format!("{} unreachable: {e}", w.label),
            Err(_) => format!(
                "{} did not answer within {} s",
                w.label,
                self.cfg.timeout.as_secs()
            ),
        };
        self.settle_phase(phase, ctx, permit, false);
        Err(self.phase_error(phase, why))
    }

    fn settle_phase(&self, phase: &Phase<'_>, ctx: &Ctx<'_>, permit: Permit, ok: bool) {
        permit.record(ok);
        phase
            .worker
            .record_upstream(ok, self.cfg.passive_failure_threshold);
        phase.policy.on_finished(&phase.worker, ctx.view, ok);
    }

    fn phase_error(&self, phase: &Phase<'_>, why: String) -> PairError {
        self.metrics
            .pd_failures
            .get_or_create(&PhaseLabel { phase: phase.name })
            .inc();
        (
            phase.role,
            ApiError::bad_gateway(format!("{} phase failed: {why}", phase.name)),
        )
    }

    /// Streams the decode response to the client with its accounting.
    fn stream_decode(&self, decode: &Phase<'_>, ctx: &Ctx<'_>, sent: Sent) -> Response {
        let (mut parts, incoming) = sent.resp.into_parts();
        hop_by_hop_headers(&mut parts.headers);
        let settle = Settle {
            start: ctx.start,
            view: ctx.view.clone(),
            in_flight: sent.in_flight,
            permit: Some(sent.permit),
            admission: None,
            status: parts.status,
            request_id: ctx.request_id.to_string(),
            metrics: self.metrics.clone(),
            policy: decode.policy.clone(),
            passive_failure_threshold: self.cfg.passive_failure_threshold,
            attempts: ctx.attempt + 1,
        };
        Response::from_parts(parts, Body::new(ObservedBody::new(incoming, settle)))
    }

    async fn vllm_pair(
        &self,
        prefill: Phase<'_>,
        decode: Phase<'_>,
        ctx: &Ctx<'_>,
    ) -> Result<Response, PairError> {
        let pbody = set_fields(
            ctx.body,
            &[
                ("max_tokens", json!(1)),
                ("max_completion_tokens", json!(1)),
                ("stream", json!(false)),
                ("stream_options", Value::Null),
                ("kv_transfer_params", json!({"do_remote_decode": true, "do_remote_prefill": false,
                    "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null})),
            ],
        )
        .expect("the body was validated as a JSON object");
        let sent = self.send_phase(&prefill, ctx, pbody).await?;
        let read = tokio::time::timeout(
            self.cfg.timeout,
            Limited::new(sent.resp.into_body(), PREFILL_BODY_LIMIT).collect(),
        )
        .await;
        let kv = match read {
            Ok(Ok(b)) => serde_json::from_slice::<Value>(&b.to_bytes())
                .ok()
                .and_then(|v| {
                    v.get("kv_transfer_params")
                        .filter(|k| k.is_object())
                        .cloned()
                }),
            _ => None,
        };
        let Some(kv) = kv else {
            self.settle_phase(&prefill, ctx, sent.permit, false);
            return Err(self.phase_error(
                &prefill,
                format!("{} returned no kv_transfer_params", prefill.worker.label),
            ));
        };
        self.settle_phase(&prefill, ctx, sent.permit, true);
        drop(sent.in_flight);
        let dbody = set_fields(ctx.body, &[("kv_transfer_params", kv)])
            .expect("the body was validated as a JSON object");
        let sent = self.send_phase(&decode, ctx, dbody).await?;
        Ok(self.stream_decode(&decode, ctx, sent))
    }

    async fn sglang_pair(
        &self,
        prefill: Phase<'_>,
        decode: Phase<'_>,
        ctx: &Ctx<'_>,
    ) -> Result<Response, PairError> {
        let pw = prefill.worker.clone();
        let room = fastrand::u64(..1 << 62);
        let port = pw.bootstrap_port.unwrap_or_else(|| pw.port());
        let both = set_fields(
            ctx.body,
            &[
                ("bootstrap_host", json!(pw.host())),
                ("bootstrap_port", json!(port)),
                ("bootstrap_room", json!(room)),
            ],
        )
        .expect("the body was validated as a JSON object");
        let pf = self.send_phase(&prefill, ctx, both.clone());
        let df = self.send_phase(&decode, ctx, both);
        tokio::pin!(pf, df);
        // A prefill that fails cancels the decode at once (it would wait for KV that
        // never comes); a decode that fails first still lets the prefill finish.
        let (p, d) = tokio::select! {
            p = &mut pf => (p?, (&mut df).await),
            d = &mut df => ((&mut pf).await?, d),
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                self.settle_phase(&prefill, ctx, p.permit, true);
                return Err(e);
            }
        };
        // The prefill's answer is not the client's: read it to its end in the background,
        // holding its slot and permit until then.
        let (policy, view, threshold, timeout) = (
            prefill.policy.clone(),
            ctx.view.clone(),
            self.cfg.passive_failure_threshold,
            self.cfg.timeout,
        );
        let Sent {
            resp,
            permit,
            in_flight,
        } = p;
        tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, resp.into_body().collect()).await,
                Ok(Ok(_))
            );
            permit.record(ok);
            pw.record_upstream(ok, threshold);
            policy.on_finished(&pw, &view, ok);
            drop(in_flight);
        });
        Ok(self.stream_decode(&decode, ctx, d))
    }
}

fn no_worker(role: &str, model: &str) -> ApiError {
    ApiError::unavailable(
        "no_healthy_worker",
        format!("No healthy {role} worker is available for model `{model}`"),
        1,
    )
}
