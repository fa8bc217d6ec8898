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

use super::input::{BadInput, chat_messages, check_call_ids, parse_input};
use super::output::{Envelope, Ids, Status, Usage, output_items, response_json, status_of};
use super::request::ResponseRequest;
use super::stream::{Event, Translator};
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

/// Sends a chat completion body, with the routing session key, and answers.
pub trait Engine: Send + Sync + 'static {
    fn chat(&self, body: Value, session: String)
    -> BoxFuture<'static, Result<Answer, EngineError>>;
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

    fn engine(e: EngineError) -> ServiceError {
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
    Events(Pin<Box<dyn Stream<Item = String> + Send>>),
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
        }
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

    /// The chain ending at `previous`: every response's input and output, oldest first.
    async fn chain(&self, previous: &str, owner: &str) -> Result<Context, ServiceError> {
        let mut ids = Vec::new();
        let mut next = Some(previous.to_string());
        while let Some(id) = next {
            let row = self
                .store
                .fetch_optional(
                    "SELECT previous_response_id FROM responses WHERE id = $1 AND owner = $2",
                    &[id.as_str().into(), owner.into()],
                )
                .await?;
            let Some(row) = row else {
                return Err(ServiceError::not_found(
                    "previous_response_id",
                    format!("Previous response with id '{previous}' not found."),
                ));
            };
            next = sqlx::Row::get::<Option<String>, _>(&row, "previous_response_id");
            ids.push(id);
        }
        ids.reverse();
        let mut items = Vec::new();
        for id in &ids {
            items.extend(self.items(id, "input").await?);
            items.extend(self.items(id, "output").await?);
        }
        Ok(Context {
            items,
            root: ids.first().cloned(),
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

    /// `POST /v1/responses`.
    pub async fn create(&self, body: &Value, owner: &str) -> Result<Created, ServiceError> {
        let req = ResponseRequest::parse(body).map_err(ServiceError::invalid)?;
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
        let id = random_id("resp_");
        let created_at = (self.now)();
        let session = req
            .prompt_cache_key
            .clone()
            .or(context.root.clone())
            .unwrap_or_else(|| id.clone());
        let messages = chat_messages(req.instructions.as_deref(), &all);
        let stream = req.stream;
        let chat = req.chat_body(messages, stream);
        if req.store {
            self.begin(&id, &req, body, &input, created_at, owner)
                .await?;
        }
        let answer = match self.engine.chat(chat, session).await {
            Ok(a) => a,
            Err(e) => {
                let status = Status::Failed {
                    code: e.code.clone(),
                    message: e.message.clone(),
                };
                if req.store {
                    self.finish(&id, &req, created_at, &status, &[], None, &req.model)
                        .await?;
                }
                return Err(ServiceError::engine(e));
            }
        };
        match answer {
            Answer::Complete(c) => {
                let message = &c["choices"][0]["message"];
                let output = output_items(message, &mut ids);
                let status = status_of(c["choices"][0]["finish_reason"].as_str());
                let usage = c.get("usage").map(Usage::from_chat);
                let model = c["model"].as_str().unwrap_or(&req.model).to_string();
                if req.store {
                    self.finish(&id, &req, created_at, &status, &output, usage, &model)
                        .await?;
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
            Answer::Stream(chunks) => Ok(Created::Events(self.stream(id, req, created_at, chunks))),
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
        mut chunks: ChunkStream,
    ) -> Pin<Box<dyn Stream<Item = String> + Send>> {
        let this = self.clone();
        let (req2, id2) = (req.clone(), id.clone());
        let render = Box::new(
            move |status: &Status, output: &[Value], usage: Option<Usage>| {
                let env = Envelope {
                    id: &id2,
                    created_at,
                    request: &req2,
                    model: &req2.model,
                    status,
                    usage,
                };
                response_json(&env, output)
            },
        );
        let mut t = Translator::new(render, Box::new(RandomIds));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(32);
        tokio::spawn(async move {
            let send_all = |events: Vec<Event>| {
                let tx = tx.clone();
                async move {
                    for e in events {
                        if tx.send(e.sse()).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            };
            let mut gone = !send_all(t.start()).await;
            let mut failed: Option<(String, String)> = None;
            while !gone {
                match chunks.next().await {
                    Some(Ok(c)) => gone = !send_all(t.chunk(&c)).await,
                    Some(Err(e)) => {
                        failed = Some((e.code, e.message));
                        break;
                    }
                    None => break,
                }
            }
            drop(chunks);
            let (end, status, output) =
                t.finish(failed.as_ref().map(|(c, m)| (c.as_str(), m.as_str())));
            let status = if gone { Status::Cancelled } else { status };
            if req.store {
                if let Err(e) = this
                    .finish(
                        &id,
                        &req,
                        created_at,
                        &status,
                        &output,
                        t.usage(),
                        &req.model,
                    )
                    .await
                {
                    tracing::error!(error = ?e, "a streamed response was not stored");
                }
            }
            if !gone {
                send_all(end).await;
            }
        });
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Stores an accepted response as `in_progress`, with its input items.
    async fn begin(
        &self,
        id: &str,
        req: &ResponseRequest,
        body: &Value,
        input: &[Value],
        created_at: i64,
        owner: &str,
    ) -> Result<(), ServiceError> {
        let mut w = Write::one(
            "INSERT INTO responses (id, owner, created_at, updated_at, status, model, \
             previous_response_id, conversation_id, background, request, lease_until) \
             VALUES ($1, $2, $3, $3, 'in_progress', $4, $5, $6, $7, $8, $9)",
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
            ],
        );
        for (seq, item) in input.iter().enumerate() {
            w = w.then(
                "INSERT INTO response_items (response_id, seq, kind, item_id, item) \
                 VALUES ($1, $2, 'input', $3, $4)",
                vec![
                    id.into(),
                    (seq as i64).into(),
                    item["id"].as_str().unwrap_or_default().into(),
                    item.to_string().into(),
                ],
            );
        }
        self.store.write(w).await?;
        self.running().insert(id.to_string());
        Ok(())
    }

    /// Stores the end of a response: its status, Response object and output items, and
    /// appends its input and output to its conversation.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        id: &str,
        req: &ResponseRequest,
        created_at: i64,
        status: &Status,
        output: &[Value],
        usage: Option<Usage>,
        model: &str,
    ) -> Result<(), ServiceError> {
        let env = Envelope {
            id,
            created_at,
            request: req,
            model,
            status,
            usage,
        };
        let response = response_json(&env, output);
        let error = match status {
            Status::Failed { code, message } => {
                Some(json!({"code": code, "message": message}).to_string())
            }
            _ => None,
        };
        let now = (self.now)();
        self.running().remove(id);
        let mut w = Write::one(
            "UPDATE responses SET status = $1, response = $2, error = $3, updated_at = $4, \
             lease_until = NULL WHERE id = $5",
            vec![
                status.as_str().into(),
                response.to_string().into(),
                error.into(),
                now.into(),
                id.into(),
            ],
        );
        for (seq, item) in output.iter().enumerate() {
            w = w.then(
                "INSERT INTO response_items (response_id, seq, kind, item_id, item) \
                 VALUES ($1, $2, 'output', $3, $4)",
                vec![
                    id.into(),
                    (seq as i64).into(),
                    item["id"].as_str().unwrap_or_default().into(),
                    item.to_string().into(),
                ],
            );
        }
        if let Some(conv) = &req.conversation {
            if !matches!(status, Status::Failed { .. }) {
                let input = self.items(id, "input").await?;
                w = super::conversations::append_items(w, conv, input.iter().chain(output), now);
            }
        }
        self.store.write(w).await?;
        Ok(())
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

    /// `DELETE /v1/responses/{id}`.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        let n = self
            .store
            .write(Write::one(
                "DELETE FROM responses WHERE id = $1 AND owner = $2",
                vec![id.into(), owner.into()],
            ))
            .await?;
        if n.first().copied().unwrap_or(0) == 0 {
            return Err(ServiceError::not_found(
                "response_id",
                format!("Response with id '{id}' not found."),
            ));
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
