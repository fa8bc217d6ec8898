//! A model's own routing policy and settings: from the `models:` map of the config file,
//! `--model-policy MODEL=POLICY`, or a worker's `policy` / `policy.<setting>` labels.

use std::collections::BTreeMap;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, PolicyKind, invalid};

/// A model's own routing policy and settings (`None` inherits the gateway-wide value),
/// and what model selection knows of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    pub policy: Option<PolicyKind>,
    pub cache_threshold: Option<f64>,
    pub balance_abs_threshold: Option<usize>,
    pub balance_rel_threshold: Option<f64>,
    pub max_tree_size: Option<usize>,
    pub cache_queue_weight: Option<f64>,
    pub hash_load_factor: Option<f64>,
    /// The model's tokenizer for `precise_prefix` (as `--kv-tokenizer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_tokenizer: Option<String>,
    /// The model's chat template for `precise_prefix` (as `--kv-chat-template`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_chat_template: Option<String>,
    /// What the model is good at (shown in `/v1/models`, `/health`, `/router/info`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Models tried, in order, when this one cannot answer (docs/model-selection.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

/// Settings a worker label may not carry: they describe the model, not its policy, or
/// name files on the gateway's disk, which a registered worker must not choose.
const NOT_LABELS: [&str; 5] = [
    "capabilities",
    "description",
    "fallbacks",
    "kv_tokenizer",
    "kv_chat_template",
];

impl ModelSettings {
    /// Label naming a model's policy on its workers; `policy.<setting>` labels carry
    /// the settings (e.g. `policy.cache_threshold=0.5`).
    pub const LABEL: &'static str = "policy";

    /// Settings from worker labels (`policy`, `policy.<setting>`); `None` when the
    /// labels carry none.
    pub fn from_labels(
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<ModelSettings>, ConfigError> {
        let mut map = serde_json::Map::new();
        for (k, v) in labels {
            let key = if k == Self::LABEL {
                "policy"
            } else if let Some(setting) = k.strip_prefix("policy.") {
                if NOT_LABELS.contains(&setting) {
                    return Err(ConfigError::Label {
                        label: k.clone(),
                        reason: "not a policy setting: set it in the config's `models:`".into(),
                    });
                }
                setting
            } else {
                continue;
            };
            let value = serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .filter(|v| v.is_number())
                .unwrap_or_else(|| serde_json::Value::String(v.clone()));
            map.insert(key.to_string(), value);
        }
        if map.is_empty() {
            return Ok(None);
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map(Some)
            .map_err(|e| ConfigError::Label {
                label: format!("policy.{}", e.path()),
                reason: e.inner().to_string(),
            })
    }

    /// `base` with these settings applied.
    pub fn apply(&self, base: &Config) -> Config {
        let mut c = base.clone();
        c.models.clear();
        c.model_policy.clear();
        if let Some(v) = self.policy {
            c.policy = v;
        }
        if let Some(v) = self.cache_threshold {
            c.cache_threshold = v;
        }
        if let Some(v) = self.balance_abs_threshold {
            c.balance_abs_threshold = v;
        }
        if let Some(v) = self.balance_rel_threshold {
            c.balance_rel_threshold = v;
        }
        if let Some(v) = self.max_tree_size {
            c.max_tree_size = v;
        }
        if let Some(v) = self.cache_queue_weight {
            c.cache_queue_weight = v;
        }
        if let Some(v) = self.hash_load_factor {
            c.hash_load_factor = v;
        }
        if let Some(v) = &self.kv_tokenizer {
            c.kv_tokenizer = v.clone();
        }
        if let Some(v) = &self.kv_chat_template {
            c.kv_chat_template = v.clone();
        }
        c
    }
}

impl Config {
    /// Checks the settings a policy reads (also run on each model's own settings).
    pub fn validate_policy_settings(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.cache_threshold) {
            return Err(invalid(
                "cache-threshold",
                format!("must be between 0 and 1, got {}", self.cache_threshold),
            ));
        }
        if self.balance_rel_threshold.is_nan() || self.balance_rel_threshold < 1.0 {
            return Err(invalid("balance-rel-threshold", "must be at least 1.0"));
        }
        if self.hash_load_factor.is_nan() || self.hash_load_factor < 1.0 {
            return Err(invalid("hash-load-factor", "must be at least 1.0"));
        }
        if self.cache_queue_weight.is_nan() || self.cache_queue_weight < 0.0 {
            return Err(invalid("cache-queue-weight", "must be non-negative"));
        }
        if self.max_tree_size == 0 {
            return Err(invalid("max-tree-size", "must be at least 1"));
        }
        Ok(())
    }

    /// Each model's own settings: the `models:` map, with `--model-policy` on top;
    /// validated.
    pub fn model_settings(&self) -> Result<BTreeMap<String, ModelSettings>, ConfigError> {
        let mut out = self.models.clone();
        for pair in &self.model_policy {
            let bad = |why: &str| invalid("model-policy", format!("{pair:?}: {why}"));
            let (model, kind) = pair
                .split_once('=')
                .filter(|(m, _)| !m.is_empty())
                .ok_or_else(|| bad("expected MODEL=POLICY"))?;
            let kind = PolicyKind::from_str(kind, false)
                .map_err(|_| bad(&format!("unknown policy {kind:?}")))?;
            out.entry(model.to_string()).or_default().policy = Some(kind);
        }
        for (model, settings) in &out {
            settings
                .apply(self)
                .validate_policy_settings()
                .map_err(|e| ConfigError::Model {
                    model: model.clone(),
                    source: Box::new(e),
                })?;
        }
        Ok(out)
    }
}
