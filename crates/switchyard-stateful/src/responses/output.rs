//! The Response object: built from the request and the engine's chat completion
//! (output items, status, usage), in the shape the OpenAI SDK validates.

use serde_json::{Value, json};

use super::request::{Format, ResponseRequest, Truncation};

/// Why a response ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    /// Cut by `max_output_tokens`.
    Incomplete,
    Failed {
        code: String,
        message: String,
    },
    Cancelled,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed { .. } => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Token counts, in the Responses API's names.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// From a chat completion's `usage`.
    pub fn from_chat(u: &Value) -> Usage {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        Usage {
            input_tokens: n(&u["prompt_tokens"]),
            cached_tokens: n(&u["prompt_tokens_details"]["cached_tokens"]),
            output_tokens: n(&u["completion_tokens"]),
            reasoning_tokens: n(&u["completion_tokens_details"]["reasoning_tokens"]),
        }
    }

    /// The sum of two rounds' usage.
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + o.input_tokens,
            cached_tokens: self.cached_tokens + o.cached_tokens,
            output_tokens: self.output_tokens + o.output_tokens,
            reasoning_tokens: self.reasoning_tokens + o.reasoning_tokens,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            // Prefix caching writes what it did not find.
            "input_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.input_tokens.saturating_sub(self.cached_tokens),
            },
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }
}

/// Makes the ids of output items (`msg_…`, `fc_…`, `rs_…`).
pub trait Ids {
    fn id(&mut self, prefix: &str) -> String;
}

/// The output items of an engine's chat completion `message`: a reasoning item when it
/// has `reasoning_content`, a message with its text, a function call per tool call.
pub fn output_items(message: &Value, ids: &mut dyn Ids) -> Vec<Value> {
    let mut out = Vec::new();
    let reasoning = message
        .get("reasoning_content")
        .or_else(|| message.get("reasoning"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if let Some(r) = reasoning {
        out.push(json!({
            "type": "reasoning", "id": ids.id("rs_"), "summary": [],
            "content": [{"type": "reasoning_text", "text": r}],
        }));
    }
    if let Some(text) = message.get("content").and_then(Value::as_str)
        && (!text.is_empty() || message.get("tool_calls").is_none_or(Value::is_null))
    {
        out.push(json!({
            "type": "message", "id": ids.id("msg_"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(json!({
            "type": "function_call", "id": ids.id("fc_"),
            "call_id": call["id"].as_str().map_or_else(|| ids.id("call_"), str::to_string),
            "name": call["function"]["name"].as_str().unwrap_or_default(),
            "arguments": call["function"]["arguments"].as_str().unwrap_or("{}"),
            "status": "completed",
        }));
    }
    out
}

/// Everything a Response object shows besides its output.
#[derive(Clone, Debug)]
pub struct Envelope<'a> {
    pub id: &'a str,
    pub created_at: i64,
    pub request: &'a ResponseRequest,
    /// The model that served it (after selection and fallbacks).
    pub model: &'a str,
    pub status: &'a Status,
    pub usage: Option<Usage>,
}

/// A failed Response's `error`. Its `code` is one of those the OpenAI SDK accepts
/// (`rate_limit_exceeded`, else `server_error`: a strict client would reject any other);
/// the gateway's own reason (`server_restarted`, `no_healthy_worker`, …) is kept as
/// `reason`.
pub fn error_json(code: &str, message: &str) -> Value {
    let sdk = match code {
        "rate_limit_exceeded" | "rate_limited" => "rate_limit_exceeded",
        _ => "server_error",
    };
    json!({"code": sdk, "message": message, "reason": code})
}

/// The Response object.
pub fn response_json(env: &Envelope<'_>, output: &[Value]) -> Value {
    let r = env.request;
    let (error, incomplete) = match env.status {
        Status::Failed { code, message } => (error_json(code, message), Value::Null),
        Status::Incomplete => (Value::Null, json!({"reason": "max_output_tokens"})),
        _ => (Value::Null, Value::Null),
    };
    let format = match &r.format {
        Format::Text => json!({"type": "text"}),
        Format::JsonObject => json!({"type": "json_object"}),
        Format::JsonSchema {
            name,
            schema,
            strict,
        } => {
            json!({"type": "json_schema", "name": name, "schema": schema, "strict": strict})
        }
    };
    let mut tools: Vec<Value> = r
        .tools
        .iter()
        .map(|t| {
            let f = &t["function"];
            json!({
                "type": "function", "name": f["name"], "description": f.get("description"),
                "parameters": f.get("parameters"), "strict": f.get("strict").cloned().unwrap_or(json!(true)),
            })
        })
        .collect();
    if let Some(fs) = &r.file_search {
        tools.push(fs.echo.clone());
    }
    if let Some(ws) = &r.web_search {
        tools.push(ws.echo.clone());
    }
    tools.extend(r.mcp.iter().map(|m| m.echo.clone()));
    let tool_choice = match &r.tool_choice {
        _ if r.mcp_choice.is_some() => {
            let (label, name) = r.mcp_choice.as_ref().expect("checked");
            json!({"type": "mcp", "server_label": label, "name": name})
        }
        None => json!("auto"),
        Some(Value::String(s)) => json!(s),
        Some(c)
            if r.file_search.is_some() && c["function"]["name"] == super::file_search::FUNCTION =>
        {
            json!({"type": "file_search"})
        }
        Some(c)
            if r.web_search.is_some() && c["function"]["name"] == super::web_search::FUNCTION =>
        {
            // The API's only tool_choice type for it (the SDK knows no other).
            json!({"type": "web_search_preview"})
        }
        Some(c) => json!({"type": "function", "name": c["function"]["name"]}),
    };
    json!({
        "id": env.id,
        "object": "response",
        "created_at": env.created_at,
        "status": env.status.as_str(),
        "background": r.background,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "model": env.model,
        "output": output,
        "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": r.previous_response_id,
        "conversation": r.conversation.as_ref().map(|c| json!({"id": c})),
        "reasoning": {"effort": null, "summary": null},
        "store": r.store,
        "temperature": r.temperature.unwrap_or(1.0),
        "text": {"format": format},
        "tool_choice": tool_choice,
        "tools": tools,
        "top_p": r.top_p.unwrap_or(1.0),
        "truncation": match r.truncation { Truncation::Auto => "auto", Truncation::Disabled => "disabled" },
        "usage": env.usage.map(|u| u.json()),
        "user": r.user,
        "metadata": r.metadata,
        "prompt_cache_key": r.prompt_cache_key,
    })
}

/// The status a chat completion's `finish_reason` gives.
pub fn status_of(finish_reason: Option<&str>) -> Status {
    match finish_reason {
        Some("length") => Status::Incomplete,
        _ => Status::Completed,
    }
}

/// Numbered ids (`msg_1`, `fc_2`, …), for tests.
#[cfg(test)]
pub(crate) struct Seq(pub u32);

#[cfg(test)]
impl Ids for Seq {
    fn id(&mut self, prefix: &str) -> String {
        self.0 += 1;
        format!("{prefix}{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_message_becomes_reasoning_text_and_calls() {
        let items = output_items(
            &json!({"role": "assistant", "content": "Let me check.", "reasoning_content": "think",
                    "tool_calls": [{"id": "call_7", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}),
            &mut Seq(0),
        );
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["type"], "reasoning");
        assert_eq!(items[0]["content"][0]["text"], "think");
        assert_eq!(
            items[1]["content"][0],
            json!({"type": "output_text", "text": "Let me check.", "annotations": []})
        );
        assert_eq!(items[2]["call_id"], "call_7");
        assert_eq!(items[2]["arguments"], "{\"city\":\"Oslo\"}");
        // Only calls, no text: no empty message item.
        let items = output_items(
            &json!({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
            &mut Seq(0),
        );
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["type"], "function_call");
    }

    #[test]
    fn the_response_object_has_every_field_and_its_status() {
        let req =
            ResponseRequest::parse(&json!({"model": "m", "input": "hi", "max_output_tokens": 16}))
                .unwrap();
        let usage = Usage::from_chat(&json!({"prompt_tokens": 10, "completion_tokens": 16,
                                            "prompt_tokens_details": {"cached_tokens": 8}}));
        let status = status_of(Some("length"));
        let r = response_json(
            &Envelope {
                id: "resp_1",
                created_at: 5,
                request: &req,
                model: "m",
                status: &status,
                usage: Some(usage),
            },
            &[],
        );
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["usage"]["total_tokens"], 26);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 8);
        for key in [
            "id",
            "object",
            "created_at",
            "model",
            "output",
            "parallel_tool_calls",
            "tool_choice",
            "tools",
            "error",
            "instructions",
            "metadata",
            "temperature",
            "top_p",
            "text",
            "truncation",
        ] {
            assert!(r.get(key).is_some(), "{key}");
        }
        let failed = Status::Failed {
            code: "server_error".into(),
            message: "engine down".into(),
        };
        let r = response_json(
            &Envelope {
                id: "resp_2",
                created_at: 5,
                request: &req,
                model: "m",
                status: &failed,
                usage: None,
            },
            &[],
        );
        assert_eq!(r["error"]["code"], "server_error");
        // A gateway reason the SDK does not know is kept apart from the SDK's code.
        let restarted = Status::Failed {
            code: "server_restarted".into(),
            message: "stopped".into(),
        };
        let r = response_json(
            &Envelope {
                id: "resp_3",
                created_at: 5,
                request: &req,
                model: "m",
                status: &restarted,
                usage: None,
            },
            &[],
        );
        assert_eq!(r["error"]["code"], "server_error");
        assert_eq!(r["error"]["reason"], "server_restarted");
        assert_eq!(r["usage"], Value::Null);
    }
}
