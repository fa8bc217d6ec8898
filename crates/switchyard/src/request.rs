//! `RequestView`: what routing needs from a request, parsed once from the client's bytes
//! (which are forwarded untouched). Parsing also validates the fields the gateway
//! understands, so a malformed request is answered here and never reaches an engine.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::error::ApiError;

/// The OpenAI route a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
}

impl Route {
    pub fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
        }
    }

    /// Short name for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
        }
    }
}

/// What routing knows about a request.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub route: Route,
    pub model: Arc<str>,
    pub stream: bool,
    /// Session affinity key: `X-Session-ID`, `X-User-ID`, the configured header, else `user`.
    pub session_key: Option<String>,
    /// Chained hashes of the prompt's fixed-size blocks (empty unless the policy asked).
    pub prefix_blocks: Vec<u64>,
    /// Length of the prompt text in bytes (characters for ASCII).
    pub prompt_bytes: usize,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<HashMap<Cow<'a, str>, IgnoredAny>>,
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    prompt: Option<Prompt<'a>>,
    input: Option<IgnoredAny>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Stop<'a>>,
}

/// Parsed only to check its type.
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Stop<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Tokens(Vec<u32>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    TokenLists(Vec<Vec<u32>>),
}

/// Feeds bytes and cuts them into fixed-size blocks with chained hashes, so equal
/// prompt prefixes give equal leading hashes.
pub struct BlockHasher {
    size: usize,
    buf: Vec<u8>,
    parent: u64,
    out: Vec<u64>,
    total: usize,
}

impl BlockHasher {
    pub fn new(size: usize) -> Self {
        BlockHasher {
            size,
            buf: Vec::with_capacity(size),
            parent: 0x243F_6A88_85A3_08D3,
            out: Vec::new(),
            total: 0,
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        if self.size == 0 {
            return;
        }
        while !bytes.is_empty() {
            let take = (self.size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.size {
                self.parent = hash_block(self.parent, &self.buf);
                self.out.push(self.parent);
                self.buf.clear();
            }
        }
    }

    /// The hashes of every full block, and the total bytes fed.
    pub fn finish(self) -> (Vec<u64>, usize) {
        (self.out, self.total)
    }
}

/// Chained hash of one block (FxHash-style over 8-byte words, with a final mix).
pub fn hash_block(parent: u64, block: &[u8]) -> u64 {
    let mut h = parent;
    let mut chunks = block.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

/// The JSON object `body` with each `(key, value)` set (a `null` value removes the key) —
/// for the few routes that must change the body (model alias, data-parallel rank in the
/// body, prefill/decode). `None` if `body` is not a JSON object.
pub fn set_fields(body: &[u8], fields: &[(&str, serde_json::Value)]) -> Option<bytes::Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    for (k, val) in fields {
        if val.is_null() {
            v.remove(*k);
        } else {
            v.insert((*k).to_string(), val.clone());
        }
    }
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
}

/// Session-key sources, in order of preference.
#[derive(Clone, Debug, Default)]
pub struct SessionHeaders {
    pub extra: Option<http::HeaderName>,
}

impl RequestView {
    /// Parses and validates a request body. `block_size` > 0 computes prefix blocks.
    pub fn parse(
        route: Route,
        headers: &HeaderMap,
        body: &[u8],
        block_size: usize,
        session: &SessionHeaders,
    ) -> Result<RequestView, ApiError> {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                return Err(ApiError::bad_request(
                    "The request body is empty; send a JSON object",
                    None,
                ));
            }
            Some(b'{') => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "The request body must be a JSON object",
                    None,
                ));
            }
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        // Plain serde on the hot path; only a failure is parsed again to name the field.
        let wire: Wire = match serde::Deserialize::deserialize(&mut de) {
            Ok(w) => w,
            Err(_) => {
                let mut de = serde_json::Deserializer::from_slice(body);
                return Err(match serde_path_to_error::deserialize::<_, Wire>(&mut de) {
                    Err(e) => wire_error(e),
                    Ok(_) => ApiError::bad_request("Invalid request body", None),
                });
            }
        };
        de.end()
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}"), None))?;

        let model = match wire.model {
            Some(m) if !m.is_empty() => Arc::from(m.as_ref()),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`model` must not be empty",
                    Some("model"),
                ));
            }
            None => {
                return Err(ApiError::bad_request(
                    "Missing required parameter: `model`",
                    Some("model"),
                ));
            }
        };
        if let Some(n) = wire.n {
            if n == 0 {
                return Err(ApiError::bad_request("`n` must be at least 1", Some("n")));
            }
        }
        if let Some(t) = wire.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::bad_request(
                    "`temperature` must be between 0 and 2",
                    Some("temperature"),
                ));
            }
        }
        if let Some(p) = wire.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::bad_request(
                    "`top_p` must be between 0 and 1",
                    Some("top_p"),
                ));
            }
        }
        let _ = (
            wire.max_tokens,
            wire.max_completion_tokens,
            wire.seed,
            wire.stop,
            wire.stream_options,
        );

        let mut hasher = BlockHasher::new(block_size);
        match route {
            Route::Chat => {
                let Some(messages) = wire.messages else {
                    return Err(ApiError::bad_request(
                        "Missing required parameter: `messages`",
                        Some("messages"),
                    ));
                };
                if messages.is_empty() {
                    return Err(ApiError::bad_request(
                        "`messages` must contain at least one message",
                        Some("messages"),
                    ));
                }
                for m in &messages {
                    hasher.feed(m.role.as_bytes());
                    hasher.feed(b"\n");
                    match &m.content {
                        Some(Content::Text(t)) => hasher.feed(t.as_bytes()),
                        Some(Content::Parts(parts)) => {
                            for p in parts {
                                if let Some(t) = &p.text {
                                    hasher.feed(t.as_bytes());
                                }
                            }
                        }
                        None => {}
                    }
                    hasher.feed(b"\x1e");
                }
            }
            Route::Completions => match wire.prompt {
                None => {
                    return Err(ApiError::bad_request(
                        "Missing required parameter: `prompt`",
                        Some("prompt"),
                    ));
                }
                Some(Prompt::Text(t)) => hasher.feed(t.as_bytes()),
                Some(Prompt::Texts(ts)) => {
                    if ts.is_empty() {
                        return Err(ApiError::bad_request(
                            "`prompt` must not be empty",
                            Some("prompt"),
                        ));
                    }
                    ts.iter().for_each(|t| hasher.feed(t.as_bytes()));
                }
                Some(Prompt::Tokens(ids)) => {
                    if ids.is_empty() {
                        return Err(ApiError::bad_request(
                            "`prompt` must not be empty",
                            Some("prompt"),
                        ));
                    }
                    ids.iter().for_each(|t| hasher.feed(&t.to_le_bytes()));
                }
                Some(Prompt::TokenLists(lists)) => {
                    if lists.is_empty() {
                        return Err(ApiError::bad_request(
                            "`prompt` must not be empty",
                            Some("prompt"),
                        ));
                    }
                    lists
                        .iter()
                        .flatten()
                        .for_each(|t| hasher.feed(&t.to_le_bytes()));
                }
            },
            Route::Embeddings => {
                if wire.input.is_none() {
                    return Err(ApiError::bad_request(
                        "Missing required parameter: `input`",
                        Some("input"),
                    ));
                }
            }
        }
        let (prefix_blocks, prompt_bytes) = hasher.finish();

        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let session_key = header("x-session-id")
            .or_else(|| header("x-user-id"))
            .or_else(|| session.extra.as_ref().and_then(|h| header(h.as_str())))
            .or_else(|| wire.user.map(Cow::into_owned));

        Ok(RequestView {
            route,
            model,
            stream: wire.stream.unwrap_or(false),
            session_key,
            prefix_blocks,
            prompt_bytes,
        })
    }
}

fn wire_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::bad_request(format!("Invalid JSON: {inner}"), None);
    }
    if e.path().to_string() == "." {
        return ApiError::bad_request(format!("Invalid request body: {inner}"), None);
    }
    let path = e.path().to_string();
    ApiError::bad_request(format!("Invalid type for `{path}`: {inner}"), Some(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(route: Route, body: &str) -> Result<RequestView, ApiError> {
        RequestView::parse(
            route,
            &HeaderMap::new(),
            body.as_bytes(),
            16,
            &SessionHeaders::default(),
        )
    }

    #[test]
    fn shared_prefixes_share_leading_blocks() {
        let sys = "s".repeat(200);
        let a = parse(Route::Chat, &format!(r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"one"}}]}}"#)).unwrap();
        let b = parse(Route::Chat, &format!(r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"two!"}}]}}"#)).unwrap();
        let common = a
            .prefix_blocks
            .iter()
            .zip(&b.prefix_blocks)
            .take_while(|(x, y)| x == y)
            .count();
        // "system\n" + 200 + "\x1e" + "user\n" = 213 shared bytes: 13 full blocks of 16.
        assert_eq!(common, 13);
        assert!(a.prefix_blocks.len() >= 13);
    }

    #[test]
    fn extracts_model_stream_and_session() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "u1".parse().unwrap());
        let v = RequestView::parse(
            Route::Completions,
            &h,
            br#"{"model":"m","prompt":"hi","stream":true,"user":"body"}"#,
            0,
            &SessionHeaders::default(),
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
            0,
            &SessionHeaders::default(),
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
        ];
        for (route, body, param) in cases {
            let e = parse(route, body).expect_err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        }
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

        #[test]
        fn json_shaped_garbage_is_400_not_panic(model in ".{0,8}", content in proptest::arbitrary::any::<Option<i32>>(), stream in ".{0,5}") {
            let body = format!(r#"{{"model":{},"messages":[{{"role":"user","content":{}}}],"stream":{}}}"#,
                serde_json::to_string(&model).unwrap(),
                content.map(|c| c.to_string()).unwrap_or_else(|| "\"x\"".into()),
                serde_json::to_string(&stream).unwrap());
            if let Err(e) = parse(Route::Chat, &body) {
                proptest::prop_assert_eq!(e.status, 400);
            }
        }
    }
}
