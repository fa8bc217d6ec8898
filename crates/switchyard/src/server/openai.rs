//! The OpenAI-compatible routes. Handlers are thin: generation requests go straight
//! into the pipeline.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::AppState;
use crate::error::ApiError;
use crate::pipeline::admit::set_request_id;
use crate::request::Route;
use crate::tenancy::Caller;

pub async fn chat_completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Chat, req).await
}

pub async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Completions, req).await
}

pub async fn embeddings(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Embeddings, req).await
}

/// `POST /v1/audio/transcriptions` (multipart upload).
pub async fn transcriptions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Transcriptions, req).await
}

/// `POST /v1/audio/speech` (the answer is audio bytes, passed through).
pub async fn speech(State(st): State<Arc<AppState>>, req: Request) -> Response {
    st.pipeline.serve_http(Route::Speech, req).await
}

/// `GET /v1/models`: the union of what healthy workers serve, with each model's
/// capabilities and description from the config; aliases of those models (naming their
/// target as `parent`); and the router names when intent routing is configured. A
/// caller restricted to some models sees only those (and no router names).
pub async fn models(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Json<serde_json::Value> {
    let mut served = st.registry.models();
    served.retain(|m| caller.may_use(m));
    let selector = &st.pipeline.models;
    let entry = |id: &str| {
        let (capabilities, description) = selector.info(id);
        serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard",
            "capabilities": capabilities, "description": description})
    };
    let mut data: Vec<serde_json::Value> = served.iter().map(|id| entry(id)).collect();
    for (alias, target) in selector.aliases_of(&served) {
        let mut e = entry(&target);
        e["id"] = alias.into();
        e["parent"] = target.into();
        data.push(e);
    }
    let unrestricted = caller.allowed_models().is_none();
    for name in selector.router_names().into_iter().filter(|_| unrestricted) {
        data.push(serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": "switchyard",
            "capabilities": ["intent_routing"],
            "description": "The gateway chooses the model by the prompt's intent (GET /router/info)"}));
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
