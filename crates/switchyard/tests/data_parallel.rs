//! Data-parallel ranks: each rank of an engine is its own routing candidate, addressed
//! with `X-data-parallel-rank`, with its own cache.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::SimConfig;
use switchyard_testkit::*;

async fn dp_bed(policy: PolicyKind) -> TestBed {
    let sim = sims_with(SimConfig {
        data_parallel_size: 2,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    TestBed::with(sim, |c| {
        c.policy = policy;
        c.dp_size = 2;
    })
    .await
}

#[tokio::test]
async fn each_rank_is_a_candidate_with_its_own_cache() {
    let bed = dp_bed(PolicyKind::RoundRobin).await;
    let prompt = json!({"model": MODEL, "prompt": prompt_text(3, 400), "max_tokens": 1});
    let mut cached = Vec::new();
    for _ in 0..4 {
        let (status, body) = bed.post("/v1/completions", &prompt).await;
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
        bed.sims.server(0).requests_per_rank(),
        [2, 2],
        "the rank header reached the engine"
    );
    let (_, health) = bed.http.get(&format!("{}/health", bed.url)).await;
    let ranks: Vec<&Value> = health["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| &w["dp_rank"])
        .collect();
    assert_eq!(ranks, [&json!(0), &json!(1)]);
    let worker = format!("{}#dp1", bed.sims.url());
    assert_eq!(
        bed.metric("switchyard_requests_total", &[("worker", &worker)])
            .await,
        2.0
    );
}

#[tokio::test]
async fn cache_aware_keeps_a_prefix_on_one_rank() {
    let bed = dp_bed(PolicyKind::CacheAware).await;
    let system = prompt_text(8, 600);
    for i in 0..6 {
        let body = chat_with_system(&system, &format!("q{i}"), 1);
        assert_eq!(bed.post("/v1/chat/completions", &body).await.0, 200);
    }
    let per_rank = bed.sims.server(0).requests_per_rank();
    assert!(per_rank.contains(&6), "{per_rank:?}");
}
