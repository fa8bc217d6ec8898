//! Intent classifiers: each reads a prompt's text and scores every intent. One trait,
//! three kinds ([`keywords`], [`embedding`], [`llm`]); results are cached per text in
//! a bounded LRU ([`Cache`]).

pub mod embedding;
pub mod keywords;
pub mod llm;
#[cfg(feature = "local-embeddings")]
pub mod local;

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::intent::{ClassifyText, Thresholds};
use crate::request::Route;
use crate::upstream::EngineUrl;

/// A classifier's verdict: the winning intent (an index into the configured intents,
/// in name order), its confidence in [0, 1], and every intent's score.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    pub intent: usize,
    pub confidence: f64,
    pub scores: Vec<f64>,
}

/// Why a classification failed.
#[derive(Clone, Debug)]
pub struct ClassifyError {
    /// `timeout`, `backend` (the endpoint failed) or `answer` (unusable answer).
    pub kind: &'static str,
    pub message: String,
}

impl ClassifyError {
    pub fn backend(message: impl Into<String>) -> Self {
        ClassifyError {
            kind: "backend",
            message: message.into(),
        }
    }
    pub fn answer(message: impl Into<String>) -> Self {
        ClassifyError {
            kind: "answer",
            message: message.into(),
        }
    }
}

/// `work`, failed as a `timeout` if it takes longer than `limit`.
pub async fn within<T>(
    limit: std::time::Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T, ClassifyError>>,
) -> Result<T, ClassifyError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ClassifyError {
            kind: "timeout",
            message: format!("no {what} within {} ms", limit.as_millis()),
        })?
}

/// Where a classifier's model is reached.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// The fleet behind this gateway, in-process (worker selection, retries and all).
    Fleet,
    /// An OpenAI-compatible server.
    Remote {
        url: EngineUrl,
        api_key: Option<String>,
    },
}

impl Endpoint {
    pub fn new(url: Option<&str>, api_key: Option<&str>) -> Endpoint {
        match url.and_then(|u| EngineUrl::parse(u).ok()) {
            None => Endpoint::Fleet,
            Some(url) => Endpoint::Remote {
                url,
                api_key: api_key.map(str::to_string),
            },
        }
    }
}

/// Sends a classifier's request (implemented by the pipeline, which owns the fleet).
pub trait Backend: Send + Sync {
    /// POSTs `body` to `route` at `endpoint`; the response body of a 2xx answer.
    fn post<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        route: Route,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, ClassifyError>>;
}

/// A way to score a text against the intents.
pub trait Classifier: Send + Sync {
    fn classify<'a>(
        &'a self,
        text: &'a str,
        backend: &'a dyn Backend,
    ) -> BoxFuture<'a, Result<Scores, ClassifyError>>;

    /// Work done once per configuration (the embedding classifier embeds its examples).
    fn prepare<'a>(
        &'a self,
        _backend: &'a dyn Backend,
    ) -> BoxFuture<'a, Result<(), ClassifyError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// `high`, `medium`, `low`, or `none` (below `low`: the default intent is used).
pub fn level(t: &Thresholds, confidence: f64) -> &'static str {
    if confidence >= t.high {
        "high"
    } else if confidence >= t.medium {
        "medium"
    } else if confidence >= t.low {
        "low"
    } else {
        "none"
    }
}

/// A bounded LRU of classifications by text hash.
pub struct Cache {
    entries: Mutex<lru::LruCache<u64, Scores>>,
    hasher: std::hash::RandomState,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cache {
    pub fn new(capacity: usize) -> Option<Cache> {
        let cap = NonZeroUsize::new(capacity)?;
        Some(Cache {
            entries: Mutex::new(lru::LruCache::new(cap)),
            hasher: std::hash::RandomState::new(),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    pub fn key(&self, text: &str) -> u64 {
        self.hasher.hash_one(text)
    }

    pub fn get(&self, key: u64) -> Option<Scores> {
        let found = self.lock().get(&key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: u64, scores: Scores) {
        self.lock().put(key, scores);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<u64, Scores>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `{capacity, entries, hits, misses}`.
    pub fn stats(&self) -> Value {
        serde_json::json!({
            "capacity": self.capacity,
            "entries": self.lock().len(),
            "hits": self.hits.load(Ordering::Relaxed),
            "misses": self.misses.load(Ordering::Relaxed),
        })
    }
}

/// The parts of a request body the text is taken from; message contents stay raw
/// until a message is chosen.
#[derive(Deserialize)]
struct Texts<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Appends a `content` (or `prompt`): a string, or the `text` of its parts (of an
/// array of strings, the last).
fn append_text(raw: &RawValue, out: &mut String) {
    let raw = raw.get();
    if raw.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<Cow<'_, str>>(raw) {
            out.push_str(&s);
        }
    } else if raw.starts_with('[') {
        if let Ok(parts) = serde_json::from_str::<Vec<Part<'_>>>(raw) {
            for t in parts.iter().filter_map(|p| p.text.as_deref()) {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(t);
            }
        } else if let Ok(texts) = serde_json::from_str::<Vec<Cow<'_, str>>>(raw)
            && let Some(last) = texts.last()
        {
            out.push_str(last);
        }
    }
}

/// The text to classify from a request body (`messages`, `prompt`, or — for
/// `/router/classify` — `text`); `None` when it has none.
pub fn text_of(body: &[u8], which: ClassifyText) -> Option<String> {
    let t: Texts = serde_json::from_slice(body).ok()?;
    let mut out = String::new();
    if let Some(text) = t.text {
        out.push_str(&text);
    } else if let Some(msgs) = t.messages {
        let last_user = msgs.iter().rposition(|m| m.role == "user");
        for (i, m) in msgs.iter().enumerate() {
            let Some(c) = m.content else { continue };
            let take = match which {
                ClassifyText::Conversation => m.role != "tool",
                ClassifyText::LastUser => Some(i) == last_user,
                ClassifyText::LastUserWithSystem => {
                    Some(i) == last_user || m.role == "system" || m.role == "developer"
                }
            };
            if take {
                if !out.is_empty() {
                    out.push('\n');
                }
                append_text(c, &mut out);
            }
        }
    } else if let Some(p) = t.prompt {
        append_text(p, &mut out);
    }
    (!out.trim().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_taken_as_configured() {
        let body = br#"{"messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":"first"},{"role":"assistant","content":"ok"},
            {"role":"user","content":[{"type":"text","text":"second"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert_eq!(text_of(body, ClassifyText::LastUser).unwrap(), "second");
        assert_eq!(
            text_of(body, ClassifyText::LastUserWithSystem).unwrap(),
            "be brief\nsecond"
        );
        assert_eq!(
            text_of(body, ClassifyText::Conversation).unwrap(),
            "be brief\nfirst\nok\nsecond"
        );
        assert_eq!(
            text_of(br#"{"prompt":"p"}"#, ClassifyText::LastUser).unwrap(),
            "p"
        );
        assert_eq!(text_of(br#"{"text":"  "}"#, ClassifyText::LastUser), None);
        assert_eq!(text_of(br#"{"messages":[]}"#, ClassifyText::LastUser), None);
        assert_eq!(
            text_of(br#"{"prompt":["a","b"]}"#, ClassifyText::LastUser).unwrap(),
            "b"
        );
        assert_eq!(
            text_of(
                br#"{"model":"auto","messages":[{"role":"user","content":"esc\u00e9"}]}"#,
                ClassifyText::LastUser
            )
            .unwrap(),
            "esc\u{e9}"
        );
    }

    #[test]
    fn the_cache_is_bounded_and_counts() {
        let c = Cache::new(2).unwrap();
        let s = |i| Scores {
            intent: i,
            confidence: 1.0,
            scores: vec![],
        };
        let (a, b, d) = (c.key("a"), c.key("b"), c.key("d"));
        c.put(a, s(0));
        c.put(b, s(1));
        assert_eq!(c.get(a).unwrap().intent, 0);
        c.put(d, s(2)); // evicts b, the least recently used
        assert!(c.get(b).is_none());
        let st = c.stats();
        assert_eq!(st["entries"], 2);
        assert_eq!(st["hits"], 1);
        assert_eq!(st["misses"], 1);
        assert!(Cache::new(0).is_none());
    }
}
