//! Fault injection, from the config and at runtime through `/sim/faults`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_sim::{Faults, SimConfig};
use switchyard_testkit::*;

async fn set(http: &Http, url: &str, faults: Value) -> (u16, Value) {
    http.post(url, "/sim/faults", &faults).await
}

#[tokio::test]
async fn error_rate_answers_the_chosen_status_with_retry_after() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let (status, body) = set(
        &http,
        &url,
        json!({"error_rate": 1.0, "error_status": 503, "retry_after_secs": 7}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got: Value = http
        .0
        .get(format!("{url}/sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["error_status"], 503);
    let resp = http
        .0
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_error(&resp.json().await.unwrap(), 503);

    set(&http, &url, json!({"error_rate": 1.0, "error_status": 429})).await;
    let resp = http
        .0
        .post(format!("{url}/v1/completions"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");

    set(&http, &url, json!({"error_rate": 1.0})).await;
    let (status, body) = http
        .post(&url, "/v1/embeddings", &json!({"input": "x"}))
        .await;
    assert_eq!(status, 500);
    assert_error(&body, 500);

    set(&http, &url, json!({})).await;
    let (status, _) = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn partial_error_rate_fails_some_requests() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    set(&http, &sim.url(), json!({"error_rate": 0.5})).await;
    let mut failed = 0;
    for _ in 0..60 {
        let (status, _) = http
            .post(
                &sim.url(),
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": 1}),
            )
            .await;
        failed += usize::from(status == 500);
    }
    assert!((10..=50).contains(&failed), "{failed} of 60 failed");
}

#[tokio::test]
async fn added_latency_delays_requests() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    set(&http, &sim.url(), json!({"latency_ms": 300})).await;
    let t = Instant::now();
    let (status, _) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn hang_accepts_and_never_answers() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    set(&http, &sim.url(), json!({"hang_rate": 1.0})).await;
    let url = sim.url();
    let pending = tokio::spawn({
        let http = http.clone();
        async move {
            http.0
                .post(format!("{url}/v1/completions"))
                .json(&json!({"prompt": "x", "max_tokens": 1}))
                .send()
                .await
        }
    });
    let server = sim.server(0).clone();
    eventually("the hung request to be in flight", || async {
        server.in_flight() == 1
    })
    .await;
    // Accepted, counted as in flight, with no sequence for the engine to run: nothing
    // will ever answer it.
    assert_eq!(server.engine_stats().await[0].running, 0);
    assert_eq!(server.requests(), 0);
    assert!(!pending.is_finished());
    pending.abort();
}

#[tokio::test]
async fn crash_closes_the_stream_after_k_chunks() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    set(&http, &sim.url(), json!({"crash_after_chunks": 3})).await;
    let mut resp = http.0
        .post(format!("{}/v1/chat/completions", sim.url()))
        .json(&json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 50, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = 0;
    let err = loop {
        match resp.chunk().await {
            Ok(Some(c)) => events += c.windows(6).filter(|w| w == b"data: ").count(),
            Ok(None) => panic!("stream ended cleanly after {events} events"),
            Err(e) => break e,
        }
    };
    assert_eq!(events, 3, "{err}");
    // A non-streaming response with k = 0 is cut right after the headers.
    set(&http, &sim.url(), json!({"crash_after_chunks": 0})).await;
    let resp = http
        .0
        .post(format!("{}/v1/completions", sim.url()))
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.is_err());
}

#[tokio::test]
async fn refused_connections_recover_when_cleared() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let server = sim.server(0);
    server
        .set_faults(Faults {
            refuse_connections: true,
            ..Faults::default()
        })
        .unwrap();
    let url = sim.url();
    eventually("the listener to close", || {
        let (url, http) = (url.clone(), http.clone());
        async move {
            http.0
                .get(format!("{url}/health"))
                .send()
                .await
                .is_err_and(|e| e.is_connect())
        }
    })
    .await;
    server.set_faults(Faults::default()).unwrap();
    eventually("the listener to come back", || {
        let (url, http) = (url.clone(), http.clone());
        async move { http.0.get(format!("{url}/health")).send().await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn faults_clear_by_themselves_after_clear_after_secs() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let (status, _) = set(
        &http,
        &url,
        json!({"refuse_connections": true, "clear_after_secs": 3}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        sim.server(0).faults().refuse_connections,
        "in force once set"
    );
    eventually("automatic recovery", || async {
        sim.server(0).faults() == Faults::default()
    })
    .await;
    eventually("the listener to come back", || async {
        http.0.get(format!("{url}/health")).send().await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_matching_request_fails_every_time_and_others_pass() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    set(
        &http,
        &url,
        json!({"error_match": "POISON", "error_status": 500}),
    )
    .await;
    for _ in 0..3 {
        let (status, body) = http
            .post(
                &url,
                "/v1/completions",
                &json!({"prompt": "a POISON pill", "max_tokens": 1}),
            )
            .await;
        assert_eq!(status, 500, "{body}");
        assert_error(&body, 500);
    }
    let (status, _) = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": "harmless", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = set(&http, &url, json!({"error_match": ""})).await;
    assert_eq!(status, 400);
    assert_error(&body, 400);
}

#[tokio::test]
async fn a_stalled_response_waits_until_the_fault_is_lifted() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    set(&http, &url, json!({"stall_after_chunks": 2})).await;
    let mut resp = http
        .0
        .post(format!("{url}/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 5, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut events = 0;
    while events < 2 {
        let c = resp
            .chunk()
            .await
            .unwrap()
            .expect("two events before the stall");
        events += c.windows(6).filter(|w| w == b"data: ").count();
    }
    assert_eq!(events, 2);
    // Held: the engine finished long ago, the response waits for the test.
    let server = sim.server(0).clone();
    eventually("the engine to finish", || async {
        server.engine_stats().await[0].running == 0
    })
    .await;
    assert_eq!(server.in_flight(), 1, "still being answered");
    // A response with fewer chunks than that is not held.
    let (status, _) = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": "y", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    set(&http, &url, json!({})).await;
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(
        String::from_utf8(rest)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
}

#[tokio::test]
async fn health_can_fail_or_be_slow() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        faults: Faults {
            health_fail: true,
            ..Faults::default()
        },
        ..fast()
    })
    .await;
    let url = sim.url();
    let resp = http.0.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_error(&resp.json().await.unwrap(), 503);
    // Generation is unaffected by a health fault.
    let (status, _) = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    set(&http, &url, json!({"health_latency_ms": 250})).await;
    let t = Instant::now();
    let resp = http.0.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn invalid_faults_are_rejected() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    for bad in [
        json!({"error_rate": 1.5}),
        json!({"error_status": 418}),
        json!({"hang_rate": -0.1}),
        json!({"clear_after_secs": 0}),
        json!({"no_such_fault": true}),
        json!({"latency_ms": "slow"}),
    ] {
        let (status, body) = set(&http, &sim.url(), bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert_error(&body, 400);
    }
    assert_eq!(sim.server(0).faults(), Faults::default());
}
