//! KV-cache events: the simulator's, read by an independent consumer written against
//! vLLM's wire format (contract/test_kv_events.py: pyzmq and msgspec), and the gateway's
//! precise prefix routing built on them.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::SimConfig;
use switchyard_sim::kv_events::{HashAlgo, KvEventsConfig};
use switchyard_stateful::testing::run_contract_script;
use switchyard_testkit::*;

/// Events published on loopback, with replay, on ports the system picks.
fn kv_config(topic: &str) -> KvEventsConfig {
    KvEventsConfig {
        enable_kv_cache_events: true,
        publisher: "zmq".into(),
        endpoint: "tcp://127.0.0.1:0".into(),
        replay_endpoint: Some("tcp://127.0.0.1:0".into()),
        topic: topic.into(),
        ..KvEventsConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_events_are_vllms_wire_format_read_by_an_independent_decoder() {
    // 64 blocks of 16 tokens: eight ~500-token prompts evict each other.
    let sim = sims_with(SimConfig {
        time_scale: 100.0,
        num_gpu_blocks: 64,
        max_model_len: 1024,
        prefix_caching_hash_algo: HashAlgo::Sha256Cbor,
        kv_events_config: Some(kv_config("kv@sim@m")),
        ..SimConfig::default()
    })
    .await;
    let (pub_ep, replay_ep) = sim.server(0).kv_events_endpoints().remove(0);
    let url = sim.url();
    let out = tokio::task::spawn_blocking(move || {
        run_contract_script(
            "test_kv_events.py",
            &[
                ("SIM_URL", url),
                ("SIM_MODEL", MODEL.into()),
                ("SIM_KV_ENDPOINT", pub_ep),
                ("SIM_KV_REPLAY", replay_ep.unwrap()),
                ("SIM_TOPIC", "kv@sim@m".into()),
                ("SIM_BLOCK_SIZE", "16".into()),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "contract/test_kv_events.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

/// Engines with small caches (64 blocks of 16 tokens) publishing events with replay.
async fn small_engines(n: usize) -> switchyard_sim::SimHandle {
    sims_with(SimConfig {
        engines: n,
        time_scale: 100.0,
        num_gpu_blocks: 64,
        max_model_len: 1024,
        kv_events_config: Some(kv_config("")),
        ..SimConfig::default()
    })
    .await
}

/// A precise_prefix gateway subscribed to every engine of `sims`.
fn precise(sims: &switchyard_sim::SimHandle, c: &mut switchyard::Config) {
    c.policy = PolicyKind::PrecisePrefix;
    for (url, server) in sims.urls().iter().zip(sims.servers()) {
        let (live, replay) = server.kv_events_endpoints().remove(0);
        c.kv_events_endpoint.push(format!("{url}={live}"));
        c.kv_events_replay_endpoint
            .push(format!("{url}={}", replay.unwrap()));
    }
}

/// A ~480-token prompt of its own words.
fn prompt(tag: &str) -> Value {
    let words: Vec<String> = (0..120).map(|j| format!("{tag}w{j}")).collect();
    json!({"model": MODEL, "prompt": words.join(" "), "max_tokens": 1})
}

/// What the gateway's admin API says about each engine's KV-event stream, by URL.
async fn streams(http: &Http, gw: &switchyard::Gateway) -> Vec<(String, Value)> {
    admin_workers(http, gw).await["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["url"].as_str().unwrap().to_string(),
                w["kv_events"].clone(),
            )
        })
        .collect()
}

/// Waits until `gw` holds, for every engine, as many blocks as the engine caches: every
/// event published so far has been applied.
async fn in_step(http: &Http, gw: &switchyard::Gateway, sims: &switchyard_sim::SimHandle) {
    eventually(
        "the gateway's KV index to match the engines' caches",
        || async {
            let seen = streams(http, gw).await;
            for (i, server) in sims.servers().iter().enumerate() {
                let truth = server.engine_stats().await[0].cached_blocks as u64;
                let url = &sims.urls()[i];
                let Some((_, s)) = seen.iter().find(|(u, _)| u == url) else {
                    return false;
                };
                if s["stream"] != "live" || s["blocks"].as_u64() != Some(truth) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Which engine of `sims` served the one request sent since `before`.
fn served(sims: &switchyard_sim::SimHandle, before: &[u64]) -> usize {
    let now = per_server(sims);
    let moved: Vec<usize> = (0..now.len()).filter(|&i| now[i] != before[i]).collect();
    assert_eq!(
        moved.len(),
        1,
        "one engine served it: {before:?} -> {now:?}"
    );
    moved[0]
}

/// The engine the gateway last sent a prompt to has since evicted it (another client
/// filled its cache) and the other engine now holds it: precise_prefix, reading the
/// engines' events, sends the prompt where it is cached, on two gateway replicas alike;
/// cache_aware, which remembers where it sent the prompt, sends it to the engine that
/// lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precise_routing_follows_evictions_that_cache_aware_cannot_see() {
    let sims = small_engines(2).await;
    let http = Http::new();
    let mut c1 = config(sims.urls(), PolicyKind::RoundRobin);
    precise(&sims, &mut c1);
    let mut c2 = c1.clone();
    let g1 = gateway(c1).await;
    let g2 = gateway(c2.clone()).await;
    c2.policy = PolicyKind::CacheAware;
    c2.kv_events_endpoint.clear();
    c2.kv_events_replay_endpoint.clear();
    let approx = gateway(c2).await;
    in_step(&http, &g1, &sims).await;
    in_step(&http, &g2, &sims).await;

    // cache_aware sends P somewhere: engine x.
    let p = prompt("P");
    let before = per_server(&sims);
    let (status, _) = http.post(&approx.url(), "/v1/completions", &p).await;
    assert_eq!(status, 200);
    let x = served(&sims, &before);
    let y = 1 - x;
    // Another client puts P on y, and fills x's cache until P is evicted there (LRU:
    // 4 prompts of ~30 blocks each through a 64-block cache).
    let direct = |i: usize, body: Value| {
        let (http, url) = (http.clone(), sims.urls()[i].clone());
        async move { assert_eq!(http.post(&url, "/v1/completions", &body).await.0, 200) }
    };
    direct(y, p.clone()).await;
    for k in 0..4 {
        direct(x, prompt(&format!("F{k}"))).await;
    }
    in_step(&http, &g1, &sims).await;
    in_step(&http, &g2, &sims).await;

    for gw in [&g1, &g2] {
        let before = per_server(&sims);
        let (status, body) = http.post(&gw.url(), "/v1/completions", &p).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            served(&sims, &before),
            y,
            "precise_prefix follows the cache"
        );
        let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(
            cached_tokens(&body) + 16 > prompt_tokens,
            "served from cache: {body}"
        );
    }
    let before = per_server(&sims);
    let (status, body) = http.post(&approx.url(), "/v1/completions", &p).await;
    assert_eq!(status, 200);
    assert_eq!(
        served(&sims, &before),
        x,
        "cache_aware goes where it sent P"
    );
    assert_eq!(cached_tokens(&body), 0, "and finds it evicted");
    let hits = http
        .metric(
            &metrics_url(&g1),
            "switchyard_policy_decisions_total",
            &[("reason", "kv_hit")],
        )
        .await;
    assert!(hits >= 1.0, "decisions say kv_hit: {hits}");
}

/// Each model tokenises with its own tokenizer (`models:` `kv_tokenizer`): the engines
/// serve one model under two names and encode with cl100k. The model left on the
/// default (cl100k) finds the prompt the engine cached; the one configured with o200k
/// computes other blocks and finds nothing. A model whose tokenizer cannot be loaded
/// stops the gateway at start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_tokenises_with_its_own_tokenizer() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 100.0,
        num_gpu_blocks: 64,
        max_model_len: 1024,
        served_model_name: vec![MODEL.into(), "alias".into()],
        kv_events_config: Some(kv_config("")),
        ..SimConfig::default()
    })
    .await;
    let http = Http::new();
    let mut c = config(sims.urls(), PolicyKind::RoundRobin);
    precise(&sims, &mut c);
    c.models.insert(
        "alias".into(),
        switchyard::config::ModelSettings {
            policy: Some(PolicyKind::PrecisePrefix),
            kv_tokenizer: Some("tiktoken:o200k_base".into()),
            ..Default::default()
        },
    );
    let mut bad = c.clone();
    let gw = gateway(c).await;
    in_step(&http, &gw, &sims).await;
    let hits = || async {
        http.metric(
            &metrics_url(&gw),
            "switchyard_policy_decisions_total",
            &[("policy", "precise_prefix"), ("reason", "kv_hit")],
        )
        .await
    };
    let p = prompt("T");
    assert_eq!(http.post(&gw.url(), "/v1/completions", &p).await.0, 200);
    in_step(&http, &gw, &sims).await;
    let before = hits().await;
    // The same prompt under the o200k model: its blocks are not the engine's.
    let mut aliased = p.clone();
    aliased["model"] = json!("alias");
    let (status, body) = http.post(&gw.url(), "/v1/completions", &aliased).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hits().await, before, "o200k blocks match nothing");
    // Under the cl100k model: a hit.
    let (status, body) = http.post(&gw.url(), "/v1/completions", &p).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        hits().await,
        before + 1.0,
        "cl100k blocks match the engine's"
    );

    bad.models.get_mut("alias").unwrap().kv_tokenizer = Some("/nonexistent/tokenizer.json".into());
    let err = switchyard::Gateway::start(bad)
        .await
        .err()
        .expect("a bad tokenizer stops the start");
    let err = err.to_string();
    assert!(err.contains("models.alias.kv_tokenizer"), "{err}");
}

/// Lost messages are replayed from the engine's buffer; an engine restart (numbering
/// from 0 again, cache empty) clears what the gateway believed it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_replayed_and_a_restart_clears_the_workers_entries() {
    let sims = small_engines(1).await;
    let http = Http::new();
    let mut c = config(sims.urls(), PolicyKind::RoundRobin);
    precise(&sims, &mut c);
    let gw = gateway(c).await;
    let url = sims.url();
    in_step(&http, &gw, &sims).await;
    let metric = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let (http, m) = (http.clone(), metrics_url(&gw));
        async move { http.metric(&m, name, labels).await }
    };

    // Two messages are numbered but never sent live: the next one shows the gap.
    sims.server(0).drop_kv_events(2).await;
    for tag in ["A", "B", "C"] {
        assert_eq!(
            http.post(&url, "/v1/completions", &prompt(tag)).await.0,
            200
        );
    }
    in_step(&http, &gw, &sims).await;
    assert!(metric("switchyard_kv_replays_total", &[("outcome", "recovered")]).await >= 1.0);
    assert_eq!(metric("switchyard_kv_worker_resets_total", &[]).await, 0.0);

    // A restart: the cache is gone without events; the next message is numbered 0.
    sims.server(0).restart().await;
    assert_eq!(
        http.post(&url, "/v1/completions", &prompt("D")).await.0,
        200
    );
    in_step(&http, &gw, &sims).await;
    assert_eq!(
        metric(
            "switchyard_kv_worker_resets_total",
            &[("reason", "restart")]
        )
        .await,
        1.0
    );
    let s = &streams(&http, &gw).await[0].1;
    assert!(
        s["next_seq"].as_u64().unwrap() < 5,
        "numbering restarted: {s}"
    );
}

/// `switchyard check-tokenizer` finds the gateway's tokenisation equal to the
/// simulator's own `/tokenize`, and finds a wrong encoding wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tokenizer_compares_with_the_engines_tokenize() {
    use switchyard::routing::kv::check::{CheckArgs, check};
    let sims = sims(1).await;
    let args = CheckArgs {
        url: sims.url(),
        model: MODEL.into(),
        kv_tokenizer: "tiktoken:cl100k_base".into(),
        kv_chat_template: "simulator".into(),
    };
    let same = check(&args).await.unwrap();
    assert!(same.len() >= 5);
    assert!(
        same.iter().all(|s| s.first_difference.is_none()),
        "{same:?}"
    );
    let wrong = check(&CheckArgs {
        kv_tokenizer: "tiktoken:o200k_base".into(),
        ..args.clone()
    })
    .await
    .unwrap();
    assert!(
        wrong.iter().any(|s| s.first_difference.is_some()),
        "{wrong:?}"
    );
    let unreachable = check(&CheckArgs {
        url: format!("http://127.0.0.1:{}", free_port()),
        ..args
    })
    .await;
    assert!(unreachable.is_err());
}

/// vLLM's centralised mode: the gateway binds one SUB socket, the engine connects its
/// PUB socket to it, and the topic (`kv@HOST:PORT@MODEL`) says which worker it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_can_connect_to_a_socket_the_gateway_binds() {
    let http = Http::new();
    let (sim_port, bind_port) = (free_port(), free_port());
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let mut c = config(vec![sim_url.clone()], PolicyKind::PrecisePrefix);
    c.kv_events_bind = Some(format!("tcp://127.0.0.1:{bind_port}"));
    let gw = gateway(c).await;
    let sims = sims_with(SimConfig {
        port: sim_port,
        time_scale: 100.0,
        num_gpu_blocks: 64,
        max_model_len: 1024,
        kv_events_config: Some(KvEventsConfig {
            endpoint: format!("tcp://127.0.0.1:{bind_port}"),
            replay_endpoint: None,
            ..kv_config(&format!("kv@127.0.0.1:{sim_port}@{MODEL}"))
        }),
        ..SimConfig::default()
    })
    .await;
    // The engine's first messages may go before its connection is up; later ones
    // arrive, and the gateway's count of its blocks follows the engine's own.
    let mut k = 0;
    eventually("the bound socket to hear the engine", || {
        k += 1;
        let (http, url, gw) = (http.clone(), sim_url.clone(), &gw);
        async move {
            assert_eq!(
                http.post(&url, "/v1/completions", &prompt(&format!("B{k}")))
                    .await
                    .0,
                200
            );
            streams(&http, gw).await[0].1["stream"] == "live"
        }
    })
    .await;
    assert_eq!(
        http.post(&sim_url, "/v1/completions", &prompt("last"))
            .await
            .0,
        200
    );
    eventually("the index to count what the engine reports", || async {
        let s = &streams(&http, &gw).await[0].1;
        let truth = sims.server(0).engine_stats().await[0].cached_blocks as u64;
        s["blocks"].as_u64().is_some_and(|b| b > 0 && b <= truth)
    })
    .await;
}

/// Bad KV-event input from clients: the worker API refuses an endpoint off the
/// worker's host or not `tcp://HOST:PORT` (400, `param` named) before probing, and the
/// simulator's gap control refuses a bad body or a server that publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_kv_event_input_is_a_400_naming_the_field() {
    let sims = small_engines(1).await;
    let http = Http::new();
    let gw = gateway(config(vec![], PolicyKind::PrecisePrefix)).await;
    let url = sims.url();
    for (body, param) in [
        (
            json!({"url": url, "kv_events_endpoint": "tcp://10.0.0.9:5557"}),
            "kv_events_endpoint",
        ),
        (
            json!({"url": url, "kv_events_endpoint": "ipc:///tmp/x"}),
            "kv_events_endpoint",
        ),
        (
            json!({"url": url, "kv_events_endpoint": "tcp://127.0.0.1"}),
            "kv_events_endpoint",
        ),
        (
            json!({"url": url, "kv_events_replay_endpoint": "tcp://127.0.0.1:5558"}),
            "kv_events_replay_endpoint",
        ),
        (
            json!({"url": url, "kv_events_endpoint": "tcp://127.0.0.1:5557", "kv_events_replay_endpoint": "tcp://8.8.8.8:1"}),
            "kv_events_replay_endpoint",
        ),
    ] {
        let (status, b) = http.post(&admin_url(&gw), "/workers", &body).await;
        assert_eq!(status, 400, "{body}: {b}");
        assert_error(&b, "invalid_request");
        assert_eq!(b["error"]["param"], param, "{body}: {b}");
    }
    assert!(
        admin_workers(&http, &gw).await["workers"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let (status, b) = http
        .post(&url, "/sim/kv_events/drop", &json!({"count": "x"}))
        .await;
    assert_eq!(status, 400, "{b}");
    assert_error(&b, 400);
    let plain = sims_with(fast()).await;
    let (status, b) = http
        .post(&plain.url(), "/sim/kv_events/drop", &json!({"count": 1}))
        .await;
    assert_eq!(status, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--kv-events-config")
    );
}
