//! `cache_aware`: route to the worker where the prompt is cheapest to serve, weighing
//! cache affinity against queued work.
//!
//! For each candidate w, with `m_w` the prompt blocks w already holds (from the prefix
//! index; matches below `--cache-threshold` of the prompt count as none):
//!
//! ```text
//! cost_w = (blocks - m_w)                                   uncached prompt work
//!        + queue_weight × (in_flight_w + engine_waiting_w) / weight_w   queued work
//! ```
//!
//! The cheapest wins (ties: fewer in flight, then the worker given the least new work,
//! then random). When the candidates are imbalanced — the load gap exceeds
//! `--balance-abs-threshold` and the ratio exceeds `--balance-rel-threshold` — the
//! least-loaded candidate is chosen outright. Only the candidates (healthy, routable
//! workers) enter that test. The prefix index is the model's shared one, from the
//! [`PolicyContext`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Pick, Policy, PolicyContext, least_loaded};
use crate::config::Config;
use crate::fleet::{Worker, WorkerId};
use crate::request::RequestView;

/// Settings of the cache-aware policy.
#[derive(Clone, Debug)]
pub struct CacheAwareConfig {
    pub cache_threshold: f64,
    pub balance_abs_threshold: usize,
    pub balance_rel_threshold: f64,
    pub queue_weight: f64,
}

impl From<&Config> for CacheAwareConfig {
    fn from(c: &Config) -> Self {
        CacheAwareConfig {
            cache_threshold: c.cache_threshold,
            balance_abs_threshold: c.balance_abs_threshold,
            balance_rel_threshold: c.balance_rel_threshold,
            queue_weight: c.cache_queue_weight,
        }
    }
}

/// (cost, queued, assigned work, random tie-breaker), compared lexicographically.
type CostKey = (f64, usize, u64, u32);

pub struct CacheAware {
    cfg: CacheAwareConfig,
    /// Uncached prompt blocks sent to each index slot so far: breaks ties towards the
    /// worker that was given the least new work, so new prefixes spread evenly.
    assigned: Mutex<Vec<u64>>,
    blocks_total: AtomicU64,
    blocks_matched: AtomicU64,
}

impl CacheAware {
    pub fn new(cfg: CacheAwareConfig) -> Self {
        CacheAware {
            cfg,
            assigned: Mutex::new(Vec::new()),
            blocks_total: AtomicU64::new(0),
            blocks_matched: AtomicU64::new(0),
        }
    }

    /// Whether the candidates' loads are far enough apart to pick the least loaded.
    pub(crate) fn imbalanced(&self, candidates: &[Arc<Worker>]) -> bool {
        let loads = candidates
            .iter()
            .map(|w| w.in_flight().div_ceil(w.weight() as usize));
        let (min, max) = loads.fold((usize::MAX, 0), |(lo, hi), l| (lo.min(l), hi.max(l)));
        max - min > self.cfg.balance_abs_threshold
            && max as f64 > min as f64 * self.cfg.balance_rel_threshold
    }
}

impl Policy for CacheAware {
    fn name(&self) -> &'static str {
        "cache_aware"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        req: &RequestView,
        ctx: &PolicyContext,
    ) -> Option<Pick> {
        if candidates.is_empty() {
            return None;
        }
        let blocks = &req.prefix_blocks;
        if blocks.is_empty() || candidates.len() == 1 || self.imbalanced(candidates) {
            let reason = if candidates.len() > 1 && !blocks.is_empty() {
                "balance"
            } else {
                "least_loaded"
            };
            return Some(Pick {
                index: least_loaded(candidates),
                reason,
            });
        }
        let slots: Vec<u16> = candidates.iter().map(|w| ctx.prefix.slot(&w.id)).collect();
        let matched = ctx.prefix.match_lengths(blocks, &slots);
        let n = blocks.len() as f64;
        let mut assigned = self.assigned.lock().expect("assigned lock");
        if let Some(max) = slots.iter().max()
            && assigned.len() <= *max as usize
        {
            assigned.resize(*max as usize + 1, 0);
        }
        // Ordered by (cost, queued, assigned work, random).
        let mut best: Option<(CostKey, usize, usize)> = None;
        for (i, w) in candidates.iter().enumerate() {
            let m = if (matched[i] as f64) < self.cfg.cache_threshold * n {
                0
            } else {
                matched[i]
            };
            let queued = w.in_flight() + w.engine_load().1 as usize;
            let cost = (blocks.len() - m) as f64
                + self.cfg.queue_weight * queued as f64 / w.weight() as f64;
            let key = (cost, queued, assigned[slots[i] as usize], fastrand::u32(..));
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, i, m));
            }
        }
        let (_, index, m) = best.expect("candidates not empty");
        assigned[slots[index] as usize] += (blocks.len() - m) as u64;
        drop(assigned);
        self.blocks_total
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        self.blocks_matched.fetch_add(m as u64, Ordering::Relaxed);
        Some(Pick {
            index,
            reason: if m > 0 { "cache_hit" } else { "least_cost" },
        })
    }

    fn on_worker_removed(&self, worker: &WorkerId, ctx: &PolicyContext) {
        if let Some(slot) = ctx.prefix.existing_slot(worker)
            && let Some(a) = self
                .assigned
                .lock()
                .expect("assigned lock")
                .get_mut(slot as usize)
        {
            *a = 0;
        }
    }

    fn reads_prefixes(&self) -> bool {
        true
    }

    fn wants_engine_load(&self) -> bool {
        true
    }

    fn hit_stats(&self) -> (u64, u64) {
        (
            self.blocks_total.load(Ordering::Relaxed),
            self.blocks_matched.load(Ordering::Relaxed),
        )
    }
}
