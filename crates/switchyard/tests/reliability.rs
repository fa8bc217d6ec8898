//! Retries, circuit breaking, health checks, admission control, timeouts and graceful
//! shutdown, against simulated engines with injected faults.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchyard::PolicyKind;
use switchyard_sim::{Faults, SimConfig};

fn failing(status: u16) -> Faults {
    Faults {
        error_rate: 1.0,
        error_status: status,
        ..Faults::default()
    }
}

#[tokio::test]
async fn failed_requests_are_retried_on_a_healthy_worker() {
    let sims = sims(2).await;
    sims.server(0).set_faults(failing(500)).unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.cb_failure_threshold = 100;
    cfg.health_failure_threshold = 100;
    let gw = gateway(cfg).await;
    for i in 0..6 {
        let (status, body) = post(
            &gw.url(),
            "/v1/chat/completions",
            &chat(&format!("q{i}"), 2),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        per_server(&sims)[1],
        6,
        "every request answered by the healthy worker"
    );
    let m = metrics_url(&gw);
    let failed = metric(
        &m,
        "switchyard_upstream_errors_total",
        &[("reason", "status")],
    )
    .await;
    assert!(failed >= 3.0, "the failing worker was tried: {failed}");
    assert_eq!(metric(&m, "switchyard_retries_total", &[]).await, failed);
}

#[tokio::test]
async fn exhausted_retries_pass_the_last_answer_through() {
    let sims = sims(1).await;
    sims.server(0)
        .set_faults(Faults {
            retry_after_secs: 0,
            ..failing(503)
        })
        .unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.retry_max_retries = 2;
    cfg.cb_failure_threshold = 100;
    cfg.health_failure_threshold = 100;
    let gw = gateway(cfg).await;
    let (status, body) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    )
    .await;
    // The last attempt's answer is passed through as the engine gave it.
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"]["message"], "injected fault: 503",
        "the engine's own body"
    );
    let m = metrics_url(&gw);
    assert_eq!(metric(&m, "switchyard_retries_total", &[]).await, 2.0);
    assert_eq!(
        metric(&m, "switchyard_requests_total", &[("status", "503")]).await,
        1.0
    );
}

#[tokio::test]
async fn a_worker_asking_to_wait_longer_than_the_backoff_ends_retries_with_503() {
    let sims = sims(1).await;
    sims.server(0)
        .set_faults(Faults {
            retry_after_secs: 30,
            ..failing(503)
        })
        .unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.cb_failure_threshold = 100;
    cfg.health_failure_threshold = 100;
    let gw = gateway(cfg).await;
    let resp = client()
        .post(format!("{}/v1/completions", gw.url()))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_error(&body, "upstream_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("503"));
    assert_eq!(
        metric(&metrics_url(&gw), "switchyard_retries_total", &[]).await,
        0.0,
        "nothing else to try"
    );
}

#[tokio::test]
async fn disabled_retries_pass_the_first_failure_through() {
    let sims = sims(2).await;
    sims.server(0).set_faults(failing(500)).unwrap();
    sims.server(1).set_faults(failing(500)).unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.disable_retries = true;
    let gw = gateway(cfg).await;
    let (status, _) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(
        metric(&metrics_url(&gw), "switchyard_retries_total", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn retry_after_keeps_requests_away_from_a_throttling_worker() {
    let sims = sims(2).await;
    sims.server(0)
        .set_faults(Faults {
            retry_after_secs: 60,
            ..failing(429)
        })
        .unwrap();
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    for i in 0..6 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/chat/completions",
                &chat(&format!("q{i}"), 1)
            )
            .await
            .0,
            200
        );
    }
    // Only the first request met the 429; afterwards worker 0 is cooling down.
    let hits_on_0 = metric(
        &metrics_url(&gw),
        "switchyard_upstream_errors_total",
        &[("reason", "status")],
    )
    .await;
    assert_eq!(hits_on_0, 1.0);
    assert_eq!(per_server(&sims)[1], 6);
}

#[tokio::test]
async fn breaker_opens_on_failures_and_recovers() {
    let sims = sims(2).await;
    sims.server(0).set_faults(failing(500)).unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.cb_failure_threshold = 2;
    cfg.cb_success_threshold = 1;
    cfg.cb_timeout_duration_secs = 1;
    cfg.health_failure_threshold = 100;
    let gw = gateway(cfg).await;
    let m = metrics_url(&gw);
    for i in 0..10 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/chat/completions",
                &chat(&format!("q{i}"), 1)
            )
            .await
            .0,
            200
        );
    }
    let worker0 = sims.urls()[0].clone();
    assert_eq!(
        metric(
            &m,
            "switchyard_worker_circuit_state",
            &[("worker", &worker0)]
        )
        .await,
        1.0,
        "open"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total",
            &[("reason", "status")]
        )
        .await,
        2.0,
        "no traffic while open"
    );
    // Heal the worker; after the open timeout a probe goes through and closes it.
    sims.server(0).set_faults(Faults::default()).unwrap();
    let url = gw.url();
    eventually("the breaker to close again", || {
        let (url, m, w) = (url.clone(), m.clone(), worker0.clone());
        async move {
            post(
                &url,
                "/v1/completions",
                &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
            )
            .await;
            metric(&m, "switchyard_worker_circuit_state", &[("worker", &w)]).await == 0.0
        }
    })
    .await;
    assert!(sims.server(0).requests() > 0);
}

#[tokio::test]
async fn health_checks_remove_and_restore_a_worker() {
    let sims = sims(2).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.health_failure_threshold = 1;
    cfg.health_success_threshold = 1;
    let gw = gateway(cfg).await;
    let (gw_url, w0) = (gw.url(), sims.urls()[0].clone());
    sims.server(0)
        .set_faults(Faults {
            health_fail: true,
            ..Faults::default()
        })
        .unwrap();
    eventually("worker 0 removed", || {
        let (g, w) = (gw_url.clone(), w0.clone());
        async move { !worker_healthy(&g, &w).await }
    })
    .await;
    let before = per_server(&sims);
    for i in 0..4 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1})
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(
        per_server(&sims)[0],
        before[0],
        "no traffic to the unhealthy worker"
    );
    assert_eq!(
        metric(
            &metrics_url(&gw),
            "switchyard_worker_healthy",
            &[("worker", &w0)]
        )
        .await,
        0.0
    );
    sims.server(0).set_faults(Faults::default()).unwrap();
    eventually("worker 0 restored", || {
        let (g, w) = (gw_url.clone(), w0.clone());
        async move { worker_healthy(&g, &w).await }
    })
    .await;
    for i in 0..4 {
        post(
            &gw.url(),
            "/v1/completions",
            &json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1}),
        )
        .await;
    }
    assert!(per_server(&sims)[0] > before[0]);
}

#[tokio::test]
async fn consecutive_upstream_failures_eject_a_worker_passively() {
    let sims = sims(2).await;
    sims.server(0).set_faults(failing(500)).unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.health_failure_threshold = 2;
    cfg.health_check_interval_secs = 3600;
    cfg.cb_failure_threshold = 100;
    let gw = gateway(cfg).await;
    for i in 0..6 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1})
            )
            .await
            .0,
            200
        );
    }
    assert!(!worker_healthy(&gw.url(), &sims.urls()[0]).await);
    assert_eq!(
        metric(
            &metrics_url(&gw),
            "switchyard_upstream_errors_total",
            &[("reason", "status")]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn connection_failures_are_retried_elsewhere() {
    let sims = sims(2).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.health_check_interval_secs = 3600;
    let gw = gateway(cfg).await;
    // The engine goes away: pooled connections close, new ones are refused.
    sims.server(0).shutdown();
    for i in 0..4 {
        let (status, body) = post(
            &gw.url(),
            "/v1/completions",
            &json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(per_server(&sims)[1], 4);
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let sims = sims_with(SimConfig {
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.max_concurrent_requests = 1;
    cfg.queue_size = 0;
    let gw = gateway(cfg).await;
    let mut held = client()
        .post(format!("{}/v1/completions", gw.url()))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 3000, "stream": true}))
        .send()
        .await
        .unwrap();
    held.chunk().await.unwrap();
    let resp = client()
        .post(format!("{}/v1/completions", gw.url()))
        .json(&json!({"model": MODEL, "prompt": "y", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_error(&resp.json().await.unwrap(), "queue_full");
    // The permit is held until the stream ends: once it is dropped, requests pass.
    drop(held);
    let mut rejected = 1.0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = post(
            &gw.url(),
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "z", "max_tokens": 1}),
        )
        .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        rejected += 1.0;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        metric(
            &metrics_url(&gw),
            "switchyard_rejected_total",
            &[("reason", "queue_full")]
        )
        .await,
        rejected
    );
}

#[tokio::test]
async fn queued_requests_wait_fifo_then_time_out_with_503() {
    let sims = sims_with(SimConfig {
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.max_concurrent_requests = 1;
    cfg.queue_size = 4;
    cfg.queue_timeout_secs = 1;
    let gw = gateway(cfg).await;
    let mut held = client()
        .post(format!("{}/v1/completions", gw.url()))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 3000, "stream": true}))
        .send()
        .await
        .unwrap();
    held.chunk().await.unwrap();
    let (status, body) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "y", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503);
    assert_error(&body, "queue_timeout");
    // A queued request is admitted as soon as the permit frees up.
    let url = gw.url();
    let waiting = tokio::spawn(async move {
        post(
            &url,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "w", "max_tokens": 1}),
        )
        .await
        .0
    });
    let m = metrics_url(&gw);
    eventually("the request to queue", || {
        let m = m.clone();
        async move { metric(&m, "switchyard_queue_depth", &[]).await == 1.0 }
    })
    .await;
    drop(held);
    assert_eq!(waiting.await.unwrap(), 200);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.rate_limit_tokens_per_second = 2.0;
    let gw = gateway(cfg).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..5 {
        let resp = client()
            .post(format!("{}/v1/completions", gw.url()))
            .json(&json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = Some(resp.headers()["retry-after"].to_str().unwrap().to_string());
            assert_error(&resp.json().await.unwrap(), "rate_limit_exceeded");
        }
    }
    assert_eq!(&statuses[..2], [200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        metric(
            &metrics_url(&gw),
            "switchyard_rejected_total",
            &[("reason", "rate_limited")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let sims = sims(1).await;
    sims.server(0)
        .set_faults(Faults {
            latency_ms: 3000,
            ..Faults::default()
        })
        .unwrap();
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.request_timeout_secs = 1;
    let gw = gateway(cfg).await;
    let (status, body) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_error(&body, "upstream_timeout");
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
    let gw = gateway(config(sims.urls(), PolicyKind::CacheAware)).await;
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&chat("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(&resp.json().await.unwrap(), "no_healthy_worker");
    let ready = client()
        .get(format!("{}/readiness", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let health = client()
        .get(format!("{}/health", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(
        client()
            .get(format!("{}/liveness", gw.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_streams() {
    let sims = sims_with(SimConfig {
        time_scale: 20.0,
        ..SimConfig::default()
    })
    .await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let url = gw.url();
    let mut resp = client()
        .post(format!("{url}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 300, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    let mut body = resp.chunk().await.unwrap().unwrap().to_vec();
    gw.shutdown();
    // New connections are refused once the listener has closed …
    eventually("the listener to close", || {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{url}/liveness"))
                .send()
                .await
                .is_err()
        }
    })
    .await;
    // … while the stream in flight runs to its end.
    while let Some(c) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"completion_tokens\":300"));
    tokio::time::timeout(Duration::from_secs(5), gw.wait())
        .await
        .expect("server stops after the stream");
}
