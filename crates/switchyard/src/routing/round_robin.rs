//! `round_robin`: candidates in turn; a worker of weight w gets w turns per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Pick, Policy, PolicyContext};
use crate::fleet::Worker;
use crate::request::RequestView;

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        _req: &RequestView,
        _ctx: &PolicyContext,
    ) -> Option<Pick> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        (!candidates.is_empty()).then(|| Pick {
            index: match super::total_weight(candidates) {
                None => turn % candidates.len(),
                Some(total) => super::by_weight(candidates, turn as u64 % total),
            },
            reason: "turn",
        })
    }
}
