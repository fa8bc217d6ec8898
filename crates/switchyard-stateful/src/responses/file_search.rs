//! The `file_search` tool of the Responses API (docs/files-and-vector-stores.md,
//! "file_search in Responses"): the engine is offered a function of that name; when the
//! model calls it, the gateway searches the request's vector stores, answers the call
//! with the numbered results, and lets the model go on, round after round, until it
//! answers (bounded by `max_tool_calls` and the gateway's limit).
//!
//! Citations: the results are numbered `[1]`, `[2]`, … across the rounds, and the model
//! is asked to cite them so. The answer's `output_text` gets a `file_citation` for
//! every marker `[n]` naming a result (at the marker's character index), and for every
//! result not cited by marker whose text it quotes — a sentence of at least six words
//! found verbatim — at the end of the quote. Nothing else is attributed.

use serde_json::{Map, Value, json};

use super::input::BadInput;
use crate::vector::{Hit, SearchOptions};

/// The function's name, as the engine sees it.
pub const FUNCTION: &str = "file_search";

/// A request's `file_search` tool, checked.
#[derive(Clone, Debug)]
pub struct FileSearchTool {
    /// Where the request named them (`tools[i].vector_store_ids`).
    pub param: String,
    pub vector_store_ids: Vec<String>,
    pub options: SearchOptions,
    /// The tool as the Response object shows it.
    pub echo: Value,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadInput {
    BadInput {
        message: message.into(),
        param: param.into(),
    }
}

impl FileSearchTool {
    /// `{"type": "file_search", "vector_store_ids": [...], "max_num_results"?,
    /// "filters"?, "ranking_options"?}` at `at` (`tools[i]`).
    pub fn parse(t: &Map<String, Value>, at: &str) -> Result<FileSearchTool, BadInput> {
        let ids = match t.get("vector_store_ids") {
            Some(Value::Array(l))
                if !l.is_empty()
                    && l.len() <= 10
                    && l.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                l.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            }
            _ => {
                return Err(bad(
                    format!("{at}.vector_store_ids"),
                    "`vector_store_ids` must list 1 to 10 vector store ids",
                ));
            }
        };
        let options = SearchOptions::parse(t, &format!("{at}.")).map_err(|e| BadInput {
            message: e.message,
            param: e.param.unwrap_or_default(),
        })?;
        let mut echo = json!({
            "type": "file_search", "vector_store_ids": ids,
            "filters": t.get("filters").cloned().unwrap_or(Value::Null),
        });
        if let Some(n) = t.get("max_num_results").filter(|v| !v.is_null()) {
            echo["max_num_results"] = n.clone();
        }
        if let Some(r) = t.get("ranking_options").filter(|v| !v.is_null()) {
            echo["ranking_options"] = r.clone();
        }
        Ok(FileSearchTool {
            param: format!("{at}.vector_store_ids"),
            vector_store_ids: ids,
            options,
            echo,
        })
    }

    /// The function offered to the engine.
    pub fn function() -> Value {
        json!({"type": "function", "function": {
            "name": FUNCTION,
            "description": "Search the user's documents for passages relevant to the \
                question. Call it before answering anything about their files; then answer \
                from the results and cite them by number, like [1].",
            "parameters": {
                "type": "object",
                "properties": {"queries": {
                    "type": "array", "items": {"type": "string"},
                    "description": "One or more search queries"
                }},
                "required": ["queries"]
            }
        }})
    }
}

/// The queries of a call's arguments (`{"queries": [...]}`, or `{"query": "..."}`);
/// `None` when they hold none.
pub fn queries_of(arguments: &str) -> Option<Vec<String>> {
    let v: Value = serde_json::from_str(arguments).ok()?;
    let list: Vec<String> = match (&v["queries"], &v["query"]) {
        (Value::Array(l), _) => l
            .iter()
            .filter_map(|q| q.as_str().map(str::to_string))
            .collect(),
        (Value::String(q), _) | (_, Value::String(q)) => vec![q.clone()],
        _ => Vec::new(),
    };
    let list: Vec<String> = list
        .into_iter()
        .filter(|q| !q.trim().is_empty())
        .take(10)
        .collect();
    (!list.is_empty()).then_some(list)
}

/// The tool message answering a search: its results numbered from `first`.
pub fn tool_message(queries: &[String], hits: &[Hit], first: usize) -> String {
    if hits.is_empty() {
        return format!(
            "No results for: {}. Answer from what you know, and say that the documents did not cover it.",
            queries.join(" | ")
        );
    }
    let mut s = format!(
        "Results for: {}. Answer from them and cite each result you use by its number in brackets, like [{first}].\n\n",
        queries.join(" | ")
    );
    for (i, h) in hits.iter().enumerate() {
        s.push_str(&format!("[{}] {} ({})\n", first + i, h.filename, h.file_id));
        s.push_str(h.text.trim());
        s.push_str("\n\n");
    }
    s
}

/// A `file_search_call` output item; its results only when asked for
/// (`include: ["file_search_call.results"]`).
pub fn call_item(id: &str, status: &str, queries: &[String], hits: Option<&[Hit]>) -> Value {
    json!({
        "type": "file_search_call", "id": id, "status": status, "queries": queries,
        "results": hits.map(|hs| hs.iter().map(|h| json!({
            "file_id": h.file_id, "filename": h.filename, "score": h.score,
            "text": h.text, "attributes": h.attributes,
        })).collect::<Vec<_>>()),
    })
}

/// The `file_citation` annotations of an answer's text, given every result shown to
/// the model (numbered from 1), in order of their place in the text.
pub fn citations(text: &str, sources: &[Hit]) -> Vec<Value> {
    if sources.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<(usize, usize)> = Vec::new(); // (char index, source)
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
                found.push((i, n - 1));
                cited[n - 1] = true;
                i = j;
            }
        }
        i += 1;
    }
    // Quotes of results not cited by marker.
    for (k, s) in sources.iter().enumerate() {
        if cited[k] {
            continue;
        }
        for sentence in s.text.split_inclusive(['.', '!', '?', '\n']) {
            let sentence = sentence.trim();
            if sentence.split_whitespace().count() < 6 {
                continue;
            }
            if let Some(at) = text.find(sentence) {
                let end = text[..at + sentence.len()].chars().count();
                found.push((end, k));
                cited[k] = true;
                break;
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(index, k)| {
            json!({"type": "file_citation", "file_id": sources[k].file_id,
                   "filename": sources[k].filename, "index": index})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(file: &str, text: &str) -> Hit {
        Hit {
            store_id: "vs".into(),
            file_id: file.into(),
            filename: format!("{file}.md"),
            score: 0.5,
            attributes: json!({}),
            text: text.into(),
        }
    }

    #[test]
    fn markers_and_quotes_are_cited() {
        let sources = [
            hit(
                "a",
                "Glaciers carve deep valleys as the ice moves downhill.",
            ),
            hit(
                "b",
                "Bees dance to show the hive where the flowers are found.",
            ),
            hit("c", "Unrelated text that nobody quotes here at all."),
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
    fn arguments_give_queries() {
        assert_eq!(
            queries_of(r#"{"queries": ["a", " ", "b"]}"#),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(queries_of(r#"{"query": "a"}"#), Some(vec!["a".into()]));
        assert_eq!(queries_of(r#"{"queries": []}"#), None);
        assert_eq!(queries_of("not json"), None);
    }

    #[test]
    fn results_are_numbered_for_the_model() {
        let m = tool_message(&["q".into()], &[hit("a", "one"), hit("b", "two")], 3);
        assert!(
            m.contains("[3] a.md (a)\none") && m.contains("[4] b.md (b)\ntwo"),
            "{m}"
        );
        assert!(tool_message(&["q".into()], &[], 1).starts_with("No results"));
    }
}
