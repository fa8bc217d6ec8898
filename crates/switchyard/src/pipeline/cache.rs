//! The `cache` phase (docs/caching.md): between `select_model` (with the caller's
//! limits) and `select_worker`, a cacheable request is looked up by a key of its
//! tenant, the model chosen and its normalised body; a hit is answered here and never
//! reaches an engine, a miss goes on and its answer is kept when it ends complete and
//! `200` ([`Capture`], fed by `settle`'s body).
//!
//! - Which requests: `/v1/chat/completions` and `/v1/completions` from HTTP clients
//!   that are deterministic (`temperature: 0`, or a `seed`), or that the client marks
//!   cacheable (`Cache-Control: max-age=N`, or `x-cache-semantic: true`).
//!   `Cache-Control: no-cache` or `no-store` bypasses.
//! - The key: sha256 over the route, the tenant, the body as canonical JSON (sorted
//!   keys, numbers normalised) without the fields that do not change the answer
//!   ([`IGNORED`], `stream_options.include_usage`), and the model that answers.
//! - Semantic matching: the last user message's vector, compared within a bucket of
//!   the same tenant, model and request but for that message (`state::cache`).
//!
//! A cache that fails (Redis down or slow, the embedder failing) never fails a
//! request: it is bypassed, counted, and logged at most once a minute.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_stateful::vector::embed::Embedder;

use crate::error::ApiError;
use crate::metrics::{CacheHitLabels, Metrics, OpLabel, OutcomeLabel, ReasonLabel, RouteOnly};
use crate::request::Route;
use crate::state::Clock;
use crate::state::cache::{CacheStore, Entry, SemanticIndex, normalise};

/// `x-cache`: `HIT`, `MISS` or `BYPASS`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The similarity of a semantic hit's prompt to the request's.
pub const X_CACHE_SIMILARITY: HeaderName = HeaderName::from_static("x-cache-similarity");
/// The request header that opts into semantic matching.
pub const X_CACHE_SEMANTIC: HeaderName = HeaderName::from_static("x-cache-semantic");

/// Body fields that do not change the answer, left out of the key: who asks
/// (`user`), what the client or the gateway files with it (`metadata`, `store`,
/// `workflow_metadata`, `request_id`), and scheduling (`priority`, `service_tier`).
/// `stream_options.include_usage` is left out too: a stream is stored with its usage
/// event, which is taken out again for a client that did not ask for it.
pub const IGNORED: [&str; 7] = [
    "user",
    "metadata",
    "store",
    "workflow_metadata",
    "request_id",
    "priority",
    "service_tier",
];

/// Whether the cache applies to requests of `route`.
pub fn cacheable_route(route: Route) -> bool {
    matches!(route, Route::Chat | Route::Completions)
}

/// The response cache's settings.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_entry_bytes: usize,
    /// Semantic matching's threshold (off when `None`).
    pub semantic_threshold: Option<f32>,
    pub embed_timeout: Duration,
}

/// The response cache.
pub struct ResponseCache {
    settings: CacheSettings,
    store: Arc<dyn CacheStore>,
    semantic: Option<SemanticIndex>,
    embedder: OnceLock<Arc<dyn Embedder>>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Milliseconds since `epoch` of the last warning (0: none yet).
    last_warning: AtomicI64,
    epoch: Instant,
}

/// What the client's headers ask of the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `Cache-Control: no-cache` or `no-store`: neither read nor write.
    pub bypass: bool,
    /// `Cache-Control: max-age=N`: the request is cacheable, and an answer older than
    /// N seconds is not served (it is fetched again and replaces the old one).
    pub max_age: Option<u64>,
    /// `x-cache-semantic: true`.
    pub semantic: bool,
}

/// Reads the cache's request headers. A malformed value is the client's error (400);
/// directives the cache does not use are ignored, as HTTP caches do.
pub fn directives(headers: &HeaderMap) -> Result<Directives, ApiError> {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let text = value.to_str().map_err(|_| {
            ApiError::bad_request(
                "Invalid Cache-Control header: it must be ASCII",
                Some("Cache-Control"),
            )
        })?;
        for directive in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim())),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                d.bypass = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                let arg = arg.map(|a| a.trim_matches('"')).unwrap_or("");
                let secs = (!arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| arg.parse::<u64>().unwrap_or(u64::MAX))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            format!(
                                "Invalid Cache-Control header: max-age must be a whole number of seconds, got `{directive}`"
                            ),
                            Some("Cache-Control"),
                        )
                    })?;
                d.max_age = Some(d.max_age.map_or(secs, |m| m.min(secs)));
            }
        }
    }
    if let Some(v) = headers.get(&X_CACHE_SEMANTIC) {
        let v = v.to_str().unwrap_or("").trim();
        d.semantic = if v.eq_ignore_ascii_case("true") || v == "1" {
            true
        } else if v.eq_ignore_ascii_case("false") || v == "0" {
            false
        } else {
            return Err(ApiError::bad_request(
                format!("Invalid x-cache-semantic header: use `true` or `false`, got `{v}`"),
                Some("x-cache-semantic"),
            ));
        };
    }
    Ok(d)
}

/// A request's body, normalised for the key.
struct Canonical {
    /// Canonical JSON of the body without `model` and the ignored fields.
    rest: String,
    stream: bool,
    /// For semantic matching: the same without the last user message (chat) or the
    /// prompt (completions), and that message's text.
    bucket: Option<(String, String)>,
}

/// Writes `v` as canonical JSON: object keys sorted, numbers that are whole written
/// as integers (`0.0` and `0` are one value), strings escaped as serde_json does.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.push_str(&(f as i64).to_string());
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

fn canonical_string(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

/// Whether a body asks for a deterministic answer (`temperature` 0, or a `seed`), read
/// without building a tree (every other field is skipped): most requests are sampled,
/// and a sampled one not marked cacheable needs nothing more from the cache.
fn deterministic(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Sampling<'a> {
        #[serde(default)]
        temperature: Option<f64>,
        #[serde(default, borrow)]
        seed: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Sampling<'_>>(body)
        .is_ok_and(|s| s.temperature == Some(0.0) || s.seed.is_some_and(|v| v.get() != "null"))
}

/// Normalises a request body; `None` when it is not a JSON object.
fn canonicalise(route: Route, body: &[u8], semantic: bool) -> Option<Canonical> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let map = v.as_object_mut()?;
    map.remove("model");
    for f in IGNORED {
        map.remove(f);
    }
    let stream = map.get("stream") == Some(&Value::Bool(true));
    map.insert("stream".into(), Value::Bool(stream));
    let keep_options = match map.get_mut("stream_options") {
        Some(Value::Object(o)) if stream => {
            o.remove("include_usage");
            !o.is_empty()
        }
        Some(Value::Null) | None => false,
        // Not an object: left as it is (the engine judges it).
        Some(_) => stream,
    };
    if !keep_options {
        map.remove("stream_options");
    }
    let bucket = if semantic {
        semantic_bucket(route, &v)
    } else {
        None
    };
    Some(Canonical {
        rest: canonical_string(&v),
        stream,
        bucket,
    })
}

/// The request without its last user message (chat) or prompt (completions), and that
/// message's text; `None` when it has no text to compare.
fn semantic_bucket(route: Route, v: &Value) -> Option<(String, String)> {
    let mut v = v.clone();
    let text = match route {
        Route::Chat => {
            let msgs = v.get_mut("messages")?.as_array_mut()?;
            let last = msgs.iter().rposition(|m| m["role"] == "user")?;
            let content = msgs[last].get_mut("content")?.take();
            text_of_content(&content)?
        }
        Route::Completions => text_of_content(&v.get_mut("prompt")?.take())?,
        _ => return None,
    };
    (!text.trim().is_empty()).then(|| (canonical_string(&v), text))
}

/// A message content's text: a string, or its parts' `text`s (image parts and the
/// like make it no text: a picture's meaning is not in its URL).
fn text_of_content(c: &Value) -> Option<String> {
    match c {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p {
                    Value::String(s) => out.push(s.as_str()),
                    Value::Object(o) => out.push(o.get("text")?.as_str()?),
                    _ => return None,
                }
            }
            Some(out.join("\n"))
        }
        _ => None,
    }
}

/// Feeds one length-prefixed field into the hash.
fn feed(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash state of a key before its model: domain, route, tenant, body.
fn base(domain: &str, route: Route, tenant: &str, rest: &str) -> Sha256 {
    let mut h = Sha256::new();
    feed(&mut h, domain.as_bytes());
    feed(&mut h, route.name().as_bytes());
    feed(&mut h, tenant.as_bytes());
    feed(&mut h, rest.as_bytes());
    h
}

fn with_model(base: &Sha256, model: &str) -> [u8; 32] {
    let mut h = base.clone();
    feed(&mut h, model.as_bytes());
    h.finalize().into()
}

/// A cached answer found for a request.
pub struct Hit {
    pub entry: Entry,
    /// A semantic hit's similarity.
    pub similarity: Option<f32>,
}

/// A cacheable request on its way to an engine: what is needed to key its answer.
pub struct Pending {
    base: Sha256,
    /// Semantic bucket (before its model) and the prompt's vector.
    semantic: Option<(Sha256, Vec<f32>)>,
    stream: bool,
}

/// What the cache phase decided.
pub enum Lookup {
    /// Served from the cache.
    Hit(Hit),
    /// Not found: forward, and keep the answer.
    Miss(Pending),
    /// The cache is skipped (the reason is counted).
    Bypass(&'static str),
}

impl ResponseCache {
    pub fn new(
        settings: CacheSettings,
        store: Arc<dyn CacheStore>,
        semantic: Option<SemanticIndex>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> ResponseCache {
        ResponseCache {
            settings,
            store,
            semantic,
            embedder: OnceLock::new(),
            metrics,
            clock,
            last_warning: AtomicI64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The embedder of semantic matching (set once the gateway has built it).
    pub fn set_embedder(&self, e: Arc<dyn Embedder>) {
        let _ = self.embedder.set(e);
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Counts a bypass.
    pub fn bypassed(&self, reason: &'static str) {
        self.metrics
            .cache_bypasses
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A failed cache operation: counted, and logged at most once a minute.
    fn failed(&self, op: &'static str, error: &str) {
        self.metrics
            .cache_errors
            .get_or_create(&OpLabel { op })
            .inc();
        let now = self.epoch.elapsed().as_millis() as i64 + 1;
        let last = self.last_warning.load(Ordering::Relaxed);
        if (last == 0 || now - last >= 60_000)
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                op,
                error,
                backend = self.backend(),
                "response cache unavailable: requests go on without it (logged at most once a minute; see switchyard_response_cache_errors_total)"
            );
        }
    }

    /// Whether `entry` may be served to a request with `max_age`.
    fn fresh(&self, entry: &Entry, max_age: Option<u64>) -> bool {
        max_age.is_none_or(|secs| {
            let age = self.clock.now_ms().saturating_sub(entry.created_ms);
            age <= i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
        })
    }

    async fn embed(&self, text: String) -> Result<Vec<f32>, String> {
        let embedder = self
            .embedder
            .get()
            .ok_or_else(|| "no embedder".to_string())?;
        let work = embedder.embed(vec![text]);
        let mut vectors = tokio::time::timeout(self.settings.embed_timeout, work)
            .await
            .map_err(|_| {
                format!(
                    "no embedding within {} ms",
                    self.settings.embed_timeout.as_millis()
                )
            })?
            .map_err(|e| e.message)?;
        let mut v = vectors.pop().filter(|v| !v.is_empty()).ok_or("no vector")?;
        normalise(&mut v);
        Ok(v)
    }

    /// The cache phase: looks the request up (`model`: the one chosen; `tenant`: the
    /// caller's). Counts what it decided.
    pub async fn lookup(
        &self,
        route: Route,
        d: &Directives,
        body: &[u8],
        model: &str,
        tenant: &str,
    ) -> Lookup {
        if d.bypass {
            self.bypassed("no_cache");
            return Lookup::Bypass("no_cache");
        }
        let semantic = d.semantic && self.semantic.is_some();
        // Opting into semantic matching marks a request cacheable only where semantic
        // matching is on; elsewhere the header is ignored.
        if !(d.max_age.is_some() || semantic || deterministic(body)) {
            self.bypassed("not_cacheable");
            return Lookup::Bypass("not_cacheable");
        }
        let Some(canon) = canonicalise(route, body, semantic) else {
            self.bypassed("unparsable");
            return Lookup::Bypass("unparsable");
        };
        let exact = base("exact", route, tenant, &canon.rest);
        let key = hex(&with_model(&exact, model));
        match self.store.get(&key).await {
            Ok(Some(entry)) if self.fresh(&entry, d.max_age) => {
                return self.hit(route, entry, None);
            }
            Ok(_) => {}
            Err(e) => {
                self.failed("get", &e.0);
                self.bypassed("backend_error");
                return Lookup::Bypass("backend_error");
            }
        }
        let mut pending_semantic = None;
        if let (Some(index), Some(threshold), Some((rest, text))) = (
            &self.semantic,
            self.settings.semantic_threshold,
            canon.bucket,
        ) {
            match self.embed(text).await {
                Err(e) => self.failed("embed", &e),
                Ok(vector) => {
                    let bucket_base = base("semantic", route, tenant, &rest);
                    let bucket = with_model(&bucket_base, model);
                    if let Some((k, similarity)) = index.nearest(&bucket, &vector)
                        && similarity >= threshold
                    {
                        match self.store.get(&k).await {
                            Ok(Some(entry)) if self.fresh(&entry, d.max_age) => {
                                return self.hit(route, entry, Some(similarity));
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => index.forget(&bucket, &k),
                            Err(e) => {
                                self.failed("get", &e.0);
                                self.bypassed("backend_error");
                                return Lookup::Bypass("backend_error");
                            }
                        }
                    }
                    pending_semantic = Some((bucket_base, vector));
                }
            }
        }
        self.metrics
            .cache_misses
            .get_or_create(&RouteOnly {
                route: route.name(),
            })
            .inc();
        Lookup::Miss(Pending {
            base: exact,
            semantic: pending_semantic,
            stream: canon.stream,
        })
    }

    fn hit(&self, route: Route, entry: Entry, similarity: Option<f32>) -> Lookup {
        let kind = if similarity.is_some() {
            "semantic"
        } else {
            "exact"
        };
        self.metrics
            .cache_hits
            .get_or_create(&CacheHitLabels {
                route: route.name(),
                kind,
            })
            .inc();
        self.metrics
            .cache_latency_saved
            .inc_by(entry.latency_ms as f64 / 1e3);
        Lookup::Hit(Hit { entry, similarity })
    }

    /// The response of a hit: the stored body (a stream without its usage event when
    /// the client did not ask for usage), `x-cache: HIT`, its `Age`, and a semantic
    /// hit's similarity.
    pub fn respond(&self, hit: Hit, strip_usage: bool) -> Response {
        let Hit { entry, similarity } = hit;
        let is_stream = entry.content_type.starts_with("text/event-stream");
        let body = if is_stream && strip_usage {
            super::settle::without_usage(entry.body)
        } else {
            entry.body
        };
        let age = (self.clock.now_ms() - entry.created_ms).max(0) / 1000;
        let mut resp = Response::new(Body::from(body));
        let h = resp.headers_mut();
        if let Ok(ct) = HeaderValue::from_str(&entry.content_type) {
            h.insert(header::CONTENT_TYPE, ct);
        }
        if is_stream {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        h.insert(X_CACHE, HeaderValue::from_static("HIT"));
        h.insert(header::AGE, HeaderValue::from(age));
        if let Some(s) = similarity
            && let Ok(v) = HeaderValue::from_str(&format!("{s:.4}"))
        {
            h.insert(X_CACHE_SIMILARITY, v);
        }
        resp
    }

    /// Starts keeping the answer of a missed request (`content_type`: the engine's).
    pub fn capture(self: &Arc<Self>, pending: Pending, content_type: String) -> Capture {
        Capture {
            cache: self.clone(),
            pending,
            content_type,
            buf: Vec::new(),
            too_large: false,
        }
    }
}

/// The answer of a missed request, gathered as it streams to the client (never
/// holding it back), stored if it ends complete.
pub struct Capture {
    cache: Arc<ResponseCache>,
    pending: Pending,
    content_type: String,
    buf: Vec<u8>,
    too_large: bool,
}

/// Whether a stored SSE stream is whole: it ends with `data: [DONE]` and carries no
/// error event.
fn stream_complete(buf: &[u8]) -> bool {
    let end = buf
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let body = &buf[..end];
    (body.ends_with(b"data: [DONE]") || body.ends_with(b"data:[DONE]"))
        && memchr::memmem::find(body, b"data: {\"error\"").is_none()
        && memchr::memmem::find(body, b"data:{\"error\"").is_none()
}

impl Capture {
    /// A frame of the engine's body.
    pub fn feed(&mut self, data: &[u8]) {
        if self.too_large {
            return;
        }
        if self.buf.len() + data.len() > self.cache.settings.max_entry_bytes {
            self.too_large = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    fn outcome(&self, outcome: &'static str) {
        self.cache
            .metrics
            .cache_stores
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The body has ended with `status` after `latency`, answered by `model`: a whole
    /// `200` answer is stored (the memory backend before this returns, Redis in a
    /// task); anything else is not.
    pub fn finish(self, status: StatusCode, complete: bool, model: &str, latency: Duration) {
        if !complete || status != StatusCode::OK {
            self.outcome("incomplete");
            return;
        }
        if self.too_large {
            self.outcome("too_large");
            return;
        }
        if self.pending.stream && !stream_complete(&self.buf) {
            self.outcome("incomplete");
            return;
        }
        let Capture {
            cache,
            pending,
            content_type,
            buf,
            ..
        } = self;
        let key = hex(&with_model(&pending.base, model));
        let now = cache.clock.now_ms();
        let entry = Entry {
            created_ms: now,
            latency_ms: latency.as_millis() as u64,
            content_type,
            body: Bytes::from(buf),
        };
        let size = entry.size() as u64;
        let ttl_ms = cache.settings.ttl.as_millis() as u64;
        let expires = now.saturating_add(ttl_ms as i64);
        let semantic = pending.semantic.map(|(b, v)| (with_model(&b, model), v));
        let put = cache.store.put(key.clone(), entry, ttl_ms);
        let done =
            move |cache: &ResponseCache, result: Result<(), crate::state::StateError>| match result
            {
                Ok(()) => {
                    cache
                        .metrics
                        .cache_stores
                        .get_or_create(&OutcomeLabel { outcome: "stored" })
                        .inc();
                    cache.metrics.cache_stored_bytes.inc_by(size);
                    if let (Some(index), Some((bucket, vector))) = (&cache.semantic, semantic) {
                        index.insert(bucket, vector, key, expires);
                        cache.metrics.cache_semantic_vectors.set(index.len() as i64);
                    }
                }
                Err(e) => {
                    cache
                        .metrics
                        .cache_stores
                        .get_or_create(&OutcomeLabel { outcome: "error" })
                        .inc();
                    cache.failed("put", &e.0);
                }
            };
        let mut put = put;
        match futures_util::FutureExt::now_or_never(&mut put) {
            Some(result) => done(&cache, result),
            None => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let result = put.await;
                        done(&cache, result);
                    });
                }
                Err(_) => cache.failed("put", "no runtime to store the answer on"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(body: &str) -> Canonical {
        canonicalise(Route::Chat, body.as_bytes(), true).unwrap()
    }

    #[test]
    fn the_key_ignores_what_does_not_change_the_answer() {
        let a = canon(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"user":"u1","metadata":{"a":1},"stream":false}"#,
        );
        let b = canon(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"alias","user":"u2","store":true,"priority":3,"service_tier":"auto","request_id":"r"}"#,
        );
        assert_eq!(a.rest, b.rest);
        // What changes the answer changes the key.
        for other in [
            r#"{"temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}],"n":2}"#,
            r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}],"cache_salt":"s"}"#,
        ] {
            assert_ne!(canon(other).rest, a.rest, "{other}");
        }
        // include_usage is not in the key; other stream options are.
        let s = |opts: &str| {
            canon(&format!(
                r#"{{"temperature":0,"stream":true,"stream_options":{opts},"messages":[{{"role":"user","content":"hi"}}]}}"#
            ))
            .rest
        };
        assert_eq!(s(r#"{"include_usage":true}"#), s("null"));
        assert_ne!(s(r#"{"continuous_usage_stats":true}"#), s("null"));
        // Stream options of a non-stream request change nothing.
        assert_eq!(
            canon(r#"{"temperature":0,"stream_options":{"x":1},"messages":[{"role":"user","content":"hi"}]}"#).rest,
            a.rest
        );
    }

    #[test]
    fn determinism_is_temperature_zero_or_a_seed() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        let det = |b: String| deterministic(b.as_bytes());
        assert!(!det(format!("{{{m}}}")));
        assert!(!det(format!(r#"{{{m},"temperature":0.7}}"#)));
        assert!(!det(format!(r#"{{{m},"temperature":1e-9}}"#)));
        assert!(!det(format!(r#"{{{m},"temperature":null}}"#)));
        assert!(!det(format!(r#"{{{m},"temperature":"zero"}}"#)));
        assert!(det(format!(r#"{{{m},"temperature":0}}"#)));
        assert!(det(format!(
            r#"{{{m},"temperature":0.0,"x":[1,{{"y":2}}]}}"#
        )));
        assert!(det(format!(r#"{{{m},"temperature":0.7,"seed":1}}"#)));
        assert!(det(format!(r#"{{{m},"seed":"abc"}}"#)));
        assert!(!det(format!(r#"{{{m},"seed":null}}"#)));
        assert!(det(format!(r#"{{{m},"temperature":0,"n":3}}"#)));
        assert!(!deterministic(b"[1]"));
        assert!(canonicalise(Route::Chat, b"[1]", false).is_none());
        assert!(canonicalise(Route::Chat, b"{nope", false).is_none());
    }

    #[test]
    fn the_semantic_bucket_is_the_request_but_its_last_user_message() {
        let a = canon(
            r#"{"temperature":0,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"what is rust"}]}"#,
        );
        let b = canon(
            r#"{"temperature":0,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"what's rust?"}]}]}"#,
        );
        let c = canon(
            r#"{"temperature":0,"messages":[{"role":"system","content":"be long"},{"role":"user","content":"what is rust"}]}"#,
        );
        let (ba, ta) = a.bucket.unwrap();
        let (bb, tb) = b.bucket.unwrap();
        assert_eq!(ba, bb);
        assert_eq!((ta.as_str(), tb.as_str()), ("what is rust", "what's rust?"));
        assert_ne!(c.bucket.unwrap().0, ba, "another system prompt");
        let img = canon(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert!(img.bucket.is_none());
        let p = canonicalise(Route::Completions, br#"{"prompt":"tell me"}"#, true).unwrap();
        assert_eq!(p.bucket.unwrap().1, "tell me");
    }

    #[test]
    fn keys_never_cross_tenants_routes_or_models() {
        let rest = canon(r#"{"temperature":0,"messages":[]}"#).rest;
        let k = |route, tenant, model| with_model(&base("exact", route, tenant, &rest), model);
        let a = k(Route::Chat, "t1", "m");
        assert_eq!(a, k(Route::Chat, "t1", "m"));
        assert_ne!(a, k(Route::Chat, "t2", "m"));
        assert_ne!(a, k(Route::Completions, "t1", "m"));
        assert_ne!(a, k(Route::Chat, "t1", "m2"));
        // Length prefixes: no two field splits hash alike.
        assert_ne!(k(Route::Chat, "t1m", ""), k(Route::Chat, "t1", "m"));
    }

    #[test]
    fn cache_headers_are_read_strictly() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            directives(&m)
        };
        assert_eq!(h(&[]).unwrap(), Directives::default());
        let d = h(&[("cache-control", "No-Cache")]).unwrap();
        assert!(d.bypass);
        assert!(
            h(&[("cache-control", "no-store, max-age=5")])
                .unwrap()
                .bypass
        );
        assert_eq!(
            h(&[("cache-control", "max-age=60, no-transform")])
                .unwrap()
                .max_age,
            Some(60)
        );
        assert_eq!(
            h(&[
                ("cache-control", "max-age=\"30\""),
                ("cache-control", "max-age=10")
            ])
            .unwrap()
            .max_age,
            Some(10)
        );
        for bad in [
            "max-age=abc",
            "max-age=-1",
            "max-age=",
            "max-age",
            "max-age=1.5",
        ] {
            let e = h(&[("cache-control", bad)]).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        assert!(h(&[("x-cache-semantic", "TRUE")]).unwrap().semantic);
        assert!(!h(&[("x-cache-semantic", "0")]).unwrap().semantic);
        assert_eq!(h(&[("x-cache-semantic", "yes")]).unwrap_err().status, 400);
    }

    #[test]
    fn only_whole_streams_are_kept() {
        assert!(stream_complete(b"data: {\"a\":1}\n\ndata: [DONE]\n\n"));
        assert!(!stream_complete(b"data: {\"a\":1}\n\n"));
        assert!(!stream_complete(
            b"data: {\"a\":1}\n\ndata: {\"error\":{}}\n\ndata: [DONE]\n\n"
        ));
    }
}
