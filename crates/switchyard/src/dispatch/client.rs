//! The pooled upstream HTTP client (hyper, HTTP/1.1 keep-alive).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// One client shared by dispatch and the probes; connections are pooled per engine.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

pub fn build() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(4096)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

thread_local! {
    static LOCAL: UpstreamClient = build();
}

/// This thread's client. Each data-plane thread keeps its own pool, so a request and
/// its upstream connection are served by the same event loop.
pub fn local() -> UpstreamClient {
    LOCAL.with(Clone::clone)
}

/// POST with an empty body and a timeout; the status.
pub async fn post_empty(
    client: &UpstreamClient,
    uri: Uri,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let req = Request::post(uri)
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// GET with a timeout, reading the whole (small) body.
pub async fn get(
    client: &UpstreamClient,
    uri: Uri,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let req = Request::get(uri)
        .body(Full::default())
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}
