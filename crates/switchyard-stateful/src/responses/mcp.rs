//! Remote MCP tools of the Responses API (docs/tools.md): `{"type": "mcp",
//! "server_label", "server_url", ...}`. The gateway lists the server's tools (an
//! `mcp_list_tools` output item, reused along a response chain), offers them to the
//! engine as functions of the same names, and runs the model's calls on the server
//! (`mcp_call` items), after the client's approval when the tool requires it
//! (`mcp_approval_request`, answered by an `mcp_approval_response` input item in the
//! next response of the chain). The client that reaches the servers is the operator's
//! ([`McpClient`]): it decides which servers may be reached.

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::input::BadInput;

/// The tool type.
pub const TYPE: &str = "mcp";

/// A server a request names, with the headers to send it (never stored).
#[derive(Clone, Debug, PartialEq)]
pub struct McpServer {
    pub label: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A tool a server lists.
#[derive(Clone, Debug, PartialEq)]
pub struct McpToolDef {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Value,
    pub annotations: Option<Value>,
}

impl McpToolDef {
    /// As an `mcp_list_tools` item shows it.
    pub fn json(&self) -> Value {
        json!({"name": self.name, "description": self.description,
               "input_schema": self.input_schema, "annotations": self.annotations})
    }

    /// From an `mcp_list_tools` item of the context.
    fn from_json(v: &Value) -> Option<McpToolDef> {
        Some(McpToolDef {
            name: v["name"].as_str()?.to_string(),
            description: v["description"].as_str().map(str::to_string),
            input_schema: v
                .get("input_schema")
                .filter(|s| s.is_object())
                .cloned()
                .unwrap_or(json!({"type": "object"})),
            annotations: v.get("annotations").filter(|a| !a.is_null()).cloned(),
        })
    }

    fn read_only(&self) -> bool {
        self.annotations
            .as_ref()
            .and_then(|a| a["readOnlyHint"].as_bool())
            .unwrap_or(false)
    }
}

/// How a server failed, as an `mcp_call` item's `error` shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum McpFailure {
    /// A JSON-RPC error of the server, or the protocol broken (no answer, a bad one).
    Protocol { code: i64, message: String },
    /// An HTTP status that was not a success.
    Http { code: u16, message: String },
    /// The tool ran and reported an error (`isError`), with its content.
    Execution { content: Value },
}

impl McpFailure {
    pub fn json(&self) -> Value {
        match self {
            McpFailure::Protocol { code, message } => {
                json!({"type": "mcp_protocol_error", "code": code, "message": message})
            }
            McpFailure::Http { code, message } => {
                json!({"type": "http_error", "code": code, "message": message})
            }
            McpFailure::Execution { content } => {
                json!({"type": "mcp_tool_execution_error", "content": content})
            }
        }
    }

    /// What the model is told.
    pub fn message(&self) -> String {
        match self {
            McpFailure::Protocol { message, .. } => format!("The MCP server failed: {message}"),
            McpFailure::Http { code, message } => {
                format!("The MCP server answered HTTP {code}: {message}")
            }
            McpFailure::Execution { content } => {
                format!("The tool reported an error: {}", content_text(content))
            }
        }
    }
}

/// The text of an MCP result's content list (text parts joined; others as JSON).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["text"].as_str() {
                Some(t) if p["type"] == "text" => t.to_string(),
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What reaches MCP servers: the operator's client, with its allowlist.
pub trait McpClient: Send + Sync + 'static {
    /// Whether the operator lets requests reach `url`; the error says why not, naming
    /// no secret.
    fn allowed(&self, url: &str) -> Result<(), String>;

    /// The tools the server lists.
    fn list_tools(
        &self,
        server: McpServer,
    ) -> BoxFuture<'static, Result<Vec<McpToolDef>, McpFailure>>;

    /// Calls a tool: the text of its result.
    fn call_tool(
        &self,
        server: McpServer,
        name: String,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'static, Result<String, McpFailure>>;
}

/// `allowed_tools` or one side of `require_approval`: tool names, the read-only hint,
/// or both (a tool must match each given).
#[derive(Clone, Debug, PartialEq)]
struct ToolFilter {
    names: Option<Vec<String>>,
    read_only: Option<bool>,
}

impl ToolFilter {
    fn parse(v: &Value, at: &str) -> Result<ToolFilter, BadInput> {
        let names = |l: &Value, at: String| -> Result<Vec<String>, BadInput> {
            match l {
                Value::Array(l)
                    if l.len() <= 1000
                        && l.iter().all(|n| n.as_str().is_some_and(|n| !n.is_empty())) =>
                {
                    Ok(l.iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect())
                }
                _ => Err(bad(at, "must be a list of tool names")),
            }
        };
        match v {
            Value::Array(_) => Ok(ToolFilter {
                names: Some(names(v, at.to_string())?),
                read_only: None,
            }),
            Value::Object(o) => {
                if let Some(k) = o
                    .keys()
                    .find(|k| !["tool_names", "read_only"].contains(&k.as_str()))
                {
                    return Err(bad(
                        format!("{at}.{k}"),
                        "unknown field: a filter has tool_names and read_only",
                    ));
                }
                let names = match o.get("tool_names") {
                    None | Some(Value::Null) => None,
                    Some(l) => Some(names(l, format!("{at}.tool_names"))?),
                };
                let read_only = match o.get("read_only") {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => return Err(bad(format!("{at}.read_only"), "must be a boolean")),
                };
                Ok(ToolFilter { names, read_only })
            }
            _ => Err(bad(
                at,
                "must be a list of tool names or {\"tool_names\", \"read_only\"}",
            )),
        }
    }

    fn matches(&self, t: &McpToolDef) -> bool {
        self.names.as_ref().is_none_or(|n| n.contains(&t.name))
            && self.read_only.is_none_or(|r| t.read_only() == r)
    }
}

/// `require_approval`.
#[derive(Clone, Debug, PartialEq)]
enum Approval {
    Always,
    Never,
    /// Tools matching `never` (and not `always`) run without approval; all others ask.
    Filter {
        always: Option<ToolFilter>,
        never: Option<ToolFilter>,
    },
}

/// A request's `mcp` tool, checked; its server's tools once listed.
#[derive(Clone, Debug)]
pub struct McpTool {
    /// Where the request offered it (`tools[i]`).
    pub param: String,
    pub server: McpServer,
    allowed: Option<ToolFilter>,
    approval: Approval,
    /// The tool as the Response object shows it (no headers, no authorization).
    pub echo: Value,
    /// The tools the model is offered (listed, and allowed).
    pub offered: Vec<McpToolDef>,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadInput {
    BadInput {
        message: message.into(),
        param: param.into(),
    }
}

/// The header names a request may not set on an MCP server (the transport's own).
const RESERVED: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
];

impl McpTool {
    /// `{"type": "mcp", "server_label", "server_url", "allowed_tools"?,
    /// "require_approval"?, "headers"?, "authorization"?, "server_description"?}` at
    /// `at` (`tools[i]`).
    pub fn parse(t: &Map<String, Value>, at: &str) -> Result<McpTool, BadInput> {
        let label = match t.get("server_label") {
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= 64
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                s.clone()
            }
            _ => {
                return Err(bad(
                    format!("{at}.server_label"),
                    "`server_label` must be 1 to 64 letters, digits, `_` or `-`",
                ));
            }
        };
        if t.get("connector_id").is_some_and(|c| !c.is_null()) {
            return Err(bad(
                format!("{at}.connector_id"),
                "connectors are not supported: name the MCP server by `server_url`",
            ));
        }
        let url = match t.get("server_url") {
            Some(Value::String(u)) => match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => {
                    u.clone()
                }
                _ => {
                    return Err(bad(
                        format!("{at}.server_url"),
                        "`server_url` must be an http or https URL",
                    ));
                }
            },
            _ => {
                return Err(bad(
                    format!("{at}.server_url"),
                    "`server_url` is required (a string)",
                ));
            }
        };
        let mut headers = Vec::new();
        match t.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(h)) => {
                for (k, v) in h {
                    let valid_name = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    let value = v
                        .as_str()
                        .filter(|v| v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
                    match value {
                        Some(v)
                            if valid_name
                                && !RESERVED.contains(&k.to_ascii_lowercase().as_str()) =>
                        {
                            headers.push((k.clone(), v.to_string()))
                        }
                        _ => {
                            return Err(bad(
                                format!("{at}.headers.{k}"),
                                "a header needs a valid name (not one the transport sets) and a string value without control characters",
                            ));
                        }
                    }
                }
            }
            Some(_) => {
                return Err(bad(
                    format!("{at}.headers"),
                    "`headers` must be an object of strings",
                ));
            }
        }
        match t.get("authorization") {
            None | Some(Value::Null) => {}
            Some(Value::String(a))
                if !a.is_empty() && a.bytes().all(|b| b >= 0x20 && b != 0x7f) =>
            {
                if headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                {
                    return Err(bad(
                        format!("{at}.authorization"),
                        "give the token as `authorization` or as an Authorization header, not both",
                    ));
                }
                headers.push(("Authorization".into(), format!("Bearer {a}")));
            }
            Some(_) => {
                return Err(bad(
                    format!("{at}.authorization"),
                    "`authorization` must be a token (a string)",
                ));
            }
        }
        let allowed = match t.get("allowed_tools") {
            None | Some(Value::Null) => None,
            Some(v) => Some(ToolFilter::parse(v, &format!("{at}.allowed_tools"))?),
        };
        let approval = match t.get("require_approval") {
            None | Some(Value::Null) => Approval::Always,
            Some(Value::String(s)) if s == "always" => Approval::Always,
            Some(Value::String(s)) if s == "never" => Approval::Never,
            Some(Value::Object(o)) if o.keys().all(|k| k == "always" || k == "never") => {
                let side = |k: &str| -> Result<Option<ToolFilter>, BadInput> {
                    match o.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(v) => {
                            ToolFilter::parse(v, &format!("{at}.require_approval.{k}")).map(Some)
                        }
                    }
                };
                Approval::Filter {
                    always: side("always")?,
                    never: side("never")?,
                }
            }
            Some(_) => {
                return Err(bad(
                    format!("{at}.require_approval"),
                    "`require_approval` must be always, never or {\"always\": filter, \"never\": filter}",
                ));
            }
        };
        if t.get("server_description")
            .is_some_and(|d| !d.is_null() && !d.is_string())
        {
            return Err(bad(
                format!("{at}.server_description"),
                "`server_description` must be a string",
            ));
        }
        // Echoed as given, less what carries secrets.
        let mut echo = Map::new();
        for (k, v) in t {
            if k != "headers" && k != "authorization" {
                echo.insert(k.clone(), v.clone());
            }
        }
        Ok(McpTool {
            param: at.to_string(),
            server: McpServer {
                label,
                url,
                headers,
            },
            allowed,
            approval,
            echo: Value::Object(echo),
            offered: Vec::new(),
        })
    }

    /// Keeps, of the tools the server lists, those the request allows.
    pub fn offer(&mut self, listed: &[McpToolDef]) {
        self.offered = listed
            .iter()
            .filter(|t| self.allowed.as_ref().is_none_or(|f| f.matches(t)))
            .cloned()
            .collect();
    }

    /// Whether a call of `name` waits for the client's approval.
    pub fn needs_approval(&self, name: &str) -> bool {
        let Some(t) = self.offered.iter().find(|t| t.name == name) else {
            return true;
        };
        match &self.approval {
            Approval::Always => true,
            Approval::Never => false,
            Approval::Filter { always, never } => {
                always.as_ref().is_some_and(|f| f.matches(t))
                    || !never.as_ref().is_some_and(|f| f.matches(t))
            }
        }
    }

    /// The functions offered to the engine, one per tool.
    pub fn functions(&self) -> impl Iterator<Item = Value> + '_ {
        self.offered.iter().map(|t| {
            // A tool's arguments are an object, whether or not its schema says so.
            let mut parameters = t.input_schema.clone();
            if let Some(o) = parameters.as_object_mut() {
                o.entry("type").or_insert(json!("object"));
                o.entry("properties").or_insert(json!({}));
            }
            let mut f = json!({"name": t.name, "parameters": parameters});
            if let Some(d) = &t.description {
                f["description"] = json!(d);
            }
            json!({"type": "function", "function": f})
        })
    }
}

/// The tools an `mcp_list_tools` item of the context holds for `label` (the latest
/// one without an error), if any.
pub fn listed_in(context: &[Value], label: &str) -> Option<Vec<McpToolDef>> {
    context
        .iter()
        .rev()
        .find(|i| {
            i["type"] == "mcp_list_tools" && i["server_label"] == label && i["error"].is_null()
        })
        .and_then(|i| i["tools"].as_array())
        .map(|l| l.iter().filter_map(McpToolDef::from_json).collect())
}

/// An `mcp_list_tools` item.
pub fn list_item(id: &str, label: &str, tools: &[McpToolDef]) -> Value {
    json!({"type": "mcp_list_tools", "id": id, "server_label": label,
           "tools": tools.iter().map(McpToolDef::json).collect::<Vec<_>>(), "error": null})
}

/// An `mcp_call` item: running (`None`), or ended.
pub fn call_item(
    id: &str,
    label: &str,
    name: &str,
    arguments: &str,
    ended: Option<&Result<String, McpFailure>>,
    approval_request_id: Option<&str>,
) -> Value {
    let (status, output, error) = match ended {
        None => ("in_progress", Value::Null, Value::Null),
        Some(Ok(out)) => ("completed", json!(out), Value::Null),
        Some(Err(e)) => ("failed", Value::Null, e.json()),
    };
    json!({"type": "mcp_call", "id": id, "server_label": label, "name": name,
           "arguments": arguments, "output": output, "error": error, "status": status,
           "approval_request_id": approval_request_id})
}

/// An `mcp_approval_request` item.
pub fn approval_item(id: &str, label: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "mcp_approval_request", "id": id, "server_label": label, "name": name,
           "arguments": arguments})
}

/// A call's arguments as the server takes them (an object).
pub fn arguments_of(arguments: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    }) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(
            "The call's arguments were not a JSON object; call the tool again with an object."
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<McpTool, BadInput> {
        McpTool::parse(v.as_object().unwrap(), "tools[0]")
    }

    fn def(name: &str, read_only: bool) -> McpToolDef {
        McpToolDef {
            name: name.into(),
            description: None,
            input_schema: json!({"type": "object"}),
            annotations: Some(json!({"readOnlyHint": read_only})),
        }
    }

    #[test]
    fn a_tool_is_checked_and_echoed_without_its_secrets() {
        let t = parse(
            json!({"type": "mcp", "server_label": "docs", "server_url": "http://127.0.0.1:9/mcp",
                             "headers": {"X-Key": "k1"}, "authorization": "tok",
                             "allowed_tools": ["a"], "require_approval": "never"}),
        )
        .unwrap();
        assert_eq!(
            t.server.headers,
            vec![
                ("X-Key".into(), "k1".into()),
                ("Authorization".into(), "Bearer tok".into())
            ]
        );
        assert!(t.echo.get("headers").is_none() && t.echo.get("authorization").is_none());
        assert_eq!(t.echo["allowed_tools"], json!(["a"]));
        for (v, param) in [
            (json!({"server_url": "http://x/"}), "tools[0].server_label"),
            (
                json!({"server_label": "a b", "server_url": "http://x/"}),
                "tools[0].server_label",
            ),
            (json!({"server_label": "a"}), "tools[0].server_url"),
            (
                json!({"server_label": "a", "server_url": "file:///etc/passwd"}),
                "tools[0].server_url",
            ),
            (
                json!({"server_label": "a", "connector_id": "connector_gmail"}),
                "tools[0].connector_id",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "headers": {"Host": "y"}}),
                "tools[0].headers.Host",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "headers": {"X": "a\nb"}}),
                "tools[0].headers.X",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "headers": []}),
                "tools[0].headers",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "authorization": 5}),
                "tools[0].authorization",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "allowed_tools": "x"}),
                "tools[0].allowed_tools",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "allowed_tools": {"names": []}}),
                "tools[0].allowed_tools.names",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "require_approval": "sometimes"}),
                "tools[0].require_approval",
            ),
            (
                json!({"server_label": "a", "server_url": "http://x/", "require_approval": {"never": {"read_only": "yes"}}}),
                "tools[0].require_approval.never.read_only",
            ),
        ] {
            assert_eq!(parse(v).unwrap_err().param, param);
        }
    }

    #[test]
    fn allowed_tools_and_approval_filters_apply() {
        let listed = [def("read", true), def("write", false), def("other", false)];
        let mut t = parse(json!({"server_label": "s", "server_url": "http://x/",
                                 "allowed_tools": {"tool_names": ["read", "write"]},
                                 "require_approval": {"never": {"read_only": true}}}))
        .unwrap();
        t.offer(&listed);
        let names: Vec<_> = t.offered.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["read", "write"]);
        assert!(!t.needs_approval("read"));
        assert!(t.needs_approval("write"));
        assert!(t.needs_approval("other"), "a tool not offered always asks");
        let mut t = parse(json!({"server_label": "s", "server_url": "http://x/",
                                 "require_approval": {"always": {"tool_names": ["read"]}, "never": {"read_only": true}}}))
        .unwrap();
        t.offer(&listed);
        assert!(t.needs_approval("read"), "always wins over never");
        let mut t = parse(json!({"server_label": "s", "server_url": "http://x/"})).unwrap();
        t.offer(&listed);
        assert_eq!(t.offered.len(), 3);
        assert!(t.needs_approval("read"), "approval is asked by default");
    }

    #[test]
    fn a_listing_is_found_in_the_context_and_failures_are_shaped() {
        let item = list_item("mcpl_1", "s", &[def("a", false)]);
        let context = [json!({"type": "message"}), item.clone()];
        assert_eq!(listed_in(&context, "s").unwrap(), vec![def("a", false)]);
        assert!(listed_in(&context, "t").is_none());
        let e = McpFailure::Execution {
            content: json!([{"type": "text", "text": "boom"}]),
        };
        assert_eq!(e.json()["type"], "mcp_tool_execution_error");
        assert_eq!(e.message(), "The tool reported an error: boom");
        let c = call_item("mcp_1", "s", "a", "{}", Some(&Err(e)), Some("mcpr_1"));
        assert_eq!(
            (c["status"].as_str(), c["output"].is_null()),
            (Some("failed"), true)
        );
        assert_eq!(c["approval_request_id"], "mcpr_1");
        assert_eq!(arguments_of("").unwrap().len(), 0);
        assert!(arguments_of("[1]").is_err());
    }
}
