//! One policy instance per model, for one role of worker: each model gets its own
//! [`Policy`] (with its own state) and its own [`PolicyContext`] (with its own prefix
//! index). A model's kind and settings come from the config (`models:`,
//! `--model-policy`), else from its workers' `policy` labels, else the role's defaults.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::kv::KvState;
use super::{Policy, PolicyContext, PrefixIndex, build};
use crate::config::{Config, ConfigError, ModelSettings, PolicyKind};
use crate::fleet::{WorkerId, WorkerRole};

/// A model's policy and context.
#[derive(Clone)]
pub struct Entry {
    pub policy: Arc<dyn Policy>,
    pub ctx: Arc<PolicyContext>,
}

/// The policies of one role, by model.
pub struct PolicyTable {
    role: WorkerRole,
    /// Gateway-wide settings, with this role's default policy.
    base: Config,
    /// Per-model settings from the config; they win over labels.
    configured: BTreeMap<String, ModelSettings>,
    /// Per-model settings adopted from worker labels.
    labelled: RwLock<HashMap<String, ModelSettings>>,
    entries: RwLock<HashMap<Arc<str>, Entry>>,
    reads_prefixes: AtomicBool,
    reads_tokens: AtomicBool,
    /// The engines' caches from their KV events, shared by every model's context.
    kv: Arc<KvState>,
    /// Shared with the load prober: set once any policy reads engine load.
    load_wanted: Arc<AtomicBool>,
}

impl PolicyTable {
    /// The table for `role`, whose models default to `default` (prefill and decode
    /// have their own defaults).
    pub fn new(
        cfg: &Config,
        default: PolicyKind,
        role: WorkerRole,
        load_wanted: Arc<AtomicBool>,
        kv: Arc<KvState>,
    ) -> Result<Self, ConfigError> {
        let base = Config {
            policy: default,
            ..cfg.clone()
        };
        let table = PolicyTable {
            role,
            configured: cfg.model_settings()?,
            labelled: RwLock::new(HashMap::new()),
            entries: RwLock::new(HashMap::new()),
            reads_prefixes: AtomicBool::new(false),
            reads_tokens: AtomicBool::new(false),
            kv,
            load_wanted,
            base,
        };
        table.note(build(default, &table.base).as_ref());
        for model in table.configured.keys() {
            table.entry(&Arc::from(model.as_str()));
        }
        Ok(table)
    }

    /// Records what a policy needs from the gateway.
    fn note(&self, p: &dyn Policy) {
        if p.reads_prefixes() {
            self.reads_prefixes.store(true, Ordering::Relaxed);
        }
        if p.reads_tokens() {
            self.reads_tokens.store(true, Ordering::Relaxed);
        }
        if p.wants_engine_load() {
            self.load_wanted.store(true, Ordering::Relaxed);
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

    fn make(&self, model: &Arc<str>) -> Entry {
        let c = match self.settings(model) {
            Some(s) => s.apply(&self.base),
            None => self.base.clone(),
        };
        let policy = build(c.policy, &c);
        self.note(policy.as_ref());
        let tokenizer = if policy.reads_tokens() {
            self.kv.tokenizer(&c.kv_tokenizer, &c.kv_chat_template)
        } else {
            None
        };
        Entry {
            policy,
            ctx: Arc::new(PolicyContext {
                model: model.clone(),
                role: self.role,
                prefix: PrefixIndex::new((c.max_tree_size / c.cache_block_size).max(1)),
                kv: self.kv.clone(),
                tokenizer,
            }),
        }
    }

    /// The policy routing `model`, created on first use.
    pub fn entry(&self, model: &Arc<str>) -> Entry {
        if let Some(e) = self.entries.read().expect("policies lock").get(model) {
            return e.clone();
        }
        let fresh = self.make(model);
        self.entries
            .write()
            .expect("policies lock")
            .entry(model.clone())
            .or_insert(fresh)
            .clone()
    }

    /// Adopts the policy settings in a worker's labels for its models, unless the
    /// config sets them. A model whose settings change gets a new policy and context.
    /// Labels are checked before a worker is accepted; ones that still fail are logged.
    pub fn adopt_labels(&self, models: &[String], labels: &BTreeMap<String, String>) {
        let settings = match ModelSettings::from_labels(labels) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "worker policy labels ignored");
                return;
            }
        };
        if let Err(e) = settings.apply(&self.base).validate_policy_settings() {
            tracing::warn!(error = %e, "worker policy labels ignored");
            return;
        }
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
            let key: Arc<str> = Arc::from(model.as_str());
            let entry = self.make(&key);
            tracing::info!(%model, policy = entry.policy.name(), "policy set by worker labels");
            self.entries
                .write()
                .expect("policies lock")
                .insert(key, entry);
        }
    }

    fn each(&self) -> Vec<Entry> {
        self.entries
            .read()
            .expect("policies lock")
            .values()
            .cloned()
            .collect()
    }

    /// Tells every model's policy, then its index, that a worker left.
    pub fn forget(&self, worker: &WorkerId) {
        for e in self.each() {
            e.policy.on_worker_removed(worker, &e.ctx);
            e.ctx.prefix.forget(worker);
        }
    }

    /// Periodic upkeep: trims each prefix index to its bound, then the policies' own.
    pub fn maintain(&self) {
        for e in self.each() {
            let dropped = e.ctx.prefix.evict();
            if dropped > 0 {
                tracing::debug!(model = %e.ctx.model, dropped, left = e.ctx.prefix.len(), "prefix index trimmed");
            }
            e.policy.maintain();
        }
    }

    /// Whether any model's policy reads token blocks.
    pub fn reads_tokens(&self) -> bool {
        self.reads_tokens.load(Ordering::Relaxed)
    }

    /// Whether any model's policy reads prompt prefixes.
    pub fn reads_prefixes(&self) -> bool {
        self.reads_prefixes.load(Ordering::Relaxed)
    }

    /// (index entries, prompt blocks routed, blocks the chosen worker held), summed.
    pub fn stats(&self) -> (usize, u64, u64) {
        self.each().iter().fold((0, 0, 0), |(n, t, m), e| {
            let (total, matched) = e.policy.hit_stats();
            (n + e.ctx.prefix.len(), t + total, m + matched)
        })
    }

    /// Workflow migrations and splits, summed over the policies.
    pub fn workflow_moves(&self) -> (u64, u64) {
        self.each().iter().fold((0, 0), |(a, b), e| {
            let (m, s) = e.policy.workflow_moves();
            (a + m, b + s)
        })
    }
}
