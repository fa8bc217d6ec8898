//! `/route` settings (YAML): the use cases a query can be routed to (`use_cases:`) and
//! how it is classified and kept in a session (`use_case_routing:`). Without
//! `use_cases:`, [`default_use_cases`] apply. docs/route-api.md explains each setting.

use serde::{Deserialize, Serialize};

use super::intent::{
    ClassifierKind, EmbeddingSettings, IntentRouting, IntentSettings, Keyword, Thresholds,
};
use super::{Config, ConfigError};

/// What a query comes with, besides text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Text,
    Image,
    Audio,
    Video,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Video => "video",
        }
    }

    pub fn parse(s: &str) -> Option<Modality> {
        [
            Modality::Text,
            Modality::Image,
            Modality::Audio,
            Modality::Video,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// One use case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseCase {
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// The model that serves it (its `fallbacks` in `models:` follow it). Unset: the
    /// first model in `models:` whose `capabilities` list one of `capabilities`, else
    /// `use_case_routing.default_model`, else the default intent's model of
    /// `intent_routing`, else the one model the fleet serves.
    #[serde(default)]
    pub model: Option<String>,
    /// Capabilities that make a model fit this use case when `model` is unset.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Modalities it accepts; a query with a modality hint only goes to use cases
    /// that list it.
    #[serde(default = "text_only")]
    pub modalities: Vec<Modality>,
    /// Classifier hints, as in `intent_routing.intents`.
    #[serde(default)]
    pub keywords: Vec<Keyword>,
    #[serde(default)]
    pub examples: Vec<String>,
    /// Sent as the system message of the use case's requests.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The use case chosen when nothing matches well enough (at most one; else the
    /// first).
    #[serde(default)]
    pub default: bool,
}

fn text_only() -> Vec<Modality> {
    vec![Modality::Text]
}

/// `use_case_routing:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UseCaseRouting {
    /// `keywords` (default) or `embedding` (settings in `embedding`).
    pub classifier: ClassifierKind,
    pub embedding: EmbeddingSettings,
    pub thresholds: Thresholds,
    /// The model of a use case that names none and whose capabilities no model has.
    pub default_model: Option<String>,
    pub context_change: ContextChange,
    /// Classifications kept in the LRU cache (embedding; 0: no cache).
    pub cache_size: usize,
}

impl Default for UseCaseRouting {
    fn default() -> Self {
        UseCaseRouting {
            classifier: ClassifierKind::Keywords,
            embedding: EmbeddingSettings::default(),
            thresholds: Thresholds::default(),
            default_model: None,
            context_change: ContextChange::default(),
            cache_size: 10_000,
        }
    }
}

/// When a follow-up in a session is routed afresh instead of bypassing: its modality
/// differs from the session's, or (keyword scores of the query) the session's use case
/// scores below `keep_score` while another use case wins with a confidence of at least
/// `switch_confidence`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextChange {
    pub keep_score: f64,
    pub switch_confidence: f64,
}

impl Default for ContextChange {
    fn default() -> Self {
        ContextChange {
            keep_score: 1.0,
            switch_confidence: 0.6,
        }
    }
}

fn words(ws: &[&str]) -> Vec<Keyword> {
    ws.iter().map(|w| Keyword::Word((*w).to_string())).collect()
}

fn case(
    id: &str,
    description: &str,
    capabilities: &[&str],
    modalities: &[Modality],
    keywords: &[&str],
    examples: &[&str],
) -> UseCase {
    UseCase {
        id: id.into(),
        description: description.into(),
        model: None,
        capabilities: capabilities.iter().map(|c| (*c).to_string()).collect(),
        modalities: modalities.to_vec(),
        keywords: words(keywords),
        examples: examples.iter().map(|e| (*e).to_string()).collect(),
        system_prompt: None,
        default: false,
    }
}

/// The six use cases that apply without `use_cases:`.
pub fn default_use_cases() -> Vec<UseCase> {
    use Modality::*;
    let mut agent = case(
        "agent",
        "Agents and content generation: answers, code, plans, writing",
        &["agent", "chat", "text"],
        &[Text],
        &[
            "write",
            "code",
            "function",
            "program",
            "debug",
            "explain",
            "plan",
            "summarize",
            "email",
            "article",
            "blog",
            "essay",
            "draft",
            "story",
            "python",
            "javascript",
            "rust",
            "sql",
            "api",
            "bug",
            "error",
            "refactor",
            "algorithm",
            "programming",
            "generate",
            "create",
        ],
        &[
            "Write a Python function that merges two sorted lists",
            "Draft a short email to my team about the release",
            "Explain how a hash map works",
            "Plan a three-day trip to Lisbon",
        ],
    );
    agent.default = true;
    vec![
        agent,
        case(
            "avatar",
            "A talking-head avatar: spoken, persona-driven conversation",
            &["avatar", "talking_head"],
            &[Text, Audio],
            &[
                "avatar",
                "talking head",
                "persona",
                "character",
                "lip sync",
                "lipsync",
                "face",
                "presenter",
                "virtual assistant",
                "say it",
                "speak to me",
            ],
            &[
                "Have the avatar greet the visitors",
                "Make the talking head present our product",
                "Let the virtual presenter answer in a friendly voice",
            ],
        ),
        case(
            "speech_to_text",
            "Speech to text: transcribing or understanding audio",
            &["speech_to_text", "transcription", "asr"],
            &[Audio],
            &[
                "transcribe",
                "transcription",
                "transcript",
                "dictation",
                "recording",
                "audio",
                "speech to text",
                "subtitles",
                "captions",
                "voicemail",
            ],
            &[
                "Transcribe this recording",
                "Turn the meeting audio into text",
                "Write subtitles for this clip's speech",
            ],
        ),
        case(
            "text_to_speech",
            "Text to speech: reading text aloud",
            &["text_to_speech", "speech", "tts"],
            &[Text],
            &[
                "read aloud",
                "read this aloud",
                "text to speech",
                "tts",
                "voice",
                "narrate",
                "narration",
                "pronounce",
                "speak",
                "say this",
            ],
            &[
                "Read this paragraph aloud",
                "Narrate the story in a calm voice",
                "Turn this text into speech",
            ],
        ),
        case(
            "multimodal_rag",
            "Multimodal retrieval: questions over documents and images",
            &["multimodal_rag", "vision", "image"],
            &[Text, Image],
            &[
                "image",
                "picture",
                "photo",
                "diagram",
                "chart",
                "screenshot",
                "document",
                "pdf",
                "scan",
                "figure",
                "according to",
                "in the document",
                "retrieve",
            ],
            &[
                "What does the chart in this report show?",
                "Find the answer in the attached PDF",
                "Describe what is in this photo",
            ],
        ),
        case(
            "video_understanding",
            "Video understanding: describing and searching video",
            &["video_understanding", "video"],
            &[Video],
            &[
                "video",
                "clip",
                "footage",
                "scene",
                "frame",
                "frames",
                "movie",
                "film",
                "youtube",
                "timestamp",
            ],
            &[
                "What happens in this video?",
                "Find the scene where the car appears",
                "Summarize the footage",
            ],
        ),
    ]
}

fn bad(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Setting {
        path: path.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// The use cases in force: `use_cases:`, else the defaults.
    pub fn use_cases(&self) -> Vec<UseCase> {
        self.use_cases.clone().unwrap_or_else(default_use_cases)
    }

    /// Each use case's model when one can be told from the config (see
    /// [`UseCase::model`]); `None` leaves it to the fleet.
    pub fn use_case_model(&self, uc: &UseCase) -> Option<String> {
        if let Some(m) = &uc.model {
            return Some(m.clone());
        }
        let fits = |m: &&String| {
            self.models[*m]
                .capabilities
                .iter()
                .any(|c| *c == uc.id || uc.capabilities.contains(c))
        };
        self.models
            .keys()
            .find(fits)
            .cloned()
            .or_else(|| self.use_case_routing.default_model.clone())
            .or_else(|| {
                let ir = self.intent_routing.as_ref()?;
                ir.intents
                    .values()
                    .find(|i| i.default)
                    .map(|i| i.model.clone())
            })
    }

    /// The use cases as intents (the same classifiers serve both), in name order.
    pub fn use_cases_as_intents(&self) -> IntentRouting {
        let cases = self.use_cases();
        let default = cases.iter().position(|c| c.default).unwrap_or(0);
        let r = &self.use_case_routing;
        IntentRouting {
            model: vec![],
            classifier: r.classifier,
            intents: cases
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        c.id.clone(),
                        IntentSettings {
                            model: self.use_case_model(c).unwrap_or_default(),
                            keywords: c.keywords.clone(),
                            examples: c.examples.clone(),
                            description: Some(c.description.clone()),
                            default: i == default,
                        },
                    )
                })
                .collect(),
            thresholds: r.thresholds,
            classify: Default::default(),
            on_classifier_error: Default::default(),
            cache_size: r.cache_size,
            embedding: r.embedding.clone(),
            llm: Default::default(),
        }
    }

    /// Checks `use_cases:` and `use_case_routing:`.
    pub fn validate_use_cases(&self) -> Result<(), ConfigError> {
        let cases = self.use_cases();
        if cases.is_empty() {
            return Err(bad("use_cases", "needs at least one use case"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in cases.iter().enumerate() {
            let at = format!("use_cases[{i}]");
            let ok = !c.id.is_empty()
                && c.id.len() <= 64
                && c.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(bad(
                    format!("{at}.id"),
                    format!("{:?}: use 1-64 letters, digits, `_` or `-`", c.id),
                ));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(bad(format!("{at}.id"), format!("`{}` appears twice", c.id)));
            }
            if c.modalities.is_empty() {
                return Err(bad(
                    format!("{at}.modalities"),
                    "needs at least one modality",
                ));
            }
            if let Some(m) = &c.model
                && m.trim().is_empty()
            {
                return Err(bad(format!("{at}.model"), "is empty"));
            }
            for (k, kw) in c.keywords.iter().enumerate() {
                let (pattern, weight) = kw.pattern();
                let kat = format!("{at}.keywords[{k}]");
                if pattern.is_empty() {
                    return Err(bad(kat, "is empty"));
                }
                if !(weight.is_finite() && weight > 0.0) {
                    return Err(bad(kat, format!("weight must be positive, got {weight}")));
                }
                if let Err(e) = regex::Regex::new(&pattern) {
                    return Err(bad(kat, format!("bad regex: {e}")));
                }
            }
            if self.use_case_routing.classifier == ClassifierKind::Embedding
                && c.examples.is_empty()
            {
                return Err(bad(
                    format!("{at}.examples"),
                    "the embedding classifier needs examples for every use case",
                ));
            }
        }
        if cases.iter().filter(|c| c.default).count() > 1 {
            return Err(bad(
                "use_cases",
                "more than one use case is `default: true`",
            ));
        }
        let r = &self.use_case_routing;
        match r.classifier {
            ClassifierKind::Keywords => {
                if cases.iter().all(|c| c.keywords.is_empty()) {
                    return Err(bad(
                        "use_cases",
                        "the keywords classifier needs keywords on at least one use case",
                    ));
                }
            }
            ClassifierKind::Embedding => {
                let e = &r.embedding;
                if e.model.is_none() && e.backend == crate::config::intent::EmbeddingBackend::Openai
                {
                    return Err(bad(
                        "use_case_routing.embedding.model",
                        "the openai backend needs the embedding model's name",
                    ));
                }
                if e.backend == crate::config::intent::EmbeddingBackend::Local && e.path.is_none() {
                    return Err(bad(
                        "use_case_routing.embedding.path",
                        "the local backend needs the model's directory",
                    ));
                }
                if !(e.temperature.is_finite() && e.temperature > 0.0) || e.timeout_ms == 0 {
                    return Err(bad(
                        "use_case_routing.embedding",
                        "temperature and timeout_ms must be positive",
                    ));
                }
            }
            ClassifierKind::Llm => {
                return Err(bad(
                    "use_case_routing.classifier",
                    "use `keywords` or `embedding` (the session's context check needs scores per use case)",
                ));
            }
        }
        let t = r.thresholds;
        if !(0.0 <= t.low && t.low <= t.medium && t.medium <= t.high && t.high <= 1.0) {
            return Err(bad(
                "use_case_routing.thresholds",
                "need 0 ≤ low ≤ medium ≤ high ≤ 1",
            ));
        }
        let cc = r.context_change;
        let keep_ok = cc.keep_score.is_finite() && cc.keep_score >= 0.0;
        if !keep_ok || !(0.0..=1.0).contains(&cc.switch_confidence) {
            return Err(bad(
                "use_case_routing.context_change",
                "keep_score must be ≥ 0 and switch_confidence within [0, 1]",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_map_to_models_by_capability() {
        let mut cfg = Config::default();
        cfg.validate_use_cases().unwrap();
        let ids: Vec<String> = cfg.use_cases().into_iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            [
                "agent",
                "avatar",
                "speech_to_text",
                "text_to_speech",
                "multimodal_rag",
                "video_understanding"
            ]
        );
        cfg.models.insert(
            "whisper".into(),
            yaml_serde::from_str("capabilities: [transcription]").unwrap(),
        );
        let stt = &cfg.use_cases()[2];
        assert_eq!(cfg.use_case_model(stt).as_deref(), Some("whisper"));
        assert_eq!(cfg.use_case_model(&cfg.use_cases()[0]), None);
        cfg.use_case_routing.default_model = Some("general".into());
        assert_eq!(
            cfg.use_case_model(&cfg.use_cases()[0]).as_deref(),
            Some("general")
        );
        let ir = cfg.use_cases_as_intents();
        assert!(ir.intents["agent"].default);
    }

    #[test]
    fn bad_use_cases_name_the_setting() {
        let mut cfg = Config::default();
        let mut cases = default_use_cases();
        cases[1].id = "agent".into();
        cfg.use_cases = Some(cases);
        let e = cfg.validate_use_cases().unwrap_err().to_string();
        assert!(
            e.starts_with("use_cases[1].id: `agent` appears twice"),
            "{e}"
        );
        let mut cases = default_use_cases();
        cases[0]
            .keywords
            .push(Keyword::Weighted(crate::config::intent::WeightedKeyword {
                word: None,
                regex: Some("(".into()),
                weight: 1.0,
            }));
        cfg.use_cases = Some(cases);
        let e = cfg.validate_use_cases().unwrap_err().to_string();
        assert!(
            e.contains("use_cases[0].keywords[") && e.contains("bad regex"),
            "{e}"
        );
        cfg.use_cases = Some(vec![]);
        assert!(cfg.validate_use_cases().is_err());
    }
}
