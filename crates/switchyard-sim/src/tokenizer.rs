//! Tokenization (cl100k BPE, ranks embedded in the binary), the chat template, and
//! the vocabulary the simulated model "generates" from.

use std::sync::LazyLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// A token id.
pub type Token = u32;

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::cl100k_base_singleton()
}

/// Forces the tokenizer tables to load now rather than on the first request.
pub fn warm_up() {
    let _ = bpe();
    let _ = &*VOCAB;
}

/// Tokenizes plain text.
pub fn encode(text: &str) -> Vec<Token> {
    bpe().encode_ordinary(text)
}

/// Turns token ids back into text (lossy on partial UTF-8 sequences).
pub fn decode(tokens: &[Token]) -> String {
    try_decode(tokens).unwrap_or_default()
}

/// Turns token ids back into text; `None` when an id is outside the vocabulary.
pub fn try_decode(tokens: &[Token]) -> Option<String> {
    bpe()
        .decode_bytes(tokens)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Text of a single token, used when streaming one token per chunk.
pub fn token_text(token: Token) -> &'static str {
    VOCAB
        .binary_search_by_key(&token, |(id, _)| *id)
        .map(|i| VOCAB[i].1)
        .unwrap_or("")
}

/// Renders chat messages with the simulator's fixed template (ChatML-style):
///
/// ```text
/// <|im_start|>{role}\n{content}<|im_end|>\n   (for each message)
/// <|im_start|>assistant\n                       (generation prompt)
/// ```
///
/// `content` may be a string or an array of `{"type": "text", "text": …}` parts; other
/// parts (images, audio) contribute a fixed placeholder. Two conversations that share
/// their first messages therefore share a token prefix.
pub fn render_chat(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        match m.get("content") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("text").and_then(Value::as_str) {
                        Some(t) => out.push_str(t),
                        None => out.push_str("<|media|>"),
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            out.push_str(&calls.to_string());
        }
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// Words that are each exactly one cl100k token, so generated text has exactly the
/// requested token count.
static VOCAB: LazyLock<Vec<(Token, &'static str)>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        " the", " of", " and", " to", " a", " in", " is", " that", " for", " it", " as", " with",
        " was", " on", " be", " by", " this", " are", " or", " from", " at", " an", " which",
        " but", " not", " have", " has", " they", " you", " were", " their", " one", " all", " we",
        " can", " there", " will", " more", " when", " model", " cache", " token", " request",
        " engine", " router", " prefix", " block", " batch", " queue", " latency", " time",
        " first", " each", " other", " new", " some", " could", " these", " two", " may", " then",
        " do", " any", " like", " my", " now", " over", " such", " our", " man", " me", " even",
        " most", " made", " after", " also", " did", " many", " before", " must", " through",
        " years", " where", " much", " your", " way", " well", " down", " should", " because",
        " long", " each", " just", " those", " people", " how", " too", " little", " state",
        " good", " very", " make", " world", " still", " own", " see", " men", " work", " here",
        " between", " both", " life", " being", " under", " never", " day", " same", " another",
        " know", " while", " last", " might", " us", " great", " old", " year", " off", " come",
        " since", " against", " go", " came", " right", " used", " take", " three", ".", ",",
    ];
    let mut v: Vec<(Token, &'static str)> = Vec::new();
    for w in WORDS {
        let t = encode(w);
        if t.len() == 1 && !v.iter().any(|(id, _)| *id == t[0]) {
            v.push((t[0], w));
        }
    }
    v.sort_unstable_by_key(|(id, _)| *id);
    v
});

/// Words (with their leading space) that are each one token and only letters: any
/// sequence of them tokenizes to exactly one token per word. Used to build prompts of
/// exact token lengths.
pub fn word_tokens() -> Vec<&'static str> {
    VOCAB
        .iter()
        .map(|(_, w)| *w)
        .filter(|w| w.len() > 1 && w[1..].chars().all(|c| c.is_ascii_alphabetic()))
        .collect()
}

/// The `i`-th generated token of a sequence whose stream is seeded by `seed`.
pub fn generated_token(seed: u64, i: u32) -> Token {
    let mut x = seed ^ (u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer: cheap and well mixed.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    VOCAB[(x % VOCAB.len() as u64) as usize].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_words_are_single_tokens() {
        assert!(VOCAB.len() > 100, "only {} single-token words", VOCAB.len());
        for (id, w) in VOCAB.iter() {
            assert_eq!(encode(w), vec![*id]);
            assert_eq!(token_text(*id), *w);
        }
    }

    #[test]
    fn word_sequences_have_one_token_per_word() {
        let words = word_tokens();
        assert!(words.len() > 100);
        let text: String = (0..500).map(|i| words[(i * 7 + 3) % words.len()]).collect();
        assert_eq!(encode(&text).len(), 500);
    }

    #[test]
    fn chat_prefix_is_shared() {
        let sys = serde_json::json!({"role": "system", "content": "You are terse."});
        let a = encode(&render_chat(&[
            sys.clone(),
            serde_json::json!({"role": "user", "content": "hi"}),
        ]));
        let b = encode(&render_chat(&[
            sys,
            serde_json::json!({"role": "user", "content": "bye"}),
        ]));
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common >= 8, "common prefix {common}");
    }

    #[test]
    fn generation_is_deterministic() {
        let a: Vec<_> = (0..20).map(|i| generated_token(7, i)).collect();
        let b: Vec<_> = (0..20).map(|i| generated_token(7, i)).collect();
        let c: Vec<_> = (0..20).map(|i| generated_token(8, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
