//! `/route` and its surfaces: `POST /route`, `GET /use-cases`, `GET /stats`,
//! `GET|DELETE /sessions/{id}` on the data plane, and `GET /sessions?user_id=` on the
//! admin listener. The work is `pipeline::route`'s; these handlers only translate.

use std::sync::Arc;

use axum::Extension;

use crate::pipeline::route::{scoped_session, scoped_user, unscoped_user};
use crate::tenancy::Caller;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::request::route::valid_session_id;
use crate::selection::use_cases::UseCaseInfo;

/// `POST /route`.
pub async fn route(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let span =
        crate::telemetry::request_span(req.method(), "/route", Some("/route"), None, req.headers());
    let resp = crate::telemetry::traced!(span, st.route.clone().handle(req));
    crate::telemetry::record_status(&span, resp.status());
    resp
}

/// Whether `model` has a healthy, non-draining worker; and the fastest last health
/// check among those, in milliseconds.
fn model_state(st: &AppState, model: &str) -> (usize, usize, Option<f64>) {
    let (mut ok, mut all, mut fastest) = (0, 0, None::<f64>);
    for w in st.registry.all().iter().filter(|w| w.serves(model)) {
        all += 1;
        if w.is_healthy() && !w.is_draining() {
            ok += 1;
            if let Some(t) = w.probe_time() {
                let t = t.as_secs_f64() * 1e3;
                fastest = Some(fastest.map_or(t, |f| f.min(t)));
            }
        }
    }
    (ok, all, fastest.map(|t| (t * 1e3).round() / 1e3))
}

/// A use case with its model's health.
fn describe(st: &AppState, c: &UseCaseInfo) -> Value {
    let model = st.pipeline.models.use_case_model(c, &st.registry);
    let (ok, all, probe) = model
        .as_deref()
        .map_or((0, 0, None), |m| model_state(st, m));
    json!({
        "id": &*c.id,
        "description": &*c.description,
        "model": model.as_deref(),
        "modalities": c.modalities,
        "healthy": ok > 0,
        "status": match (model.is_some(), ok > 0) {
            (false, _) => "no_model",
            (true, true) => "healthy",
            (true, false) => "unhealthy",
        },
        "healthy_workers": ok,
        "workers": all,
        "response_time_ms": probe,
    })
}

/// `GET /use-cases`.
pub async fn use_cases(State(st): State<Arc<AppState>>) -> Json<Value> {
    let cases: Vec<Value> = st
        .pipeline
        .models
        .use_cases()
        .iter()
        .map(|c| describe(&st, c))
        .collect();
    Json(json!({
        "object": "list",
        "classifier": st.pipeline.models.use_case_classifier(),
        "data": cases,
    }))
}

/// `/health`'s `model_endpoints`: each use case's model, status and last probe time.
pub fn model_endpoints(st: &AppState) -> serde_json::Map<String, Value> {
    st.pipeline
        .models
        .use_cases()
        .iter()
        .map(|c| {
            let v = describe(st, c);
            let out = json!({
                "model": v["model"],
                "status": v["status"],
                "response_time_ms": v["response_time_ms"],
            });
            (c.id.to_string(), out)
        })
        .collect()
}

/// `/health`'s `bypass_router`: the session store's state.
pub async fn bypass_router(st: &AppState) -> Value {
    let stores = &st.route.stores;
    match stores.ping().await {
        Ok(()) => json!({"status": "healthy", "backend": stores.backend}),
        Err(e) => json!({"status": "degraded", "backend": stores.backend, "error": e.to_string()}),
    }
}

/// `GET /stats`.
pub async fn stats(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(st.route.stats().await)
}

fn session_id(id: &str) -> Result<(), ApiError> {
    if valid_session_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "A session id is 1 to 128 characters of letters, digits, `_`, `-`, `.` or `:`",
            Some("session_id"),
        ))
    }
}

fn store_down(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(
        "session_store_unavailable",
        format!("The session store is unavailable: {e}"),
        1,
    )
}

fn no_session(id: &str) -> ApiError {
    ApiError::not_found_named(format!("Session `{id}` does not exist or has expired"))
}

/// `GET /sessions/{id}`.
pub async fn get_session(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = session_id(&id) {
        return e.into_response();
    }
    match st
        .route
        .stores
        .sessions
        .get(&scoped_session(caller.owner(), &id))
        .await
    {
        Ok(Some(s)) => {
            let mut v = s.to_json();
            v["session_id"] = json!(id);
            if let Some(u) = &s.user_id {
                v["user_id"] = json!(unscoped_user(caller.owner(), u));
            }
            Json(v).into_response()
        }
        Ok(None) => no_session(&id).into_response(),
        Err(e) => store_down(e).into_response(),
    }
}

/// `DELETE /sessions/{id}`.
pub async fn delete_session(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = session_id(&id) {
        return e.into_response();
    }
    match st
        .route
        .stores
        .sessions
        .delete(&scoped_session(caller.owner(), &id))
        .await
    {
        Ok(true) => Json(json!({"success": true, "message": format!("Session {id} deleted")}))
            .into_response(),
        Ok(false) => no_session(&id).into_response(),
        Err(e) => store_down(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    user_id: Option<String>,
    /// The user's tenant (`default` when absent).
    tenant: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `GET /sessions?user_id=…&tenant=…&offset=…&limit=…` (admin listener): a user's
/// sessions (of `tenant`, else of `default`), most recently used first.
pub async fn list_sessions(
    State(st): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::bad_request("offset and limit must be non-negative integers", None)
            .into_response();
    };
    let Some(user) = q.user_id.filter(|u| !u.is_empty()) else {
        return ApiError::bad_request("user_id is required", Some("user_id")).into_response();
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return ApiError::bad_request("limit must be from 1 to 1000", Some("limit"))
            .into_response();
    }
    let tenant = q
        .tenant
        .unwrap_or_else(|| crate::tenancy::DEFAULT_TENANT.to_string());
    let stored = scoped_user(&tenant, &user);
    match st
        .route
        .stores
        .sessions
        .list(&stored, q.offset, limit)
        .await
    {
        Ok(page) => {
            let next = q.offset + page.sessions.len();
            let data: Vec<Value> = page
                .sessions
                .iter()
                .map(|s| {
                    let mut v = s.to_json();
                    v["session_id"] = json!(crate::pipeline::route::unscoped_session(
                        &tenant,
                        &s.session_id
                    ));
                    v["user_id"] = json!(user);
                    v
                })
                .collect();
            Json(json!({
                "object": "list",
                "tenant": tenant,
                "user_id": user,
                "data": data,
                "total": page.total,
                "offset": q.offset,
                "has_more": next < page.total,
                "next_offset": (next < page.total).then_some(next),
            }))
            .into_response()
        }
        Err(e) => store_down(e).into_response(),
    }
}
