//! Each policy's behaviour through the gateway, against simulated engines.

use serde_json::json;
use switchyard::PolicyKind;
use switchyard_sim::{Faults, SimConfig};
use switchyard_testkit::*;

/// Sends a completion and returns the index of the engine that took it.
async fn served_by(bed: &TestBed, prompt: &str) -> usize {
    let before = bed.per_server();
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 1});
    let (status, resp) = bed.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    let after = bed.per_server();
    (0..after.len())
        .find(|i| after[*i] != before[*i])
        .expect("one engine took the request")
}

#[tokio::test]
async fn round_robin_takes_turns() {
    let bed = TestBed::start(3, PolicyKind::RoundRobin).await;
    let mut order = Vec::new();
    for i in 0..9 {
        order.push(served_by(&bed, &format!("q{i}")).await);
    }
    assert_eq!(order[..3], order[3..6], "{order:?}");
    assert_eq!(order[..3], order[6..], "{order:?}");
    assert_eq!(bed.per_server(), [3, 3, 3]);
}

#[tokio::test]
async fn random_picks_independently_not_in_turns() {
    let bed = TestBed::start(2, PolicyKind::Random).await;
    let mut order = Vec::new();
    for i in 0..40 {
        order.push(served_by(&bed, &format!("p{i}")).await);
    }
    assert!(order.contains(&0) && order.contains(&1), "{order:?}");
    // Round robin would alternate strictly; 40 random picks do so with p = 2^-39.
    assert!(
        order.windows(2).any(|w| w[0] == w[1]),
        "a strict rotation is not random: {order:?}"
    );
}

#[tokio::test]
async fn cache_aware_keeps_a_shared_prefix_on_one_worker() {
    let bed = TestBed::start(3, PolicyKind::CacheAware).await;
    let system = prompt_text(1, 1500);
    let mut cached = Vec::new();
    for i in 0..8 {
        let (status, body) = bed
            .post(
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
    let counts = bed.per_server();
    assert!(counts.contains(&8), "all on one worker: {counts:?}");
    assert!(
        cached[1..].iter().all(|c| *c > 1000),
        "engine cache hits after the first: {cached:?}"
    );
    assert!(
        bed.metric(
            "switchyard_policy_decisions_total",
            &[("reason", "cache_hit")]
        )
        .await
            >= 7.0
    );
    assert!(bed.metric("switchyard_prefix_index_hit_ratio", &[]).await > 0.5);
}

#[tokio::test]
async fn cache_aware_spreads_distinct_prefixes() {
    let bed = TestBed::start(3, PolicyKind::CacheAware).await;
    for g in 0..12 {
        let system = prompt_text(100 + g, 400);
        for q in 0..2 {
            let body = chat_with_system(&system, &format!("q{q}"), 1);
            assert_eq!(bed.post("/v1/chat/completions", &body).await.0, 200);
        }
    }
    let counts = bed.per_server();
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
    // Every stream stalls after its first event, so requests pile up on the engines
    // and the in-flight imbalance is there when each routing decision is made.
    let sims = sims(2).await;
    let stall = stalled();
    let bed = TestBed::with(sims, |c| {
        c.policy = PolicyKind::CacheAware;
        c.balance_abs_threshold = 2;
        c.balance_rel_threshold = 1.5;
    })
    .await;
    let system = prompt_text(7, 600);
    let warm = chat_with_system(&system, "warm", 1);
    assert_eq!(bed.post("/v1/chat/completions", &warm).await.0, 200);
    set_faults_everywhere(&bed.sims, &stall);
    let mut held = Vec::new();
    for i in 0..16 {
        let mut body = chat_with_system(&system, &format!("hot {i}"), 4);
        body["stream"] = json!(true);
        let mut r = bed
            .http
            .0
            .post(format!("{}/v1/chat/completions", bed.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.chunk().await.unwrap();
        held.push(r);
    }
    let counts = bed.per_server();
    assert!(
        counts.iter().all(|c| *c >= 3),
        "load spilled to the other worker: {counts:?}"
    );
    assert!(
        bed.metric(
            "switchyard_policy_decisions_total",
            &[("reason", "balance")]
        )
        .await
            >= 1.0
    );
    set_faults_everywhere(&bed.sims, &Faults::default());
    for mut r in held {
        while r.chunk().await.unwrap().is_some() {}
    }
}

#[tokio::test]
async fn consistent_hash_keeps_sessions_and_walks_the_ring_on_failure() {
    let bed = TestBed::with(sims(3).await, |c| {
        c.policy = PolicyKind::ConsistentHash;
        c.health_failure_threshold = 1;
        c.health_success_threshold = 1;
    })
    .await;
    let send = |session: String| async {
        let r = bed
            .http
            .0
            .post(format!("{}/v1/completions", bed.url))
            .header("X-Session-ID", session)
            .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    // Find each session's owner by the counter that moves.
    let mut owner = Vec::new();
    for s in 0..12 {
        let before = bed.per_server();
        for _ in 0..3 {
            send(format!("s{s}")).await;
        }
        let after = bed.per_server();
        let moved: Vec<usize> = (0..3).filter(|i| after[*i] != before[*i]).collect();
        assert_eq!(moved.len(), 1, "session s{s} stayed on one worker");
        assert_eq!(after[moved[0]] - before[moved[0]], 3);
        owner.push(moved[0]);
    }
    let victim = owner[0];
    bed.sims
        .server(victim)
        .set_faults(Faults {
            health_fail: true,
            ..Faults::default()
        })
        .unwrap();
    let victim_url = bed.sims.urls()[victim].clone();
    eventually("the owner to be marked unhealthy", || async {
        !worker_healthy(&bed.http, &bed.gateway, &victim_url).await
    })
    .await;
    for (s, o) in owner.iter().enumerate() {
        let before = bed.per_server();
        send(format!("s{s}")).await;
        let after = bed.per_server();
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
    let sims = sims(2).await;
    set_faults_everywhere(&sims, &stalled());
    let bed = TestBed::with(sims, |c| {
        c.policy = PolicyKind::ConsistentHash;
        c.hash_load_factor = 1.0;
    })
    .await;
    let stream_req = || {
        bed.http
            .0
            .post(format!("{}/v1/completions", bed.url))
            .header("X-Session-ID", "sticky")
            .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": true}))
            .send()
    };
    // Two open streams of the same session: the second exceeds the owner's bound
    // (ceil(1.0 × (1 + 1) / 2) = 1 in flight) and walks to the other worker.
    let mut a = stream_req().await.unwrap();
    a.chunk().await.unwrap();
    let mut b = stream_req().await.unwrap();
    b.chunk().await.unwrap();
    assert_eq!(bed.per_server(), [1, 1]);
    assert_eq!(
        bed.metric("switchyard_policy_decisions_total", &[("reason", "walked")])
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
    let bed = TestBed::with(sims, |c| c.policy = PolicyKind::PowerOfTwo).await;
    // Load engine 0 directly (behind the gateway's back): only its /metrics shows it.
    let busy = bed.sims.urls()[0].clone();
    let mut held = Vec::new();
    for _ in 0..12 {
        let r = bed
            .http
            .0
            .post(format!("{busy}/v1/completions"))
            .json(&json!({"prompt": "x", "max_tokens": 5000, "stream": true}))
            .send()
            .await
            .unwrap();
        held.push(r);
    }
    eventually("the engine queue to be scraped", || async {
        let (_, v) = bed.http.get(&format!("{}/health", bed.url)).await;
        v["workers"][0]["engine_waiting"].as_u64().unwrap_or(0) >= 8
    })
    .await;
    let before = bed.per_server();
    for i in 0..10 {
        let body = json!({"model": MODEL, "prompt": format!("p{i}"), "max_tokens": 1});
        assert_eq!(bed.post("/v1/completions", &body).await.0, 200);
    }
    let after = bed.per_server();
    assert_eq!(after[0], before[0], "nothing routed to the loaded engine");
    assert_eq!(after[1] - before[1], 10);
    drop(held);
}
