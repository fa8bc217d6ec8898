//! The data plane's API surface: every bad-input path (status + OpenAI error body, and
//! nothing sent upstream), auth, probes, models, CORS and metrics.

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::PolicyKind;

async fn raw(url: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = client().post(format!("{url}{path}")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

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
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::CacheAware);
    cfg.max_payload_size = 4096;
    let gw = gateway(cfg).await;
    let url = gw.url();
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
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"stream":1}"#.to_vec(), 400, "invalid_request", Some("stream")),
        ("/v1/chat/completions", json_ct, br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#.to_vec(), 400, "invalid_request", Some("temperature")),
        ("/v1/completions", json_ct, br#"{"model":"switchyard/sim-8b"}"#.to_vec(), 400, "invalid_request", Some("prompt")),
        ("/v1/completions", json_ct, br#"{"model":"switchyard/sim-8b","prompt":false}"#.to_vec(), 400, "invalid_request", Some("prompt")),
        ("/v1/embeddings", json_ct, br#"{"model":"switchyard/sim-8b"}"#.to_vec(), 400, "invalid_request", Some("input")),
        ("/v1/chat/completions", Some("text/plain"), br#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", Some("application/x-www-form-urlencoded"), b"a=b".to_vec(), 400, "invalid_request", None),
        ("/v1/chat/completions", json_ct, vec![b' '; 5000], 413, "payload_too_large", None),
        ("/v1/chat/completions", json_ct, br#"{"model":"gpt-17","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 404, "model_not_found", Some("model")),
    ];
    for (path, ct, body, status, code, param) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        let (got, resp) = raw(&url, path, ct, body).await;
        assert_eq!(got, status, "{path} {shown} -> {resp}");
        assert_error(&resp, code);
        assert_eq!(resp["error"]["param"].as_str(), param, "{shown} -> {resp}");
    }
    // A chunked body over the limit (no Content-Length) is refused too.
    let stream =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let resp = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // The unknown-model message lists what is available.
    let (_, resp) = post(
        &url,
        "/v1/completions",
        &json!({"model": "nope", "prompt": "x"}),
    )
    .await;
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("switchyard/sim-8b")
    );
    assert_eq!(
        sims.server(0).requests(),
        0,
        "no bad request reached the engine"
    );
    assert!(
        metric(
            &metrics_url(&gw),
            "switchyard_requests_total",
            &[("status", "400")]
        )
        .await
            >= 15.0
    );
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let sims = sims(1).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let resp = client()
        .get(format!("{}/v1/engines", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_error(&resp.json().await.unwrap(), "not_found");
}

#[tokio::test]
async fn a_wrong_method_is_405_json_with_a_request_id() {
    let sims = sims(1).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/chat/completions"),
        (reqwest::Method::PUT, "/v1/completions"),
        (reqwest::Method::GET, "/v1/embeddings"),
        (reqwest::Method::POST, "/v1/models"),
    ] {
        let resp = client()
            .request(method.clone(), format!("{}{path}", gw.url()))
            .header("x-request-id", "wrong-method-1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["x-request-id"], "wrong-method-1");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_error(&body, "method_not_allowed");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(path),
            "{body}"
        );
    }
    assert_eq!(
        sims.servers()[0].requests(),
        0,
        "nothing reached the engine"
    );
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.api_key = Some("sk-test".into());
    let gw = gateway(cfg).await;
    let url = gw.url();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sk-test"),
        Some("Basic c2stdGVzdA=="),
    ] {
        let mut req = client()
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat("x", 1));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert!(resp.headers().contains_key("x-request-id"), "{auth:?}");
        assert_error(&resp.json().await.unwrap(), "invalid_api_key");
    }
    let resp = client()
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let ok = client()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Probes stay open for orchestrators.
    assert_eq!(
        client()
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(sims.server(0).requests(), 1);
    assert_eq!(
        metric(
            &metrics_url(&gw),
            "switchyard_rejected_total",
            &[("reason", "unauthorized")]
        )
        .await,
        5.0
    );
}

#[tokio::test]
async fn models_and_probes() {
    let sims = sims(2).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let models: Value = client()
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], MODEL);
    let health: Value = client()
        .get(format!("{}/health", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["workers"].as_array().unwrap().len(), 2);
    assert_eq!(health["workers"][0]["circuit"], "closed");
    let ready = client()
        .get(format!("{}/readiness", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["healthy_workers"], 2);
}

#[tokio::test]
async fn embeddings_and_completions_are_routed() {
    let sims = sims(1).await;
    let gw = gateway(config(sims.urls(), PolicyKind::CacheAware)).await;
    let (status, body) = post(
        &gw.url(),
        "/v1/embeddings",
        &json!({"model": MODEL, "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let (status, body) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Engine errors for valid-looking requests pass through unchanged.
    let (status, body) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "n": 3}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "n");
}

#[tokio::test]
async fn cors_headers_when_origins_are_configured() {
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.cors_allowed_origins = vec!["https://app.example".into()];
    let gw = gateway(cfg).await;
    let resp = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", gw.url()),
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
    let sims = sims(2).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    for i in 0..4 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/chat/completions",
                &chat(&format!("q{i}"), 3)
            )
            .await
            .0,
            200
        );
    }
    let mut body = chat("stream", 5);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let m = metrics_url(&gw);
    eventually("the stream to be settled", || {
        let m = m.clone();
        async move {
            metric(
                &m,
                "switchyard_requests_total",
                &[("route", "chat"), ("status", "200")],
            )
            .await
                == 5.0
        }
    })
    .await;
    assert_eq!(
        metric(&m, "switchyard_tokens_total", &[("kind", "completion")]).await,
        17.0
    );
    assert!(metric(&m, "switchyard_tokens_total", &[("kind", "prompt")]).await > 10.0);
    assert_eq!(
        metric(&m, "switchyard_time_to_first_token_seconds_count", &[]).await,
        1.0
    );
    assert_eq!(
        metric(&m, "switchyard_inter_token_latency_seconds_count", &[]).await,
        7.0,
        "role + 5 tokens + usage + done = 8 frames"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_request_duration_seconds_count",
            &[("route", "chat")]
        )
        .await,
        5.0
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_policy_decisions_total",
            &[("policy", "round_robin")]
        )
        .await,
        5.0
    );
    assert_eq!(metric(&m, "switchyard_worker_in_flight", &[]).await, 0.0);
    assert_eq!(metric(&m, "switchyard_worker_healthy", &[]).await, 2.0);
}
