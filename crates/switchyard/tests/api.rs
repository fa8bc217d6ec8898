//! The data plane's API surface: every bad-input path (status + OpenAI error body, and
//! nothing sent upstream), auth, probes, models, CORS and metrics.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_testkit::*;

/// (path, content type, body, status, error code, param).
type Case = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
    Option<&'static str>,
);

#[tokio::test]
async fn bad_requests_are_answered_by_the_gateway_and_never_reach_an_engine() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.policy = PolicyKind::CacheAware;
        c.max_payload_size = 4096;
    })
    .await;
    let json_ct = Some("application/json");
    let cases: Vec<Case> = vec![
        ("/v1/chat/completions", json_ct, b"{not json".to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", json_ct, b"".to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", json_ct, b"[1,2]".to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", json_ct, br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request", Some("model")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b"}"#.to_vec(), 400, "invalid_request", Some("messages")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[]}"#.to_vec(), 400, "invalid_request", Some("messages")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":"hi"}"#.to_vec(), 400, "invalid_request", Some("messages")),
        ("/v1/chat/completions", json_ct, br#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request", Some("model")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#.to_vec(), 400, "invalid_request", Some("max_tokens")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":3}"#.to_vec(), 400, "invalid_request", Some("stream_options")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":"yes"}}"#.to_vec(), 400, "invalid_request", Some("stream_options.include_usage")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"stream":1}"#.to_vec(), 400, "invalid_request", Some("stream")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#.to_vec(), 400, "invalid_request", Some("temperature")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"\ud800":1}"#.to_vec(), 400, "invalid_request", None),
        ("/v1/completions", json_ct, br#"{"model":"switchyard/sim-8b"}"#.to_vec(), 400, "invalid_request", Some("prompt")),
        ("/v1/completions", json_ct, br#"{"model":"switchyard/sim-8b","prompt":false}"#.to_vec(), 400, "invalid_request", Some("prompt")),
        ("/v1/embeddings", json_ct, br#"{"model":"switchyard/sim-8b"}"#.to_vec(), 400, "invalid_request", Some("input")),
        ("/v1/chat/completions", Some("text/plain"), br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", Some("application/x-www-form-urlencoded"), b"a=b".to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", json_ct, vec![b' '; 5000], 413, "payload_too_large", None),
        ("/v1/chat/completions", json_ct, br#"{"model":"gpt-17","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 404, "model_not_found", Some("model")),
    ];
    let n = cases.len();
    for (path, ct, body, status, code, param) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        let (got, resp) = bed.http.post_raw(&bed.url, path, ct, body).await;
        assert_eq!(got, status, "{path} {shown} -> {resp}");
        assert_error(&resp, code);
        assert_eq!(resp["error"]["param"].as_str(), param, "{shown} -> {resp}");
    }
    // A chunked body over the limit (no Content-Length) is refused too.
    let stream =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let (status, body) = bed
        .http
        .post_raw(
            &bed.url,
            "/v1/chat/completions",
            json_ct,
            reqwest::Body::wrap_stream(stream),
        )
        .await;
    assert_eq!(status, 413);
    assert_error(&body, "payload_too_large");
    // The unknown-model message lists what is available.
    let (_, resp) = bed
        .post("/v1/completions", &json!({"model": "nope", "prompt": "x"}))
        .await;
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("switchyard/sim-8b")
    );
    assert_eq!(bed.per_server(), [0], "no bad request reached the engine");
    assert_eq!(
        bed.metric("switchyard_requests_total", &[("status", "400")])
            .await,
        (n - 2) as f64,
        "every 400 counted once"
    );
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let bed = TestBed::start(1, PolicyKind::RoundRobin).await;
    let (status, body) = bed.http.get(&format!("{}/v1/engines", bed.url)).await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");
}

#[tokio::test]
async fn a_wrong_method_is_405_json_with_a_request_id() {
    let bed = TestBed::start(1, PolicyKind::RoundRobin).await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/chat/completions"),
        (reqwest::Method::PUT, "/v1/completions"),
        (reqwest::Method::GET, "/v1/embeddings"),
        (reqwest::Method::POST, "/v1/models"),
    ] {
        let resp = bed
            .http
            .0
            .request(method.clone(), format!("{}{path}", bed.url))
            .header("x-request-id", "wrong-method-1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["x-request-id"], "wrong-method-1");
        let body: Value = resp.json().await.unwrap();
        assert_error(&body, "method_not_allowed");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(path),
            "{body}"
        );
    }
    assert_eq!(bed.per_server(), [0], "nothing reached the engine");
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let bed = TestBed::with(sims(1).await, |c| c.api_key = Some("sk-test".into())).await;
    let client = &bed.http.0;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sk-test"),
        Some("Basic c2stdGVzdA=="),
    ] {
        let mut req = client
            .post(format!("{}/v1/chat/completions", bed.url))
            .json(&chat("x", 1));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert!(resp.headers().contains_key("x-request-id"), "{auth:?}");
        assert_error(&resp.json().await.unwrap(), "invalid_api_key");
    }
    let (status, body) = bed.http.get(&format!("{}/v1/models", bed.url)).await;
    assert_eq!(status, 401);
    assert_error(&body, "invalid_api_key");
    let ok = client
        .post(format!("{}/v1/chat/completions", bed.url))
        .bearer_auth("sk-test")
        .json(&chat("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Probes stay open for orchestrators.
    assert_eq!(bed.http.get(&format!("{}/health", bed.url)).await.0, 200);
    assert_eq!(bed.per_server(), [1]);
    assert_eq!(
        bed.metric("switchyard_rejected_total", &[("reason", "unauthorized")])
            .await,
        5.0
    );
}

#[tokio::test]
async fn models_and_probes() {
    let bed = TestBed::start(2, PolicyKind::RoundRobin).await;
    let (_, models) = bed.http.get(&format!("{}/v1/models", bed.url)).await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], MODEL);
    let (_, health) = bed.http.get(&format!("{}/health", bed.url)).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["workers"].as_array().unwrap().len(), 2);
    assert_eq!(health["workers"][0]["circuit"], "closed");
    let (status, ready) = bed.http.get(&format!("{}/readiness", bed.url)).await;
    assert_eq!(status, 200);
    assert_eq!(ready["healthy_workers"], 2);
}

#[tokio::test]
async fn the_data_plane_names_workers_by_opaque_ids_only() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.api_key = Some("sk-test".into());
        c.request_timeout_secs = 1;
    })
    .await;
    let engine = bed.sims.url();
    let port = bed.sims.server(0).addr().port().to_string();
    // /health is open (probes), so it shows ids, not where the engines are.
    let (_, health) = bed.http.get(&format!("{}/health", bed.url)).await;
    let text = health.to_string();
    let id = health["workers"][0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with('w') && id.len() == 17, "{health}");
    assert!(
        !text.contains("127.0.0.1") && !text.contains(&port),
        "{health}"
    );
    // The admin listener maps the id to the URL.
    let (_, workers) = bed.http.get(&format!("{}/workers", bed.admin)).await;
    assert_eq!(workers["workers"][0]["id"], id.as_str());
    assert_eq!(workers["workers"][0]["url"], engine.as_str());
    // A timeout's 504 names the worker by its id too.
    bed.sims
        .server(0)
        .set_faults(switchyard_sim::Faults {
            latency_ms: 3000,
            ..Default::default()
        })
        .unwrap();
    let resp = bed
        .http
        .0
        .post(format!("{}/v1/completions", bed.url))
        .bearer_auth("sk-test")
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "upstream_timeout");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&id) && !msg.contains(&port), "{msg}");
}

#[tokio::test]
async fn embeddings_and_completions_are_routed() {
    let bed = TestBed::start(1, PolicyKind::CacheAware).await;
    let (status, body) = bed
        .post(
            "/v1/embeddings",
            &json!({"model": MODEL, "input": ["a", "b"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let (status, body) = bed
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Engine errors for valid-looking requests pass through unchanged.
    let (status, body) = bed
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "n": 3}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "n");
}

#[tokio::test]
async fn cors_headers_when_origins_are_configured() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let resp = bed
        .http
        .0
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", bed.url),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn metrics_reflect_the_traffic() {
    let bed = TestBed::start(2, PolicyKind::RoundRobin).await;
    for i in 0..4 {
        assert_eq!(bed.chat(&format!("q{i}"), 3).await.0, 200);
    }
    let mut body = chat("stream", 5);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, events) = bed.http.sse(&bed.url, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    eventually("the stream to be settled", || async {
        bed.metric(
            "switchyard_requests_total",
            &[("route", "chat"), ("status", "200")],
        )
        .await
            == 5.0
    })
    .await;
    assert_eq!(
        bed.metric("switchyard_tokens_total", &[("kind", "completion")])
            .await,
        17.0
    );
    assert!(
        bed.metric("switchyard_tokens_total", &[("kind", "prompt")])
            .await
            > 10.0
    );
    assert_eq!(
        bed.metric("switchyard_time_to_first_token_seconds_count", &[])
            .await,
        1.0
    );
    assert_eq!(
        bed.metric("switchyard_inter_token_latency_seconds_count", &[])
            .await,
        4.0,
        "5 tokens give 4 gaps; the role, usage and [DONE] events carry no token"
    );
    assert_eq!(
        bed.metric(
            "switchyard_request_duration_seconds_count",
            &[("route", "chat")]
        )
        .await,
        5.0
    );
    assert_eq!(
        bed.metric(
            "switchyard_policy_decisions_total",
            &[("policy", "round_robin")]
        )
        .await,
        5.0
    );
    assert_eq!(bed.metric("switchyard_worker_in_flight", &[]).await, 0.0);
    assert_eq!(bed.metric("switchyard_worker_healthy", &[]).await, 2.0);
}

#[tokio::test]
async fn the_pipeline_runs_in_process_without_an_http_hop() {
    use switchyard::pipeline::RequestContext;
    use switchyard::request::Route;
    let bed = TestBed::start(1, PolicyKind::CacheAware).await;
    let pipeline = &bed.gateway.state.pipeline;
    let run = |body: Value| async move {
        let headers = http::HeaderMap::new();
        let caller = pipeline
            .authenticate(&headers, &http::Extensions::new())
            .await
            .expect("no key configured");
        let admitted = pipeline.admit().await.expect("admitted");
        let ctx = RequestContext {
            route: Route::Chat,
            request_id: "in-process".into(),
            start: std::time::Instant::now(),
            headers,
            body: serde_json::to_vec(&body).unwrap().into(),
            admitted,
            caller,
            trace: switchyard::telemetry::current(),
        };
        let resp = pipeline.run(ctx).await;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let (status, body) = run(chat("hello", 3)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(bed.per_server(), [1], "routed to the engine");
    // Settled like a request that came over HTTP.
    assert_eq!(
        bed.metric("switchyard_requests_total", &[("status", "200")])
            .await,
        1.0
    );
    // Bad input is answered the same way in-process.
    let (status, body) = run(json!({"model": MODEL, "messages": []})).await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_request");
    assert_eq!(bed.per_server(), [1]);
}
