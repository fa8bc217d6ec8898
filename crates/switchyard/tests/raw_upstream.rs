//! Byte-level behaviour checked against a scripted upstream: streams pass through byte
//! for byte and unbuffered, a client disconnect cancels the upstream request, headers
//! and request ids are forwarded as documented.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use common::*;
use serde_json::json;
use switchyard::PolicyKind;
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
        if !self.1 {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
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
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn body() -> serde_json::Value {
    json!({"model": "raw", "messages": [{"role": "user", "content": "x"}], "stream": true})
}

#[tokio::test]
async fn stream_passes_through_byte_for_byte_without_holding_the_first_chunk() {
    let script = Arc::new(Script::default());
    let addr = start_upstream(script.clone()).await;
    let gw = gateway(config(
        vec![format!("http://{addr}")],
        PolicyKind::RoundRobin,
    ))
    .await;
    let mut resp = client()
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
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
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
    eventually("tokens metric", || {
        let m = m.clone();
        async move { metric(&m, "switchyard_tokens_total", &[("kind", "prompt")]).await == 7.0 }
    })
    .await;
    assert_eq!(
        metric(&m, "switchyard_time_to_first_token_seconds_count", &[]).await,
        1.0
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let script = Arc::new(Script::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    *script.dropped.lock().unwrap() = Some(tx);
    let addr = start_upstream(script.clone()).await;
    let gw = gateway(config(
        vec![format!("http://{addr}")],
        PolicyKind::RoundRobin,
    ))
    .await;
    let mut resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], CHUNKS[0]);
    drop(resp);
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("upstream stream dropped after client left")
        .unwrap();
    let worker = gw.state.registry.all()[0].clone();
    eventually("in-flight slot released", || {
        let w = worker.clone();
        async move { w.in_flight() == 0 }
    })
    .await;
}

#[tokio::test]
async fn request_ids_and_auth_headers_are_forwarded_as_documented() {
    let script = Arc::new(Script::default());
    let addr = start_upstream(script.clone()).await;
    let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::RoundRobin);
    cfg.api_key = Some("client-key".into());
    cfg.worker_api_key = Some("engine-key".into());
    let gw = gateway(cfg).await;
    script.gate.notify_one();
    let resp = client()
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
    let resp = client()
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
async fn data_parallel_rank_goes_in_header_and_optionally_body() {
    let script = Arc::new(Script::default());
    let addr = start_upstream(script.clone()).await;
    let mut cfg = config(vec![format!("http://{addr}")], PolicyKind::RoundRobin);
    cfg.dp_size = 2;
    cfg.dp_rank_in_body = true;
    let gw = gateway(cfg).await;
    for _ in 0..2 {
        script.gate.notify_one();
        let resp = client()
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
