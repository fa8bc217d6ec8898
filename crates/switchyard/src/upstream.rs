//! The upstream HTTP client (hyper, HTTP/1.1 keep-alive) and engine base URLs: what
//! every layer uses to talk to an engine. Probes read bodies through a size cap, so an
//! engine that answers with an endless body cannot exhaust the gateway's memory.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// One client type shared by dispatch and the probes; connections are pooled per engine.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// Largest body a probe reads (health, `/v1/models`, `/metrics`, cache reset).
pub const PROBE_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Why talking to an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("missing scheme (use http://host:port)")]
    NoScheme,
    #[error("unsupported scheme `{0}`: engines are reached over http://")]
    Scheme(String),
    #[error("missing host")]
    NoHost,
    #[error("a worker URL cannot have a query")]
    Query,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Request(String),
    #[error("the response body is larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// An engine's base URL, checked: `http://host:port[/base]`, no query or fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix without a trailing `/` (usually empty).
    pub base_path: String,
}

impl EngineUrl {
    pub fn parse(url: &str) -> Result<EngineUrl, UpstreamError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::NotAUrl(e.to_string()))?;
        let scheme = uri.scheme().cloned().ok_or(UpstreamError::NoScheme)?;
        if scheme != Scheme::HTTP {
            return Err(UpstreamError::Scheme(scheme.to_string()));
        }
        let authority = uri.authority().cloned().ok_or(UpstreamError::NoHost)?;
        if authority.host().is_empty() {
            return Err(UpstreamError::NoHost);
        }
        if uri.query().is_some() {
            return Err(UpstreamError::Query);
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(EngineUrl {
            scheme,
            authority,
            base_path,
        })
    }

    /// The canonical text form, `scheme://authority/base`.
    pub fn as_string(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }

    /// Host of the URL (IPv6 without brackets).
    pub fn host(&self) -> &str {
        self.authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// Port of the URL (80 when absent).
    pub fn port(&self) -> u16 {
        self.authority.port_u16().unwrap_or(80)
    }

    /// The same URL connecting to `addr` instead of resolving the host again, and the
    /// `Host` header that still names the original host (no DNS rebinding).
    pub fn pinned(&self, addr: SocketAddr) -> (EngineUrl, HeaderValue) {
        let host = HeaderValue::from_str(self.authority.as_str())
            .expect("an authority is a valid header value");
        let authority = Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        (
            EngineUrl {
                scheme: self.scheme.clone(),
                authority,
                base_path: self.base_path.clone(),
            },
            host,
        )
    }

    /// The URI for `path_and_query` (which starts with `/`).
    pub fn uri(&self, path_and_query: &str) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.base_path, path_and_query))
            .build()
            .expect("validated URL plus an absolute path")
    }
}

/// A new client with its own connection pool.
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

/// Sends `req` and reads the whole response body, at most `limit` bytes, within `timeout`.
pub async fn fetch(
    client: &UpstreamClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), UpstreamError> {
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Request(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    UpstreamError::BodyTooLarge(limit)
                } else {
                    UpstreamError::Request(e.to_string())
                }
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// A GET request for `uri`, with `host` as its `Host` header when given.
pub fn get_request(uri: Uri, host: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    with_host(Request::get(uri), host)
}

/// A POST request with an empty body.
pub fn post_empty_request(uri: Uri, host: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    with_host(Request::post(uri), host)
}

fn with_host(mut b: http::request::Builder, host: Option<&HeaderValue>) -> Request<Full<Bytes>> {
    if let Some(h) = host {
        b = b.header(http::header::HOST, h.clone());
    }
    b.body(Full::default())
        .expect("a request from a valid URI and header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_urls_are_validated() {
        assert!(EngineUrl::parse("http://127.0.0.1:8000").is_ok());
        assert_eq!(
            EngineUrl::parse("http://h:1/base/").unwrap().base_path,
            "/base"
        );
        for bad in [
            "127.0.0.1:8000",
            "ftp://h:1",
            "https://h:1",
            "http://h:1/?x=1",
            "not a url",
            "",
        ] {
            assert!(EngineUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pinned_url_connects_to_the_address_and_keeps_the_host() {
        let u = EngineUrl::parse("http://engine.local:8000/v").unwrap();
        let (p, host) = u.pinned("10.0.0.7:8000".parse().unwrap());
        assert_eq!(
            p.uri("/health").to_string(),
            "http://10.0.0.7:8000/v/health"
        );
        assert_eq!(host, "engine.local:8000");
    }
}
