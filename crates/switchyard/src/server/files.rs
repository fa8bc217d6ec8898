//! The Files API's endpoints (docs/files-and-vector-stores.md): an upload is streamed
//! from the multipart form into the blob store (never held whole), then kept with its
//! metadata; files are listed, read back and deleted.

use std::sync::Arc;

use crate::tenancy::Caller;
use axum::Extension;

use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use switchyard_stateful::files::FileMeta;
use switchyard_stateful::files::blobs::Staged;

use super::AppState;
use super::responses::{answer, bad_list_query, failure};
use crate::error::ApiError;

fn form_error(e: impl std::fmt::Display) -> Response {
    ApiError::bad_request(
        format!("The multipart form is malformed: {e}"),
        Some("file"),
    )
    .into_response()
}

/// `POST /v1/files`: `file` (a file part), `purpose`, and optionally
/// `expires_after[anchor]` and `expires_after[seconds]`.
pub async fn upload(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let mut form = match form {
        Ok(f) => f,
        Err(e) => {
            return ApiError::bad_request(
                format!("Expected a multipart/form-data body: {e}"),
                Some("file"),
            )
            .into_response();
        }
    };
    let (mut purpose, mut anchor, mut seconds) = (None, None, None);
    let mut file: Option<(Option<String>, Staged)> = None;
    let outcome: Result<(), Response> = async {
        while let Some(field) = form.next_field().await.map_err(form_error)? {
            match field.name().unwrap_or_default() {
                "file" => {
                    if file.is_some() {
                        return Err(ApiError::bad_request(
                            "Send one `file` part per upload",
                            Some("file"),
                        )
                        .into_response());
                    }
                    let name = field.file_name().map(str::to_string);
                    let chunks = Box::pin(field.map_err(std::io::Error::other));
                    let staged = st.files.stage(chunks).await.map_err(|e| failure(&e))?;
                    file = Some((name, staged));
                }
                "purpose" => purpose = Some(field.text().await.map_err(form_error)?),
                "expires_after[anchor]" => anchor = Some(field.text().await.map_err(form_error)?),
                "expires_after[seconds]" => seconds = Some(field.text().await.map_err(form_error)?),
                // Other parts are dropped (and read past) unread.
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let result = match (outcome, file) {
        (Err(r), f) => {
            if let Some((_, staged)) = f {
                st.files.discard(&staged).await;
            }
            return r;
        }
        (Ok(()), None) => {
            return ApiError::bad_request("`file` is required", Some("file")).into_response();
        }
        (Ok(()), Some((name, staged))) => {
            match FileMeta::parse(
                name.as_deref(),
                purpose.as_deref(),
                anchor.as_deref(),
                seconds.as_deref(),
            ) {
                Ok(meta) => st.files.create(caller.owner(), &meta, staged).await,
                Err(e) => {
                    st.files.discard(&staged).await;
                    Err(e)
                }
            }
        }
    };
    answer(result)
}

#[derive(Deserialize)]
pub struct ListQuery {
    purpose: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

/// `GET /v1/files`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_list_query();
    };
    let r = st
        .files
        .list(
            caller.owner(),
            q.purpose.as_deref(),
            q.after.as_deref(),
            q.limit,
            q.order.as_deref(),
        )
        .await;
    answer(r)
}

/// `GET /v1/files/{id}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.files.get(&id, caller.owner()).await)
}

/// `GET /v1/files/{id}/content`: the bytes, streamed.
pub async fn content(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    match st.files.content(&id, caller.owner()).await {
        Ok((filename, bytes)) => {
            let mut resp = (StatusCode::OK, Body::from_stream(bytes)).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let safe: String = filename
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() && c != '"' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) => failure(&e),
    }
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    answer(st.files.delete(&id, caller.owner()).await)
}
