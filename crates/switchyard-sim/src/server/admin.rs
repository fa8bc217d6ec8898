//! Operational endpoints (health, load, metrics, cache reset), the simulator's own
//! control endpoints under `/sim/`, and the fault/load middleware of generation routes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body::Body as _;
use serde_json::json;

use super::{ApiError, ServerState};
use crate::bootstrap::RoomState;
use crate::faults::Faults;

/// Decrements `server_load` when the response (including a stream) is over.
struct LoadGuard(Arc<ServerState>);

impl LoadGuard {
    fn new(st: &Arc<ServerState>) -> Self {
        st.in_flight.fetch_add(1, Ordering::Relaxed);
        LoadGuard(st.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Applies injected faults to a generation request and counts it in `server_load`
/// until its body has been sent.
pub async fn faults_and_load(
    State(st): State<Arc<ServerState>>,
    req: Request,
    next: Next,
) -> Response {
    let guard = LoadGuard::new(&st);
    let f = st.faults.get();
    if f.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
    }
    if f.hang_rate > 0.0 && fastrand::f64() < f.hang_rate {
        std::future::pending::<()>().await;
    }
    let mut req = req;
    let mut poisoned = false;
    if let Some(needle) = &f.error_match {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                return ApiError::bad_request(format!("reading the body: {e}"), None)
                    .into_response();
            }
        };
        poisoned = contains_bytes(&bytes, needle.as_bytes());
        req = Request::from_parts(parts, Body::from(bytes));
    }
    if poisoned || (f.error_rate > 0.0 && fastrand::f64() < f.error_rate) {
        let status =
            StatusCode::from_u16(f.error_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut err = ApiError::new(status, format!("injected fault: {}", status.as_u16()));
        if matches!(status.as_u16(), 429 | 503) {
            err = err.with_retry_after(f.retry_after_secs);
        }
        return err.into_response();
    }
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    if f.crash_after_chunks.is_none()
        && f.stall_after_chunks.is_none()
        && body.size_hint().exact().is_some()
    {
        // A complete body: nothing to watch, the load ends with the handler.
        return Response::from_parts(parts, body);
    }
    let crash = f.crash_after_chunks;
    let stall = f.stall_after_chunks;
    let faults = st.faults.subscribe();
    let stream = futures_util::stream::unfold(
        (body.into_data_stream(), 0u64, guard, false, faults),
        move |(mut s, n, g, dead, mut faults)| async move {
            if dead {
                return None;
            }
            if crash.is_some_and(|k| n >= k) {
                // Let the connection flush the chunks already written, then cut it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let err = std::io::Error::other("injected crash");
                return Some((Err(err), (s, n, g, true, faults)));
            }
            match s.next().await {
                Some(Ok(b)) => {
                    if stall.is_some_and(|k| n == k) {
                        // Held until the faults are replaced (or the server stops).
                        let _ = faults.wait_for(|f| f.stall_after_chunks != stall).await;
                    }
                    Some((Ok(b), (s, n + 1, g, false, faults)))
                }
                Some(Err(e)) => Some((Err(std::io::Error::other(e)), (s, n, g, true, faults))),
                None => None,
            }
        },
    );
    Response::from_parts(parts, Body::from_stream(stream))
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `GET /health`: 200 with an empty body, unless a health fault is set.
pub async fn health(State(st): State<Arc<ServerState>>) -> Response {
    let f = st.faults.get();
    if f.health_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.health_latency_ms)).await;
    }
    if f.health_fail {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "injected fault: unhealthy")
            .into_response();
    }
    StatusCode::OK.into_response()
}

/// `GET /load`: requests being answered, as vLLM's `{"server_load": N}`.
pub async fn load(State(st): State<Arc<ServerState>>) -> Json<serde_json::Value> {
    Json(json!({ "server_load": st.in_flight.load(Ordering::Relaxed) }))
}

/// `GET /metrics`: Prometheus/OpenMetrics text.
pub async fn metrics(State(st): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

/// `POST /reset_prefix_cache`: every rank forgets its cached prefixes.
pub async fn reset_prefix_cache(State(st): State<Arc<ServerState>>) -> StatusCode {
    for e in &st.engines {
        e.reset_prefix_cache();
    }
    // Answer after the engines applied it, so a request sent next sees a cold cache.
    for e in &st.engines {
        e.stats().await;
    }
    StatusCode::OK
}

/// `POST /sim/restart`: the engine processes "restart" (see [`restart_engines`]).
pub async fn restart(State(st): State<Arc<ServerState>>) -> StatusCode {
    restart_engines(&st).await;
    StatusCode::OK
}

/// Empties every rank's cache without events and restarts its event numbering,
/// answering once the engines have applied it.
pub(crate) async fn restart_engines(st: &ServerState) {
    for e in &st.engines {
        e.restart();
    }
    for e in &st.engines {
        e.stats().await;
    }
}

/// Body of `POST /sim/kv_events/drop`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropEvents {
    count: u64,
}

/// `POST /sim/kv_events/drop {"count": N}`: the next N live KV-event messages of every
/// rank are numbered and kept for replay but not sent.
pub async fn drop_kv_events(
    State(st): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let d: DropEvents = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}"), None))?;
    if st.kv_events.is_empty() {
        return Err(ApiError::bad_request(
            "KV events are not published (--kv-events-config)",
            None,
        ));
    }
    for (_, sink) in &st.kv_events {
        sink.drop_next(d.count).await;
    }
    Ok(StatusCode::OK)
}

/// `GET /sim/faults`.
pub async fn get_faults(State(st): State<Arc<ServerState>>) -> Json<Faults> {
    Json(st.faults.get())
}

/// `POST /sim/faults`: replaces every fault; absent fields take their defaults.
pub async fn set_faults(
    State(st): State<Arc<ServerState>>,
    body: Bytes,
) -> Result<Json<Faults>, ApiError> {
    let faults: Faults = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid faults: {e}"), None))?;
    faults
        .validate()
        .map_err(|e| ApiError::bad_request(format!("invalid faults: {e}"), None))?;
    st.faults.set(faults.clone());
    Ok(Json(faults))
}

/// `GET /sim/stats`: per-rank request counts, audio request counts and scheduler state.
pub async fn stats(State(st): State<Arc<ServerState>>) -> Json<serde_json::Value> {
    let mut engines = Vec::new();
    for e in &st.engines {
        engines.push(e.stats().await);
    }
    let requests: Vec<u64> = st
        .requests
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let transcriptions = st.transcription_requests.load(Ordering::Relaxed);
    let speech = st.speech_requests.load(Ordering::Relaxed);
    Json(json!({
        "requests_per_rank": requests,
        "audio_requests": transcriptions + speech,
        "audio_requests_per_route": {"transcriptions": transcriptions, "speech": speech},
        "in_flight": st.in_flight.load(Ordering::Relaxed),
        "engines": engines,
        "sim_time": st.clock.now(),
    }))
}

/// `GET /sim/bootstrap/{room}`: waits until the prefill of `room` is done (SGLang PD).
pub async fn bootstrap(State(st): State<Arc<ServerState>>, Path(room): Path<String>) -> Response {
    let Ok(room) = room.parse::<u64>() else {
        return ApiError::bad_request("room must be an unsigned integer", Some("room"))
            .into_response();
    };
    match st.rooms.wait(room, Duration::from_secs(60)).await {
        RoomState::Ready(tokens) => {
            Json(json!({"room": room, "prompt_tokens": tokens})).into_response()
        }
        RoomState::Failed(why) if why.contains("not done within") => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, why).into_response()
        }
        RoomState::Failed(why) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why).into_response()
        }
        RoomState::Pending => unreachable!("wait returns a final state"),
    }
}

/// Any other route.
pub async fn not_found(req: Request) -> Result<Response, Infallible> {
    Ok(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response())
}
