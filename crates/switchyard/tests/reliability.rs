//! Retries, circuit breaking, health checks, admission control, timeouts and graceful
//! shutdown, against simulated engines with injected faults. Where a test needs a
//! request to stay open, the engine holds it (a stalled stream) until the test lets it
//! go; no test depends on how fast anything runs.

use serde_json::json;
use switchyard::PolicyKind;
use switchyard_sim::Faults;
use switchyard_testkit::*;

fn failing(status: u16) -> Faults {
    Faults {
        error_rate: 1.0,
        error_status: status,
        ..Faults::default()
    }
}

fn completion(prompt: &str) -> serde_json::Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": 1})
}

/// Opens a stream and reads its first event; the engine holds the rest while stalled.
async fn open_stream(bed: &TestBed, prompt: &str) -> reqwest::Response {
    let mut r = bed
        .http
        .0
        .post(format!("{}/v1/completions", bed.url))
        .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": 8, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().expect("a first event");
    r
}

#[tokio::test]
async fn failed_requests_are_retried_on_a_healthy_worker() {
    let bed = TestBed::with(sims(2).await, |c| {
        c.cb_failure_threshold = 100;
        c.health_failure_threshold = 100;
    })
    .await;
    bed.sims.server(0).set_faults(failing(500)).unwrap();
    for i in 0..6 {
        let (status, body) = bed.chat(&format!("q{i}"), 2).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        bed.per_server()[1],
        6,
        "every request answered by the healthy worker"
    );
    let failed = bed
        .metric("switchyard_upstream_errors_total", &[("reason", "status")])
        .await;
    assert!(failed >= 3.0, "the failing worker was tried: {failed}");
    assert_eq!(bed.metric("switchyard_retries_total", &[]).await, failed);
}

#[tokio::test]
async fn exhausted_retries_pass_the_last_answer_through() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.retry_max_retries = 2;
        c.cb_failure_threshold = 100;
        c.health_failure_threshold = 100;
    })
    .await;
    bed.sims
        .server(0)
        .set_faults(Faults {
            retry_after_secs: 0,
            ..failing(503)
        })
        .unwrap();
    let (status, body) = bed.post("/v1/completions", &completion("x")).await;
    // The last attempt's answer is passed through as the engine gave it.
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"]["message"], "injected fault: 503",
        "the engine's own body"
    );
    assert_eq!(bed.metric("switchyard_retries_total", &[]).await, 2.0);
    assert_eq!(
        bed.metric("switchyard_requests_total", &[("status", "503")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_worker_asking_to_wait_longer_than_the_backoff_ends_retries_with_503() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.cb_failure_threshold = 100;
        c.health_failure_threshold = 100;
    })
    .await;
    bed.sims
        .server(0)
        .set_faults(Faults {
            retry_after_secs: 30,
            ..failing(503)
        })
        .unwrap();
    let resp = bed
        .http
        .0
        .post(format!("{}/v1/completions", bed.url))
        .json(&completion("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_error(&body, "upstream_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("503"));
    assert_eq!(
        bed.metric("switchyard_retries_total", &[]).await,
        0.0,
        "nothing else to try"
    );
}

#[tokio::test]
async fn disabled_retries_pass_the_first_failure_through() {
    let bed = TestBed::with(sims(2).await, |c| c.disable_retries = true).await;
    bed.sims.server(0).set_faults(failing(500)).unwrap();
    bed.sims.server(1).set_faults(failing(500)).unwrap();
    let (status, _) = bed.post("/v1/completions", &completion("x")).await;
    assert_eq!(status, 500);
    assert_eq!(bed.metric("switchyard_retries_total", &[]).await, 0.0);
}

#[tokio::test]
async fn retry_after_keeps_requests_away_from_a_throttling_worker() {
    let bed = TestBed::start(2, PolicyKind::RoundRobin).await;
    bed.sims
        .server(0)
        .set_faults(Faults {
            retry_after_secs: 60,
            ..failing(429)
        })
        .unwrap();
    for i in 0..6 {
        assert_eq!(bed.chat(&format!("q{i}"), 1).await.0, 200);
    }
    // Only the first request met the 429; afterwards worker 0 is cooling down.
    let hits_on_0 = bed
        .metric("switchyard_upstream_errors_total", &[("reason", "status")])
        .await;
    assert_eq!(hits_on_0, 1.0);
    assert_eq!(bed.per_server()[1], 6);
}

#[tokio::test]
async fn the_breaker_opens_on_failures_and_no_traffic_reaches_an_open_breaker() {
    // The breaker stays open for an hour: long past anything this test does.
    let bed = TestBed::with(sims(2).await, |c| {
        c.cb_failure_threshold = 2;
        c.cb_success_threshold = 1;
        c.cb_timeout_duration_secs = 3600;
        c.health_failure_threshold = 100;
    })
    .await;
    bed.sims.server(0).set_faults(failing(500)).unwrap();
    for i in 0..10 {
        assert_eq!(bed.chat(&format!("q{i}"), 1).await.0, 200);
    }
    let worker0 = bed.sims.urls()[0].clone();
    assert_eq!(
        bed.metric("switchyard_worker_circuit_state", &[("worker", &worker0)])
            .await,
        1.0,
        "open"
    );
    assert_eq!(
        bed.metric("switchyard_upstream_errors_total", &[("reason", "status")])
            .await,
        2.0,
        "no traffic while open"
    );
    assert_eq!(bed.per_server()[1], 10);
}

#[tokio::test]
async fn an_open_breaker_lets_a_probe_through_after_its_timeout_and_closes() {
    let bed = TestBed::with(sims(2).await, |c| {
        c.cb_failure_threshold = 2;
        c.cb_success_threshold = 1;
        c.cb_timeout_duration_secs = 1;
        c.health_failure_threshold = 100;
    })
    .await;
    bed.sims.server(0).set_faults(failing(500)).unwrap();
    let worker0 = bed.sims.urls()[0].clone();
    let breaker = || async {
        bed.metric(
            "switchyard_worker_circuit_state",
            &[("worker", worker0.as_str())],
        )
        .await
    };
    let mut i = 0;
    while breaker().await != 1.0 {
        assert_eq!(bed.chat(&format!("q{i}"), 1).await.0, 200);
        i += 1;
    }
    // Heal the worker; once the open timeout has passed, a probe goes through and
    // closes the breaker again.
    bed.sims.server(0).set_faults(Faults::default()).unwrap();
    eventually("the breaker to close again", || async {
        bed.post("/v1/completions", &completion("x")).await;
        breaker().await == 0.0
    })
    .await;
    assert!(bed.sims.server(0).requests() > 0);
}

#[tokio::test]
async fn health_checks_remove_and_restore_a_worker() {
    let bed = TestBed::with(sims(2).await, |c| {
        c.health_failure_threshold = 1;
        c.health_success_threshold = 1;
    })
    .await;
    let w0 = bed.sims.urls()[0].clone();
    bed.sims
        .server(0)
        .set_faults(Faults {
            health_fail: true,
            ..Faults::default()
        })
        .unwrap();
    eventually("worker 0 removed", || async {
        !worker_healthy(&bed.http, &bed.gateway, &w0).await
    })
    .await;
    let before = bed.per_server();
    for i in 0..4 {
        assert_eq!(
            bed.post("/v1/completions", &completion(&format!("{i}")))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        bed.per_server()[0],
        before[0],
        "no traffic to the unhealthy worker"
    );
    assert_eq!(
        bed.metric("switchyard_worker_healthy", &[("worker", &w0)])
            .await,
        0.0
    );
    bed.sims.server(0).set_faults(Faults::default()).unwrap();
    eventually("worker 0 restored", || async {
        worker_healthy(&bed.http, &bed.gateway, &w0).await
    })
    .await;
    for i in 0..4 {
        bed.post("/v1/completions", &completion(&format!("{i}")))
            .await;
    }
    assert!(bed.per_server()[0] > before[0]);
}

#[tokio::test]
async fn consecutive_upstream_failures_eject_a_worker_passively() {
    let bed = TestBed::with(sims(2).await, |c| {
        c.health_failure_threshold = 2;
        c.health_check_interval_secs = 3600;
        c.cb_failure_threshold = 100;
    })
    .await;
    bed.sims.server(0).set_faults(failing(500)).unwrap();
    for i in 0..6 {
        assert_eq!(
            bed.post("/v1/completions", &completion(&format!("{i}")))
                .await
                .0,
            200
        );
    }
    assert!(!worker_healthy(&bed.http, &bed.gateway, &bed.sims.urls()[0]).await);
    assert_eq!(
        bed.metric("switchyard_upstream_errors_total", &[("reason", "status")])
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_poison_request_ejects_no_worker_and_opens_no_breaker() {
    // Every engine answers 500 to one particular request and serves all others.
    let bed = TestBed::with(sims(4).await, |c| {
        c.health_failure_threshold = 2;
        c.health_check_interval_secs = 3600;
        c.cb_failure_threshold = 2;
    })
    .await;
    set_faults_everywhere(
        &bed.sims,
        &Faults {
            error_match: Some("POISON".into()),
            ..Faults::default()
        },
    );
    // Sent again and again, it fails on every worker it is retried on …
    for _ in 0..5 {
        let (status, body) = bed
            .post("/v1/completions", &completion("POISON pill"))
            .await;
        assert_eq!(status, 500, "{body}");
    }
    assert!(
        bed.metric("switchyard_upstream_errors_total", &[("reason", "status")])
            .await
            >= 10.0,
        "it was retried on other workers"
    );
    // … and counts against none of them: all healthy, every breaker closed.
    for url in bed.sims.urls() {
        assert!(worker_healthy(&bed.http, &bed.gateway, &url).await, "{url}");
    }
    assert_eq!(
        bed.metric("switchyard_worker_circuit_state", &[]).await,
        0.0
    );
    for i in 0..8 {
        assert_eq!(
            bed.post("/v1/completions", &completion(&format!("ok {i}")))
                .await
                .0,
            200
        );
    }
    assert!(
        bed.per_server().iter().all(|n| *n > 0),
        "{:?}",
        bed.per_server()
    );
}

#[tokio::test]
async fn connection_failures_are_retried_elsewhere() {
    let bed = TestBed::with(sims(2).await, |c| c.health_check_interval_secs = 3600).await;
    // The engine goes away: pooled connections close, new ones are refused.
    bed.sims.server(0).shutdown();
    for i in 0..4 {
        let (status, body) = bed
            .post("/v1/completions", &completion(&format!("{i}")))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(bed.per_server()[1], 4);
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.max_concurrent_requests = 1;
        c.queue_size = 0;
    })
    .await;
    bed.sims.server(0).set_faults(stalled()).unwrap();
    let held = open_stream(&bed, "x").await;
    let resp = bed
        .http
        .0
        .post(format!("{}/v1/completions", bed.url))
        .json(&completion("y"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_error(&resp.json().await.unwrap(), "queue_full");
    assert_eq!(
        bed.metric("switchyard_rejected_total", &[("reason", "queue_full")])
            .await,
        1.0
    );
    // The permit is held until the stream ends: once it is dropped, requests pass.
    drop(held);
    bed.sims.server(0).set_faults(Faults::default()).unwrap();
    eventually("the permit to come back", || async {
        bed.metric("switchyard_requests_total", &[("status", "200")])
            .await
            == 1.0
    })
    .await;
    assert_eq!(bed.post("/v1/completions", &completion("z")).await.0, 200);
}

#[tokio::test]
async fn queued_requests_are_admitted_in_arrival_order() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.max_concurrent_requests = 1;
        c.queue_size = 3;
        c.queue_timeout_secs = 3600;
    })
    .await;
    bed.sims.server(0).set_faults(stalled()).unwrap();
    let held = open_stream(&bed, "holder").await;
    // Three streams queue behind it, one after another. Each, once admitted, reports
    // itself and lets go of the permit.
    let (tx, mut admitted) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..3 {
        let (http, url, tx) = (bed.http.clone(), bed.url.clone(), tx.clone());
        tokio::spawn(async move {
            let mut r = http
                .0
                .post(format!("{url}/v1/completions"))
                .json(&json!({"model": MODEL, "prompt": format!("queued {i}"), "max_tokens": 8, "stream": true}))
                .send()
                .await
                .unwrap();
            r.chunk().await.unwrap();
            tx.send(i).unwrap();
        });
        eventually("the request to queue", || async {
            bed.metric("switchyard_queue_depth", &[]).await == (i + 1) as f64
        })
        .await;
    }
    let (status, body) = bed
        .post("/v1/completions", &completion("one too many"))
        .await;
    assert_eq!(status, 503);
    assert_error(&body, "queue_full");
    drop(held);
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(admitted.recv().await.unwrap());
    }
    assert_eq!(order, vec![0, 1, 2], "first come, first served");
}

#[tokio::test]
async fn a_queued_request_times_out_with_503() {
    let bed = TestBed::with(sims(1).await, |c| {
        c.max_concurrent_requests = 1;
        c.queue_size = 4;
        c.queue_timeout_secs = 1;
    })
    .await;
    bed.sims.server(0).set_faults(stalled()).unwrap();
    // The permit is held for as long as this test runs.
    let _held = open_stream(&bed, "x").await;
    let (status, body) = bed.post("/v1/completions", &completion("y")).await;
    assert_eq!(status, 503);
    assert_error(&body, "queue_timeout");
    assert_eq!(
        bed.metric("switchyard_rejected_total", &[("reason", "queue_timeout")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    // One request per 1000 s: the bucket cannot refill while this test runs.
    let bed = TestBed::with(sims(1).await, |c| c.rate_limit_tokens_per_second = 0.001).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..5 {
        let resp = bed
            .http
            .0
            .post(format!("{}/v1/completions", bed.url))
            .json(&completion(&format!("{i}")))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = Some(resp.headers()["retry-after"].to_str().unwrap().to_string());
            assert_error(&resp.json().await.unwrap(), "rate_limit_exceeded");
        }
    }
    assert_eq!(statuses, [200, 429, 429, 429, 429]);
    let secs: u64 = retry_after.unwrap().parse().unwrap();
    assert!((900..=1000).contains(&secs), "{secs}");
    assert_eq!(
        bed.metric("switchyard_rejected_total", &[("reason", "rate_limited")])
            .await,
        4.0
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_gives_504() {
    let bed = TestBed::with(sims(1).await, |c| c.request_timeout_secs = 1).await;
    bed.sims
        .server(0)
        .set_faults(Faults {
            hang_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let (status, body) = bed.post("/v1/completions", &completion("x")).await;
    assert_eq!(status, 504, "{body}");
    assert_error(&body, "upstream_timeout");
    assert_eq!(
        bed.metric("switchyard_upstream_errors_total", &[("reason", "timeout")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn no_healthy_worker_is_503() {
    let sims = sims(1).await;
    sims.server(0)
        .set_faults(Faults {
            health_fail: true,
            ..Faults::default()
        })
        .unwrap();
    let bed = TestBed::with(sims, |c| c.policy = PolicyKind::CacheAware).await;
    let resp = bed
        .http
        .0
        .post(format!("{}/v1/chat/completions", bed.url))
        .json(&chat("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(&resp.json().await.unwrap(), "no_healthy_worker");
    assert_eq!(bed.http.get(&format!("{}/readiness", bed.url)).await.0, 503);
    assert_eq!(bed.http.get(&format!("{}/health", bed.url)).await.0, 503);
    assert_eq!(bed.http.get(&format!("{}/liveness", bed.url)).await.0, 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_streams() {
    let sims = sims(1).await;
    sims.server(0).set_faults(stalled()).unwrap();
    let bed = TestBed::with(sims, |_| {}).await;
    let mut resp = bed
        .http
        .0
        .post(format!("{}/v1/completions", bed.url))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 30, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    let mut body = resp.chunk().await.unwrap().unwrap().to_vec();
    // The stream is open (the engine holds it) when shutdown begins.
    assert!(!String::from_utf8_lossy(&body).contains("[DONE]"));
    bed.gateway.shutdown();
    // New connections are refused once the listener has closed …
    eventually("the listener to close", || async {
        reqwest::Client::new()
            .get(format!("{}/liveness", bed.url))
            .send()
            .await
            .is_err()
    })
    .await;
    // … while the stream in flight runs to its end.
    bed.sims.server(0).set_faults(Faults::default()).unwrap();
    while let Some(c) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"completion_tokens\":30"));
    let TestBed { gateway, .. } = bed;
    gateway.wait().await;
}
