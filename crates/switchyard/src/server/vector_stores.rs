//! The Vector Stores API's endpoints (docs/files-and-vector-stores.md): thin handlers
//! over the stateful layer's service.

use std::sync::Arc;

use crate::tenancy::Caller;
use axum::Extension;

use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use serde::Deserialize;

use super::AppState;
use super::responses::{answer, bad_list_query, json_body};

type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
    /// Files: their status.
    filter: Option<String>,
}

/// `POST /v1/vector_stores`.
pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(b) => answer(st.vector_stores.create(caller.owner(), &b).await),
        Err(r) => r,
    }
}

/// `GET /v1/vector_stores`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    q: Q<ListQuery>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_list_query();
    };
    let r = st
        .vector_stores
        .list(
            caller.owner(),
            q.after.as_deref(),
            q.before.as_deref(),
            q.limit,
            q.order.as_deref(),
        )
        .await;
    answer(r)
}

/// `GET /v1/vector_stores/{id}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.vector_stores.get(caller.owner(), &id).await)
}

/// `POST /v1/vector_stores/{id}`: name, metadata, expiry.
pub async fn modify(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(b) => answer(st.vector_stores.modify(caller.owner(), &id, &b).await),
        Err(r) => r,
    }
}

/// `DELETE /v1/vector_stores/{id}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.vector_stores.delete(caller.owner(), &id).await)
}

/// `POST /v1/vector_stores/{id}/search`.
pub async fn search(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let b = match json_body(&st, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let found = st.vector_stores.search_api(caller.owner(), &id, &b).await;
    // A store still ingesting answers from its completed files: the header says how
    // many are not searched yet.
    let pending = match &found {
        Ok(_) => st.vector_stores.files_in_progress(&id).await.unwrap_or(0),
        Err(_) => 0,
    };
    let mut resp = answer(found);
    if pending > 0 {
        resp.headers_mut()
            .insert(FILES_IN_PROGRESS, axum::http::HeaderValue::from(pending));
    }
    resp
}

/// On a search's answer: files of the store still being ingested, so not searched.
pub const FILES_IN_PROGRESS: &str = "x-switchyard-files-in-progress";

/// `POST /v1/vector_stores/{id}/files`.
pub async fn add_file(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(b) => answer(st.vector_stores.add_file(caller.owner(), &id, &b).await),
        Err(r) => r,
    }
}

/// `GET /v1/vector_stores/{id}/files`, and a batch's files.
pub async fn list_files(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    q: Q<ListQuery>,
) -> Response {
    list_files_of(st, caller, id, None, q).await
}

/// `GET /v1/vector_stores/{id}/file_batches/{batch_id}/files`.
pub async fn list_batch_files(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, batch)): Path<(String, String)>,
    q: Q<ListQuery>,
) -> Response {
    list_files_of(st, caller, id, Some(batch), q).await
}

async fn list_files_of(
    st: Arc<AppState>,
    caller: Arc<Caller>,
    id: String,
    batch: Option<String>,
    q: Q<ListQuery>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_list_query();
    };
    let r = st
        .vector_stores
        .list_files(
            caller.owner(),
            &id,
            batch.as_deref(),
            q.filter.as_deref(),
            q.after.as_deref(),
            q.before.as_deref(),
            q.limit,
            q.order.as_deref(),
        )
        .await;
    answer(r)
}

/// `GET /v1/vector_stores/{id}/files/{file_id}`.
pub async fn get_file(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    answer(st.vector_stores.get_file(caller.owner(), &id, &file).await)
}

/// `POST /v1/vector_stores/{id}/files/{file_id}`: new attributes.
pub async fn update_file(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, file)): Path<(String, String)>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(b) => answer(
            st.vector_stores
                .update_file(caller.owner(), &id, &file, &b)
                .await,
        ),
        Err(r) => r,
    }
}

/// `DELETE /v1/vector_stores/{id}/files/{file_id}`.
pub async fn delete_file(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    answer(
        st.vector_stores
            .delete_file(caller.owner(), &id, &file)
            .await,
    )
}

/// `GET /v1/vector_stores/{id}/files/{file_id}/content`: the parsed chunks.
pub async fn file_content(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    answer(
        st.vector_stores
            .file_content(caller.owner(), &id, &file)
            .await,
    )
}

/// `POST /v1/vector_stores/{id}/file_batches`.
pub async fn create_batch(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match json_body(&st, req).await {
        Ok(b) => answer(st.vector_stores.create_batch(caller.owner(), &id, &b).await),
        Err(r) => r,
    }
}

/// `GET /v1/vector_stores/{id}/file_batches/{batch_id}`.
pub async fn get_batch(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, batch)): Path<(String, String)>,
) -> Response {
    answer(
        st.vector_stores
            .get_batch(caller.owner(), &id, &batch)
            .await,
    )
}

/// `POST /v1/vector_stores/{id}/file_batches/{batch_id}/cancel`.
pub async fn cancel_batch(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, batch)): Path<(String, String)>,
) -> Response {
    answer(
        st.vector_stores
            .cancel_batch(caller.owner(), &id, &batch)
            .await,
    )
}
