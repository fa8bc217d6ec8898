//! What the gateway reads from a generation request: a [`RequestView`], parsed once
//! from the client's bytes (which are forwarded untouched unless a phase must rewrite
//! them, see [`body`]). Parsing validates the fields the gateway understands, so a
//! malformed request is answered here and never reaches an engine. The prompt text is
//! streamed to a [`PromptSink`] while parsing, so routing can hash it without a copy.

pub mod body;
pub mod multipart;
pub mod route;
mod wire;
pub mod workflow;

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderMap;

use crate::error::ApiError;
use wire::{Content, Input, Prompt, Wire};

/// The OpenAI route a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
    /// `multipart/form-data` with the audio file.
    Transcriptions,
    Speech,
    /// vLLM's `/tokenize` (chat form): the Responses API's token counts.
    Tokenize,
}

impl Route {
    pub fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Transcriptions => "/v1/audio/transcriptions",
            Route::Speech => "/v1/audio/speech",
            Route::Tokenize => "/tokenize",
        }
    }

    /// The body's media type.
    pub fn mime(self) -> &'static str {
        match self {
            Route::Transcriptions => "multipart/form-data",
            _ => "application/json",
        }
    }

    /// Short name for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
            Route::Transcriptions => "transcriptions",
            Route::Speech => "speech",
            Route::Tokenize => "tokenize",
        }
    }
}

/// What routing knows about a request.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub route: Route,
    /// The model the client named (selection may replace it with another).
    pub model: Arc<str>,
    /// The name the model's routing state and metrics are kept under: the model when
    /// the fleet lists it or the config names it, else `*` (a name only workers that
    /// accept any model serve), so client-chosen names cannot grow state or label sets.
    pub model_key: Arc<str>,
    pub stream: bool,
    /// `stream_options`: absent (`None`), else whether it sets `include_usage: true`.
    pub stream_options: Option<bool>,
    /// Session affinity key: `X-Session-ID`, `X-User-ID`, the configured header, else `user`.
    pub session_key: Option<String>,
    /// Chained hashes of the prompt's fixed-size blocks (empty unless a policy reads them).
    pub prefix_blocks: Vec<u64>,
    /// The body, kept when some policy reads token blocks (empty otherwise): the policy
    /// tokenises it with its model's tokenizer, once per model (`token_blocks`).
    pub body: bytes::Bytes,
    /// Chained hashes of the prompt's token blocks as the engine will cache them, once
    /// a policy asked; reset when the request moves to another model.
    pub token_blocks: std::sync::OnceLock<Vec<u64>>,
    /// Length of the prompt text in bytes.
    pub prompt_bytes: usize,
    /// Completion tokens the request may generate (`max_completion_tokens` or
    /// `max_tokens`, times `n`), when it says.
    pub max_tokens: Option<u64>,
    /// The intent that chose the model, when the client asked the gateway to choose.
    pub intent: Option<Arc<str>>,
    /// Where the `model` string's contents sit in the body, when they hold no escape:
    /// selection replaces them there instead of rewriting the body (`body::replace_string`).
    pub model_span: Option<std::ops::Range<usize>>,
    /// The workflow the request belongs to (`workflow_metadata` or `X-Workflow-ID`).
    pub workflow: Option<Arc<workflow::Workflow>>,
    /// The body carries `workflow_metadata` (removed before forwarding unless
    /// `--forward-workflow-metadata`).
    pub has_workflow_metadata: bool,
    /// The workers other replicas chose as the workflow's home, by worker role (URL
    /// labels, from the shared store; empty without Redis).
    pub workflow_homes: [Option<Arc<str>>; 3],
}

/// Receives the prompt's bytes, in order, while the request is parsed.
pub trait PromptSink {
    fn feed(&mut self, bytes: &[u8]);
}

/// A sink that keeps nothing.
impl PromptSink for () {
    fn feed(&mut self, _: &[u8]) {}
}

/// Counts what passes through on the way to the inner sink.
struct Counting<'s, S> {
    inner: &'s mut S,
    total: usize,
}

impl<S: PromptSink> PromptSink for Counting<'_, S> {
    fn feed(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        self.inner.feed(bytes);
    }
}

/// Session-key sources besides the fixed ones.
#[derive(Clone, Debug, Default)]
pub struct SessionHeaders {
    /// `--hash-header`.
    pub extra: Option<http::HeaderName>,
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
    ApiError::bad_request(message, param)
}

impl RequestView {
    /// Parses and validates a request body, feeding the prompt to `sink` (chat: each
    /// message's role, `\n`, its text, `\x1e`; completions: the prompt text or token ids).
    pub fn parse<S: PromptSink>(
        route: Route,
        headers: &HeaderMap,
        body: &[u8],
        session: &SessionHeaders,
        sink: &mut S,
    ) -> Result<RequestView, ApiError> {
        if route == Route::Transcriptions {
            return parse_multipart(headers, body, session);
        }
        let wire = parse_wire(body)?;
        let model = check_fields(&wire)?;
        let model_span = match wire.model.as_ref().map(|m| &m.0) {
            Some(Cow::Borrowed(m)) => {
                let start = m.as_ptr() as usize - body.as_ptr() as usize;
                Some(start..start + m.len())
            }
            _ => None,
        };
        let mut sink = Counting {
            inner: sink,
            total: 0,
        };
        feed_prompt(route, &wire, &mut sink)?;
        let prompt_bytes = sink.total;
        let workflow = workflow::of(wire.workflow_metadata.as_ref(), headers)?.map(Arc::new);
        Ok(RequestView {
            route,
            model_key: model.clone(),
            model,
            stream: wire.stream.unwrap_or(false),
            stream_options: wire
                .stream_options
                .as_ref()
                .map(|o| o.include_usage == Some(true)),
            session_key: session_key(headers, session, wire.user),
            prefix_blocks: Vec::new(),
            body: bytes::Bytes::new(),
            token_blocks: Default::default(),
            prompt_bytes,
            max_tokens: wire
                .max_completion_tokens
                .or(wire.max_tokens)
                .map(|m| m.saturating_mul(wire.n.unwrap_or(1).max(1))),
            intent: None,
            model_span,
            workflow,
            has_workflow_metadata: wire.workflow_metadata.is_some(),
            workflow_homes: Default::default(),
        })
    }
}

/// The body as the gateway reads it: a JSON object, nothing after it.
fn parse_wire(body: &[u8]) -> Result<Wire<'_>, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(invalid(
                "The request body is empty; send a JSON object",
                None,
            ));
        }
        Some(b'{') => {}
        Some(_) => return Err(invalid("The request body must be a JSON object", None)),
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    // Plain serde on the hot path; only a failure is parsed again to name the field.
    let wire: Wire = match serde::Deserialize::deserialize(&mut de) {
        Ok(w) => w,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            return Err(match serde_path_to_error::deserialize::<_, Wire>(&mut de) {
                Err(e) => wire_error(e),
                Ok(_) => invalid("Invalid request body", None),
            });
        }
    };
    de.end()
        .map_err(|e| invalid(format!("Invalid JSON: {e}"), None))?;
    Ok(wire)
}

/// Checks the values of the fields the gateway understands; returns the model.
fn check_fields(wire: &Wire<'_>) -> Result<Arc<str>, ApiError> {
    let model = match wire.model.as_ref().map(|m| &m.0) {
        Some(m) if !m.is_empty() => Arc::from(m.as_ref()),
        Some(_) => return Err(invalid("`model` must not be empty", Some("model"))),
        None => {
            return Err(invalid(
                "Missing required parameter: `model`",
                Some("model"),
            ));
        }
    };
    if wire.n == Some(0) {
        return Err(invalid("`n` must be at least 1", Some("n")));
    }
    if wire.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(invalid(
            "`temperature` must be between 0 and 2",
            Some("temperature"),
        ));
    }
    if wire.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(invalid("`top_p` must be between 0 and 1", Some("top_p")));
    }
    Ok(model)
}

/// Feeds the route's prompt to `sink`, checking that it is there and not empty.
fn feed_prompt<S: PromptSink>(route: Route, wire: &Wire<'_>, sink: &mut S) -> Result<(), ApiError> {
    let missing = |field: &str| {
        invalid(
            format!("Missing required parameter: `{field}`"),
            Some(field),
        )
    };
    match route {
        Route::Chat | Route::Tokenize => {
            let Some(messages) = &wire.messages else {
                return Err(missing("messages"));
            };
            if messages.is_empty() {
                return Err(invalid(
                    "`messages` must contain at least one message",
                    Some("messages"),
                ));
            }
            for m in messages {
                sink.feed(m.role.as_bytes());
                sink.feed(b"\n");
                match &m.content {
                    Some(Content::Text(t)) => sink.feed(t.as_bytes()),
                    Some(Content::Parts(parts)) => parts
                        .iter()
                        .filter_map(|p| p.text.as_ref())
                        .for_each(|t| sink.feed(t.as_bytes())),
                    None => {}
                }
                sink.feed(b"\x1e");
            }
        }
        Route::Completions => {
            let empty = || invalid("`prompt` must not be empty", Some("prompt"));
            match &wire.prompt {
                None => return Err(missing("prompt")),
                Some(Prompt::Text(t)) => sink.feed(t.as_bytes()),
                Some(Prompt::Texts(ts)) if ts.is_empty() => return Err(empty()),
                Some(Prompt::Texts(ts)) => ts.iter().for_each(|t| sink.feed(t.as_bytes())),
                Some(Prompt::Tokens(ids)) if ids.is_empty() => return Err(empty()),
                Some(Prompt::Tokens(ids)) => ids.iter().for_each(|t| sink.feed(&t.to_le_bytes())),
                Some(Prompt::TokenLists(lists)) if lists.is_empty() => return Err(empty()),
                Some(Prompt::TokenLists(lists)) => lists
                    .iter()
                    .flatten()
                    .for_each(|t| sink.feed(&t.to_le_bytes())),
            }
        }
        Route::Embeddings => {
            if wire.input.is_none() {
                return Err(missing("input"));
            }
        }
        Route::Speech => match &wire.input {
            None => return Err(missing("input")),
            Some(Input::Other) => {
                return Err(invalid("`input` must be a string", Some("input")));
            }
            Some(Input::Text(t)) if t.is_empty() => {
                return Err(invalid("`input` must not be empty", Some("input")));
            }
            Some(Input::Text(t)) => sink.feed(t.as_bytes()),
        },
        Route::Transcriptions => unreachable!("parsed as multipart"),
    }
    Ok(())
}

/// An audio upload (`multipart/form-data`): `model` is required, and a `file` part.
fn parse_multipart(
    headers: &HeaderMap,
    body: &[u8],
    session: &SessionHeaders,
) -> Result<RequestView, ApiError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = multipart::boundary(ct) else {
        return Err(invalid(
            "Send the audio as multipart/form-data with a boundary",
            None,
        ));
    };
    let parts = multipart::parts(body, boundary)
        .map_err(|e| invalid(format!("Malformed multipart body: {e}"), None))?;
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.filename.is_none())
            .map(|p| (p.value.clone(), std::str::from_utf8(&body[p.value.clone()])))
    };
    let (model_span, model) = match text("model") {
        Some((span, Ok(m))) if !m.trim().is_empty() => (span, Arc::from(m.trim())),
        Some(_) => {
            return Err(invalid(
                "`model` must be a non-empty text field",
                Some("model"),
            ));
        }
        None => {
            return Err(invalid(
                "Missing required parameter: `model`",
                Some("model"),
            ));
        }
    };
    if !parts.iter().any(|p| p.name == "file") {
        return Err(invalid("Missing required parameter: `file`", Some("file")));
    }
    let stream = matches!(text("stream"), Some((_, Ok("true"))));
    Ok(RequestView {
        route: Route::Transcriptions,
        model_key: Arc::clone(&model),
        // In place only when the field holds nothing but the name.
        model_span: (body[model_span.clone()] == *model.as_bytes()).then_some(model_span),
        model,
        stream,
        stream_options: None,
        session_key: session_key(headers, session, None),
        prefix_blocks: Vec::new(),
        body: bytes::Bytes::new(),
        token_blocks: Default::default(),
        prompt_bytes: 0,
        max_tokens: None,
        intent: None,
        workflow: workflow::of(None, headers)?.map(Arc::new),
        has_workflow_metadata: false,
        workflow_homes: Default::default(),
    })
}

/// The session affinity key: `X-Session-ID`, `X-User-ID`, the configured header, else
/// the body's `user`. `Authorization` is never one.
fn session_key(
    headers: &HeaderMap,
    session: &SessionHeaders,
    user: Option<Cow<'_, str>>,
) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    header("x-session-id")
        .or_else(|| header("x-user-id"))
        .or_else(|| session.extra.as_ref().and_then(|h| header(h.as_str())))
        .or_else(|| user.map(Cow::into_owned))
}

fn wire_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return invalid(format!("Invalid JSON: {inner}"), None);
    }
    let path = e.path().to_string();
    if path == "." {
        return invalid(format!("Invalid request body: {inner}"), None);
    }
    invalid(format!("Invalid type for `{path}`: {inner}"), Some(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the parser feeds.
    #[derive(Default)]
    struct Collect(Vec<u8>);
    impl PromptSink for Collect {
        fn feed(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    fn parse(route: Route, body: &str) -> Result<RequestView, ApiError> {
        RequestView::parse(
            route,
            &HeaderMap::new(),
            body.as_bytes(),
            &SessionHeaders::default(),
            &mut (),
        )
    }

    #[test]
    fn the_prompt_is_fed_in_order() {
        let mut sink = Collect::default();
        let v = RequestView::parse(
            Route::Chat,
            &HeaderMap::new(),
            br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
            &SessionHeaders::default(),
            &mut sink,
        )
        .unwrap();
        assert_eq!(sink.0, b"system\ns\x1euser\nab\x1e");
        assert_eq!(v.prompt_bytes, sink.0.len());
        let mut sink = Collect::default();
        RequestView::parse(
            Route::Completions,
            &HeaderMap::new(),
            br#"{"model":"m","prompt":[1,2]}"#,
            &SessionHeaders::default(),
            &mut sink,
        )
        .unwrap();
        assert_eq!(sink.0, [1, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn extracts_model_stream_and_session() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "u1".parse().unwrap());
        let v = RequestView::parse(
            Route::Completions,
            &h,
            br#"{"model":"m","prompt":"hi","stream":true,"user":"body"}"#,
            &SessionHeaders::default(),
            &mut (),
        )
        .unwrap();
        assert_eq!(&*v.model, "m");
        assert!(v.stream);
        assert_eq!(v.session_key.as_deref(), Some("u1"));
        assert!(v.prefix_blocks.is_empty());
        let v = parse(
            Route::Completions,
            r#"{"model":"m","prompt":[1,2,3],"user":"body"}"#,
        )
        .unwrap();
        assert_eq!(v.session_key.as_deref(), Some("body"));
    }

    #[test]
    fn authorization_is_never_a_session_key() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        let v = RequestView::parse(
            Route::Completions,
            &h,
            br#"{"model":"m","prompt":"x"}"#,
            &SessionHeaders::default(),
            &mut (),
        )
        .unwrap();
        assert_eq!(v.session_key, None);
    }

    #[test]
    fn rejects_bad_requests_naming_the_field() {
        let cases = [
            (Route::Chat, "{", None),
            (Route::Chat, "[]", None),
            (
                Route::Chat,
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
            ),
            (Route::Chat, r#"{"model":"m"}"#, Some("messages")),
            (
                Route::Chat,
                r#"{"model":"m","messages":[]}"#,
                Some("messages"),
            ),
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                Some("messages[0]"),
            ),
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                Some("messages[0].content"),
            ),
            (Route::Chat, r#"{"model":5,"messages":[]}"#, Some("model")),
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"role":"u"}],"stream":"yes"}"#,
                Some("stream"),
            ),
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"role":"u"}],"max_tokens":-3}"#,
                Some("max_tokens"),
            ),
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"role":"u"}],"temperature":9}"#,
                Some("temperature"),
            ),
            (Route::Completions, r#"{"model":"m"}"#, Some("prompt")),
            (
                Route::Completions,
                r#"{"model":"m","prompt":{}}"#,
                Some("prompt"),
            ),
            (Route::Embeddings, r#"{"model":"m"}"#, Some("input")),
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"role":"u"}]} trailing"#,
                None,
            ),
            // A key that is not valid Unicode.
            (
                Route::Chat,
                r#"{"model":"m","messages":[{"role":"u"}],"\ud800":1}"#,
                None,
            ),
        ];
        for (route, body, param) in cases {
            let e = parse(route, body).expect_err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
    }

    /// JSON strings with the escapes clients send, valid or not.
    fn json_string() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            "[a-z ]{0,6}",
            Just(r"\ud800".to_string()),
            Just(r"\udc00".to_string()),
            Just(r"\ud83d\ude00".to_string()),
            Just(r"\u0000".to_string()),
            Just(r#"\""#.to_string()),
            Just(r"\\".to_string()),
            Just(r"\n".to_string()),
            Just("é".to_string()),
        ];
        proptest::collection::vec(piece, 0..5).prop_map(|p| format!("\"{}\"", p.concat()))
    }

    /// JSON values, including numbers no f64 or u64 holds.
    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            json_string(),
            Just("1e400".to_string()),
            Just("-1e400".to_string()),
            Just("1e-400".to_string()),
            Just("123456789012345678901234567890".to_string()),
            Just("-0".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            proptest::num::f64::NORMAL.prop_map(|f| f.to_string()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|kv| {
                    let fields: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_errors_are_400(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            for route in [Route::Chat, Route::Completions, Route::Embeddings] {
                if let Err(e) = parse(route, &String::from_utf8_lossy(&body)) {
                    proptest::prop_assert_eq!(e.status, 400);
                }
            }
        }

        /// Valid-looking objects whose unknown fields hold escapes and extreme numbers:
        /// whatever the parser accepts can be rewritten (alias, prefill/decode), and the
        /// result is a JSON object with the new fields and the old ones intact.
        #[test]
        fn every_accepted_body_can_be_rewritten(
            extra in proptest::collection::vec(("[a-z_]{1,8}", json_value()), 0..5),
            content in json_string(),
        ) {
            let mut fields = vec![
                r#""model":"m""#.to_string(),
                format!(r#""messages":[{{"role":"user","content":{content}}}]"#),
            ];
            fields.extend(extra.iter().map(|(k, v)| format!("\"x_{k}\":{v}")));
            let body = format!("{{{}}}", fields.join(","));
            match parse(Route::Chat, &body) {
                Err(e) => proptest::prop_assert_eq!(e.status, 400, "{}", body),
                Ok(_) => {
                    let out = body::rewrite(body.as_bytes(), &[
                        ("model", Some(serde_json::json!("target"))),
                        ("max_tokens", Some(serde_json::json!(1))),
                        ("stream", None),
                    ]).expect("an accepted body can be rewritten");
                    let map: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
                        serde_json::from_slice(&out).expect("the rewrite is a JSON object");
                    proptest::prop_assert_eq!(map["model"].get(), "\"target\"");
                    proptest::prop_assert_eq!(map["max_tokens"].get(), "1");
                    for (k, v) in &extra {
                        // A later duplicate key wins, as in the client's own body.
                        let last = extra.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v);
                        if last == Some(v) {
                            proptest::prop_assert_eq!(map[&format!("x_{k}")].get(), v.as_str());
                        }
                    }
                }
            }
        }
    }
}
