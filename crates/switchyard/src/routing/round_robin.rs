//! `round_robin`: candidates in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Pick, Policy};
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

    fn pick(&self, candidates: &[Arc<Worker>], _req: &RequestView) -> Option<Pick> {
        (!candidates.is_empty()).then(|| Pick {
            index: self.next.fetch_add(1, Ordering::Relaxed) % candidates.len(),
            reason: "turn",
        })
    }
}
