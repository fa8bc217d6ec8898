//! Tower layers for the routes that are not the hot path (models, probes, the admin
//! listener): request ids, their trace spans and key checks. Generation routes do the same inline, in the
//! pipeline's `admit` phase.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::admin::dashboard;
use crate::error::ApiError;
use crate::pipeline::admit::{bearer_matches, set_request_id};

/// Echoes (or assigns) a request id, inside the request's trace span (docs/tracing.md;
/// `Span::none()` with tracing off): the engine calls a handler makes through the
/// pipeline (Responses, classification) become its children.
pub async fn request_id(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = st.pipeline.request_id(req.headers());
    // Probes (every few seconds from an orchestrator) are not traced.
    let probe = matches!(
        req.uri().path(),
        "/health" | "/readiness" | "/ready" | "/liveness" | "/live"
    );
    let span = if probe {
        tracing::Span::none()
    } else {
        crate::telemetry::request_span(
            req.method(),
            req.uri().path(),
            None,
            Some(&id),
            req.headers(),
        )
    };
    let mut resp = crate::telemetry::traced!(span, next.run(req));
    crate::telemetry::record_status(&span, resp.status());
    set_request_id(&mut resp, &id);
    resp
}

/// Authenticates the caller (a key once any is configured) and hands it to the
/// handler as an extension: its tenant owns what the handler stores or reads.
pub async fn api_key(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    match st
        .pipeline
        .authenticate(req.headers(), req.extensions())
        .await
    {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Requires `--admin-api-key` when one is set. The dashboard's pages also take the
/// cookie its sign-in form sets, and `GET /dashboard` without either shows that form.
pub async fn admin_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.admin_api_key
        && !bearer_matches(req.headers(), key)
    {
        let path = req.uri().path();
        let signed_in =
            dashboard::is_dashboard(path) && dashboard::cookie_matches(req.headers(), key);
        if !(signed_in || dashboard::is_public(path)) {
            if path == "/dashboard" && req.method() == http::Method::GET {
                return dashboard::login_page(http::StatusCode::UNAUTHORIZED, None);
            }
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}
