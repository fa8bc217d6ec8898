//! `switchyard check-tokenizer`: the gateway's tokenisation of sample prompts against an
//! engine's own `POST /tokenize`, so an operator can trust precise prefix matching.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use super::tokenize::Tokenizer;
use crate::upstream::{self, EngineUrl};

/// `switchyard check-tokenizer` options.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "switchyard check-tokenizer")]
pub struct CheckArgs {
    /// The engine's base URL.
    #[arg(long)]
    pub url: String,
    /// The model name to send.
    #[arg(long)]
    pub model: String,
    /// As `serve --kv-tokenizer`.
    #[arg(long, default_value = "tiktoken:cl100k_base")]
    pub kv_tokenizer: String,
    /// As `serve --kv-chat-template`.
    #[arg(long, default_value = "simulator")]
    pub kv_chat_template: String,
}

/// One sample's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub name: &'static str,
    /// Tokens the engine and the gateway produced.
    pub engine: usize,
    pub gateway: usize,
    /// First position where they differ (`None`: identical).
    pub first_difference: Option<usize>,
}

/// Prompts that exercise plain text, Unicode, a system prompt, content parts and
/// several turns.
fn samples() -> Vec<(&'static str, Value)> {
    vec![
        (
            "completion: plain text",
            json!({"prompt": "The quick brown fox jumps over the lazy dog."}),
        ),
        (
            "completion: unicode and whitespace",
            json!({"prompt": "naïve café — 東京\n\n\tüber 🚀 1234567890"}),
        ),
        (
            "chat: system and user",
            json!({"messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."}]}),
        ),
        (
            "chat: content parts",
            json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "this."}]}]}),
        ),
        (
            "chat: several turns",
            json!({"messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "Count to five."}]}),
        ),
    ]
}

/// Compares every sample. Errors are about reaching the engine or loading the
/// tokenizer, not about differences.
pub async fn check(args: &CheckArgs) -> anyhow::Result<Vec<Sample>> {
    let tok = Tokenizer::load(&args.kv_tokenizer, &args.kv_chat_template)?;
    let url = EngineUrl::parse(&args.url)?;
    let client = upstream::build();
    let mut out = Vec::new();
    for (name, mut body) in samples() {
        let ours = tok
            .request_tokens(&body)
            .ok_or_else(|| anyhow::anyhow!("{name}: the gateway cannot tokenise it"))?;
        body["model"] = json!(args.model);
        if body.get("messages").is_some() {
            body["add_generation_prompt"] = json!(true);
        }
        let req = http::Request::post(url.uri("/tokenize"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let (status, resp) = upstream::fetch(
            &client,
            req,
            Duration::from_secs(30),
            upstream::PROBE_BODY_LIMIT,
        )
        .await?;
        if !status.is_success() {
            anyhow::bail!(
                "{name}: POST /tokenize answered {status}: {}",
                String::from_utf8_lossy(&resp)
            );
        }
        let theirs: Vec<u32> = serde_json::from_slice::<Value>(&resp)?["tokens"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{name}: /tokenize gave no `tokens`"))?
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("{name}: /tokenize gave a token that is not a u32"))?;
        let first_difference =
            (0..theirs.len().max(ours.len())).find(|&i| theirs.get(i) != ours.get(i));
        out.push(Sample {
            name,
            engine: theirs.len(),
            gateway: ours.len(),
            first_difference,
        });
    }
    Ok(out)
}

/// Runs the check, prints one line per sample, and returns the exit status: 0 when
/// every sample matches.
pub async fn run(args: CheckArgs) -> i32 {
    match check(&args).await {
        Ok(samples) => {
            let mut ok = true;
            for s in &samples {
                match s.first_difference {
                    None => println!("ok    {} ({} tokens)", s.name, s.engine),
                    Some(i) => {
                        ok = false;
                        println!(
                            "DIFF  {}: engine {} tokens, gateway {}, first difference at {i}",
                            s.name, s.engine, s.gateway
                        );
                    }
                }
            }
            if ok {
                println!("the gateway tokenises as the engine does");
                0
            } else {
                println!(
                    "the gateway's tokenisation differs: precise_prefix would miss cached prefixes"
                );
                1
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
