//! Routing metadata: how the gateway chose the model that answered, sent with every
//! response to a generation request as the `x-routing-metadata` header (compact JSON),
//! and — with `--routing-metadata-in-body` — inside non-streaming JSON bodies under
//! `switchyard_routing`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body_util::BodyExt;
use serde::Serialize;

use super::chain::Plan;
use crate::selection::ModelChoice;

pub const HEADER: &str = "x-routing-metadata";
/// The key the metadata is put under in a JSON body.
pub const BODY_KEY: &str = "switchyard_routing";

/// The header's fields (docs/model-selection.md).
#[derive(Debug, Serialize)]
pub struct RoutingMetadata {
    /// The model that served the request (the body sent to the engine names it).
    pub model_id: Arc<str>,
    /// The model the client named: a router name, an alias, or the model itself.
    pub model_name: Arc<str>,
    pub intent: Option<Arc<str>>,
    pub confidence: Option<f64>,
    pub confidence_level: Option<&'static str>,
    pub fallback_used: bool,
    /// The first model chosen, when another one served the request.
    pub fallback_from: Option<Arc<str>>,
    /// Sends to engines (1 unless retried).
    pub attempts: u32,
    pub classification_ms: Option<f64>,
    /// The worker that answered: its opaque id (`GET /workers` on the admin listener
    /// maps it to a URL); absent when none did.
    pub worker_id: Option<Arc<str>>,
    /// From the request's arrival until the response headers.
    pub total_time_seconds: f64,
}

impl RoutingMetadata {
    pub(super) fn new(choice: &ModelChoice, plan: &Plan<'_>, start: Instant) -> Self {
        let c = choice.classified.as_deref();
        RoutingMetadata {
            model_id: plan.view.model.clone(),
            model_name: choice.requested.clone(),
            intent: c.map(|c| c.intent.clone()),
            confidence: c.map(|c| (c.confidence * 1e4).round() / 1e4),
            confidence_level: c.map(|c| c.level),
            fallback_used: plan.fell_back(),
            fallback_from: plan.fell_back().then(|| choice.model.clone()),
            attempts: plan.sent,
            classification_ms: c.map(|c| (c.ms * 1e3).round() / 1e3),
            worker_id: None,
            total_time_seconds: start.elapsed().as_secs_f64(),
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// Sets the header (non-ASCII characters escaped, so any model name fits).
    pub fn set_header(&self, headers: &mut HeaderMap) {
        let json = self.json();
        if json.is_ascii() {
            if let Ok(v) = HeaderValue::from_str(&json) {
                headers.insert(HeaderName::from_static(HEADER), v);
            }
            return;
        }
        let mut ascii = String::with_capacity(json.len() + 16);
        for c in json.chars() {
            if c.is_ascii() {
                ascii.push(c);
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    ascii.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ascii) {
            headers.insert(HeaderName::from_static(HEADER), v);
        }
    }

    /// The response with the metadata added to its JSON object body (read whole; the
    /// body is forwarded unchanged if it is not a JSON object).
    pub(super) async fn into_body<B>(self, mut parts: http::response::Parts, body: B) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                // The engine's body broke off: pass the failure on as a cut body.
                let err: axum::BoxError = e.into();
                let stream = futures_util::stream::once(async move { Err::<Bytes, _>(err) });
                return Response::from_parts(parts, Body::from_stream(stream));
            }
        };
        let out = splice(&bytes, &self.json()).unwrap_or(bytes);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        Response::from_parts(parts, Body::from(out))
    }
}

/// `body` (a JSON object) with `"switchyard_routing": meta` added as its last member.
fn splice(body: &[u8], meta: &str) -> Option<Bytes> {
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[end] != b'}' || body.first() != Some(&b'{') {
        return None;
    }
    let inner_empty = body[1..end].iter().all(u8::is_ascii_whitespace);
    let mut out = BytesMut::with_capacity(body.len() + meta.len() + 32);
    out.extend_from_slice(&body[..end]);
    if !inner_empty {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(format!("\"{BODY_KEY}\":{meta}").as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out.freeze())
}

/// Whether a response's body is JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_is_spliced_into_a_json_object() {
        let out = splice(b"{\"a\":1}\n", "{\"m\":2}").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(v[BODY_KEY]["m"], 2);
        let empty = splice(b"{ }", "{}").unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&empty).is_ok());
        assert!(splice(b"[1]", "{}").is_none());
        assert!(splice(b"", "{}").is_none());
    }
}
