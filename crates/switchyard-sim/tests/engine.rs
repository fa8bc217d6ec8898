//! The engine model seen through the API: prefix caching, LRU eviction, queueing and
//! scheduling policy, batching, preemption, cancellation and data-parallel ranks.

use clap::Parser;
use serde_json::{Value, json};
use switchyard_sim::tokenizer::{encode, render_chat};
use switchyard_sim::{SchedulingPolicy, SimConfig};
use switchyard_testkit::*;

#[tokio::test]
async fn shared_prefix_is_cached_and_lowers_ttft() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let system = prompt_text(3, 2000);
    let req = |q: &str| json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}], "max_tokens": 4});
    let (_, first) = http
        .post(&sim.url(), "/v1/chat/completions", &req("What is alpha?"))
        .await;
    let (_, second) = http
        .post(
            &sim.url(),
            "/v1/chat/completions",
            &req("And what is golf?"),
        )
        .await;
    let a = encode(&render_chat(
        &req("What is alpha?")["messages"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    let b = encode(&render_chat(
        &req("And what is golf?")["messages"]
            .as_array()
            .unwrap()
            .clone(),
    ));
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count() as f64;
    assert!(shared > 1500.0, "shared prefix {shared}");
    assert_eq!(cached_tokens(&first), 0);
    let hit = cached_tokens(&second) as f64;
    assert!(hit >= 0.9 * shared, "cached {hit} of shared {shared}");
    assert!(
        sim_ttft(&second) * 3.0 < sim_ttft(&first),
        "ttft {} vs {}",
        sim_ttft(&second),
        sim_ttft(&first)
    );
    let labels = [("engine", "0")];
    assert_eq!(
        http.metric(&sim.url(), "vllm:prefix_cache_hits_total", &labels)
            .await,
        hit
    );
}

#[tokio::test]
async fn prefix_caching_can_be_disabled() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        no_enable_prefix_caching: true,
        ..fast()
    })
    .await;
    let body = json!({"prompt": prompt_text(4, 300), "max_tokens": 1});
    http.post(&sim.url(), "/v1/completions", &body).await;
    let (_, again) = http.post(&sim.url(), "/v1/completions", &body).await;
    assert_eq!(cached_tokens(&again), 0);
    assert_eq!(
        http.metric(
            &sim.url(),
            "vllm:cache_config_info",
            &[("enable_prefix_caching", "False")]
        )
        .await,
        1.0
    );
}

fn ids(base: u32) -> Vec<u32> {
    (0..320).map(|i| base + i).collect()
}

#[tokio::test]
async fn lru_evicts_the_least_recently_used_prefix() {
    let http = Http::new();
    // 64 blocks of 16 tokens; each prompt is exactly 20 blocks.
    let sim = sims_with(SimConfig {
        num_gpu_blocks: 64,
        max_model_len: 1024,
        max_num_batched_tokens: 1024,
        ..fast()
    })
    .await;
    let url = sim.url();
    let send = |base: u32| {
        let (url, http) = (url.clone(), http.clone());
        async move {
            http.post(
                &url,
                "/v1/completions",
                &json!({"prompt": ids(base), "max_tokens": 1}),
            )
            .await
            .1
        }
    };
    for base in [1000, 2000, 3000] {
        assert_eq!(cached_tokens(&send(base).await), 0);
    }
    // A is used again, so B becomes the least recently used prefix.
    assert_eq!(
        cached_tokens(&send(1000).await),
        304,
        "A fully cached (the last block is recomputed)"
    );
    // D needs 20 blocks: 3 never used, then B's blocks, tail first.
    assert_eq!(cached_tokens(&send(4000).await), 0);
    assert_eq!(cached_tokens(&send(3000).await), 304, "C untouched");
    assert_eq!(cached_tokens(&send(1000).await), 304, "A untouched");
    let b = cached_tokens(&send(2000).await);
    assert!(
        b < 100,
        "B was evicted, only its head blocks may remain: {b}"
    );
}

#[tokio::test]
async fn queueing_raises_ttft() {
    let http = Http::new();
    // One sequence at a time, in real time: a long generation holds the engine for
    // minutes, so the requests below certainly queue behind it.
    let cfg = SimConfig {
        max_num_seqs: 1,
        time_scale: 1.0,
        ..SimConfig::default()
    };
    let base = cfg.step.base_ms * 1e-3;
    let sim = sims_with(cfg).await;
    let url = sim.url();
    let mut holder = http
        .0
        .post(format!("{url}/v1/completions"))
        .json(&json!({"prompt": "hold the engine", "max_tokens": 30000, "stream": true}))
        .send()
        .await
        .unwrap();
    holder.chunk().await.unwrap();
    let mut queued = Vec::new();
    for i in 0..3 {
        let (url, http) = (url.clone(), http.clone());
        queued.push(tokio::spawn(async move {
            http.post(
                &url,
                "/v1/completions",
                &json!({"prompt": format!("question {i}"), "max_tokens": 20}),
            )
            .await
            .1
        }));
    }
    let server = sim.server(0).clone();
    eventually("three requests waiting", || async {
        server.engine_stats().await[0].waiting == 3
    })
    .await;
    // The holder goes away; the three run one after another.
    drop(holder);
    let mut bodies = Vec::new();
    for q in queued {
        bodies.push(q.await.unwrap());
    }
    let mut timing: Vec<(f64, f64)> = bodies
        .iter()
        .map(|b| (sim_ttft(b), b["sim_timing"]["queue_secs"].as_f64().unwrap()))
        .collect();
    timing.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Every one waited; each waited for the ~20 decode steps of every one before it.
    assert!(timing.iter().all(|(_, q)| *q > 0.0), "{timing:?}");
    for w in timing.windows(2) {
        assert!(w[1].0 - w[0].0 >= 19.0 * base, "{timing:?}");
    }
    let queued = http
        .metric(&url, "vllm:request_queue_time_seconds_sum", &[])
        .await;
    assert!(queued > 0.0, "queue time sum {queued}");
}

/// Queues `queued` requests (route, `priority`) one at a time behind a generation that
/// holds a one-slot engine under `policy`, then lets the holder go; returns the indices
/// of `queued` in the order the engine scheduled them (by `sim_timing`).
async fn service_order(policy: SchedulingPolicy, queued: &[(&'static str, i64)]) -> Vec<usize> {
    let http = Http::new();
    // One sequence at a time, in real time: the holder's 30000 tokens keep the engine
    // busy for minutes, so every request below waits until the holder is dropped.
    let sim = sims_with(SimConfig {
        max_num_seqs: 1,
        time_scale: 1.0,
        scheduling_policy: policy,
        ..SimConfig::default()
    })
    .await;
    let url = sim.url();
    let mut holder = http
        .0
        .post(format!("{url}/v1/completions"))
        .json(&json!({"prompt": "hold the engine", "max_tokens": 30000, "stream": true}))
        .send()
        .await
        .unwrap();
    holder.chunk().await.unwrap();
    let server = sim.server(0).clone();
    let mut pending = Vec::new();
    for (i, &(route, priority)) in queued.iter().enumerate() {
        let text = format!("queued request {i}");
        let body = if route == "/v1/chat/completions" {
            json!({"messages": [{"role": "user", "content": text}], "max_tokens": 4, "priority": priority})
        } else {
            json!({"prompt": text, "max_tokens": 4, "priority": priority})
        };
        let (url, http) = (url.clone(), http.clone());
        pending.push(tokio::spawn(
            async move { http.post(&url, route, &body).await },
        ));
        // Each request is in the waiting queue before the next is sent: arrivals are
        // in submission order.
        eventually(&format!("{} request(s) waiting", i + 1), || async {
            server.engine_stats().await[0].waiting == i + 1
        })
        .await;
    }
    drop(holder);
    let mut bodies: Vec<Value> = Vec::new();
    for p in pending {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200, "{body}");
        bodies.push(body);
    }
    let timing = |b: &Value, k: &str| b["sim_timing"][k].as_f64().unwrap();
    let arrivals: Vec<f64> = bodies.iter().map(|b| timing(b, "arrival")).collect();
    assert!(arrivals.is_sorted(), "arrivals {arrivals:?}");
    let mut scheduled: Vec<(f64, usize)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (timing(b, "arrival") + timing(b, "queue_secs"), i))
        .collect();
    scheduled.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        scheduled.windows(2).all(|w| w[0].0 < w[1].0),
        "one slot: one admission per step {scheduled:?}"
    );
    scheduled.into_iter().map(|(_, i)| i).collect()
}

/// Later requests with lower `priority` values, on both generation routes.
const QUEUED: [(&str, i64); 3] = [
    ("/v1/completions", 5),
    ("/v1/chat/completions", 1),
    ("/v1/completions", 0),
];

#[tokio::test]
async fn priority_policy_schedules_lower_priority_values_first() {
    // Were either route to drop `priority`, its request would count as 0 and the order
    // would change (the p1 chat request would tie with p0 and win on arrival).
    assert_eq!(
        service_order(SchedulingPolicy::Priority, &QUEUED).await,
        [2, 1, 0]
    );
}

#[tokio::test]
async fn fcfs_policy_accepts_and_ignores_priority() {
    assert_eq!(
        service_order(SchedulingPolicy::Fcfs, &QUEUED).await,
        [0, 1, 2]
    );
}

#[test]
fn scheduling_policy_flag_defaults_to_fcfs() {
    assert_eq!(
        SimConfig::default().scheduling_policy,
        SchedulingPolicy::Fcfs
    );
    let cfg = SimConfig::parse_from(["switchyard-sim", "--scheduling-policy", "priority"]);
    assert_eq!(cfg.scheduling_policy, SchedulingPolicy::Priority);
    let cfg = SimConfig::parse_from(["switchyard-sim", "--scheduling-policy", "fcfs"]);
    assert_eq!(cfg.scheduling_policy, SchedulingPolicy::Fcfs);
    assert!(SimConfig::try_parse_from(["switchyard-sim", "--scheduling-policy", "lifo"]).is_err());
}

#[tokio::test]
async fn inter_token_latency_grows_with_batch_size() {
    let http = Http::new();
    // Real time, so that the 64 requests sent at once certainly overlap in the engine.
    let sim = sims_with(SimConfig {
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let url = sim.url();
    let itl = |b: &serde_json::Value| {
        let t = &b["sim_timing"];
        (t["e2e_secs"].as_f64().unwrap() - t["ttft_secs"].as_f64().unwrap()) / 49.0
    };
    let (_, alone) = http
        .post(
            &url,
            "/v1/completions",
            &json!({"prompt": prompt_text(9, 500), "max_tokens": 50}),
        )
        .await;
    let reqs = (0..64).map(|i| {
        let (url, http) = (url.clone(), http.clone());
        async move {
            http.post(
                &url,
                "/v1/completions",
                &json!({"prompt": prompt_text(100 + i, 500), "max_tokens": 50}),
            )
            .await
            .1
        }
    });
    let batch = futures_util::future::join_all(reqs).await;
    let mean = batch.iter().map(itl).sum::<f64>() / batch.len() as f64;
    assert!(
        mean > 1.5 * itl(&alone),
        "batched ITL {mean} vs alone {}",
        itl(&alone)
    );
}

#[tokio::test]
async fn chunked_prefill_splits_long_prompts() {
    let http = Http::new();
    // A 2000-token prompt with a 512-token budget needs 4 steps before its first token.
    let cfg = SimConfig {
        max_num_batched_tokens: 512,
        ..fast()
    };
    let step = cfg.step;
    let sim = sims_with(cfg).await;
    let (_, body) = http
        .post(
            &sim.url(),
            "/v1/completions",
            &json!({"prompt": (0..2000).collect::<Vec<u32>>(), "max_tokens": 1}),
        )
        .await;
    let t = sim_ttft(&body) - body["sim_timing"]["queue_secs"].as_f64().unwrap();
    let one_step = step.step_secs(2000, 0, 2000);
    assert!(
        t > one_step + 2.5 * step.base_ms * 1e-3,
        "prefill {t} vs single step {one_step}"
    );
}

#[tokio::test]
async fn preemption_under_cache_pressure_still_completes_every_request() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        num_gpu_blocks: 16,
        max_model_len: 256,
        ..fast()
    })
    .await;
    let url = sim.url();
    let reqs = (0..4).map(|i| {
        let (url, http) = (url.clone(), http.clone());
        async move {
            http.post(&url, "/v1/completions", &json!({"prompt": (0..48).map(|t| t + 1000 * i).collect::<Vec<u32>>(), "max_tokens": 100})).await
        }
    });
    for (status, body) in futures_util::future::join_all(reqs).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 100);
    }
    assert!(http.metric(&url, "vllm:num_preemptions_total", &[]).await > 0.0);
}

#[tokio::test]
async fn client_disconnect_aborts_the_sequence() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        time_scale: 1.0,
        ..SimConfig::default()
    })
    .await;
    let resp = http
        .0
        .post(format!("{}/v1/completions", sim.url()))
        .json(&json!({"prompt": "go on forever", "max_tokens": 30000, "stream": true}))
        .send()
        .await
        .unwrap();
    let mut resp = resp;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(resp);
    let server = sim.server(0).clone();
    eventually("the engine to drop the aborted sequence", || {
        let server = server.clone();
        async move { server.engine_stats().await[0].running == 0 }
    })
    .await;
    assert_eq!(
        http.metric(
            &sim.url(),
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        )
        .await,
        1.0
    );
    assert_eq!(sim.server(0).in_flight(), 0);
}

#[tokio::test]
async fn data_parallel_ranks_have_separate_caches() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        data_parallel_size: 2,
        ..fast()
    })
    .await;
    let url = sim.url();
    let body = json!({"prompt": prompt_text(5, 400), "max_tokens": 1});
    let send = |rank: u32| {
        let (url, body, http) = (url.clone(), body.clone(), http.clone());
        async move {
            let r = http
                .0
                .post(format!("{url}/v1/completions"))
                .header("X-data-parallel-rank", rank)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    assert_eq!(cached_tokens(&send(0).await), 0);
    assert!(cached_tokens(&send(0).await) > 300);
    assert_eq!(cached_tokens(&send(1).await), 0, "rank 1 has its own cache");
    // Each rank reports its own cache's size, as vLLM's engine cores do.
    for rank in ["0", "1"] {
        assert_eq!(
            http.metric(&url, "vllm:cache_config_info", &[("engine", rank)])
                .await,
            1.0,
            "rank {rank}"
        );
    }
    // The body field (SGLang style) picks a rank too.
    let mut b = body.clone();
    b["data_parallel_rank"] = json!(1);
    let (_, r) = http.post(&url, "/v1/completions", &b).await;
    assert!(cached_tokens(&r) > 300);
    assert_eq!(sim.server(0).requests_per_rank(), [2, 2]);
    assert!(
        http.metric(&url, "vllm:prefix_cache_queries_total", &[("engine", "1")])
            .await
            > 0.0
    );
    // Without a rank, requests alternate.
    http.post(
        &url,
        "/v1/completions",
        &json!({"prompt": "a", "max_tokens": 1}),
    )
    .await;
    http.post(
        &url,
        "/v1/completions",
        &json!({"prompt": "a", "max_tokens": 1}),
    )
    .await;
    assert_eq!(sim.server(0).requests_per_rank(), [3, 3]);
}

#[tokio::test]
async fn reset_prefix_cache_forgets_prefixes() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let body = json!({"prompt": prompt_text(6, 300), "max_tokens": 1});
    http.post(&url, "/v1/completions", &body).await;
    let resp = http
        .0
        .post(format!("{url}/reset_prefix_cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, again) = http.post(&url, "/v1/completions", &body).await;
    assert_eq!(cached_tokens(&again), 0);
}

#[tokio::test]
async fn slower_engines_take_longer() {
    let http = Http::new();
    let sim = sims_with(SimConfig {
        engines: 2,
        step_time_multiplier: vec![1.0, 3.0],
        ..fast()
    })
    .await;
    let body = json!({"prompt": prompt_text(7, 1000), "max_tokens": 1});
    let (_, fast) = http.post(&sim.urls()[0], "/v1/completions", &body).await;
    let (_, slow) = http.post(&sim.urls()[1], "/v1/completions", &body).await;
    assert!(
        sim_ttft(&slow) > 2.5 * sim_ttft(&fast),
        "{} vs {}",
        sim_ttft(&slow),
        sim_ttft(&fast)
    );
}
