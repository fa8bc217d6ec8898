//! `consistent_hash`: bounded-load consistent hashing (Mirrokni et al.). A session key
//! (`X-Session-ID`, `X-User-ID`, `--hash-header`, else the body's `user`) maps to a point
//! on a ring of virtual nodes; the request goes to the first worker clockwise that is a
//! candidate and under its load bound, `ceil(factor × (total in-flight + 1) × weight /
//! total weight)` (with equal weights: `ceil(factor × (total in-flight + 1) / n)`). When
//! the owner is unhealthy or full the walk continues along the ring, so only that
//! owner's keys move. Requests without a key go to the least-loaded candidate.

use std::sync::{Arc, RwLock};

use super::prefix::hash_block;
use super::{Pick, Policy, PolicyContext, least_loaded};
use crate::fleet::{Worker, WorkerId};
use crate::request::RequestView;

const VNODES: usize = 160;

pub struct ConsistentHash {
    factor: f64,
    ring: RwLock<Vec<(u64, WorkerId)>>,
}

fn point(id: &WorkerId, vnode: usize) -> u64 {
    let key = format!(
        "{}#{}#{vnode}",
        id.url,
        id.dp_rank.map(i64::from).unwrap_or(-1)
    );
    hash_block(0x9E37_79B9_7F4A_7C15, key.as_bytes())
}

impl ConsistentHash {
    pub fn new(factor: f64) -> Self {
        ConsistentHash {
            factor,
            ring: RwLock::new(Vec::new()),
        }
    }

    fn ensure_on_ring(&self, candidates: &[Arc<Worker>]) {
        let missing: Vec<&WorkerId> = {
            let ring = self.ring.read().expect("ring lock");
            candidates
                .iter()
                .map(|w| &w.id)
                .filter(|id| !ring.iter().any(|(_, r)| r == *id))
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let mut ring = self.ring.write().expect("ring lock");
        for id in missing {
            if ring.iter().any(|(_, r)| r == id) {
                continue;
            }
            ring.extend((0..VNODES).map(|v| (point(id, v), id.clone())));
        }
        ring.sort_unstable_by_key(|(p, _)| *p);
    }
}

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        req: &RequestView,
        _ctx: &PolicyContext,
    ) -> Option<Pick> {
        if candidates.is_empty() {
            return None;
        }
        let Some(key) = &req.session_key else {
            return Some(Pick {
                index: least_loaded(candidates),
                reason: "no_key",
            });
        };
        self.ensure_on_ring(candidates);
        let total: usize = candidates.iter().map(|w| w.in_flight()).sum();
        let weights: u64 = candidates.iter().map(|w| w.weight() as u64).sum();
        // A worker's share of the load bound is proportional to its weight.
        let bound = |w: &Worker| {
            (self.factor * (total + 1) as f64 * w.weight() as f64 / weights as f64).ceil() as usize
        };
        let h = hash_block(0, key.as_bytes());
        let ring = self.ring.read().expect("ring lock");
        let start = ring.partition_point(|(p, _)| *p < h);
        let mut owner: Option<&WorkerId> = None;
        for k in 0..ring.len() {
            let (_, id) = &ring[(start + k) % ring.len()];
            let owner_id = *owner.get_or_insert(id);
            if let Some(index) = candidates.iter().position(|w| &w.id == id)
                && candidates[index].in_flight() < bound(&candidates[index])
            {
                let reason = if owner_id == id { "owner" } else { "walked" };
                return Some(Pick { index, reason });
            }
        }
        Some(Pick {
            index: least_loaded(candidates),
            reason: "all_full",
        })
    }

    fn on_worker_removed(&self, worker: &WorkerId, _ctx: &PolicyContext) {
        self.ring
            .write()
            .expect("ring lock")
            .retain(|(_, id)| id != worker);
    }
}
