//! The `select_model` phase: which model serves a request, and which models may stand
//! in for it. A request names a model, an alias of one (`--model-alias`), or a router
//! name (`intent_routing.model`, default `auto`): then the prompt is classified
//! ([`classify`]) and the intent's model is chosen. Either way the choice carries the
//! model's fallback chain (`models.<m>.fallbacks`), which the pipeline walks when the
//! model cannot answer. Worker selection does not change.
//!
//! The rules are rebuilt from the config on reload and swapped atomically: a request
//! sees one version of them from start to end.

pub mod classify;
pub mod use_cases;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use crate::config::intent::{
    ClassifierKind, ClassifyText, EmbeddingBackend, IntentRouting, OnClassifierError, Thresholds,
};
use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::fleet::Registry;
use crate::metrics::{ClassificationLabels, ClassifierErrorLabels, ClassifierLabel, Metrics};
use crate::request::RequestView;
use classify::{Backend, Cache, Classifier, Endpoint, Scores};

/// The model chosen for a request.
#[derive(Clone, Debug)]
pub struct ModelChoice {
    /// The name the client sent (a model, an alias or a router name).
    pub requested: Arc<str>,
    pub model: Arc<str>,
    /// The name the model's routing state and metrics are kept under (see
    /// `RequestView::model_key`).
    pub key: Arc<str>,
    /// The body names another model (an alias or a router name): it must be rewritten.
    pub rewrite: bool,
    /// Models to try after `model`, in order.
    pub fallbacks: Option<Arc<[Arc<str>]>>,
    /// How a router name was resolved.
    pub classified: Option<Arc<Classified>>,
}

/// The outcome of classifying a request.
#[derive(Clone, Debug)]
pub struct Classified {
    pub intent: Arc<str>,
    pub confidence: f64,
    /// `high`, `medium`, `low`, or `none` (below `low`).
    pub level: &'static str,
    /// Time spent classifying (0 on a cache hit).
    pub ms: f64,
    pub cached: bool,
    /// Why the default intent was used instead of the classifier's pick:
    /// `below_threshold`, `classifier_error`, or `no_text` (nothing to classify).
    pub defaulted: Option<&'static str>,
    /// Every intent's score, by name.
    pub scores: Vec<(Arc<str>, f64)>,
}

/// The key of every model no worker lists and the config does not name.
pub const ANY_MODEL: &str = "*";

/// One intent, resolved.
struct Intent {
    name: Arc<str>,
    model: Arc<str>,
}

/// Intent routing, compiled.
struct Router {
    names: Vec<String>,
    intents: Vec<Intent>,
    default: usize,
    kind: ClassifierKind,
    classifier: Box<dyn Classifier>,
    thresholds: Thresholds,
    text: ClassifyText,
    on_error: OnClassifierError,
    cache: Option<Cache>,
}

/// What one config says about choosing models.
struct Rules {
    /// `--model-alias`: alias → model.
    aliases: HashMap<String, Arc<str>>,
    /// Models the config gives settings to.
    configured: BTreeSet<String>,
    /// `models:` capabilities and description.
    info: BTreeMap<String, (Vec<String>, Option<String>)>,
    /// Model → its fallbacks, expanded.
    chains: HashMap<String, Arc<[Arc<str>]>>,
    fallback_named: bool,
    router: Option<Router>,
    /// `/route`'s use cases.
    use_cases: use_cases::UseCases,
}

impl Rules {
    fn build(cfg: &Config) -> Result<Rules, ConfigError> {
        cfg.validate_selection()?;
        let chains = cfg
            .fallback_chains()?
            .into_iter()
            .map(|(m, chain)| (m, chain.into_iter().map(Arc::from).collect()))
            .collect();
        let router = cfg.intent_routing.as_ref().map(Router::build).transpose()?;
        Ok(Rules {
            aliases: cfg.aliases()?,
            configured: cfg.model_settings()?.into_keys().collect(),
            info: cfg
                .models
                .iter()
                .map(|(m, s)| (m.clone(), (s.capabilities.clone(), s.description.clone())))
                .collect(),
            chains,
            fallback_named: cfg.fallback_on_named_model,
            router,
            use_cases: use_cases::UseCases::build(cfg)?,
        })
    }
}

impl Router {
    fn build(ir: &IntentRouting) -> Result<Router, ConfigError> {
        let default = ir
            .intents
            .values()
            .position(|i| i.default)
            .expect("validated: one default intent");
        let n = ir.intents.len();
        let classifier: Box<dyn Classifier> = match ir.classifier {
            ClassifierKind::Keywords => Box::new(
                classify::keywords::Keywords::new(ir.intents.iter(), default).map_err(|e| {
                    ConfigError::Setting {
                        path: "intent_routing.intents".into(),
                        reason: e,
                    }
                })?,
            ),
            ClassifierKind::Embedding => {
                let e = &ir.embedding;
                let examples = ir
                    .intents
                    .values()
                    .enumerate()
                    .flat_map(|(i, s)| s.examples.iter().map(move |x| (i, x.clone())))
                    .collect();
                let source = match e.backend {
                    EmbeddingBackend::Openai => classify::embedding::Source::Remote {
                        endpoint: Endpoint::new(e.url.as_deref(), e.api_key.as_deref()),
                        model: e.model.clone().unwrap_or_default(),
                    },
                    EmbeddingBackend::Local => local_source(e.path.as_deref())?,
                };
                Box::new(classify::embedding::Embedding::new(
                    source,
                    examples,
                    n,
                    default,
                    e.temperature,
                    Duration::from_millis(e.timeout_ms),
                ))
            }
            ClassifierKind::Llm => {
                let l = &ir.llm;
                Box::new(classify::llm::Llm::new(
                    Endpoint::new(l.url.as_deref(), l.api_key.as_deref()),
                    l.model.clone().unwrap_or_default(),
                    ir.intents
                        .iter()
                        .map(|(n, i)| (n.clone(), i.description.clone()))
                        .collect(),
                    Duration::from_millis(l.timeout_ms),
                ))
            }
        };
        Ok(Router {
            names: ir.model.clone(),
            intents: ir
                .intents
                .iter()
                .map(|(name, i)| Intent {
                    name: Arc::from(name.as_str()),
                    model: Arc::from(i.model.as_str()),
                })
                .collect(),
            default,
            kind: ir.classifier,
            classifier,
            thresholds: ir.thresholds,
            text: ir.classify,
            on_error: ir.on_classifier_error,
            // A pass of the keyword set costs less than a cache lookup and insert
            // (docs/BENCHMARKS.md): only the classifiers that call a model are cached.
            cache: match ir.classifier {
                ClassifierKind::Keywords => None,
                _ => Cache::new(ir.cache_size),
            },
        })
    }

    /// Classifies `text` (through the cache), applying thresholds and the error rule.
    async fn classify(
        &self,
        text: &str,
        backend: &dyn Backend,
        metrics: &Metrics,
    ) -> Result<Classified, ApiError> {
        let kind = self.kind.as_str();
        let start = Instant::now();
        let key = self.cache.as_ref().map(|c| c.key(text));
        let cached = match (&self.cache, key) {
            (Some(c), Some(k)) => c.get(k),
            _ => None,
        };
        let hit = cached.is_some();
        let (scores, failed) = match cached {
            Some(s) => (s, None),
            None => match self.classifier.classify(text, backend).await {
                Ok(s) => {
                    if let (Some(c), Some(k)) = (&self.cache, key) {
                        c.put(k, s.clone());
                    }
                    (s, None)
                }
                Err(e) => {
                    metrics
                        .classifier_errors
                        .get_or_create(&ClassifierErrorLabels {
                            classifier: kind,
                            kind: e.kind,
                        })
                        .inc();
                    tracing::warn!(classifier = kind, error = %e.message, kind = e.kind, "intent classification failed");
                    if self.on_error == OnClassifierError::Fail {
                        return Err(ApiError::unavailable(
                            "classifier_unavailable",
                            format!("The intent classifier ({kind}) failed: {}", e.message),
                            1,
                        ));
                    }
                    let scores = Scores {
                        intent: self.default,
                        confidence: 0.0,
                        scores: vec![0.0; self.intents.len()],
                    };
                    (scores, Some("classifier_error"))
                }
            },
        };
        let ms = if hit {
            0.0
        } else {
            start.elapsed().as_secs_f64() * 1e3
        };
        let level = classify::level(&self.thresholds, scores.confidence);
        let (intent, defaulted) = match failed {
            Some(why) => (self.default, Some(why)),
            None if level == "none" && scores.intent != self.default => {
                (self.default, Some("below_threshold"))
            }
            None => (scores.intent, None),
        };
        let name = self.intents[intent].name.clone();
        metrics
            .classifications
            .get_or_create(&ClassificationLabels {
                classifier: kind,
                intent: name.clone(),
                confidence_level: level,
            })
            .inc();
        if !hit {
            metrics
                .classification_duration
                .get_or_create(&ClassifierLabel { classifier: kind })
                .observe(ms / 1e3);
        }
        Ok(Classified {
            intent: name,
            confidence: scores.confidence,
            level,
            ms,
            cached: hit,
            defaulted,
            scores: self
                .intents
                .iter()
                .zip(scores.scores)
                .map(|(i, s)| (i.name.clone(), s))
                .collect(),
        })
    }

    /// The default intent for a request with no text to classify (`defaulted: no_text`).
    fn unread(&self, metrics: &Metrics) -> Classified {
        let name = self.intents[self.default].name.clone();
        metrics
            .classifications
            .get_or_create(&ClassificationLabels {
                classifier: self.kind.as_str(),
                intent: name.clone(),
                confidence_level: "none",
            })
            .inc();
        Classified {
            intent: name,
            confidence: 0.0,
            level: "none",
            ms: 0.0,
            cached: false,
            defaulted: Some("no_text"),
            scores: self.intents.iter().map(|i| (i.name.clone(), 0.0)).collect(),
        }
    }

    fn intent_model(&self, name: &str) -> Arc<str> {
        self.intents
            .iter()
            .find(|i| *i.name == *name)
            .map(|i| i.model.clone())
            .expect("a classified intent is configured")
    }
}

#[cfg(feature = "local-embeddings")]
fn local_source(
    path: Option<&std::path::Path>,
) -> Result<classify::embedding::Source, ConfigError> {
    let path = path.expect("validated: the local backend has a path");
    let model = classify::local::LocalModel::load(path).map_err(|e| ConfigError::Setting {
        path: "intent_routing.embedding.path".into(),
        reason: format!("{}: {e}", path.display()),
    })?;
    Ok(classify::embedding::Source::Local(Arc::new(model)))
}

#[cfg(not(feature = "local-embeddings"))]
fn local_source(_: Option<&std::path::Path>) -> Result<classify::embedding::Source, ConfigError> {
    Err(ConfigError::Setting {
        path: "intent_routing.embedding.backend".into(),
        reason: "`local` needs a switchyard built with the `local-embeddings` feature".into(),
    })
}

/// Resolves model names; its rules are swapped on reload.
pub struct ModelSelector {
    rules: ArcSwap<Rules>,
    any: Arc<str>,
    metrics: Arc<Metrics>,
}

/// A classification asked for without a request (`POST /router/classify`).
pub struct Explained {
    pub classified: Classified,
    pub model: Arc<str>,
    pub fallbacks: Vec<Arc<str>>,
    pub classifier: &'static str,
}

impl ModelSelector {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        Ok(ModelSelector {
            rules: ArcSwap::from_pointee(Rules::build(cfg)?),
            any: Arc::from(ANY_MODEL),
            metrics,
        })
    }

    /// Replaces the rules with those of `cfg` (validated first: a bad config changes
    /// nothing), after the classifier's one-off work (embedding the examples), so
    /// requests meet the new rules ready; a failure of that work is logged, and retried
    /// by the first request that needs it.
    pub async fn reload(&self, cfg: &Config, backend: &dyn Backend) -> Result<(), ConfigError> {
        // Building may load a model from disk: off the event loop.
        let owned = cfg.clone();
        let rules = tokio::task::spawn_blocking(move || Rules::build(&owned))
            .await
            .map_err(|e| ConfigError::Args(format!("building the new rules failed: {e}")))??;
        let rules = Arc::new(rules);
        Self::prepare_rules(&rules, backend).await;
        self.rules.store(rules);
        Ok(())
    }

    /// The classifier's one-off work for the rules in force.
    pub async fn prepare(&self, backend: &dyn Backend) {
        Self::prepare_rules(&self.rules.load_full(), backend).await;
    }

    async fn prepare_rules(rules: &Rules, backend: &dyn Backend) {
        if let Some(r) = &rules.router
            && let Err(e) = r.classifier.prepare(backend).await
        {
            tracing::warn!(error = %e.message, "the classifier could not prepare; requests will retry");
        }
        Self::prepare_use_cases(rules, backend).await;
    }

    /// The model for `view` (whose request body is `body`): a router name's classified
    /// intent's model, an alias's target, or the named model itself, with its
    /// fallbacks. 404 when nothing serves or configures the model.
    pub async fn select(
        &self,
        view: &RequestView,
        body: &[u8],
        registry: &Registry,
        backend: &dyn Backend,
    ) -> Result<ModelChoice, ApiError> {
        let rules = self.rules.load();
        if let Some(router) = &rules.router
            && router.names.iter().any(|n| **n == *view.model)
        {
            let rules = arc_swap::Guard::into_inner(rules);
            return self.route(&rules, view, body, registry, backend).await;
        }
        let (model, rewrite) = match rules.aliases.get(&*view.model) {
            Some(target) => (target.clone(), true),
            None => (view.model.clone(), false),
        };
        let fallbacks = if rules.fallback_named {
            rules.chains.get(&*model).cloned()
        } else {
            None
        };
        if fallbacks.is_none() && !registry.knows_model(&model) {
            return Err(ApiError::model_not_found(&model, &registry.models()));
        }
        let key = self.key_in(&rules, &model, registry);
        Ok(ModelChoice {
            requested: view.model.clone(),
            model,
            key,
            rewrite,
            fallbacks,
            classified: None,
        })
    }

    async fn route(
        &self,
        rules: &Rules,
        view: &RequestView,
        body: &[u8],
        registry: &Registry,
        backend: &dyn Backend,
    ) -> Result<ModelChoice, ApiError> {
        let router = rules.router.as_ref().expect("called with a router");
        // A valid request with nothing to read (a system prompt only, an image only)
        // goes to the default intent.
        let classified = match classify::text_of(body, router.text) {
            Some(text) => router.classify(&text, backend, &self.metrics).await?,
            None => router.unread(&self.metrics),
        };
        let model = router.intent_model(&classified.intent);
        Ok(ModelChoice {
            requested: view.model.clone(),
            key: self.key_in(rules, &model, registry),
            fallbacks: rules.chains.get(&*model).cloned(),
            model,
            rewrite: true,
            classified: Some(Arc::new(classified)),
        })
    }

    /// Classifies `body`'s text (`text` or `messages`) as a request to a router name
    /// would be, without generating.
    pub async fn explain(&self, body: &[u8], backend: &dyn Backend) -> Result<Explained, ApiError> {
        let rules = self.rules.load_full();
        let Some(router) = &rules.router else {
            return Err(ApiError::bad_request(
                "Intent routing is not configured (no `intent_routing:` in the config)",
                None,
            ));
        };
        let Some(text) = classify::text_of(body, router.text) else {
            return Err(ApiError::bad_request(
                "Send {\"text\": \"...\"} or {\"messages\": [...]} with some text to classify",
                Some("text"),
            ));
        };
        let classified = router.classify(&text, backend, &self.metrics).await?;
        let model = router.intent_model(&classified.intent);
        Ok(Explained {
            fallbacks: rules
                .chains
                .get(&*model)
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            model,
            classified,
            classifier: router.kind.as_str(),
        })
    }

    /// `model` followed by its fallbacks.
    pub fn chain_of(&self, model: &Arc<str>) -> Vec<Arc<str>> {
        let rules = self.rules.load();
        std::iter::once(model.clone())
            .chain(
                rules
                    .chains
                    .get(&**model)
                    .into_iter()
                    .flat_map(|c| c.iter().cloned()),
            )
            .collect()
    }

    /// The routing-state key of `model` (see [`ModelChoice::key`]).
    pub fn key_of(&self, model: &Arc<str>, registry: &Registry) -> Arc<str> {
        self.key_in(&self.rules.load(), model, registry)
    }

    fn key_in(&self, rules: &Rules, model: &Arc<str>, registry: &Registry) -> Arc<str> {
        if registry.lists(model) || rules.configured.contains(&**model) {
            model.clone()
        } else {
            self.any.clone()
        }
    }

    /// Aliases whose target is in `served`, sorted, as (alias, model).
    pub fn aliases_of(&self, served: &[String]) -> Vec<(String, String)> {
        let rules = self.rules.load();
        let mut out: Vec<(String, String)> = rules
            .aliases
            .iter()
            .filter(|(_, t)| served.iter().any(|m| **m == ***t))
            .map(|(a, t)| (a.clone(), t.to_string()))
            .collect();
        out.sort();
        out
    }

    /// A model's capabilities and description from the config.
    pub fn info(&self, model: &str) -> (Vec<String>, Option<String>) {
        self.rules
            .load()
            .info
            .get(model)
            .cloned()
            .unwrap_or_default()
    }

    /// Every model the config describes.
    pub fn configured_models(&self) -> Vec<String> {
        self.rules.load().info.keys().cloned().collect()
    }

    /// Router names, when intent routing is configured.
    pub fn router_names(&self) -> Vec<String> {
        self.rules
            .load()
            .router
            .as_ref()
            .map(|r| r.names.clone())
            .unwrap_or_default()
    }

    /// `GET /router/info`'s view of the rules (models' health is added by the caller).
    pub fn describe(&self) -> Value {
        let rules = self.rules.load();
        let chain = |m: &str| -> Vec<String> {
            std::iter::once(m.to_string())
                .chain(
                    rules
                        .chains
                        .get(m)
                        .into_iter()
                        .flat_map(|c| c.iter().map(|x| x.to_string())),
                )
                .collect()
        };
        let router = rules.router.as_ref().map(|r| {
            json!({
                "model": r.names,
                "classifier": r.kind.as_str(),
                "classify": r.text,
                "on_classifier_error": r.on_error,
                "thresholds": r.thresholds,
                "default_intent": &*r.intents[r.default].name,
                "intents": r.intents.iter().map(|i| (i.name.to_string(), json!({
                    "model": &*i.model,
                    "chain": chain(&i.model),
                }))).collect::<serde_json::Map<_, _>>(),
                "cache": r.cache.as_ref().map(Cache::stats),
            })
        });
        json!({
            "intent_routing": router,
            "fallback_on_named_model": rules.fallback_named,
            "chains": rules.info.keys().map(|m| (m.clone(), json!(chain(m)))).collect::<serde_json::Map<_, _>>(),
        })
    }
}
