//! `power_of_two`: the less loaded of two random candidates. Load is the gateway's own
//! in-flight count plus the engine's running and waiting requests, scraped from vLLM's
//! `/metrics` (`vllm:num_requests_running`, `vllm:num_requests_waiting`), divided by
//! the worker's weight.

use std::sync::Arc;

use super::{Pick, Policy, PolicyContext};
use crate::fleet::Worker;
use crate::request::RequestView;

pub struct PowerOfTwo;

fn load(w: &Worker) -> usize {
    let (running, waiting) = w.engine_load();
    w.in_flight() + running as usize + waiting as usize
}

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        _req: &RequestView,
        _ctx: &PolicyContext,
    ) -> Option<Pick> {
        match candidates.len() {
            0 => None,
            1 => Some(Pick {
                index: 0,
                reason: "only",
            }),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (wa, wb) = (&candidates[a], &candidates[b]);
                let index = if wb.lighter_than(load(wb), wa, load(wa)) {
                    b
                } else {
                    a
                };
                Some(Pick {
                    index,
                    reason: "less_loaded",
                })
            }
        }
    }

    fn wants_engine_load(&self) -> bool {
        true
    }
}
