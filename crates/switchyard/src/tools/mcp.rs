//! The client of remote MCP servers (`mcp` tools of the Responses API; docs/tools.md):
//! the official Rust SDK (`rmcp`) over the streamable HTTP transport, on an HTTP client
//! of the SSRF guard. A server is reached only at a host of `tools.mcp.allowed_hosts`;
//! its addresses are checked as they resolve; redirects stay on its host (the requests
//! carry the client's credentials); answers are capped in size. Each listing or call
//! is one MCP session: initialize, the request, then the session is closed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ErrorCode};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use serde_json::{Map, Value};
use switchyard_stateful::responses::mcp::{McpClient, McpFailure, McpServer, McpToolDef};

use super::guard::Guard;
use crate::config::tools::McpConfig;

/// The gateway's MCP client.
pub struct RemoteMcp {
    guard: Guard,
    http: reqwest::Client,
    max_bytes: usize,
}

/// A failure of the transport, from its causes: the HTTP status when there was one.
fn transport_failure(e: &(dyn std::error::Error + 'static)) -> McpFailure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut text = Vec::new();
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            let code = match h {
                StreamableHttpError::HttpStatus(s) => Some(s.status),
                StreamableHttpError::AuthRequired(_) => Some(401),
                StreamableHttpError::InsufficientScope(_) => Some(403),
                StreamableHttpError::SessionExpired => Some(404),
                StreamableHttpError::Client(r) => r.status().map(|s| s.as_u16()),
                _ => None,
            };
            if let Some(code) = code {
                return McpFailure::Http {
                    code,
                    message: h.to_string(),
                };
            }
        }
        if let Some(r) = c.downcast_ref::<reqwest::Error>() {
            if let Some(s) = r.status() {
                return McpFailure::Http {
                    code: s.as_u16(),
                    message: s.to_string(),
                };
            }
            // Without the URL (a key may sit in it).
            text.push(super::guard::describe_ref(r));
            break;
        }
        text.push(c.to_string());
        cause = c.source();
    }
    McpFailure::Protocol {
        code: ErrorCode::INTERNAL_ERROR.0 as i64,
        message: text.join(": "),
    }
}

fn service_failure(e: ServiceError) -> McpFailure {
    match e {
        ServiceError::McpError(d) => McpFailure::Protocol {
            code: d.code.0 as i64,
            message: d.message.to_string(),
        },
        ServiceError::TransportSend(t) => transport_failure(t.error.as_ref()),
        other => McpFailure::Protocol {
            code: ErrorCode::INTERNAL_ERROR.0 as i64,
            message: other.to_string(),
        },
    }
}

impl RemoteMcp {
    pub fn new(cfg: &McpConfig) -> RemoteMcp {
        let guard = Guard::new(cfg.allowed_hosts.clone(), cfg.allow_private_addresses)
            .same_host_redirects();
        let http = guard.client(Duration::from_secs_f64(cfg.timeout_secs));
        RemoteMcp {
            guard,
            http,
            max_bytes: cfg.max_response_bytes,
        }
    }

    /// An initialized session with the server.
    async fn session(
        guard: Guard,
        http: reqwest::Client,
        max_bytes: usize,
        server: McpServer,
    ) -> Result<RunningService<RoleClient, ()>, McpFailure> {
        let url = url::Url::parse(&server.url).map_err(|e| McpFailure::Protocol {
            code: ErrorCode::INVALID_PARAMS.0 as i64,
            message: format!("not a URL: {e}"),
        })?;
        guard.check(&url).map_err(|why| McpFailure::Protocol {
            code: ErrorCode::INVALID_PARAMS.0 as i64,
            message: why,
        })?;
        let mut headers = HashMap::new();
        let mut auth = None;
        for (k, v) in &server.headers {
            if k.eq_ignore_ascii_case("authorization") {
                // The transport sends it as a bearer token.
                auth = Some(v.strip_prefix("Bearer ").unwrap_or(v).to_string());
                continue;
            }
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) else {
                return Err(McpFailure::Protocol {
                    code: ErrorCode::INVALID_PARAMS.0 as i64,
                    message: format!("the header {k} cannot be sent"),
                });
            };
            headers.insert(name, value);
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(server.url.as_str())
            .custom_headers(headers)
            .max_json_response_size(max_bytes)
            .max_sse_event_size(max_bytes);
        if let Some(a) = auth {
            config = config.auth_header(a);
        }
        let transport = StreamableHttpClientTransport::with_client(http, config);
        ().serve(transport).await.map_err(|e| match e {
            rmcp::service::ClientInitializeError::JsonRpcError(d) => McpFailure::Protocol {
                code: d.code.0 as i64,
                message: d.message.to_string(),
            },
            rmcp::service::ClientInitializeError::TransportError { error, .. } => {
                transport_failure(error.error.as_ref())
            }
            other => transport_failure(&other),
        })
    }

    fn open(
        &self,
        server: McpServer,
    ) -> BoxFuture<'static, Result<RunningService<RoleClient, ()>, McpFailure>> {
        Self::session(
            self.guard.clone(),
            self.http.clone(),
            self.max_bytes,
            server,
        )
        .boxed()
    }
}

impl McpClient for RemoteMcp {
    fn allowed(&self, url: &str) -> Result<(), String> {
        let url = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        self.guard.check(&url)
    }

    fn list_tools(
        &self,
        server: McpServer,
    ) -> BoxFuture<'static, Result<Vec<McpToolDef>, McpFailure>> {
        let session = self.open(server);
        async move {
            let s = session.await?;
            let listed = s.list_all_tools().await.map_err(service_failure);
            let _ = s.cancel().await;
            Ok(listed?
                .into_iter()
                .map(|t| McpToolDef {
                    name: t.name.to_string(),
                    description: t.description.map(|d| d.to_string()),
                    input_schema: Value::Object((*t.input_schema).clone()),
                    annotations: t
                        .annotations
                        .and_then(|a| serde_json::to_value(a).ok())
                        .filter(|a| a.as_object().is_some_and(|o| !o.is_empty())),
                })
                .collect())
        }
        .boxed()
    }

    fn call_tool(
        &self,
        server: McpServer,
        name: String,
        arguments: Map<String, Value>,
    ) -> BoxFuture<'static, Result<String, McpFailure>> {
        let session = self.open(server);
        async move {
            let s = session.await?;
            let mut params = CallToolRequestParams::new(name);
            params.arguments = Some(arguments);
            let called = s.call_tool(params).await.map_err(service_failure);
            let _ = s.cancel().await;
            let result = called?;
            let content = serde_json::to_value(&result.content).unwrap_or(Value::Null);
            if result.is_error == Some(true) {
                return Err(McpFailure::Execution { content });
            }
            let text = switchyard_stateful::responses::mcp::content_text(&content);
            Ok(match (&result.structured_content, text.is_empty()) {
                (Some(v), true) => v.to_string(),
                _ => text,
            })
        }
        .boxed()
    }
}
