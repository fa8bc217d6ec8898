//! Per-request cost of the `select_worker` phase (the model's candidates from the
//! registry, the cache_aware pick, the lease and the prefix-index update), with 64
//! workers across 4 models, for prompts from 1 KB to 64 KB against a warm prefix index;
//! and of parsing a request with its prompt hashed. Selection is O(prompt blocks +
//! workers), not their product.
//!
//! cargo bench -p switchyard --bench selection

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use switchyard::fleet::{BreakerConfig, Registry, Worker, WorkerRole, WorkerSettings};
use switchyard::metrics::Metrics;
use switchyard::request::{RequestView, Route, SessionHeaders};
use switchyard::routing::prefix::BlockHasher;
use switchyard::routing::{Selected, WorkerSelector};
use switchyard::upstream::EngineUrl;
use switchyard::{Config, PolicyKind};

/// `models` × `per_model` healthy workers and a cache_aware selector over them.
fn fleet(models: usize, per_model: usize) -> Arc<WorkerSelector> {
    let settings = WorkerSettings {
        breaker: BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            success_threshold: 2,
            timeout: Duration::from_secs(30),
            window: Duration::from_secs(60),
        },
        passive_failure_threshold: 3,
    };
    let registry = Arc::new(Registry::default());
    for m in 0..models {
        for i in 0..per_model {
            let url = EngineUrl::parse(&format!("http://10.0.{m}.{i}:8000")).unwrap();
            let w = Arc::new(Worker::new(&url, None, WorkerRole::Regular, &settings));
            w.set_healthy(true);
            registry.add(w.clone());
            registry.set_models(&w, vec![format!("model-{m}")]);
        }
    }
    let cfg = Config {
        policy: PolicyKind::CacheAware,
        ..Config::default()
    };
    WorkerSelector::new(
        &cfg,
        registry,
        Arc::new(Metrics::new()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

fn parse(body: &[u8]) -> RequestView {
    let mut hasher = BlockHasher::new(64);
    let mut view = RequestView::parse(
        Route::Chat,
        &HeaderMap::new(),
        body,
        &SessionHeaders::default(),
        &mut hasher,
    )
    .unwrap();
    view.prefix_blocks = hasher.finish();
    view
}

fn request(prompt_bytes: usize, variant: usize, model: usize) -> RequestView {
    let text: String =
        "lorem ipsum dolor sit amet ".repeat(prompt_bytes / 27 + 1)[..prompt_bytes].to_string();
    let body = serde_json::json!({"model": format!("model-{model}"), "messages": [
        {"role": "system", "content": text}, {"role": "user", "content": format!("question {variant}")}]});
    parse(body.to_string().as_bytes())
}

/// One `select_worker`: pick and lease (the lease is released at once).
fn select(selector: &WorkerSelector, view: &RequestView) {
    match selector.select(WorkerRole::Regular, view, &[]) {
        Selected::Assigned(a) => drop(black_box(a)),
        _ => panic!("every model has healthy workers"),
    }
}

fn selection(c: &mut Criterion) {
    let selector = fleet(4, 16);
    let mut group = c.benchmark_group("select_cache_aware_64_workers_4_models");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for bytes in [1_024, 8_192, 65_536] {
        // Warm the index: 200 distinct prompts of this size per model, routed once.
        for m in 0..4 {
            for v in 0..200 {
                select(&selector, &request(bytes, v, m));
            }
        }
        let views: Vec<RequestView> = (0..64).map(|v| request(bytes, v * 3, v % 4)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(bytes), &views, |b, views| {
            let mut i = 0;
            b.iter(|| {
                let view = &views[i % views.len()];
                i += 1;
                select(&selector, black_box(view))
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
        let selector = fleet(4, per_model);
        let views: Vec<RequestView> = (0..64).map(|v| request(8_192, v, v % 4)).collect();
        for view in &views {
            select(&selector, view);
        }
        by_fleet.bench_with_input(
            BenchmarkId::from_parameter(per_model),
            &views,
            |b, views| {
                let mut i = 0;
                b.iter(|| {
                    let view = &views[i % views.len()];
                    i += 1;
                    select(&selector, black_box(view))
                })
            },
        );
    }
    by_fleet.finish();

    let mut parsing = c.benchmark_group("parse_request_view");
    parsing
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for bytes in [1_024, 65_536] {
        let text: String =
            "lorem ipsum dolor sit amet ".repeat(bytes / 27 + 1)[..bytes].to_string();
        let body = serde_json::json!({"model": "model-0", "messages": [{"role": "user", "content": text}]}).to_string();
        parsing.bench_with_input(BenchmarkId::from_parameter(bytes), &body, |b, body| {
            b.iter(|| parse(black_box(body.as_bytes())))
        });
    }
    parsing.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
