//! Model selection's surfaces: `GET /router/info`, `POST /router/classify`, the
//! models' capabilities and health (also in `/v1/models` and `/health`), and
//! `POST /admin/reload`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

/// Each model's health and what the config says of it, by model.
pub fn models(st: &AppState) -> serde_json::Map<String, Value> {
    st.model_health()
        .into_iter()
        .map(|(m, ok, all)| {
            let (capabilities, description) = st.pipeline.models.info(&m);
            let v = json!({
                "healthy": ok > 0,
                "healthy_workers": ok,
                "workers": all,
                "capabilities": capabilities,
                "description": description,
            });
            (m, v)
        })
        .collect()
}

/// `GET /router/info`.
pub async fn info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let mut v = st.pipeline.models.describe();
    v["models"] = Value::Object(models(&st));
    Json(v)
}

/// `POST /router/classify {"text": ...}` or `{"messages": [...]}`: the classification a
/// request to a router name would get, without generating. Admitted like a generation
/// request (rate limit, concurrency), since a classifier may call a model of the fleet.
pub async fn classify(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let _admitted = match st.pipeline.admit().await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if serde_json::from_slice::<serde_json::Map<String, Value>>(&body).is_err() {
        return ApiError::bad_request(
            "The request body must be a JSON object with `text` or `messages`",
            None,
        )
        .into_response();
    }
    match st.pipeline.models.explain(&body, &*st.pipeline).await {
        Err(e) => e.into_response(),
        Ok(x) => {
            let c = &x.classified;
            Json(json!({
                "classifier": x.classifier,
                "intent": &*c.intent,
                "confidence": c.confidence,
                "confidence_level": c.level,
                "defaulted": c.defaulted,
                "model": &*x.model,
                "fallbacks": x.fallbacks.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                "scores": c.scores.iter().map(|(n, s)| (n.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
                "cached": c.cached,
                "classification_ms": c.ms,
            }))
            .into_response()
        }
    }
}

/// `POST /admin/reload` on the admin listener.
pub async fn reload(State(st): State<Arc<AppState>>) -> Response {
    match st.reload().await {
        Ok(()) => Json(json!({"status": "reloaded"})).into_response(),
        Err(e) => ApiError::bad_request(
            format!("The new config was rejected, the old one stays in force: {e}"),
            None,
        )
        .into_response(),
    }
}
