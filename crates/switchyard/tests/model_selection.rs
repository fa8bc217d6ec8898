//! Model selection over real HTTP: intent routing (keywords, llm, embedding through
//! the fleet), thresholds, fallback chains, routing metadata, the router endpoints,
//! reload, and every bad input — against simulated engines serving several models.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use switchyard::config::intent::{
    ClassifierKind, EmbeddingSettings, IntentRouting, IntentSettings, Keyword, LlmSettings,
    OnClassifierError, WeightedKeyword,
};
use switchyard::{Config, ModelSettings, PolicyKind};
use switchyard_sim::{Faults, SimConfig, SimHandle};
use switchyard_testkit::*;

/// The coder, reasoner and general models, and (for the llm classifier) a small one.
struct Fleet {
    coder: SimHandle,
    reasoner: SimHandle,
    general: SimHandle,
    small: SimHandle,
}

impl Fleet {
    async fn start() -> Fleet {
        Fleet {
            coder: serving("coder", 2).await,
            reasoner: serving("reasoner", 1).await,
            general: serving("general", 1).await,
            small: serving("small", 1).await,
        }
    }

    fn urls(&self) -> Vec<String> {
        [&self.coder, &self.reasoner, &self.general, &self.small]
            .iter()
            .flat_map(|s| s.urls())
            .collect()
    }
}

fn words(ws: &[&str]) -> Vec<Keyword> {
    ws.iter().map(|w| Keyword::Word(w.to_string())).collect()
}

fn model(capabilities: &[&str], fallbacks: &[&str]) -> ModelSettings {
    ModelSettings {
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        description: Some(format!("good at {}", capabilities.join(", "))),
        fallbacks: fallbacks.iter().map(|c| c.to_string()).collect(),
        ..ModelSettings::default()
    }
}

/// coder → general → reasoner; reasoner → general; keywords for code and reasoning,
/// general the default.
fn routing(urls: Vec<String>) -> Config {
    let mut cfg = config(urls, PolicyKind::RoundRobin);
    cfg.models = BTreeMap::from([
        ("coder".to_string(), model(&["code"], &["general"])),
        (
            "general".to_string(),
            model(&["chat", "writing"], &["reasoner"]),
        ),
        ("reasoner".to_string(), model(&["math", "logic"], &[])),
        ("small".to_string(), model(&["classification"], &[])),
    ]);
    let mut reasoning = words(&["prove", "theorem", "equation", "solve"]);
    reasoning.push(Keyword::Weighted(WeightedKeyword {
        word: Some("perhaps".into()),
        regex: None,
        weight: 0.1,
    }));
    let mut code = words(&["python", "function", "compile", "rust"]);
    code.push(Keyword::Weighted(WeightedKeyword {
        word: None,
        regex: Some(r"\bdef\s+\w+\(".into()),
        weight: 2.0,
    }));
    cfg.intent_routing = Some(IntentRouting {
        model: vec!["auto".into(), "router".into()],
        classifier: ClassifierKind::Keywords,
        intents: BTreeMap::from([
            (
                "code".to_string(),
                IntentSettings {
                    model: "coder".into(),
                    keywords: code,
                    examples: vec![
                        "write a python function".into(),
                        "fix my rust compile error".into(),
                    ],
                    description: Some("programming and software".into()),
                    default: false,
                },
            ),
            (
                "general".to_string(),
                IntentSettings {
                    model: "general".into(),
                    description: Some("chat, writing, anything else".into()),
                    examples: vec![
                        "tell me a story".into(),
                        "write a poem about the sea".into(),
                    ],
                    default: true,
                    ..IntentSettings::default()
                },
            ),
            (
                "reasoning".to_string(),
                IntentSettings {
                    model: "reasoner".into(),
                    keywords: reasoning,
                    examples: vec![
                        "solve this equation for x".into(),
                        "prove the theorem".into(),
                    ],
                    description: Some("math and logic".into()),
                    default: false,
                },
            ),
        ]),
        thresholds: Default::default(),
        classify: Default::default(),
        on_classifier_error: OnClassifierError::DefaultIntent,
        cache_size: 1000,
        embedding: EmbeddingSettings::default(),
        llm: LlmSettings::default(),
    });
    cfg
}

/// Stops `sims` and waits until the gateway's health checks have seen it.
async fn take_down(http: &Http, gw: &switchyard::Gateway, sims: &SimHandle) {
    sims.shutdown();
    for url in sims.urls() {
        eventually("the engine is unhealthy", || {
            let url = url.clone();
            async move { !worker_healthy(http, gw, &url).await }
        })
        .await;
    }
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4})
}

/// The `x-routing-metadata` header, parsed (null when absent).
fn metadata(resp: &reqwest::Response) -> Value {
    resp.headers()
        .get("x-routing-metadata")
        .map(|v| serde_json::from_str(v.to_str().unwrap()).expect("JSON metadata"))
        .unwrap_or(Value::Null)
}

/// A gateway metric: the sum of its samples whose labels contain every `k="v"`.
async fn metric(gw: &switchyard::Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    Http::new().metric(&metrics_url(gw), name, labels).await
}

/// POSTs a chat request; status, the routing metadata header (parsed) and the body.
async fn routed(http: &Http, url: &str, body: &Value) -> (u16, Value, Value) {
    let resp = http
        .0
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    let meta = metadata(&resp);
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, meta, body)
}

#[tokio::test]
async fn prompts_go_to_their_intents_model_and_the_header_says_so() {
    let fleet = Fleet::start().await;
    let gw = gateway(routing(fleet.urls())).await;
    let http = Http::new();
    for (text, intent, model) in [
        (
            "Write a Python function that reverses a list",
            "code",
            "coder",
        ),
        (
            "Solve the equation x^2 = 4 and prove it",
            "reasoning",
            "reasoner",
        ),
        ("Tell me a story about a lighthouse", "general", "general"),
    ] {
        let (status, meta, body) = routed(&http, &gw.url(), &ask("auto", text)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], model, "{text}");
        assert_eq!(meta["model_id"], model);
        assert_eq!(meta["model_name"], "auto");
        assert_eq!(meta["intent"], intent);
        assert_eq!(meta["fallback_used"], false);
        assert_eq!(meta["fallback_from"], Value::Null);
        assert_eq!(meta["attempts"], 1);
        assert!(meta["total_time_seconds"].as_f64().unwrap() > 0.0);
        assert!(meta["classification_ms"].as_f64().is_some());
        for key in ["confidence", "confidence_level"] {
            assert!(meta.get(key).is_some(), "{meta}");
        }
    }
    // Two code keywords: high confidence; no keyword: the default, with none.
    let (_, meta, _) = routed(&http, &gw.url(), &ask("router", "python function")).await;
    assert_eq!(meta["confidence_level"], "high");
    let (_, meta, _) = routed(&http, &gw.url(), &ask("auto", "hello")).await;
    assert_eq!(
        (meta["intent"].as_str(), meta["confidence_level"].as_str()),
        (Some("general"), Some("none"))
    );

    // A request naming its model gets the header too, without an intent.
    let (status, meta, _) = routed(&http, &gw.url(), &ask("coder", "hello")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (meta["model_id"].as_str(), meta["model_name"].as_str()),
        (Some("coder"), Some("coder"))
    );
    assert_eq!(meta["intent"], Value::Null);

    // Streams carry it as well.
    let resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&json!({"model": "auto", "stream": true, "max_tokens": 3,
            "messages": [{"role": "user", "content": "rust compile error"}]}))
        .send()
        .await
        .unwrap();
    let meta = metadata(&resp);
    assert_eq!(meta["model_id"], "coder");
    assert!(resp.text().await.unwrap().contains("\"model\":\"coder\""));

    // Metrics: by model, intent and status; classifications by intent and level.
    assert_eq!(
        metric(
            &gw,
            "switchyard_model_requests_total",
            &[
                ("model", "reasoner"),
                ("intent", "reasoning"),
                ("status", "200")
            ]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "switchyard_classifications_total",
            &[("intent", "code"), ("confidence_level", "high")]
        )
        .await,
        3.0
    );
    assert!(
        metric(
            &gw,
            "switchyard_classification_duration_seconds_count",
            &[("classifier", "keywords")]
        )
        .await
            >= 5.0
    );
    assert_eq!(
        metric(&gw, "switchyard_model_healthy", &[("model", "coder")]).await,
        1.0
    );
}

#[tokio::test]
async fn the_intent_follows_the_last_user_message_and_weak_matches_go_to_the_default() {
    let fleet = Fleet::start().await;
    let gw = gateway(routing(fleet.urls())).await;
    let http = Http::new();
    let convo = |last: &str| {
        json!({"model": "auto", "max_tokens": 2, "messages": [
            {"role": "user", "content": "write a python function for fibonacci"},
            {"role": "assistant", "content": "def fib(n): ..."},
            {"role": "user", "content": last}]})
    };
    let (_, meta, body) = routed(
        &http,
        &gw.url(),
        &convo("now prove the theorem that it grows exponentially"),
    )
    .await;
    assert_eq!(
        (meta["intent"].as_str(), body["model"].as_str()),
        (Some("reasoning"), Some("reasoner"))
    );
    let (_, meta, _) = routed(&http, &gw.url(), &convo("and port the function to rust")).await;
    assert_eq!(meta["intent"], "code");

    // `perhaps` (weight 0.1) alone is below the low threshold: the default intent.
    let (status, meta, body) = routed(&http, &gw.url(), &ask("auto", "perhaps")).await;
    assert_eq!(status, 200);
    assert_eq!(meta["intent"], "general");
    assert_eq!(body["model"], "general");
    let (_, c) = http
        .post(&gw.url(), "/router/classify", &json!({"text": "perhaps"}))
        .await;
    assert_eq!(c["intent"], "general");
    assert_eq!(c["defaulted"], "below_threshold");
    assert!(c["scores"]["reasoning"].as_f64().unwrap() > 0.0);
    assert!(c["confidence"].as_f64().unwrap() < 0.2);
}

#[tokio::test]
async fn an_unhealthy_model_is_skipped_for_its_fallback() {
    let fleet = Fleet::start().await;
    let gw = gateway(routing(fleet.urls())).await;
    let http = Http::new();
    // The coder's engines go away; once the checks see it, they are skipped unsent.
    take_down(&http, &gw, &fleet.coder).await;
    let (status, meta, body) =
        routed(&http, &gw.url(), &ask("auto", "write a python function")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "general");
    assert_eq!(meta["intent"], "code");
    assert_eq!(meta["model_id"], "general");
    assert_eq!(meta["fallback_used"], true);
    assert_eq!(meta["fallback_from"], "coder");
    assert_eq!(meta["attempts"], 1, "skipped, not tried");
    assert_eq!(
        metric(
            &gw,
            "switchyard_model_fallbacks_total",
            &[("from", "coder"), ("to", "general")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&gw, "switchyard_model_healthy", &[("model", "coder")]).await,
        0.0
    );
    // /health and /router/info show it.
    let (_, h) = http.get(&format!("{}/health", gw.url())).await;
    assert_eq!(h["models"]["coder"]["healthy"], false);
    assert_eq!(h["models"]["general"]["healthy"], true);
    assert_eq!(h["models"]["coder"]["capabilities"], json!(["code"]));
    // Naming the model directly falls back the same way (fallback_on_named_model).
    let (status, meta, _) = routed(&http, &gw.url(), &ask("coder", "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(meta["model_id"], "general");
}

#[tokio::test]
async fn a_model_answering_503_everywhere_falls_back_within_the_retry_budget() {
    let fleet = Fleet::start().await;
    let gw = gateway(routing(fleet.urls())).await;
    let http = Http::new();
    set_faults_everywhere(
        &fleet.coder,
        &Faults {
            error_rate: 1.0,
            error_status: 503,
            retry_after_secs: 0,
            ..Faults::default()
        },
    );
    let (status, meta, body) =
        routed(&http, &gw.url(), &ask("auto", "python function please")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "general");
    assert_eq!(meta["fallback_used"], true);
    assert_eq!(meta["fallback_from"], "coder");
    // Both coder engines were tried (2 sends), then general answered.
    assert_eq!(meta["attempts"], 3, "{meta}");
    assert_eq!(
        metric(
            &gw,
            "switchyard_upstream_errors_total",
            &[("reason", "status")]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &gw,
            "switchyard_model_fallbacks_total",
            &[("from", "coder"), ("to", "general")]
        )
        .await,
        1.0
    );

    // With --fallback-on-named-model false a named model keeps to itself.
    let mut cfg = routing(fleet.urls());
    cfg.fallback_on_named_model = false;
    let strict = gateway(cfg).await;
    let (status, meta, _) = routed(&http, &strict.url(), &ask("coder", "hi")).await;
    assert_eq!(status, 503);
    assert_eq!(meta["model_id"], "coder");
    assert_eq!(meta["attempts"], 4, "the whole budget on coder: {meta}");
    assert_eq!(meta["fallback_used"], false);
}

#[tokio::test]
async fn a_stream_that_started_is_never_switched() {
    let fleet = Fleet::start().await;
    let gw = gateway(routing(fleet.urls())).await;
    let http = Http::new();
    // The coder's streams break after their first events.
    set_faults_everywhere(
        &fleet.coder,
        &Faults {
            crash_after_chunks: Some(2),
            ..Faults::default()
        },
    );
    let general_before = per_server(&fleet.general).iter().sum::<u64>();
    let resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&json!({"model": "auto", "stream": true, "max_tokens": 20,
            "messages": [{"role": "user", "content": "python function"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let meta = metadata(&resp);
    assert_eq!(
        (meta["model_id"].as_str(), meta["fallback_used"].as_bool()),
        (Some("coder"), Some(false))
    );
    // The cut stream may surface as a body error: then there is no text at all.
    let text: String = resp.text().await.unwrap_or_default();
    assert!(
        !text.contains("[DONE]"),
        "the stream was cut, not completed elsewhere"
    );
    assert!(!text.contains("\"model\":\"general\""));
    assert_eq!(
        per_server(&fleet.general).iter().sum::<u64>(),
        general_before
    );
    assert_eq!(
        metric(&gw, "switchyard_model_fallbacks_total", &[]).await,
        0.0
    );
    // The stream really broke on coder (so staying there was a choice, not luck).
    eventually("the cut stream is settled", || async {
        metric(
            &gw,
            "switchyard_model_errors_total",
            &[("model", "coder"), ("error_type", "stream")],
        )
        .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn every_model_of_the_chain_down_is_a_503_naming_the_chain() {
    let fleet = Fleet::start().await;
    let gw = gateway(routing(fleet.urls())).await;
    let http = Http::new();
    for s in [&fleet.coder, &fleet.general, &fleet.reasoner] {
        take_down(&http, &gw, s).await;
    }
    let resp = http
        .0
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&ask("auto", "write a python function"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let meta = metadata(&resp);
    assert_eq!(
        (meta["attempts"].as_u64(), meta["fallback_used"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(meta["model_id"], "reasoner", "the last model of the chain");
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "no_healthy_worker");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`coder` → `general` → `reasoner`"), "{msg}");
    assert_eq!(
        metric(
            &gw,
            "switchyard_model_errors_total",
            &[("model", "reasoner"), ("error_type", "no_healthy_worker")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_llm_classifier_asks_a_model_of_the_fleet_with_a_schema() {
    let fleet = Fleet::start().await;
    let mut cfg = routing(fleet.urls());
    let ir = cfg.intent_routing.as_mut().unwrap();
    ir.classifier = ClassifierKind::Llm;
    ir.llm = LlmSettings {
        model: Some("small".into()),
        // Bounds a hang only: the answer must never be late on a loaded machine.
        timeout_ms: 60_000,
        ..LlmSettings::default()
    };
    let gw = gateway(cfg).await;
    let http = Http::new();
    // The simulator picks the intent the user's message names (its structured-output
    // rule), so the classification is deterministic.
    let (status, meta, body) =
        routed(&http, &gw.url(), &ask("auto", "a reasoning puzzle for you")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(meta["intent"], "reasoning");
    assert_eq!(body["model"], "reasoner");
    let (_, c) = http
        .post(
            &gw.url(),
            "/router/classify",
            &json!({"messages": [{"role": "user", "content": "some code please"}]}),
        )
        .await;
    assert_eq!(
        (
            c["classifier"].as_str(),
            c["intent"].as_str(),
            c["model"].as_str()
        ),
        (Some("llm"), Some("code"), Some("coder"))
    );
    assert_eq!(c["fallbacks"], json!(["general", "reasoner"]));
    // The classifier's requests went to the small model through the fleet.
    assert_eq!(per_server(&fleet.small).iter().sum::<u64>(), 2);
    // The same text again comes from the cache, which /router/info counts.
    let (_, info) = http.get(&format!("{}/router/info", gw.url())).await;
    assert_eq!(info["intent_routing"]["cache"]["capacity"], 1000);
    assert_eq!(info["intent_routing"]["cache"]["entries"], 2);
    let (_, again) = http
        .post(
            &gw.url(),
            "/router/classify",
            &json!({"text": "some code please"}),
        )
        .await;
    assert_eq!(again["cached"], true);
    let (_, info) = http.get(&format!("{}/router/info", gw.url())).await;
    assert_eq!(info["intent_routing"]["cache"]["hits"], 1);
    assert_eq!(per_server(&fleet.small).iter().sum::<u64>(), 2);
}

#[tokio::test]
async fn a_classifier_that_times_out_or_is_down_uses_the_default_intent_or_fails() {
    let fleet = Fleet::start().await;
    let llm = |on_error| {
        let mut cfg = routing(fleet.urls());
        let ir = cfg.intent_routing.as_mut().unwrap();
        ir.classifier = ClassifierKind::Llm;
        ir.on_classifier_error = on_error;
        ir.llm = LlmSettings {
            model: Some("small".into()),
            // The small model holds its answers until the test ends: always a timeout.
            timeout_ms: 300,
            ..LlmSettings::default()
        };
        cfg
    };
    // Answers held right after their headers, until the faults change.
    let held = Faults {
        stall_after_chunks: Some(0),
        ..Faults::default()
    };
    set_faults_everywhere(&fleet.small, &held);
    let http = Http::new();
    let gw = gateway(llm(OnClassifierError::DefaultIntent)).await;
    let (status, meta, body) = routed(&http, &gw.url(), &ask("auto", "code code code")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (meta["intent"].as_str(), body["model"].as_str()),
        (Some("general"), Some("general"))
    );
    assert_eq!(
        metric(
            &gw,
            "switchyard_classifier_errors_total",
            &[("classifier", "llm"), ("kind", "timeout")]
        )
        .await,
        1.0
    );
    let strict = gateway(llm(OnClassifierError::Fail)).await;
    let (status, _, body) = routed(&http, &strict.url(), &ask("auto", "more code")).await;
    assert_eq!(status, 503);
    assert_error(&body, "classifier_unavailable");

    // An embeddings endpoint that is down: the default intent, counted.
    let mut cfg = routing(fleet.urls());
    let ir = cfg.intent_routing.as_mut().unwrap();
    ir.classifier = ClassifierKind::Embedding;
    ir.embedding = EmbeddingSettings {
        url: Some("http://127.0.0.1:9".into()),
        model: Some("embedder".into()),
        timeout_ms: 60_000,
        ..EmbeddingSettings::default()
    };
    let down = gateway(cfg).await;
    let (status, meta, _) =
        routed(&http, &down.url(), &ask("auto", "write a python function")).await;
    assert_eq!(status, 200);
    assert_eq!(meta["intent"], "general");
    assert_eq!(
        metric(
            &down,
            "switchyard_classifier_errors_total",
            &[("classifier", "embedding"), ("kind", "backend")]
        )
        .await,
        1.0
    );
    set_faults_everywhere(&fleet.small, &Faults::default());
}

#[tokio::test]
async fn the_embedding_classifier_matches_examples_through_the_fleet() {
    let fleet = Fleet::start().await;
    let embedder = serving("embedder", 1).await;
    let mut urls = fleet.urls();
    urls.extend(embedder.urls());
    let mut cfg = routing(urls);
    cfg.models
        .insert("embedder".into(), model(&["embeddings"], &[]));
    let ir = cfg.intent_routing.as_mut().unwrap();
    ir.classifier = ClassifierKind::Embedding;
    ir.embedding = EmbeddingSettings {
        model: Some("embedder".into()),
        timeout_ms: 60_000,
        ..EmbeddingSettings::default()
    };
    let gw = gateway(cfg).await;
    let http = Http::new();
    // The simulator's vectors reflect shared words: nearest examples decide.
    let (_, c) = http
        .post(
            &gw.url(),
            "/router/classify",
            &json!({"text": "please solve this equation for x"}),
        )
        .await;
    assert_eq!(c["intent"], "reasoning", "{c}");
    assert_eq!(c["classifier"], "embedding");
    let (status, meta, body) =
        routed(&http, &gw.url(), &ask("auto", "write a python function")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(meta["intent"], "code");
    assert_eq!(meta["confidence_level"], "high");
    assert_eq!(body["model"], "coder");
    // Examples were embedded once at start: one request for them, one per prompt.
    assert_eq!(per_server(&embedder).iter().sum::<u64>(), 3);
}

#[tokio::test]
async fn router_endpoints_describe_the_rules_and_refuse_bad_input() {
    let fleet = Fleet::start().await;
    let mut cfg = routing(fleet.urls());
    cfg.routing_metadata_in_body = true;
    let gw = gateway(cfg).await;
    let http = Http::new();
    let (status, info) = http.get(&format!("{}/router/info", gw.url())).await;
    assert_eq!(status, 200);
    let ir = &info["intent_routing"];
    assert_eq!(ir["classifier"], "keywords");
    assert_eq!(ir["model"], json!(["auto", "router"]));
    assert_eq!(ir["default_intent"], "general");
    assert_eq!(
        ir["thresholds"],
        json!({"high": 0.7, "medium": 0.4, "low": 0.2})
    );
    assert_eq!(
        ir["intents"]["code"]["chain"],
        json!(["coder", "general", "reasoner"])
    );
    assert_eq!(ir["intents"]["reasoning"]["chain"], json!(["reasoner"]));
    // The keyword classifier is cheaper than a cache: none is kept for it.
    assert_eq!(ir["cache"], Value::Null);
    assert_eq!(info["models"]["coder"]["capabilities"], json!(["code"]));
    assert_eq!(info["models"]["coder"]["healthy_workers"], 2);

    let (_, models) = http.get(&format!("{}/v1/models", gw.url())).await;
    let data = models["data"].as_array().unwrap();
    let coder = data.iter().find(|m| m["id"] == "coder").unwrap();
    assert_eq!(coder["capabilities"], json!(["code"]));
    assert!(data.iter().any(|m| m["id"] == "auto"));

    // The metadata also in the body when asked for.
    let (_, body) = http
        .post(&gw.url(), "/v1/chat/completions", &ask("auto", "python"))
        .await;
    assert_eq!(body["switchyard_routing"]["model_id"], "coder");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");

    // Bad input: no text, not an object, not JSON.
    let seen = |f: &Fleet| -> u64 {
        [&f.coder, &f.reasoner, &f.general, &f.small]
            .iter()
            .map(|s| per_server(s).iter().sum::<u64>())
            .sum()
    };
    let before = seen(&fleet);
    for bad in [
        json!({}),
        json!({"text": ""}),
        json!({"messages": []}),
        json!([1, 2]),
    ] {
        let (status, body) = http.post(&gw.url(), "/router/classify", &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_error(&body, "invalid_request");
    }
    let (status, body) = http
        .post_raw(
            &gw.url(),
            "/router/classify",
            Some("application/json"),
            "{nope",
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_request");
    // No engine saw any of them.
    assert_eq!(seen(&fleet), before);

    // A valid request with nothing to classify (a system prompt only) goes to the
    // default intent.
    let (status, meta, body) = routed(
        &http,
        &gw.url(),
        &json!({"model": "auto", "max_tokens": 2, "messages": [{"role": "system", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (meta["intent"].as_str(), meta["confidence_level"].as_str()),
        (Some("general"), Some("none"))
    );
    assert_eq!(body["model"], "general");

    // Without intent routing, /router/classify says so.
    let plain = gateway(config(fleet.general.urls(), PolicyKind::RoundRobin)).await;
    let (status, body) = http
        .post(&plain.url(), "/router/classify", &json!({"text": "x"}))
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_request");
}

#[cfg(feature = "local-embeddings")]
fn minilm() -> std::path::PathBuf {
    minilm_dir()
}

/// The in-process model gives sentence-transformers' vectors: the pair from its docs
/// scores 0.755 there, unrelated sentences near 0, and a batch equals single calls.
#[cfg(feature = "local-embeddings")]
#[test]
fn the_local_model_embeds_as_sentence_transformers_does() {
    use switchyard::selection::classify::local::LocalModel;
    let m = LocalModel::load(&minilm()).unwrap();
    let texts: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
    ]
    .map(String::from)
    .to_vec();
    let v = m.embed(&texts).unwrap();
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].len(), 384);
    assert!((cos(&v[0], &v[0]) - 1.0).abs() < 1e-4);
    let related = cos(&v[0], &v[1]);
    assert!((related - 0.755).abs() < 0.01, "{related}");
    assert!(cos(&v[0], &v[2]).abs() < 0.1);
    let single = m.embed(&texts[..1]).unwrap();
    assert!(
        (cos(&single[0], &v[0]) - 1.0).abs() < 1e-4,
        "padding in a batch changes nothing"
    );
    assert!(LocalModel::load(std::path::Path::new("/nonexistent")).is_err());
}

#[cfg(feature = "local-embeddings")]
#[tokio::test]
async fn the_embedding_classifier_understands_prompts_with_a_real_model() {
    use switchyard::config::intent::EmbeddingBackend;
    let fleet = Fleet::start().await;
    let mut cfg = routing(fleet.urls());
    // The examples of the example config (ten per intent).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/configs/intent-embedding.yaml"
    );
    let example: Config = yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ir = cfg.intent_routing.as_mut().unwrap();
    for (name, intent) in example.intent_routing.unwrap().intents {
        ir.intents.get_mut(&name).unwrap().examples = intent.examples;
    }
    ir.classifier = ClassifierKind::Embedding;
    ir.embedding = EmbeddingSettings {
        backend: EmbeddingBackend::Local,
        path: Some(minilm()),
        timeout_ms: 60_000,
        ..EmbeddingSettings::default()
    };
    let gw = gateway(cfg).await;
    let http = Http::new();
    // Prompts that share no keyword with the examples: meaning decides.
    for (text, intent) in [
        (
            "Implement quicksort in Java and explain its complexity",
            "code",
        ),
        (
            "My JavaScript loop throws undefined is not a function",
            "code",
        ),
        (
            "What is the integral of x squared from 0 to 3?",
            "reasoning",
        ),
        (
            "If all bloops are razzies, are some razzies bloops? Show why.",
            "reasoning",
        ),
        ("Compose a short verse about autumn leaves", "general"),
        ("Once upon a time, continue this fairy tale", "general"),
    ] {
        let (status, c) = http
            .post(&gw.url(), "/router/classify", &json!({"text": text}))
            .await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c["intent"], intent, "{text}: {c}");
    }
    let (status, meta, body) = routed(
        &http,
        &gw.url(),
        &ask("auto", "Refactor this C++ class to use smart pointers"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (meta["intent"].as_str(), body["model"].as_str()),
        (Some("code"), Some("coder"))
    );
}

fn validation_error(adjust: impl FnOnce(&mut Config)) -> String {
    let mut cfg = routing(vec!["http://127.0.0.1:1".into()]);
    adjust(&mut cfg);
    cfg.validate().expect_err("invalid").to_string()
}

#[test]
fn bad_selection_settings_are_refused_naming_the_setting() {
    fn ir(c: &mut Config) -> &mut IntentRouting {
        c.intent_routing.as_mut().unwrap()
    }
    let e =
        validation_error(|c| c.models.get_mut("coder").unwrap().fallbacks = vec!["nope".into()]);
    assert!(
        e.starts_with("models.coder.fallbacks[0]: unknown model `nope`"),
        "{e}"
    );
    let e = validation_error(|c| {
        c.models.get_mut("reasoner").unwrap().fallbacks = vec!["coder".into()]
    });
    assert!(
        e.contains("fallback cycle coder → general → reasoner → coder"),
        "{e}"
    );
    let e = validation_error(|c| ir(c).intents.get_mut("code").unwrap().model = "ghost".into());
    assert!(
        e.starts_with("intent_routing.intents.code.model: unknown model `ghost`"),
        "{e}"
    );
    let e = validation_error(|c| {
        ir(c).intents.get_mut("code").unwrap().keywords = vec![Keyword::Weighted(WeightedKeyword {
            word: None,
            regex: Some("(unclosed".into()),
            weight: 1.0,
        })]
    });
    assert!(
        e.starts_with("intent_routing.intents.code.keywords[0]: bad regex"),
        "{e}"
    );
    let e = validation_error(|c| ir(c).intents.get_mut("general").unwrap().default = false);
    assert!(e.contains("no default intent"), "{e}");
    let e = validation_error(|c| ir(c).intents.get_mut("code").unwrap().default = true);
    assert!(e.contains("more than one default intent"), "{e}");
    let e = validation_error(|c| ir(c).thresholds.low = 0.9);
    assert!(e.starts_with("intent_routing.thresholds"), "{e}");
    let e = validation_error(|c| ir(c).model = vec!["coder".into()]);
    assert!(e.starts_with("intent_routing.model"), "{e}");
    let e = validation_error(|c| c.model_alias = vec!["auto=coder".into()]);
    assert!(
        e.starts_with("intent_routing.model: `auto` is also a --model-alias"),
        "{e}"
    );
    let e = validation_error(|c| {
        ir(c).classifier = ClassifierKind::Embedding;
        ir(c).embedding.model = Some("auto".into());
    });
    assert!(
        e.starts_with("intent_routing.embedding.model: is a router name"),
        "{e}"
    );
    // A diamond (a → b, c; b → d; c → d) is no cycle, and d comes once.
    let mut cfg = routing(vec!["http://127.0.0.1:1".into()]);
    for (m, f) in [
        ("a", vec!["b", "c"]),
        ("b", vec!["d"]),
        ("c", vec!["d"]),
        ("d", vec![]),
    ] {
        cfg.models.insert(m.into(), model(&[], &f));
    }
    let chains = cfg.fallback_chains().unwrap();
    assert_eq!(chains["a"], ["b", "d", "c"]);
    let e = validation_error(|c| {
        ir(c).classifier = ClassifierKind::Llm;
    });
    assert!(e.starts_with("intent_routing.llm.model"), "{e}");
    let e = validation_error(|c| {
        ir(c).classifier = ClassifierKind::Embedding;
    });
    assert!(e.starts_with("intent_routing.embedding.model"), "{e}");
}

/// A YAML config file for the reload test.
fn yaml(urls: &[String], code_words: &str, code_model: &str) -> String {
    format!(
        r#"
worker_urls: [{urls}]
models:
  coder: {{capabilities: [code], fallbacks: [general]}}
  general: {{capabilities: [chat]}}
  reasoner: {{capabilities: [math]}}
  small: {{}}
intent_routing:
  classifier: keywords
  intents:
    code: {{model: {code_model}, keywords: [{code_words}]}}
    general: {{model: general, default: true}}
"#,
        urls = urls
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[tokio::test]
async fn reload_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let fleet = Fleet::start().await;
    let dir = std::env::temp_dir().join(format!("switchyard-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml(&fleet.urls(), "python", "coder")).unwrap();
    let (_, cfg) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--port",
        "0",
        "--prometheus-port",
        "0",
        "--admin-port",
        "0",
        "--health-check-timeout-secs",
        "30",
    ])
    .unwrap();
    let gw = gateway(cfg).await;
    let http = Http::new();
    let classify = |text: &'static str| {
        let (http, url) = (&http, gw.url());
        async move {
            http.post(&url, "/router/classify", &json!({"text": text}))
                .await
                .1
        }
    };
    assert_eq!(classify("golang please").await["intent"], "general");

    // A new keyword, applied without a restart.
    std::fs::write(&path, yaml(&fleet.urls(), "python, golang", "coder")).unwrap();
    let (status, body) = http
        .post(&admin_url(&gw), "/admin/reload", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(classify("golang please").await["intent"], "code");

    // An intent naming an unknown model: rejected, the old rules stay.
    std::fs::write(&path, yaml(&fleet.urls(), "rust", "ghost")).unwrap();
    let (status, body) = http
        .post(&admin_url(&gw), "/admin/reload", &json!({}))
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_request");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("intent_routing.intents.code.model: unknown model `ghost`"),
        "{msg}"
    );
    assert_eq!(classify("golang please").await["intent"], "code");
    assert_eq!(classify("rust please").await["intent"], "general");
    // Not even YAML: rejected too.
    std::fs::write(&path, "models: [").unwrap();
    let (status, _) = http
        .post(&admin_url(&gw), "/admin/reload", &json!({}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(classify("golang please").await["intent"], "code");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills the child process when the test ends, however it ends.
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let fleet = Fleet::start().await;
    let dir = std::env::temp_dir().join(format!("switchyard-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml(&fleet.urls(), "python", "coder")).unwrap();
    let (port, admin, metrics) = (free_port(), free_port(), free_port());
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args([
                "serve",
                "--database-url",
                "sqlite::memory:",
                "--config",
                path.to_str().unwrap(),
                "--log-level",
                "warn",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--admin-port",
                &admin.to_string(),
            ])
            .args(["--prometheus-port", &metrics.to_string()])
            .stdout(std::fs::File::create(dir.join("log")).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .expect("the binary starts"),
    );
    let http = Http::new();
    let url = format!("http://127.0.0.1:{port}");
    let intent_of = |text: &'static str| {
        let (http, url) = (&http, url.clone());
        async move {
            let resp = http
                .0
                .post(format!("{url}/router/classify"))
                .json(&json!({"text": text}))
                .send()
                .await;
            match resp {
                Ok(r) => r.json::<Value>().await.ok().map(|v| v["intent"].clone()),
                Err(_) => None,
            }
        }
    };
    eventually("the gateway answers", || async {
        intent_of("golang").await.is_some()
    })
    .await;
    assert_eq!(intent_of("golang").await.unwrap(), "general");
    std::fs::write(&path, yaml(&fleet.urls(), "python, golang", "coder")).unwrap();
    let pid = child.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("SIGHUP applied the new keyword", || async {
        intent_of("golang").await == Some(json!("code"))
    })
    .await;
    // A bad file on SIGHUP: the process keeps running with the rules it had.
    std::fs::write(&path, yaml(&fleet.urls(), "rust", "ghost")).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    // Once the handler has logged the refusal, the rules are still the previous ones.
    let logged = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        read("log") + &read("err")
    };
    eventually("the refusal is logged", || async {
        logged().contains("the new config was rejected")
    })
    .await;
    assert!(logged().contains("unknown model `ghost`"), "{}", logged());
    assert_eq!(intent_of("golang").await, Some(json!("code")));
    assert_eq!(intent_of("rust").await, Some(json!("general")));
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_config_of_the_docs_is_valid() {
    let doc = include_str!("../../../docs/model-selection.md");
    let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + doc[start..].find("\n```").unwrap();
    let cfg: Config = yaml_serde::from_str(&doc[start..end]).unwrap();
    cfg.validate_selection().unwrap();
    assert_eq!(
        cfg.fallback_chains().unwrap()["coder"],
        ["general", "reasoner"]
    );
}

#[test]
fn the_example_configs_are_valid() {
    for name in ["intent-keywords", "intent-embedding"] {
        let path = format!(
            "{}/../../bench/configs/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let cfg: Config = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        cfg.validate_selection()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let ir = cfg.intent_routing.unwrap();
        assert_eq!(ir.intents.len(), 3, "{path}");
    }
}

/// Prefill and decode engines serving `model`.
async fn pd_pair(model: &str) -> (SimHandle, SimHandle) {
    let one = |role| SimConfig {
        engines: 1,
        role,
        served_model_name: vec![model.into()],
        time_scale: 100.0,
        ..SimConfig::default()
    };
    (
        sims_with(one(switchyard_sim::Role::Prefill)).await,
        sims_with(one(switchyard_sim::Role::Decode)).await,
    )
}

#[tokio::test]
async fn prefill_decode_falls_back_once_every_decode_worker_failed() {
    let (coder_p, coder_d) = pd_pair("coder").await;
    let (general_p, general_d) = pd_pair("general").await;
    let (reasoner_p, reasoner_d) = pd_pair("reasoner").await;
    let mut cfg = routing(vec![]);
    cfg.models.remove("small");
    cfg.pd_disaggregation = true;
    cfg.prefill = [&coder_p, &general_p, &reasoner_p]
        .iter()
        .flat_map(|s| s.urls())
        .collect();
    cfg.decode = [&coder_d, &general_d, &reasoner_d]
        .iter()
        .flat_map(|s| s.urls())
        .collect();
    cfg.cb_failure_threshold = 100;
    cfg.health_failure_threshold = 100;
    let gw = gateway(cfg).await;
    let http = Http::new();
    // coder's only decode worker answers 503: its prefill worker is fine, but a retry
    // could only reuse the failed decode worker, so the request moves on after one send.
    set_faults_everywhere(
        &coder_d,
        &Faults {
            error_rate: 1.0,
            error_status: 503,
            retry_after_secs: 0,
            ..Faults::default()
        },
    );
    let (status, meta, body) = routed(&http, &gw.url(), &ask("auto", "a python function")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "general");
    assert_eq!(
        (meta["fallback_from"].as_str(), meta["attempts"].as_u64()),
        (Some("coder"), Some(2)),
        "{meta}"
    );
    assert_eq!(per_server(&general_d).iter().sum::<u64>(), 1);
}

/// `switchyard demo` routes `model: auto` by intent out of the box.
#[cfg(feature = "demo")]
#[tokio::test]
async fn the_demo_routes_auto_by_intent() {
    let (port, admin, metrics) = (free_port(), free_port(), free_port());
    let _child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["demo", "--log-level", "warn", "--port", &port.to_string()])
            .args([
                "--admin-port",
                &admin.to_string(),
                "--prometheus-port",
                &metrics.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    let http = Http::new();
    let url = format!("http://127.0.0.1:{port}");
    eventually("the demo answers", || async {
        http.0.get(format!("{url}/v1/models")).send().await.is_ok()
    })
    .await;
    let (status, meta, body) = routed(&http, &url, &ask("auto", "Fix this Python function")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (meta["intent"].as_str(), body["model"].as_str()),
        (Some("code"), Some("coder"))
    );
    let (status, meta, _) = routed(&http, &url, &ask("switchyard/sim-8b", "Hello!")).await;
    assert_eq!(status, 200);
    assert_eq!(meta["model_id"], "switchyard/sim-8b");
    // /route works out of the box too: every default use case has a model.
    let (status, first) = http
        .post(
            &url,
            "/route",
            &json!({"query": "Write a Python function that parses dates"}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, next) = http
        .post(
            &url,
            "/route",
            &json!({"query": "Make it shorter", "session_id": first["session_id"]}),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["bypass_used"], true, "{next}");
    let (_, cases) = http.get(&format!("{url}/use-cases")).await;
    assert!(
        cases["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "healthy"),
        "{cases}"
    );
}
