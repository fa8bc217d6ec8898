//! `random`: a uniformly random candidate.

use std::sync::Arc;

use super::{Pick, Policy};
use crate::fleet::Worker;
use crate::request::RequestView;

pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, candidates: &[Arc<Worker>], _req: &RequestView) -> Option<Pick> {
        (!candidates.is_empty()).then(|| Pick {
            index: match super::total_weight(candidates) {
                None => fastrand::usize(..candidates.len()),
                Some(total) => super::by_weight(candidates, fastrand::u64(..total)),
            },
            reason: "random",
        })
    }
}
