//! Tool calls, as a chat model makes them, decided without a model so that tests can
//! rely on them (docs/simulator.md):
//!
//! - with `tools` offered and `tool_choice` `auto` (the default), the model calls a
//!   tool when the conversation ends with a user message, and answers in text once a
//!   tool result (`role: tool`) is the last message;
//! - `required` always calls, `none` never does, `{"type": "function", "function":
//!   {"name"}}` calls that function;
//! - the tool called is the one whose name the last user message mentions most (as a
//!   whole word), else the first offered;
//! - its arguments are an instance of the function's `parameters` schema, built as for
//!   structured outputs (`{}` without a schema), except a function named `file_search`,
//!   which is called with `{"queries": [the last user message]}`, and one named
//!   `web_search`, called with `{"query": the last user message}`; one call per answer,
//!   whatever `parallel_tool_calls` says;
//! - an answer in text right after a tool result quotes it: `According to [1], "…"`
//!   with the first sentence of the result numbered `[1]` (a search result list), else
//!   `The tool returned: …` with the start of the result.
//!
//! The arguments stream in pieces of four characters, one per token, and the answer
//! ends with `finish_reason: "tool_calls"` (`length` when `max_tokens` cuts it).

use serde_json::Value;

use super::super::ApiError;
use super::random_id;
use super::structured::{instance, mentions, steering_text};
use super::wire::GenRequest;

/// The call the answer makes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments (JSON text) in per-token pieces.
    pub pieces: Vec<String>,
}

fn bad(msg: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(msg, Some(param))
}

/// The offered functions: (name, parameters schema).
fn functions(tools: &Value) -> Result<Vec<(String, Value)>, ApiError> {
    let list = tools
        .as_array()
        .ok_or_else(|| bad("`tools` must be a list", "tools"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad(
                    "only function tools are supported",
                    &format!("tools[{i}].type"),
                ));
            }
            let f = &t["function"];
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        "a function needs a `name`",
                        &format!("tools[{i}].function.name"),
                    )
                })?;
            let params = f.get("parameters").cloned().unwrap_or(Value::Null);
            if !(params.is_null() || params.is_object()) {
                return Err(bad(
                    "`parameters` must be a JSON Schema object",
                    &format!("tools[{i}].function.parameters"),
                ));
            }
            Ok((name.to_string(), params))
        })
        .collect()
}

/// The tool call the answer to `req` makes, if any.
pub(super) fn tool_call(req: &GenRequest, seed: u64) -> Result<Option<ToolCall>, ApiError> {
    let Some(tools) = req.tools.as_ref().filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    let fns = functions(tools)?;
    if fns.is_empty() {
        return Ok(None);
    }
    let last_role = req
        .messages
        .as_ref()
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    let named = match req.tool_choice.as_ref() {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" if last_role != Some("user") => return Ok(None),
            "auto" | "required" => None,
            _ => {
                return Err(bad(
                    "`tool_choice` must be none, auto, required or a function",
                    "tool_choice",
                ));
            }
        },
        Some(v) => match v["function"]["name"].as_str() {
            Some(n) if fns.iter().any(|(f, _)| f == n) => Some(n.to_string()),
            Some(n) => {
                return Err(bad(
                    format!("`tool_choice` names `{n}`, which is not among the tools"),
                    "tool_choice",
                ));
            }
            None => return Err(bad("`tool_choice` needs `function.name`", "tool_choice")),
        },
    };
    if named.is_none() && req.tool_choice.is_none() && last_role != Some("user") {
        return Ok(None);
    }
    let text = steering_text(req);
    let name = named.unwrap_or_else(|| {
        fns.iter()
            .map(|(n, _)| (n, mentions(&text, n)))
            .filter(|(_, (k, _))| *k > 0)
            .max_by(|(_, (k1, f1)), (_, (k2, f2))| k1.cmp(k2).then(f2.cmp(f1)))
            .map_or_else(|| fns[0].0.clone(), |(n, _)| n.clone())
    });
    let schema = &fns
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a named tool")
        .1;
    let args = if name == "file_search" {
        serde_json::json!({"queries": [text.trim()]}).to_string()
    } else if name == "web_search" {
        serde_json::json!({"query": text.trim()}).to_string()
    } else if schema.is_null() {
        "{}".to_string()
    } else {
        instance(schema, &text, seed).to_string()
    };
    let chars: Vec<char> = args.chars().collect();
    Ok(Some(ToolCall {
        id: random_id("call"),
        name,
        pieces: chars.chunks(4).map(|c| c.iter().collect()).collect(),
    }))
}

/// The answer to a conversation whose last message is a tool result: a quote of it, in
/// per-token pieces (`None` when the last message is not a tool result).
pub(super) fn quoting_answer(req: &GenRequest) -> Option<Vec<String>> {
    let last = req.messages.as_ref()?.last()?;
    if last.get("role").and_then(Value::as_str) != Some("tool") {
        return None;
    }
    let content = match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    // A result list: the text under the line that starts with "[1]".
    let mut lines = content.lines();
    let first = lines.by_ref().find(|l| l.starts_with("[1]")).map(|_| {
        lines
            .take_while(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let answer = match first {
        Some(text) => {
            let sentence = text
                .split_inclusive(['.', '!', '?'])
                .next()
                .unwrap_or(&text)
                .trim();
            let quote: String = sentence.chars().take(300).collect();
            format!("According to [1], \"{quote}\"")
        }
        None => {
            let start: String = content.trim().chars().take(200).collect();
            format!("The tool returned: {start}")
        }
    };
    let chars: Vec<char> = answer.chars().collect();
    Some(chars.chunks(4).map(|c| c.iter().collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(v: Value) -> Result<Option<ToolCall>, ApiError> {
        tool_call(&serde_json::from_value(v).unwrap(), 3)
    }

    fn tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time"}}
        ])
    }

    #[test]
    fn the_model_calls_until_a_tool_answers() {
        let user = json!([{"role": "user", "content": "what is the time in Oslo? use get_time"}]);
        let c = call(json!({"messages": user, "tools": tools()}))
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "get_time");
        assert_eq!(c.pieces.concat(), "{}");
        let c = call(json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools()}))
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "get_weather", "none named: the first");
        let args: Value = serde_json::from_str(&c.pieces.concat()).unwrap();
        assert_eq!(args, json!({"city": "sim", "days": 0}));
        let after = json!([{"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "12:00"}]);
        assert_eq!(
            call(json!({"messages": after, "tools": tools()})).unwrap(),
            None
        );
        // `required` calls even then; `none` never; a named function is that one.
        assert!(
            call(json!({"messages": after, "tools": tools(), "tool_choice": "required"}))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            call(json!({"messages": user, "tools": tools(), "tool_choice": "none"})).unwrap(),
            None
        );
        let c = call(json!({"messages": user, "tools": tools(),
                            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})).unwrap().unwrap();
        assert_eq!(c.name, "get_weather");
    }

    #[test]
    fn file_search_is_called_with_the_question_and_its_results_are_quoted() {
        let search = json!([{"type": "function", "function": {"name": "file_search", "parameters": {
            "type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}}}}}]);
        let user = json!([{"role": "user", "content": "How do glaciers move?"}]);
        let c = call(json!({"messages": user, "tools": search}))
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "file_search");
        assert_eq!(
            c.pieces.concat(),
            r#"{"queries":["How do glaciers move?"]}"#
        );
        let req = |content: &str| -> GenRequest {
            serde_json::from_value(json!({"messages": [
                {"role": "user", "content": "q"},
                {"role": "tool", "tool_call_id": "c", "content": content}]}))
            .unwrap()
        };
        let listed = "Results:\n[1] ice.md (file-1)\nGlaciers flow downhill. They carve valleys.\n\n[2] b.md\nOther.";
        assert_eq!(
            quoting_answer(&req(listed)).unwrap().concat(),
            r#"According to [1], "Glaciers flow downhill.""#
        );
        assert_eq!(
            quoting_answer(&req("12:00")).unwrap().concat(),
            "The tool returned: 12:00"
        );
        assert_eq!(
            quoting_answer(&serde_json::from_value(json!({"messages": user})).unwrap()),
            None
        );
    }

    #[test]
    fn bad_tools_are_a_400() {
        let user = json!([{"role": "user", "content": "x"}]);
        for (tools, choice) in [
            (json!("get_time"), json!("auto")),
            (json!([{"type": "retrieval"}]), json!("auto")),
            (json!([{"type": "function", "function": {}}]), json!("auto")),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": 1}}]),
                json!("auto"),
            ),
            (tools(), json!("always")),
            (
                tools(),
                json!({"type": "function", "function": {"name": "nope"}}),
            ),
        ] {
            let e =
                call(json!({"messages": user, "tools": tools, "tool_choice": choice})).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }
}
