//! OpenTelemetry tracing (docs/tracing.md): the gateway's spans, exported over
//! OTLP/HTTP (protobuf) to `--otlp-traces-endpoint`, and W3C trace context read from
//! clients and written to engines.
//!
//! The spans are ordinary `tracing` spans with the target [`TARGET`]. Tracing is on
//! once [`install`] has run (`logging::init` calls it for `--otlp-traces-endpoint`),
//! and [`enabled`] says so with one relaxed atomic load. Off, the data plane builds no
//! span and wraps no future: [`span`] returns `Span::none()` without touching its call
//! site, and `traced!` awaits the phase's own future, so a request runs the same code
//! as before tracing existed. (The log filter also turns the target off, so a span
//! made by other means is disabled too; no header is read or written for a disabled
//! span.) On, a batch span processor exports the spans off the data plane, and
//! [`Telemetry::shutdown`] flushes what is queued when the process ends.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span exported to OpenTelemetry (and of nothing else).
pub const TARGET: &str = "switchyard::trace";

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether spans are exported: set once, by [`install`].
static ON: AtomicBool = AtomicBool::new(false);

/// Whether tracing is on (an exporter is installed).
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The span `make` builds when tracing is on; `Span::none()` otherwise, built without
/// evaluating anything of `make`.
#[inline]
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// The current span, as the parent of spans built for an in-process request
/// (`Span::none()` with tracing off, without looking it up).
#[inline]
pub fn current() -> tracing::Span {
    if enabled() {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    }
}

/// `$fut.await` inside `$span`. A disabled span (tracing off) wraps nothing: the future
/// is awaited where it is built, exactly as without tracing (a wrapper would also move
/// it, and the pipeline's futures are kilobytes).
macro_rules! traced {
    ($span:expr, $fut:expr) => {
        if $span.is_disabled() {
            $fut.await
        } else {
            ::tracing::Instrument::instrument($fut, $span.clone()).await
        }
    };
}
pub(crate) use traced;

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL spans are posted to: `endpoint` as given, or with `/v1/traces` when it has
/// no path (`http://collector:4318` is the collector, as OTLP/HTTP's base URL).
pub fn traces_url(endpoint: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "use an http:// or https:// URL (OTLP over HTTP), not `{}:`",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/v1/traces");
    }
    Ok(url)
}

/// The tracer provider while tracing is on; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every span still queued and stops the exporter. Blocks (at most about
    /// the export timeout): call it off the async runtime, when the gateway has stopped.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("switchyard: flushing the traces at shutdown: {e}");
        }
    }
}

/// The OpenTelemetry layer for `logging::init`, exporting to `endpoint` with a batch
/// span processor (its queue and delays follow the `OTEL_BSP_*` variables).
pub fn install<S>(
    endpoint: &str,
) -> anyhow::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    Telemetry,
)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let url = traces_url(endpoint).map_err(|e| anyhow::anyhow!("--otlp-traces-endpoint: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(Exporter::new()?)
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-traces-endpoint: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("switchyard")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("switchyard");
    ON.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false);
    Ok((layer, Telemetry { provider }))
}

/// The `request` span of one HTTP request (`Span::none()` with tracing off), a child of
/// the client's `traceparent` when it sent one. `route`: the route's pattern, when the
/// caller knows it.
pub fn request_span(
    method: &http::Method,
    path: &str,
    route: Option<&str>,
    request_id: Option<&str>,
    headers: &HeaderMap,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = path,
        http.route = route,
        request_id,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    continue_trace(&span, headers);
    span
}

/// Records the answer's status on a `request` span (an error status for a 5xx).
pub fn record_status(span: &tracing::Span, status: http::StatusCode) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}

/// Makes `span` (just created, not yet entered) a child of the W3C trace context the
/// client sent in `traceparent` / `tracestate`, if any. A disabled span costs nothing.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// Writes `span`'s W3C trace context into an upstream request's headers, replacing
/// the client's: the engine's spans become children of `span`. A disabled span (tracing
/// off) changes nothing: the client's own headers, if any, pass through as they came.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    use opentelemetry::trace::TraceContextExt as _;
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The OTLP exporter's HTTP client: the workspace's reqwest, driven by a runtime of its
/// own on one thread. The SDK's batch processor runs exports on its own thread, where
/// no tokio runtime is; the export is handed to this one, so it never touches a
/// data-plane thread and still works while the gateway's runtime shuts down.
struct Exporter {
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("switchyard OTLP client")
    }
}

impl Exporter {
    fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("switchyard-otlp".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
        Ok(Exporter { client, rt: handle })
    }
}

#[async_trait::async_trait]
impl HttpClient for Exporter {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.rt.spawn(async move {
            let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
            let resp = client.execute(request).await?;
            let mut out = http::Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                *h = resp.headers().clone();
            }
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(out.body(body))
        });
        let resp = task.await.map_err(|e| Box::new(e) as HttpError)??;
        Ok(resp?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_gets_the_otlp_path_only_when_it_has_none() {
        let url = |s| traces_url(s).map(|u| u.to_string());
        assert_eq!(url("http://c:4318").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(
            url("https://c/otlp/traces").unwrap(),
            "https://c/otlp/traces"
        );
        for bad in ["c:4318", "grpc://c:4317", "http://", "not a url", ""] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }

    /// Tracing off (no exporter installed in this process), even under a subscriber
    /// that would take the trace target: no span is built, not even its fields, no
    /// client context is read, and a phase's future is polled unwrapped.
    #[test]
    fn off_builds_no_span_and_wraps_no_future() {
        assert!(!enabled());
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            assert!(!tracing::info_span!(target: TARGET, "would be on").is_disabled());
            let span = span(|| unreachable!("a span built with tracing off"));
            assert!(span.is_disabled());
            let inside = futures_util::FutureExt::now_or_never(async {
                traced!(span, async { tracing::Span::current().is_none() })
            });
            assert_eq!(inside, Some(true), "no span entered around the phase");
            let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let headers =
                HeaderMap::from_iter([(TRACEPARENT, http::HeaderValue::from_static(traceparent))]);
            let post = http::Method::POST;
            assert!(request_span(&post, "/v1/completions", None, None, &headers).is_disabled());
        });
    }
}
