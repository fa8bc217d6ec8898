//! Cross-cutting layers: request ids, API-key auth, and admission (token-bucket rate
//! limit, then a concurrency limit with a bounded FIFO queue and a queue timeout).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The id of a request with these headers: the first configured header present, else
/// a generated one.
pub fn request_id_of(st: &AppState, headers: &http::HeaderMap) -> String {
    st.request_id_headers
        .iter()
        .find_map(|h| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty() && s.len() <= 256)
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req-{:032x}", fastrand::u128(..)))
}

/// Echoes the request id in the response.
pub fn set_request_id(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
}

/// Request ids for the routes that do not handle them inline (all but generation).
pub async fn request_id(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = request_id_of(&st, req.headers());
    let mut resp = next.run(req).await;
    set_request_id(&mut resp, &id);
    resp
}

/// Checks `Authorization: Bearer <--api-key>` when a key is configured.
pub fn check_auth(st: &AppState, headers: &http::HeaderMap) -> Result<(), ApiError> {
    if let Some(key) = &st.cfg.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            st.metrics.reject("unauthorized");
            return Err(ApiError::unauthorized());
        }
    }
    Ok(())
}

/// API-key auth for the routes that do not check it inline.
pub async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match check_auth(&st, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token bucket refilled continuously at `rate` tokens per second.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        let capacity = rate.max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Admission control state.
pub struct Admission {
    bucket: Option<Mutex<TokenBucket>>,
    permits: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    queue_size: usize,
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub fn new(
        rate: f64,
        max_concurrent: usize,
        queue_size: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Admission {
            bucket: (rate > 0.0).then(|| Mutex::new(TokenBucket::new(rate))),
            permits: (max_concurrent > 0).then(|| Arc::new(Semaphore::new(max_concurrent))),
            waiting: AtomicUsize::new(0),
            queue_size,
            queue_timeout,
            metrics,
        }
    }

    /// Admits a request, or answers 429 / 503 with Retry-After.
    pub async fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if let Some(bucket) = &self.bucket {
            if let Err(wait) = bucket.lock().expect("bucket lock").take() {
                self.metrics.reject("rate_limited");
                return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
            }
        }
        let Some(sem) = &self.permits else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        // Reserve a queue place; give it back if the queue is full.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.reject("queue_full");
            return Err(ApiError::unavailable(
                "queue_full",
                "The gateway's request queue is full",
                1,
            ));
        }
        self.metrics.queue_depth.inc();
        let start = Instant::now();
        let res = tokio::time::timeout(self.queue_timeout, sem.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth.dec();
        self.metrics
            .queue_wait
            .observe(start.elapsed().as_secs_f64());
        match res {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => {
                self.metrics.reject("queue_timeout");
                Err(ApiError::unavailable(
                    "queue_timeout",
                    format!(
                        "No capacity within the queue timeout of {} s",
                        self.queue_timeout.as_secs()
                    ),
                    1,
                ))
            }
        }
    }
}

/// Keeps `guard` alive until `resp`'s body has been sent (or the client went away).
pub fn hold<G: Unpin + Send + 'static>(resp: Response, guard: G) -> Response {
    resp.map(|body| {
        Body::new(Holding {
            inner: body,
            _permit: guard,
        })
    })
}

/// A body that holds a guard until it is dropped.
struct Holding<G> {
    inner: Body,
    _permit: G,
}

impl<G: Unpin + Send + 'static> http_body::Body for Holding<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(2.0);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::from_millis(400),
            "{wait:?}"
        );
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
