//! The keyword classifier: every intent's keywords compiled once into one [`RegexSet`],
//! which finds all matching keywords in a single pass over the text.
//!
//! An intent's score is the sum of the weights of its distinct keywords found. The
//! winner is the highest score (ties: the intent first by name). Its confidence is
//!
//! ```text
//! confidence = (s_top / Σ s) · (1 − e^(−s_top))
//! ```
//!
//! — its share of all matched weight (how unambiguous the text is), times a strength
//! that grows with the evidence: one keyword of weight 1 alone gives 0.63 (medium), two
//! give 0.86 (high), a weight-0.2 keyword alone 0.18 (below `low`: default intent).

use futures_util::future::BoxFuture;
use regex::RegexSet;

use super::{Backend, Classifier, ClassifyError, Scores};
use crate::config::intent::IntentSettings;

pub struct Keywords {
    set: RegexSet,
    /// Per pattern of the set: its intent and weight.
    owners: Vec<(usize, f64)>,
    intents: usize,
    default: usize,
}

impl Keywords {
    /// From the intents in name order; `Err` names the keyword whose regex is bad.
    pub fn new<'a>(
        intents: impl Iterator<Item = (&'a String, &'a IntentSettings)>,
        default: usize,
    ) -> Result<Keywords, String> {
        let mut patterns = Vec::new();
        let mut owners = Vec::new();
        let mut n = 0;
        for (i, (_, intent)) in intents.enumerate() {
            n = i + 1;
            for k in &intent.keywords {
                let (pattern, weight) = k.pattern();
                patterns.push(pattern);
                owners.push((i, weight));
            }
        }
        let set = RegexSet::new(&patterns).map_err(|e| e.to_string())?;
        Ok(Keywords {
            set,
            owners,
            intents: n,
            default,
        })
    }

    /// Scores `text` (synchronous: no I/O).
    pub fn score(&self, text: &str) -> Scores {
        let mut scores = vec![0.0; self.intents];
        for m in self.set.matches(text).iter() {
            let (intent, weight) = self.owners[m];
            scores[intent] += weight;
        }
        let total: f64 = scores.iter().sum();
        let (mut top, mut best) = (self.default, 0.0);
        for (i, s) in scores.iter().enumerate() {
            if *s > best {
                (top, best) = (i, *s);
            }
        }
        let confidence = if total > 0.0 {
            (best / total) * (1.0 - (-best).exp())
        } else {
            0.0
        };
        Scores {
            intent: top,
            confidence,
            scores,
        }
    }
}

impl Classifier for Keywords {
    fn classify<'a>(
        &'a self,
        text: &'a str,
        _backend: &'a dyn Backend,
    ) -> BoxFuture<'a, Result<Scores, ClassifyError>> {
        Box::pin(std::future::ready(Ok(self.score(text))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::intent::{Keyword, WeightedKeyword};

    fn intents() -> BTreeMap<String, IntentSettings> {
        let words = |ws: &[&str]| ws.iter().map(|w| Keyword::Word(w.to_string())).collect();
        let mut m = BTreeMap::new();
        m.insert(
            "code".to_string(),
            IntentSettings {
                model: "coder".into(),
                keywords: [
                    words(&["python", "function", "c++"]),
                    vec![Keyword::Weighted(WeightedKeyword {
                        word: None,
                        regex: Some(r"\bdef\s+\w+\(".into()),
                        weight: 2.0,
                    })],
                ]
                .concat(),
                ..Default::default()
            },
        );
        m.insert(
            "general".to_string(),
            IntentSettings {
                model: "chat".into(),
                default: true,
                ..Default::default()
            },
        );
        m.insert(
            "reasoning".to_string(),
            IntentSettings {
                model: "thinker".into(),
                keywords: [
                    words(&["prove", "theorem"]),
                    vec![Keyword::Weighted(WeightedKeyword {
                        word: Some("maybe".into()),
                        regex: None,
                        weight: 0.1,
                    })],
                ]
                .concat(),
                ..Default::default()
            },
        );
        m
    }

    fn classifier() -> Keywords {
        Keywords::new(intents().iter(), 1).unwrap()
    }

    #[test]
    fn words_match_whole_and_in_any_case() {
        let k = classifier();
        let s = k.score("Write a PYTHON Function please");
        assert_eq!(s.intent, 0);
        assert!((s.confidence - (1.0 - (-2.0f64).exp())).abs() < 1e-9);
        assert_eq!(s.scores, vec![2.0, 0.0, 0.0]);
        // Not inside other words.
        assert_eq!(k.score("pythonic functions").scores, vec![0.0, 0.0, 0.0]);
        // A word ending in punctuation still matches.
        assert_eq!(k.score("I like C++ a lot").scores[0], 1.0);
    }

    #[test]
    fn regexes_and_weights_count() {
        let k = classifier();
        let s = k.score("def fib(n): ...");
        assert_eq!(s.scores[0], 2.0);
        let weak = k.score("maybe");
        assert_eq!(weak.intent, 2);
        assert!(weak.confidence < 0.2, "{}", weak.confidence);
    }

    #[test]
    fn ambiguity_lowers_confidence_and_nothing_means_default() {
        let k = classifier();
        let mixed = k.score("prove this python function");
        assert_eq!(mixed.intent, 0);
        assert!(mixed.confidence < 0.7 && mixed.confidence > 0.4);
        let none = k.score("hello there");
        assert_eq!((none.intent, none.confidence), (1, 0.0));
    }
}
