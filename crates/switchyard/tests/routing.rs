//! Each policy's behaviour through the gateway, against simulated engines.

mod common;

use common::*;
use serde_json::json;
use switchyard::PolicyKind;
use switchyard_sim::{Faults, SimConfig};

#[tokio::test]
async fn round_robin_takes_turns() {
    let sims = sims(3).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    for i in 0..9 {
        let (status, body) = post(
            &gw.url(),
            "/v1/chat/completions",
            &chat(&format!("q{i}"), 2),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(per_server(&sims), [3, 3, 3]);
}

#[tokio::test]
async fn random_uses_every_worker_eventually() {
    let sims = sims(2).await;
    let gw = gateway(config(sims.urls(), PolicyKind::Random)).await;
    for i in 0..40 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("p{i}"), "max_tokens": 1})
            )
            .await
            .0,
            200
        );
    }
    let counts = per_server(&sims);
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
}

#[tokio::test]
async fn cache_aware_keeps_a_shared_prefix_on_one_worker() {
    let sims = sims(3).await;
    let gw = gateway(config(sims.urls(), PolicyKind::CacheAware)).await;
    let system = system_prompt(1, 1500);
    let mut cached = Vec::new();
    for i in 0..8 {
        let (status, body) = post(
            &gw.url(),
            "/v1/chat/completions",
            &chat_with_system(&system, &format!("question {i}"), 2),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        cached.push(
            body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        );
    }
    let counts = per_server(&sims);
    assert!(counts.contains(&8), "all on one worker: {counts:?}");
    assert!(
        cached[1..].iter().all(|c| *c > 1000),
        "engine cache hits after the first: {cached:?}"
    );
    assert!(
        metric(
            &metrics_url(&gw),
            "switchyard_policy_decisions_total",
            &[("reason", "cache_hit")]
        )
        .await
            >= 7.0
    );
    assert!(metric(&metrics_url(&gw), "switchyard_prefix_index_hit_ratio", &[]).await > 0.5);
}

#[tokio::test]
async fn cache_aware_spreads_distinct_prefixes() {
    let sims = sims(3).await;
    let gw = gateway(config(sims.urls(), PolicyKind::CacheAware)).await;
    for g in 0..12 {
        let system = system_prompt(100 + g, 400);
        for q in 0..2 {
            assert_eq!(
                post(
                    &gw.url(),
                    "/v1/chat/completions",
                    &chat_with_system(&system, &format!("q{q}"), 1)
                )
                .await
                .0,
                200
            );
        }
    }
    let counts = per_server(&sims);
    assert!(
        counts.iter().all(|c| *c >= 4),
        "groups spread over workers, not collapsed: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| c % 2 == 0),
        "each group's two requests stay together: {counts:?}"
    );
}

#[tokio::test]
async fn cache_aware_spills_a_hot_prefix_when_its_worker_is_loaded() {
    // Real-time engines so that requests overlap; a low imbalance threshold.
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(sims.urls(), PolicyKind::CacheAware);
    cfg.balance_abs_threshold = 2;
    cfg.balance_rel_threshold = 1.5;
    let gw = gateway(cfg).await;
    let system = system_prompt(7, 600);
    assert_eq!(
        post(
            &gw.url(),
            "/v1/chat/completions",
            &chat_with_system(&system, "warm", 1)
        )
        .await
        .0,
        200
    );
    let url = gw.url();
    let reqs = (0..16).map(|i| {
        let (url, body) = (
            url.clone(),
            chat_with_system(&system, &format!("hot {i}"), 40),
        );
        async move { post(&url, "/v1/chat/completions", &body).await.0 }
    });
    let statuses = futures_util::future::join_all(reqs).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let counts = per_server(&sims);
    assert!(
        counts.iter().all(|c| *c >= 3),
        "load spilled to the other worker: {counts:?}"
    );
}

#[tokio::test]
async fn consistent_hash_keeps_sessions_and_walks_the_ring_on_failure() {
    let sims = sims(3).await;
    let mut cfg = config(sims.urls(), PolicyKind::ConsistentHash);
    cfg.health_failure_threshold = 1;
    cfg.health_success_threshold = 1;
    let gw = gateway(cfg).await;
    let send = |session: String| {
        let url = gw.url();
        async move {
            let r = client()
                .post(format!("{url}/v1/completions"))
                .header("X-Session-ID", session)
                .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    // Find each session's owner by the counter that moves.
    let mut owner = Vec::new();
    for s in 0..12 {
        let before = per_server(&sims);
        for _ in 0..3 {
            send(format!("s{s}")).await;
        }
        let after = per_server(&sims);
        let moved: Vec<usize> = (0..3).filter(|i| after[*i] != before[*i]).collect();
        assert_eq!(moved.len(), 1, "session s{s} stayed on one worker");
        assert_eq!(after[moved[0]] - before[moved[0]], 3);
        owner.push(moved[0]);
    }
    let victim = owner[0];
    sims.server(victim)
        .set_faults(Faults {
            health_fail: true,
            ..Faults::default()
        })
        .unwrap();
    let victim_url = sims.urls()[victim].clone();
    let gw_url = gw.url();
    eventually("the owner to be marked unhealthy", || {
        let (g, v) = (gw_url.clone(), victim_url.clone());
        async move { !worker_healthy(&g, &v).await }
    })
    .await;
    for (s, o) in owner.iter().enumerate() {
        let before = per_server(&sims);
        send(format!("s{s}")).await;
        let after = per_server(&sims);
        let now = (0..3).find(|i| after[*i] != before[*i]).unwrap();
        if *o == victim {
            assert_ne!(now, victim, "s{s} moved off the unhealthy owner");
        } else {
            assert_eq!(now, *o, "s{s} kept its healthy owner");
        }
    }
}

#[tokio::test]
async fn consistent_hash_moves_a_session_when_its_owner_is_over_the_bound() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let mut cfg = config(sims.urls(), PolicyKind::ConsistentHash);
    cfg.hash_load_factor = 1.0;
    let gw = gateway(cfg).await;
    let url = gw.url();
    let stream_req = || {
        client()
            .post(format!("{url}/v1/completions"))
            .header("X-Session-ID", "sticky")
            .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 2000, "stream": true}))
            .send()
    };
    // Two long streams of the same session: the second exceeds the owner's bound
    // (ceil(1.0 × (1 + 1) / 2) = 1 in flight) and walks to the other worker.
    let mut a = stream_req().await.unwrap();
    a.chunk().await.unwrap();
    let mut b = stream_req().await.unwrap();
    b.chunk().await.unwrap();
    assert_eq!(per_server(&sims), [1, 1]);
    assert_eq!(
        metric(
            &metrics_url(&gw),
            "switchyard_policy_decisions_total",
            &[("reason", "walked")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn power_of_two_avoids_the_engine_with_a_long_queue() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 1.0,
        max_num_seqs: 4,
        ..SimConfig::default()
    })
    .await;
    let gw = gateway(config(sims.urls(), PolicyKind::PowerOfTwo)).await;
    // Load engine 0 directly (behind the gateway's back): only its /metrics shows it.
    let busy = sims.urls()[0].clone();
    let mut held = Vec::new();
    for _ in 0..12 {
        let r = client()
            .post(format!("{busy}/v1/completions"))
            .json(&json!({"prompt": "x", "max_tokens": 5000, "stream": true}))
            .send()
            .await
            .unwrap();
        held.push(r);
    }
    let gw_url = gw.url();
    eventually("the engine queue to be scraped", || {
        let g = gw_url.clone();
        async move {
            let v: serde_json::Value = client()
                .get(format!("{g}/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["workers"][0]["engine_waiting"].as_u64().unwrap_or(0) >= 8
        }
    })
    .await;
    let before = per_server(&sims);
    for i in 0..10 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("p{i}"), "max_tokens": 1})
            )
            .await
            .0,
            200
        );
    }
    let after = per_server(&sims);
    assert_eq!(after[0], before[0], "nothing routed to the loaded engine");
    assert_eq!(after[1] - before[1], 10);
    drop(held);
}
