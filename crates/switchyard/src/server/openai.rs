//! The OpenAI-compatible data plane. Handlers are thin: read and check the body, parse
//! the `RequestView`, then hand over to dispatch.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header;

use super::AppState;
use super::middleware::{check_auth, request_id_of, set_request_id};
use crate::error::ApiError;
use crate::metrics::RequestLabels;
use crate::request::{RequestView, Route, set_fields};

pub async fn chat_completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    proxy(st, Route::Chat, req).await
}

pub async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    proxy(st, Route::Completions, req).await
}

pub async fn embeddings(State(st): State<Arc<AppState>>, req: Request) -> Response {
    proxy(st, Route::Embeddings, req).await
}

/// A generation request: request id, auth and admission are handled here rather than
/// by layers, as this is the hot path.
async fn proxy(st: Arc<AppState>, route: Route, req: Request) -> Response {
    let start = Instant::now();
    let rid = request_id_of(&st, req.headers());
    let mut resp = admit_and_proxy(st, route, req, &rid, start).await;
    set_request_id(&mut resp, &rid);
    resp
}

async fn admit_and_proxy(
    st: Arc<AppState>,
    route: Route,
    req: Request,
    rid: &str,
    start: Instant,
) -> Response {
    if let Err(e) = check_auth(&st, req.headers()) {
        return e.into_response();
    }
    let admission = match st.admission.admit().await {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let (parts, body) = req.into_parts();
    match prepare(&st, route, &parts.headers, body).await {
        Ok((view, bytes)) => {
            st.dispatcher
                .dispatch(view, &parts.headers, bytes, rid, start, admission)
                .await
        }
        Err(e) => {
            st.metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: route.name(),
                    model: Arc::from(""),
                    worker: Arc::from(""),
                    status: e.status.as_u16(),
                })
                .inc();
            tracing::info!(target: "switchyard::access", request_id = %rid, route = route.name(), status = e.status.as_u16(), error = e.code, "request rejected");
            e.into_response()
        }
    }
}

async fn prepare(
    st: &AppState,
    route: Route,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<(RequestView, bytes::Bytes), ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::bad_request(
                format!("Content-Type must be application/json, not `{ct}`"),
                None,
            ));
        }
    }
    let limit = st.cfg.max_payload_size;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::bad_request(format!("Could not read the request body: {e}"), None)
        }
    })?;
    let mut view = RequestView::parse(route, headers, &bytes, st.prefix_block_size(), &st.session)?;
    let mut bytes = bytes;
    if let Some(target) = st.aliases.get(&*view.model) {
        bytes =
            set_fields(&bytes, &[("model", serde_json::Value::from(&**target))]).unwrap_or(bytes);
        view.model = target.clone();
    }
    if !st.registry.knows_model(&view.model) {
        return Err(ApiError::model_not_found(
            &view.model,
            &st.registry.models(),
        ));
    }
    Ok((view, bytes))
}

/// `GET /v1/models`: the union of what healthy workers serve.
pub async fn models(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let served = st.registry.models();
    let mut data: Vec<serde_json::Value> = served
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    // Aliases of served models are listed too, naming their target as `parent`.
    let mut aliases: Vec<(&String, &Arc<str>)> = st
        .aliases
        .iter()
        .filter(|(_, t)| served.iter().any(|m| **m == ***t))
        .collect();
    aliases.sort();
    for (alias, target) in aliases {
        data.push(serde_json::json!({"id": alias, "object": "model", "created": 0, "owned_by": "switchyard", "parent": &**target}));
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
    set_request_id(&mut resp, &request_id_of(&st, req.headers()));
    resp
}
