//! Streaming: the engine's chat completion chunks, translated as they arrive into the
//! Responses API's semantic events, each with its `sequence_number`. Nothing is held
//! back: every chunk yields its events at once. The output items are built alongside,
//! so that the stored response is the streamed one.

use serde_json::{Value, json};

use super::output::{Ids, Status, Usage, status_of};
use super::tools::Source;

/// One server-sent event: its `event:` name and its `data:` (which repeats the name
/// as `type`, with the `sequence_number`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
}

impl Event {
    /// The event as SSE bytes.
    pub fn sse(&self) -> String {
        format!("event: {}\ndata: {}\n\n", self.name, self.data)
    }
}

/// What an item being streamed is.
#[derive(Debug)]
enum Open {
    Reasoning { text: String },
    Text { text: String },
    Call { args: String },
}

/// How a response's stream ended.
#[derive(Clone, Copy, Debug)]
pub enum End<'a> {
    /// The engine finished.
    Done,
    /// The engine's stream broke off (`code`, `message`).
    Failed(&'a str, &'a str),
    /// The client or a cancel request stopped it.
    Cancelled,
}

/// Renders the Response object for a status, the output so far and the usage.
pub type Render = Box<dyn Fn(&Status, &[Value], Option<Usage>) -> Value + Send>;

/// The translator of one response's stream.
pub struct Translator {
    seq: u64,
    render: Render,
    ids: Box<dyn Ids + Send>,
    /// Finished items, in output order.
    output: Vec<Value>,
    /// The item being streamed, with its index in `output` once done.
    open: Option<(Open, Value)>,
    /// Tool call index in the chat stream → output index and item.
    calls: Vec<(u64, usize)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// The functions the gateway runs itself (its server-side tools): their calls are
    /// gathered for [`Translator::take_searches`], not streamed as function calls.
    hosted: Vec<String>,
    /// Calls of hosted functions in this round: chat stream index, and the call.
    searches: Vec<(u64, HostedCall)>,
    /// Results shown to the model so far, numbered from 1 (for citations).
    sources: Vec<Source>,
}

/// A call of a function the gateway runs.
#[derive(Clone, Debug)]
pub struct HostedCall {
    pub name: String,
    pub call_id: String,
    pub arguments: String,
}

/// The events of a server-side tool item's type: those when it starts, and the one
/// when it ends (completed, or failed when the type has such an event).
struct ToolEvents {
    started: &'static [&'static str],
    completed: &'static str,
    failed: Option<&'static str>,
}

fn tool_events(kind: &Value) -> Option<ToolEvents> {
    Some(match kind.as_str()? {
        "file_search_call" => ToolEvents {
            started: &[
                "response.file_search_call.in_progress",
                "response.file_search_call.searching",
            ],
            completed: "response.file_search_call.completed",
            failed: None,
        },
        "web_search_call" => ToolEvents {
            started: &[
                "response.web_search_call.in_progress",
                "response.web_search_call.searching",
            ],
            completed: "response.web_search_call.completed",
            failed: None,
        },
        "mcp_call" => ToolEvents {
            started: &["response.mcp_call.in_progress"],
            completed: "response.mcp_call.completed",
            failed: Some("response.mcp_call.failed"),
        },
        "mcp_list_tools" => ToolEvents {
            started: &["response.mcp_list_tools.in_progress"],
            completed: "response.mcp_list_tools.completed",
            failed: Some("response.mcp_list_tools.failed"),
        },
        _ => return None,
    })
}

/// A server-side tool item as it is when it starts: no result yet.
fn started_item(item: &Value) -> Value {
    let mut item = item.clone();
    match item["type"].as_str() {
        Some("mcp_list_tools") => item["tools"] = json!([]),
        Some("mcp_call") => {
            item["status"] = json!("in_progress");
            item["output"] = Value::Null;
            item["error"] = Value::Null;
        }
        _ => {}
    }
    item
}

impl Translator {
    pub fn new(render: Render, ids: Box<dyn Ids + Send>) -> Translator {
        Translator {
            seq: 0,
            render,
            ids,
            output: Vec::new(),
            open: None,
            calls: Vec::new(),
            finish_reason: None,
            usage: None,
            hosted: Vec::new(),
            searches: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Gathers the calls of `functions` instead of streaming them (the gateway runs
    /// them).
    pub fn hosting(mut self, functions: Vec<String>) -> Translator {
        self.hosted = functions;
        self
    }

    /// The hosted functions' calls of the round that just ended, and whether the round
    /// also called the client's functions. When it called only hosted ones, the next
    /// round's chunks start afresh.
    pub fn take_searches(&mut self) -> (Vec<HostedCall>, bool) {
        let searches: Vec<HostedCall> = std::mem::take(&mut self.searches)
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let client = !self.calls.is_empty();
        if !searches.is_empty() && !client {
            self.calls.clear();
            self.finish_reason = None;
        }
        (searches, client)
    }

    /// Results shown to the model from now on (numbered after those before).
    pub fn add_sources(&mut self, sources: Vec<Source>) {
        self.sources.extend(sources);
    }

    /// How many results the model has been shown.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// A server-side tool call starts: its item takes its place in the output (the
    /// index returned), then `in_progress` and `searching`.
    pub fn search_started(&mut self, item: Value) -> (Vec<Event>, usize) {
        let mut out = Vec::new();
        self.close(&mut out);
        let index = self.index();
        let id = item["id"].clone();
        let names = tool_events(&item["type"]);
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        if item["type"] == "mcp_call" {
            let arguments = item["arguments"].clone();
            out.push(self.event(
                "response.mcp_call_arguments.delta",
                json!({"output_index": index, "item_id": id, "delta": arguments}),
            ));
            out.push(self.event(
                "response.mcp_call_arguments.done",
                json!({"output_index": index, "item_id": id, "arguments": arguments}),
            ));
        }
        self.output.push(item);
        for name in names.iter().flat_map(|n| n.started) {
            out.push(self.event(name, json!({"output_index": index, "item_id": id})));
        }
        (out, index)
    }

    /// Server-side tool items that ended before the engine was asked (MCP tool lists,
    /// approved MCP calls): each starts and ends.
    pub fn preface(&mut self, items: &[Value]) -> Vec<Event> {
        let mut out = Vec::new();
        for item in items {
            let (started, index) = self.search_started(started_item(item));
            out.extend(started);
            out.extend(self.search_done(index, item.clone()));
        }
        out
    }

    /// The server-side tool call at `index` ended: `completed` (unless it failed), and
    /// its item is done.
    pub fn search_done(&mut self, index: usize, item: Value) -> Vec<Event> {
        let id = item["id"].clone();
        let mut out = Vec::new();
        if let Some(names) = tool_events(&item["type"]) {
            let failed = item["status"] == "failed" || !item["error"].is_null();
            let name = if failed {
                names.failed
            } else {
                Some(names.completed)
            };
            if let Some(name) = name {
                out.push(self.event(name, json!({"output_index": index, "item_id": id})));
            }
        }
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        if let Some(slot) = self.output.get_mut(index) {
            *slot = item;
        }
        out
    }

    fn event(&mut self, name: &'static str, mut data: Value) -> Event {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        Event { name, data }
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Event> {
        let r = (self.render)(&Status::InProgress, &[], None);
        vec![
            self.event("response.created", json!({"response": r.clone()})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    /// A background response's first events: `response.created` and `response.queued`
    /// (then [`Translator::in_progress`] once an engine takes it).
    pub fn start_queued(&mut self) -> Vec<Event> {
        let r = (self.render)(&Status::Queued, &[], None);
        vec![
            self.event("response.created", json!({"response": r.clone()})),
            self.event("response.queued", json!({"response": r})),
        ]
    }

    /// `response.in_progress`.
    pub fn in_progress(&mut self) -> Vec<Event> {
        let r = (self.render)(&Status::InProgress, &[], None);
        vec![self.event("response.in_progress", json!({"response": r}))]
    }

    /// The output index the open item will take.
    fn index(&self) -> usize {
        self.output.len()
    }

    /// Closes the open item, if any.
    fn close(&mut self, out: &mut Vec<Event>) {
        let Some((open, mut item)) = self.open.take() else {
            return;
        };
        let index = self.index();
        let id = item["id"].clone();
        match open {
            Open::Reasoning { text } => {
                out.push(self.event(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                ));
                item["content"] = json!([{"type": "reasoning_text", "text": text}]);
            }
            Open::Text { text } => {
                let annotations = super::tools::citations(&text, &self.sources);
                for (k, a) in annotations.iter().enumerate() {
                    out.push(self.event(
                        "response.output_text.annotation.added",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                               "annotation_index": k, "annotation": a}),
                    ));
                }
                let part = json!({"type": "output_text", "text": text, "annotations": annotations});
                out.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "text": text, "logprobs": []}),
                ));
                out.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                item["content"] = json!([part]);
                item["status"] = json!("completed");
            }
            Open::Call { args } => {
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": args,
                           "name": item["name"]}),
                ));
                item["arguments"] = json!(args);
                item["status"] = json!("completed");
            }
        }
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
    }

    /// Opens a new item (closing the one before).
    fn open(&mut self, open: Open, item: Value, out: &mut Vec<Event>) {
        self.close(out);
        let index = self.index();
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        if let Open::Text { .. } = open {
            out.push(self.event(
                "response.content_part.added",
                json!({"item_id": item["id"], "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            ));
        }
        self.open = Some((open, item));
    }

    /// The events of one chat completion chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Event> {
        let mut out = Vec::new();
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            // Rounds of a tool loop add up.
            let round = Usage::from_chat(u);
            self.usage = Some(self.usage.map_or(round, |before| before.plus(round)));
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return out;
        };
        if let Some(r) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(r.to_string());
        }
        let delta = &choice["delta"];
        let reasoning = delta
            .get("reasoning_content")
            .or_else(|| delta.get("reasoning"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(r) = reasoning {
            if !matches!(self.open, Some((Open::Reasoning { .. }, _))) {
                let item = json!({"type": "reasoning", "id": self.ids.id("rs_"), "summary": []});
                self.open(
                    Open::Reasoning {
                        text: String::new(),
                    },
                    item,
                    &mut out,
                );
            }
            let index = self.index();
            if let Some((Open::Reasoning { text }, item)) = &mut self.open {
                text.push_str(r);
                let id = item["id"].clone();
                let e =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": r});
                out.push(self.event("response.reasoning_text.delta", e));
            }
        }
        if let Some(t) = delta["content"].as_str().filter(|s| !s.is_empty()) {
            if !matches!(self.open, Some((Open::Text { .. }, _))) {
                let item = json!({"type": "message", "id": self.ids.id("msg_"), "status": "in_progress",
                                  "role": "assistant", "content": []});
                self.open(
                    Open::Text {
                        text: String::new(),
                    },
                    item,
                    &mut out,
                );
            }
            let index = self.index();
            if let Some((Open::Text { text }, item)) = &mut self.open {
                text.push_str(t);
                let id = item["id"].clone();
                let e = json!({"item_id": id, "output_index": index, "content_index": 0,
                               "delta": t, "logprobs": []});
                out.push(self.event("response.output_text.delta", e));
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let n = call["index"].as_u64().unwrap_or(0);
            let hosted = call["function"]["name"]
                .as_str()
                .and_then(|name| self.hosted.iter().find(|h| *h == name).cloned());
            if let Some((_, s)) = self.searches.iter_mut().find(|(i, _)| *i == n) {
                s.arguments
                    .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
                continue;
            }
            if let Some(name) = hosted {
                let call_id = call["id"]
                    .as_str()
                    .map_or_else(|| self.ids.id("call_"), str::to_string);
                let arguments = call["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.searches.push((
                    n,
                    HostedCall {
                        name,
                        call_id,
                        arguments,
                    },
                ));
                continue;
            }
            let known = self.calls.iter().any(|(i, _)| *i == n);
            if !known {
                let call_id = call["id"]
                    .as_str()
                    .map_or_else(|| self.ids.id("call_"), str::to_string);
                let item = json!({"type": "function_call", "id": self.ids.id("fc_"), "call_id": call_id,
                                  "name": call["function"]["name"].as_str().unwrap_or_default(),
                                  "arguments": "", "status": "in_progress"});
                self.open(
                    Open::Call {
                        args: String::new(),
                    },
                    item,
                    &mut out,
                );
                let index = self.index();
                self.calls.push((n, index));
            }
            if let Some(a) = call["function"]["arguments"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                let index = self.index();
                if let Some((Open::Call { args }, item)) = &mut self.open {
                    args.push_str(a);
                    let id = item["id"].clone();
                    let e = json!({"item_id": id, "output_index": index, "delta": a});
                    out.push(self.event("response.function_call_arguments.delta", e));
                }
            }
        }
        out
    }

    /// The closing events once the engine's stream ended, and the final status and
    /// output. A cancelled response has no event of its own in the API: its stream ends
    /// with `response.incomplete` carrying `status: cancelled` and the output so far.
    pub fn finish(&mut self, end: End<'_>) -> (Vec<Event>, Status, Vec<Value>) {
        let mut out = Vec::new();
        self.close(&mut out);
        let status = match end {
            End::Failed(code, message) => Status::Failed {
                code: code.to_string(),
                message: message.to_string(),
            },
            End::Cancelled => Status::Cancelled,
            End::Done => status_of(self.finish_reason.as_deref()),
        };
        let r = (self.render)(&status, &self.output, self.usage);
        let name = match status {
            Status::Completed => "response.completed",
            Status::Incomplete | Status::Cancelled => "response.incomplete",
            _ => "response.failed",
        };
        out.push(self.event(name, json!({"response": r})));
        (out, status, self.output.clone())
    }

    /// Usage reported by the engine's final chunk.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::super::output::Seq;
    use super::*;

    fn translator() -> Translator {
        Translator::new(
            Box::new(
                |s, out, u| json!({"status": s.as_str(), "output": out, "usage": u.map(|u| u.json())}),
            ),
            Box::new(Seq(0)),
        )
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn text_streams_as_semantic_events_in_sequence() {
        let mut t = translator();
        let mut events = t.start();
        events.extend(t.chunk(&chunk(json!({"role": "assistant"}), None)));
        events.extend(t.chunk(&chunk(json!({"content": "Hel"}), None)));
        events.extend(t.chunk(&chunk(json!({"content": "lo"}), Some("stop"))));
        events.extend(
            t.chunk(&json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})),
        );
        let (end, status, output) = t.finish(End::Done);
        events.extend(end);
        let names: Vec<&str> = events.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.data["sequence_number"], i as u64);
            assert_eq!(e.data["type"], e.name);
        }
        assert_eq!(events[6].data["text"], "Hello");
        assert_eq!(status, Status::Completed);
        assert_eq!(output[0]["content"][0]["text"], "Hello");
        assert_eq!(events[9].data["response"]["usage"]["total_tokens"], 5);
        assert!(
            events[4]
                .sse()
                .starts_with("event: response.output_text.delta\ndata: {")
        );
    }

    #[test]
    fn reasoning_then_tool_calls_and_a_cut_stream() {
        let mut t = translator();
        t.start();
        let mut events = t.chunk(&chunk(json!({"reasoning_content": "hmm"}), None));
        events.extend(t.chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
            "function": {"name": "f", "arguments": "{\"x\""}}]}),
            None,
        )));
        events.extend(t.chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
            None,
        )));
        events.extend(t.chunk(&chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
            "function": {"name": "g", "arguments": "{}"}}]}),
            Some("length"),
        )));
        let (end, status, output) = t.finish(End::Done);
        events.extend(end);
        assert_eq!(status, Status::Incomplete);
        assert_eq!(events.last().unwrap().name, "response.incomplete");
        assert_eq!(output.len(), 3);
        assert_eq!(output[0]["content"][0]["text"], "hmm");
        assert_eq!(output[1]["arguments"], "{\"x\":1}");
        assert_eq!(output[1]["call_id"], "call_a");
        assert_eq!(output[2]["name"], "g");
        let done: Vec<&Event> = events
            .iter()
            .filter(|e| e.name == "response.function_call_arguments.done")
            .collect();
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].data["output_index"], 1);

        let mut t = translator();
        t.start();
        t.chunk(&chunk(json!({"content": "par"}), None));
        let (end, status, output) = t.finish(End::Failed("server_error", "the engine stopped"));
        assert!(matches!(status, Status::Failed { .. }));
        assert_eq!(end.last().unwrap().name, "response.failed");
        assert_eq!(
            output[0]["content"][0]["text"], "par",
            "what was streamed is kept"
        );
    }
}
