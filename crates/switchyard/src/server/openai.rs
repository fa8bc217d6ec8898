//! The OpenAI-compatible routes. Handlers are thin: generation requests go straight
//! into the pipeline.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::ApiError;
use crate::pipeline::admit::set_request_id;
use crate::request::Route;

pub async fn chat_completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Chat, req).await
}

pub async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Completions, req).await
}

pub async fn embeddings(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Embeddings, req).await
}

/// `GET /v1/models`: the union of what healthy workers serve, and aliases of those
/// models (naming their target as `parent`).
pub async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let served = st.registry.models();
    let mut data: Vec<serde_json::Value> = served
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    for (alias, target) in st.pipeline.models.aliases_of(&served) {
        data.push(serde_json::json!({"id": alias, "object": "model", "created": 0, "owned_by": "switchyard", "parent": target}));
    }
    Json(serde_json::json!({"object": "list", "data": data}))
}

/// Any other route.
pub async fn not_found(req: Request) -> Response {
    ApiError::route_not_found(req.method().as_str(), req.uri().path()).into_response()
}

/// A known route with a method it does not serve.
pub async fn method_not_allowed(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let mut resp =
        ApiError::method_not_allowed(req.method().as_str(), req.uri().path()).into_response();
    set_request_id(&mut resp, &st.pipeline.request_id(req.headers()));
    resp
}
