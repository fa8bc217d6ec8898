//! The body of `POST /route`, parsed and validated (docs/route-api.md). Every field
//! that is present must have the right type and range; unknown fields are ignored.

use serde_json::{Map, Value};

use crate::config::use_cases::Modality;
use crate::error::ApiError;

/// A `/route` request.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRequest {
    pub query: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub modality: Option<Modality>,
    /// An object whose values weigh in the classification.
    pub context: Option<Value>,
    pub max_tokens: u64,
    pub temperature: f64,
    pub stream: bool,
    /// Classify even if the session could bypass.
    pub force_route: bool,
    /// 404 instead of a new session when `session_id` is unknown.
    pub require_session: bool,
    /// Turns the session's bypass on or off (kept in the session).
    pub bypass_enabled: Option<bool>,
}

pub const DEFAULT_MAX_TOKENS: u64 = 100;
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// Whether `id` is a well-formed session id: 1 to 128 of `A-Z a-z 0-9 _ - . :`.
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

fn string(o: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{key}` must be a string"), key)),
    }
}

fn boolean(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("`{key}` must be true or false"), key)),
    }
}

impl RouteRequest {
    /// Parses `body`; `max_query_bytes` bounds the query.
    pub fn parse(body: &[u8], max_query_bytes: usize) -> Result<RouteRequest, ApiError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}"), None))?;
        let Value::Object(o) = v else {
            return Err(ApiError::bad_request(
                "The body must be a JSON object",
                None,
            ));
        };
        let query = match o.get("query") {
            None | Some(Value::Null) => return Err(bad("`query` is required", "query")),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad("`query` must be a string", "query")),
        };
        if query.trim().is_empty() {
            return Err(bad("`query` is empty", "query"));
        }
        if query.len() > max_query_bytes {
            return Err(bad(
                format!(
                    "`query` is {} bytes; the limit is {max_query_bytes} (--route-max-query-bytes)",
                    query.len()
                ),
                "query",
            ));
        }
        let session_id = string(&o, "session_id")?;
        if let Some(id) = &session_id
            && !valid_session_id(id)
        {
            return Err(bad(
                "`session_id` must be 1 to 128 characters of letters, digits, `_`, `-`, `.` or `:`",
                "session_id",
            ));
        }
        let user_id = string(&o, "user_id")?;
        if let Some(u) = &user_id
            && (u.is_empty() || u.len() > 256 || u.chars().any(char::is_control))
        {
            return Err(bad(
                "`user_id` must be 1 to 256 characters without control characters",
                "user_id",
            ));
        }
        let modality = match string(&o, "modality")? {
            None => None,
            Some(m) => Some(Modality::parse(&m).ok_or_else(|| {
                bad(
                    format!("`modality` must be one of text, image, audio, video; got {m:?}"),
                    "modality",
                )
            })?),
        };
        let context = match o.get("context") {
            None | Some(Value::Null) => None,
            Some(c @ Value::Object(_)) => {
                // Its values are classified with the query: the same bound applies.
                let len = serde_json::to_string(c).map_or(usize::MAX, |t| t.len());
                if len > max_query_bytes {
                    return Err(bad(
                        format!(
                            "`context` is {len} bytes of JSON; the limit is {max_query_bytes} (--route-max-query-bytes)"
                        ),
                        "context",
                    ));
                }
                Some(c.clone())
            }
            Some(_) => return Err(bad("`context` must be an object", "context")),
        };
        let max_tokens = match o.get("max_tokens") {
            None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=1_000_000).contains(&n) => n,
                _ => {
                    return Err(bad(
                        "`max_tokens` must be an integer from 1 to 1000000",
                        "max_tokens",
                    ));
                }
            },
        };
        let temperature = match o.get("temperature") {
            None | Some(Value::Null) => DEFAULT_TEMPERATURE,
            Some(v) => match v.as_f64() {
                Some(t) if (0.0..=2.0).contains(&t) => t,
                _ => {
                    return Err(bad(
                        "`temperature` must be a number from 0 to 2",
                        "temperature",
                    ));
                }
            },
        };
        Ok(RouteRequest {
            query,
            session_id,
            user_id,
            modality,
            context,
            max_tokens,
            temperature,
            stream: boolean(&o, "stream")?.unwrap_or(false),
            force_route: boolean(&o, "force_route")?.unwrap_or(false),
            require_session: boolean(&o, "require_session")?.unwrap_or(false),
            bypass_enabled: boolean(&o, "bypass_enabled")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (String, Option<String>) {
        let e = RouteRequest::parse(body.as_bytes(), 64).unwrap_err();
        assert_eq!(e.status, 400);
        (e.message, e.param)
    }

    #[test]
    fn defaults_and_fields() {
        let r = RouteRequest::parse(
            br#"{"query":"hi","modality":"audio","context":{"a":"b"},"stream":true,"extra":1}"#,
            64,
        )
        .unwrap();
        assert_eq!(r.max_tokens, 100);
        assert_eq!(r.temperature, 0.7);
        assert_eq!(r.modality, Some(Modality::Audio));
        assert!(r.stream && !r.force_route && r.session_id.is_none());
    }

    #[test]
    fn every_bad_field_is_named() {
        for (body, param) in [
            ("{}", "query"),
            (r#"{"query": 5}"#, "query"),
            (r#"{"query": "  "}"#, "query"),
            (&format!(r#"{{"query": "{}"}}"#, "x".repeat(65)), "query"),
            (r#"{"query": "q", "session_id": "a b"}"#, "session_id"),
            (r#"{"query": "q", "session_id": 7}"#, "session_id"),
            (r#"{"query": "q", "user_id": ""}"#, "user_id"),
            (r#"{"query": "q", "modality": "smell"}"#, "modality"),
            (r#"{"query": "q", "context": "x"}"#, "context"),
            (
                &format!(
                    r#"{{"query": "q", "context": {{"a": "{}"}}}}"#,
                    "x".repeat(64)
                ),
                "context",
            ),
            (r#"{"query": "q", "max_tokens": 0}"#, "max_tokens"),
            (r#"{"query": "q", "max_tokens": 1.5}"#, "max_tokens"),
            (r#"{"query": "q", "temperature": 3}"#, "temperature"),
            (r#"{"query": "q", "stream": "yes"}"#, "stream"),
            (r#"{"query": "q", "force_route": 1}"#, "force_route"),
        ] {
            assert_eq!(err(body).1.as_deref(), Some(param), "{body}");
        }
        assert_eq!(err("[1]").1, None);
        assert_eq!(err("{").1, None);
        assert!(!valid_session_id(&"a".repeat(129)));
        assert!(valid_session_id("sess_01:ab.c-d"));
    }
}
