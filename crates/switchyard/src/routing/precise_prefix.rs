//! `precise_prefix`: `cache_aware`'s cost, with each engine's cached prefix read from
//! what the engine reports (its KV-cache events) instead of guessed from what the
//! gateway sent it.
//!
//! For each candidate w, with `n` the prompt's token blocks and `m_w` the longest run
//! of them w's engine holds (from the KV-event index):
//!
//! ```text
//! cost_w = (n - m_w) + queue_weight × (in_flight_w + engine_waiting_w) / weight_w
//! ```
//!
//! The cheapest wins (ties: fewer queued, then random). A candidate whose event stream
//! is down (not connected, or catching up after a gap) is weighed with the approximate
//! index instead, as `cache_aware` would (`switchyard_kv_fallbacks_total` counts such
//! decisions). Requests that cannot be tokenised, and imbalanced fleets, are routed as
//! `cache_aware` routes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cache_aware::{CacheAware, CacheAwareConfig};
use super::kv::Stream;
use super::{Pick, Policy, PolicyContext};
use crate::fleet::{Worker, WorkerId};
use crate::request::RequestView;

pub struct PrecisePrefix {
    cfg: CacheAwareConfig,
    /// Routes what this policy cannot weigh by tokens.
    approximate: CacheAware,
    blocks_total: AtomicU64,
    blocks_matched: AtomicU64,
}

impl PrecisePrefix {
    pub fn new(cfg: CacheAwareConfig) -> Self {
        PrecisePrefix {
            approximate: CacheAware::new(cfg.clone()),
            cfg,
            blocks_total: AtomicU64::new(0),
            blocks_matched: AtomicU64::new(0),
        }
    }
}

impl Policy for PrecisePrefix {
    fn name(&self) -> &'static str {
        "precise_prefix"
    }

    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        req: &RequestView,
        ctx: &PolicyContext,
    ) -> Option<Pick> {
        let blocks: &[u64] = match &ctx.tokenizer {
            Some(t) => req
                .token_blocks
                .get_or_init(|| ctx.kv.token_blocks_of(t, &req.body)),
            None => &[],
        };
        // No tokens, one candidate or an imbalanced fleet: cache_aware's decision.
        if blocks.is_empty() || candidates.len() <= 1 || self.approximate.imbalanced(candidates) {
            return self.approximate.pick(candidates, req, ctx);
        }
        let kv = &ctx.kv;
        let live: Vec<bool> = candidates
            .iter()
            .map(|w| kv.stream(&w.id) == Stream::Live)
            .collect();
        let slots: Vec<u16> = candidates.iter().map(|w| kv.index.slot(&w.id)).collect();
        let mut matched = kv.index.match_lengths(blocks, &slots);
        if live.iter().any(|l| !l) {
            kv.metrics.kv_fallbacks.inc();
            // The approximate index counts byte blocks: scaled to token blocks.
            let approx_slots: Vec<u16> =
                candidates.iter().map(|w| ctx.prefix.slot(&w.id)).collect();
            let approx = ctx.prefix.match_lengths(&req.prefix_blocks, &approx_slots);
            let bytes = req.prefix_blocks.len().max(1);
            for (i, up) in live.iter().enumerate() {
                if !up {
                    matched[i] = approx[i] * blocks.len() / bytes;
                }
            }
        }
        let n = blocks.len();
        let mut best: Option<((f64, usize, u32), usize)> = None;
        for (i, w) in candidates.iter().enumerate() {
            let queued = w.in_flight() + w.engine_load().1 as usize;
            let cost = (n - matched[i].min(n)) as f64
                + self.cfg.queue_weight * queued as f64 / w.weight() as f64;
            let key = (cost, queued, fastrand::u32(..));
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, i));
            }
        }
        let (_, index) = best.expect("candidates not empty");
        let m = matched[index].min(n);
        kv.metrics.kv_matched_blocks.observe(m as f64);
        self.blocks_total.fetch_add(n as u64, Ordering::Relaxed);
        self.blocks_matched.fetch_add(m as u64, Ordering::Relaxed);
        Some(Pick {
            index,
            reason: match (m > 0, live[index]) {
                (true, true) => "kv_hit",
                (true, false) => "cache_hit",
                (false, _) => "least_cost",
            },
        })
    }

    fn on_worker_removed(&self, worker: &WorkerId, ctx: &PolicyContext) {
        self.approximate.on_worker_removed(worker, ctx);
    }

    fn reads_prefixes(&self) -> bool {
        true
    }

    fn reads_tokens(&self) -> bool {
        true
    }

    fn wants_engine_load(&self) -> bool {
        true
    }

    fn hit_stats(&self) -> (u64, u64) {
        let (t, m) = self.approximate.hit_stats();
        (
            t + self.blocks_total.load(Ordering::Relaxed),
            m + self.blocks_matched.load(Ordering::Relaxed),
        )
    }
}
