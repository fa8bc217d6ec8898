//! The `select_worker` phase: a model's candidates (from the registry's group for that
//! model and role, already filtered), the model's policy's pick, and a lease on the
//! chosen worker. The selector also keeps the policy tables in step with the fleet
//! (it observes the registry) and does their periodic upkeep.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::kv::KvState;
use super::table::PolicyTable;
use super::{Policy, PolicyContext};
use crate::config::{Config, ConfigError};
use crate::fleet::{Lease, Registry, RegistryObserver, Verdict, Worker, WorkerId, WorkerRole};
use crate::metrics::{DecisionLabels, Metrics};
use crate::request::RequestView;
use crate::shutdown::Shutdown;

/// A worker chosen for one phase of one attempt, holding its lease.
pub struct Assignment {
    lease: Lease,
    policy: Arc<dyn Policy>,
    reason: &'static str,
}

impl Assignment {
    pub fn worker(&self) -> &Arc<Worker> {
        self.lease.worker()
    }

    /// Why the policy chose the worker (the `reason` label of routing decisions).
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// Settles the attempt on this worker: breaker outcome, passive health, in-flight
    /// slot and the policy's hook. Every attempt's per-worker accounting happens here.
    pub fn settle(self, view: &RequestView, verdict: Verdict) {
        let worker = self.lease.worker().clone();
        self.lease.settle(verdict);
        self.policy
            .on_finished(&worker, view, verdict == Verdict::Success);
    }
}

/// What asking for a worker gave.
pub enum Selected {
    Assigned(Assignment),
    /// The chosen worker's breaker refused at the last moment; avoid it next time.
    Refused(WorkerId),
    /// No eligible candidate.
    NoCandidate,
}

/// Chooses workers for every model and role.
pub struct WorkerSelector {
    registry: Arc<Registry>,
    /// By [`WorkerRole::index`].
    tables: [PolicyTable; 3],
    /// The engines' caches from their KV events.
    kv: Arc<KvState>,
    block_size: usize,
    metrics: Arc<Metrics>,
}

impl WorkerSelector {
    /// Builds the tables (regular workers default to `--policy`, prefill and decode
    /// workers to `--prefill-policy` and `--decode-policy`) and starts observing the
    /// registry. `load_wanted` is raised once any policy reads engine load.
    pub fn new(
        cfg: &Config,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        load_wanted: Arc<AtomicBool>,
    ) -> Result<Arc<Self>, ConfigError> {
        let kv = Arc::new(KvState::new(cfg, metrics.clone()));
        let table = |kind, role| PolicyTable::new(cfg, kind, role, load_wanted.clone(), kv.clone());
        let selector = Arc::new(WorkerSelector {
            tables: [
                table(cfg.policy, WorkerRole::Regular)?,
                table(cfg.prefill_policy, WorkerRole::Prefill)?,
                table(cfg.decode_policy, WorkerRole::Decode)?,
            ],
            registry: registry.clone(),
            kv,
            block_size: cfg.cache_block_size,
            metrics,
        });
        // Every tokenizer a precise model will use loads, or the gateway does not start.
        let mut tokenizers = Vec::new();
        if selector.reads_tokens() {
            tokenizers.push(("kv-tokenizer".to_string(), cfg.clone()));
        }
        for (name, s) in &cfg.models {
            let c = s.apply(cfg);
            let precise = [c.policy, c.prefill_policy, c.decode_policy]
                .contains(&crate::config::PolicyKind::PrecisePrefix);
            if precise && (s.kv_tokenizer.is_some() || s.kv_chat_template.is_some()) {
                tokenizers.push((format!("models.{name}.kv_tokenizer"), c));
            }
        }
        for (option, c) in tokenizers {
            if selector
                .kv
                .tokenizer(&c.kv_tokenizer, &c.kv_chat_template)
                .is_none()
            {
                return Err(crate::config::invalid(
                    &option,
                    format!(
                        "{:?} with template {:?} cannot be loaded (see the log)",
                        c.kv_tokenizer, c.kv_chat_template
                    ),
                ));
            }
        }
        let observer: Arc<dyn RegistryObserver> = selector.clone();
        registry.observe(&observer);
        Ok(selector)
    }

    /// The policies of `role`.
    pub fn table(&self, role: WorkerRole) -> &PolicyTable {
        &self.tables[role.index()]
    }

    /// Whether some policy reads token blocks (the pipeline then tokenises prompts).
    pub fn reads_tokens(&self) -> bool {
        self.tables.iter().any(|t| t.reads_tokens())
    }

    /// The gateway-wide index of the engines' caches.
    pub fn kv(&self) -> &Arc<KvState> {
        &self.kv
    }

    /// Block size of the prefix hashes a policy reads (0: no policy reads them, so
    /// requests need not be hashed). Labels may turn it on at runtime.
    pub fn prefix_block_size(&self) -> usize {
        if self.tables.iter().any(|t| t.reads_prefixes()) {
            self.block_size
        } else {
            0
        }
    }

    /// Picks a worker of `role` for the request's model, with the policy kept under its
    /// `model_key`, avoiding the workers in `avoid` unless they are the only candidates
    /// left, and leases it.
    pub fn select(&self, role: WorkerRole, view: &RequestView, avoid: &[WorkerId]) -> Selected {
        let mut candidates = self.registry.candidates(&view.model, role);
        if candidates.is_empty() {
            return Selected::NoCandidate;
        }
        if !avoid.is_empty() && candidates.iter().any(|w| !avoid.contains(&w.id)) {
            candidates.retain(|w| !avoid.contains(&w.id));
        }
        let entry = self.table(role).entry(&view.model_key);
        let Some(pick) = entry.policy.pick(&candidates, view, &entry.ctx) else {
            return Selected::NoCandidate;
        };
        let worker = &candidates[pick.index];
        let Some(lease) = worker.lease() else {
            return Selected::Refused(worker.id.clone());
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                policy: entry.policy.name(),
                reason: pick.reason,
            })
            .inc();
        record_routed(&entry.ctx, entry.policy.as_ref(), worker, view);
        Selected::Assigned(Assignment {
            lease,
            policy: entry.policy,
            reason: pick.reason,
        })
    }

    /// How long until a worker of `role` serving `model` that asked to wait (Retry-After)
    /// can be used again, if any such worker exists.
    pub fn cooling(&self, model: &str, role: WorkerRole) -> Option<Duration> {
        self.registry.cooling(model, role)
    }

    /// Periodic upkeep of every table.
    pub fn maintain(&self) {
        self.tables.iter().for_each(PolicyTable::maintain);
        let dropped = self.kv.index.evict();
        if dropped > 0 {
            tracing::debug!(
                dropped,
                left = self.kv.index.len(),
                "KV-event index trimmed"
            );
        }
    }

    /// Trims the prefix indexes every `interval`, and every second while one is over its
    /// bound, until shutdown.
    pub async fn run_maintenance(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.maintain(),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// (index entries, prompt blocks routed, blocks the chosen worker held), summed.
    pub fn stats(&self) -> (usize, u64, u64) {
        self.tables.iter().fold((0, 0, 0), |(n, t, m), table| {
            let (n2, t2, m2) = table.stats();
            (n + n2, t + t2, m + m2)
        })
    }

    /// Workflow migrations and splits so far.
    pub fn workflow_moves(&self) -> (u64, u64) {
        self.tables.iter().fold((0, 0), |(a, b), t| {
            let (m, s) = t.workflow_moves();
            (a + m, b + s)
        })
    }
}

/// The request goes to `worker`: the shared index learns where its prompt went, and
/// the policy is told.
fn record_routed(
    ctx: &PolicyContext,
    policy: &dyn Policy,
    worker: &Arc<Worker>,
    view: &RequestView,
) {
    ctx.prefix.record(&view.prefix_blocks, &worker.id);
    policy.on_routed(worker, view, ctx);
}

impl RegistryObserver for WorkerSelector {
    fn added(&self, worker: &Arc<Worker>) {
        self.table(worker.id.role)
            .adopt_labels(&worker.models(), &worker.labels());
        self.kv.subscribe(worker);
    }

    fn relabelled(&self, worker: &Arc<Worker>) {
        self.added(worker);
    }

    fn removed(&self, worker: &Arc<Worker>) {
        self.table(worker.id.role).forget(&worker.id);
        self.kv.forget(&worker.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::test_worker;
    use crate::routing::tests::view;

    #[test]
    fn the_index_forgets_a_removed_worker_and_avoided_workers_are_skipped() {
        let (a, b) = (test_worker(1), test_worker(2));
        let registry = Arc::new(Registry::new(vec![a.clone(), b.clone()]));
        let cfg = Config::default();
        let sel = WorkerSelector::new(
            &cfg,
            registry.clone(),
            Arc::new(Metrics::new()),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        assert_eq!(
            sel.prefix_block_size(),
            cfg.cache_block_size,
            "cache_aware reads prefixes"
        );
        let model: Arc<str> = Arc::from("m");
        let v = view(vec![11, 12, 13], None);
        let Selected::Assigned(first) = sel.select(WorkerRole::Regular, &v, &[]) else {
            panic!("a worker")
        };
        let chosen = first.worker().clone();
        first.settle(&v, Verdict::Success);
        let ctx = sel.table(WorkerRole::Regular).entry(&model).ctx;
        assert_eq!(ctx.prefix.len(), 3, "the routed prompt is in the index");
        // The same prompt avoiding its cached worker goes to the other one.
        let Selected::Assigned(second) =
            sel.select(WorkerRole::Regular, &v, std::slice::from_ref(&chosen.id))
        else {
            panic!("a worker")
        };
        assert_ne!(second.worker().id, chosen.id);
        second.settle(&v, Verdict::Success);
        registry.remove(&chosen.id);
        let other = if chosen.id == a.id { &b } else { &a };
        let slot = ctx.prefix.existing_slot(&other.id).unwrap();
        assert_eq!(ctx.prefix.match_lengths(&[11, 12, 13], &[slot]), vec![3]);
        assert!(ctx.prefix.existing_slot(&chosen.id).is_none(), "forgotten");
        assert_eq!(a.in_flight() + b.in_flight(), 0);
    }
}
