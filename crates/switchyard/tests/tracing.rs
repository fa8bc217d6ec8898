//! OpenTelemetry tracing (docs/tracing.md), through the real binary: with
//! `--otlp-traces-endpoint`, the gateway's spans reach an OTLP/HTTP receiver in this
//! process (protobuf, decoded with `opentelemetry-proto`), inside the trace the client
//! started, with the request span as every phase's parent, and the engine receives the
//! attempt span as its `traceparent`. Without the flag nothing is added upstream. The
//! worker is a capture proxy in front of a simulator that records what the engine is
//! sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;
use switchyard_testkit::{Child, Http, MODEL, eventually, sims, spawn_listening};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP trace receiver: every span posted to `/v1/traces`.
async fn otlp_receiver() -> (String, Received) {
    let spans: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |State(spans): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    assert_eq!(
                        headers["content-type"], "application/x-protobuf",
                        "OTLP/HTTP protobuf"
                    );
                    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
                    let mut all = spans.lock().unwrap();
                    for rs in req.resource_spans {
                        for ss in rs.scope_spans {
                            all.extend(ss.spans);
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                },
            ),
        )
        .with_state(spans.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

/// What the engine was sent on its generation route.
type Captured = Arc<Mutex<Vec<HeaderMap>>>;

/// A worker that records the headers of every chat request and passes everything on to
/// the simulator at `engine`; with `fail`, it answers every chat request 503 itself
/// (healthy otherwise).
async fn capture_proxy(engine: String, fail: bool) -> (String, Captured) {
    let captured: Captured = Arc::default();
    let client = reqwest::Client::new();
    let state = (engine, client, captured.clone());
    let app = axum::Router::new()
        .fallback(
            move |State((engine, client, captured)): State<(String, reqwest::Client, Captured)>,
                  req: Request| async move {
                let (parts, body) = req.into_parts();
                if parts.uri.path() == "/v1/chat/completions" {
                    captured.lock().unwrap().push(parts.headers.clone());
                    if fail {
                        let err =
                            json!({"error": {"message": "overloaded", "type": "server_error"}});
                        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(err)).into_response();
                    }
                }
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let url = format!("{engine}{}", parts.uri);
                let mut up = client.request(parts.method, url).body(body);
                for (k, v) in &parts.headers {
                    if !matches!(k.as_str(), "host" | "content-length" | "connection") {
                        up = up.header(k, v);
                    }
                }
                let resp = up.send().await.unwrap();
                let status = resp.status();
                let ct = resp.headers().get("content-type").cloned();
                let bytes = resp.bytes().await.unwrap();
                let mut out: Response = (status, bytes).into_response();
                if let Some(ct) = ct {
                    out.headers_mut().insert("content-type", ct);
                }
                out
            },
        )
        .with_state(state);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), captured)
}

/// The gateway binary in front of `worker`, with `extra` flags and environment, once it
/// listens (on free ports, picked again if another test took one first).
async fn gateway(worker: &str, extra: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("switchyard-tracing-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, ports) = spawn_listening(3, &dir.join("err"), |ports| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["serve", "--database-url", "sqlite::memory:"])
            .args(["--worker-urls", worker, "--log-level", "warn"])
            .args(["--port", &ports[0].to_string()])
            .args(["--admin-port", &ports[1].to_string()])
            .args(["--prometheus-port", &ports[2].to_string()])
            .args(["--health-check-interval-secs", "1"])
            .args(extra)
            .env_remove("SWITCHYARD_OTLP_TRACES_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.join("log")).unwrap());
        cmd
    })
    .await;
    (child, format!("http://127.0.0.1:{}", ports[0]))
}

/// The spans an OTLP receiver got.
type Received = Arc<Mutex<Vec<Span>>>;

/// The gateway in front of `worker` with `extra` flags, exporting its spans to a receiver
/// of this process with a batch delay of ten minutes: the spans can only arrive through
/// the flush at graceful shutdown ([`terminate`]). The flag's URL has no `/v1/traces`:
/// the gateway adds it.
async fn traced_gateway(worker: &str, extra: &[&str]) -> (Child, String, Received) {
    let (otlp, spans) = otlp_receiver().await;
    let mut args = vec!["--otlp-traces-endpoint", &otlp];
    args.extend_from_slice(extra);
    let (child, url) = gateway(worker, &args, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]).await;
    (child, url, spans)
}

/// The received spans of trace `trace` (hex).
fn in_trace(spans: &Received, trace: &str) -> Vec<Span> {
    let all = spans.lock().unwrap();
    all.iter()
        .filter(|s| hex(&s.trace_id) == trace)
        .cloned()
        .collect()
}

/// Sends a streamed chat request once the gateway routes to its worker, with `headers`.
async fn chat_through(http: &Http, url: &str, headers: &[(&str, &str)]) {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4, "stream": true});
    eventually("the gateway serves the model", || async {
        match http.0.get(format!("{url}/v1/models")).send().await {
            Ok(r) => r.text().await.is_ok_and(|t| t.contains(MODEL)),
            Err(_) => false,
        }
    })
    .await;
    let mut req = http
        .0
        .post(format!("{url}/v1/chat/completions"))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("the gateway answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "the whole stream: {text}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        AnyValue::IntValue(i) => Some(*i),
        AnyValue::StringValue(v) => v.parse().ok(),
        _ => None,
    }
}

fn str_attr(s: &Span, key: &str) -> Option<String> {
    match attr(s, key)? {
        AnyValue::StringValue(v) => Some(v.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// SIGTERM, then waits (bounded) for the process to exit: the graceful shutdown.
async fn terminate(mut child: Child) {
    let pid = child.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // Awaits the exit itself (on a blocking thread: this runtime must keep serving the
    // OTLP receiver the gateway flushes to); 60 s bounds a hang, it is not a window.
    let exit = tokio::task::spawn_blocking(move || child.0.wait().map(|s| s.success()));
    let graceful = tokio::time::timeout(Duration::from_secs(60), exit)
        .await
        .expect("the gateway did not exit within 60 s of SIGTERM")
        .unwrap()
        .unwrap();
    assert!(graceful, "the gateway exits 0 after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_clients_trace_and_the_engine_joins_the_attempt() {
    let engines = sims(1).await;
    let (worker, captured) = capture_proxy(engines.url(), false).await;
    let (child, url, spans) = traced_gateway(&worker, &[]).await;
    let http = Http::new();
    let incoming = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    chat_through(
        &http,
        &url,
        &[("traceparent", &incoming), ("tracestate", "vendor=abc")],
    )
    .await;
    drop(http);
    terminate(child).await;

    // The gateway's other requests (the readiness polls of `/v1/models`) are traces of
    // their own; the chat request's spans are those in the client's trace.
    let spans = in_trace(&spans, TRACE_ID);
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let one = |name: &str| -> &Span {
        let found = named(name);
        assert_eq!(found.len(), 1, "one `{name}` span in {:?}", names(&spans));
        found[0]
    };
    let request = one("request");
    assert_eq!(hex(&request.trace_id), TRACE_ID, "the client's trace");
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(
        str_attr(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        str_attr(request, "http.route").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(int_attr(request, "http.response.status_code"), Some(200));
    for phase in [
        "admit",
        "select_model",
        "select_worker",
        "attempt",
        "stream",
    ] {
        let s = one(phase);
        assert_eq!(
            hex(&s.trace_id),
            TRACE_ID,
            "`{phase}` in the client's trace"
        );
        assert_eq!(
            s.parent_span_id, request.span_id,
            "`{phase}` is a child of the request span"
        );
    }
    let attempt = one("attempt");
    assert_eq!(int_attr(attempt, "attempt"), Some(1));
    assert_eq!(
        str_attr(attempt, "worker.url").as_deref(),
        Some(worker.as_str())
    );
    assert_eq!(int_attr(attempt, "http.response.status_code"), Some(200));
    assert_eq!(
        str_attr(one("select_model"), "model").as_deref(),
        Some(MODEL)
    );
    let stream = one("stream");
    assert!(
        stream.end_time_unix_nano <= request.end_time_unix_nano,
        "the request span lasts until the last byte"
    );

    // The engine was sent the attempt span as its parent, in the same trace, with the
    // client's tracestate.
    let sent = captured.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let traceparent = sent[0]["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{TRACE_ID}-{}-01", hex(&attempt.span_id))
    );
    assert_eq!(sent[0]["tracestate"], "vendor=abc");
}

/// A retry: the failed attempt and the one after it are two `attempt` spans of the same
/// request, numbered, each with its worker and status (the failed one an error), and
/// the engine that answered was sent the second as its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_a_second_attempt_span_after_the_failed_one() {
    let engines = sims(1).await;
    let (bad, bad_seen) = capture_proxy(engines.url(), true).await;
    let (good, good_seen) = capture_proxy(engines.url(), false).await;
    let workers = format!("{bad},{good}");
    let flags = ["--policy", "round_robin", "--retry-initial-backoff-ms", "1"];
    let (child, url, spans) = traced_gateway(&workers, &flags).await;
    let http = Http::new();
    // Round robin sends one of any two requests to the failing worker first; each
    // request is its own trace.
    let mut traces = Vec::new();
    for i in 1..=6u32 {
        let trace = format!("{i:032x}");
        let traceparent = format!("00-{trace}-{CLIENT_SPAN}-01");
        chat_through(&http, &url, &[("traceparent", &traceparent)]).await;
        traces.push(trace);
        if !bad_seen.lock().unwrap().is_empty() {
            break;
        }
    }
    drop(http);
    terminate(child).await;

    let failed_once = bad_seen.lock().unwrap()[0]["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let trace = traces
        .iter()
        .find(|t| failed_once.contains(t.as_str()))
        .expect("the failed attempt carried its request's trace");
    let spans = in_trace(&spans, trace);
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(int_attr(request, "http.response.status_code"), Some(200));
    let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.name == "attempt").collect();
    attempts.sort_by_key(|s| int_attr(s, "attempt"));
    assert_eq!(
        attempts.len(),
        2,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let selections = spans.iter().filter(|s| s.name == "select_worker").count();
    assert_eq!(selections, 2, "one worker selection per attempt");
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(int_attr(first, "attempt"), Some(1));
    assert_eq!(str_attr(first, "worker.url").as_deref(), Some(bad.as_str()));
    assert_eq!(int_attr(first, "http.response.status_code"), Some(503));
    assert_eq!(
        first.status.as_ref().map(|s| s.code),
        Some(2),
        "the failed attempt's status is an error"
    );
    assert_eq!(int_attr(second, "attempt"), Some(2));
    assert_eq!(
        str_attr(second, "worker.url").as_deref(),
        Some(good.as_str())
    );
    assert_eq!(int_attr(second, "http.response.status_code"), Some(200));
    assert_ne!(second.status.as_ref().map(|s| s.code), Some(2));
    for a in [first, second] {
        assert_eq!(
            a.parent_span_id, request.span_id,
            "attempts are the request's children"
        );
    }
    assert!(first.end_time_unix_nano <= second.start_time_unix_nano);
    // Each engine was sent its own attempt as the parent.
    assert_eq!(
        failed_once,
        format!("00-{trace}-{}-01", hex(&first.span_id))
    );
    let answered = good_seen.lock().unwrap().clone();
    let sent = answered
        .iter()
        .map(|h| h["traceparent"].to_str().unwrap())
        .find(|tp| tp.contains(trace.as_str()))
        .unwrap();
    assert_eq!(sent, format!("00-{trace}-{}-01", hex(&second.span_id)));
}

/// A handler that calls the pipeline in process (the Responses API): its engine call's
/// spans are children of the handler's `request` span, in the client's trace, and the
/// engine joins that trace too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_calls_are_children_of_the_handlers_request_span() {
    let engines = sims(1).await;
    let (worker, captured) = capture_proxy(engines.url(), false).await;
    let (child, url, spans) = traced_gateway(&worker, &[]).await;
    let http = Http::new();
    chat_through(&http, &url, &[]).await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let resp = http
        .0
        .post(format!("{url}/v1/responses"))
        .header("traceparent", &traceparent)
        .json(&json!({"model": MODEL, "input": "hello", "max_output_tokens": 16}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"][0]["status"], "completed", "{body}");
    drop(http);
    terminate(child).await;

    let spans = in_trace(&spans, TRACE_ID);
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("the handler's request span");
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    assert_eq!(
        str_attr(request, "url.path").as_deref(),
        Some("/v1/responses")
    );
    assert_eq!(int_attr(request, "http.response.status_code"), Some(200));
    for phase in ["select_model", "select_worker", "attempt"] {
        let s = spans.iter().find(|s| s.name == phase).unwrap_or_else(|| {
            panic!(
                "`{phase}` in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
        assert_eq!(
            s.parent_span_id, request.span_id,
            "`{phase}` is a child of the handler's request span"
        );
    }
    let attempt = spans.iter().find(|s| s.name == "attempt").unwrap();
    let sent = captured.lock().unwrap().clone();
    let upstream = sent
        .iter()
        .filter_map(|h| h.get("traceparent")?.to_str().ok())
        .find(|tp| tp.contains(TRACE_ID))
        .expect("the engine was sent the client's trace");
    assert_eq!(
        upstream,
        format!("00-{TRACE_ID}-{}-01", hex(&attempt.span_id))
    );
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_no_trace_context_is_added_upstream() {
    let engines = sims(1).await;
    let (worker, captured) = capture_proxy(engines.url(), false).await;
    let (_child, url) = gateway(&worker, &[], &[]).await;
    let http = Http::new();
    chat_through(&http, &url, &[]).await;
    // A client's own trace context passes through untouched.
    let incoming = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    chat_through(&http, &url, &[("traceparent", &incoming)]).await;
    let sent = captured.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert!(
        !sent[0].contains_key("traceparent") && !sent[0].contains_key("tracestate"),
        "no trace context of the gateway's own: {:?}",
        sent[0]
    );
    assert_eq!(sent[1]["traceparent"], incoming.as_str());
}

#[test]
fn a_bad_endpoint_is_a_startup_error() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve")
            .args(args)
            .env_remove("SWITCHYARD_OTLP_TRACES_ENDPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--otlp-traces-endpoint", "collector:4318"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--otlp-traces-endpoint"), "{err}");
    // The environment variable and the config file key are checked the same way.
    let (code, err) = run(
        &[],
        &[("SWITCHYARD_OTLP_TRACES_ENDPOINT", "grpc://collector")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--otlp-traces-endpoint") && err.contains("http"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("switchyard-otlp-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, "otlp_traces_endpoint: \"http://\"\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--otlp-traces-endpoint"), "{err}");
}
