//! The `file_search` tool of the Responses API (docs/files-and-vector-stores.md,
//! "file_search in Responses"): the engine is offered a function of that name; when the
//! model calls it, the gateway searches the request's vector stores, answers the call
//! with the numbered results, and lets the model go on, round after round, until it
//! answers (bounded by `max_tool_calls` and the gateway's limit).
//!
//! Results are numbered and cited as every server-side tool's are (`super::tools`).

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
