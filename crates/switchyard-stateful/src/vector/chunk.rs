//! Chunking (OpenAI's `chunking_strategy`): a document's text cut into windows of
//! `max_chunk_size_tokens` tokens that overlap by `chunk_overlap_tokens`, counted with
//! the cl100k BPE tokenizer. `auto` is 800 and 400. Window edges are token boundaries,
//! moved to the next character boundary where a token splits a character, so that every
//! chunk is exact text of the document.

use serde_json::{Value, json};

/// A chunking strategy, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    pub max_tokens: usize,
    pub overlap: usize,
    /// Whether it was asked for as `auto` (shown so).
    pub auto: bool,
}

/// A chunk: its text and its token count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub tokens: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking::AUTO
    }
}

impl Chunking {
    pub const AUTO: Chunking = Chunking {
        max_tokens: 800,
        overlap: 400,
        auto: true,
    };

    /// `{"type": "auto"}` or `{"type": "static", "static": {"max_chunk_size_tokens":
    /// 100–4096, "chunk_overlap_tokens": 0–half of it}}`; absent is auto. An error names
    /// the offending field under `param`.
    pub fn parse(v: Option<&Value>, param: &str) -> Result<Chunking, (String, String)> {
        let bad = |field: &str, message: &str| (format!("{param}{field}"), message.to_string());
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(Chunking::AUTO);
        };
        match v["type"].as_str() {
            Some("auto") => Ok(Chunking::AUTO),
            Some("static") => {
                let s = &v["static"];
                let max = s["max_chunk_size_tokens"].as_u64().ok_or_else(|| {
                    bad(
                        ".static.max_chunk_size_tokens",
                        "`max_chunk_size_tokens` is required: an integer from 100 to 4096",
                    )
                })?;
                if !(100..=4096).contains(&max) {
                    return Err(bad(
                        ".static.max_chunk_size_tokens",
                        "`max_chunk_size_tokens` must be from 100 to 4096",
                    ));
                }
                let overlap = s["chunk_overlap_tokens"].as_u64().ok_or_else(|| {
                    bad(
                        ".static.chunk_overlap_tokens",
                        "`chunk_overlap_tokens` is required: an integer of at least 0",
                    )
                })?;
                if overlap > max / 2 {
                    return Err(bad(
                        ".static.chunk_overlap_tokens",
                        "`chunk_overlap_tokens` must not exceed half of `max_chunk_size_tokens`",
                    ));
                }
                Ok(Chunking {
                    max_tokens: max as usize,
                    overlap: overlap as usize,
                    auto: false,
                })
            }
            _ => Err(bad(".type", "`type` must be auto or static")),
        }
    }

    /// As the API shows it on a vector store file: always the static sizes used.
    pub fn json(&self) -> Value {
        json!({"type": "static", "static": {
            "max_chunk_size_tokens": self.max_tokens,
            "chunk_overlap_tokens": self.overlap,
        }})
    }

    /// The chunks of `text` (none for text without tokens).
    pub fn chunk(&self, text: &str) -> Vec<Chunk> {
        let bpe = tiktoken_rs::cl100k_base_singleton();
        let tokens = bpe.encode_ordinary(text);
        if tokens.is_empty() {
            return Vec::new();
        }
        // Byte offset of each token's start (the tokens' bytes are the text's).
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        let mut at = 0usize;
        for t in &tokens {
            offsets.push(at);
            at += bpe.decode_bytes(&[*t]).map_or(0, |b| b.len());
        }
        offsets.push(at.min(text.len()));
        let snap = |mut i: usize| {
            i = i.min(text.len());
            while !text.is_char_boundary(i) {
                i += 1;
            }
            i
        };
        let stride = (self.max_tokens - self.overlap).max(1);
        let mut out = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + self.max_tokens).min(tokens.len());
            let (a, b) = (snap(offsets[start]), snap(offsets[end]));
            if a < b {
                out.push(Chunk {
                    text: text[a..b].to_string(),
                    tokens: end - start,
                });
            }
            if end == tokens.len() {
                return out;
            }
            start += stride;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_and_cover_the_text() {
        let text: String = (0..600).map(|i| format!("word{i} ")).collect();
        let c = Chunking {
            max_tokens: 100,
            overlap: 40,
            auto: false,
        };
        let chunks = c.chunk(&text);
        assert!(chunks.len() > 3);
        assert!(chunks.iter().all(|ch| ch.tokens <= 100));
        assert!(text.starts_with(&chunks[0].text));
        assert!(text.ends_with(&chunks.last().unwrap().text));
        // Consecutive chunks share their overlap.
        let tail: String = chunks[0]
            .text
            .chars()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(chunks[1].text.contains(&tail));
    }

    #[test]
    fn multibyte_text_is_cut_at_character_boundaries() {
        let text = "日本語のテキストと絵文字🙂🙂🙂、そして naïve café. ".repeat(80);
        let c = Chunking {
            max_tokens: 100,
            overlap: 30,
            auto: false,
        };
        for ch in c.chunk(&text) {
            assert!(text.contains(&ch.text));
        }
        assert!(c.chunk("").is_empty());
    }

    #[test]
    fn strategies_are_checked() {
        assert_eq!(
            Chunking::parse(None, "chunking_strategy"),
            Ok(Chunking::AUTO)
        );
        let s = serde_json::json!({"type": "static", "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 100}});
        assert_eq!(
            Chunking::parse(Some(&s), "chunking_strategy")
                .unwrap()
                .max_tokens,
            300
        );
        for (v, field) in [
            (
                serde_json::json!({"type": "fancy"}),
                "chunking_strategy.type",
            ),
            (
                serde_json::json!({"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}}),
                "chunking_strategy.static.max_chunk_size_tokens",
            ),
            (
                serde_json::json!({"type": "static", "static": {"max_chunk_size_tokens": 400, "chunk_overlap_tokens": 201}}),
                "chunking_strategy.static.chunk_overlap_tokens",
            ),
        ] {
            assert_eq!(
                Chunking::parse(Some(&v), "chunking_strategy")
                    .unwrap_err()
                    .0,
                field
            );
        }
    }
}
