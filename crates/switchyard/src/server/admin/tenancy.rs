//! The tenancy admin API (docs/tenancy.md): tenants, keys, usage and the audit log.
//! Every change is recorded in the audit table and as a `switchyard::audit` log line:
//! who (the `x-switchyard-actor` header, else `admin`, and the client address), what,
//! and when. No secret is ever logged: a new key's secret appears only in the answer
//! to its creation.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{Extensions, HeaderMap, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;
use switchyard_stateful::store::Val;

use crate::error::ApiError;
use crate::server::AppState;
use crate::tenancy::directory::{AdminError, Audit};
use crate::tenancy::usage::UsageQuery;

/// Who made an admin call, for the audit log.
fn actor(headers: &HeaderMap, ext: &Extensions) -> String {
    let name = headers
        .get("x-switchyard-actor")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim())
        .filter(|s| {
            !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        })
        .unwrap_or("admin");
    match ext.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(a)) => format!("{name}@{}", a.ip()),
        None => name.to_string(),
    }
}

/// The audit record of an action by the caller of `headers` (recorded with the change).
fn audit(
    headers: &HeaderMap,
    ext: &Extensions,
    action: &'static str,
    target: &str,
    detail: Value,
) -> Audit {
    Audit {
        actor: actor(headers, ext),
        action,
        target: target.to_string(),
        detail,
    }
}

fn failed(e: AdminError) -> Response {
    match e {
        AdminError::Invalid(m) => ApiError::bad_request(m, None).into_response(),
        AdminError::NotFound(m) => ApiError::not_found_named(m).into_response(),
        AdminError::Conflict(m) => ApiError::conflict(m).into_response(),
        AdminError::Store(e) => {
            tracing::warn!(error = %e, "tenancy store failed");
            ApiError::unavailable(
                "store_unavailable",
                "The database is unavailable; try again shortly",
                1,
            )
            .into_response()
        }
    }
}

fn json_of(body: &Bytes) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::bad_request(
            "The body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("Invalid JSON in request body: {e}"),
            None,
        )),
    }
}

/// The fields of a body worth auditing (never a key's secret: bodies hold none).
fn summary(v: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for k in [
        "id",
        "tenant",
        "name",
        "limits",
        "allowed_models",
        "expires_at",
    ] {
        if let Some(x) = v.get(k) {
            out.insert(k.into(), x.clone());
        }
    }
    Value::Object(out)
}

/// `POST /admin/tenants`.
pub async fn create_tenant(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ext: Extensions,
    body: Bytes,
) -> Response {
    let v = match json_of(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let w = audit(&headers, &ext, "tenant.create", "", summary(&v));
    match st.pipeline.tenancy.directory.create_tenant(&v, w).await {
        Ok(t) => (StatusCode::CREATED, Json(t.to_json())).into_response(),
        Err(e) => failed(e),
    }
}

/// `GET /admin/tenants`.
pub async fn list_tenants(State(st): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = st
        .pipeline
        .tenancy
        .directory
        .tenants()
        .iter()
        .map(|t| t.to_json())
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /admin/tenants/{id}`.
pub async fn get_tenant(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.pipeline.tenancy.directory.tenant(&id) {
        Some(t) => Json(t.to_json()).into_response(),
        None => ApiError::not_found_named(format!("No tenant `{id}`")).into_response(),
    }
}

/// `PATCH /admin/tenants/{id}`.
pub async fn update_tenant(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
    body: Bytes,
) -> Response {
    let v = match json_of(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let w = audit(&headers, &ext, "tenant.update", &id, summary(&v));
    match st
        .pipeline
        .tenancy
        .directory
        .update_tenant(&id, &v, w)
        .await
    {
        Ok(t) => Json(t.to_json()).into_response(),
        Err(e) => failed(e),
    }
}

/// `DELETE /admin/tenants/{id}`: the tenant goes and its keys are revoked.
pub async fn delete_tenant(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
) -> Response {
    let w = audit(&headers, &ext, "tenant.delete", &id, json!({}));
    match st.pipeline.tenancy.directory.delete_tenant(&id, w).await {
        Ok(()) => {
            Json(json!({"id": id, "object": "tenant.deleted", "deleted": true})).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `POST /admin/keys`: the key's secret is in this answer and nowhere else.
pub async fn create_key(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ext: Extensions,
    body: Bytes,
) -> Response {
    let v = match json_of(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let w = audit(&headers, &ext, "key.create", "", summary(&v));
    match st.pipeline.tenancy.directory.create_key(&v, w).await {
        Ok((k, secret)) => {
            let mut out = k.to_json(st.pipeline.tenancy.now_ms());
            out["key"] = json!(secret);
            (StatusCode::CREATED, Json(out)).into_response()
        }
        Err(e) => failed(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    tenant: Option<String>,
}

/// `GET /admin/keys?tenant=`.
pub async fn list_keys(
    State(st): State<Arc<AppState>>,
    q: Result<Query<KeyList>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::bad_request("The only filter is `tenant`", None).into_response();
    };
    let now = st.pipeline.tenancy.now_ms();
    let data: Vec<Value> = st
        .pipeline
        .tenancy
        .directory
        .keys(q.tenant.as_deref())
        .iter()
        .map(|k| k.to_json(now))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /admin/keys/{id}`.
pub async fn get_key(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.pipeline.tenancy.directory.key(&id).await {
        Ok(Some(k)) => Json(k.to_json(st.pipeline.tenancy.now_ms())).into_response(),
        Ok(None) => ApiError::not_found_named(format!("No key `{id}`")).into_response(),
        Err(e) => failed(e.into()),
    }
}

/// `PATCH /admin/keys/{id}`.
pub async fn update_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
    body: Bytes,
) -> Response {
    let v = match json_of(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let w = audit(&headers, &ext, "key.update", &id, summary(&v));
    match st.pipeline.tenancy.directory.update_key(&id, &v, w).await {
        Ok(k) => Json(k.to_json(st.pipeline.tenancy.now_ms())).into_response(),
        Err(e) => failed(e),
    }
}

/// `DELETE /admin/keys/{id}`: revokes the key.
pub async fn revoke_key(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
) -> Response {
    let w = audit(&headers, &ext, "key.revoke", &id, json!({}));
    match st.pipeline.tenancy.directory.revoke_key(&id, w).await {
        Ok(k) => Json(k.to_json(st.pipeline.tenancy.now_ms())).into_response(),
        Err(e) => failed(e),
    }
}

/// `GET /admin/usage?tenant=&key=&model=&from=&to=&group_by=hour|day|model|key`. This
/// replica's counts not yet written are written first.
pub async fn usage(
    State(st): State<Arc<AppState>>,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return ApiError::bad_request(
                format!("Invalid usage query ({e}): the filters are tenant, key, model, from, to (unix seconds) and group_by"),
                None,
            )
            .into_response();
        }
    };
    let t = &st.pipeline.tenancy;
    t.flush_usage().await;
    match crate::tenancy::usage::query(t.directory.store(), &q).await {
        Ok(v) => Json(v).into_response(),
        Err(m) if m.starts_with("`group_by`") => {
            ApiError::bad_request(m, Some("group_by")).into_response()
        }
        Err(m) => {
            tracing::warn!(error = %m, "usage query failed");
            ApiError::unavailable(
                "store_unavailable",
                "The database is unavailable; try again shortly",
                1,
            )
            .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<i64>,
    /// Only records after this id (paging).
    after: Option<i64>,
}

/// `GET /admin/audit?limit=&after=`: admin actions, oldest first.
pub async fn audit_log(
    State(st): State<Arc<AppState>>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return ApiError::bad_request("The parameters are `limit` (1 to 1000) and `after`", None)
            .into_response();
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return ApiError::bad_request("`limit` must be from 1 to 1000", Some("limit"))
            .into_response();
    }
    let rows = st
        .pipeline
        .tenancy
        .directory
        .store()
        .fetch_all(
            "SELECT id, at, actor, action, target, detail FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
            &[Val::from(q.after.unwrap_or(0)), Val::from(limit)],
        )
        .await;
    match rows {
        Ok(rows) => {
            let data: Vec<Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "id": r.get::<i64, _>("id"),
                        "at": crate::state::rfc3339(r.get::<i64, _>("at")),
                        "actor": r.get::<String, _>("actor"),
                        "action": r.get::<String, _>("action"),
                        "target": r.get::<String, _>("target"),
                        "detail": serde_json::from_str::<Value>(&r.get::<String, _>("detail")).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => failed(e.into()),
    }
}
