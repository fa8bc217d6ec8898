//! Prefill/decode disaggregation as a send strategy. An attempt gets a pair of workers
//! — a prefill worker and a decode worker, each chosen by its role's policy — and runs
//! both phases. A phase that fails names itself, and the next attempt avoids only the
//! worker of that phase. An engine's 4xx is the request's fault: it is passed back to
//! the client as it is and never counts against the worker.
//!
//! - vLLM (NixlConnector): the prefill gets a copy of the request with `max_tokens` 1,
//!   no streaming and `kv_transfer_params.do_remote_decode`; the `kv_transfer_params` it
//!   answers with go into the decode request, whose response streams to the client.
//! - SGLang: both get the request with `bootstrap_host` / `bootstrap_port` /
//!   `bootstrap_room` and are sent at once; the decode's response streams to the client
//!   once the prefill has answered successfully.

use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Call, CallFailure, Dispatcher, Outcome, Outgoing};
use crate::error::ApiError;
use crate::fleet::Verdict;
use crate::metrics::PhaseLabel;
use crate::request::body::Field;
use crate::routing::Assignment;

/// Largest prefill response read (it carries one token and the transfer parameters).
const PREFILL_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy)]
enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// A client error the engine answered: the request's fault, passed through.
fn passes_through(status: StatusCode) -> bool {
    status.is_client_error() && !super::retryable(status)
}

/// What a phase's call gave, sorted.
enum PhaseResult {
    Ok(http::Response<Incoming>),
    Not(NotOk),
}

/// A phase that did not succeed.
enum NotOk {
    /// A 4xx to hand back to the client.
    Rejected(http::Response<Incoming>),
    Failed(CallFailure),
}

impl Dispatcher {
    /// Sends one phase and sorts its answer.
    async fn phase(
        &self,
        phase: Phase,
        a: &Assignment,
        out: &Outgoing<'_>,
        body: Bytes,
    ) -> PhaseResult {
        let started = Instant::now();
        let call = self.call(a, out, body).await;
        self.metrics
            .pd_phase
            .get_or_create(&PhaseLabel {
                phase: phase.name(),
            })
            .observe(started.elapsed().as_secs_f64());
        match call {
            Call::Answered(r) if r.status().is_success() => PhaseResult::Ok(r),
            Call::Answered(r) if passes_through(r.status()) => PhaseResult::Not(NotOk::Rejected(r)),
            Call::Answered(r) => PhaseResult::Not(NotOk::Failed(CallFailure::answered(a, &r))),
            Call::Failed(f) => PhaseResult::Not(NotOk::Failed(f)),
        }
    }

    /// The attempt failed in `phase` on `failed`; the other assignments did nothing wrong.
    fn phase_failure(
        &self,
        phase: Phase,
        failed: Assignment,
        f: CallFailure,
        others: Vec<Assignment>,
    ) -> Outcome {
        self.metrics
            .pd_failures
            .get_or_create(&PhaseLabel {
                phase: phase.name(),
            })
            .inc();
        let message = format!("{} phase failed: {}", phase.name(), f.why);
        let error = if f.timeout {
            ApiError::gateway_timeout(message)
        } else {
            ApiError::bad_gateway(message)
        };
        Outcome::Failed(f.into_failure(error, failed, others))
    }

    /// The request's body for `a`'s phase: `fields`, and the data-parallel rank when
    /// the gateway puts it in bodies.
    fn phase_body(
        &self,
        out: &Outgoing<'_>,
        a: &Assignment,
        fields: &[Field<'_>],
    ) -> Result<Bytes, ApiError> {
        match self.rank_field(a) {
            Some(rank) => {
                let mut all = fields.to_vec();
                all.push(rank);
                self.rewritten(out, &all)
            }
            None => self.rewritten(out, fields),
        }
    }

    pub(super) async fn vllm_pair(
        &self,
        prefill: Assignment,
        decode: Assignment,
        out: &Outgoing<'_>,
    ) -> Outcome {
        let fields = [
            ("max_tokens", Some(json!(1))),
            ("max_completion_tokens", Some(json!(1))),
            ("stream", Some(json!(false))),
            ("stream_options", None),
            (
                "kv_transfer_params",
                Some(json!({"do_remote_decode": true, "do_remote_prefill": false,
                "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null})),
            ),
        ];
        let pbody = match self.phase_body(out, &prefill, &fields) {
            Ok(b) => b,
            Err(e) => return self.unsent(e, vec![prefill, decode]),
        };
        let resp = match self.phase(Phase::Prefill, &prefill, out, pbody).await {
            PhaseResult::Ok(r) => r,
            PhaseResult::Not(n) => return self.prefill_not_ok(n, prefill, decode),
        };
        let read = tokio::time::timeout(
            self.cfg.timeout,
            Limited::new(resp.into_body(), PREFILL_BODY_LIMIT).collect(),
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
            let f = CallFailure {
                why: format!("{} returned no kv_transfer_params", prefill.worker().api_id),
                verdict: Verdict::Failure,
                answer: None,
                timeout: false,
                wait: None,
            };
            return self.phase_failure(Phase::Prefill, prefill, f, vec![decode]);
        };
        prefill.settle(out.view, Verdict::Success);
        let dbody = match self.phase_body(out, &decode, &[("kv_transfer_params", Some(kv))]) {
            Ok(b) => b,
            Err(e) => return self.unsent(e, vec![decode]),
        };
        match self.phase(Phase::Decode, &decode, out, dbody).await {
            PhaseResult::Ok(response) | PhaseResult::Not(NotOk::Rejected(response)) => {
                Outcome::Answered {
                    response,
                    assignment: decode,
                }
            }
            PhaseResult::Not(NotOk::Failed(f)) => {
                self.phase_failure(Phase::Decode, decode, f, Vec::new())
            }
        }
    }

    pub(super) async fn sglang_pair(
        &self,
        prefill: Assignment,
        decode: Assignment,
        out: &Outgoing<'_>,
    ) -> Outcome {
        let pw = prefill.worker().clone();
        let room = fastrand::u64(..1 << 62);
        let port = pw.bootstrap_port.unwrap_or_else(|| pw.port());
        let bootstrap = [
            ("bootstrap_host", Some(json!(pw.host()))),
            ("bootstrap_port", Some(json!(port))),
            ("bootstrap_room", Some(json!(room))),
        ];
        let bodies = self
            .phase_body(out, &prefill, &bootstrap)
            .and_then(|p| Ok((p, self.phase_body(out, &decode, &bootstrap)?)));
        let (pbody, dbody) = match bodies {
            Ok(b) => b,
            Err(e) => return self.unsent(e, vec![prefill, decode]),
        };
        // A prefill that does not succeed cancels the decode at once (it would wait for
        // KV that never comes); a decode that answers first still waits for the prefill.
        let both = {
            let pf = self.phase(Phase::Prefill, &prefill, out, pbody);
            let df = self.phase(Phase::Decode, &decode, out, dbody);
            tokio::pin!(pf, df);
            tokio::select! {
                p = &mut pf => match p {
                    PhaseResult::Ok(p) => Ok((p, (&mut df).await)),
                    PhaseResult::Not(n) => Err(n),
                },
                d = &mut df => match (&mut pf).await {
                    PhaseResult::Ok(p) => Ok((p, d)),
                    PhaseResult::Not(n) => Err(n),
                },
            }
        };
        let (p, d) = match both {
            Ok(pd) => pd,
            Err(n) => return self.prefill_not_ok(n, prefill, decode),
        };
        let response = match d {
            PhaseResult::Ok(r) | PhaseResult::Not(NotOk::Rejected(r)) => r,
            PhaseResult::Not(NotOk::Failed(f)) => {
                prefill.settle(out.view, Verdict::Success);
                return self.phase_failure(Phase::Decode, decode, f, Vec::new());
            }
        };
        // The prefill's answer is not the client's: drain it in the background without
        // keeping it, holding its slot and permit until it ends (or the request timeout
        // passes, or the gateway stops).
        let (view, timeout, shutdown) = (out.view.clone(), self.cfg.timeout, self.shutdown.clone());
        self.shutdown.spawn(async move {
            let drain = async {
                let mut body = p.into_body();
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        return false;
                    }
                }
                true
            };
            let ok = tokio::select! {
                r = tokio::time::timeout(timeout, drain) => matches!(r, Ok(true)),
                // Unsettled, the lease counts for nothing.
                _ = shutdown.cancelled() => return,
            };
            prefill.settle(
                &view,
                if ok {
                    Verdict::Success
                } else {
                    Verdict::Failure
                },
            );
        });
        Outcome::Answered {
            response,
            assignment: decode,
        }
    }

    /// The prefill did not succeed: a 4xx goes back to the client, anything else fails
    /// the attempt. The decode is not sent (vLLM) or cancelled (SGLang).
    fn prefill_not_ok(&self, n: NotOk, prefill: Assignment, decode: Assignment) -> Outcome {
        match n {
            NotOk::Rejected(response) => Outcome::Answered {
                response,
                assignment: prefill,
            },
            NotOk::Failed(f) => self.phase_failure(Phase::Prefill, prefill, f, vec![decode]),
        }
    }
}
