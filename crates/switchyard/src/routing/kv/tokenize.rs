//! The request's token ids as the engine will compute them: the chat template rendered
//! with minijinja, then the model's tokenizer, for precise prefix matching.
//!
//! Tokenizers (`--kv-tokenizer`):
//! - `tiktoken:cl100k_base`, `tiktoken:o200k_base`: OpenAI BPE encodings (the
//!   simulator's is cl100k, applied to text without special tokens);
//! - a path to a Hugging Face `tokenizer.json`: chat prompts are encoded without added
//!   special tokens (the template writes them), completion prompts with them, as vLLM.
//!
//! Chat templates (`--kv-chat-template`): `simulator` (the simulator's ChatML, the
//! default), a Jinja file, or a `tokenizer_config.json` (its `chat_template`, and its
//! `bos_token` / `eos_token`). `switchyard check-tokenizer` compares the result with an
//! engine's own `/tokenize`.

use std::path::Path;
use std::sync::Arc;

use minijinja::value::Serde;
use serde_json::Value;

/// The simulator's chat template (switchyard-sim's `render_chat`), in Jinja.
pub const SIMULATOR_TEMPLATE: &str = concat!(
    "{% for m in messages %}",
    "{{ '<|im_start|>' + (m.role if m.role is string else 'user') + '\\n' }}",
    "{% if m.content is string %}{{ m.content }}",
    "{% elif m.content is sequence %}{% for p in m.content %}",
    "{% if p.text is string %}{{ p.text }}{% else %}<|media|>{% endif %}",
    "{% endfor %}{% endif %}",
    "{% if m.tool_calls is defined and m.tool_calls is not none %}{{ m.tool_calls | tojson }}{% endif %}",
    "{{ '<|im_end|>\\n' }}",
    "{% endfor %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
);

enum Encoder {
    Tiktoken(Arc<tiktoken_rs::CoreBPE>),
    Hf(Box<tokenizers::Tokenizer>),
}

/// A model's tokenizer and chat template.
pub struct Tokenizer {
    encoder: Encoder,
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

/// Why a tokenizer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(pub String);

fn err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError(e.to_string())
}

impl Tokenizer {
    /// Loads `tokenizer` (see the module docs) with `template` (`simulator`, a Jinja
    /// file or a `tokenizer_config.json`).
    pub fn load(tokenizer: &str, template: &str) -> Result<Self, TokenizerError> {
        let encoder = match tokenizer.strip_prefix("tiktoken:") {
            Some("cl100k_base") => {
                Encoder::Tiktoken(Arc::new(tiktoken_rs::cl100k_base().map_err(err)?))
            }
            Some("o200k_base") => {
                Encoder::Tiktoken(Arc::new(tiktoken_rs::o200k_base().map_err(err)?))
            }
            Some(other) => {
                return Err(TokenizerError(format!(
                    "tiktoken encoding {other:?}: use cl100k_base or o200k_base"
                )));
            }
            None => Encoder::Hf(Box::new(
                tokenizers::Tokenizer::from_file(tokenizer)
                    .map_err(|e| TokenizerError(format!("{tokenizer}: {e}")))?,
            )),
        };
        let (source, bos, eos) = if template == "simulator" {
            (SIMULATOR_TEMPLATE.to_string(), String::new(), String::new())
        } else {
            let text = std::fs::read_to_string(template)
                .map_err(|e| TokenizerError(format!("{template}: {e}")))?;
            if Path::new(template).extension().is_some_and(|e| e == "json") {
                let cfg: Value = serde_json::from_str(&text)
                    .map_err(|e| TokenizerError(format!("{template}: {e}")))?;
                let special = |k: &str| match &cfg[k] {
                    Value::String(s) => s.clone(),
                    v => v["content"].as_str().unwrap_or_default().to_string(),
                };
                let tpl = match &cfg["chat_template"] {
                    Value::String(s) => s.clone(),
                    // A list of named templates: the default one.
                    Value::Array(list) => list
                        .iter()
                        .find(|t| t["name"] == "default")
                        .and_then(|t| t["template"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                    _ => String::new(),
                };
                if tpl.is_empty() {
                    return Err(TokenizerError(format!("{template}: no chat_template")));
                }
                (tpl, special("bos_token"), special("eos_token"))
            } else {
                (text, String::new(), String::new())
            }
        };
        let mut env = minijinja::Environment::new();
        // As transformers renders chat templates.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(err)?,
        );
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| TokenizerError(format!("chat template: {e}")))?;
        Ok(Tokenizer {
            encoder,
            env,
            bos,
            eos,
        })
    }

    /// The prompt text of a chat request, as the template renders it.
    pub fn render(&self, body: &Value) -> Result<String, TokenizerError> {
        let tpl = self.env.get_template("chat").map_err(err)?;
        tpl.render(minijinja::context! {
            messages => minijinja::Value::from(Serde(&body["messages"])),
            tools => body.get("tools").map(|t| minijinja::Value::from(Serde(t))),
            add_generation_prompt => body.get("add_generation_prompt").and_then(Value::as_bool).unwrap_or(true),
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(err)
    }

    /// Token ids of `text`; `special` adds the tokenizer's special tokens (BOS) as
    /// vLLM does for completion prompts.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, TokenizerError> {
        match &self.encoder {
            Encoder::Tiktoken(bpe) => Ok(bpe.encode_ordinary(text)),
            Encoder::Hf(t) => Ok(t.encode(text, special).map_err(err)?.get_ids().to_vec()),
        }
    }

    /// The token ids an engine computes for an OpenAI request body: `messages` through
    /// the template, or a completion `prompt` (text, or ids as they are). `None` when
    /// the body has neither in a usable form (the engine will say what is wrong).
    pub fn request_tokens(&self, body: &Value) -> Option<Vec<u32>> {
        if body.get("messages").is_some_and(Value::is_array) {
            let text = self.render(body).ok()?;
            return self.encode(&text, false).ok();
        }
        match body.get("prompt")? {
            Value::String(s) => self.encode(s, true).ok(),
            Value::Array(items) if items.iter().all(Value::is_u64) => items
                .iter()
                .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect(),
            // A batch of prompts: the first one decides the route.
            Value::Array(items) => match items.first()? {
                Value::String(s) => self.encode(s, true).ok(),
                Value::Array(ids) => ids
                    .iter()
                    .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect(),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_simulator_template_renders_as_the_simulator_does() {
        let t = Tokenizer::load("tiktoken:cl100k_base", "simulator").unwrap();
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "image_url"}]},
        ]});
        assert_eq!(
            t.render(&body).unwrap(),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi <|media|><|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = t.request_tokens(&body).unwrap();
        assert_eq!(ids, t.encode(&t.render(&body).unwrap(), false).unwrap());
        assert_eq!(
            t.request_tokens(&json!({"prompt": [1, 2, 3]})).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            t.request_tokens(&json!({"prompt": "hello world"})).unwrap(),
            t.encode("hello world", false).unwrap()
        );
        assert!(t.request_tokens(&json!({"prompt": 5})).is_none());
        assert!(t.request_tokens(&json!({"prompt": [-1]})).is_none());
    }

    #[test]
    fn bad_specs_are_named() {
        let e = Tokenizer::load("tiktoken:p50k", "simulator").err().unwrap();
        assert!(e.0.contains("p50k"), "{e}");
        let e = Tokenizer::load("/nonexistent/tokenizer.json", "simulator")
            .err()
            .unwrap();
        assert!(e.0.contains("/nonexistent/tokenizer.json"), "{e}");
        let e = Tokenizer::load("tiktoken:cl100k_base", "/nonexistent.jinja")
            .err()
            .unwrap();
        assert!(e.0.contains("/nonexistent.jinja"), "{e}");
    }
}
