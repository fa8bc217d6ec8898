//! The response cache over real HTTP (docs/caching.md): deterministic requests answered
//! once by the engine and then from the cache, with identical bodies; what is never
//! cached; `Cache-Control`; tenants kept apart; TTLs on an injected clock (memory) and
//! as Redis TTLs; Redis going away (bypass, never a failure); semantic matching at its
//! threshold; streams replayed as well-formed SSE, and streams that fail or are
//! abandoned not kept; the metrics; malformed cache headers answered 400.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::{Value, json};
use switchyard::config::CacheBackend;
use switchyard::tenancy::directory::{StaticKey, TenantConfig};
use switchyard::{Config, Gateway, PolicyKind};
use switchyard_sim::SimHandle;
use switchyard_testkit::*;

/// This suite's Redis database number at 127.0.0.1:6379.
const REDIS_DB: u32 = 10;

/// A wall clock the test moves by hand.
struct TestClock(AtomicI64);

impl switchyard::state::Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl TestClock {
    fn now() -> Arc<TestClock> {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        Arc::new(TestClock(AtomicI64::new(ms)))
    }

    fn advance_secs(&self, s: i64) {
        self.0.fetch_add(s * 1000, Ordering::SeqCst);
    }
}

/// A gateway with the response cache in front of simulated engines.
struct Gw {
    sims: Arc<SimHandle>,
    gw: Gateway,
    http: reqwest::Client,
}

/// An answer: status, headers, body text.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("(none)")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The `data:` payloads of an SSE answer, checked to be well formed: every event is
    /// one `data: ` line ended by a blank line, and the last is `[DONE]`.
    fn events(&self) -> Vec<String> {
        assert!(self.text.ends_with("\n\n"), "{}", self.text);
        let events: Vec<String> = self
            .text
            .trim_end_matches("\n\n")
            .split("\n\n")
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_string()
            })
            .collect();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        for e in &events[..events.len() - 1] {
            serde_json::from_str::<Value>(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        }
        events
    }
}

fn cached(adjust: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.response_cache = Some(CacheBackend::Memory);
        adjust(c);
    }
}

impl Gw {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Gw {
        Gw::with_clock(
            Arc::new(sims(1).await),
            adjust,
            Arc::new(switchyard::state::SystemClock),
        )
        .await
    }

    async fn with_clock(
        sims: Arc<SimHandle>,
        adjust: impl FnOnce(&mut Config),
        clock: Arc<dyn switchyard::state::Clock>,
    ) -> Gw {
        let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
        adjust(&mut cfg);
        let gw = Gateway::start_with_clock(cfg, clock)
            .await
            .expect("gateway starts");
        Gw {
            sims,
            gw,
            http: reqwest::Client::new(),
        }
    }

    /// Requests the engines have accepted, in all.
    fn engine_requests(&self) -> u64 {
        per_server(&self.sims).iter().sum()
    }

    async fn send(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let mut req = self
            .http
            .post(format!("{}{path}", self.gw.url()))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body read"),
        }
    }

    async fn chat(&self, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.send("/v1/chat/completions", body, headers).await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        Http::new()
            .metric(&metrics_url(&self.gw), name, labels)
            .await
    }
}

/// A deterministic chat request.
fn det(content: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
           "max_tokens": 8, "temperature": 0})
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_answered_once_by_the_engine() {
    let g = Gw::start(cached(|_| {})).await;
    let first = g.chat(&det("what is a switchyard"), &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(g.engine_requests(), 1);
    // Fields that do not change the answer do not change the key; the answer is the
    // same bytes, and the engine is not asked again.
    let mut again = det("what is a switchyard");
    again["user"] = json!("someone-else");
    again["metadata"] = json!({"trace": "x"});
    again["temperature"] = json!(0.0);
    let second = g.chat(&again, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.text, first.text, "identical bodies");
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert!(second.header("age").is_some());
    assert_eq!(g.engine_requests(), 1, "a hit never reaches an engine");
    // Usage reports the original tokens.
    assert_eq!(second.json()["usage"], first.json()["usage"]);
    // A seed makes a sampled request deterministic too.
    let seeded = json!({"model": MODEL, "messages": [{"role": "user", "content": "seeded"}],
                        "max_tokens": 4, "temperature": 0.9, "seed": 7});
    assert_eq!(g.chat(&seeded, &[]).await.x_cache(), "MISS");
    assert_eq!(g.chat(&seeded, &[]).await.x_cache(), "HIT");
    // /v1/completions too, under keys of its own.
    let comp = json!({"model": MODEL, "prompt": "what is a switchyard", "max_tokens": 8, "temperature": 0});
    let c1 = g.send("/v1/completions", &comp, &[]).await;
    assert_eq!((c1.status, c1.x_cache()), (200, "MISS"), "{}", c1.text);
    let c2 = g.send("/v1/completions", &comp, &[]).await;
    assert_eq!((c2.x_cache(), c2.text.as_str()), ("HIT", c1.text.as_str()));
    assert_eq!(g.engine_requests(), 3);
    // What changes the answer changes the key.
    let mut longer = det("what is a switchyard");
    longer["max_tokens"] = json!(9);
    assert_eq!(g.chat(&longer, &[]).await.x_cache(), "MISS");

    // The metrics.
    assert_eq!(
        g.metric(
            "switchyard_response_cache_hits_total",
            &[("route", "chat"), ("kind", "exact")]
        )
        .await,
        2.0
    );
    assert_eq!(
        g.metric(
            "switchyard_response_cache_hits_total",
            &[("route", "completions")]
        )
        .await,
        1.0
    );
    assert_eq!(
        g.metric("switchyard_response_cache_misses_total", &[])
            .await,
        4.0
    );
    assert_eq!(
        g.metric(
            "switchyard_response_cache_stores_total",
            &[("outcome", "stored")]
        )
        .await,
        4.0
    );
    assert_eq!(
        g.metric("switchyard_response_cache_entries", &[]).await,
        4.0
    );
    assert!(g.metric("switchyard_response_cache_bytes", &[]).await > 0.0);
    assert!(
        g.metric("switchyard_response_cache_stored_bytes_total", &[])
            .await
            > 0.0
    );
    assert!(
        g.metric("switchyard_response_cache_latency_saved_seconds_total", &[])
            .await
            > 0.0,
        "each hit adds its entry's engine latency"
    );
    // Hits are answers: counted as 200s with no worker.
    assert_eq!(
        g.metric(
            "switchyard_requests_total",
            &[("route", "chat"), ("worker", ""), ("status", "200")]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn what_is_not_deterministic_is_never_cached_unless_the_client_says_so() {
    let g = Gw::start(cached(|_| {})).await;
    let sampled = chat("tell me a story", 4);
    for _ in 0..2 {
        let a = g.chat(&sampled, &[]).await;
        assert_eq!((a.status, a.x_cache()), (200, "BYPASS"));
    }
    let mut hot = sampled.clone();
    hot["temperature"] = json!(0.8);
    hot["top_p"] = json!(0.9);
    assert_eq!(g.chat(&hot, &[]).await.x_cache(), "BYPASS");
    assert_eq!(g.engine_requests(), 3);
    assert_eq!(
        g.metric(
            "switchyard_response_cache_bypasses_total",
            &[("reason", "not_cacheable")]
        )
        .await,
        3.0
    );

    // max-age makes a sampled request cacheable: the same answer is served again.
    let first = g.chat(&hot, &[("cache-control", "max-age=600")]).await;
    assert_eq!((first.status, first.x_cache()), (200, "MISS"));
    let second = g.chat(&hot, &[("cache-control", "max-age=600")]).await;
    assert_eq!((second.x_cache(), &second.text), ("HIT", &first.text));
    assert_eq!(g.engine_requests(), 4);
    // Without it the same request is still not read from the cache.
    assert_eq!(g.chat(&hot, &[]).await.x_cache(), "BYPASS");

    // no-cache and no-store bypass: neither read nor written.
    let d = det("cache control");
    assert_eq!(g.chat(&d, &[]).await.x_cache(), "MISS");
    let before = g.engine_requests();
    for cc in ["no-cache", "no-store", "max-age=60, No-Cache"] {
        let a = g.chat(&d, &[("cache-control", cc)]).await;
        assert_eq!((a.status, a.x_cache()), (200, "BYPASS"), "{cc}");
    }
    assert_eq!(g.engine_requests(), before + 3);
    assert_eq!(
        g.metric(
            "switchyard_response_cache_bypasses_total",
            &[("reason", "no_cache")]
        )
        .await,
        3.0
    );
    let fresh = det("never stored");
    assert_eq!(
        g.chat(&fresh, &[("cache-control", "no-store")])
            .await
            .x_cache(),
        "BYPASS"
    );
    assert_eq!(g.chat(&fresh, &[]).await.x_cache(), "MISS", "not written");

    // Other routes never carry the header.
    let (status, _) = Http::new()
        .post(
            &g.gw.url(),
            "/v1/embeddings",
            &json!({"model": MODEL, "input": "x"}),
        )
        .await;
    assert_eq!(status, 200);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", g.gw.url()))
        .json(&json!({"model": MODEL, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("x-cache").is_none());
    // Semantic matching is not configured here: its opt-in header is ignored (a sampled
    // request stays uncached).
    let a = g.chat(&sampled, &[("x-cache-semantic", "true")]).await;
    assert_eq!((a.status, a.x_cache()), (200, "BYPASS"));
}

#[tokio::test]
async fn the_key_holds_the_model_chosen_not_the_name_asked_for() {
    let g = Gw::start(cached(|c| c.model_alias = vec![format!("fast={MODEL}")])).await;
    let mut by_alias = det("which model answers");
    by_alias["model"] = json!("fast");
    let first = g.chat(&by_alias, &[]).await;
    assert_eq!(
        (first.status, first.x_cache()),
        (200, "MISS"),
        "{}",
        first.text
    );
    // The same request naming the model itself is the same entry.
    let named = g.chat(&det("which model answers"), &[]).await;
    assert_eq!((named.x_cache(), &named.text), ("HIT", &first.text));
    assert_eq!(g.engine_requests(), 1);
    // An unknown model is refused before the cache (and says so).
    let mut unknown = det("which model answers");
    unknown["model"] = json!("no-such-model");
    let a = g.chat(&unknown, &[]).await;
    assert_eq!((a.status, a.x_cache()), (404, "BYPASS"));
    assert_error(&a.json(), "model_not_found");
}

#[tokio::test]
async fn ttl_and_max_age_run_on_the_injected_clock() {
    let clock = TestClock::now();
    let g = Gw::with_clock(
        Arc::new(sims(1).await),
        cached(|c| c.response_cache_ttl_secs = 60),
        clock.clone(),
    )
    .await;
    let d = det("how long do you keep this");
    assert_eq!(g.chat(&d, &[]).await.x_cache(), "MISS");
    clock.advance_secs(59);
    assert_eq!(
        g.chat(&d, &[]).await.x_cache(),
        "HIT",
        "alive within its TTL"
    );
    // A client's max-age is the oldest answer it takes: this one is 59 s old.
    let stale = g.chat(&d, &[("cache-control", "max-age=30")]).await;
    assert_eq!(stale.x_cache(), "MISS");
    // ... and its fresh answer replaced the old one (age 0 now).
    let a = g.chat(&d, &[("cache-control", "max-age=30")]).await;
    assert_eq!((a.x_cache(), a.header("age")), ("HIT", Some("0")));
    clock.advance_secs(61);
    assert_eq!(g.chat(&d, &[]).await.x_cache(), "MISS", "expired");
    assert_eq!(g.engine_requests(), 3);
    assert_eq!(
        g.metric(
            "switchyard_response_cache_evictions_total",
            &[("reason", "expired")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_memory_cache_is_bounded() {
    let g = Gw::start(cached(|c| {
        c.response_cache_max_entries = 2;
    }))
    .await;
    for q in ["one", "two", "three"] {
        assert_eq!(g.chat(&det(q), &[]).await.x_cache(), "MISS");
    }
    assert_eq!(g.chat(&det("one"), &[]).await.x_cache(), "MISS", "evicted");
    assert_eq!(g.chat(&det("three"), &[]).await.x_cache(), "HIT");
    assert_eq!(
        g.metric(
            "switchyard_response_cache_evictions_total",
            &[("reason", "capacity")]
        )
        .await,
        2.0
    );
    // An answer larger than --response-cache-max-entry-bytes is passed on, not kept.
    let g = Gw::start(cached(|c| c.response_cache_max_entry_bytes = 64)).await;
    let a = g.chat(&det("too big to keep"), &[]).await;
    assert_eq!((a.status, a.x_cache()), (200, "MISS"));
    assert_eq!(g.chat(&det("too big to keep"), &[]).await.x_cache(), "MISS");
    assert_eq!(
        g.metric(
            "switchyard_response_cache_stores_total",
            &[("outcome", "too_large")]
        )
        .await,
        2.0
    );
}

const ACME: &str = "sk-acme-0123456789abcdef";
const GLOBEX: &str = "sk-globex-0123456789abcdef";
const ACME_TOO: &str = "sk-acme-second-0123456789";

#[tokio::test]
async fn tenants_never_share_entries_and_a_hit_still_needs_a_valid_key() {
    let g = Gw::start(cached(|c| {
        for t in ["acme", "globex"] {
            c.tenants.push(TenantConfig {
                id: t.into(),
                name: None,
                limits: Default::default(),
                allowed_models: None,
            });
        }
        for (key, tenant) in [(ACME, "acme"), (GLOBEX, "globex"), (ACME_TOO, "acme")] {
            c.api_keys.push(StaticKey {
                key: key.into(),
                tenant: tenant.into(),
            });
        }
    }))
    .await;
    let d = det("a secret plan");
    let bearer = |k: &str| format!("Bearer {k}");
    let a1 = g.chat(&d, &[("authorization", &bearer(ACME))]).await;
    assert_eq!((a1.status, a1.x_cache()), (200, "MISS"), "{}", a1.text);
    let a2 = g.chat(&d, &[("authorization", &bearer(ACME))]).await;
    assert_eq!(a2.x_cache(), "HIT");
    // Another tenant's identical request misses.
    let b = g.chat(&d, &[("authorization", &bearer(GLOBEX))]).await;
    assert_eq!((b.status, b.x_cache()), (200, "MISS"));
    // Another key of the same tenant shares its tenant's entries.
    let a3 = g.chat(&d, &[("authorization", &bearer(ACME_TOO))]).await;
    assert_eq!(a3.x_cache(), "HIT");
    assert_eq!(g.engine_requests(), 2);
    // No key, or a wrong one: refused before the cache is read.
    for auth in [None, Some("Bearer sk-wrong-0123456789abcdef")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = g.chat(&d, &headers).await;
        assert_eq!((r.status, r.x_cache()), (401, "BYPASS"));
        assert_error(&r.json(), "invalid_api_key");
    }
    assert_eq!(g.engine_requests(), 2);
}

#[tokio::test]
async fn streams_are_replayed_as_well_formed_sse() {
    let g = Gw::start(cached(|_| {})).await;
    let mut s = det("stream me a short answer");
    s["stream"] = json!(true);
    let first = g.chat(&s, &[]).await;
    assert_eq!((first.status, first.x_cache()), (200, "MISS"));
    let first_events = first.events();
    let second = g.chat(&s, &[]).await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(
        second
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(second.events(), first_events);
    assert_eq!(second.text, first.text);
    assert!(
        !second.text.contains("\"usage\":{"),
        "no usage event unless asked"
    );
    // A client asking for usage gets the stream's usage event from the same entry.
    let mut with_usage = s.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let third = g.chat(&with_usage, &[]).await;
    assert_eq!(third.x_cache(), "HIT");
    let events = third.events();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(g.engine_requests(), 1);
    // A stream and a non-stream request are different entries.
    let plain = g.chat(&det("stream me a short answer"), &[]).await;
    assert_eq!(plain.x_cache(), "MISS");
    assert_eq!(g.engine_requests(), 2);
}

#[tokio::test]
async fn a_stream_that_fails_or_is_abandoned_is_not_kept() {
    let g = Gw::start(cached(|_| {})).await;
    let mut s = det("this stream breaks");
    s["stream"] = json!(true);
    // The engine dies after two chunks: the client gets a cut stream.
    set_faults_everywhere(
        &g.sims,
        &switchyard_sim::Faults {
            crash_after_chunks: Some(2),
            ..Default::default()
        },
    );
    let resp = g
        .http
        .post(format!("{}/v1/chat/completions", g.gw.url()))
        .json(&s)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-cache"], "MISS");
    let _ = resp.text().await; // cut short (an error or a partial body)
    // The client goes away after the first chunk.
    let mut abandoned = det("this stream is abandoned");
    abandoned["stream"] = json!(true);
    set_faults_everywhere(&g.sims, &stalled());
    let mut resp = g
        .http
        .post(format!("{}/v1/chat/completions", g.gw.url()))
        .json(&abandoned)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-cache"], "MISS");
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    eventually("the abandoned stream to be settled", || async {
        g.metric(
            "switchyard_response_cache_stores_total",
            &[("outcome", "incomplete")],
        )
        .await
            >= 2.0
    })
    .await;
    set_faults_everywhere(&g.sims, &switchyard_sim::Faults::default());
    // Neither was kept: both are asked of the engine again, and then kept.
    for body in [&s, &abandoned] {
        let a = g.chat(body, &[]).await;
        assert_eq!((a.status, a.x_cache()), (200, "MISS"));
        a.events();
        assert_eq!(g.chat(body, &[]).await.x_cache(), "HIT");
    }
    // An engine error is not kept either.
    set_faults_everywhere(
        &g.sims,
        &switchyard_sim::Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Default::default()
        },
    );
    let d = det("an engine error");
    let failed = g.chat(&d, &[]).await;
    assert_eq!((failed.status, failed.x_cache()), (500, "MISS"));
    set_faults_everywhere(&g.sims, &switchyard_sim::Faults::default());
    assert_eq!(g.chat(&d, &[]).await.x_cache(), "MISS");
}

#[tokio::test]
async fn malformed_cache_headers_are_answered_400_never_5xx() {
    let g = Gw::start(cached(|_| {})).await;
    let d = det("headers");
    for (name, value, param) in [
        ("cache-control", "max-age=abc", "Cache-Control"),
        ("cache-control", "max-age=-5", "Cache-Control"),
        ("cache-control", "max-age", "Cache-Control"),
        ("cache-control", "max-age=1.5", "Cache-Control"),
        ("x-cache-semantic", "maybe", "x-cache-semantic"),
        ("x-cache-semantic", "", "x-cache-semantic"),
    ] {
        let a = g.chat(&d, &[(name, value)]).await;
        assert_eq!(a.status, 400, "{name}: {value}: {}", a.text);
        assert_eq!(a.x_cache(), "BYPASS");
        let body = a.json();
        assert_error(&body, "invalid_request");
        assert_eq!(body["error"]["param"], param);
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // A header that is not ASCII.
    let resp = g
        .http
        .post(format!("{}/v1/chat/completions", g.gw.url()))
        .header(
            "cache-control",
            reqwest::header::HeaderValue::from_bytes(b"max-age=\xff").unwrap(),
        )
        .json(&d)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_error(&resp.json().await.unwrap(), "invalid_request");
    // Directives the cache does not use are ignored; a malformed body is still the
    // usual 400.
    assert_eq!(
        g.chat(&d, &[("cache-control", "no-transform, max-stale=5")])
            .await
            .status,
        200
    );
    let bad = g
        .http
        .post(format!("{}/v1/chat/completions", g.gw.url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["x-cache"], "BYPASS");
    assert_eq!(g.engine_requests(), 1);
    // A gateway without the cache ignores the cache's headers and says nothing.
    let plain = Gw::start(|_| {}).await;
    let a = plain.chat(&d, &[("cache-control", "max-age=abc")]).await;
    assert_eq!(a.status, 200);
    assert!(a.header("x-cache").is_none());
}

/// Unit vectors of `texts` from the simulator's embeddings endpoint, as the gateway
/// computes them.
async fn sim_vectors(url: &str, texts: &[&str]) -> Vec<Vec<f32>> {
    let (status, v) = Http::new()
        .post(
            url,
            "/v1/embeddings",
            &json!({"model": "embedder", "input": texts, "encoding_format": "float"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let mut x: Vec<f32> = d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_f64().unwrap() as f32)
                .collect();
            switchyard::state::cache::normalise(&mut x);
            x
        })
        .collect()
}

#[tokio::test]
async fn a_semantic_hit_at_the_threshold_and_a_miss_below_it() {
    let gen_sims = sims(1).await;
    let embedder = serving("embedder", 1).await;
    let base = "please explain how a railway switchyard sorts freight wagons";
    let near = "please explain how a railway switchyard sorts freight cars";
    let far = "please explain how a railway station sells tickets";
    let v = sim_vectors(&embedder.urls()[0], &[base, near, far]).await;
    let (s_near, s_far) = (
        switchyard::state::cache::cosine(&v[0], &v[1]),
        switchyard::state::cache::cosine(&v[0], &v[2]),
    );
    assert!(s_far < s_near - 0.01, "{s_far} {s_near}");
    // The threshold is the near prompt's similarity (less a rounding margin).
    let threshold = f64::from(s_near) - 1e-5;
    let mut urls = gen_sims.urls();
    urls.extend(embedder.urls());
    let g = Gw::with_clock(
        Arc::new(gen_sims),
        cached(move |c| {
            c.worker_urls = urls;
            c.embedding_model = Some("embedder".into());
            c.response_cache_semantic_threshold = Some(threshold);
        }),
        Arc::new(switchyard::state::SystemClock),
    )
    .await;
    let ask = |q: &str| {
        json!({"model": MODEL, "max_tokens": 8, "temperature": 0.7, "messages": [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": q}]})
    };
    let on = [("x-cache-semantic", "true")];
    let first = g.chat(&ask(base), &on).await;
    assert_eq!(
        (first.status, first.x_cache()),
        (200, "MISS"),
        "{}",
        first.text
    );
    let hit = g.chat(&ask(near), &on).await;
    assert_eq!(hit.x_cache(), "HIT", "{}", hit.text);
    assert_eq!(hit.text, first.text, "the cached answer, as it was");
    let similarity: f32 = hit.header("x-cache-similarity").unwrap().parse().unwrap();
    assert!((similarity - s_near).abs() < 1e-3, "{similarity} {s_near}");
    assert_eq!(g.engine_requests(), 1, "the generation engine asked once");
    // Below the threshold: a miss.
    let miss = g.chat(&ask(far), &on).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert!(miss.header("x-cache-similarity").is_none());
    // Without opting in, a similar (sampled) request is not looked up at all.
    assert_eq!(g.chat(&ask(near), &[]).await.x_cache(), "BYPASS");
    // Only within the same system prompt and parameters.
    let mut other_system = ask(near);
    other_system["messages"][0]["content"] = json!("You answer at length.");
    assert_eq!(g.chat(&other_system, &on).await.x_cache(), "MISS");
    let mut other_params = ask(near);
    other_params["max_tokens"] = json!(9);
    assert_eq!(g.chat(&other_params, &on).await.x_cache(), "MISS");
    assert_eq!(g.engine_requests(), 5);
    assert_eq!(
        g.metric(
            "switchyard_response_cache_hits_total",
            &[("kind", "semantic")]
        )
        .await,
        1.0
    );
    assert!(
        g.metric("switchyard_response_cache_semantic_vectors", &[])
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn redis_holds_entries_with_their_ttl_for_every_replica() {
    let keys = RedisKeys::new(REDIS_DB, "cache-shared");
    let sims = Arc::new(sims(1).await);
    let adjust = |c: &mut Config| {
        c.response_cache = Some(CacheBackend::Redis);
        c.redis_url = Some(keys.url.clone());
        c.redis_key_prefix = keys.prefix.clone();
        c.response_cache_ttl_secs = 120;
    };
    let clock: Arc<dyn switchyard::state::Clock> = Arc::new(switchyard::state::SystemClock);
    let a = Gw::with_clock(sims.clone(), adjust, clock.clone()).await;
    let b = Gw::with_clock(sims.clone(), adjust, clock).await;
    let d = det("shared between replicas");
    let first = a.chat(&d, &[]).await;
    assert_eq!(first.x_cache(), "MISS");
    // Redis is written in the background: the entry appears shortly after.
    let redis = redis::Client::open(keys.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:cache:*", keys.prefix);
    eventually("the entry in Redis", || {
        let (mut conn, pattern) = (conn.clone(), pattern.clone());
        async move {
            let found: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            found.len() == 1
        }
    })
    .await;
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&found[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
    // The other replica answers from it, the same bytes.
    let hit = b.chat(&d, &[]).await;
    assert_eq!((hit.x_cache(), &hit.text), ("HIT", &first.text));
    assert_eq!(a.chat(&d, &[]).await.x_cache(), "HIT");
    assert_eq!(per_server(&sims).iter().sum::<u64>(), 1);
    // Streams too.
    let mut s = det("a shared stream");
    s["stream"] = json!(true);
    let first = a.chat(&s, &[]).await;
    first.events();
    let b_ref = &b;
    let s_ref = &s;
    eventually("the stream in Redis", || async move {
        b_ref.chat(s_ref, &[]).await.x_cache() == "HIT"
    })
    .await;
    let replay = b.chat(&s, &[]).await;
    assert_eq!(replay.text, first.text);
    // Entries expire with their Redis TTL: one expired by Redis is a miss.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&found[0])
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("Redis to expire the entry", || {
        let (mut conn, key) = (conn.clone(), found[0].clone());
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 0
        }
    })
    .await;
    assert_eq!(b.chat(&d, &[]).await.x_cache(), "MISS");
}

#[tokio::test]
async fn a_redis_that_goes_away_is_bypassed_and_requests_still_succeed() {
    let mut own = OwnRedis::start(free_port());
    own.ready().await;
    let url = own.url();
    let g = Gw::start(move |c| {
        c.response_cache = Some(CacheBackend::Redis);
        c.redis_url = Some(url);
        c.response_cache_timeout_ms = 200;
    })
    .await;
    let d = det("while redis lives");
    assert_eq!(g.chat(&d, &[]).await.x_cache(), "MISS");
    eventually("a hit from Redis", || async {
        g.chat(&d, &[]).await.x_cache() == "HIT"
    })
    .await;
    own.stop();
    let mut s = det("while redis is gone");
    s["stream"] = json!(true);
    for body in [&d, &s] {
        let a = g.chat(body, &[]).await;
        assert_eq!((a.status, a.x_cache()), (200, "BYPASS"), "{}", a.text);
        if body["stream"] == true {
            a.events();
        } else {
            assert!(a.json()["choices"][0]["message"].is_object());
        }
    }
    assert!(
        g.metric(
            "switchyard_response_cache_bypasses_total",
            &[("reason", "backend_error")]
        )
        .await
            >= 2.0
    );
    assert!(
        g.metric("switchyard_response_cache_errors_total", &[("op", "get")])
            .await
            >= 2.0
    );
    // A Redis that was never there: the same.
    let closed = format!("redis://127.0.0.1:{}/0", free_port());
    let g = Gw::start(move |c| {
        c.response_cache = Some(CacheBackend::Redis);
        c.redis_url = Some(closed);
    })
    .await;
    let a = g.chat(&d, &[]).await;
    assert_eq!((a.status, a.x_cache()), (200, "BYPASS"));
}

/// The final Response object of a streamed Responses answer (`response.completed`, or
/// `response.incomplete` when it reached `max_output_tokens`).
fn completed_response(text: &str) -> Value {
    let last = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|e| e["type"] == "response.completed" || e["type"] == "response.incomplete")
        .unwrap_or_else(|| panic!("no final event in {text}"));
    last["response"].clone()
}

#[tokio::test]
async fn a_response_that_keeps_nothing_is_answered_from_the_cache() {
    let g = Gw::start(cached(|c| c.database_url = Some("sqlite::memory:".into()))).await;
    let body = json!({"model": MODEL, "input": "what is a switchyard", "store": false,
                      "temperature": 0, "max_output_tokens": 16});
    let text = |r: &Value| r["output"][0]["content"][0]["text"].clone();
    let first = g.send("/v1/responses", &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let asked = g.engine_requests();
    let second = g.send("/v1/responses", &body, &[]).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(
        g.engine_requests(),
        asked,
        "the engine call came from the cache"
    );
    let (a, b) = (first.json(), second.json());
    assert_eq!(text(&b), text(&a));
    assert!(text(&a).is_string());
    assert_ne!(a["id"], b["id"], "a response of its own");
    assert_eq!(b["usage"], a["usage"]);
    // Streamed: the cached chunks make a well-formed stream of events.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let s1 = g.send("/v1/responses", &streamed, &[]).await;
    let asked = g.engine_requests();
    let s2 = g.send("/v1/responses", &streamed, &[]).await;
    assert_eq!(
        g.engine_requests(),
        asked,
        "the streamed engine call came from the cache"
    );
    let (r1, r2) = (completed_response(&s1.text), completed_response(&s2.text));
    assert_eq!((&r2["status"], text(&r2)), (&a["status"], text(&r1)));
    assert_eq!(text(&r1), text(&a));
    assert!(r2["usage"]["output_tokens"].as_u64().unwrap() > 0);
    // A stored response, or a sampled one, is the engine's every time.
    for change in [json!({"store": true}), json!({"temperature": 0.8})] {
        let mut b = body.clone();
        for (k, v) in change.as_object().unwrap() {
            b[k] = v.clone();
        }
        let before = g.engine_requests();
        for _ in 0..2 {
            assert_eq!(g.send("/v1/responses", &b, &[]).await.status, 200);
        }
        assert_eq!(g.engine_requests(), before + 2, "{change}");
    }
    assert_eq!(
        g.metric(
            "switchyard_response_cache_hits_total",
            &[("route", "chat"), ("kind", "exact")]
        )
        .await,
        2.0
    );
}
