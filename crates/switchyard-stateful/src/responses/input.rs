//! The Responses API's input items (docs/responses.md): parsed and checked, each error
//! naming its `param` (`input[2].role`), and turned into the chat messages an engine
//! takes.
//!
//! Items: messages (roles `user`, `assistant`, `system`, `developer`; content a string
//! or parts `input_text`, `input_image` by URL, `input_file` by `file_id`, and for
//! assistant messages given back `output_text` / `refusal`), `function_call`,
//! `function_call_output`, `item_reference` (resolved by the caller against stored
//! items), and `reasoning` (kept in the record, never sent to the engine).

use serde_json::{Map, Value, json};

/// A client error: 400 with the offending parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct BadInput {
    pub message: String,
    pub param: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadInput {
    BadInput {
        message: message.into(),
        param: param.into(),
    }
}

/// A message's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
    Developer,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            "developer" => Role::Developer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Developer => "developer",
        }
    }
}

/// One part of a message's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// `input_text` (or `output_text` / `refusal` in an assistant message).
    Text(String),
    /// `input_image` by URL (or data URL), with its `detail`.
    Image { url: String, detail: Option<String> },
    /// `input_file` by `file_id` (its text is put in its place before the chat request).
    File { file_id: String },
}

/// One input item, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Message {
        role: Role,
        parts: Vec<Part>,
    },
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        call_id: String,
        output: String,
    },
    Reference {
        id: String,
    },
    Reasoning,
    /// A call the gateway made on an MCP server: sent as a tool call and its result.
    McpCall {
        id: String,
        name: String,
        arguments: String,
        /// The tool's output, or what went wrong.
        output: String,
    },
    /// A call that waited for the client's approval.
    ApprovalRequest {
        id: String,
        server_label: String,
        name: String,
        arguments: String,
    },
    /// The client's answer to an approval request.
    ApprovalResponse {
        request_id: String,
        approve: bool,
        reason: Option<String>,
    },
}

fn string_field<'a>(
    item: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a str, BadInput> {
    match item.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(bad(
            format!("{at}.{key}"),
            format!("`{key}` must not be empty"),
        )),
        Some(_) => Err(bad(
            format!("{at}.{key}"),
            format!("`{key}` must be a string"),
        )),
        None => Err(bad(format!("{at}.{key}"), format!("`{key}` is required"))),
    }
}

/// A stored tool call item's `arguments` (`{}` when it has none).
fn arguments_of(o: &Map<String, Value>) -> String {
    o.get("arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}")
        .to_string()
}

fn parts(content: &Value, role: Role, at: &str) -> Result<Vec<Part>, BadInput> {
    let at = format!("{at}.content");
    match content {
        Value::String(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| part(p, role, &format!("{at}[{i}]")))
            .collect(),
        Value::Array(_) => Err(bad(at, "`content` must not be empty")),
        _ => Err(bad(
            at,
            "`content` must be a string or a list of content parts",
        )),
    }
}

fn part(p: &Value, role: Role, at: &str) -> Result<Part, BadInput> {
    let Some(p) = p.as_object() else {
        return Err(bad(at, "a content part must be an object"));
    };
    let kind = string_field(p, "type", at)?;
    match (kind, role) {
        ("input_text", _) | ("output_text", Role::Assistant) => match p.get("text") {
            Some(Value::String(t)) => Ok(Part::Text(t.clone())),
            _ => Err(bad(format!("{at}.text"), "`text` must be a string")),
        },
        ("refusal", Role::Assistant) => Ok(Part::Text(string_field(p, "refusal", at)?.to_string())),
        ("input_image", Role::User) => {
            let detail = match p.get("detail") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) if ["auto", "low", "high"].contains(&d.as_str()) => {
                    Some(d.clone())
                }
                Some(_) => {
                    return Err(bad(
                        format!("{at}.detail"),
                        "`detail` must be auto, low or high",
                    ));
                }
            };
            match (p.get("image_url"), p.get("file_id")) {
                (Some(Value::String(url)), _) if !url.is_empty() => Ok(Part::Image {
                    url: url.clone(),
                    detail,
                }),
                (_, Some(Value::String(_))) => Err(bad(
                    format!("{at}.file_id"),
                    "images by `file_id` need the Files API; give `image_url`",
                )),
                _ => Err(bad(
                    format!("{at}.image_url"),
                    "`input_image` needs an `image_url`",
                )),
            }
        }
        ("input_file", Role::User) => Ok(Part::File {
            file_id: string_field(p, "file_id", at)?.to_string(),
        }),
        (other, role) => Err(bad(
            format!("{at}.type"),
            format!(
                "content part type `{other}` is not allowed in a `{}` message",
                role.as_str()
            ),
        )),
    }
}

/// One item of `input` (a list entry at `input[i]`).
fn item(v: &Value, at: &str) -> Result<Item, BadInput> {
    let Some(o) = v.as_object() else {
        return Err(bad(at, "an input item must be an object"));
    };
    // A message may leave out `"type": "message"`.
    let kind = match o.get("type") {
        None => "message",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad(format!("{at}.type"), "`type` must be a string")),
    };
    match kind {
        "message" => {
            let role = string_field(o, "role", at)?;
            let role = Role::parse(role).ok_or_else(|| {
                bad(
                    format!("{at}.role"),
                    format!("`{role}` is not a role: use user, assistant, system or developer"),
                )
            })?;
            let content = o
                .get("content")
                .ok_or_else(|| bad(format!("{at}.content"), "`content` is required"))?;
            Ok(Item::Message {
                role,
                parts: parts(content, role, at)?,
            })
        }
        "function_call" => Ok(Item::FunctionCall {
            call_id: string_field(o, "call_id", at)?.to_string(),
            name: string_field(o, "name", at)?.to_string(),
            arguments: match o.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(bad(
                        format!("{at}.arguments"),
                        "`arguments` must be a JSON string",
                    ));
                }
            },
        }),
        "function_call_output" => Ok(Item::FunctionCallOutput {
            call_id: string_field(o, "call_id", at)?.to_string(),
            output: match o.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                _ => {
                    return Err(bad(
                        format!("{at}.output"),
                        "`output` must be a string or a list of text parts",
                    ));
                }
            },
        }),
        "item_reference" => Ok(Item::Reference {
            id: string_field(o, "id", at)?.to_string(),
        }),
        // Reasoning, the gateway's own searches and MCP tool listings are not resent
        // to the engine: the answers that used them are.
        "reasoning" | "file_search_call" | "web_search_call" | "mcp_list_tools" => {
            Ok(Item::Reasoning)
        }
        "mcp_call" => Ok(Item::McpCall {
            id: string_field(o, "id", at)?.to_string(),
            name: string_field(o, "name", at)?.to_string(),
            arguments: arguments_of(o),
            output: match (o.get("output"), o.get("error")) {
                (Some(Value::String(out)), _) => out.clone(),
                (_, Some(e)) if !e.is_null() => match e.get("content") {
                    Some(c) => format!(
                        "The tool reported an error: {}",
                        super::mcp::content_text(c)
                    ),
                    None => format!(
                        "The call failed: {}",
                        e.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("unknown error")
                    ),
                },
                _ => String::new(),
            },
        }),
        "mcp_approval_request" => Ok(Item::ApprovalRequest {
            id: string_field(o, "id", at)?.to_string(),
            server_label: string_field(o, "server_label", at)?.to_string(),
            name: string_field(o, "name", at)?.to_string(),
            arguments: arguments_of(o),
        }),
        "mcp_approval_response" => Ok(Item::ApprovalResponse {
            request_id: string_field(o, "approval_request_id", at)?.to_string(),
            approve: match o.get("approve") {
                Some(Value::Bool(b)) => *b,
                _ => {
                    return Err(bad(
                        format!("{at}.approve"),
                        "`approve` is required (true or false)",
                    ));
                }
            },
            reason: match o.get("reason") {
                None | Some(Value::Null) => None,
                Some(Value::String(r)) => Some(r.clone()),
                Some(_) => return Err(bad(format!("{at}.reason"), "`reason` must be a string")),
            },
        }),
        other => Err(bad(
            format!("{at}.type"),
            format!(
                "`{other}` is not an input item type: use message, function_call, \
                 function_call_output, item_reference, reasoning or mcp_approval_response"
            ),
        )),
    }
}

/// `input`: a string (one user message) or a list of items.
pub fn parse_input(input: &Value) -> Result<Vec<Item>, BadInput> {
    parse_items(input, "input")
}

/// Items under the parameter `name` (`input`, or a conversation's `items`): a string
/// (one user message) or a list.
pub fn parse_items(input: &Value, name: &str) -> Result<Vec<Item>, BadInput> {
    match input {
        Value::String(s) => Ok(vec![Item::Message {
            role: Role::User,
            parts: vec![Part::Text(s.clone())],
        }]),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| item(v, &format!("{name}[{i}]")))
            .collect(),
        _ => Err(bad(
            name,
            format!("`{name}` must be a string or a list of items"),
        )),
    }
}

/// Checks that every `function_call_output` answers a `function_call` made earlier in
/// the context (`context`: the stored history, then the new items, in order).
pub fn check_call_ids(context: &[Item], new_from: usize) -> Result<(), BadInput> {
    for (i, it) in context.iter().enumerate().skip(new_from) {
        if let Item::FunctionCallOutput { call_id, .. } = it {
            let called = context[..i]
                .iter()
                .any(|c| matches!(c, Item::FunctionCall { call_id: id, .. } if id == call_id));
            if !called {
                return Err(bad(
                    format!("input[{}].call_id", i - new_from),
                    format!("No tool call found for function call output with call_id {call_id}"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks that every `mcp_approval_response` among the new items answers an
/// `mcp_approval_request` of the context that no earlier response answered.
pub fn check_approvals(context: &[Item], new_from: usize) -> Result<(), BadInput> {
    for (i, it) in context.iter().enumerate().skip(new_from) {
        if let Item::ApprovalResponse { request_id, .. } = it {
            let at = format!("input[{}].approval_request_id", i - new_from);
            let asked = context[..i]
                .iter()
                .any(|c| matches!(c, Item::ApprovalRequest { id, .. } if id == request_id));
            if !asked {
                return Err(bad(
                    at,
                    format!("No MCP approval request found with id {request_id}"),
                ));
            }
            let answered = context[..i].iter().any(
                |c| matches!(c, Item::ApprovalResponse { request_id: r, .. } if r == request_id),
            );
            if answered {
                return Err(bad(
                    at,
                    format!("The MCP approval request {request_id} was answered already"),
                ));
            }
        }
    }
    Ok(())
}

/// Appends an assistant tool call (merged with the calls just before it).
fn push_call(out: &mut Vec<Value>, call: Value) {
    let merged = out.last_mut().and_then(|m| {
        (m["role"] == "assistant" && m["content"].is_null())
            .then(|| m["tool_calls"].as_array_mut())
            .flatten()
    });
    match merged {
        Some(calls) => calls.push(call),
        None => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
    }
}

/// The chat messages an engine takes for `instructions` and the items, in order.
/// Consecutive function calls become one assistant message with several tool calls;
/// reasoning items are left out; `developer` is sent as `system` (chat templates know
/// it). References must have been resolved before.
pub fn chat_messages(instructions: Option<&str>, items: &[Item]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    if let Some(text) = instructions {
        out.push(json!({"role": "system", "content": text}));
    }
    for it in items {
        match it {
            Item::Message { role, parts } => {
                let role = match role {
                    Role::Developer => "system",
                    r => r.as_str(),
                };
                let only_text = parts.iter().all(|p| matches!(p, Part::Text(_)));
                let content = if only_text || role != "user" {
                    json!(
                        parts
                            .iter()
                            .filter_map(|p| match p {
                                Part::Text(t) => Some(t.as_str()),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                            .join("")
                    )
                } else {
                    json!(
                        parts
                            .iter()
                            .filter_map(|p| match p {
                                Part::Text(t) => Some(json!({"type": "text", "text": t})),
                                Part::Image { url, detail } => {
                                    let mut image = json!({"url": url});
                                    if let Some(d) = detail {
                                        image["detail"] = json!(d);
                                    }
                                    Some(json!({"type": "image_url", "image_url": image}))
                                }
                                Part::File { .. } => None,
                            })
                            .collect::<Vec<_>>()
                    )
                };
                out.push(json!({"role": role, "content": content}));
            }
            Item::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                push_call(&mut out, call);
            }
            Item::McpCall {
                id,
                name,
                arguments,
                output,
            } => {
                let call = json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                push_call(&mut out, call);
                out.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
            }
            // A declined call: the model learns it was declined (an approved one is
            // told by the `mcp_call` that follows).
            Item::ApprovalResponse {
                request_id,
                approve: false,
                reason,
            } => {
                let asked = items.iter().find_map(|i| match i {
                    Item::ApprovalRequest {
                        id,
                        name,
                        arguments,
                        ..
                    } if id == request_id => Some((name, arguments)),
                    _ => None,
                });
                if let Some((name, arguments)) = asked {
                    let call = json!({"id": request_id, "type": "function",
                                      "function": {"name": name, "arguments": arguments}});
                    push_call(&mut out, call);
                    let said = match reason {
                        Some(r) => format!("The user declined this call: {r}"),
                        None => "The user declined this call.".to_string(),
                    };
                    out.push(json!({"role": "tool", "tool_call_id": request_id, "content": said}));
                }
            }
            Item::ApprovalRequest { .. } | Item::ApprovalResponse { .. } => {}
            Item::FunctionCallOutput { call_id, output } => {
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            Item::Reference { .. } | Item::Reasoning => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_is_one_user_message() {
        let items = parse_input(&json!("hi")).unwrap();
        assert_eq!(
            chat_messages(Some("be brief"), &items),
            [
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "hi"}),
            ]
        );
    }

    #[test]
    fn items_become_chat_messages_with_tool_calls_merged() {
        let items = parse_input(&json!([
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look: "},
                {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"}
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done", "annotations": []}]}
        ]))
        .unwrap();
        check_call_ids(&items, 0).unwrap();
        let m = chat_messages(None, &items);
        assert_eq!(m[0], json!({"role": "system", "content": "rules"}));
        assert_eq!(
            m[1]["content"][1]["image_url"],
            json!({"url": "https://x/cat.png", "detail": "low"})
        );
        assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2, "{}", m[2]);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "one"})
        );
        assert_eq!(m[4]["content"], "two");
        assert_eq!(m[5], json!({"role": "assistant", "content": "done"}));
        assert_eq!(m.len(), 6);
    }

    #[test]
    fn every_bad_item_names_its_param() {
        let cases = [
            (json!(3), "input"),
            (json!([1]), "input[0]"),
            (json!([{"type": "picture"}]), "input[0].type"),
            (json!([{"role": "robot", "content": "x"}]), "input[0].role"),
            (json!([{"role": "user"}]), "input[0].content"),
            (json!([{"role": "user", "content": []}]), "input[0].content"),
            (
                json!([{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]),
                "input[0].content[0].type",
            ),
            (
                json!([{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}]),
                "input[0].content[0].type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "input_image"}]}]),
                "input[0].content[0].image_url",
            ),
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "u", "detail": "max"}]}]),
                "input[0].content[0].detail",
            ),
            (
                json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]),
                "input[0].arguments",
            ),
            (
                json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
                "input[0].call_id",
            ),
            (
                json!([{"type": "function_call_output", "call_id": "c", "output": 5}]),
                "input[0].output",
            ),
            (json!([{"type": "item_reference", "id": ""}]), "input[0].id"),
        ];
        for (input, param) in cases {
            let e = parse_input(&input).unwrap_err();
            assert_eq!(e.param, param, "{input}: {}", e.message);
        }
    }

    #[test]
    fn a_tool_output_must_answer_an_earlier_call() {
        let history = parse_input(&json!([
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
        ]))
        .unwrap();
        let new = parse_input(&json!([
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "function_call_output", "call_id": "c9", "output": "?"}
        ]))
        .unwrap();
        let all: Vec<Item> = history.iter().chain(&new).cloned().collect();
        let e = check_call_ids(&all, history.len()).unwrap_err();
        assert_eq!(e.param, "input[1].call_id");
        assert!(e.message.contains("c9"));
    }

    #[test]
    fn mcp_items_replay_as_calls_and_approvals_are_checked() {
        let history = parse_input(&json!([
            {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []},
            {"type": "mcp_call", "id": "mcp_1", "server_label": "s", "name": "add",
             "arguments": "{\"a\":1}", "output": "2", "error": null},
            {"type": "mcp_call", "id": "mcp_2", "server_label": "s", "name": "boom", "arguments": "{}",
             "output": null, "error": {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": "no"}]}},
            {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "s", "name": "add", "arguments": "{}"},
            {"type": "mcp_approval_request", "id": "mcpr_2", "server_label": "s", "name": "add", "arguments": "{}"}
        ]))
        .unwrap();
        let new = parse_input(&json!([
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": false, "reason": "no thanks"}
        ]))
        .unwrap();
        let all: Vec<Item> = history.iter().chain(&new).cloned().collect();
        check_approvals(&all, history.len()).unwrap();
        let m = chat_messages(None, &all);
        assert_eq!(m.len(), 6, "{m:?}");
        assert_eq!(m[0]["tool_calls"][0]["function"]["name"], "add");
        assert_eq!(
            m[1],
            json!({"role": "tool", "tool_call_id": "mcp_1", "content": "2"})
        );
        assert_eq!(m[3]["content"], "The tool reported an error: no");
        assert_eq!(m[4]["tool_calls"][0]["id"], "mcpr_1");
        assert_eq!(m[5]["content"], "The user declined this call: no thanks");
        // Answered twice, or naming nothing.
        let again: Vec<Item> = all.iter().chain(&new).cloned().collect();
        assert_eq!(
            check_approvals(&again, all.len()).unwrap_err().param,
            "input[0].approval_request_id"
        );
        let stray = parse_input(&json!([
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_9", "approve": true}
        ]))
        .unwrap();
        let with: Vec<Item> = history.iter().chain(&stray).cloned().collect();
        assert!(
            check_approvals(&with, history.len())
                .unwrap_err()
                .message
                .contains("mcpr_9")
        );
        for (v, param) in [
            (
                json!({"type": "mcp_approval_response", "approve": true}),
                "input[0].approval_request_id",
            ),
            (
                json!({"type": "mcp_approval_response", "approval_request_id": "x", "approve": "yes"}),
                "input[0].approve",
            ),
            (
                json!({"type": "mcp_approval_response", "approval_request_id": "x", "approve": true, "reason": 3}),
                "input[0].reason",
            ),
        ] {
            assert_eq!(parse_input(&json!([v])).unwrap_err().param, param);
        }
    }
}
