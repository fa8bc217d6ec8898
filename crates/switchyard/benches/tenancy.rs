//! Per-request cost of tenancy on the data plane with limits in memory: authenticating
//! the Bearer key (hash, cached lookup, constant-time compare), checking the key's,
//! tenant's and gateway's limits (requests and tokens per minute, concurrency, budget)
//! and settling the ticket with the response's usage (reconciliation, usage counts,
//! metrics). Against the same with no key configured. Target: ≤ 5 µs.
//!
//! cargo bench -p switchyard --bench tenancy

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use serde_json::json;
use switchyard::metrics::Metrics;
use switchyard::state::SystemClock;
use switchyard::tenancy::directory::{Audit, Directory, StaticKey};
use switchyard::tenancy::limiter::OnStoreError;
use switchyard::tenancy::limits::Limits;
use switchyard::tenancy::{Tenancy, TenancyConfig, TokenUsage};
use switchyard_stateful::store::{Store, StoreConfig};

/// Runs a future that never waits (every path here is in memory) to its end.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the in-memory path waited"),
    }
}

/// Limits that never refuse, so every iteration does the whole check and charge.
fn roomy() -> Limits {
    serde_json::from_value(json!({
        "rpm": 1_000_000_000u64, "tpm": 1_000_000_000_000u64,
        "max_concurrent": 1_000_000u64, "token_budget": 1_000_000_000_000_000u64,
        "budget_period": "month"
    }))
    .unwrap()
}

/// Tenancy over an in-memory store; with `keys`, one tenant, one issued key and one
/// static key, every limit set on the key, the tenant and the gateway.
fn tenancy(rt: &tokio::runtime::Runtime, keys: bool) -> (Arc<Tenancy>, Option<(String, String)>) {
    rt.block_on(async {
        let store = Arc::new(
            Store::open(
                &StoreConfig {
                    url: "sqlite::memory:".into(),
                    max_connections: 1,
                    acquire_timeout: Duration::from_secs(5),
                },
                0,
            )
            .await
            .unwrap(),
        );
        let statics = [StaticKey {
            key: "static-key-for-the-benchmark-0123456789".into(),
            tenant: "bench".into(),
        }];
        let dir = Directory::open(
            store,
            Arc::new(SystemClock),
            &[],
            if keys { &statics } else { &[] },
            None,
        )
        .await
        .unwrap();
        let issued = if keys {
            let audit = |action| Audit {
                actor: "bench".into(),
                action,
                target: String::new(),
                detail: json!({}),
            };
            dir.create_tenant(
                &json!({"id": "bench", "limits": roomy()}),
                audit("tenant.create"),
            )
            .await
            .unwrap();
            let (_, secret) = dir
                .create_key(
                    &json!({"tenant": "bench", "limits": roomy()}),
                    audit("key.create"),
                )
                .await
                .unwrap();
            Some((secret, statics[0].key.clone()))
        } else {
            None
        };
        let (t, _) = Tenancy::new(
            dir,
            TenancyConfig {
                global: if keys { roomy() } else { Limits::default() },
                on_store_error: OnStoreError::Open,
                replicas: 1,
                default_max_tokens: 1024,
                auth_failures_per_minute: 20,
                slot_lease: Duration::from_secs(660),
            },
            None,
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
        );
        (t, issued)
    })
}

fn bearer(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let model: Arc<str> = Arc::from("model-a");
    let addr: IpAddr = [10, 0, 0, 1].into();
    let usage = TokenUsage {
        input: 900,
        cached: 512,
        output: 200,
    };
    let mut group = c.benchmark_group("tenancy");
    let mut run = |name: &str, t: &Arc<Tenancy>, headers: HeaderMap| {
        group.bench_function(name, |b| {
            b.iter(|| {
                let caller = ready(t.authenticate(black_box(&headers), Some(addr))).unwrap();
                let cost = t.estimate(3600, Some(256));
                let ticket = ready(t.admit(&caller, &model, cost)).unwrap();
                ticket.finish(&model, Some(usage), true);
            })
        });
    };
    let (open, _) = tenancy(&rt, false);
    run("no keys configured", &open, HeaderMap::new());
    let (keyed, issued) = tenancy(&rt, true);
    let (secret, static_key) = issued.unwrap();
    run(
        "issued key, limits on key+tenant+global",
        &keyed,
        bearer(&secret),
    );
    run(
        "static key, limits on tenant+global",
        &keyed,
        bearer(&static_key),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
