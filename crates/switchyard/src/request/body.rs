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
