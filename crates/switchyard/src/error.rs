//! `ApiError`: every error the gateway itself answers, as OpenAI-shaped JSON
//! `{"error": {"message", "type", "param", "code"}}` with the right status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered by the gateway (not passed through from an engine).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    /// Machine-readable reason, e.g. `model_not_found`.
    pub code: &'static str,
    pub retry_after_secs: Option<u64>,
    /// Headers the answer carries besides `Retry-After` (the `x-ratelimit-*` ones).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code,
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    /// 400: malformed or invalid request.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request", message);
        e.param = param.map(str::to_string);
        e
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Missing or invalid API key: send `Authorization: Bearer <key>`",
        )
    }

    /// 429 for a tenant, key or global limit (`code`: which).
    pub fn limited(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 404: unknown model.
    pub fn model_not_found(model: &str, available: &[String]) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "The model `{model}` does not exist. Available models: {}",
                available.join(", ")
            ),
        );
        e.param = Some("model".into());
        e
    }

    /// 404: an unknown resource (worker, job).
    pub fn not_found_named(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 403: not allowed (e.g. a worker host outside `--worker-allowlist`).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409: conflicts with the current state (e.g. a duplicate worker).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 404: unknown route.
    pub fn route_not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No route for {method} {path}"),
        )
    }

    /// 405: a known route asked with a method it does not serve.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} does not accept {method}"),
        )
    }

    /// 413: body larger than `--max-payload-size`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("Request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 429: rate limited.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Rate limit exceeded",
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 503 with Retry-After: no capacity now (queue full, queue timeout, no healthy worker).
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 502: the upstream failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
    }

    /// The last upstream answer when retries end early: 429/503 stay "try later" (with
    /// the upstream's Retry-After), anything else becomes a 502.
    pub fn upstream_status(
        status: StatusCode,
        retry_after: Option<std::time::Duration>,
        message: impl Into<String>,
    ) -> Self {
        let keep = matches!(status.as_u16(), 429 | 503);
        let mut e = Self::new(
            if keep {
                status
            } else {
                StatusCode::BAD_GATEWAY
            },
            "upstream_error",
            message,
        );
        if keep {
            e.retry_after_secs = Some(retry_after.map_or(1, |d| d.as_secs()));
        }
        e
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
    }

    /// The OpenAI `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.code,
            }
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}
