//! Probes: `/liveness` (alias `/live`: the process runs), `/readiness` (alias `/ready`:
//! at least one healthy worker, and the Responses API's database answers; it is
//! migrated before the gateway listens), `/health` (the gateway, the database and each
//! worker). These answer without a key, so a worker
//! appears by its opaque id only: its URL is shown on the admin listener.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use super::AppState;
use crate::fleet::Worker;

/// How a worker is shown: by its opaque id, with its state; with its URL, labels,
/// weight and priority too on the admin listener (`detailed`).
pub fn describe(w: &Worker, detailed: bool) -> serde_json::Value {
    let (running, waiting) = w.engine_load();
    let mut v = json!({
        "id": &*w.api_id,
        "dp_rank": w.id.dp_rank,
        "role": w.id.role,
        "healthy": w.is_healthy(),
        "circuit": w.breaker.state().as_str(),
        "in_flight": w.in_flight(),
        "engine_running": running,
        "engine_waiting": waiting,
        "models": w.models(),
    });
    if detailed {
        v["url"] = json!(w.id.url);
        v["bootstrap_port"] = json!(w.bootstrap_port);
        v["labels"] = json!(w.labels());
        v["weight"] = json!(w.weight());
        v["priority"] = json!(w.priority());
        v["draining"] = json!(w.is_draining());
    }
    v
}

pub async fn liveness() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// The Responses API's database: its backend and whether it answers (within a second,
/// so a probe never hangs on a dead server).
async fn database(st: &AppState) -> (bool, serde_json::Value) {
    let store = st.responses.store();
    let up = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), store.ping()).await,
        Ok(Ok(()))
    );
    let (open, idle) = store.pool_use();
    (
        up,
        json!({"backend": store.backend().as_str(), "status": if up { "up" } else { "down" },
        "connections": open, "idle_connections": idle,
        "vectors": match store.vectors() {
            Ok(version) => json!({"available": true, "version": version}),
            Err(why) => json!({"available": false, "reason": why}),
        }}),
    )
}

pub async fn readiness(State(st): State<Arc<AppState>>) -> Response {
    let healthy = st.registry.healthy_count();
    let (db_up, db) = database(&st).await;
    let ready = healthy > 0 && db_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ready { "ready" } else { "not_ready" };
    (
        status,
        Json(json!({"status": word, "healthy_workers": healthy, "database": db})),
    )
        .into_response()
}

pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    let workers: Vec<serde_json::Value> = st
        .registry
        .all()
        .iter()
        .map(|w| describe(w, false))
        .collect();
    let healthy = st.registry.healthy_count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if healthy > 0 { "healthy" } else { "unhealthy" };
    (
        status,
        Json(
            json!({"status": word, "healthy_workers": healthy, "workers": workers,
                    "models": super::selection::models(&st),
                    "bypass_router": super::route::bypass_router(&st).await,
                    "database": database(&st).await.1,
                    "model_endpoints": super::route::model_endpoints(&st)}),
        ),
    )
        .into_response()
}
