//! The Responses API's endpoints (docs/responses.md): thin handlers over the stateful
//! layer's service. Every object belongs to an owner (the tenant; `default` until
//! tenancy lands).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use switchyard_stateful::responses::service::{Created, ServiceError};

use super::AppState;
use crate::error::ApiError;
use crate::request::Route;

/// The owner of every stored object until tenancy.
pub const OWNER: &str = "default";

fn failure(e: &ServiceError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, Json(e.json())).into_response();
    if e.status == 503 || e.status == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `POST /v1/responses`.
pub async fn create(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let admitted = match st.pipeline.admit(&parts.headers).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let bytes = match st
        .pipeline
        .read_body(Route::Chat, &parts.headers, body)
        .await
    {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::bad_request(format!("Invalid JSON in request body: {e}"), None)
                .into_response();
        }
    };
    match st.responses.create(&v, OWNER).await {
        Ok(Created::Json(r)) => Json(r).into_response(),
        Ok(Created::Events(events)) => {
            // The client's permit lives as long as its stream.
            let body = events.map(move |e| {
                let _held = &admitted;
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(e))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(body))
                .expect("static headers are valid")
        }
        Err(e) => failure(&e),
    }
}

/// `GET /v1/responses/{id}`.
pub async fn get(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.responses.get(&id, OWNER).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => failure(&e),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.responses.delete(&id, OWNER).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => failure(&e),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

/// `GET /v1/responses/{id}/input_items?after=&limit=&order=`.
pub async fn input_items(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::bad_request("limit must be an integer; after and order strings", None)
            .into_response();
    };
    match st
        .responses
        .input_items(&id, OWNER, q.after.as_deref(), q.limit, q.order.as_deref())
        .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => failure(&e),
    }
}
