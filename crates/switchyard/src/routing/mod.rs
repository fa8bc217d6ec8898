//! Routing policies. Each policy gets candidates that are already filtered (healthy,
//! breaker allows, not cooling down, serving the model) and picks one; it owns its
//! own state and learns outcomes through the hooks.

pub mod cache_aware;
pub mod consistent_hash;
pub mod power_of_two;
pub mod prefix;
pub mod random;
pub mod round_robin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use clap::ValueEnum;

use crate::config::{Config, ModelSettings, PolicyKind};
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
    }
}

/// One policy instance per model (each with its own state, e.g. its own prefix index).
/// A model's kind and settings come from the config (`models:`, `--model-policy`), else
/// from its workers' `policy` labels, else the pool's defaults.
pub struct Policies {
    cfg: Config,
    /// Per-model settings from the config; they win over labels.
    configured: HashMap<String, ModelSettings>,
    /// Per-model settings adopted from worker labels.
    labelled: RwLock<HashMap<String, ModelSettings>>,
    instances: RwLock<HashMap<Arc<str>, Arc<dyn Policy>>>,
    prefix_block_size: AtomicUsize,
    wants_engine_load: AtomicBool,
}

impl Policies {
    pub fn new(cfg: &Config) -> Result<Self, String> {
        Self::with_default(cfg, cfg.policy)
    }

    /// As [`new`](Self::new), with `default` instead of `--policy` for models without
    /// their own (prefill and decode pools have their own defaults).
    pub fn with_default(cfg: &Config, default: PolicyKind) -> Result<Self, String> {
        let mut configured = cfg.models.clone();
        for pair in &cfg.model_policy {
            let (model, kind) = pair
                .split_once('=')
                .ok_or_else(|| format!("--model-policy {pair:?}: expected MODEL=POLICY"))?;
            let kind = PolicyKind::from_str(kind, false)
                .map_err(|_| format!("--model-policy {pair:?}: unknown policy {kind:?}"))?;
            configured.entry(model.to_string()).or_default().policy = Some(kind);
        }
        let base = Config {
            policy: default,
            ..cfg.clone()
        };
        let pools = Policies {
            cfg: base,
            configured: HashMap::new(),
            labelled: RwLock::new(HashMap::new()),
            instances: RwLock::new(HashMap::new()),
            prefix_block_size: AtomicUsize::new(0),
            wants_engine_load: AtomicBool::new(false),
        };
        pools.note(&build(default, &pools.cfg));
        for (model, settings) in &configured {
            let c = settings.apply(&pools.cfg);
            c.validate_policy_settings()
                .map_err(|e| format!("models.{model}: {e}"))?;
            pools.note(&build(c.policy, &c));
        }
        Ok(Policies {
            configured: configured.into_iter().collect(),
            ..pools
        })
    }

    /// Records what a policy instance needs from the gateway.
    fn note(&self, p: &Arc<dyn Policy>) {
        self.prefix_block_size
            .fetch_max(p.prefix_block_size(), Ordering::Relaxed);
        if p.wants_engine_load() {
            self.wants_engine_load.store(true, Ordering::Relaxed);
        }
    }

    fn settings(&self, model: &str) -> Option<ModelSettings> {
        self.configured.get(model).cloned().or_else(|| {
            self.labelled
                .read()
                .expect("labelled lock")
                .get(model)
                .cloned()
        })
    }

    /// The policy routing `model`, created on first use.
    pub fn for_model(&self, model: &Arc<str>) -> Arc<dyn Policy> {
        if let Some(p) = self.instances.read().expect("policies lock").get(model) {
            return p.clone();
        }
        let c = match self.settings(model) {
            Some(s) => s.apply(&self.cfg),
            None => self.cfg.clone(),
        };
        let p = self
            .instances
            .write()
            .expect("policies lock")
            .entry(model.clone())
            .or_insert_with(|| build(c.policy, &c))
            .clone();
        self.note(&p);
        p
    }

    /// Adopts the policy settings in a newly registered worker's labels for its models,
    /// unless the config sets them. A model whose settings change gets a new instance.
    pub fn adopt_labels(
        &self,
        models: &[String],
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let Some(settings) = ModelSettings::from_labels(labels)? else {
            return Ok(());
        };
        let c = settings.apply(&self.cfg);
        c.validate_policy_settings()?;
        for model in models {
            if self.configured.contains_key(model) {
                continue;
            }
            let mut labelled = self.labelled.write().expect("labelled lock");
            if labelled.get(model) == Some(&settings) {
                continue;
            }
            labelled.insert(model.clone(), settings.clone());
            drop(labelled);
            let p = build(c.policy, &c);
            self.note(&p);
            tracing::info!(%model, policy = p.name(), "policy set by worker labels");
            self.instances
                .write()
                .expect("policies lock")
                .insert(Arc::from(model.as_str()), p);
        }
        Ok(())
    }

    /// Block size of the prefix hashes any model's policy reads (0: none).
    pub fn prefix_block_size(&self) -> usize {
        self.prefix_block_size.load(Ordering::Relaxed)
    }

    /// Whether any model's policy reads the engines' queues.
    pub fn wants_engine_load(&self) -> bool {
        self.wants_engine_load.load(Ordering::Relaxed)
    }

    fn each(&self) -> Vec<Arc<dyn Policy>> {
        self.instances
            .read()
            .expect("policies lock")
            .values()
            .cloned()
            .collect()
    }

    /// Periodic upkeep of every instance.
    pub fn maintain(&self) {
        self.each().iter().for_each(|p| p.maintain());
    }

    /// Index statistics summed over the models.
    pub fn index_stats(&self) -> IndexStats {
        self.each()
            .iter()
            .map(|p| p.index_stats())
            .fold(IndexStats::default(), |a, b| IndexStats {
                entries: a.entries + b.entries,
                blocks_total: a.blocks_total + b.blocks_total,
                blocks_matched: a.blocks_matched + b.blocks_matched,
            })
    }

    /// Tells every instance that a worker left.
    pub fn on_worker_removed(&self, worker: &WorkerId) {
        self.each().iter().for_each(|p| p.on_worker_removed(worker));
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
mod tests {
    use super::*;

    fn worker(
        port: u16,
        weight: u32,
        in_flight: usize,
    ) -> (Arc<Worker>, Vec<crate::fleet::InFlight>) {
        let w = crate::fleet::test_worker(port);
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
        let req = RequestView {
            route: crate::request::Route::Completions,
            model: Arc::from("m"),
            stream: false,
            session_key: None,
            prefix_blocks: Vec::new(),
            prompt_bytes: 1,
        };
        let p = power_of_two::PowerOfTwo;
        for _ in 0..20 {
            assert_eq!(p.pick(&both, &req).unwrap().index, 1);
        }
    }
}
