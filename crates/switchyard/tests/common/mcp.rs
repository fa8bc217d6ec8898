//! A fake MCP server for the tests (docs/tools.md): the official Rust SDK's
//! streamable HTTP server, in-process on loopback, with two tools — `add` (read-only:
//! the sum of two integers) and `explode` (always reports an error) — counting what
//! it is asked.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

/// What the fake server saw.
#[derive(Clone, Default)]
pub struct Seen {
    /// HTTP requests of any kind.
    pub hits: Arc<AtomicUsize>,
    pub lists: Arc<AtomicUsize>,
    pub calls: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    pub api_keys: Arc<std::sync::Mutex<Vec<String>>>,
    pub redirect_to: Arc<std::sync::Mutex<String>>,
}

#[derive(Clone)]
struct Calc(Seen);

impl ServerHandler for Calc {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.0.lists.fetch_add(1, Ordering::SeqCst);
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]});
        let Value::Object(schema) = schema else {
            unreachable!()
        };
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("add", "Adds two integers", Arc::new(schema))
                .with_annotations(ToolAnnotations::new().read_only(true)),
            Tool::new("explode", "Always fails", Arc::new(serde_json::Map::new())),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        self.0
            .calls
            .lock()
            .unwrap()
            .push((request.name.to_string(), args.clone()));
        match request.name.as_ref() {
            "add" => {
                let sum = args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0);
                Ok(CallToolResult::success(vec![ContentBlock::text(format!("sum: {sum}"))]).into())
            }
            "explode" => {
                Ok(CallToolResult::error(vec![ContentBlock::text("the fuse blew")]).into())
            }
            other => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }
}

async fn count(State(seen): State<Seen>, req: Request<axum::body::Body>, next: Next) -> Response {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(k) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        seen.api_keys.lock().unwrap().push(k.to_string());
    }
    next.run(req).await
}

async fn redirect(State(seen): State<Seen>) -> impl IntoResponse {
    Redirect::temporary(&seen.redirect_to.lock().unwrap().clone())
}

/// Serves the fake MCP server at `/mcp` on `ip` (and `/redirect`); its base URL.
pub async fn serve(ip: &str, seen: Seen) -> String {
    let s = seen.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(Calc(s.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_allowed_hosts([
            "127.0.0.1",
            "127.0.0.2",
            "localhost",
        ]),
    );
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route("/redirect", axum::routing::post(redirect))
        .layer(axum::middleware::from_fn_with_state(seen.clone(), count))
        .with_state(seen);
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}
