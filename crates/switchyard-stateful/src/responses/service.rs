//! The Responses service: a request checked, its context rebuilt from the stored chain
//! (`previous_response_id`) or conversation, sent to an engine as one chat completion
//! (through the gateway's pipeline: the [`Engine`]), and the answer stored and
//! returned — whole, or as semantic events while it streams.
//!
//! Storage: a response row (its request, its final Response object, its status) and
//! its items (`input` as given, with ids; `output` as produced), written together. A
//! stored response is `in_progress` from the moment it is accepted until its answer
//! is stored, all in single transactions, so a crash leaves either nothing or a
//! response that recovery marks failed.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::input::{
    BadInput, Item, Part, chat_messages, check_approvals, check_call_ids, parse_input,
};
use super::mcp::{McpClient, McpTool};
use super::output::{Envelope, Ids, Status, Usage, output_items, response_json, status_of};
use super::request::{ResponseRequest, Truncation};
use super::stream::{End, Event, HostedCall, Translator};
use super::tools::{Found, Source, WebSearch, tool_message};
use crate::store::{Store, StoreError, Write};

/// Chat completion chunks, parsed.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Value, EngineError>> + Send>>;

/// What an engine answered.
pub enum Answer {
    Complete(Value),
    Stream(ChunkStream),
}

/// An engine (or gateway) error: its status and OpenAI error object, passed on.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// A token count from the engine's tokenizer, and the model's context length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCount {
    pub count: u64,
    pub max_model_len: Option<u64>,
}

impl TokenCount {
    /// From vLLM's `/tokenize` answer (`count`, `max_model_len`).
    pub fn from_tokenize(v: &Value) -> Option<TokenCount> {
        Some(TokenCount {
            count: v["count"].as_u64()?,
            max_model_len: v["max_model_len"].as_u64(),
        })
    }
}

/// The engines, as the Responses service uses them.
pub trait Engine: Send + Sync + 'static {
    /// Sends a chat completion body, with the routing session key, and answers.
    /// `owner` is the tenant the response belongs to: its limits and usage apply.
    fn chat(
        &self,
        body: Value,
        session: String,
        owner: String,
    ) -> BoxFuture<'static, Result<Answer, EngineError>>;

    /// [`Engine::chat`] for a response that keeps nothing (`store: false`): its answer
    /// may come from, and go to, the gateway's response cache (docs/caching.md), which
    /// decides by the body whether it applies. By default the same as `chat`.
    fn chat_cacheable(
        &self,
        body: Value,
        session: String,
        owner: String,
    ) -> BoxFuture<'static, Result<Answer, EngineError>> {
        self.chat(body, session, owner)
    }

    /// Counts the tokens of a chat body's `messages` (vLLM's `/tokenize`, chat form).
    fn count_tokens(
        &self,
        body: Value,
        session: String,
        owner: String,
    ) -> BoxFuture<'static, Result<TokenCount, EngineError>>;
}

/// The chunks of a chat completion's server-sent events, parsed as they arrive (an
/// engine's `error` event, or a body cut short, ends the stream with an error).
pub fn sse_chunks<S, B, E>(body: S) -> ChunkStream
where
    S: Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display,
{
    struct St<S> {
        body: S,
        buf: Vec<u8>,
        done: bool,
    }
    let cut = |message: String| EngineError {
        status: 502,
        code: "engine_stream_broken".into(),
        message,
    };
    Box::pin(futures_util::stream::unfold(
        St {
            body,
            buf: Vec::new(),
            done: false,
        },
        move |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(end) = st.buf.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = st.buf.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&event);
                    let data: String = text
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if data.is_empty() {
                        continue;
                    }
                    if data == "[DONE]" {
                        // The body is read to its end, so that what it passes through
                        // (the gateway's settle and response cache) sees it complete;
                        // an engine that holds it open after `[DONE]` is not waited on.
                        let drain = async { while let Some(Ok(_)) = st.body.next().await {} };
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
                        return None;
                    }
                    let item = match serde_json::from_str::<Value>(&data) {
                        Ok(v) if v.get("error").is_some() => {
                            st.done = true;
                            Err(EngineError {
                                status: 502,
                                code: v["error"]["code"]
                                    .as_str()
                                    .unwrap_or("engine_error")
                                    .to_string(),
                                message: v["error"]["message"]
                                    .as_str()
                                    .unwrap_or("the engine failed")
                                    .to_string(),
                            })
                        }
                        Ok(v) => Ok(v),
                        Err(e) => {
                            st.done = true;
                            Err(cut(format!("the engine sent an unreadable event: {e}")))
                        }
                    };
                    return Some((item, st));
                }
                match st.body.next().await {
                    Some(Ok(b)) => st.buf.extend_from_slice(b.as_ref()),
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(cut(format!("the engine's stream broke: {e}"))), st));
                    }
                    None => {
                        st.done = true;
                        return Some((Err(cut("the engine's stream ended early".into())), st));
                    }
                }
            }
        },
    ))
}

/// A failure of a Responses call, OpenAI-shaped.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
}

impl ServiceError {
    pub(crate) fn invalid(b: BadInput) -> ServiceError {
        ServiceError {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            message: b.message,
            param: (!b.param.is_empty()).then_some(b.param),
        }
    }

    pub(crate) fn not_found(param: &str, message: String) -> ServiceError {
        ServiceError {
            status: 404,
            kind: "invalid_request_error",
            code: None,
            message,
            param: Some(param.to_string()),
        }
    }

    fn store(e: StoreError) -> ServiceError {
        tracing::error!(error = %e, "response store failed");
        ServiceError {
            status: 503,
            kind: "server_error",
            code: Some("store_unavailable".into()),
            message: "The response store is unavailable; try again shortly".into(),
            param: None,
        }
    }

    pub(crate) fn from_engine(e: EngineError) -> ServiceError {
        // An engine's "too long for the context" (vLLM words it a few ways): the input.
        let lower = e.message.to_ascii_lowercase();
        if e.status == 400
            && ["context length", "maximum model length", "max_model_len"]
                .iter()
                .any(|w| lower.contains(w))
        {
            return ServiceError {
                status: 400,
                kind: "invalid_request_error",
                code: Some("context_length_exceeded".into()),
                message: e.message,
                param: Some("input".into()),
            };
        }
        ServiceError {
            status: e.status,
            kind: if e.status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            },
            code: Some(e.code),
            message: e.message,
            param: None,
        }
    }

    /// The error body.
    pub fn json(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::store(e)
    }
}

/// Unguessable ids with OpenAI's prefixes.
pub struct RandomIds;

impl Ids for RandomIds {
    fn id(&mut self, prefix: &str) -> String {
        random_id(prefix)
    }
}

/// `prefix` and 24 random bytes in hex (`resp_…`, `msg_…`).
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS random source");
    let mut out = String::with_capacity(prefix.len() + 48);
    out.push_str(prefix);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What `create` gives back.
pub enum Created {
    Json(Value),
    /// Server-sent events (`event:` + `data:`), ending when the response ends.
    Events(EventStream),
}

/// Appends an item to a conversation (`$1` conversation, `$2` item id, `$3` time,
/// `$4` item JSON), after the last one, within the write's transaction.
pub(crate) const APPEND_ITEM: &str = "INSERT INTO conversation_items \
     (conversation_id, seq, item_id, owner, created_at, item) \
     SELECT $1, COALESCE(MAX(i.seq), -1) + 1, $2, c.owner, $3, $4 \
     FROM conversations c LEFT JOIN conversation_items i ON i.conversation_id = c.id \
     WHERE c.id = $1 GROUP BY c.owner";

/// How long a replica's claim on a response it runs lasts unless renewed; `maintain`
/// renews them every third of it.
pub const LEASE_SECS: i64 = 60;

/// The service.
#[derive(Clone)]
pub struct Responses {
    store: Arc<Store>,
    engine: Arc<dyn Engine>,
    now: fn() -> i64,
    /// Responses this replica runs (their leases are renewed).
    running: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Background responses this replica runs, by id.
    live: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Live>>>>,
    observer: Arc<dyn crate::Observe>,
    /// Where `input_file` parts are read from.
    files: Option<crate::files::Files>,
    /// Most background responses this replica runs at once.
    max_background: usize,
    /// What `file_search` tools search.
    vector_stores: Option<crate::vector::VectorStores>,
    /// What `web_search` tools search.
    web_search: Option<Arc<dyn WebSearch>>,
    /// What reaches the servers of `mcp` tools.
    mcp: Option<Arc<dyn McpClient>>,
    /// Most server-side tool calls in one response, whatever it asks.
    max_tool_calls: usize,
    /// Longest a server-side tool call runs before the model is told it timed out.
    tool_timeout: std::time::Duration,
}

/// A response's server-side tool loop (file_search, web_search, mcp): the rounds' chat
/// body, and its bounds.
pub(crate) struct Rounds {
    file_search: Option<super::file_search::FileSearchTool>,
    web_search: Option<super::web_search::WebSearchTool>,
    mcp: Vec<McpTool>,
    /// The functions the gateway runs, by name.
    hosted: Vec<String>,
    owner: String,
    /// `include: ["file_search_call.results"]`.
    include_results: bool,
    /// `include: ["web_search_call.action.sources"]`.
    include_sources: bool,
    limit: usize,
    calls: usize,
    /// A round's calls run at once (`parallel_tool_calls`, true unless false).
    parallel: bool,
    /// The response keeps nothing (`store: false`): its engine calls may be cached.
    cacheable: bool,
    chat: Value,
    session: String,
}

impl Rounds {
    /// The next round's chat body: the calls and their results appended; no tool
    /// forced any more, and the hosted ones no longer offered once the calls reach the
    /// limit.
    fn advance(&mut self, calls: Vec<Value>, results: Vec<Value>) {
        self.calls += calls.len();
        if let Some(m) = self.chat["messages"].as_array_mut() {
            m.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
            m.extend(results);
        }
        let forced = match &self.chat["tool_choice"] {
            Value::String(s) => s == "required",
            c => c["function"]["name"]
                .as_str()
                .is_some_and(|n| self.hosted.iter().any(|h| h == n)),
        };
        if forced {
            self.chat["tool_choice"] = json!("auto");
        }
        if self.calls >= self.limit
            && let Some(tools) = self.chat["tools"].as_array_mut()
        {
            let hosted = &self.hosted;
            tools.retain(|t| {
                !t["function"]["name"]
                    .as_str()
                    .is_some_and(|n| hosted.iter().any(|h| h == n))
            });
            if tools.is_empty()
                && let Some(o) = self.chat.as_object_mut()
            {
                o.remove("tools");
                o.remove("tool_choice");
                o.remove("parallel_tool_calls");
            }
        }
    }

    /// The hosted function a chat tool call calls, if it is one.
    fn hosted(&self, call: &Value) -> Option<HostedCall> {
        let name = call["function"]["name"].as_str()?;
        let name = self.hosted.iter().find(|h| *h == name)?.clone();
        Some(HostedCall {
            name,
            call_id: call["id"].as_str().unwrap_or_default().to_string(),
            arguments: call["function"]["arguments"]
                .as_str()
                .unwrap_or("{}")
                .to_string(),
        })
    }

    /// The MCP server whose tool a hosted call calls, if it calls one.
    fn mcp_of(&self, call: &HostedCall) -> Option<&McpTool> {
        mcp_of(&self.mcp, &call.name)
    }

    /// Whether a hosted call waits for the client's approval.
    fn needs_approval(&self, call: &HostedCall) -> bool {
        self.mcp_of(call)
            .is_some_and(|m| m.needs_approval(&call.name))
    }
}

/// The MCP server offering the tool `name`, if one does.
fn mcp_of<'a>(mcp: &'a [McpTool], name: &str) -> Option<&'a McpTool> {
    mcp.iter()
        .find(|m| m.offered.iter().any(|t| t.name == name))
}

/// The functions a request's server-side tools offer the engine.
fn hosted_functions(req: &ResponseRequest) -> Vec<String> {
    let mut hosted = Vec::new();
    if req.file_search.is_some() {
        hosted.push(super::file_search::FUNCTION.to_string());
    }
    if req.web_search.is_some() {
        hosted.push(super::web_search::FUNCTION.to_string());
    }
    for m in &req.mcp {
        hosted.extend(m.offered.iter().map(|t| t.name.clone()));
    }
    hosted
}

/// A hosted call's output item id.
fn call_item_id(r: &Rounds, call: &HostedCall) -> String {
    random_id(match call.name.as_str() {
        _ if r.mcp_of(call).is_some() => "mcp_",
        super::web_search::FUNCTION => "ws_",
        _ => "fs_",
    })
}

/// A hosted call's item with `status`, before (or without) a result.
fn pending_item(r: &Rounds, call: &HostedCall, item_id: &str, status: &str) -> Value {
    if let Some(m) = r.mcp_of(call) {
        let mut item = super::mcp::call_item(
            item_id,
            &m.server.label,
            &call.name,
            &call.arguments,
            None,
            None,
        );
        item["status"] = json!(status);
        return item;
    }
    match call.name.as_str() {
        super::web_search::FUNCTION => super::web_search::call_item(
            item_id,
            status,
            &super::web_search::query_of(&call.arguments).unwrap_or_default(),
            None,
        ),
        _ => super::file_search::call_item(
            item_id,
            status,
            &super::file_search::queries_of(&call.arguments).unwrap_or_default(),
            None,
        ),
    }
}

/// An output item with its text's citations of the results shown so far.
fn cited(mut item: Value, sources: &[Source]) -> Value {
    if let Some(text) = item["content"][0]["text"].as_str() {
        let a = super::tools::citations(text, sources);
        item["content"][0]["annotations"] = json!(a);
    }
    item
}

/// The `mcp_approval_request` items of a round's calls that wait for approval.
fn approval_requests(r: &Rounds, round: &[(HostedCall, String)]) -> Vec<Value> {
    round
        .iter()
        .filter(|(h, _)| r.needs_approval(h))
        .filter_map(|(h, _)| {
            let m = r.mcp_of(h)?;
            Some(super::mcp::approval_item(
                &random_id("mcpr_"),
                &m.server.label,
                &h.name,
                &h.arguments,
            ))
        })
        .collect()
}

/// The request body without what `mcp` tools carry that is secret (`headers`,
/// `authorization`), when it has any.
fn without_secrets(body: &Value) -> Option<Value> {
    let secret = |t: &Value| {
        t["type"] == super::mcp::TYPE
            && (t.get("headers").is_some() || t.get("authorization").is_some())
    };
    if !body["tools"].as_array()?.iter().any(secret) {
        return None;
    }
    let mut body = body.clone();
    for t in body["tools"]
        .as_array_mut()?
        .iter_mut()
        .filter(|t| secret(t))
    {
        if let Some(o) = t.as_object_mut() {
            o.remove("headers");
            o.remove("authorization");
        }
    }
    Some(body)
}

/// A chat tool call of a hosted function, for the next round's messages.
fn chat_call(call: &HostedCall) -> Value {
    json!({"id": call.call_id, "type": "function",
           "function": {"name": call.name, "arguments": call.arguments}})
}

/// Largest file put in a prompt as an `input_file`.
const INPUT_FILE_MAX: u64 = 8 << 20;

/// A background response while this replica runs it: its events so far (when it is
/// streamed), for the readers that follow it, and its cancel signal.
pub(crate) struct Live {
    events: std::sync::Mutex<Vec<String>>,
    /// (events so far, finished and stored).
    progress: tokio::sync::watch::Sender<(usize, bool)>,
    cancel: tokio::sync::Notify,
    cancelled: std::sync::atomic::AtomicBool,
    /// Its row is in the store: until then, the store not knowing it does not mean
    /// another replica cancelled or deleted it.
    stored: std::sync::atomic::AtomicBool,
}

impl Live {
    fn new() -> Arc<Live> {
        Arc::new(Live {
            events: Default::default(),
            progress: tokio::sync::watch::Sender::new((0, false)),
            cancel: tokio::sync::Notify::new(),
            cancelled: Default::default(),
            stored: Default::default(),
        })
    }

    fn push(&self, events: &[String]) {
        let mut all = self.events.lock().unwrap_or_else(|e| e.into_inner());
        all.extend_from_slice(events);
        let n = all.len();
        drop(all);
        self.progress.send_modify(|p| p.0 = n);
    }

    fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cancel.notify_one();
    }

    /// Resolves once the response is cancelled.
    async fn cancelled(&self) {
        if !self.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            self.cancel.notified().await;
        }
    }

    /// The events after the first `from`, as they come, until the response is stored.
    fn follow(self: Arc<Live>, from: usize) -> EventStream {
        let rx = self.progress.subscribe();
        Box::pin(futures_util::stream::unfold(
            (self, rx, from, std::collections::VecDeque::new()),
            |(live, mut rx, mut next, mut buf)| async move {
                loop {
                    if let Some(e) = buf.pop_front() {
                        return Some((e, (live, rx, next, buf)));
                    }
                    let (count, done) = *rx.borrow_and_update();
                    if next < count {
                        let all = live.events.lock().unwrap_or_else(|e| e.into_inner());
                        buf.extend(all[next..count].iter().cloned());
                        next = count;
                        continue;
                    }
                    if done || rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        ))
    }
}

/// Server-sent events, as text.
pub type EventStream = Pin<Box<dyn Stream<Item = String> + Send>>;

/// Where a running response's events go.
enum Sink {
    /// A client's stream: the client going away cancels the response.
    Client(tokio::sync::mpsc::Sender<String>),
    /// A background response's readers; `store` keeps the events (with their sequence
    /// numbers) for resuming readers, flushed in batches.
    Background {
        live: Arc<Live>,
        store: bool,
        pending: Vec<(u64, String)>,
    },
}

impl Sink {
    /// Ends when the client goes away or the background response is cancelled.
    async fn stopped(&self) {
        match self {
            Sink::Client(tx) => tx.closed().await,
            Sink::Background { live, .. } => live.cancelled().await,
        }
    }

    /// Sends events on; false once the client is gone.
    async fn send(&mut self, events: Vec<Event>) -> bool {
        match self {
            Sink::Client(tx) => {
                for e in events {
                    if tx.send(e.sse()).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Sink::Background {
                live,
                store,
                pending,
            } => {
                if *store {
                    let sse: Vec<String> = events.iter().map(Event::sse).collect();
                    live.push(&sse);
                    for (e, text) in events.iter().zip(sse) {
                        pending.push((e.data["sequence_number"].as_u64().unwrap_or(0), text));
                    }
                }
                true
            }
        }
    }
}

/// Inserts `items` of a response (`kind`: input or output) in order, a few hundred
/// rows per statement.
fn item_rows(mut w: Write, id: &str, kind: &'static str, items: &[Value]) -> Write {
    for (n, part) in items.chunks(200).enumerate() {
        let mut values = Vec::with_capacity(part.len());
        let mut args: Vec<crate::store::Val> = vec![id.into(), kind.into()];
        for (i, item) in part.iter().enumerate() {
            let at = args.len();
            values.push(format!("($1, ${}, $2, ${}, ${})", at + 1, at + 2, at + 3));
            args.push(((n * 200 + i) as i64).into());
            args.push(item["id"].as_str().unwrap_or_default().into());
            args.push(item.to_string().into());
        }
        w = w.then(
            format!(
                "INSERT INTO response_items (response_id, seq, kind, item_id, item) VALUES {}",
                values.join(", ")
            ),
            args,
        );
    }
    w
}

/// The statements that store an accepted response as `in_progress` (`queued` in the
/// background), with its input items and a lease.
fn begin_write(
    id: &str,
    req: &ResponseRequest,
    body: &Value,
    input: &[Value],
    created_at: i64,
    owner: &str,
) -> Write {
    let w = Write::one(
        "INSERT INTO responses (id, owner, created_at, updated_at, status, model, \
         previous_response_id, conversation_id, background, request, lease_until) \
         VALUES ($1, $2, $3, $3, $10, $4, $5, $6, $7, $8, $9)",
        vec![
            id.into(),
            owner.into(),
            created_at.into(),
            req.model.as_str().into(),
            req.previous_response_id.clone().into(),
            req.conversation.clone().into(),
            req.background.into(),
            body.to_string().into(),
            (created_at + LEASE_SECS).into(),
            if req.background {
                "queued"
            } else {
                "in_progress"
            }
            .into(),
        ],
    );
    item_rows(w, id, "input", input)
}

/// Writes a background stream's events (`response_events`).
fn store_events(mut w: Option<Write>, id: &str, events: &[(u64, String)]) -> Option<Write> {
    for (seq, event) in events {
        let sql = "INSERT INTO response_events (response_id, seq, event) VALUES ($1, $2, $3)";
        let args = vec![id.into(), (*seq as i64).into(), event.as_str().into()];
        w = Some(match w {
            Some(w) => w.then(sql, args),
            None => Write::one(sql, args),
        });
    }
    w
}

/// A request checked and its context read: the items to send (`all`; the new input
/// from `new_from`), the new input items as stored, and the chain's or conversation's
/// root.
struct Prepared {
    req: ResponseRequest,
    input: Vec<Value>,
    all: Vec<Item>,
    new_from: usize,
    root: Option<String>,
    /// Output items made before the engine is asked: MCP tool lists fetched, and the
    /// calls the client approved.
    preface: Vec<Value>,
}

/// The items without their first `n`, and without function call outputs whose call
/// went with them.
fn dropped(items: &[Item], n: usize) -> Vec<Item> {
    let kept = &items[n.min(items.len())..];
    let calls: std::collections::HashSet<&str> = kept
        .iter()
        .filter_map(|i| match i {
            Item::FunctionCall { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    kept.iter()
        .filter(|i| match i {
            Item::FunctionCallOutput { call_id, .. } => calls.contains(call_id.as_str()),
            _ => true,
        })
        .cloned()
        .collect()
}

/// The input does not fit the model's context (even truncated).
fn too_long(max: u64, output: Option<u64>) -> ServiceError {
    ServiceError {
        status: 400,
        kind: "invalid_request_error",
        code: Some("context_length_exceeded".into()),
        message: format!(
            "The input does not fit the model's context of {max} tokens{}",
            output.map_or(String::new(), |o| format!(" with {o} output tokens"))
        ),
        param: Some("input".into()),
    }
}

/// A checked request, ready to run.
struct Accepted<'a> {
    id: String,
    req: ResponseRequest,
    body: &'a Value,
    input: Vec<Value>,
    created_at: i64,
    owner: &'a str,
    messages: Vec<Value>,
    session: String,
    /// Output items made before the engine is asked.
    preface: Vec<Value>,
}

/// How a response ended, as stored.
struct Outcome<'a> {
    status: &'a Status,
    output: &'a [Value],
    usage: Option<Usage>,
    model: &'a str,
    /// A background stream's events not yet stored.
    events: &'a [(u64, String)],
}

impl<'a> Outcome<'a> {
    /// An end without output.
    fn bare(status: &'a Status, model: &'a str) -> Outcome<'a> {
        Outcome {
            status,
            output: &[],
            usage: None,
            model,
            events: &[],
        }
    }
}

/// The context of a request: earlier items, and where they came from.
struct Context {
    items: Vec<Value>,
    /// The chain's first response (the routing session key), when chained.
    root: Option<String>,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Gives a stored input item its id (the SDK lists input items by id).
pub(crate) fn with_id(mut item: Value, ids: &mut dyn Ids) -> Value {
    if item.is_string() {
        item = json!({"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": item}]});
    }
    if item.get("type").is_none() {
        item["type"] = json!("message");
    }
    if let Some(Value::String(text)) = item.get("content") {
        item["content"] = if item["role"] == "assistant" {
            json!([{"type": "output_text", "text": text, "annotations": []}])
        } else {
            json!([{"type": "input_text", "text": text}])
        };
    }
    if item.get("id").is_none_or(Value::is_null) {
        let prefix = match item["type"].as_str() {
            Some("function_call") => "fc_",
            Some("function_call_output") => "fco_",
            Some("reasoning") => "rs_",
            _ => "msg_",
        };
        item["id"] = json!(ids.id(prefix));
    }
    if item["type"] == "message" && item.get("status").is_none() {
        item["status"] = json!("completed");
    }
    item
}

impl Responses {
    pub fn new(store: Arc<Store>, engine: Arc<dyn Engine>) -> Responses {
        Responses {
            store,
            engine,
            now: unix_now,
            running: Arc::default(),
            live: Arc::default(),
            observer: Arc::new(crate::Unobserved),
            files: None,
            max_background: 256,
            vector_stores: None,
            web_search: None,
            mcp: None,
            max_tool_calls: 8,
            tool_timeout: std::time::Duration::from_secs(30),
        }
    }

    /// Searches `vector_stores` for `file_search` tools, in at most `max_tool_calls`
    /// calls per response.
    pub fn with_vector_stores(
        mut self,
        vector_stores: crate::vector::VectorStores,
        max_tool_calls: usize,
    ) -> Responses {
        self.vector_stores = Some(vector_stores);
        self.max_tool_calls = max_tool_calls.max(1);
        self
    }

    /// Searches the web through `provider` for `web_search` tools.
    pub fn with_web_search(mut self, provider: Arc<dyn WebSearch>) -> Responses {
        self.web_search = Some(provider);
        self
    }

    /// One engine call of a response; `cacheable` when the response keeps nothing.
    async fn ask(
        &self,
        cacheable: bool,
        chat: Value,
        session: String,
        owner: String,
    ) -> Result<Answer, EngineError> {
        if cacheable {
            self.engine.chat_cacheable(chat, session, owner).await
        } else {
            self.engine.chat(chat, session, owner).await
        }
    }

    /// Reaches the servers of `mcp` tools through `client`.
    pub fn with_mcp(mut self, client: Arc<dyn McpClient>) -> Responses {
        self.mcp = Some(client);
        self
    }

    /// Tells the model that a server-side tool call failed once it has run this long.
    pub fn with_tool_timeout(mut self, timeout: std::time::Duration) -> Responses {
        self.tool_timeout = timeout;
        self
    }

    /// A response's tool loop, when it offers a server-side tool.
    fn rounds(
        &self,
        req: &ResponseRequest,
        owner: &str,
        chat: &Value,
        session: &str,
    ) -> Option<Rounds> {
        let hosted = hosted_functions(req);
        if hosted.is_empty() {
            return None;
        }
        Some(Rounds {
            file_search: req.file_search.clone(),
            web_search: req.web_search.clone(),
            mcp: req.mcp.clone(),
            hosted,
            owner: owner.to_string(),
            include_results: req.include.iter().any(|i| i == "file_search_call.results"),
            include_sources: req
                .include
                .iter()
                .any(|i| i == "web_search_call.action.sources"),
            limit: req.max_tool_calls.map_or(self.max_tool_calls, |n| {
                (n as usize).min(self.max_tool_calls)
            }),
            calls: 0,
            parallel: req.parallel_tool_calls != Some(false),
            cacheable: !req.store,
            chat: chat.clone(),
            session: session.to_string(),
        })
    }

    /// Runs one `file_search` call: its item and what it found.
    async fn file_search(&self, r: &Rounds, item_id: &str, arguments: &str) -> (Value, Found) {
        use super::file_search::{call_item, queries_of};
        let Some(queries) = queries_of(arguments) else {
            return (
                call_item(item_id, "failed", &[], None),
                Found {
                    asked: String::new(),
                    results: Err(
                        "The call held no queries: call file_search with {\"queries\": [\"...\"]}."
                            .into(),
                    ),
                },
            );
        };
        let asked = queries.join(" | ");
        let (Some(vs), Some(tool)) = (&self.vector_stores, &r.file_search) else {
            return (
                call_item(item_id, "failed", &queries, None),
                Found {
                    asked,
                    results: Err("File search is not available on this gateway.".into()),
                },
            );
        };
        match vs
            .search(
                &r.owner,
                &tool.vector_store_ids,
                &queries,
                &tool.options,
                &tool.param,
            )
            .await
        {
            Ok((used, hits)) => (
                call_item(
                    item_id,
                    "completed",
                    &used,
                    r.include_results.then_some(&hits[..]),
                ),
                Found {
                    asked: used.join(" | "),
                    results: Ok(hits.into_iter().map(Source::File).collect()),
                },
            ),
            Err(e) => {
                tracing::warn!(error = %e.message, "file search failed");
                (
                    call_item(item_id, "failed", &queries, None),
                    Found {
                        asked,
                        results: Err(format!("The search failed: {}", e.message)),
                    },
                )
            }
        }
    }

    /// Runs one `web_search` call through the provider: its item and what it found.
    async fn web_search(&self, r: &Rounds, item_id: &str, arguments: &str) -> (Value, Found) {
        use super::web_search::{call_item, query_of};
        let Some(query) = query_of(arguments) else {
            return (
                call_item(item_id, "failed", "", None),
                Found {
                    asked: String::new(),
                    results: Err(
                        "The call held no query: call web_search with {\"query\": \"...\"}.".into(),
                    ),
                },
            );
        };
        let (Some(provider), Some(tool)) = (&self.web_search, &r.web_search) else {
            return (
                call_item(item_id, "failed", &query, None),
                Found {
                    asked: query,
                    results: Err("Web search is not available on this gateway.".into()),
                },
            );
        };
        match provider
            .search(query.clone(), tool.count, tool.domains.clone())
            .await
        {
            Ok(pages) => (
                call_item(
                    item_id,
                    "completed",
                    &query,
                    r.include_sources.then_some(&pages[..]),
                ),
                Found {
                    asked: query,
                    results: Ok(pages.into_iter().map(Source::Web).collect()),
                },
            ),
            Err(e) => {
                tracing::warn!(error = %e, "web search failed");
                (
                    call_item(item_id, "failed", &query, None),
                    Found {
                        asked: query,
                        results: Err(format!("The web search failed: {e}")),
                    },
                )
            }
        }
    }

    /// Runs one call of an MCP server's tool: its `mcp_call` item and what the model is
    /// told.
    async fn mcp_call(
        &self,
        m: &McpTool,
        call: &HostedCall,
        item_id: &str,
        approval: Option<&str>,
    ) -> (Value, Found) {
        use super::mcp::{McpFailure, arguments_of, call_item};
        let ended = match (&self.mcp, arguments_of(&call.arguments)) {
            (None, _) => Err(McpFailure::Protocol {
                code: -32000,
                message: "MCP tools are not available on this gateway".into(),
            }),
            (_, Err(e)) => Err(McpFailure::Protocol {
                code: -32602,
                message: e,
            }),
            (Some(client), Ok(args)) => {
                client
                    .call_tool(m.server.clone(), call.name.clone(), args)
                    .await
            }
        };
        if let Err(e) = &ended {
            tracing::warn!(server = %m.server.label, tool = %call.name, error = %e.message(), "an MCP call failed");
        }
        let item = call_item(
            item_id,
            &m.server.label,
            &call.name,
            &call.arguments,
            Some(&ended),
            approval,
        );
        let told = match ended {
            Ok(out) => out,
            Err(e) => e.message(),
        };
        (
            item,
            Found {
                asked: String::new(),
                results: Err(told),
            },
        )
    }

    /// Runs one hosted call within the tool timeout: its final item and what it found.
    async fn run_call(&self, r: &Rounds, call: &HostedCall, item_id: &str) -> (Value, Found) {
        let run = async {
            if let Some(m) = r.mcp_of(call) {
                return self.mcp_call(m, call, item_id, None).await;
            }
            match call.name.as_str() {
                super::web_search::FUNCTION => self.web_search(r, item_id, &call.arguments).await,
                _ => self.file_search(r, item_id, &call.arguments).await,
            }
        };
        match tokio::time::timeout(self.tool_timeout, run).await {
            Ok(done) => done,
            Err(_) => {
                tracing::warn!(tool = %call.name, "a tool call timed out");
                let mut item = pending_item(r, call, item_id, "failed");
                if item["type"] == "mcp_call" {
                    item["error"] = json!({"type": "mcp_protocol_error", "code": -32001,
                                           "message": "the call timed out"});
                }
                (
                    item,
                    Found {
                        asked: String::new(),
                        results: Err(format!(
                            "The {} call timed out after {} s.",
                            call.name,
                            self.tool_timeout.as_secs_f64()
                        )),
                    },
                )
            }
        }
    }

    /// Runs a round's hosted calls, each with its item id: at once when parallel tool
    /// calls are allowed, else one after the other. Calls past the response's limit
    /// are not run; the model is told so.
    async fn run_round(&self, r: &Rounds, calls: &[(HostedCall, String)]) -> Vec<(Value, Found)> {
        let room = r.limit.saturating_sub(r.calls);
        let runs = calls.iter().enumerate().map(|(k, (call, item_id))| async move {
            if k >= room {
                return (
                    pending_item(r, call, item_id, "failed"),
                    Found {
                        asked: String::new(),
                        results: Err("Not run: this response reached its limit of tool calls. Answer with what you have.".into()),
                    },
                );
            }
            self.run_call(r, call, item_id).await
        });
        if r.parallel {
            futures_util::future::join_all(runs).await
        } else {
            let mut done = Vec::with_capacity(calls.len());
            for run in runs {
                done.push(run.await);
            }
            done
        }
    }

    /// The rounds of a response answered whole: while the model calls hosted tools
    /// (and only them), run them, answer the calls and ask again. The final completion,
    /// the calls' items, the results shown, and the usage of every round.
    async fn complete_rounds(
        &self,
        mut c: Value,
        rounds: &mut Option<Rounds>,
    ) -> Result<(Value, Vec<Value>, Vec<Source>, Option<Usage>), EngineError> {
        let mut items = Vec::new();
        let mut sources = Vec::new();
        let mut usage = c.get("usage").map(Usage::from_chat);
        let Some(r) = rounds.as_mut() else {
            return Ok((c, items, sources, usage));
        };
        loop {
            let calls: Vec<Value> = c["choices"][0]["message"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let hosted: Vec<(HostedCall, String)> = calls
                .iter()
                .filter_map(|t| r.hosted(t))
                .map(|h| {
                    let id = call_item_id(r, &h);
                    (h, id)
                })
                .collect();
            // A round that also calls the client's functions goes back to the client
            // as it is: its hosted calls are not run (their results could not reach
            // the model), as when streamed.
            if hosted.is_empty() || hosted.len() < calls.len() {
                return Ok((c, items, sources, usage));
            }
            // A round with a call that waits for approval ends the response with the
            // approval requests; its other calls are not run.
            if hosted.iter().any(|(h, _)| r.needs_approval(h)) {
                items.extend(
                    output_items(&c["choices"][0]["message"], &mut RandomIds)
                        .into_iter()
                        .filter(|i| i["type"] != "function_call")
                        .map(|i| cited(i, &sources)),
                );
                items.extend(approval_requests(r, &hosted));
                c["choices"][0]["message"]["content"] = Value::Null;
                return Ok((c, items, sources, usage));
            }
            // What the model said before calling (kept, as the stream shows it).
            items.extend(
                output_items(&c["choices"][0]["message"], &mut RandomIds)
                    .into_iter()
                    .filter(|i| i["type"] != "function_call")
                    .map(|i| cited(i, &sources)),
            );
            let ran = self.run_round(r, &hosted).await;
            let mut results = Vec::new();
            for ((call, _), (item, found)) in hosted.iter().zip(ran) {
                let message = tool_message(&found, sources.len() + 1);
                if let Ok(s) = found.results {
                    sources.extend(s);
                }
                items.push(item);
                results.push(
                    json!({"role": "tool", "tool_call_id": call.call_id, "content": message}),
                );
            }
            r.advance(hosted.iter().map(|(h, _)| chat_call(h)).collect(), results);
            c = match self
                .ask(
                    r.cacheable,
                    r.chat.clone(),
                    r.session.clone(),
                    r.owner.clone(),
                )
                .await?
            {
                Answer::Complete(next) => next,
                Answer::Stream(_) => {
                    return Err(EngineError {
                        status: 502,
                        code: "bad_gateway".into(),
                        message: "The engine streamed an answer asked for whole".into(),
                    });
                }
            };
            let round = c.get("usage").map(Usage::from_chat);
            usage = match (usage, round) {
                (Some(a), Some(b)) => Some(a.plus(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// A streamed response's rounds: the engine's stream through the translator, then,
    /// while the model calls hosted tools, the calls (their events sent as they run) and
    /// another round. Whether it was cancelled, and how a round failed, if one did.
    async fn drive_rounds(
        &self,
        id: &str,
        t: &mut Translator,
        mut chunks: ChunkStream,
        sink: &mut Sink,
        mut rounds: Option<Rounds>,
    ) -> (bool, Option<EngineError>) {
        loop {
            let (gone, failed) = self.drive(id, t, chunks, sink).await;
            let Some(r) = rounds.as_mut().filter(|_| !gone && failed.is_none()) else {
                return (gone, failed);
            };
            let (searches, client) = t.take_searches();
            // A round that also calls the client's functions goes back to the client;
            // its hosted calls are not run (their results could not reach the model).
            if searches.is_empty() || client {
                return (false, None);
            }
            let round: Vec<(HostedCall, String)> = searches
                .into_iter()
                .map(|c| {
                    let id = call_item_id(r, &c);
                    (c, id)
                })
                .collect();
            // A round with a call that waits for approval ends the response with the
            // approval requests; its other calls are not run.
            if round.iter().any(|(h, _)| r.needs_approval(h)) {
                let events = t.preface(&approval_requests(r, &round));
                return (!sink.send(events).await, None);
            }
            let mut slots = Vec::with_capacity(round.len());
            for (call, item_id) in &round {
                let (started, index) =
                    t.search_started(pending_item(r, call, item_id, "in_progress"));
                if !sink.send(started).await {
                    return (true, None);
                }
                slots.push(index);
            }
            // A client that goes away, or a cancel, stops the round's calls.
            let ran = tokio::select! {
                ran = self.run_round(r, &round) => ran,
                _ = sink.stopped() => return (true, None),
            };
            let (mut calls, mut results) = (Vec::new(), Vec::new());
            for (((call, _), index), (item, found)) in round.iter().zip(slots).zip(ran) {
                let message = tool_message(&found, t.sources() + 1);
                if let Ok(s) = found.results {
                    t.add_sources(s);
                }
                if !sink.send(t.search_done(index, item)).await {
                    return (true, None);
                }
                calls.push(chat_call(call));
                results.push(
                    json!({"role": "tool", "tool_call_id": call.call_id, "content": message}),
                );
            }
            r.advance(calls, results);
            chunks = match self
                .ask(
                    r.cacheable,
                    r.chat.clone(),
                    r.session.clone(),
                    r.owner.clone(),
                )
                .await
            {
                Ok(Answer::Stream(c)) => c,
                Ok(Answer::Complete(_)) => {
                    return (
                        false,
                        Some(EngineError {
                            status: 502,
                            code: "bad_gateway".into(),
                            message: "The engine answered a streamed request whole".into(),
                        }),
                    );
                }
                Err(e) => return (false, Some(e)),
            };
        }
    }

    /// Runs at most `n` background responses at once in this replica (more are a 429).
    pub fn with_max_background(mut self, n: usize) -> Responses {
        self.max_background = n.max(1);
        self
    }

    /// Reads `input_file` parts from `files`.
    pub fn with_files(mut self, files: crate::files::Files) -> Responses {
        self.files = Some(files);
        self
    }

    /// Puts the text of every `input_file` part in its place, as a text part headed by
    /// the file's name. A file of the new input that is not there is a 404 naming it; one
    /// of the context that has gone since is said to be gone.
    async fn inline_files(
        &self,
        all: &mut [Item],
        new_from: usize,
        owner: &str,
    ) -> Result<(), ServiceError> {
        for (i, item) in all.iter_mut().enumerate() {
            let Item::Message { parts, .. } = item else {
                continue;
            };
            for (j, part) in parts.iter_mut().enumerate() {
                let Part::File { file_id } = part else {
                    continue;
                };
                let param = format!("input[{}].content[{j}].file_id", i.saturating_sub(new_from));
                let read = match &self.files {
                    Some(files) => files.text(file_id, owner, INPUT_FILE_MAX, &param).await,
                    None => Err(ServiceError::not_found(
                        &param,
                        format!("No such File object: {file_id}"),
                    )),
                };
                *part = match read {
                    Ok((name, text)) => Part::Text(format!("[{name}]\n{text}\n")),
                    Err(e) if i >= new_from => return Err(e),
                    Err(_) => Part::Text(format!("[file {file_id} is no longer available]\n")),
                };
            }
        }
        Ok(())
    }

    /// Reports ends of responses (and, through the store, storage operations) to
    /// `observer`.
    pub fn observed(mut self, observer: Arc<dyn crate::Observe>) -> Responses {
        self.store.observe(observer.clone());
        self.observer = observer;
        self
    }

    fn live(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the background response `id` that this replica runs has ended and
    /// is stored (at once when it runs nowhere here).
    pub async fn until_done(&self, id: &str) {
        let live = self.live().get(id).cloned();
        if let Some(live) = live {
            let _ = live.progress.subscribe().wait_for(|p| p.1).await;
        }
    }

    /// Stops the background responses this replica runs that were cancelled or deleted
    /// through another replica. Called every second or so; a
    /// replica running none does not query. A response whose row is still being
    /// written is not looked at: its absence from the store is no cancel.
    pub async fn poll_cancels(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = self
            .live()
            .iter()
            .filter(|(_, l)| l.stored.load(std::sync::atomic::Ordering::SeqCst))
            .map(|(id, _)| id.clone())
            .collect();
        for chunk in ids.chunks(100) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
            let args: Vec<crate::store::Val> = chunk.iter().map(|id| id.as_str().into()).collect();
            let rows = self
                .store
                .fetch_all(
                    &format!(
                        "SELECT id FROM responses WHERE status <> 'cancelled' AND id IN ({})",
                        marks.join(", ")
                    ),
                    &args,
                )
                .await?;
            let going: std::collections::HashSet<String> = rows
                .iter()
                .map(|r| sqlx::Row::get::<String, _>(r, "id"))
                .collect();
            // Cancelled, or deleted, through another replica.
            for id in chunk.iter().filter(|id| !going.contains(*id)) {
                if let Some(live) = self.live().get(id) {
                    live.cancel();
                }
            }
        }
        Ok(())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The periodic upkeep (every `LEASE_SECS / 3`): renews the leases of the
    /// responses this replica runs, and fails those whose replica stopped renewing.
    pub async fn maintain(&self) -> Result<(), StoreError> {
        let now = (self.now)();
        let ids: Vec<String> = self.running().iter().cloned().collect();
        for chunk in ids.chunks(100) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let mut args: Vec<crate::store::Val> = vec![(now + LEASE_SECS).into()];
            args.extend(chunk.iter().map(|id| id.as_str().into()));
            self.store
                .write(Write::one(
                    format!(
                        "UPDATE responses SET lease_until = $1 WHERE id IN ({}) \
                         AND status IN ('queued', 'in_progress')",
                        marks.join(", ")
                    ),
                    args,
                ))
                .await?;
        }
        let failed = self.store.fail_abandoned(Some(now), now).await?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "responses of a stopped gateway replica are marked failed"
            );
        }
        Ok(())
    }

    /// The store, for probes and metrics.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Items of a stored response (`kind`: input or output), in order.
    async fn items(&self, id: &str, kind: &str) -> Result<Vec<Value>, ServiceError> {
        let rows = self
            .store
            .fetch_all(
                "SELECT item FROM response_items WHERE response_id = $1 AND kind = $2 ORDER BY seq",
                &[id.into(), kind.into()],
            )
            .await?;
        Ok(crate::store::json_column(&rows, "item"))
    }

    /// The chain ending at `previous`: every response's input and output, oldest first,
    /// read in two queries whatever its length (a recursive walk of the chain's ids,
    /// then all their items).
    async fn chain(&self, previous: &str, owner: &str) -> Result<Context, ServiceError> {
        const CHAIN: &str = "WITH RECURSIVE chain(id, prev, depth) AS ( \
             SELECT id, previous_response_id, 0 FROM responses WHERE id = $1 AND owner = $2 \
             UNION ALL \
             SELECT r.id, r.previous_response_id, c.depth + 1 \
             FROM responses r JOIN chain c ON r.id = c.prev WHERE r.owner = $2)";
        let root = self
            .store
            .fetch_optional(
                &format!("{CHAIN} SELECT id FROM chain ORDER BY depth DESC LIMIT 1"),
                &[previous.into(), owner.into()],
            )
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "previous_response_id",
                    format!("Previous response with id '{previous}' not found."),
                )
            })?;
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "{CHAIN} SELECT i.item FROM chain c \
                     JOIN response_items i ON i.response_id = c.id \
                     ORDER BY c.depth DESC, CASE i.kind WHEN 'input' THEN 0 ELSE 1 END, i.seq"
                ),
                &[previous.into(), owner.into()],
            )
            .await?;
        Ok(Context {
            items: crate::store::json_column(&rows, "item"),
            root: Some(sqlx::Row::get(&root, "id")),
        })
    }

    /// A conversation's items, oldest first.
    async fn conversation(&self, id: &str, owner: &str) -> Result<Context, ServiceError> {
        let exists = self
            .store
            .fetch_optional(
                "SELECT id FROM conversations WHERE id = $1 AND owner = $2",
                &[id.into(), owner.into()],
            )
            .await?;
        if exists.is_none() {
            return Err(ServiceError::not_found(
                "conversation",
                format!("Conversation with id '{id}' not found."),
            ));
        }
        let rows = self
            .store
            .fetch_all(
                "SELECT item FROM conversation_items WHERE conversation_id = $1 ORDER BY seq",
                &[id.into()],
            )
            .await?;
        Ok(Context {
            items: crate::store::json_column(&rows, "item"),
            root: Some(id.to_string()),
        })
    }

    /// Replaces `item_reference`s by the items they name (in the context or stored).
    async fn resolve(
        &self,
        input: &[Value],
        context: &[Value],
        owner: &str,
    ) -> Result<Vec<Value>, ServiceError> {
        let mut out = Vec::with_capacity(input.len());
        for (i, item) in input.iter().enumerate() {
            if item.get("type").and_then(Value::as_str) != Some("item_reference") {
                out.push(item.clone());
                continue;
            }
            let id = item["id"].as_str().unwrap_or_default();
            if let Some(found) = context.iter().find(|c| c["id"] == id) {
                out.push(found.clone());
                continue;
            }
            let row = self
                .store
                .fetch_optional(
                    "SELECT i.item FROM response_items i JOIN responses r ON r.id = i.response_id \
                     WHERE i.item_id = $1 AND r.owner = $2",
                    &[id.into(), owner.into()],
                )
                .await?;
            match row
                .and_then(|r| serde_json::from_str(&sqlx::Row::get::<String, _>(&r, "item")).ok())
            {
                Some(v) => out.push(v),
                None => {
                    return Err(ServiceError::not_found(
                        &format!("input[{i}].id"),
                        format!("Item with id '{id}' not found."),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// A request checked, its context read and its input resolved (with ids), all of
    /// it parsed, the function call outputs matched to calls and the MCP approvals to
    /// requests; its MCP servers' tools listed (or found in the context), and, when
    /// `run_tools`, listed anew where the context has none and the approved calls run.
    async fn prepare(
        &self,
        body: &Value,
        owner: &str,
        run_tools: bool,
    ) -> Result<Prepared, ServiceError> {
        let mut req = ResponseRequest::parse(body).map_err(ServiceError::invalid)?;
        let context = match (&req.previous_response_id, &req.conversation) {
            (Some(p), _) => self.chain(p, owner).await?,
            (_, Some(c)) => self.conversation(c, owner).await?,
            _ => Context {
                items: Vec::new(),
                root: None,
            },
        };
        let mut ids = RandomIds;
        let raw: Vec<Value> = match &req.raw_input {
            Value::Array(list) => list.clone(),
            Value::Null => Vec::new(),
            one => vec![one.clone()],
        };
        let input: Vec<Value> = self
            .resolve(&raw, &context.items, owner)
            .await?
            .into_iter()
            .map(|i| with_id(i, &mut ids))
            .collect();
        let mut all =
            parse_input(&Value::Array(context.items.clone())).map_err(ServiceError::invalid)?;
        let new_from = all.len();
        all.extend(parse_input(&Value::Array(input.clone())).map_err(ServiceError::invalid)?);
        check_call_ids(&all, new_from).map_err(ServiceError::invalid)?;
        check_approvals(&all, new_from).map_err(ServiceError::invalid)?;
        self.inline_files(&mut all, new_from, owner).await?;
        if let Some(fs) = &req.file_search {
            let vs = self.vector_stores.as_ref().ok_or_else(|| ServiceError {
                status: 400,
                kind: "invalid_request_error",
                code: None,
                message: "file_search is not available on this gateway".into(),
                param: Some(fs.param.clone()),
            })?;
            vs.available()?;
            for id in &fs.vector_store_ids {
                vs.get(owner, id).await.map_err(|mut e| {
                    e.param = Some(fs.param.clone());
                    e
                })?;
            }
        }
        if let Some(ws) = &req.web_search
            && self.web_search.is_none()
        {
            return Err(ServiceError {
                status: 400,
                kind: "invalid_request_error",
                code: None,
                message:
                    "web_search is not available on this gateway (no search provider is configured)"
                        .into(),
                param: Some(ws.param.clone()),
            });
        }
        let mut preface = Vec::new();
        if !req.mcp.is_empty() {
            preface = self.list_mcp(&mut req, &context.items, run_tools).await?;
        }
        if run_tools {
            let approved = self.approved_calls(&req, &all, new_from).await?;
            for (item, told) in approved {
                all.push(Item::McpCall {
                    id: item["id"].as_str().unwrap_or_default().to_string(),
                    name: item["name"].as_str().unwrap_or_default().to_string(),
                    arguments: item["arguments"].as_str().unwrap_or("{}").to_string(),
                    output: told,
                });
                preface.push(item);
            }
        }
        Ok(Prepared {
            req,
            input,
            all,
            new_from,
            root: context.root,
            preface,
        })
    }

    /// Checks a request's `mcp` tools and gives each its server's tools: those listed in
    /// the context (the chain's `mcp_list_tools` item for the same label), else listed
    /// now when `fetch` (an item for each). A server that cannot be listed is a 424.
    async fn list_mcp(
        &self,
        req: &mut ResponseRequest,
        context: &[Value],
        fetch: bool,
    ) -> Result<Vec<Value>, ServiceError> {
        let invalid = |param: &str, message: String| ServiceError {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            message,
            param: Some(param.to_string()),
        };
        let Some(client) = self.mcp.clone() else {
            return Err(invalid(
                &req.mcp[0].param,
                "mcp tools are not available on this gateway (no MCP servers are allowed)".into(),
            ));
        };
        for m in &req.mcp {
            client.allowed(&m.server.url).map_err(|why| {
                invalid(
                    &format!("{}.server_url", m.param),
                    format!("This gateway does not reach that MCP server: {why}"),
                )
            })?;
        }
        let mut items = Vec::new();
        let timeout = self.tool_timeout;
        let lists = futures_util::future::join_all(req.mcp.iter().map(|m| {
            let cached = super::mcp::listed_in(context, &m.server.label);
            let client = client.clone();
            let server = m.server.clone();
            async move {
                match cached {
                    Some(tools) => Ok((tools, false)),
                    None if !fetch => Ok((Vec::new(), false)),
                    None => match tokio::time::timeout(timeout, client.list_tools(server)).await {
                        Ok(r) => r.map(|t| (t, true)),
                        Err(_) => Err(super::mcp::McpFailure::Protocol {
                            code: -32001,
                            message: "listing the tools timed out".into(),
                        }),
                    },
                }
            }
        }))
        .await;
        for (m, listed) in req.mcp.iter_mut().zip(lists) {
            match listed {
                Ok((tools, fresh)) => {
                    if fresh {
                        items.push(super::mcp::list_item(
                            &random_id("mcpl_"),
                            &m.server.label,
                            &tools,
                        ));
                    }
                    m.offer(&tools);
                }
                Err(e) => {
                    tracing::warn!(server = %m.server.label, error = %e.message(), "an MCP server's tools could not be listed");
                    return Err(ServiceError {
                        status: 424,
                        kind: "external_connector_error",
                        code: Some("mcp_list_tools_failed".into()),
                        message: format!(
                            "Error retrieving tool list from MCP server '{}': {}",
                            m.server.label,
                            e.message()
                        ),
                        param: Some(m.param.clone()),
                    });
                }
            }
        }
        // Every function the engine is offered has its own name.
        let mut names: Vec<&str> = req
            .tools
            .iter()
            .filter_map(|t| t["function"]["name"].as_str())
            .collect();
        if req.file_search.is_some() {
            names.push(super::file_search::FUNCTION);
        }
        if req.web_search.is_some() {
            names.push(super::web_search::FUNCTION);
        }
        for m in &req.mcp {
            for t in &m.offered {
                if names.contains(&t.name.as_str()) {
                    return Err(invalid(
                        &format!("{}.allowed_tools", m.param),
                        format!(
                            "the server `{}` offers a tool named `{}`, as another tool of this request is: leave one out with allowed_tools",
                            m.server.label, t.name
                        ),
                    ));
                }
                names.push(&t.name);
            }
        }
        if let Some((label, Some(name))) = &req.mcp_choice
            && fetch
            && !req
                .mcp
                .iter()
                .any(|m| &m.server.label == label && m.offered.iter().any(|t| &t.name == name))
        {
            return Err(invalid(
                "tool_choice.name",
                format!("the MCP server `{label}` offers no tool `{name}` to this request"),
            ));
        }
        Ok(items)
    }

    /// Runs the calls the new input approves (`mcp_approval_response` with `approve:
    /// true`): each call's `mcp_call` item and what the model is told.
    async fn approved_calls(
        &self,
        req: &ResponseRequest,
        all: &[Item],
        new_from: usize,
    ) -> Result<Vec<(Value, String)>, ServiceError> {
        let mut calls = Vec::new();
        for (i, it) in all.iter().enumerate().skip(new_from) {
            let Item::ApprovalResponse {
                request_id,
                approve: true,
                ..
            } = it
            else {
                continue;
            };
            let Some((label, name, arguments)) = all[..i].iter().find_map(|a| match a {
                Item::ApprovalRequest {
                    id,
                    server_label,
                    name,
                    arguments,
                } if id == request_id => Some((server_label, name, arguments)),
                _ => None,
            }) else {
                continue;
            };
            let m = req
                .mcp
                .iter()
                .find(|m| &m.server.label == label && m.offered.iter().any(|t| &t.name == name))
                .ok_or_else(|| ServiceError {
                    status: 400,
                    kind: "invalid_request_error",
                    code: None,
                    message: format!(
                        "The approved call is of the tool `{name}` of the MCP server `{label}`, which this request does not offer: give the server in `tools` again"
                    ),
                    param: Some(format!("input[{}]", i - new_from)),
                })?;
            let call = HostedCall {
                name: name.clone(),
                call_id: request_id.clone(),
                arguments: arguments.clone(),
            };
            let item_id = random_id("mcp_");
            let done = tokio::time::timeout(
                self.tool_timeout,
                self.mcp_call(m, &call, &item_id, Some(request_id)),
            )
            .await;
            calls.push(match done {
                Ok((item, found)) => (item, found.results.err().unwrap_or_default()),
                Err(_) => {
                    let failed = Err(super::mcp::McpFailure::Protocol {
                        code: -32001,
                        message: "the call timed out".into(),
                    });
                    let item = super::mcp::call_item(
                        &item_id,
                        label,
                        name,
                        arguments,
                        Some(&failed),
                        Some(request_id),
                    );
                    (item, format!("The {name} call timed out."))
                }
            });
        }
        Ok(calls)
    }

    /// The engine's token count of these items as a chat request.
    async fn count(
        &self,
        req: &ResponseRequest,
        items: &[Item],
        session: &str,
        owner: &str,
    ) -> Result<TokenCount, ServiceError> {
        let mut body = json!({
            "model": req.model,
            "messages": chat_messages(req.instructions.as_deref(), items),
            "add_generation_prompt": true,
        });
        if !req.tools.is_empty() {
            body["tools"] = json!(req.tools);
        }
        self.engine
            .count_tokens(body, session.to_string(), owner.to_string())
            .await
            .map_err(ServiceError::from_engine)
    }

    /// `truncation: auto`: drops the oldest items of the context (never the new input
    /// or the instructions) until the prompt and `max_output_tokens` fit the model's
    /// context, as the engine's tokenizer counts it (a binary search over how many to
    /// drop). A function call output left without its call goes with it.
    async fn truncate(
        &self,
        req: &ResponseRequest,
        all: &mut Vec<Item>,
        new_from: usize,
        session: &str,
        owner: &str,
    ) -> Result<(), ServiceError> {
        let whole = self.count(req, all, session, owner).await?;
        let Some(max) = whole.max_model_len else {
            return Ok(());
        };
        let budget = max.saturating_sub(req.max_output_tokens.unwrap_or(1));
        if whole.count <= budget {
            return Ok(());
        }
        let (mut lo, mut hi) = (1, new_from);
        let mut fits = self
            .count(req, &dropped(all, hi), session, owner)
            .await?
            .count
            <= budget;
        if !fits {
            return Err(too_long(max, req.max_output_tokens));
        }
        while lo < hi {
            let mid = (lo + hi) / 2;
            fits = self
                .count(req, &dropped(all, mid), session, owner)
                .await?
                .count
                <= budget;
            if fits {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        *all = dropped(all, hi);
        Ok(())
    }

    /// `POST /v1/responses/input_tokens`: the token count of a would-be request, context
    /// included, from the engine's tokenizer.
    pub async fn input_tokens(&self, body: &Value, owner: &str) -> Result<Value, ServiceError> {
        let p = self.prepare(body, owner, false).await?;
        let session = p
            .req
            .prompt_cache_key
            .clone()
            .or(p.root)
            .unwrap_or_default();
        let n = self.count(&p.req, &p.all, &session, owner).await?;
        Ok(json!({"object": "response.input_tokens", "input_tokens": n.count}))
    }

    /// `POST /v1/responses`.
    pub async fn create(&self, body: &Value, owner: &str) -> Result<Created, ServiceError> {
        let Prepared {
            req,
            input,
            mut all,
            new_from,
            root,
            preface,
        } = self.prepare(body, owner, true).await?;
        // The request as stored: without the MCP servers' headers and tokens.
        let redacted = without_secrets(body);
        let body = redacted.as_ref().unwrap_or(body);
        let id = random_id("resp_");
        let created_at = (self.now)();
        let session = req
            .prompt_cache_key
            .clone()
            .or(root)
            .unwrap_or_else(|| id.clone());
        if req.truncation == Truncation::Auto {
            self.truncate(&req, &mut all, new_from, &session, owner)
                .await?;
        }
        let messages = chat_messages(req.instructions.as_deref(), &all);
        let mut ids = RandomIds;
        if req.background {
            return self
                .start_background(Accepted {
                    id,
                    req,
                    body,
                    input,
                    created_at,
                    owner,
                    messages,
                    session,
                    preface,
                })
                .await;
        }
        let stream = req.stream;
        let chat = req.chat_body(messages, stream);
        let mut rounds = self.rounds(&req, owner, &chat, &session);
        // A streamed response is stored as soon as its id is out (its first event); one
        // answered whole is stored once, when it ends.
        if req.store && stream {
            self.begin(&id, &req, body, &input, created_at, owner)
                .await?;
        }
        let whole = (id.as_str(), &req, body, input.as_slice(), created_at, owner);
        let answer = match self.ask(!req.store, chat, session, owner.to_string()).await {
            Ok(a) => a,
            Err(e) => {
                let status = Status::Failed {
                    code: e.code.clone(),
                    message: e.message.clone(),
                };
                let outcome = Outcome::bare(&status, &req.model);
                match (req.store, stream) {
                    (true, true) => self.finish(&id, &req, created_at, outcome).await?,
                    (true, false) => self.store_whole(whole, outcome).await?,
                    (false, _) => self.ended(&req, &status, &[]),
                }
                return Err(ServiceError::from_engine(e));
            }
        };
        match answer {
            Answer::Complete(first) => {
                let (c, mut output, sources, usage) =
                    match self.complete_rounds(first, &mut rounds).await {
                        Ok(done) => done,
                        Err(e) => {
                            let status = Status::Failed {
                                code: e.code.clone(),
                                message: e.message.clone(),
                            };
                            let outcome = Outcome::bare(&status, &req.model);
                            if req.store {
                                self.store_whole(whole, outcome).await?;
                            } else {
                                self.ended(&req, &status, &[]);
                            }
                            return Err(ServiceError::from_engine(e));
                        }
                    };
                output.splice(0..0, preface);
                let message = &c["choices"][0]["message"];
                output.extend(
                    output_items(message, &mut ids)
                        .into_iter()
                        .filter(|i| {
                            !(i["type"] == "function_call"
                                && rounds.as_ref().is_some_and(|r| {
                                    i["name"]
                                        .as_str()
                                        .is_some_and(|n| r.hosted.iter().any(|h| h == n))
                                }))
                        })
                        .map(|i| cited(i, &sources)),
                );
                let status = status_of(c["choices"][0]["finish_reason"].as_str());
                let model = c["model"].as_str().unwrap_or(&req.model).to_string();
                if req.store {
                    let outcome = Outcome {
                        status: &status,
                        output: &output,
                        usage,
                        model: &model,
                        events: &[],
                    };
                    self.store_whole(whole, outcome).await?;
                } else {
                    self.ended(&req, &status, &output);
                }
                let env = Envelope {
                    id: &id,
                    created_at,
                    request: &req,
                    model: &model,
                    status: &status,
                    usage,
                };
                Ok(Created::Json(response_json(&env, &output)))
            }
            Answer::Stream(chunks) => Ok(Created::Events(
                self.stream(id, req, created_at, chunks, rounds, preface),
            )),
        }
    }

    /// The translator of a response's stream, rendering its Response object.
    fn translator(&self, id: &str, req: &ResponseRequest, created_at: i64) -> Translator {
        let hosted = hosted_functions(req);
        let (req, id) = (req.clone(), id.to_string());
        let render = Box::new(
            move |status: &Status, output: &[Value], usage: Option<Usage>| {
                let env = Envelope {
                    id: &id,
                    created_at,
                    request: &req,
                    model: &req.model,
                    status,
                    usage,
                };
                response_json(&env, output)
            },
        );
        Translator::new(render, Box::new(RandomIds)).hosting(hosted)
    }

    /// Feeds the engine's chunks through the translator to the sink until the stream
    /// ends, the client goes away or the response is cancelled; a background stream's
    /// events are stored every 200 ms meanwhile. Whether it was cancelled, and how the
    /// engine's stream failed, if it did.
    async fn drive(
        &self,
        id: &str,
        t: &mut Translator,
        mut chunks: ChunkStream,
        sink: &mut Sink,
    ) -> (bool, Option<EngineError>) {
        let live = match sink {
            Sink::Background { live, .. } => Some(live.clone()),
            Sink::Client(_) => None,
        };
        let cancelled = async {
            match &live {
                Some(l) => l.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return (true, None),
                _ = tick.tick() => self.flush_events(id, sink).await,
                c = chunks.next() => match c {
                    Some(Ok(c)) => {
                        if !sink.send(t.chunk(&c)).await {
                            return (true, None);
                        }
                    }
                    Some(Err(e)) => return (false, Some(e)),
                    None => return (false, None),
                },
            }
        }
    }

    /// Stores a background stream's pending events (kept for the final write if the
    /// store fails now).
    async fn flush_events(&self, id: &str, sink: &mut Sink) {
        let Sink::Background { pending, .. } = sink else {
            return;
        };
        let Some(w) = store_events(None, id, pending) else {
            return;
        };
        match self.store.write(w).await {
            Ok(_) => pending.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "a background response's events wait to be stored")
            }
        }
    }

    /// The events of a streamed response, sent as they are translated; the response
    /// is stored when it ends. A client that goes away cancels the engine request (its
    /// stream is dropped) and the response is stored as `cancelled` with what was
    /// produced until then.
    fn stream(
        &self,
        id: String,
        req: ResponseRequest,
        created_at: i64,
        chunks: ChunkStream,
        rounds: Option<Rounds>,
        preface: Vec<Value>,
    ) -> EventStream {
        let this = self.clone();
        let mut t = self.translator(&id, &req, created_at);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(32);
        tokio::spawn(async move {
            let mut sink = Sink::Client(tx);
            let mut start = t.start();
            start.extend(t.preface(&preface));
            let (gone, failed) = if sink.send(start).await {
                this.drive_rounds(&id, &mut t, chunks, &mut sink, rounds)
                    .await
            } else {
                (true, None)
            };
            let end = match (&failed, gone) {
                (_, true) => End::Cancelled,
                (Some(e), _) => End::Failed(&e.code, &e.message),
                (None, _) => End::Done,
            };
            let (events, status, output) = t.finish(end);
            if req.store {
                let outcome = Outcome {
                    status: &status,
                    output: &output,
                    usage: t.usage(),
                    model: &req.model,
                    events: &[],
                };
                if let Err(e) = this.finish(&id, &req, created_at, outcome).await {
                    tracing::error!(error = ?e, "a streamed response was not stored");
                }
            } else {
                this.ended(&req, &status, &output);
            }
            if !gone {
                sink.send(events).await;
            }
        });
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Stores a background response as `queued` and starts it in this replica; answers
    /// at once, with the queued Response or, when streamed, its events as they come.
    async fn start_background(&self, a: Accepted<'_>) -> Result<Created, ServiceError> {
        let Accepted {
            id,
            req,
            body,
            input,
            created_at,
            owner,
            messages,
            session,
            preface,
        } = a;
        // A place among the background responses, taken before anything is stored.
        let live = Live::new();
        {
            let mut running = self.live();
            if running.len() >= self.max_background {
                return Err(ServiceError {
                    status: 429,
                    kind: "rate_limit_error",
                    code: Some("too_many_background_responses".into()),
                    message: format!(
                        "This gateway runs {} background responses already; try again shortly",
                        self.max_background
                    ),
                    param: Some("background".into()),
                });
            }
            running.insert(id.clone(), live.clone());
        }
        if let Err(e) = self.begin(&id, &req, body, &input, created_at, owner).await {
            self.live().remove(&id);
            return Err(e);
        }
        live.stored.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut t = self.translator(&id, &req, created_at);
        let mut sink = Sink::Background {
            live: live.clone(),
            store: req.stream,
            pending: Vec::new(),
        };
        let mut start = t.start_queued();
        start.extend(t.preface(&preface));
        sink.send(start).await;
        let chat = req.chat_body(messages, true);
        let rounds = self.rounds(&req, owner, &chat, &session);
        let this = self.clone();
        let (id2, req2, owner2) = (id.clone(), req.clone(), owner.to_string());
        tokio::spawn(async move {
            this.run_background(
                id2, req2, created_at, chat, session, owner2, t, sink, rounds,
            )
            .await
        });
        if req.stream {
            return Ok(Created::Events(live.follow(0)));
        }
        let env = Envelope {
            id: &id,
            created_at,
            request: &req,
            model: &req.model,
            status: &Status::Queued,
            usage: None,
        };
        Ok(Created::Json(response_json(&env, &[])))
    }

    /// Runs a background response to its end (or its cancel) and stores it.
    #[allow(clippy::too_many_arguments)]
    async fn run_background(
        self,
        id: String,
        req: ResponseRequest,
        created_at: i64,
        chat: Value,
        session: String,
        owner: String,
        mut t: Translator,
        mut sink: Sink,
        rounds: Option<Rounds>,
    ) {
        let Sink::Background { live, .. } = &sink else {
            return;
        };
        let live = live.clone();
        let started = Write::one(
            "UPDATE responses SET status = 'in_progress', updated_at = $1              WHERE id = $2 AND status = 'queued'",
            vec![(self.now)().into(), id.as_str().into()],
        );
        if let Err(e) = self.store.write(started).await {
            tracing::warn!(error = %e, "a background response's start was not stored");
        }
        let answer = tokio::select! {
            a = self.engine.chat(chat, session, owner) => Some(a),
            _ = live.cancelled() => None,
        };
        let (cancelled, failed) = match answer {
            None => (true, None),
            Some(Err(e)) => (false, Some(e)),
            Some(Ok(Answer::Stream(chunks))) => {
                sink.send(t.in_progress()).await;
                self.drive_rounds(&id, &mut t, chunks, &mut sink, rounds)
                    .await
            }
            Some(Ok(Answer::Complete(_))) => (
                false,
                Some(EngineError {
                    status: 502,
                    code: "bad_gateway".into(),
                    message: "The engine answered a streamed request whole".into(),
                }),
            ),
        };
        let end = match (&failed, cancelled) {
            (_, true) => End::Cancelled,
            (Some(e), _) => End::Failed(&e.code, &e.message),
            (None, _) => End::Done,
        };
        let (events, status, output) = t.finish(end);
        sink.send(events).await;
        let pending = match &mut sink {
            Sink::Background { pending, .. } => std::mem::take(pending),
            Sink::Client(_) => Vec::new(),
        };
        let outcome = Outcome {
            status: &status,
            output: &output,
            usage: t.usage(),
            model: &req.model,
            events: &pending,
        };
        if let Err(e) = self.finish(&id, &req, created_at, outcome).await {
            tracing::error!(error = ?e, "a background response was not stored");
        }
        self.live().remove(&id);
        live.progress.send_modify(|p| p.1 = true);
    }

    /// Stores an accepted response as `in_progress` (`queued` in the background), with
    /// its input items, and holds its lease.
    async fn begin(
        &self,
        id: &str,
        req: &ResponseRequest,
        body: &Value,
        input: &[Value],
        created_at: i64,
        owner: &str,
    ) -> Result<(), ServiceError> {
        self.store
            .write(begin_write(id, req, body, input, created_at, owner))
            .await?;
        self.running().insert(id.to_string());
        Ok(())
    }

    /// Reports a response's end.
    fn ended(&self, req: &ResponseRequest, status: &Status, output: &[Value]) {
        self.observer.response_done(status.as_str(), req.background);
        let calls = output
            .iter()
            .filter(|i| i["type"] == "function_call")
            .count();
        if calls > 0 {
            self.observer.tool_round(calls);
        }
    }

    /// Stores the end of a response: its status, Response object and output items (and a
    /// background stream's last events), and appends its input and output to its
    /// conversation. A response cancelled meanwhile (through another replica) stays
    /// cancelled.
    async fn finish(
        &self,
        id: &str,
        req: &ResponseRequest,
        created_at: i64,
        o: Outcome<'_>,
    ) -> Result<(), ServiceError> {
        let w = self.finish_write(id, req, created_at, &o, None).await?;
        self.store.write(w).await?;
        Ok(())
    }

    /// Stores a response that ended before anything of it was stored (not streamed,
    /// not in the background: nobody knew its id), all in one transaction.
    async fn store_whole(
        &self,
        a: (&str, &ResponseRequest, &Value, &[Value], i64, &str),
        o: Outcome<'_>,
    ) -> Result<(), ServiceError> {
        let (id, req, body, input, created_at, owner) = a;
        let end = self
            .finish_write(id, req, created_at, &o, Some(input))
            .await?;
        self.store
            .write(begin_write(id, req, body, input, created_at, owner).and(end))
            .await?;
        Ok(())
    }

    /// The statements of [`Responses::finish`]; the input items to append to a
    /// conversation are read back unless given.
    async fn finish_write(
        &self,
        id: &str,
        req: &ResponseRequest,
        created_at: i64,
        o: &Outcome<'_>,
        input: Option<&[Value]>,
    ) -> Result<Write, ServiceError> {
        let env = Envelope {
            id,
            created_at,
            request: req,
            model: o.model,
            status: o.status,
            usage: o.usage,
        };
        let response = response_json(&env, o.output);
        let error = match o.status {
            Status::Failed { code, message } => {
                Some(json!({"code": code, "message": message}).to_string())
            }
            _ => None,
        };
        let now = (self.now)();
        self.running().remove(id);
        self.ended(req, o.status, o.output);
        let w = Write::one(
            "UPDATE responses SET \
             status = CASE WHEN status = 'cancelled' THEN 'cancelled' ELSE $1 END, \
             response = $2, error = $3, updated_at = $4, lease_until = NULL WHERE id = $5",
            vec![
                o.status.as_str().into(),
                response.to_string().into(),
                error.into(),
                now.into(),
                id.into(),
            ],
        );
        let w = item_rows(w, id, "output", o.output);
        let mut w = store_events(Some(w), id, o.events).expect("a write");
        if let Some(conv) = &req.conversation
            && !matches!(o.status, Status::Failed { .. })
        {
            let stored;
            let input = match input {
                Some(i) => i,
                None => {
                    stored = self.items(id, "input").await?;
                    &stored
                }
            };
            w = super::conversations::append_items(w, conv, input.iter().chain(o.output), now);
        }
        Ok(w)
    }

    /// `GET /v1/responses/{id}`.
    pub async fn get(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT status, response, request, created_at, error FROM responses WHERE id = $1 AND owner = $2",
                &[id.into(), owner.into()],
            )
            .await?
            .ok_or_else(|| ServiceError::not_found("response_id", format!("Response with id '{id}' not found.")))?;
        let stored: Option<String> = sqlx::Row::get(&row, "response");
        let status: String = sqlx::Row::get(&row, "status");
        let error: Option<String> = sqlx::Row::get(&row, "error");
        let mut v: Value = match stored.and_then(|s| serde_json::from_str(&s).ok()) {
            Some(v) => v,
            None => {
                // Not finished: the Response as it stands (no output yet).
                let body: String = sqlx::Row::get(&row, "request");
                let body: Value = serde_json::from_str(&body).unwrap_or_default();
                let req = ResponseRequest::parse(&body).map_err(ServiceError::invalid)?;
                let created_at: i64 = sqlx::Row::get(&row, "created_at");
                let st = Status::InProgress;
                response_json(
                    &Envelope {
                        id,
                        created_at,
                        request: &req,
                        model: &req.model,
                        status: &st,
                        usage: None,
                    },
                    &[],
                )
            }
        };
        // The row's status wins (recovery fails what a crash left running).
        v["status"] = json!(status);
        if let Some(e) = error.and_then(|e| serde_json::from_str::<Value>(&e).ok()) {
            let (code, message) = (
                e["code"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or(""),
            );
            v["error"] = super::output::error_json(code, message);
        }
        Ok(v)
    }

    /// A stored response's request: whether it runs in the background, and streams.
    async fn mode(&self, id: &str, owner: &str) -> Result<(bool, bool, String), ServiceError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT request, status FROM responses WHERE id = $1 AND owner = $2",
                &[id.into(), owner.into()],
            )
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "response_id",
                    format!("Response with id '{id}' not found."),
                )
            })?;
        let request: String = sqlx::Row::get(&row, "request");
        let request: Value = serde_json::from_str(&request).unwrap_or_default();
        Ok((
            request["background"] == true,
            request["stream"] == true,
            sqlx::Row::get(&row, "status"),
        ))
    }

    /// `GET /v1/responses/{id}?stream=true&starting_after=N`: a background stream's
    /// events after sequence number N (all when absent), then the rest as they come.
    pub async fn events(
        &self,
        id: &str,
        owner: &str,
        starting_after: Option<u64>,
    ) -> Result<EventStream, ServiceError> {
        let (background, stream, _) = self.mode(id, owner).await?;
        if !(background && stream) {
            return Err(ServiceError::invalid(BadInput {
                message: "Only a response created with `background: true` and `stream: true` \
                          can be streamed again"
                    .into(),
                param: "stream".into(),
            }));
        }
        let from = starting_after.map_or(0, |n| n.saturating_add(1));
        let local = self.live().get(id).cloned();
        if let Some(live) = local {
            return Ok(live.follow(usize::try_from(from).unwrap_or(usize::MAX)));
        }
        Ok(self.follow_stored(id.to_string(), from))
    }

    /// A background stream's stored events from sequence number `from`, and those
    /// stored later while another replica runs it (looked for every 200 ms), until it
    /// is finished: its final status and last events are stored together.
    fn follow_stored(&self, id: String, from: u64) -> EventStream {
        let (store, now) = (self.store.clone(), self.now);
        let read = move |store: Arc<Store>, id: String, next: u64| async move {
            let rows = store
                .fetch_all(
                    "SELECT seq, event FROM response_events \
                     WHERE response_id = $1 AND seq >= $2 ORDER BY seq LIMIT 1000",
                    &[id.as_str().into(), (next as i64).into()],
                )
                .await?;
            Ok::<_, StoreError>(
                rows.iter()
                    .map(|r| {
                        let seq: i64 = sqlx::Row::get(r, "seq");
                        (seq as u64, sqlx::Row::get::<String, _>(r, "event"))
                    })
                    .collect::<Vec<_>>(),
            )
        };
        Box::pin(futures_util::stream::unfold(
            (store, id, from, std::collections::VecDeque::new(), false),
            move |(store, id, mut next, mut buf, mut done)| async move {
                loop {
                    if let Some(e) = buf.pop_front() {
                        return Some((e, (store, id, next, buf, done)));
                    }
                    if done {
                        return None;
                    }
                    let events = match read(store.clone(), id.clone(), next).await {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::warn!(error = %e, "a resumed stream could not be read");
                            return None;
                        }
                    };
                    if let Some((seq, _)) = events.last() {
                        next = seq + 1;
                        buf.extend(events.into_iter().map(|(_, e)| e));
                        continue;
                    }
                    // Running while its runner vouches for it and has not stored its
                    // end (a response cancelled through another replica is `cancelled`
                    // before its runner stops and stores its last events).
                    let state = store
                        .fetch_optional(
                            "SELECT CASE WHEN response IS NOT NULL OR lease_until IS NULL \
                             OR lease_until < $2 THEN 'over' ELSE 'running' END AS state \
                             FROM responses WHERE id = $1",
                            &[id.as_str().into(), now().into()],
                        )
                        .await
                        .ok()
                        .flatten()
                        .map(|r| sqlx::Row::get::<String, _>(&r, "state"));
                    match state.as_deref() {
                        Some("running") => {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await
                        }
                        // Over (or gone): what was stored with the end is the rest.
                        _ => done = true,
                    }
                    if done && let Ok(events) = read(store.clone(), id.clone(), next).await {
                        buf.extend(events.into_iter().map(|(_, e)| e));
                    }
                }
            },
        ))
    }

    /// `POST /v1/responses/{id}/cancel`: stops a background response (in this replica,
    /// or through the store for the replica that runs it) and answers with it; a
    /// finished one is answered as it is.
    pub async fn cancel(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        let (background, _, status) = self.mode(id, owner).await?;
        if !background {
            return Err(ServiceError::invalid(BadInput {
                message: "Only responses created with `background: true` can be cancelled".into(),
                param: "response_id".into(),
            }));
        }
        if matches!(status.as_str(), "queued" | "in_progress") {
            let local = self.live().get(id).cloned();
            match local {
                Some(live) => {
                    live.cancel();
                    let mut rx = live.progress.subscribe();
                    let _ = rx.wait_for(|p| p.1).await;
                }
                None => {
                    self.store
                        .write(Write::one(
                            "UPDATE responses SET status = 'cancelled', updated_at = $1 \
                             WHERE id = $2 AND status IN ('queued', 'in_progress')",
                            vec![(self.now)().into(), id.into()],
                        ))
                        .await?;
                }
            }
        }
        self.get(id, owner).await
    }

    /// `DELETE /v1/responses/{id}`.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        if !super::conversations::delete_owned(&self.store, "responses", id, owner).await? {
            return Err(ServiceError::not_found(
                "response_id",
                format!("Response with id '{id}' not found."),
            ));
        }
        // A background response deleted while it runs stops.
        if let Some(live) = self.live().get(id) {
            live.cancel();
        }
        Ok(json!({"id": id, "object": "response.deleted", "deleted": true}))
    }

    /// `GET /v1/responses/{id}/input_items?after=&limit=&order=`.
    pub async fn input_items(
        &self,
        id: &str,
        owner: &str,
        after: Option<&str>,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<Value, ServiceError> {
        super::conversations::page_args(limit, order)?;
        self.get(id, owner).await?;
        super::conversations::page(&self.items(id, "input").await?, after, limit, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(limit: usize, chat: Value) -> Rounds {
        let tool = super::super::file_search::FileSearchTool::parse(
            json!({"vector_store_ids": ["vs_1"]}).as_object().unwrap(),
            "tools[0]",
        )
        .unwrap();
        Rounds {
            file_search: Some(tool),
            web_search: None,
            mcp: Vec::new(),
            hosted: vec![super::super::file_search::FUNCTION.to_string()],
            owner: "o".into(),
            include_results: false,
            include_sources: false,
            limit,
            calls: 0,
            parallel: true,
            cacheable: false,
            chat,
            session: "s".into(),
        }
    }

    #[test]
    fn rounds_stop_offering_the_search_at_the_limit_and_force_it_once() {
        let search = super::super::file_search::FileSearchTool::function();
        let f = json!({"type": "function", "function": {"name": "f"}});
        let call = json!({"id": "c", "type": "function", "function": {"name": "file_search", "arguments": "{}"}});
        let result = json!({"role": "tool", "tool_call_id": "c", "content": "r"});
        let mut r = rounds(
            2,
            json!({"messages": [], "tools": [f, search], "tool_choice": "required"}),
        );
        r.advance(vec![call.clone()], vec![result.clone()]);
        assert_eq!(r.chat["tool_choice"], "auto", "forced once");
        assert_eq!(r.chat["tools"].as_array().unwrap().len(), 2);
        assert_eq!(r.chat["messages"].as_array().unwrap().len(), 2);
        r.advance(vec![call.clone()], vec![result.clone()]);
        assert_eq!(
            r.chat["tools"],
            json!([f]),
            "the limit is reached: no more searches"
        );
        // Without other tools, the request offers none.
        let mut r = rounds(
            1,
            json!({"messages": [], "tools": [search], "tool_choice": {"type": "function", "function": {"name": "file_search"}}}),
        );
        r.advance(vec![call], vec![result]);
        assert!(
            r.chat.get("tools").is_none() && r.chat.get("tool_choice").is_none(),
            "{}",
            r.chat
        );
    }
}
