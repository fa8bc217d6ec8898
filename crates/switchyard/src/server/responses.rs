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

/// A JSON body of a Conversations call (admitted like any API call, size-limited).
async fn json_body(st: &AppState, req: Request) -> Result<serde_json::Value, Response> {
    let (parts, body) = req.into_parts();
    let bytes = st
        .pipeline
        .read_body(Route::Chat, &parts.headers, body)
        .await
        .map_err(IntoResponse::into_response)?;
    if bytes.is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("Invalid JSON in request body: {e}"), None).into_response()
    })
}

fn answer(r: Result<serde_json::Value, ServiceError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(&e),
    }
}

/// `POST /v1/conversations`.
pub async fn create_conversation(State(st): State<Arc<AppState>>, req: Request) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.conversations.create(&body, OWNER).await),
        Err(r) => r,
    }
}

/// `GET /v1/conversations/{id}`.
pub async fn get_conversation(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    answer(st.conversations.get(&id, OWNER).await)
}

/// `POST /v1/conversations/{id}`: new metadata.
pub async fn update_conversation(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.conversations.update(&id, OWNER, &body).await),
        Err(r) => r,
    }
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete_conversation(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.conversations.delete(&id, OWNER).await)
}

/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::bad_request("limit must be an integer; after and order strings", None)
            .into_response();
    };
    answer(
        st.conversations
            .list_items(&id, OWNER, q.after.as_deref(), q.limit, q.order.as_deref())
            .await,
    )
}

/// `POST /v1/conversations/{id}/items`.
pub async fn add_items(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.conversations.add_items(&id, OWNER, &body).await),
        Err(r) => r,
    }
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(
    State(st): State<Arc<AppState>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    answer(st.conversations.get_item(&id, OWNER, &item).await)
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`.
pub async fn delete_item(
    State(st): State<Arc<AppState>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    answer(st.conversations.delete_item(&id, OWNER, &item).await)
}
