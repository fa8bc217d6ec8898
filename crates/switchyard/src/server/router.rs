//! The data plane's routes (OpenAI API and probes) and the metrics listener's.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue};
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

use super::{
    AppState, files, health, layers, openai, responses, route, selection, vector_stores, workflows,
};

/// The data plane. Generation routes handle request ids, keys and admission inline
/// (the pipeline's `admit` phase); the others get them from layers.
pub fn data_plane(state: Arc<AppState>) -> Router {
    let generation = Router::new()
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/completions",
            post(openai::completions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/embeddings",
            post(openai::embeddings).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/audio/transcriptions",
            post(openai::transcriptions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/audio/speech",
            post(openai::speech).fallback(openai::method_not_allowed),
        )
        .route(
            "/route",
            post(route::route).fallback(openai::method_not_allowed),
        );
    let v1 = Router::new()
        .route(
            "/v1/models",
            get(openai::models).fallback(openai::method_not_allowed),
        )
        .route(
            "/router/info",
            get(selection::info).fallback(openai::method_not_allowed),
        )
        .route(
            "/router/classify",
            post(selection::classify).fallback(openai::method_not_allowed),
        )
        .route(
            "/use-cases",
            get(route::use_cases).fallback(openai::method_not_allowed),
        )
        .route(
            "/stats",
            get(route::stats).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/workflows/stats",
            get(workflows::stats).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/workflows/{id}",
            axum::routing::delete(workflows::delete).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/workflows/{id}/status",
            get(workflows::status).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/workflows/{id}/messages",
            post(workflows::send_to_workflow).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/workflows/{id}/agents/{agent}/messages",
            post(workflows::send_to_agent)
                .get(workflows::receive)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/responses",
            post(responses::create).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/responses/{id}",
            get(responses::get)
                .delete(responses::delete)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/responses/input_tokens",
            post(responses::input_tokens).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/responses/{id}/cancel",
            post(responses::cancel).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/files",
            post(files::upload)
                .layer(axum::extract::DefaultBodyLimit::disable())
                .get(files::list)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/files/{id}",
            get(files::get)
                .delete(files::delete)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/files/{id}/content",
            get(files::content).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores",
            post(vector_stores::create)
                .get(vector_stores::list)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}",
            get(vector_stores::get)
                .post(vector_stores::modify)
                .delete(vector_stores::delete)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/search",
            post(vector_stores::search).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/files",
            post(vector_stores::add_file)
                .get(vector_stores::list_files)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/files/{file_id}",
            get(vector_stores::get_file)
                .post(vector_stores::update_file)
                .delete(vector_stores::delete_file)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/files/{file_id}/content",
            get(vector_stores::file_content).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/file_batches",
            post(vector_stores::create_batch).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/file_batches/{batch_id}",
            get(vector_stores::get_batch).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/file_batches/{batch_id}/cancel",
            post(vector_stores::cancel_batch).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/vector_stores/{id}/file_batches/{batch_id}/files",
            get(vector_stores::list_batch_files).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/conversations",
            post(responses::create_conversation).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/conversations/{id}",
            get(responses::get_conversation)
                .post(responses::update_conversation)
                .delete(responses::delete_conversation)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/conversations/{id}/items",
            get(responses::list_items)
                .post(responses::add_items)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/conversations/{id}/items/{item_id}",
            get(responses::get_item)
                .delete(responses::delete_item)
                .fallback(openai::method_not_allowed),
        )
        .route(
            "/sessions/{id}",
            get(route::get_session)
                .delete(route::delete_session)
                .fallback(openai::method_not_allowed),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::api_key,
        ));
    let rest = Router::new()
        .merge(v1)
        .route("/health", get(health::health))
        .route("/readiness", get(health::readiness))
        .route("/ready", get(health::readiness))
        .route("/liveness", get(health::liveness))
        .route("/live", get(health::liveness))
        .fallback(openai::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layers::request_id,
        ));
    let mut app = generation.merge(rest);
    let origins = &state.cfg.cors_allowed_origins;
    if !origins.is_empty() {
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        // Headers are mirrored rather than `*`: a browser never lets `*` cover
        // `Authorization`. Credentials (cookies) stay off: keys travel in a header.
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods(Any)
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers(EXPOSED.map(HeaderName::from_static)),
        );
    }
    app.with_state(state)
}

/// Response headers a browser script may read across origins.
const EXPOSED: [&str; 9] = [
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-switchyard-files-in-progress",
];

/// `GET /metrics` on the metrics listener.
pub fn metrics(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn render_metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(&st.live_state()),
    )
}
