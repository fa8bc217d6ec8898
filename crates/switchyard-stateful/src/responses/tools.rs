//! What the Responses API's server-side tools share (docs/tools.md): the results they
//! show the model (numbered `[1]`, `[2]`, … across a response's rounds), the tool
//! message that shows them, and the citations an answer's text gets for them.
//!
//! Citations: the model is asked to cite results by number. The answer's `output_text`
//! gets an annotation for every marker `[n]` naming a result — a `file_citation` (at
//! the marker's character index) for a file, a `url_citation` (spanning the marker)
//! for a web page — and, for every result not cited by marker whose text it quotes (a
//! sentence of at least six words found verbatim), one for the quote. Nothing else is
//! attributed.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::vector::Hit;

/// One web page a search found.
#[derive(Clone, Debug, PartialEq)]
pub struct WebResult {
    pub title: String,
    pub url: String,
    pub snippet: String,
}

/// The search behind `web_search` tools: a provider the operator configured.
pub trait WebSearch: Send + Sync + 'static {
    /// At most `count` results for `query`, from `domains` only when it lists any. The
    /// error is said to the model, so it names no secret.
    fn search(
        &self,
        query: String,
        count: usize,
        domains: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<WebResult>, String>>;
}

/// A result shown to the model.
#[derive(Clone, Debug)]
pub enum Source {
    File(Hit),
    Web(WebResult),
}

impl Source {
    /// (title, what identifies it, its text), as the model sees them.
    fn parts(&self) -> (&str, &str, &str) {
        match self {
            Source::File(h) => (&h.filename, &h.file_id, &h.text),
            Source::Web(w) => (&w.title, &w.url, &w.snippet),
        }
    }

    /// The annotation citing it over the characters `start..end` of the text.
    fn citation(&self, start: usize, end: usize) -> Value {
        match self {
            Source::File(h) => json!({"type": "file_citation", "file_id": h.file_id,
                                      "filename": h.filename, "index": start}),
            Source::Web(w) => json!({"type": "url_citation", "url": w.url, "title": w.title,
                                     "start_index": start, "end_index": end}),
        }
    }
}

/// What a server-side tool call found: what it looked for (shown to the model), and
/// the results, or else the text the model is told instead (why there are none, or
/// an MCP tool's own output).
pub struct Found {
    pub asked: String,
    pub results: Result<Vec<Source>, String>,
}

/// The tool message answering a call: its results numbered from `first`, or what went
/// wrong.
pub fn tool_message(found: &Found, first: usize) -> String {
    let sources = match &found.results {
        Err(message) => return message.clone(),
        Ok(s) if s.is_empty() => {
            return format!(
                "No results for: {}. Answer from what you know, and say that the search did not cover it.",
                found.asked
            );
        }
        Ok(s) => s,
    };
    let mut s = format!(
        "Results for: {}. Answer from them and cite each result you use by its number in brackets, like [{first}].\n\n",
        found.asked
    );
    for (i, source) in sources.iter().enumerate() {
        let (title, id, text) = source.parts();
        s.push_str(&format!("[{}] {title} ({id})\n", first + i));
        s.push_str(text.trim());
        s.push_str("\n\n");
    }
    s
}

/// The annotations of an answer's text, given every result shown to the model
/// (numbered from 1), in order of their place in the text (character indexes).
pub fn citations(text: &str, sources: &[Source]) -> Vec<Value> {
    if sources.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, source)
    let mut cited = vec![false; sources.len()];
    // Markers `[n]`.
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].1 == '[' {
            let mut j = i + 1;
            let mut n = 0usize;
            while j < chars.len() && chars[j].1.is_ascii_digit() && j - i <= 4 {
                n = n * 10 + chars[j].1.to_digit(10).unwrap_or(0) as usize;
                j += 1;
            }
            if j > i + 1 && j < chars.len() && chars[j].1 == ']' && (1..=sources.len()).contains(&n)
            {
                found.push((i, j + 1, n - 1));
                cited[n - 1] = true;
                i = j;
            }
        }
        i += 1;
    }
    // Quotes of results not cited by marker: a file's citation stands at the quote's
    // end, a page's spans it.
    for (k, s) in sources.iter().enumerate() {
        if cited[k] {
            continue;
        }
        for sentence in s.parts().2.split_inclusive(['.', '!', '?', '\n']) {
            let sentence = sentence.trim();
            if sentence.split_whitespace().count() < 6 {
                continue;
            }
            if let Some(at) = text.find(sentence) {
                let start = text[..at].chars().count();
                let end = start + sentence.chars().count();
                let start = if matches!(s, Source::File(_)) {
                    end
                } else {
                    start
                };
                found.push((start, end, k));
                cited[k] = true;
                break;
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(start, end, k)| sources[k].citation(start, end))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, text: &str) -> Source {
        Source::File(Hit {
            store_id: "vs".into(),
            file_id: id.into(),
            filename: format!("{id}.md"),
            score: 0.5,
            attributes: json!({}),
            text: text.into(),
        })
    }

    fn page(url: &str, text: &str) -> Source {
        Source::Web(WebResult {
            title: format!("Page {url}"),
            url: url.into(),
            snippet: text.into(),
        })
    }

    #[test]
    fn markers_and_quotes_are_cited() {
        let sources = [
            file(
                "a",
                "Glaciers carve deep valleys as the ice moves downhill.",
            ),
            file(
                "b",
                "Bees dance to show the hive where the flowers are found.",
            ),
            file("c", "Unrelated text that nobody quotes here at all."),
        ];
        let text = "Ice is slow [1]. Also: Bees dance to show the hive where the flowers are found. See [9] and [x].";
        let c = citations(text, &sources);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0]["file_id"], "a");
        assert_eq!(c[0]["index"], 12);
        assert_eq!(c[1]["file_id"], "b");
        let quote_end = text.find("found.").unwrap() + "found.".len();
        assert_eq!(c[1]["index"], quote_end);
        assert!(citations("[1]", &[]).is_empty());
        // Character indexes, not bytes.
        let c = citations("Ünïcödé [1]", &sources);
        assert_eq!(c[0]["index"], 8);
    }

    #[test]
    fn pages_are_cited_by_url_over_the_marker_or_the_quote() {
        let sources = [
            page(
                "https://a.example/x",
                "Otters hold hands while they sleep in the water.",
            ),
            page("https://b.example/y", "Nothing quoted."),
        ];
        let text = "Ünï [2]: Otters hold hands while they sleep in the water.";
        let c = citations(text, &sources);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            c[0],
            json!({"type": "url_citation", "url": "https://b.example/y", "title": "Page https://b.example/y",
                   "start_index": 4, "end_index": 7})
        );
        assert_eq!(c[1]["url"], "https://a.example/x");
        assert_eq!(c[1]["start_index"], 9);
        assert_eq!(c[1]["end_index"], text.chars().count());
    }

    #[test]
    fn results_are_numbered_for_the_model() {
        let found = Found {
            asked: "q".into(),
            results: Ok(vec![file("a", "one"), page("https://p.example", "two")]),
        };
        let m = tool_message(&found, 3);
        assert!(
            m.contains("[3] a.md (a)\none")
                && m.contains("[4] Page https://p.example (https://p.example)\ntwo"),
            "{m}"
        );
        let none = Found {
            asked: "q".into(),
            results: Ok(Vec::new()),
        };
        assert!(tool_message(&none, 1).starts_with("No results"));
        let failed = Found {
            asked: "q".into(),
            results: Err("The search failed: down".into()),
        };
        assert_eq!(tool_message(&failed, 1), "The search failed: down");
    }
}
