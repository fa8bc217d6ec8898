//! Routing policies. Each policy gets candidates that are already filtered (healthy,
//! breaker allows, not cooling down, serving the model) and picks one; it owns its
//! own state and learns outcomes through the hooks.

pub mod cache_aware;
pub mod consistent_hash;
pub mod power_of_two;
pub mod prefix;
pub mod random;
pub mod round_robin;

use std::sync::Arc;

use crate::config::{Config, PolicyKind};
use crate::fleet::{Worker, WorkerId};
use crate::request::RequestView;

/// A policy's choice: the index into the candidates, and why (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub reason: &'static str,
}

/// What a prefix-indexing policy reports about its index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub entries: usize,
    /// Prompt blocks routed so far, and how many the chosen worker already held.
    pub blocks_total: u64,
    pub blocks_matched: u64,
}

/// A routing policy. Object-safe; no caller ever asks which policy it is talking to.
pub trait Policy: Send + Sync {
    /// Label for metrics and logs.
    fn name(&self) -> &'static str;

    /// Chooses among `candidates` (never empty).
    fn pick(&self, candidates: &[Arc<Worker>], req: &RequestView) -> Option<Pick>;

    /// The request was sent to `worker`.
    fn on_routed(&self, _worker: &Arc<Worker>, _req: &RequestView) {}

    /// The request sent to `worker` is over.
    fn on_finished(&self, _worker: &Arc<Worker>, _req: &RequestView, _success: bool) {}

    /// `worker` left the fleet; forget it.
    fn on_worker_removed(&self, _worker: &WorkerId) {}

    /// Block size (bytes of prompt) of the prefix hashes this policy reads, if any.
    fn prefix_block_size(&self) -> usize {
        0
    }

    /// Whether this policy reads the engines' own queue lengths.
    fn wants_engine_load(&self) -> bool {
        false
    }

    /// Periodic upkeep (index eviction); called by the gateway's maintenance task.
    fn maintain(&self) {}

    /// Size and estimated hit ratio of the policy's prefix index, for metrics.
    fn index_stats(&self) -> IndexStats {
        IndexStats::default()
    }
}

/// Builds the configured policy.
pub fn build(cfg: &Config) -> Arc<dyn Policy> {
    match cfg.policy {
        PolicyKind::Random => Arc::new(random::Random),
        PolicyKind::RoundRobin => Arc::new(round_robin::RoundRobin::default()),
        PolicyKind::PowerOfTwo => Arc::new(power_of_two::PowerOfTwo),
        PolicyKind::ConsistentHash => {
            Arc::new(consistent_hash::ConsistentHash::new(cfg.hash_load_factor))
        }
        PolicyKind::CacheAware => Arc::new(cache_aware::CacheAware::new(
            cache_aware::CacheAwareConfig::from(cfg),
        )),
    }
}

/// Index of the candidate with the fewest in-flight requests (ties: the first).
pub fn least_loaded(candidates: &[Arc<Worker>]) -> usize {
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(_, w)| w.in_flight())
        .map(|(i, _)| i)
        .unwrap_or(0)
}
