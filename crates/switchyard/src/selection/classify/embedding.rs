//! The embedding classifier: the intents' example utterances are embedded once per
//! configuration, the prompt once per request (cache misses only).
//!
//! An intent's score is the cosine similarity of the prompt to its **nearest example**
//! (nearest, not the centroid: intents are often several clusters — "write a function"
//! and "fix this stack trace" are both code — and a centroid between clusters is close
//! to neither). Confidence is the calibrated margin: a softmax of the scores with
//! temperature `T` (default 0.05), so the winner's probability grows with its lead over
//! the others — a lead of 0.05 over one rival gives 0.73, of 0.1 gives 0.88. Every
//! intent has examples (validated), the default too, so an off-topic prompt can land
//! on the default by being nearest to it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{Backend, Classifier, ClassifyError, Endpoint, Scores};
use crate::request::Route;

/// Where vectors come from.
pub enum Source {
    /// `/v1/embeddings` of an OpenAI-compatible endpoint (or the fleet).
    Remote { endpoint: Endpoint, model: String },
    /// A model in this process.
    #[cfg(feature = "local-embeddings")]
    Local(std::sync::Arc<super::local::LocalModel>),
}

pub struct Embedding {
    source: Source,
    /// (intent, utterance) for every example.
    examples: Vec<(usize, String)>,
    vectors: OnceCell<Vec<Vec<f32>>>,
    intents: usize,
    default: usize,
    temperature: f64,
    timeout: Duration,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: Option<usize>,
    embedding: Vec<f32>,
}

impl Embedding {
    pub fn new(
        source: Source,
        examples: Vec<(usize, String)>,
        intents: usize,
        default: usize,
        temperature: f64,
        timeout: Duration,
    ) -> Embedding {
        Embedding {
            source,
            examples,
            vectors: OnceCell::new(),
            intents,
            default,
            temperature,
            timeout,
        }
    }

    /// Unit vectors for `texts`, in order, within the timeout.
    async fn embed(
        &self,
        texts: Vec<String>,
        backend: &dyn Backend,
    ) -> Result<Vec<Vec<f32>>, ClassifyError> {
        let n = texts.len();
        let work = async {
            match &self.source {
                Source::Remote { endpoint, model } => {
                    let body =
                        serde_json::to_vec(&serde_json::json!({"model": model, "input": texts}))
                            .map_err(|e| ClassifyError::answer(e.to_string()))?;
                    let raw = backend
                        .post(endpoint, Route::Embeddings, Bytes::from(body))
                        .await?;
                    let resp: EmbeddingResponse = serde_json::from_slice(&raw).map_err(|e| {
                        ClassifyError::answer(format!("not an embeddings response: {e}"))
                    })?;
                    let mut out = vec![Vec::new(); n];
                    for (i, item) in resp.data.into_iter().enumerate() {
                        let at = item.index.unwrap_or(i);
                        if let Some(slot) = out.get_mut(at) {
                            *slot = item.embedding;
                        }
                    }
                    Ok(out)
                }
                #[cfg(feature = "local-embeddings")]
                Source::Local(model) => {
                    let model = model.clone();
                    tokio::task::spawn_blocking(move || model.embed(&texts))
                        .await
                        .map_err(|e| ClassifyError::backend(e.to_string()))?
                        .map_err(|e| ClassifyError::backend(e.to_string()))
                }
            }
        };
        let mut vectors = super::within(self.timeout, "embeddings", work).await?;
        if vectors.len() != n || vectors.iter().any(|v| v.is_empty()) {
            return Err(ClassifyError::answer(format!(
                "expected {n} embeddings, got {}",
                vectors.iter().filter(|v| !v.is_empty()).count()
            )));
        }
        vectors.iter_mut().for_each(|v| normalise(v));
        Ok(vectors)
    }

    async fn example_vectors(
        &self,
        backend: &dyn Backend,
    ) -> Result<&Vec<Vec<f32>>, ClassifyError> {
        self.vectors
            .get_or_try_init(|| {
                self.embed(
                    self.examples.iter().map(|(_, t)| t.clone()).collect(),
                    backend,
                )
            })
            .await
    }

    /// Scores a prompt's unit vector against the examples' (see the module doc).
    pub fn score(&self, prompt: &[f32], examples: &[Vec<f32>]) -> Scores {
        let mut scores = vec![f64::NEG_INFINITY; self.intents];
        for ((intent, _), v) in self.examples.iter().zip(examples) {
            if v.len() != prompt.len() {
                continue;
            }
            let sim: f32 = v.iter().zip(prompt).map(|(a, b)| a * b).sum();
            scores[*intent] = scores[*intent].max(f64::from(sim));
        }
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return Scores {
                intent: self.default,
                confidence: 0.0,
                scores: vec![0.0; self.intents],
            };
        }
        let weights: Vec<f64> = scores
            .iter()
            .map(|s| ((s - max) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let top = scores
            .iter()
            .position(|s| *s == max)
            .unwrap_or(self.default);
        Scores {
            intent: top,
            confidence: weights[top] / total,
            scores: scores
                .into_iter()
                .map(|s| if s.is_finite() { s } else { 0.0 })
                .collect(),
        }
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

impl Classifier for Embedding {
    fn classify<'a>(
        &'a self,
        text: &'a str,
        backend: &'a dyn Backend,
    ) -> BoxFuture<'a, Result<Scores, ClassifyError>> {
        Box::pin(async move {
            let examples = self.example_vectors(backend).await?;
            let prompt = self.embed(vec![text.to_string()], backend).await?;
            Ok(self.score(&prompt[0], examples))
        })
    }

    fn prepare<'a>(&'a self, backend: &'a dyn Backend) -> BoxFuture<'a, Result<(), ClassifyError>> {
        Box::pin(async move { self.example_vectors(backend).await.map(|_| ()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_example_wins_and_the_margin_sets_confidence() {
        let e = Embedding::new(
            Source::Remote {
                endpoint: Endpoint::Fleet,
                model: "m".into(),
            },
            vec![(0, "a".into()), (0, "b".into()), (1, "c".into())],
            3,
            2,
            0.05,
            Duration::from_secs(1),
        );
        let ex = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
        // Nearest to example b (intent 0), closer than to c (intent 1).
        let s = e.score(&[0.0, 1.0], &ex);
        assert_eq!(s.intent, 0);
        assert!((s.scores[0] - 1.0).abs() < 1e-6 && (s.scores[1] - 0.8).abs() < 1e-6);
        // Lead 0.2 at T = 0.05: e^4 / (1 + e^4).
        let want = 4f64.exp() / (1.0 + 4f64.exp());
        assert!((s.confidence - want).abs() < 1e-4, "{}", s.confidence);
        // A tie between two intents: one half each.
        let tie = e.score(
            &[0.6, 0.8],
            &[vec![0.6, 0.8], vec![0.0, 1.0], vec![0.6, 0.8]],
        );
        assert!((tie.confidence - 0.5).abs() < 1e-6, "{}", tie.confidence);
    }
}
