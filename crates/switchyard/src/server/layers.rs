//! Tower layers for the routes that are not the hot path (models, probes, the admin
//! listener): request ids and key checks. Generation routes do the same inline, in the
//! pipeline's `admit` phase.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::ApiError;
use crate::pipeline::admit::{bearer_matches, set_request_id};

/// Echoes (or assigns) a request id.
pub async fn request_id(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = st.pipeline.request_id(req.headers());
    let mut resp = next.run(req).await;
    set_request_id(&mut resp, &id);
    resp
}

/// Requires `--api-key` when one is set.
pub async fn api_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match st.pipeline.admission.check_key(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Requires `--admin-api-key` when one is set.
pub async fn admin_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.admin_api_key {
        if !bearer_matches(req.headers(), key) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}
