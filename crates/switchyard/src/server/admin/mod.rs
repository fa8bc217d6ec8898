//! The admin listener (`--admin-host`, `--admin-port`, loopback by default), never the
//! data plane: the worker API ([`workers`]), registration jobs ([`jobs`]), tenants,
//! keys, usage and the audit log ([`tenancy`]), and the live dashboard ([`dashboard`]). With
//! `--admin-api-key` every call needs it; a non-loopback admin host requires one.

pub mod dashboard;
pub mod jobs;
pub mod tenancy;
pub mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::openai::method_not_allowed;
use super::{AppState, layers};
use crate::error::ApiError;

/// The admin router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/workers", post(workers::add).get(workers::list))
        .route(
            "/workers/{id}",
            get(workers::get)
                .delete(workers::delete)
                .patch(workers::patch),
        )
        .route("/jobs/{id}", get(workers::job))
        .route("/get_loads", get(workers::loads))
        .route("/flush_cache", post(workers::flush_cache))
        .route("/admin/reload", post(super::selection::reload))
        .route("/sessions", get(super::route::list_sessions))
        .route("/workflows/{id}", get(super::workflows::admin_status))
        .route(
            "/admin/tenants",
            post(tenancy::create_tenant).get(tenancy::list_tenants),
        )
        .route(
            "/admin/tenants/{id}",
            get(tenancy::get_tenant)
                .patch(tenancy::update_tenant)
                .delete(tenancy::delete_tenant),
        )
        .route(
            "/admin/keys",
            post(tenancy::create_key).get(tenancy::list_keys),
        )
        .route(
            "/admin/keys/{id}",
            get(tenancy::get_key)
                .patch(tenancy::update_key)
                .delete(tenancy::revoke_key),
        )
        .route("/admin/usage", get(tenancy::usage))
        .route("/admin/audit", get(tenancy::audit_log))
        .route(
            "/dashboard",
            get(dashboard::page).fallback(method_not_allowed),
        )
        .route(
            "/dashboard/app.js",
            get(dashboard::script).fallback(method_not_allowed),
        )
        .route(
            "/dashboard/app.css",
            get(dashboard::style).fallback(method_not_allowed),
        )
        .route(
            "/dashboard/stream",
            get(dashboard::stream).fallback(method_not_allowed),
        )
        .route(
            "/dashboard/snapshot",
            get(dashboard::snapshot_json).fallback(method_not_allowed),
        )
        .route(
            "/dashboard/login",
            post(dashboard::login).fallback(method_not_allowed),
        )
        .fallback(|req: Request| async move {
            ApiError::route_not_found(req.method().as_str(), req.uri().path()).into_response()
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::admin_key,
        ))
        .with_state(state)
}
