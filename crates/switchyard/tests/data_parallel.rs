//! Data-parallel ranks: each rank of an engine is its own routing candidate, addressed
//! with `X-data-parallel-rank`, with its own cache.

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::SimConfig;

async fn dp_sim() -> switchyard_sim::SimHandle {
    sims_with(SimConfig {
        data_parallel_size: 2,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await
}

#[tokio::test]
async fn each_rank_is_a_candidate_with_its_own_cache() {
    let sim = dp_sim().await;
    let mut cfg = config(sim.urls(), PolicyKind::RoundRobin);
    cfg.dp_size = 2;
    let gw = gateway(cfg).await;
    let prompt = json!({"model": MODEL, "prompt": system_prompt(3, 400), "max_tokens": 1});
    let mut cached = Vec::new();
    for _ in 0..4 {
        let (status, body) = post(&gw.url(), "/v1/completions", &prompt).await;
        assert_eq!(status, 200, "{body}");
        cached.push(
            body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        );
    }
    // Round robin alternates ranks: each rank's first sight of the prompt is a miss.
    assert_eq!(cached[0], 0);
    assert_eq!(cached[1], 0, "rank 1 does not share rank 0's cache");
    assert!(cached[2] > 300 && cached[3] > 300, "{cached:?}");
    assert_eq!(
        sim.server(0).requests_per_rank(),
        [2, 2],
        "the rank header reached the engine"
    );
    let health: Value = client()
        .get(format!("{}/health", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ranks: Vec<&Value> = health["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| &w["dp_rank"])
        .collect();
    assert_eq!(ranks, [&json!(0), &json!(1)]);
    let worker = format!("{}#dp1", sim.url());
    assert_eq!(
        metric(
            &metrics_url(&gw),
            "switchyard_requests_total",
            &[("worker", &worker)]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn cache_aware_keeps_a_prefix_on_one_rank() {
    let sim = dp_sim().await;
    let mut cfg = config(sim.urls(), PolicyKind::CacheAware);
    cfg.dp_size = 2;
    let gw = gateway(cfg).await;
    let system = system_prompt(8, 600);
    for i in 0..6 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/chat/completions",
                &chat_with_system(&system, &format!("q{i}"), 1)
            )
            .await
            .0,
            200
        );
    }
    let per_rank = sim.server(0).requests_per_rank();
    assert!(per_rank.contains(&6), "{per_rank:?}");
}
