//! The `select_model` phase: which model serves a request. Today that is the model the
//! client named, or the target of a `--model-alias`, and it must be one the fleet
//! serves. Intent classification, fallback chains and session or workflow stickiness
//! plug in here: they produce the same [`ModelChoice`], and worker selection does not
//! change.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::fleet::Registry;
use crate::request::RequestView;

/// The model chosen for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelChoice {
    pub model: Arc<str>,
    /// The name the model's routing state and metrics are kept under (see
    /// `RequestView::model_key`).
    pub key: Arc<str>,
    /// The body names another model (an alias): it must be rewritten to `model`.
    pub rewrite: bool,
}

/// The key of every model no worker lists and the config does not name.
pub const ANY_MODEL: &str = "*";

/// Resolves model names.
pub struct ModelSelector {
    /// `--model-alias`: alias → model.
    aliases: HashMap<String, Arc<str>>,
    /// Models the config gives settings to.
    configured: BTreeSet<String>,
    any: Arc<str>,
}

impl ModelSelector {
    pub fn new(cfg: &Config) -> Result<Self, ConfigError> {
        Ok(ModelSelector {
            aliases: cfg.aliases()?,
            configured: cfg.model_settings()?.into_keys().collect(),
            any: Arc::from(ANY_MODEL),
        })
    }

    /// The model for `view`: its alias target, or itself; 404 when no healthy worker
    /// serves it.
    pub fn select(&self, view: &RequestView, registry: &Registry) -> Result<ModelChoice, ApiError> {
        let (model, rewrite) = match self.aliases.get(&*view.model) {
            Some(target) => (target.clone(), true),
            None => (view.model.clone(), false),
        };
        if !registry.knows_model(&model) {
            return Err(ApiError::model_not_found(&model, &registry.models()));
        }
        let key = if registry.lists(&model) || self.configured.contains(&*model) {
            model.clone()
        } else {
            self.any.clone()
        };
        Ok(ModelChoice {
            model,
            key,
            rewrite,
        })
    }

    /// Aliases whose target is in `served`, sorted, as (alias, model).
    pub fn aliases_of(&self, served: &[String]) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = self
            .aliases
            .iter()
            .filter(|(_, t)| served.iter().any(|m| **m == ***t))
            .map(|(a, t)| (a.as_str(), &**t))
            .collect();
        out.sort();
        out
    }
}
