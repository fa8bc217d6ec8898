//! The Responses API's endpoints (docs/responses.md): thin handlers over the stateful
//! layer's service. Every object belongs to an owner: the caller's tenant.

use std::collections::HashMap;
use std::sync::Arc;

use crate::tenancy::Caller;
use axum::Extension;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use switchyard_stateful::responses::service::{Created, EventStream, ServiceError};

use super::AppState;
use crate::error::ApiError;
use crate::pipeline::admit::Admitted;
use crate::request::Route;

pub(super) fn failure(e: &ServiceError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, Json(e.json())).into_response();
    if e.status == 503 || e.status == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// `POST /v1/responses`.
pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let admitted = match st.pipeline.admit().await {
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
    match st.responses.create(&v, caller.owner()).await {
        Ok(Created::Json(r)) => Json(r).into_response(),
        // The client's permit lives as long as its stream.
        Ok(Created::Events(events)) => sse(events, Some(admitted)),
        Err(e) => failure(&e),
    }
}

/// `POST /v1/responses/input_tokens`.
pub async fn input_tokens(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.responses.input_tokens(&body, caller.owner()).await),
        Err(r) => r,
    }
}

/// A stream of server-sent events, holding `permit` until it ends.
fn sse(events: EventStream, permit: Option<Admitted>) -> Response {
    let body = events.map(move |e| {
        let _held = &permit;
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(e))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("static headers are valid")
}

/// A list's query string that does not parse (`limit` is the only number in it).
pub(super) fn bad_list_query() -> Response {
    bad_query(
        "`limit` must be an integer; `after`, `order` and `purpose` strings",
        "limit",
    )
}

fn bad_query(message: &str, param: &str) -> Response {
    ApiError::bad_request(message.to_string(), Some(param)).into_response()
}

/// `GET /v1/responses/{id}`, and with `?stream=true` (`&starting_after=N`) a
/// background stream's events again.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_query("the query string is malformed", "stream");
    };
    let stream = match q.get("stream").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return bad_query("`stream` must be true or false", "stream"),
    };
    let starting_after = match q.get("starting_after").map(|n| n.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return bad_query(
                "`starting_after` must be a sequence number (an integer, 0 or more)",
                "starting_after",
            );
        }
    };
    if !stream {
        if starting_after.is_some() {
            return bad_query("`starting_after` needs `stream=true`", "starting_after");
        }
        return answer(st.responses.get(&id, caller.owner()).await);
    }
    match st
        .responses
        .events(&id, caller.owner(), starting_after)
        .await
    {
        Ok(events) => sse(events, None),
        Err(e) => failure(&e),
    }
}

/// `POST /v1/responses/{id}/cancel`.
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.responses.cancel(&id, caller.owner()).await)
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.responses.delete(&id, caller.owner()).await)
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
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_list_query();
    };
    answer(
        st.responses
            .input_items(
                &id,
                caller.owner(),
                q.after.as_deref(),
                q.limit,
                q.order.as_deref(),
            )
            .await,
    )
}

/// A JSON body of a Conversations call (admitted like any API call, size-limited).
pub(super) async fn json_body(st: &AppState, req: Request) -> Result<serde_json::Value, Response> {
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

pub(super) fn answer(r: Result<serde_json::Value, ServiceError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(&e),
    }
}

/// `POST /v1/conversations`.
pub async fn create_conversation(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.conversations.create(&body, caller.owner()).await),
        Err(r) => r,
    }
}

/// `GET /v1/conversations/{id}`.
pub async fn get_conversation(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.conversations.get(&id, caller.owner()).await)
}

/// `POST /v1/conversations/{id}`: new metadata.
pub async fn update_conversation(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.conversations.update(&id, caller.owner(), &body).await),
        Err(r) => r,
    }
}

/// `DELETE /v1/conversations/{id}`.
pub async fn delete_conversation(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.conversations.delete(&id, caller.owner()).await)
}

/// `GET /v1/conversations/{id}/items`.
pub async fn list_items(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_list_query();
    };
    answer(
        st.conversations
            .list_items(
                &id,
                caller.owner(),
                q.after.as_deref(),
                q.limit,
                q.order.as_deref(),
            )
            .await,
    )
}

/// `POST /v1/conversations/{id}/items`.
pub async fn add_items(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(body) => answer(st.conversations.add_items(&id, caller.owner(), &body).await),
        Err(r) => r,
    }
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub async fn get_item(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    answer(st.conversations.get_item(&id, caller.owner(), &item).await)
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`.
pub async fn delete_item(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, item)): Path<(String, String)>,
) -> Response {
    answer(
        st.conversations
            .delete_item(&id, caller.owner(), &item)
            .await,
    )
}
