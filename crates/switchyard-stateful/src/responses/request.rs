//! A `POST /v1/responses` body, checked field by field (each error names its `param`),
//! and the engine chat completion it becomes.

use serde_json::{Map, Value, json};

use super::input::{BadInput, Item, parse_input};

/// `text.format`.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

/// `truncation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    Auto,
    Disabled,
}

/// The checked request.
#[derive(Clone, Debug)]
pub struct ResponseRequest {
    pub model: String,
    pub input: Vec<Item>,
    /// `input` as sent (stored as the response's input items).
    pub raw_input: Value,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<String>,
    pub store: bool,
    pub stream: bool,
    pub background: bool,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub metadata: Map<String, Value>,
    pub format: Format,
    /// Function tools in the chat API's shape.
    pub tools: Vec<Value>,
    /// `tool_choice` in the chat API's shape (`{"type": "file_search"}` is the search
    /// function by name).
    pub tool_choice: Option<Value>,
    /// The `file_search` tool, when offered.
    pub file_search: Option<super::file_search::FileSearchTool>,
    /// The `web_search` tool, when offered.
    pub web_search: Option<super::web_search::WebSearchTool>,
    /// The `mcp` tools (one per server label); their tools are listed by the service.
    pub mcp: Vec<super::mcp::McpTool>,
    /// `tool_choice: {"type": "mcp", "server_label", "name"?}`: the server's label and
    /// the tool named (checked once the server's tools are listed).
    pub mcp_choice: Option<(String, Option<String>)>,
    /// `max_tool_calls`: most built-in tool calls (searches) in the response.
    pub max_tool_calls: Option<u64>,
    pub parallel_tool_calls: Option<bool>,
    pub truncation: Truncation,
    pub include: Vec<String>,
    pub user: Option<String>,
    /// The routing session key: `prompt_cache_key`, else the chain's root (set later).
    pub prompt_cache_key: Option<String>,
}

fn bad(param: &str, message: impl Into<String>) -> BadInput {
    BadInput {
        message: message.into(),
        param: param.to_string(),
    }
}

fn opt_str(o: &Map<String, Value>, key: &str) -> Result<Option<String>, BadInput> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(bad(key, format!("`{key}` must not be empty"))),
        Some(_) => Err(bad(key, format!("`{key}` must be a string"))),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, BadInput> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(key, format!("`{key}` must be true or false"))),
    }
}

fn opt_number(
    o: &Map<String, Value>,
    key: &str,
    lo: f64,
    hi: f64,
) -> Result<Option<f64>, BadInput> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(bad(
                key,
                format!("`{key}` must be a number from {lo} to {hi}"),
            )),
        },
    }
}

fn format(o: &Map<String, Value>) -> Result<Format, BadInput> {
    let Some(text) = o.get("text").filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    let Some(f) = text.get("format").filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            let name = match f.get("name") {
                Some(Value::String(n))
                    if !n.is_empty()
                        && n.len() <= 64
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    n.clone()
                }
                _ => {
                    return Err(bad(
                        "text.format.name",
                        "`name` must be 1–64 letters, digits, underscores or dashes",
                    ));
                }
            };
            let schema = match f.get("schema") {
                Some(s @ Value::Object(m)) if schema_is_sane(m) => s.clone(),
                _ => {
                    return Err(bad(
                        "text.format.schema",
                        "`schema` must be a JSON Schema object (with a string `type` or \
                         `properties`, `anyOf`, `$ref`…)",
                    ));
                }
            };
            let strict = match f.get("strict") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(bad("text.format.strict", "`strict` must be true or false")),
            };
            Ok(Format::JsonSchema {
                name,
                schema,
                strict,
            })
        }
        _ => Err(bad(
            "text.format.type",
            "`text.format.type` must be text, json_object or json_schema",
        )),
    }
}

/// A schema the engine's guided decoding can take: an object whose `type` (if any) is
/// a JSON Schema type or a list of them, and whose `properties` (if any) are objects.
fn schema_is_sane(m: &Map<String, Value>) -> bool {
    const TYPES: [&str; 7] = [
        "object", "array", "string", "number", "integer", "boolean", "null",
    ];
    let type_ok = match m.get("type") {
        None => [
            "properties",
            "anyOf",
            "oneOf",
            "allOf",
            "$ref",
            "enum",
            "const",
        ]
        .iter()
        .any(|k| m.contains_key(*k)),
        Some(Value::String(t)) => TYPES.contains(&t.as_str()),
        Some(Value::Array(ts)) => {
            !ts.is_empty()
                && ts
                    .iter()
                    .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t)))
        }
        Some(_) => false,
    };
    let props_ok = match m.get("properties") {
        None => true,
        Some(Value::Object(p)) => p.values().all(Value::is_object),
        Some(_) => false,
    };
    type_ok && props_ok
}

type Tools = (
    Vec<Value>,
    Option<super::file_search::FileSearchTool>,
    Option<super::web_search::WebSearchTool>,
    Vec<super::mcp::McpTool>,
);

/// Whether a tool is one the gateway runs itself.
fn hosted(t: &Value) -> bool {
    let ty = t.get("type").and_then(Value::as_str).unwrap_or_default();
    ty == "file_search" || ty == super::mcp::TYPE || super::web_search::TYPES.contains(&ty)
}

/// Function tools, into the chat API's `{"type": "function", "function": {…}}`, and the
/// `file_search` and `web_search` tools (at most one each), and the `mcp` tools (one
/// per server label).
fn tools(o: &Map<String, Value>) -> Result<Tools, BadInput> {
    let list = match o.get("tools") {
        None | Some(Value::Null) => return Ok((Vec::new(), None, None, Vec::new())),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(bad("tools", "`tools` must be a list")),
    };
    let mut search = None;
    let mut web = None;
    let mut mcp: Vec<super::mcp::McpTool> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let ty = t.get("type").and_then(Value::as_str).unwrap_or_default();
        if ty == super::mcp::TYPE {
            let at = format!("tools[{i}]");
            let obj = t
                .as_object()
                .ok_or_else(|| bad(&at, "a tool must be an object"))?;
            let m = super::mcp::McpTool::parse(obj, &at)?;
            if mcp.iter().any(|o| o.server.label == m.server.label) {
                return Err(bad(
                    &format!("{at}.server_label"),
                    "two mcp tools have this `server_label`: give each server its own",
                ));
            }
            mcp.push(m);
        }
        if super::web_search::TYPES.contains(&ty) {
            let at = format!("tools[{i}]");
            if web.is_some() {
                return Err(bad(&at, "offer one `web_search` tool"));
            }
            let obj = t
                .as_object()
                .ok_or_else(|| bad(&at, "a tool must be an object"))?;
            web = Some(super::web_search::WebSearchTool::parse(obj, &at)?);
        }
        if ty == "file_search" {
            let at = format!("tools[{i}]");
            if search.is_some() {
                return Err(bad(
                    &at,
                    "offer one `file_search` tool (list every vector store in it)",
                ));
            }
            let obj = t
                .as_object()
                .ok_or_else(|| bad(&at, "a tool must be an object"))?;
            search = Some(super::file_search::FileSearchTool::parse(obj, &at)?);
        }
    }
    let functions = list
        .iter()
        .enumerate()
        .filter(|(_, t)| !hosted(t))
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let name = match t.get("name") {
                        Some(Value::String(n)) if !n.is_empty() => n.clone(),
                        _ => {
                            return Err(bad(
                                &format!("{at}.name"),
                                "a function tool needs a `name`",
                            ));
                        }
                    };
                    let mut f = json!({"name": name});
                    for key in ["description", "parameters", "strict"] {
                        if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                            f[key] = v.clone();
                        }
                    }
                    if f.get("parameters").is_some_and(|p| !p.is_object()) {
                        return Err(bad(
                            &format!("{at}.parameters"),
                            "`parameters` must be a JSON Schema object",
                        ));
                    }
                    Ok(json!({"type": "function", "function": f}))
                }
                Some(other) => Err(bad(
                    &format!("{at}.type"),
                    format!(
                        "tool type `{other}` is not supported (function, file_search, web_search and mcp tools are)"
                    ),
                )),
                None => Err(bad(&format!("{at}.type"), "a tool needs a `type`")),
            }
        })
        .collect::<Result<Vec<Value>, BadInput>>()?;
    for (offered, name) in [
        (search.is_some(), super::file_search::FUNCTION),
        (web.is_some(), super::web_search::FUNCTION),
    ] {
        if offered
            && let Some(i) = list.iter().position(|t| {
                t.get("type").and_then(Value::as_str) == Some("function")
                    && t.get("name").and_then(Value::as_str) == Some(name)
            })
        {
            return Err(bad(
                &format!("tools[{i}].name"),
                format!("a function cannot be named {name} alongside the {name} tool"),
            ));
        }
    }
    Ok((functions, search, web, mcp))
}

/// `tool_choice` in the chat API's shape, and the MCP server it names, if it does.
#[allow(clippy::type_complexity)]
fn tool_choice(
    o: &Map<String, Value>,
) -> Result<(Option<Value>, Option<(String, Option<String>)>), BadInput> {
    if let Some(c) = o
        .get("tool_choice")
        .filter(|c| c["type"] == super::mcp::TYPE)
    {
        let label = match c.get("server_label") {
            Some(Value::String(l)) if !l.is_empty() => l.clone(),
            _ => {
                return Err(bad(
                    "tool_choice.server_label",
                    "an mcp `tool_choice` needs the server's `server_label`",
                ));
            }
        };
        return match c.get("name") {
            None | Some(Value::Null) => Ok((Some(json!("required")), Some((label, None)))),
            Some(Value::String(n)) if !n.is_empty() => Ok((
                Some(json!({"type": "function", "function": {"name": n}})),
                Some((label, Some(n.clone()))),
            )),
            Some(_) => Err(bad(
                "tool_choice.name",
                "`name` must be the name of one of the server's tools",
            )),
        };
    }
    plain_tool_choice(o).map(|c| (c, None))
}

fn plain_tool_choice(o: &Map<String, Value>) -> Result<Option<Value>, BadInput> {
    match o.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if ["none", "auto", "required"].contains(&s.as_str()) => {
            Ok(Some(json!(s)))
        }
        Some(v) if v.get("type").and_then(Value::as_str) == Some("file_search") => Ok(Some(
            json!({"type": "function", "function": {"name": super::file_search::FUNCTION}}),
        )),
        Some(v)
            if v.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("web_search_preview")) =>
        {
            Ok(Some(
                json!({"type": "function", "function": {"name": super::web_search::FUNCTION}}),
            ))
        }
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            match v.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => {
                    Ok(Some(json!({"type": "function", "function": {"name": n}})))
                }
                _ => Err(bad(
                    "tool_choice.name",
                    "`tool_choice` needs the function's `name`",
                )),
            }
        }
        Some(_) => Err(bad(
            "tool_choice",
            "`tool_choice` must be none, auto, required, {\"type\": \"file_search\"}, {\"type\": \"web_search_preview\"}, {\"type\": \"mcp\", \"server_label\"} or {\"type\": \"function\", \"name\"}",
        )),
    }
}

/// `metadata`: at most 16 string values, keys of at most 64 characters.
pub(crate) fn metadata(o: &Map<String, Value>) -> Result<Map<String, Value>, BadInput> {
    match o.get("metadata") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            if m.len() > 16 {
                return Err(bad("metadata", "`metadata` holds at most 16 keys"));
            }
            for (k, v) in m {
                if k.len() > 64 {
                    return Err(bad(
                        "metadata",
                        format!("metadata key `{k}` is over 64 characters"),
                    ));
                }
                if v.as_str().is_none_or(|s| s.len() > 512) {
                    return Err(bad(
                        "metadata",
                        format!(
                            "metadata value of `{k}` must be a string of at most 512 characters"
                        ),
                    ));
                }
            }
            Ok(m.clone())
        }
        Some(_) => Err(bad("metadata", "`metadata` must be an object of strings")),
    }
}

impl ResponseRequest {
    /// Checks a request body.
    pub fn parse(body: &Value) -> Result<ResponseRequest, BadInput> {
        let Some(o) = body.as_object() else {
            return Err(bad("", "the body must be a JSON object"));
        };
        let model = opt_str(o, "model")?.ok_or_else(|| bad("model", "`model` is required"))?;
        let raw_input = o.get("input").cloned().unwrap_or(Value::Null);
        let input = match &raw_input {
            Value::Null => Vec::new(),
            v => parse_input(v)?,
        };
        let previous_response_id = opt_str(o, "previous_response_id")?;
        let conversation = match o.get("conversation") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Object(c)) => match c.get("id") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                _ => return Err(bad("conversation.id", "`conversation.id` must be a string")),
            },
            Some(_) => {
                return Err(bad(
                    "conversation",
                    "`conversation` must be an id or {\"id\": …}",
                ));
            }
        };
        if previous_response_id.is_some() && conversation.is_some() {
            return Err(bad(
                "conversation",
                "`previous_response_id` and `conversation` cannot be used together",
            ));
        }
        if input.is_empty() && previous_response_id.is_none() && conversation.is_none() {
            return Err(bad("input", "`input` is required"));
        }
        let max_output_tokens = match o.get("max_output_tokens") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 16 => Some(n),
                _ => {
                    return Err(bad(
                        "max_output_tokens",
                        "`max_output_tokens` must be an integer of at least 16",
                    ));
                }
            },
        };
        let truncation = match opt_str(o, "truncation")?.as_deref() {
            None | Some("disabled") => Truncation::Disabled,
            Some("auto") => Truncation::Auto,
            Some(_) => return Err(bad("truncation", "`truncation` must be auto or disabled")),
        };
        let include = match o.get("include") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(l)) => l
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("include", "`include` must list strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("include", "`include` must be a list")),
        };
        let store = opt_bool(o, "store")?.unwrap_or(true);
        let background = opt_bool(o, "background")?.unwrap_or(false);
        if background && !store {
            return Err(bad(
                "background",
                "a background response must be stored (`store: true`)",
            ));
        }
        let (tools, file_search, web_search, mcp) = tools(o)?;
        let (tool_choice, mcp_choice) = tool_choice(o)?;
        if let Some((label, _)) = &mcp_choice
            && !mcp.iter().any(|m| &m.server.label == label)
        {
            return Err(bad(
                "tool_choice.server_label",
                format!(
                    "`tool_choice` names the MCP server `{label}`, which is not among the tools"
                ),
            ));
        }
        let forced = tool_choice
            .as_ref()
            .filter(|_| mcp_choice.is_none())
            .and_then(|c| c["function"]["name"].as_str())
            .map(str::to_string);
        if let Some(name) = forced {
            let offered = (name == super::file_search::FUNCTION && file_search.is_some())
                || (name == super::web_search::FUNCTION && web_search.is_some())
                || tools.iter().any(|t| t["function"]["name"] == name.as_str());
            if !offered {
                return Err(bad(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not among the tools"),
                ));
            }
        }
        let max_tool_calls = match o.get("max_tool_calls") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    return Err(bad(
                        "max_tool_calls",
                        "`max_tool_calls` must be an integer of at least 1",
                    ));
                }
            },
        };
        Ok(ResponseRequest {
            model,
            input,
            raw_input,
            instructions: opt_str(o, "instructions")?,
            previous_response_id,
            conversation,
            store,
            stream: opt_bool(o, "stream")?.unwrap_or(false),
            background,
            max_output_tokens,
            temperature: opt_number(o, "temperature", 0.0, 2.0)?,
            top_p: opt_number(o, "top_p", 0.0, 1.0)?,
            metadata: metadata(o)?,
            format: format(o)?,
            tools,
            tool_choice,
            file_search,
            web_search,
            mcp,
            mcp_choice,
            max_tool_calls,
            parallel_tool_calls: opt_bool(o, "parallel_tool_calls")?,
            truncation,
            include,
            user: opt_str(o, "user")?,
            prompt_cache_key: opt_str(o, "prompt_cache_key")?,
        })
    }

    /// The engine's chat completion body for `messages` (the whole context).
    pub fn chat_body(&self, messages: Vec<Value>, stream: bool) -> Value {
        let mut b = json!({"model": self.model, "messages": messages, "stream": stream});
        if stream {
            b["stream_options"] = json!({"include_usage": true});
        }
        if let Some(n) = self.max_output_tokens {
            b["max_tokens"] = json!(n);
        }
        if let Some(t) = self.temperature {
            b["temperature"] = json!(t);
        }
        if let Some(p) = self.top_p {
            b["top_p"] = json!(p);
        }
        match &self.format {
            Format::Text => {}
            Format::JsonObject => b["response_format"] = json!({"type": "json_object"}),
            Format::JsonSchema {
                name,
                schema,
                strict,
            } => {
                let mut js = json!({"name": name, "schema": schema});
                if let Some(s) = strict {
                    js["strict"] = json!(s);
                }
                b["response_format"] = json!({"type": "json_schema", "json_schema": js});
            }
        }
        let mut tools = self.tools.clone();
        if self.file_search.is_some() {
            tools.push(super::file_search::FileSearchTool::function());
        }
        if self.web_search.is_some() {
            tools.push(super::web_search::WebSearchTool::function());
        }
        for m in &self.mcp {
            tools.extend(m.functions());
        }
        if !tools.is_empty() {
            b["tools"] = json!(tools);
            if let Some(c) = &self.tool_choice {
                b["tool_choice"] = c.clone();
            }
            if let Some(p) = self.parallel_tool_calls {
                b["parallel_tool_calls"] = json!(p);
            }
        }
        if let Some(u) = &self.user {
            b["user"] = json!(u);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_request_becomes_the_engine_chat_body() {
        let r = ResponseRequest::parse(&json!({
            "model": "m", "input": "hi", "instructions": "be brief",
            "max_output_tokens": 64, "temperature": 0.5, "top_p": 0.9,
            "text": {"format": {"type": "json_schema", "name": "answer", "strict": true,
                     "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": false, "user": "u1", "metadata": {"k": "v"},
            "truncation": "auto", "prompt_cache_key": "pk"
        }))
        .unwrap();
        assert!(r.store && !r.stream && !r.background);
        assert_eq!(r.truncation, Truncation::Auto);
        let b = r.chat_body(vec![json!({"role": "user", "content": "hi"})], true);
        assert_eq!(b["max_tokens"], 64);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["response_format"]["json_schema"]["name"], "answer");
        assert_eq!(b["response_format"]["json_schema"]["strict"], true);
        assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(b["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(b["parallel_tool_calls"], false);
        assert_eq!(b["user"], "u1");
    }

    #[test]
    fn every_bad_field_names_its_param() {
        let cases = [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "conversation": 5}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 3}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "temperature": 3}),
                "temperature",
            ),
            (
                json!({"model": "m", "input": "x", "top_p": "high"}),
                "top_p",
            ),
            (json!({"model": "m", "input": "x", "store": "yes"}), "store"),
            (
                json!({"model": "m", "input": "x", "background": true, "store": false}),
                "background",
            ),
            (
                json!({"model": "m", "input": "x", "truncation": "sometimes"}),
                "truncation",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
                "text.format.type",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a b", "schema": {"type": "object"}}}}),
                "text.format.name",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "banana"}}}}),
                "text.format.schema",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": "{}"}}}),
                "text.format.schema",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
                "tools[0].name",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "computer_use"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": "x", "metadata": {"k": 1}}),
                "metadata",
            ),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
        ];
        for (body, param) in cases {
            let e = ResponseRequest::parse(&body).unwrap_err();
            assert_eq!(e.param, param, "{body}: {}", e.message);
        }
    }
}
