//! `/route`'s use cases: the same classifiers as intent routing, over use cases instead
//! of intents, plus the two things a session needs: the modality rule (a query with a
//! modality hint only goes to use cases that accept it) and the cheap context check
//! that decides whether a follow-up may bypass classification.

use std::sync::Arc;

use serde_json::Value;

use super::classify::keywords::Keywords;
use super::classify::{Backend, Scores};
use super::{Classified, ModelSelector, Router, Rules};
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::intent::ClassifierKind;
use crate::config::use_cases::{ContextChange, Modality};
use crate::error::ApiError;
use crate::fleet::Registry;

/// One use case, resolved.
#[derive(Clone, Debug)]
pub struct UseCaseInfo {
    pub id: Arc<str>,
    pub description: Arc<str>,
    /// Unset: no model could be told from the config (see `Config::use_case_model`);
    /// the fleet's only model is used, if it serves exactly one.
    pub model: Option<Arc<str>>,
    pub modalities: Vec<Modality>,
    pub system_prompt: Option<Arc<str>>,
}

/// Use cases, compiled.
pub(super) struct UseCases {
    /// Classifies over the use cases (intent i = `cases[i]`, name order).
    router: Router,
    /// The cheap context check: the use cases' keywords (also the router's classifier
    /// when that is `keywords`).
    keywords: Keywords,
    /// In name order, as the router's intents.
    cases: Vec<UseCaseInfo>,
    /// Indices into `cases` in config order.
    order: Vec<usize>,
    context_change: ContextChange,
}

impl UseCases {
    pub(super) fn build(cfg: &Config) -> Result<UseCases, ConfigError> {
        cfg.validate_use_cases()?;
        let ir = cfg.use_cases_as_intents();
        let default = ir.intents.values().position(|i| i.default).unwrap_or(0);
        let keywords =
            Keywords::new(ir.intents.iter(), default).map_err(|e| ConfigError::Setting {
                path: "use_cases".into(),
                reason: e,
            })?;
        let router = Router::build(&ir)?;
        let configured = cfg.use_cases();
        let cases: Vec<UseCaseInfo> = ir
            .intents
            .keys()
            .map(|id| {
                let c = configured
                    .iter()
                    .find(|c| c.id == *id)
                    .expect("intents are the use cases");
                UseCaseInfo {
                    id: Arc::from(id.as_str()),
                    description: Arc::from(c.description.as_str()),
                    model: cfg.use_case_model(c).map(Arc::from),
                    modalities: c.modalities.clone(),
                    system_prompt: c.system_prompt.as_deref().map(Arc::from),
                }
            })
            .collect();
        let order = configured
            .iter()
            .map(|c| cases.iter().position(|x| *x.id == c.id).expect("same ids"))
            .collect();
        Ok(UseCases {
            router,
            keywords,
            cases,
            order,
            context_change: cfg.use_case_routing.context_change,
        })
    }
}

/// The use case chosen for a query.
#[derive(Clone, Debug)]
pub struct UseCaseChoice {
    pub case: UseCaseInfo,
    /// The model to run (`None`: nothing can serve the use case).
    pub model: Option<Arc<str>>,
    pub confidence: f64,
    /// The classification, with every use case's score. `defaulted` is `modality`
    /// when the modality rule overrode the classifier's pick.
    pub classified: Classified,
}

/// Why a follow-up in a session is routed afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextChanged {
    Modality,
    Topic,
}

impl ContextChanged {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextChanged::Modality => "modality",
            ContextChanged::Topic => "topic",
        }
    }
}

/// The text a query is classified by: the query, then `context`'s string and number
/// values (nested ones too), so `{"domain": "programming"}` counts as the word
/// "programming".
pub fn classification_text(query: &str, context: Option<&Value>) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push(' ');
                out.push_str(s);
            }
            Value::Number(n) => {
                out.push(' ');
                out.push_str(&n.to_string());
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            Value::Bool(_) | Value::Null => {}
        }
    }
    let mut text = query.to_string();
    if let Some(c) = context {
        walk(c, &mut text);
    }
    text
}

impl ModelSelector {
    /// Every use case in config order.
    pub fn use_cases(&self) -> Vec<UseCaseInfo> {
        let rules = self.rules.load();
        let u = &rules.use_cases;
        u.order.iter().map(|i| u.cases[*i].clone()).collect()
    }

    /// The use case `id`, if configured.
    pub fn use_case(&self, id: &str) -> Option<UseCaseInfo> {
        let rules = self.rules.load();
        rules.use_cases.cases.iter().find(|c| *c.id == *id).cloned()
    }

    /// The use-case classifier's name (`keywords` or `embedding`).
    pub fn use_case_classifier(&self) -> &'static str {
        self.rules.load().use_cases.router.kind.as_str()
    }

    /// The model that serves `case`: its own, else the fleet's only model.
    pub fn use_case_model(&self, case: &UseCaseInfo, registry: &Registry) -> Option<Arc<str>> {
        if let Some(m) = &case.model {
            return Some(m.clone());
        }
        match registry.models().as_slice() {
            [only] => Some(Arc::from(only.as_str())),
            _ => None,
        }
    }

    /// Classifies `text` over the use cases, then applies the modality rule.
    pub async fn route_use_case(
        &self,
        text: &str,
        modality: Option<Modality>,
        registry: &Registry,
        backend: &dyn Backend,
    ) -> Result<UseCaseChoice, ApiError> {
        let rules: Arc<Rules> = self.rules.load_full();
        let u = &rules.use_cases;
        let mut classified = u.router.classify(text, backend, &self.metrics).await?;
        let mut at = u
            .cases
            .iter()
            .position(|c| *c.id == *classified.intent)
            .expect("classified a configured use case");
        if let Some(m) = modality {
            let accepts = |i: usize| u.cases[i].modalities.contains(&m);
            if !accepts(at) {
                let eligible: Vec<usize> =
                    u.order.iter().copied().filter(|i| accepts(*i)).collect();
                if let Some(first) = eligible.first() {
                    let score = |i: usize| classified.scores[i].1;
                    let total: f64 = eligible.iter().map(|i| score(*i)).sum();
                    // The best eligible score (config order breaks ties), else the first.
                    let best = eligible
                        .iter()
                        .copied()
                        .fold(*first, |b, i| if score(i) > score(b) { i } else { b });
                    at = best;
                    classified.confidence = if eligible.len() == 1 {
                        1.0
                    } else if total > 0.0 {
                        score(best) / total
                    } else {
                        0.0
                    };
                    classified.level =
                        super::classify::level(&u.router.thresholds, classified.confidence);
                    classified.intent = u.cases[at].id.clone();
                    classified.defaulted = Some("modality");
                }
            }
        }
        let case = u.cases[at].clone();
        Ok(UseCaseChoice {
            model: self.use_case_model(&case, registry),
            confidence: classified.confidence,
            case,
            classified,
        })
    }

    /// Whether a follow-up (`text`, `modality`) leaves the session's use case and
    /// modality (the rule is on `ContextChange`). Keyword scoring only: no model call.
    pub fn context_changed(
        &self,
        session_case: &str,
        session_modality: Modality,
        text: &str,
        modality: Option<Modality>,
    ) -> Option<ContextChanged> {
        if modality.is_some_and(|m| m != session_modality) {
            return Some(ContextChanged::Modality);
        }
        let rules = self.rules.load();
        let u = &rules.use_cases;
        let Some(mine) = u.cases.iter().position(|c| *c.id == *session_case) else {
            // The use case is gone (config reloaded): route afresh.
            return Some(ContextChanged::Topic);
        };
        let Scores {
            intent,
            confidence,
            scores,
            ..
        } = u.keywords.score(text);
        let cc = u.context_change;
        (intent != mine && scores[mine] < cc.keep_score && confidence >= cc.switch_confidence)
            .then_some(ContextChanged::Topic)
    }

    /// Does the one-off work of the use-case classifier (embedding its examples).
    pub(super) async fn prepare_use_cases(rules: &Rules, backend: &dyn Backend) {
        if rules.use_cases.router.kind != ClassifierKind::Keywords
            && let Err(e) = rules.use_cases.router.classifier.prepare(backend).await
        {
            tracing::warn!(error = %e.message, "the use-case classifier could not prepare; requests will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_values_join_the_text() {
        let ctx =
            serde_json::json!({"domain": "programming", "n": 3, "tags": ["hindi"], "x": true});
        assert_eq!(
            classification_text("fix it", Some(&ctx)),
            "fix it programming 3 hindi"
        );
        assert_eq!(classification_text("fix it", None), "fix it");
    }
}
