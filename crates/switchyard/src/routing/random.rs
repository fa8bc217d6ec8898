//! `random`: a random candidate, each as likely as its share of the candidates'
//! total weight (uniform when the weights are equal).

use std::sync::Arc;

use super::{Pick, Policy, PolicyContext};
use crate::fleet::Worker;
use crate::request::RequestView;

pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        _req: &RequestView,
        _ctx: &PolicyContext,
    ) -> Option<Pick> {
        (!candidates.is_empty()).then(|| Pick {
            index: match super::total_weight(candidates) {
                None => fastrand::usize(..candidates.len()),
                Some(total) => super::by_weight(candidates, fastrand::u64(..total)),
            },
            reason: "random",
        })
    }
}
