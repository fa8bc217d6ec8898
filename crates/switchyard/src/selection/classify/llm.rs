//! The llm classifier: a small chat model picks one intent name, constrained by a JSON
//! schema (`response_format: json_schema` with an `enum` of the names, which vLLM and
//! SGLang enforce with guided decoding). Confidence is the probability the model gave
//! its answer — `exp(Σ logprob)` of the answer's tokens — when the engine returns
//! logprobs, else 1. The call has a timeout; a timeout or an unusable answer is a
//! classifier error (see `on_classifier_error`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use super::{Backend, Classifier, ClassifyError, Endpoint, Scores};
use crate::request::Route;

pub struct Llm {
    endpoint: Endpoint,
    model: String,
    names: Vec<String>,
    system: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChatMessage,
    #[serde(default)]
    logprobs: Option<Logprobs>,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Logprobs {
    #[serde(default)]
    content: Option<Vec<TokenLogprob>>,
}

#[derive(Deserialize)]
struct TokenLogprob {
    logprob: f64,
}

#[derive(Deserialize)]
struct Answer {
    intent: String,
}

impl Llm {
    /// `intents`: (name, description) in name order.
    pub fn new(
        endpoint: Endpoint,
        model: String,
        intents: Vec<(String, Option<String>)>,
        timeout: Duration,
    ) -> Llm {
        let mut system = String::from(
            "You route requests to the right assistant. Read the user's message and \
             answer with the one intent that fits it best, as JSON {\"intent\": NAME}.\n\
             Intents:\n",
        );
        for (name, desc) in &intents {
            system.push_str(&format!(
                "- {name}: {}\n",
                desc.as_deref().unwrap_or("(no description)")
            ));
        }
        Llm {
            endpoint,
            model,
            names: intents.into_iter().map(|(n, _)| n).collect(),
            system,
            timeout,
        }
    }

    /// The chat request that asks for the intent of `text`.
    pub fn request(&self, text: &str) -> serde_json::Value {
        json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
            "max_tokens": 32,
            "logprobs": true,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "intent",
                    "strict": true,
                    "schema": {
                        "type": "object",
                        "properties": {"intent": {"type": "string", "enum": self.names}},
                        "required": ["intent"],
                        "additionalProperties": false,
                    },
                },
            },
        })
    }

    /// Reads the model's answer.
    pub fn read(&self, raw: &[u8]) -> Result<Scores, ClassifyError> {
        let resp: ChatResponse = serde_json::from_slice(raw)
            .map_err(|e| ClassifyError::answer(format!("not a chat completion: {e}")))?;
        let choice = resp
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| ClassifyError::answer("no choices"))?;
        let content = choice.message.content.unwrap_or_default();
        let answer: Answer = serde_json::from_str(content.trim()).map_err(|e| {
            ClassifyError::answer(format!(
                "answer {content:?} is not {{\"intent\": NAME}}: {e}"
            ))
        })?;
        let intent = self
            .names
            .iter()
            .position(|n| *n == answer.intent)
            .ok_or_else(|| ClassifyError::answer(format!("unknown intent {:?}", answer.intent)))?;
        let confidence = choice
            .logprobs
            .and_then(|l| l.content)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.iter()
                    .map(|t| t.logprob)
                    .sum::<f64>()
                    .exp()
                    .clamp(0.0, 1.0)
            })
            .unwrap_or(1.0);
        let mut scores = vec![0.0; self.names.len()];
        scores[intent] = confidence;
        Ok(Scores {
            intent,
            confidence,
            scores,
        })
    }
}

impl Classifier for Llm {
    fn classify<'a>(
        &'a self,
        text: &'a str,
        backend: &'a dyn Backend,
    ) -> BoxFuture<'a, Result<Scores, ClassifyError>> {
        Box::pin(async move {
            let body = Bytes::from(self.request(text).to_string());
            let call = backend.post(&self.endpoint, Route::Chat, body);
            let raw = super::within(self.timeout, "answer", call).await?;
            self.read(&raw)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm() -> Llm {
        Llm::new(
            Endpoint::Fleet,
            "small".into(),
            vec![
                ("code".into(), Some("programming".into())),
                ("general".into(), None),
            ],
            Duration::from_secs(1),
        )
    }

    #[test]
    fn asks_with_a_schema_and_reads_the_answer() {
        let l = llm();
        let req = l.request("write a loop");
        let schema = &req["response_format"]["json_schema"]["schema"];
        assert_eq!(
            schema["properties"]["intent"]["enum"],
            json!(["code", "general"])
        );
        assert!(
            req["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("- code: programming")
        );
        let ok = br#"{"choices":[{"message":{"content":"{\"intent\": \"general\"}"},
            "logprobs":{"content":[{"logprob":-0.1},{"logprob":-0.2}]}}]}"#;
        let s = l.read(ok).unwrap();
        assert_eq!(s.intent, 1);
        assert!((s.confidence - (-0.3f64).exp()).abs() < 1e-9);
        let no_logprobs = br#"{"choices":[{"message":{"content":"{\"intent\":\"code\"}"}}]}"#;
        assert_eq!(l.read(no_logprobs).unwrap().confidence, 1.0);
        for bad in [
            &br#"{"choices":[{"message":{"content":"code"}}]}"#[..],
            br#"{"choices":[{"message":{"content":"{\"intent\":\"poetry\"}"}}]}"#,
            br#"{"choices":[]}"#,
            b"nope",
        ] {
            assert_eq!(l.read(bad).unwrap_err().kind, "answer");
        }
    }
}
