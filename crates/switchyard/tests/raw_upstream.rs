//! Byte-level behaviour checked against a scripted upstream: streams pass through byte
//! for byte and unbuffered, a client disconnect cancels the upstream request, headers
//! and request ids are forwarded as documented, and the inter-token latency counts
//! tokens however the stream is cut into frames.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::json;
use switchyard::PolicyKind;
use switchyard_testkit::*;
use tokio::sync::{Notify, mpsc};

/// What the scripted upstream saw and how it behaves.
#[derive(Default)]
struct Script {
    headers: Mutex<Vec<HeaderMap>>,
    bodies: Mutex<Vec<Bytes>>,
    /// Released to let the stream continue past its first chunk.
    gate: Notify,
    /// Signalled when a stream body is dropped before it ended.
    dropped: Mutex<Option<mpsc::UnboundedSender<()>>>,
}

const CHUNKS: [&[u8]; 4] = [
    b"data: {\"a\":1}\n\n",
    b"data: {\"b\":\"\xc3\xa9 \\u00e9 odd\tbytes\"}\n\n",
    b": comment line\n\ndata: {\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
    b"data: [DONE]\n\n",
];

struct DropSignal(Option<mpsc::UnboundedSender<()>>, bool);
impl DropSignal {
    /// The stream ended normally: no signal.
    fn disarm(&mut self) {
        self.1 = true;
    }
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        if !self.1
            && let Some(tx) = self.0.take()
        {
            let _ = tx.send(());
        }
    }
}

async fn stream(
    State(s): State<Arc<Script>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    s.headers.lock().unwrap().push(headers);
    s.bodies.lock().unwrap().push(body);
    let script = s.clone();
    let signal = DropSignal(s.dropped.lock().unwrap().clone(), false);
    let body = futures_util::stream::unfold(
        (0usize, script, signal),
        |(i, script, mut signal)| async move {
            if i == CHUNKS.len() {
                signal.disarm();
                return None;
            }
            if i == 1 {
                script.gate.notified().await;
            }
            Some((
                Ok::<_, Infallible>(Bytes::from_static(CHUNKS[i])),
                (i + 1, script, signal),
            ))
        },
    );
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-upstream", "yes")
        .body(Body::from_stream(body))
        .unwrap()
}

async fn start_upstream(script: Arc<Script>) -> SocketAddr {
    let app = Router::new()
        .route("/health", get(|| async { "" }))
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "raw"}]})) }),
        )
        .route("/v1/chat/completions", post(stream))
        .route("/v1/completions", post(odd_frames))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Three tokens (a, b, c) in five frames: an empty first event, two events in one
/// frame, one event cut in two, and `[DONE]`.
const ODD_FRAMES: [&[u8]; 5] = [
    b"data: {\"choices\":[{\"text\":\"\"}]}\n\n",
    b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\n",
    b"data: {\"choi",
    b"ces\":[{\"text\":\"c\"}]}\n\n",
    b"data: [DONE]\n\n",
];

async fn odd_frames() -> axum::response::Response {
    let frames = futures_util::stream::iter(
        ODD_FRAMES
            .iter()
            .map(|f| Ok::<_, Infallible>(Bytes::from_static(f))),
    );
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(frames))
        .unwrap()
}

fn body() -> serde_json::Value {
    json!({"model": "raw", "messages": [{"role": "user", "content": "x"}], "stream": true})
}

#[tokio::test]
async fn stream_passes_through_byte_for_byte_without_holding_the_first_chunk() {
    let http = Http::new();
    let script = Arc::new(Script::default());
    let addr = start_upstream(script.clone()).await;
    let gw = gateway(config(
        vec![format!("http://{addr}")],
        PolicyKind::RoundRobin,
    ))
    .await;
    let mut resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The upstream holds everything after its first chunk until released: the first
    // chunk must reach the client on its own.
    // (A hang guard: a held-back chunk would never arrive.)
    let first = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
        .await
        .expect("first chunk not held back")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], CHUNKS[0]);
    script.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, CHUNKS[1..].concat());
    // Usage in the stream's tail is counted.
    let m = metrics_url(&gw);
    eventually("tokens metric", || async {
        http.metric(&m, "switchyard_tokens_total", &[("kind", "prompt")])
            .await
            == 7.0
    })
    .await;
    assert_eq!(
        http.metric(&m, "switchyard_time_to_first_token_seconds_count", &[])
            .await,
        1.0
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let http = Http::new();
    let script = Arc::new(Script::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    *script.dropped.lock().unwrap() = Some(tx);
    let addr = start_upstream(script.clone()).await;
    let gw = gateway(config(
        vec![format!("http://{addr}")],
        PolicyKind::RoundRobin,
    ))
    .await;
    let mut resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], CHUNKS[0]);
    drop(resp);
    // (A hang guard: an upstream request left open would never signal.)
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("upstream stream dropped after client left")
        .unwrap();
    let worker = gw.state.registry.all()[0].clone();
    eventually("in-flight slot released", || async {
        worker.in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn request_ids_and_auth_headers_are_forwarded_as_documented() {
    let http = Http::new();
    let script = Arc::new(Script::default());
    let addr = start_upstream(script.clone()).await;
    let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::RoundRobin);
    cfg.api_key = Some("client-key".into());
    cfg.worker_api_key = Some("engine-key".into());
    let gw = gateway(cfg).await;
    script.gate.notify_one();
    let resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth("client-key")
        .header("x-correlation-id", "corr-123")
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "corr-123");
    resp.bytes().await.unwrap();
    let seen = script.headers.lock().unwrap()[0].clone();
    assert_eq!(seen["x-request-id"], "corr-123");
    assert_eq!(
        seen["authorization"], "Bearer engine-key",
        "the client's key is not passed on"
    );
    // Without any id header, one is generated and echoed.
    script.gate.notify_one();
    let resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .bearer_auth("client-key")
        .json(&body())
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.starts_with("req-") && id.len() > 10, "{id}");
}

#[tokio::test]
async fn the_clients_authorization_reaches_engines_only_when_asked() {
    let http = Http::new();
    for forward in [false, true] {
        let script = Arc::new(Script::default());
        let addr = start_upstream(script.clone()).await;
        let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::RoundRobin);
        cfg.forward_client_auth = forward;
        let gw = gateway(cfg).await;
        script.gate.notify_one();
        let resp = http
            .0
            .post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth("a-client-secret")
            .json(&body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        let seen = script.headers.lock().unwrap()[0].clone();
        let got = seen
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        if forward {
            assert_eq!(got.as_deref(), Some("Bearer a-client-secret"));
        } else {
            assert_eq!(got, None, "forwarded without --forward-client-auth");
        }
    }
}

#[tokio::test]
async fn inter_token_latency_counts_tokens_not_frames() {
    let http = Http::new();
    let addr = start_upstream(Arc::new(Script::default())).await;
    let gw = gateway(config(
        vec![format!("http://{addr}")],
        PolicyKind::RoundRobin,
    ))
    .await;
    let body = json!({"model": "raw", "prompt": "x", "stream": true});
    let (status, events) = http.sse(&gw.url(), "/v1/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 5, "{events:?}");
    let m = metrics_url(&gw);
    eventually("the stream to be settled", || async {
        http.metric(&m, "switchyard_requests_total", &[("status", "200")])
            .await
            == 1.0
    })
    .await;
    assert_eq!(
        http.metric(&m, "switchyard_inter_token_latency_seconds_count", &[])
            .await,
        2.0,
        "three tokens, two gaps"
    );
}

#[tokio::test]
async fn data_parallel_rank_goes_in_header_and_optionally_body() {
    let http = Http::new();
    let script = Arc::new(Script::default());
    let addr = start_upstream(script.clone()).await;
    let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::RoundRobin);
    cfg.dp_size = 2;
    cfg.dp_rank_in_body = true;
    let gw = gateway(cfg).await;
    for _ in 0..2 {
        script.gate.notify_one();
        let resp = http
            .0
            .post(format!("{}/v1/chat/completions", gw.url()))
            .json(&body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let headers = script.headers.lock().unwrap().clone();
    let bodies = script.bodies.lock().unwrap().clone();
    let mut ranks = Vec::new();
    for (h, b) in headers.iter().zip(&bodies) {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        let in_body = v["data_parallel_rank"].as_u64().unwrap();
        assert_eq!(
            h["x-data-parallel-rank"].to_str().unwrap(),
            in_body.to_string()
        );
        assert_eq!(v["model"], "raw", "the rest of the body is kept");
        ranks.push(in_body);
    }
    ranks.sort();
    assert_eq!(ranks, [0, 1]);
}

#[tokio::test]
async fn names_only_an_any_model_worker_serves_share_one_label() {
    // An engine without a model list (its /v1/models fails) serves any model name.
    let app = Router::new().route("/health", get(|| async { "" })).route(
        "/v1/completions",
        post(|| async { axum::Json(json!({"choices": [{"text": "ok"}]})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = Http::new();
    let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::CacheAware);
    cfg.models.insert("configured".into(), Default::default());
    let gw = gateway(cfg).await;
    for i in 0..5 {
        let body = json!({"model": format!("made-up-{i}"), "prompt": "x"});
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    let body = json!({"model": "configured", "prompt": "x"});
    assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    let m = metrics_url(&gw);
    eventually("the requests to be settled", || async {
        http.metric(&m, "switchyard_requests_total", &[]).await == 6.0
    })
    .await;
    assert_eq!(
        http.metric(&m, "switchyard_requests_total", &[("model", "*")])
            .await,
        5.0,
        "client-chosen names share one label"
    );
    assert_eq!(
        http.metric(&m, "switchyard_requests_total", &[("model", "made-up-0")])
            .await,
        0.0
    );
    assert_eq!(
        http.metric(&m, "switchyard_requests_total", &[("model", "configured")])
            .await,
        1.0,
        "a model the config names keeps its own"
    );
}

#[tokio::test]
async fn workflow_metadata_is_removed_before_the_engine_unless_asked_to_forward() {
    let http = Http::new();
    for forward in [false, true] {
        let script = Arc::new(Script::default());
        let addr = start_upstream(script.clone()).await;
        let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::WorkflowAware);
        cfg.forward_workflow_metadata = forward;
        cfg.forward_priority = forward;
        let gw = gateway(cfg).await;
        let mut b = body();
        b["workflow_metadata"] =
            json!({"workflow_id": "wf-1", "agent_id": "planner", "workflow_priority": 2});
        script.gate.notify_one();
        let resp = http
            .0
            .post(format!("{}/v1/chat/completions", gw.url()))
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        let sent: serde_json::Value =
            serde_json::from_slice(&script.bodies.lock().unwrap()[0]).unwrap();
        assert_eq!(sent.get("workflow_metadata").is_some(), forward, "{sent}");
        // vLLM's priority: lower is sooner, so the workflow's 2 is sent as -2.
        assert_eq!(
            sent.get("priority"),
            forward.then(|| json!(-2)).as_ref(),
            "{sent}"
        );
        assert_eq!(sent["model"], "raw");
        assert_eq!(
            sent["messages"], b["messages"],
            "the rest of the body is kept"
        );
        gw.shutdown();
    }
}
