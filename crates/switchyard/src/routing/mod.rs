//! Worker selection: the `select_worker` phase. A [`Policy`] picks one of a model's
//! candidate workers; the [`WorkerSelector`] finds the candidates (already filtered:
//! healthy, breaker allows, not draining, not cooling down, highest priority), asks the
//! model's policy, and leases the chosen worker for the attempt.
//!
//! - [`table`]: one policy instance per model and role ([`PolicyTable`]), each with its
//!   [`PolicyContext`].
//! - [`selector`]: the phase itself, and an [`Assignment`] — a chosen worker whose
//!   settling is the one place an attempt's per-worker accounting happens.
//! - one file per policy; [`prefix`] for prompt block hashes and the prefix index.

pub mod cache_aware;
pub mod consistent_hash;
pub mod kv;
pub mod power_of_two;
pub mod precise_prefix;
pub mod prefix;
pub mod random;
pub mod round_robin;
pub mod selector;
pub mod table;
pub mod workflow_aware;

use std::sync::Arc;

use crate::config::{Config, PolicyKind};
use crate::fleet::{Worker, WorkerId, WorkerRole};
use crate::request::RequestView;

pub use prefix::PrefixIndex;
pub use selector::{Assignment, Selected, WorkerSelector};
pub use table::PolicyTable;

/// A policy's choice: the index into the candidates, and why (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub reason: &'static str,
}

/// What several policies, or several gateway replicas, share about one model's
/// routing, handed to its policy on every call. Engine load is not here: it lives on
/// each [`Worker`], filled by the fleet's probes.
pub struct PolicyContext {
    pub model: Arc<str>,
    pub role: WorkerRole,
    /// Which worker was recently sent which prompt blocks. The selector records every
    /// routed prompt here, whatever the policy.
    pub prefix: PrefixIndex,
    /// What the engines report they cache (KV events), gateway-wide.
    pub kv: Arc<kv::KvState>,
    /// The model's tokenizer, when its policy reads token blocks and it loads.
    pub tokenizer: Option<Arc<kv::tokenize::Tokenizer>>,
}

/// A routing policy. Object-safe; no caller ever asks which policy it is talking to.
/// A policy owns its private state and reads shared state from the [`PolicyContext`].
pub trait Policy: Send + Sync {
    /// Label for metrics and logs.
    fn name(&self) -> &'static str;

    /// Chooses among `candidates` (never empty).
    fn pick(
        &self,
        candidates: &[Arc<Worker>],
        req: &RequestView,
        ctx: &PolicyContext,
    ) -> Option<Pick>;

    /// The request was sent to `worker`.
    fn on_routed(&self, _worker: &Arc<Worker>, _req: &RequestView, _ctx: &PolicyContext) {}

    /// The request sent to `worker` is over.
    fn on_finished(&self, _worker: &Arc<Worker>, _req: &RequestView, _success: bool) {}

    /// `worker` left the fleet; forget it (the context's prefix index forgets it after).
    fn on_worker_removed(&self, _worker: &WorkerId, _ctx: &PolicyContext) {}

    /// Whether this policy reads the prompt's prefix blocks.
    fn reads_prefixes(&self) -> bool {
        false
    }

    /// Whether this policy reads the prompt's token blocks (`RequestView::token_blocks`).
    fn reads_tokens(&self) -> bool {
        false
    }

    /// Whether this policy reads the engines' own queue lengths.
    fn wants_engine_load(&self) -> bool {
        false
    }

    /// Periodic upkeep; called by the selector's maintenance task.
    fn maintain(&self) {}

    /// Prompt blocks routed so far, and how many the chosen worker already held.
    fn hit_stats(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Workflows moved to another worker, and requests a workflow sent to a second
    /// worker (`workflow_aware` only).
    fn workflow_moves(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// Builds a policy of `kind` with the settings in `cfg`.
pub fn build(kind: PolicyKind, cfg: &Config) -> Arc<dyn Policy> {
    match kind {
        PolicyKind::Random => Arc::new(random::Random),
        PolicyKind::RoundRobin => Arc::new(round_robin::RoundRobin::default()),
        PolicyKind::PowerOfTwo => Arc::new(power_of_two::PowerOfTwo),
        PolicyKind::ConsistentHash => {
            Arc::new(consistent_hash::ConsistentHash::new(cfg.hash_load_factor))
        }
        PolicyKind::CacheAware => Arc::new(cache_aware::CacheAware::new(
            cache_aware::CacheAwareConfig::from(cfg),
        )),
        PolicyKind::PrecisePrefix => Arc::new(precise_prefix::PrecisePrefix::new(
            cache_aware::CacheAwareConfig::from(cfg),
        )),
        PolicyKind::WorkflowAware => Arc::new(workflow_aware::WorkflowAware::new(
            workflow_aware::WorkflowAwareConfig {
                cache: cache_aware::CacheAwareConfig::from(cfg),
                batching_preference: cfg.batching_preference,
                ttl: std::time::Duration::from_secs(cfg.workflow_ttl),
                max_workflows: cfg.max_workflows,
            },
        )),
    }
}

/// Index of the candidate with the fewest in-flight requests per unit of weight
/// (ties: the first).
pub fn least_loaded(candidates: &[Arc<Worker>]) -> usize {
    let mut best = 0;
    for (i, w) in candidates.iter().enumerate().skip(1) {
        let b = &candidates[best];
        if w.lighter_than(w.in_flight(), b, b.in_flight()) {
            best = i;
        }
    }
    best
}

/// Sum of the candidates' weights, or `None` when they are all equal (the common case,
/// where policies need not weigh anything).
pub fn total_weight(candidates: &[Arc<Worker>]) -> Option<u64> {
    let first = candidates.first()?.weight();
    let mut total = 0u64;
    let mut uneven = false;
    for w in candidates {
        let x = w.weight();
        uneven |= x != first;
        total += x as u64;
    }
    uneven.then_some(total)
}

/// The candidate at position `ticket` (< total weight) when each candidate covers as
/// many consecutive positions as its weight.
pub fn by_weight(candidates: &[Arc<Worker>], mut ticket: u64) -> usize {
    for (i, w) in candidates.iter().enumerate() {
        let x = w.weight() as u64;
        if ticket < x {
            return i;
        }
        ticket -= x;
    }
    candidates.len() - 1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::test_worker;
    use crate::request::Route;

    pub(crate) fn view(blocks: Vec<u64>, session: Option<&str>) -> RequestView {
        RequestView {
            route: Route::Completions,
            model: Arc::from("m"),
            model_key: Arc::from("m"),
            stream: false,
            stream_options: None,
            session_key: session.map(str::to_string),
            prefix_blocks: blocks,
            body: bytes::Bytes::new(),
            token_blocks: Default::default(),
            prompt_bytes: 1,
            max_tokens: None,
            intent: None,
            model_span: None,
            workflow: None,
            has_workflow_metadata: false,
            workflow_homes: Default::default(),
        }
    }

    pub(crate) fn ctx() -> PolicyContext {
        PolicyContext {
            model: Arc::from("m"),
            role: WorkerRole::Regular,
            prefix: PrefixIndex::new(1000),
            kv: Arc::new(kv::KvState::new(
                &crate::config::Config::default(),
                Arc::new(crate::metrics::Metrics::new()),
            )),
            tokenizer: None,
        }
    }

    fn worker(
        port: u16,
        weight: u32,
        in_flight: usize,
    ) -> (Arc<Worker>, Vec<crate::fleet::InFlight>) {
        let w = test_worker(port);
        w.set_weight(weight);
        let guards = (0..in_flight).map(|_| w.begin()).collect();
        (w, guards)
    }

    #[test]
    fn load_is_compared_per_unit_of_weight() {
        // 5 in flight on weight 4 is lighter than 2 in flight on weight 1.
        let (a, _ga) = worker(1, 1, 2);
        let (b, _gb) = worker(2, 4, 5);
        let both = vec![a.clone(), b.clone()];
        assert_eq!(least_loaded(&both), 1);
        assert!(b.lighter_than(5, &a, 2));
        assert!(!a.lighter_than(2, &b, 5));
        assert_eq!(total_weight(&both), Some(5));
        let even = vec![a.clone(), a.clone()];
        assert_eq!(total_weight(&even), None);
        let picks: Vec<usize> = (0..5).map(|t| by_weight(&both, t)).collect();
        assert_eq!(picks, vec![0, 1, 1, 1, 1]);
    }

    #[test]
    fn power_of_two_prefers_the_lighter_worker_per_weight() {
        let (a, _ga) = worker(1, 1, 3);
        let (b, _gb) = worker(2, 8, 10);
        let both = vec![a, b];
        let p = power_of_two::PowerOfTwo;
        for _ in 0..20 {
            assert_eq!(p.pick(&both, &view(vec![], None), &ctx()).unwrap().index, 1);
        }
    }

    #[test]
    fn random_is_not_a_rotation_and_round_robin_is() {
        let (a, _) = worker(1, 1, 0);
        let (b, _) = worker(2, 1, 0);
        let both = vec![a, b];
        let seq = |p: &dyn Policy| -> Vec<usize> {
            (0..64)
                .map(|_| p.pick(&both, &view(vec![], None), &ctx()).unwrap().index)
                .collect()
        };
        let alternates = |s: &[usize]| s.windows(2).all(|w| w[0] != w[1]);
        assert!(alternates(&seq(&round_robin::RoundRobin::default())));
        // A random sequence of 64 alternates with probability 2^-63.
        let r = seq(&random::Random);
        assert!(!alternates(&r), "{r:?}");
        assert!(r.contains(&0) && r.contains(&1), "{r:?}");
    }
}
