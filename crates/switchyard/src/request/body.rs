//! Rewriting a request body's top-level fields, for the few cases that must change it
//! (model alias, data-parallel rank in the body, prefill/decode parameters). Every
//! other field keeps the client's exact bytes: values are copied as raw JSON, never
//! re-encoded, so whatever the parser accepted (escapes, lone surrogates, numbers
//! beyond f64) can always be rewritten.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// The body could not be rewritten: it is not one JSON object.
#[derive(Debug, thiserror::Error)]
#[error("the request body is not a JSON object: {0}")]
pub struct RewriteError(String);

impl From<RewriteError> for crate::error::ApiError {
    fn from(e: RewriteError) -> Self {
        crate::error::ApiError::bad_request(format!("Invalid JSON: {e}"), None)
    }
}

/// `body` with the JSON string whose contents span `span` replaced by `value`: the
/// cheap rewrite of `model` (no parse, one copy). `None` when `span` does not sit
/// between quotes in `body`.
pub fn replace_string(body: &Bytes, span: &std::ops::Range<usize>, value: &str) -> Option<Bytes> {
    let (start, end) = (span.start.checked_sub(1)?, span.end);
    if body.get(start) != Some(&b'"') || body.get(end) != Some(&b'"') {
        return None;
    }
    let quoted = serde_json::to_string(value).ok()?;
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end + 1..]);
    Some(Bytes::from(out))
}

/// `body` with the bytes of `span` replaced by `value` as they are (a multipart field).
pub fn replace_span(body: &Bytes, span: &std::ops::Range<usize>, value: &str) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    Bytes::from(out)
}

/// A field to set (`Some`) or remove (`None`).
pub type Field<'a> = (&'a str, Option<Value>);

/// `body` with each field set or removed. Fields that are set come last.
pub fn rewrite(body: &[u8], fields: &[Field<'_>]) -> Result<Bytes, RewriteError> {
    let entries = top_level(body)?;
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(b'{');
    let sep = |out: &mut Vec<u8>| {
        if out.len() > 1 {
            out.push(b',');
        }
    };
    for (key, raw) in &entries {
        if fields.iter().any(|(k, _)| *k == key.as_ref()) {
            continue;
        }
        sep(&mut out);
        serde_json::to_writer(&mut out, key.as_ref()).map_err(|e| RewriteError(e.to_string()))?;
        out.push(b':');
        out.extend_from_slice(raw.get().as_bytes());
    }
    for (key, value) in fields {
        if let Some(v) = value {
            sep(&mut out);
            serde_json::to_writer(&mut out, key).map_err(|e| RewriteError(e.to_string()))?;
            out.push(b':');
            serde_json::to_writer(&mut out, v).map_err(|e| RewriteError(e.to_string()))?;
        }
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

type Entries<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// The top-level `(key, raw value)` pairs of a JSON object, in order.
fn top_level(body: &[u8]) -> Result<Entries<'_>, RewriteError> {
    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = Entries<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                out.push((k, map.next_value::<&'de RawValue>()?));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let entries = (&mut de)
        .deserialize_map(Object)
        .map_err(|e| RewriteError(e.to_string()))?;
    de.end().map_err(|e| RewriteError(e.to_string()))?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: &[u8]) -> serde_json::Map<String, Value> {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_located_model_string_is_replaced_in_place() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"hi"}],"model": "auto" ,"n":1}"#,
        );
        let view = crate::request::RequestView::parse(
            crate::request::Route::Chat,
            &http::HeaderMap::new(),
            &body,
            &Default::default(),
            &mut (),
        )
        .unwrap();
        let span = view.model_span.expect("borrowed, so located");
        let out = replace_string(&body, &span, "co\"der").unwrap();
        assert_eq!(
            &out[..],
            br#"{"messages":[{"role":"user","content":"hi"}],"model": "co\"der" ,"n":1}"#
        );
        // A span not between quotes is refused.
        assert!(replace_string(&body, &(0..3), "x").is_none());
        // An escaped model name is not located (the parser had to copy it).
        let escaped = br#"{"messages":[{"role":"user","content":"hi"}],"model":"a\u0062"}"#;
        let v = crate::request::RequestView::parse(
            crate::request::Route::Chat,
            &http::HeaderMap::new(),
            escaped,
            &Default::default(),
            &mut (),
        )
        .unwrap();
        assert!(v.model_span.is_none());
        assert_eq!(&*v.model, "ab");
    }

    #[test]
    fn sets_replaces_and_removes_keeping_other_bytes() {
        let body = br#"{"model":"a", "x":  [1, 2.50, "\u00e9"], "stream":true}"#;
        let out = rewrite(
            body,
            &[
                ("model", Some(json!("b"))),
                ("stream", None),
                ("n", Some(json!(1))),
            ],
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"x":[1, 2.50, "\u00e9"],"model":"b","n":1}"#
        );
        assert_eq!(fields(&out)["model"], "b");
    }

    #[test]
    fn values_serde_json_cannot_hold_pass_through() {
        // A lone surrogate and an out-of-range number: fine as raw JSON.
        let body = br#"{"model":"a","weird":"\ud800","big":1e400}"#;
        let out = rewrite(body, &[("model", Some(json!("b")))]).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"weird":"\ud800","big":1e400,"model":"b"}"#
        );
    }

    #[test]
    fn non_objects_are_errors_not_panics() {
        for bad in [&b"[]"[..], b"", b"{", b"{} x", b"1"] {
            assert!(rewrite(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
