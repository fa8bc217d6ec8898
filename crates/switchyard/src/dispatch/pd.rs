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

use super::{CallError, Charge, Dispatcher, Failure, Outcome, Outgoing, retry_after, verdict};
use crate::error::ApiError;
use crate::fleet::Verdict;
use crate::metrics::PhaseLabel;
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
    /// A 4xx to hand back to the client.
    Rejected(http::Response<Incoming>),
    Failed(PhaseFailure),
}

/// Why a phase failed, and how it counts against its worker.
struct PhaseFailure {
    why: String,
    verdict: Verdict,
    answer: Option<StatusCode>,
    timeout: bool,
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
        let result = self.call(a, out, body).await;
        self.metrics
            .pd_phase
            .get_or_create(&PhaseLabel {
                phase: phase.name(),
            })
            .observe(started.elapsed().as_secs_f64());
        let id = &a.worker().api_id;
        match result {
            Ok(r) if r.status().is_success() => PhaseResult::Ok(r),
            Ok(r) if passes_through(r.status()) => PhaseResult::Rejected(r),
            Ok(r) => {
                let status = r.status();
                if let Some(d) = retry_after(r.headers()) {
                    a.worker().cool_down(d);
                }
                PhaseResult::Failed(PhaseFailure {
                    why: format!("{id} answered {status}"),
                    verdict: verdict(status),
                    answer: Some(status),
                    timeout: false,
                })
            }
            Err(CallError::Unreachable(e)) => PhaseResult::Failed(PhaseFailure {
                why: format!("{id} unreachable: {e}"),
                verdict: Verdict::Failure,
                answer: None,
                timeout: false,
            }),
            Err(CallError::Timeout) => PhaseResult::Failed(PhaseFailure {
                why: format!(
                    "{id} did not answer within {} s",
                    self.cfg.timeout.as_secs()
                ),
                verdict: Verdict::Failure,
                answer: None,
                timeout: true,
            }),
        }
    }

    /// The attempt failed in `phase` on `failed`; the other assignments did nothing wrong.
    fn phase_failure(
        &self,
        phase: Phase,
        failed: Assignment,
        f: PhaseFailure,
        others: Vec<Assignment>,
    ) -> Outcome {
        let PhaseFailure {
            why,
            verdict,
            answer,
            timeout,
        } = f;
        self.metrics
            .pd_failures
            .get_or_create(&PhaseLabel {
                phase: phase.name(),
            })
            .inc();
        let message = format!("{} phase failed: {why}", phase.name());
        let error = if timeout {
            ApiError::gateway_timeout(message)
        } else {
            ApiError::bad_gateway(message)
        };
        let avoid = vec![failed.worker().id.clone()];
        let mut charges = vec![Charge {
            assignment: failed,
            verdict,
            answer,
        }];
        charges.extend(others.into_iter().map(|assignment| Charge {
            assignment,
            verdict: Verdict::Excused,
            answer: None,
        }));
        Outcome::Failed(Failure {
            error,
            retry: !timeout,
            avoid,
            charges,
        })
    }

    pub(super) async fn vllm_pair(
        &self,
        prefill: Assignment,
        decode: Assignment,
        out: &Outgoing<'_>,
    ) -> Outcome {
        let pbody = match self.rewritten(
            out,
            &[
                ("max_tokens", Some(json!(1))),
                ("max_completion_tokens", Some(json!(1))),
                ("stream", Some(json!(false))),
                ("stream_options", None),
                ("kv_transfer_params", Some(json!({"do_remote_decode": true, "do_remote_prefill": false,
                    "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null}))),
            ],
        ) {
            Ok(b) => b,
            Err(e) => return self.unsent(e, vec![prefill, decode]),
        };
        let resp = match self.phase(Phase::Prefill, &prefill, out, pbody).await {
            PhaseResult::Ok(r) => r,
            other => return self.prefill_not_ok(other, prefill, decode),
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
            let f = PhaseFailure {
                why: format!("{} returned no kv_transfer_params", prefill.worker().api_id),
                verdict: Verdict::Failure,
                answer: None,
                timeout: false,
            };
            return self.phase_failure(Phase::Prefill, prefill, f, vec![decode]);
        };
        prefill.settle(out.view, Verdict::Success);
        let dbody = match self.rewritten(out, &[("kv_transfer_params", Some(kv))]) {
            Ok(b) => b,
            Err(e) => return self.unsent(e, vec![decode]),
        };
        match self.phase(Phase::Decode, &decode, out, dbody).await {
            PhaseResult::Ok(response) | PhaseResult::Rejected(response) => Outcome::Answered {
                response,
                assignment: decode,
            },
            PhaseResult::Failed(f) => self.phase_failure(Phase::Decode, decode, f, Vec::new()),
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
        let both = match self.rewritten(
            out,
            &[
                ("bootstrap_host", Some(json!(pw.host()))),
                ("bootstrap_port", Some(json!(port))),
                ("bootstrap_room", Some(json!(room))),
            ],
        ) {
            Ok(b) => b,
            Err(e) => return self.unsent(e, vec![prefill, decode]),
        };
        // A prefill that does not succeed cancels the decode at once (it would wait for
        // KV that never comes); a decode that answers first still waits for the prefill.
        let (p, d) = {
            let pf = self.phase(Phase::Prefill, &prefill, out, both.clone());
            let df = self.phase(Phase::Decode, &decode, out, both);
            tokio::pin!(pf, df);
            tokio::select! {
                p = &mut pf => match p {
                    ok @ PhaseResult::Ok(_) => (ok, Some((&mut df).await)),
                    other => (other, None),
                },
                d = &mut df => ((&mut pf).await, Some(d)),
            }
        };
        let (p, d) = match (p, d) {
            (PhaseResult::Ok(p), Some(d)) => (p, d),
            (other, _) => return self.prefill_not_ok(other, prefill, decode),
        };
        let response = match d {
            PhaseResult::Ok(r) | PhaseResult::Rejected(r) => r,
            PhaseResult::Failed(f) => {
                prefill.settle(out.view, Verdict::Success);
                return self.phase_failure(Phase::Decode, decode, f, Vec::new());
            }
        };
        // The prefill's answer is not the client's: read it to its end in the background,
        // holding its slot and permit until then.
        let (view, timeout) = (out.view.clone(), self.cfg.timeout);
        self.shutdown.spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, p.into_body().collect()).await,
                Ok(Ok(_))
            );
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
    fn prefill_not_ok(&self, p: PhaseResult, prefill: Assignment, decode: Assignment) -> Outcome {
        match p {
            PhaseResult::Rejected(response) => Outcome::Answered {
                response,
                assignment: prefill,
            },
            PhaseResult::Failed(f) => self.phase_failure(Phase::Prefill, prefill, f, vec![decode]),
            PhaseResult::Ok(_) => unreachable!("only called when the prefill did not succeed"),
        }
    }
}
