//! The `web_search` tool of the Responses API (docs/tools.md): the engine is offered a
//! function of that name; when the model calls it, the gateway asks the operator's
//! search provider ([`super::tools::WebSearch`]), answers the call with the numbered
//! results, and the answer's text gets a `url_citation` for each result it cites.

use serde_json::{Map, Value, json};

use super::input::BadInput;
use super::tools::WebResult;

/// The function's name, as the engine sees it.
pub const FUNCTION: &str = "web_search";

/// The tool types a request may offer it as.
pub const TYPES: [&str; 4] = [
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
];

/// A request's `web_search` tool, checked.
#[derive(Clone, Debug)]
pub struct WebSearchTool {
    /// Where the request offered it (`tools[i]`).
    pub param: String,
    /// Results asked of the provider per search (`search_context_size`: low 3, medium
    /// 5, high 10).
    pub count: usize,
    /// `filters.allowed_domains`: only pages of these domains.
    pub domains: Vec<String>,
    /// The tool as the Response object shows it.
    pub echo: Value,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadInput {
    BadInput {
        message: message.into(),
        param: param.into(),
    }
}

impl WebSearchTool {
    /// `{"type": "web_search", "search_context_size"?, "filters"?: {"allowed_domains"},
    /// "user_location"?}` at `at` (`tools[i]`).
    pub fn parse(t: &Map<String, Value>, at: &str) -> Result<WebSearchTool, BadInput> {
        let count = match t.get("search_context_size") {
            None | Some(Value::Null) => 5,
            Some(Value::String(s)) if s == "low" => 3,
            Some(Value::String(s)) if s == "medium" => 5,
            Some(Value::String(s)) if s == "high" => 10,
            Some(_) => {
                return Err(bad(
                    format!("{at}.search_context_size"),
                    "`search_context_size` must be low, medium or high",
                ));
            }
        };
        let domains = match t.get("filters") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(f)) => match f.get("allowed_domains") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(l))
                    if l.len() <= 100
                        && l.iter().all(|d| {
                            d.as_str().is_some_and(|d| {
                                !d.is_empty() && d.len() <= 253 && !d.contains(['/', ' ', ':'])
                            })
                        }) =>
                {
                    l.iter()
                        .filter_map(|d| d.as_str().map(str::to_ascii_lowercase))
                        .collect()
                }
                Some(_) => {
                    return Err(bad(
                        format!("{at}.filters.allowed_domains"),
                        "`allowed_domains` must list up to 100 domain names (no scheme or path)",
                    ));
                }
            },
            Some(_) => return Err(bad(format!("{at}.filters"), "`filters` must be an object")),
        };
        if t.get("user_location")
            .is_some_and(|l| !l.is_null() && !l.is_object())
        {
            return Err(bad(
                format!("{at}.user_location"),
                "`user_location` must be an object",
            ));
        }
        let mut echo = json!({
            "type": t.get("type").cloned().unwrap_or(json!("web_search")),
            "search_context_size": t.get("search_context_size").filter(|v| !v.is_null())
                .cloned().unwrap_or(json!("medium")),
        });
        if !domains.is_empty() {
            echo["filters"] = json!({"allowed_domains": domains});
        }
        if let Some(l) = t.get("user_location").filter(|l| !l.is_null()) {
            echo["user_location"] = l.clone();
        }
        Ok(WebSearchTool {
            param: at.to_string(),
            count,
            domains,
            echo,
        })
    }

    /// The function offered to the engine.
    pub fn function() -> Value {
        json!({"type": "function", "function": {
            "name": FUNCTION,
            "description": "Search the web for current information. Call it for anything \
                that may have changed or that you do not know; then answer from the \
                results and cite them by number, like [1].",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "The search query"}},
                "required": ["query"]
            }
        }})
    }
}

/// The query of a call's arguments (`{"query": "..."}`, or the first of `{"queries":
/// [...]}`); `None` when it holds none.
pub fn query_of(arguments: &str) -> Option<String> {
    let v: Value = serde_json::from_str(arguments).ok()?;
    let q = match (&v["query"], &v["queries"]) {
        (Value::String(q), _) => q.clone(),
        (_, Value::Array(l)) => l.iter().find_map(|q| q.as_str())?.to_string(),
        _ => return None,
    };
    let q: String = q.trim().chars().take(1000).collect();
    (!q.is_empty()).then_some(q)
}

/// A `web_search_call` output item; the pages it found only when asked for
/// (`include: ["web_search_call.action.sources"]`).
pub fn call_item(id: &str, status: &str, query: &str, sources: Option<&[WebResult]>) -> Value {
    let mut action = json!({"type": "search", "query": query});
    if let Some(s) = sources {
        action["sources"] = s
            .iter()
            .map(|r| json!({"type": "url", "url": r.url}))
            .collect();
    }
    json!({"type": "web_search_call", "id": id, "status": status, "action": action})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<WebSearchTool, BadInput> {
        WebSearchTool::parse(v.as_object().unwrap(), "tools[1]")
    }

    #[test]
    fn a_tool_is_checked_and_echoed() {
        let t = parse(
            json!({"type": "web_search_preview", "search_context_size": "high",
                             "filters": {"allowed_domains": ["Docs.Example.org"]},
                             "user_location": {"type": "approximate", "country": "NO"}}),
        )
        .unwrap();
        assert_eq!(
            (t.count, t.domains.clone()),
            (10, vec!["docs.example.org".into()])
        );
        assert_eq!(t.echo["type"], "web_search_preview");
        assert_eq!(t.echo["user_location"]["country"], "NO");
        assert_eq!(parse(json!({"type": "web_search"})).unwrap().count, 5);
        for (v, param) in [
            (
                json!({"search_context_size": "huge"}),
                "tools[1].search_context_size",
            ),
            (json!({"filters": []}), "tools[1].filters"),
            (
                json!({"filters": {"allowed_domains": ["https://x.org/a"]}}),
                "tools[1].filters.allowed_domains",
            ),
            (
                json!({"filters": {"allowed_domains": "x.org"}}),
                "tools[1].filters.allowed_domains",
            ),
            (json!({"user_location": "Oslo"}), "tools[1].user_location"),
        ] {
            assert_eq!(parse(v).unwrap_err().param, param);
        }
    }

    #[test]
    fn arguments_give_the_query_and_the_item_its_sources() {
        assert_eq!(query_of(r#"{"query": " otters "}"#), Some("otters".into()));
        assert_eq!(query_of(r#"{"queries": ["a", "b"]}"#), Some("a".into()));
        assert_eq!(query_of(r#"{"query": ""}"#), None);
        assert_eq!(query_of("{"), None);
        let r = WebResult {
            title: "t".into(),
            url: "https://a.example/".into(),
            snippet: "s".into(),
        };
        let item = call_item("ws_1", "completed", "q", Some(&[r]));
        assert_eq!(
            item,
            json!({"type": "web_search_call", "id": "ws_1", "status": "completed",
                   "action": {"type": "search", "query": "q",
                              "sources": [{"type": "url", "url": "https://a.example/"}]}})
        );
        assert!(
            call_item("ws_1", "failed", "q", None)["action"]
                .get("sources")
                .is_none()
        );
    }
}
