//! Model selection settings (YAML): what the `models:` map says about a model besides
//! its policy (capabilities, description, fallbacks), and the `intent_routing:` section
//! that lets a client ask the gateway to choose the model. [`Config::validate_selection`]
//! checks both, naming the setting at fault; it runs at start and on every reload.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::{Config, ConfigError};

/// `intent_routing:`: classify prompts sent to a router model name and route each to
/// its intent's model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentRouting {
    /// Model names a client sends to ask the gateway to choose (one or a list).
    #[serde(default = "default_router_names", deserialize_with = "one_or_many")]
    pub model: Vec<String>,
    #[serde(default)]
    pub classifier: ClassifierKind,
    /// Intent name → its settings.
    pub intents: BTreeMap<String, IntentSettings>,
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Which text of the request is classified.
    #[serde(default)]
    pub classify: ClassifyText,
    /// What a classifier failure (backend down, timeout, unusable answer) leads to.
    #[serde(default)]
    pub on_classifier_error: OnClassifierError,
    /// Classifications kept in the LRU cache (0: no cache).
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    #[serde(default)]
    pub embedding: EmbeddingSettings,
    #[serde(default)]
    pub llm: LlmSettings,
}

fn default_router_names() -> Vec<String> {
    vec!["auto".to_string()]
}

fn default_cache_size() -> usize {
    10_000
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    #[default]
    Keywords,
    Embedding,
    Llm,
}

impl ClassifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClassifierKind::Keywords => "keywords",
            ClassifierKind::Embedding => "embedding",
            ClassifierKind::Llm => "llm",
        }
    }
}

/// One intent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntentSettings {
    /// The model that serves this intent (its `fallbacks` follow it).
    pub model: String,
    /// For `keywords`: words (matched whole, any case) or regexes, with weights.
    pub keywords: Vec<Keyword>,
    /// For `embedding`: utterances typical of the intent.
    pub examples: Vec<String>,
    /// For `llm`: what the intent covers, shown to the classifying model.
    pub description: Option<String>,
    /// The intent used when nothing matches well enough (exactly one).
    pub default: bool,
}

/// A keyword: `"word"`, `{word: "...", weight: 2}` or `{regex: "...", weight: 1.5}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Keyword {
    Word(String),
    Weighted(WeightedKeyword),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedKeyword {
    pub word: Option<String>,
    pub regex: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl Keyword {
    /// The pattern as a regex (case-insensitive; a word is matched whole), and its weight.
    pub fn pattern(&self) -> (String, f64) {
        let word = |w: &str| {
            let w = w.trim();
            if w.is_empty() {
                return String::new();
            }
            let wordy = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let pre = if wordy(w.chars().next()) { r"\b" } else { "" };
            let post = if wordy(w.chars().last()) { r"\b" } else { "" };
            format!("(?i){pre}{}{post}", regex::escape(w))
        };
        match self {
            Keyword::Word(w) => (word(w), 1.0),
            Keyword::Weighted(k) => match (&k.word, &k.regex) {
                (Some(w), _) => (word(w), k.weight),
                (None, Some(r)) if !r.is_empty() => (format!("(?i){r}"), k.weight),
                (None, _) => (String::new(), k.weight),
            },
        }
    }
}

/// Confidence levels: `high` at or above `high`, then `medium`, then `low`; below
/// `low` the default intent is used.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    pub high: f64,
    pub medium: f64,
    pub low: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            high: 0.7,
            medium: 0.4,
            low: 0.2,
        }
    }
}

/// Which text a classifier reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifyText {
    /// The last user message (a completion's prompt).
    #[default]
    LastUser,
    /// Every message's text, oldest first.
    Conversation,
    /// The system prompt, then the last user message.
    LastUserWithSystem,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClassifierError {
    /// Route to the default intent (and count it in `switchyard_classifier_errors`).
    #[default]
    DefaultIntent,
    /// Answer 503 `classifier_unavailable`.
    Fail,
}

/// Where the embedding classifier gets its vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingBackend {
    /// An OpenAI-compatible `/v1/embeddings` endpoint: `url`, or the fleet behind this
    /// gateway when `url` is unset.
    #[default]
    Openai,
    /// A sentence-transformers BERT model loaded from `path` (cargo feature
    /// `local-embeddings`).
    Local,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingSettings {
    pub backend: EmbeddingBackend,
    /// Base URL of the embeddings endpoint (unset: the fleet, in-process).
    pub url: Option<String>,
    /// Model named in embedding requests (openai backend).
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer` to `url`.
    pub api_key: Option<String>,
    /// Directory with `config.json`, `tokenizer.json` and `model.safetensors` (local).
    pub path: Option<PathBuf>,
    /// Softmax temperature over the intents' similarities; lower is more decisive.
    pub temperature: f64,
    pub timeout_ms: u64,
}

impl Default for EmbeddingSettings {
    fn default() -> Self {
        EmbeddingSettings {
            backend: EmbeddingBackend::Openai,
            url: None,
            model: None,
            api_key: None,
            path: None,
            temperature: 0.05,
            timeout_ms: 2000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// The chat model that classifies.
    pub model: Option<String>,
    /// Base URL of its endpoint (unset: the fleet, in-process).
    pub url: Option<String>,
    pub api_key: Option<String>,
    /// After this, the classification counts as failed (see `on_classifier_error`).
    pub timeout_ms: u64,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            model: None,
            url: None,
            api_key: None,
            timeout_ms: 2000,
        }
    }
}

/// An invalid YAML setting, named by its path.
fn bad(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Setting {
        path: path.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// The models' fallback chains, each model followed by its `fallbacks` expanded
    /// depth-first (a fallback's own fallbacks come right after it), without repeats.
    /// Only models with fallbacks appear. Fails on a cycle or an unknown model.
    pub fn fallback_chains(&self) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
        let mut out = BTreeMap::new();
        for (model, settings) in &self.models {
            for (i, f) in settings.fallbacks.iter().enumerate() {
                if !self.models.contains_key(f) {
                    return Err(bad(
                        format!("models.{model}.fallbacks[{i}]"),
                        format!(
                            "unknown model `{f}`: every model a chain names needs an entry in `models:`"
                        ),
                    ));
                }
            }
            if settings.fallbacks.is_empty() {
                continue;
            }
            let mut chain = Vec::new();
            let mut path = vec![model.as_str()];
            self.expand(model, &mut path, &mut chain)?;
            out.insert(model.clone(), chain);
        }
        Ok(out)
    }

    fn expand<'a>(
        &'a self,
        model: &'a str,
        path: &mut Vec<&'a str>,
        chain: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let Some(settings) = self.models.get(model) else {
            return Ok(());
        };
        for f in &settings.fallbacks {
            if path.contains(&f.as_str()) {
                let mut cycle: Vec<&str> = path.clone();
                cycle.push(f);
                return Err(bad(
                    format!("models.{}.fallbacks", path[0]),
                    format!("fallback cycle {}", cycle.join(" → ")),
                ));
            }
            // Already in the chain: its own fallbacks were expanded then (and any
            // cycle through it found), so shared sub-chains are walked once.
            if chain.contains(f) {
                continue;
            }
            chain.push(f.clone());
            path.push(f);
            self.expand(f, path, chain)?;
            path.pop();
        }
        Ok(())
    }

    /// Checks `models:` fallbacks and `intent_routing:`.
    pub fn validate_selection(&self) -> Result<(), ConfigError> {
        self.fallback_chains()?;
        let Some(ir) = &self.intent_routing else {
            return Ok(());
        };
        if ir.model.is_empty() || ir.model.iter().any(|m| m.trim().is_empty()) {
            return Err(bad(
                "intent_routing.model",
                "needs at least one non-empty name",
            ));
        }
        let aliases = self.aliases()?;
        for name in &ir.model {
            if aliases.contains_key(name) {
                return Err(bad(
                    "intent_routing.model",
                    format!("`{name}` is also a --model-alias; a name can mean one thing only"),
                ));
            }
            if self.models.contains_key(name) {
                return Err(bad(
                    "intent_routing.model",
                    format!("`{name}` is a model in `models:`; a router name must not be a model"),
                ));
            }
        }
        if ir.intents.is_empty() {
            return Err(bad("intent_routing.intents", "needs at least one intent"));
        }
        let defaults: Vec<&String> = ir
            .intents
            .iter()
            .filter(|(_, i)| i.default)
            .map(|(n, _)| n)
            .collect();
        match defaults.len() {
            0 => {
                return Err(bad(
                    "intent_routing.intents",
                    "no default intent: mark exactly one intent `default: true`",
                ));
            }
            1 => {}
            _ => {
                return Err(bad(
                    "intent_routing.intents",
                    format!("more than one default intent: {defaults:?}"),
                ));
            }
        }
        for (name, intent) in &ir.intents {
            let at = format!("intent_routing.intents.{name}");
            if intent.model.is_empty() {
                return Err(bad(format!("{at}.model"), "is required"));
            }
            if !self.models.contains_key(&intent.model) {
                return Err(bad(
                    format!("{at}.model"),
                    format!(
                        "unknown model `{}`: add it to `models:` (with its capabilities and fallbacks)",
                        intent.model
                    ),
                ));
            }
            for (i, k) in intent.keywords.iter().enumerate() {
                let (pattern, weight) = k.pattern();
                let kat = format!("{at}.keywords[{i}]");
                if let Keyword::Weighted(w) = k
                    && w.word.is_some() == w.regex.is_some()
                {
                    return Err(bad(kat, "give exactly one of `word` and `regex`"));
                }
                if pattern.is_empty() {
                    return Err(bad(kat, "is empty"));
                }
                if !(weight.is_finite() && weight > 0.0) {
                    return Err(bad(
                        kat,
                        format!("weight must be a positive number, got {weight}"),
                    ));
                }
                if let Err(e) = regex::Regex::new(&pattern) {
                    return Err(bad(kat, format!("bad regex: {e}")));
                }
            }
        }
        let t = ir.thresholds;
        if !(0.0 <= t.low && t.low <= t.medium && t.medium <= t.high && t.high <= 1.0) {
            return Err(bad(
                "intent_routing.thresholds",
                format!(
                    "need 0 ≤ low ≤ medium ≤ high ≤ 1, got low {}, medium {}, high {}",
                    t.low, t.medium, t.high
                ),
            ));
        }
        match ir.classifier {
            ClassifierKind::Keywords => {
                if ir.intents.values().all(|i| i.keywords.is_empty()) {
                    return Err(bad(
                        "intent_routing.intents",
                        "the keywords classifier needs keywords on at least one intent",
                    ));
                }
            }
            ClassifierKind::Embedding => {
                let e = &ir.embedding;
                for (name, intent) in &ir.intents {
                    if intent.examples.is_empty() {
                        return Err(bad(
                            format!("intent_routing.intents.{name}.examples"),
                            "the embedding classifier needs examples for every intent, the default too (an intent without examples could never be the nearest)",
                        ));
                    }
                }
                if !(e.temperature.is_finite() && e.temperature > 0.0) {
                    return Err(bad(
                        "intent_routing.embedding.temperature",
                        "must be positive",
                    ));
                }
                if e.model.as_ref().is_some_and(|m| ir.model.contains(m)) {
                    return Err(bad(
                        "intent_routing.embedding.model",
                        "is a router name; name the embedding model",
                    ));
                }
                match e.backend {
                    EmbeddingBackend::Openai if e.model.is_none() => {
                        return Err(bad(
                            "intent_routing.embedding.model",
                            "the openai backend needs the embedding model's name",
                        ));
                    }
                    EmbeddingBackend::Local if e.path.is_none() => {
                        return Err(bad(
                            "intent_routing.embedding.path",
                            "the local backend needs the model's directory",
                        ));
                    }
                    _ => {}
                }
                check_url("intent_routing.embedding.url", e.url.as_deref())?;
                if e.timeout_ms == 0 {
                    return Err(bad(
                        "intent_routing.embedding.timeout_ms",
                        "must be positive",
                    ));
                }
            }
            ClassifierKind::Llm => {
                let l = &ir.llm;
                match &l.model {
                    None => {
                        return Err(bad(
                            "intent_routing.llm.model",
                            "the llm classifier needs the chat model that classifies",
                        ));
                    }
                    Some(m) if ir.model.contains(m) => {
                        return Err(bad(
                            "intent_routing.llm.model",
                            format!("`{m}` is a router name; name a real model"),
                        ));
                    }
                    _ => {}
                }
                check_url("intent_routing.llm.url", l.url.as_deref())?;
                if l.timeout_ms == 0 {
                    return Err(bad("intent_routing.llm.timeout_ms", "must be positive"));
                }
            }
        }
        Ok(())
    }
}

fn check_url(path: &str, url: Option<&str>) -> Result<(), ConfigError> {
    if let Some(u) = url {
        crate::upstream::EngineUrl::parse(u).map_err(|e| bad(path, format!("{u:?}: {e}")))?;
    }
    Ok(())
}
