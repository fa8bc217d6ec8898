//! Per-request selection cost: filtering candidates and picking one with cache_aware,
//! with 64 workers across 4 models, for prompts from 1 KB to 64 KB against a warm
//! prefix index. Selection is O(prompt blocks + workers), not their product.
//!
//! cargo bench -p switchyard --bench selection

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use switchyard::fleet::{BreakerConfig, Registry, Worker, WorkerRole};
use switchyard::request::{RequestView, Route, SessionHeaders};
use switchyard::routing::Policies;
use switchyard::{Config, PolicyKind};

fn fleet(models: usize, per_model: usize) -> Registry {
    let breaker = BreakerConfig {
        enabled: true,
        failure_threshold: 5,
        success_threshold: 2,
        timeout: Duration::from_secs(30),
        window: Duration::from_secs(60),
    };
    let mut workers = Vec::new();
    for m in 0..models {
        for i in 0..per_model {
            let w = Worker::new(
                &format!("http://10.0.{m}.{i}:8000"),
                None,
                WorkerRole::Regular,
                breaker.clone(),
            )
            .unwrap();
            w.set_healthy(true);
            w.set_models(vec![format!("model-{m}")]);
            workers.push(Arc::new(w));
        }
    }
    Registry::new(workers)
}

fn request(prompt_bytes: usize, variant: usize, model: usize) -> RequestView {
    let text: String =
        "lorem ipsum dolor sit amet ".repeat(prompt_bytes / 27 + 1)[..prompt_bytes].to_string();
    let body = serde_json::json!({"model": format!("model-{model}"), "messages": [
        {"role": "system", "content": text}, {"role": "user", "content": format!("question {variant}")}]});
    RequestView::parse(
        Route::Chat,
        &HeaderMap::new(),
        body.to_string().as_bytes(),
        64,
        &SessionHeaders::default(),
    )
    .unwrap()
}

fn selection(c: &mut Criterion) {
    let registry = fleet(4, 16);
    let policies = Policies::new(&Config {
        policy: PolicyKind::CacheAware,
        ..Config::default()
    })
    .unwrap();
    let mut group = c.benchmark_group("select_cache_aware_64_workers_4_models");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for bytes in [1_024, 8_192, 65_536] {
        // Warm the index: 200 distinct prompts of this size per model, routed once.
        let mut warm = Vec::new();
        for m in 0..4 {
            let policy = policies.for_model(&Arc::from(format!("model-{m}").as_str()));
            for v in 0..200 {
                let view = request(bytes, v, m);
                let cands = registry.candidates(&view.model);
                let pick = policy.pick(&cands, &view).unwrap();
                policy.on_routed(&cands[pick.index], &view);
                warm.push(view);
            }
        }
        let views: Vec<RequestView> = (0..64).map(|v| request(bytes, v * 3, v % 4)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(bytes), &views, |b, views| {
            let mut i = 0;
            b.iter(|| {
                let view = &views[i % views.len()];
                i += 1;
                let policy = policies.for_model(&view.model);
                let cands = registry.candidates(&view.model);
                let pick = policy.pick(black_box(&cands), black_box(view)).unwrap();
                policy.on_routed(&cands[pick.index], view);
                black_box(pick)
            })
        });
    }
    group.finish();

    // The same 8 KB prompts with 4 to 64 workers per model: the cost barely moves.
    let mut by_fleet = c.benchmark_group("select_cache_aware_8k_by_workers_per_model");
    by_fleet
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for per_model in [4, 16, 64] {
        let registry = fleet(4, per_model);
        let policies = Policies::new(&Config {
            policy: PolicyKind::CacheAware,
            ..Config::default()
        })
        .unwrap();
        let views: Vec<RequestView> = (0..64).map(|v| request(8_192, v, v % 4)).collect();
        for view in &views {
            let policy = policies.for_model(&view.model);
            let cands = registry.candidates(&view.model);
            let pick = policy.pick(&cands, view).unwrap();
            policy.on_routed(&cands[pick.index], view);
        }
        by_fleet.bench_with_input(
            BenchmarkId::from_parameter(per_model),
            &views,
            |b, views| {
                let mut i = 0;
                b.iter(|| {
                    let view = &views[i % views.len()];
                    i += 1;
                    let policy = policies.for_model(&view.model);
                    let cands = registry.candidates(&view.model);
                    let pick = policy.pick(black_box(&cands), black_box(view)).unwrap();
                    policy.on_routed(&cands[pick.index], view);
                    black_box(pick)
                })
            },
        );
    }
    by_fleet.finish();

    let mut parse = c.benchmark_group("parse_request_view");
    parse
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for bytes in [1_024, 65_536] {
        let text: String =
            "lorem ipsum dolor sit amet ".repeat(bytes / 27 + 1)[..bytes].to_string();
        let body = serde_json::json!({"model": "model-0", "messages": [{"role": "user", "content": text}]}).to_string();
        parse.bench_with_input(BenchmarkId::from_parameter(bytes), &body, |b, body| {
            b.iter(|| {
                RequestView::parse(
                    Route::Chat,
                    &HeaderMap::new(),
                    black_box(body.as_bytes()),
                    64,
                    &SessionHeaders::default(),
                )
                .unwrap()
            })
        });
    }
    parse.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
