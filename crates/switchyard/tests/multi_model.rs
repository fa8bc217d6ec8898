//! Several models behind one gateway: routing by `model`, aliases, per-model policies,
//! the model list and the 404 that names what is available.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::SimConfig;
use switchyard_testkit::*;

async fn two_models() -> (switchyard_sim::SimHandle, switchyard_sim::SimHandle) {
    let a = sims_with(SimConfig {
        engines: 2,
        served_model_name: vec!["model-a".into()],
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    let b = sims_with(SimConfig {
        engines: 2,
        served_model_name: vec!["model-b".into()],
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    (a, b)
}

fn req(model: &str, prompt: &str) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": 1})
}

#[tokio::test]
async fn requests_go_to_the_workers_of_their_model() {
    let http = Http::new();
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let gw = gateway(config(urls, PolicyKind::RoundRobin)).await;
    for i in 0..4 {
        let (status, body) = http
            .post(
                &gw.url(),
                "/v1/completions",
                &req("model-a", &format!("{i}")),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], "model-a");
    }
    for i in 0..2 {
        assert_eq!(
            http.post(
                &gw.url(),
                "/v1/completions",
                &req("model-b", &format!("{i}"))
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(per_server(&a), [2, 2]);
    assert_eq!(per_server(&b), [1, 1]);
    let (_, models) = http.get(&format!("{}/v1/models", gw.url())).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["model-a", "model-b"]);
    let (status, body) = http
        .post(&gw.url(), "/v1/completions", &req("model-c", "x"))
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "model_not_found");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("model-a") && msg.contains("model-b"), "{msg}");
}

#[tokio::test]
async fn aliases_resolve_to_their_model_and_rewrite_the_body() {
    let http = Http::new();
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let mut cfg = config(urls, PolicyKind::RoundRobin);
    cfg.model_alias = vec!["fast=model-a".into(), "ghost=model-z".into()];
    let gw = gateway(cfg).await;
    let (status, body) = http
        .post(&gw.url(), "/v1/completions", &req("fast", "x"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["model"], "model-a",
        "the engine saw the real model name"
    );
    assert_eq!(a.servers().iter().map(|s| s.requests()).sum::<u64>(), 1);
    // An alias of a model nobody serves is a 404; it is not listed.
    let (status, _) = http
        .post(&gw.url(), "/v1/completions", &req("ghost", "x"))
        .await;
    assert_eq!(status, 404);
    let (_, models) = http.get(&format!("{}/v1/models", gw.url())).await;
    let fast = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "fast")
        .expect("alias listed");
    assert_eq!(fast["parent"], "model-a");
    assert!(
        !models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "ghost")
    );
}

#[tokio::test]
async fn each_model_can_have_its_own_policy() {
    let http = Http::new();
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let mut cfg = config(urls, PolicyKind::CacheAware);
    cfg.model_policy = vec!["model-b=round_robin".into()];
    let gw = gateway(cfg).await;
    let long = prompt_text(5, 500);
    for _ in 0..4 {
        assert_eq!(
            http.post(&gw.url(), "/v1/completions", &req("model-a", &long))
                .await
                .0,
            200
        );
        assert_eq!(
            http.post(&gw.url(), "/v1/completions", &req("model-b", &long))
                .await
                .0,
            200
        );
    }
    assert!(
        per_server(&a).contains(&4),
        "cache_aware keeps model-a's prefix together: {:?}",
        per_server(&a)
    );
    assert_eq!(per_server(&b), [2, 2], "model-b takes turns");
    let m = metrics_url(&gw);
    assert_eq!(
        http.metric(
            &m,
            "switchyard_policy_decisions_total",
            &[("policy", "round_robin")]
        )
        .await,
        4.0
    );
    assert_eq!(
        http.metric(
            &m,
            "switchyard_policy_decisions_total",
            &[("policy", "cache_aware")]
        )
        .await,
        4.0
    );
}

/// Requests for `model` sharing a long system prompt but each with its own question.
async fn shared_prefix_requests(http: &Http, gw: &switchyard::Gateway, model: &str) {
    let system = prompt_text(9, 300);
    for q in ["first question here", "second different question entirely"] {
        let body = req(model, &format!("{system}\n{q} {}", "z ".repeat(200)));
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
}

async fn decisions(http: &Http, gw: &switchyard::Gateway, policy: &str, reason: &str) -> f64 {
    http.metric(
        &metrics_url(gw),
        "switchyard_policy_decisions_total",
        &[("policy", policy), ("reason", reason)],
    )
    .await
}

#[tokio::test]
async fn models_have_their_own_policy_settings_from_the_config_file() {
    let http = Http::new();
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let path = std::env::temp_dir().join(format!(
        "sy-models-{}-{:x}.yaml",
        std::process::id(),
        std::ptr::from_ref(&a) as usize
    ));
    std::fs::write(
        &path,
        "policy: cache_aware\nmodels:\n  model-a:\n    cache_threshold: 0.95\n  model-b:\n    cache_threshold: 0.1\n",
    )
    .unwrap();
    let (_, file_cfg) = switchyard::Config::from_arg_list([
        "switchyard",
        "serve",
        "--config",
        path.to_str().unwrap(),
    ])
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(file_cfg.models["model-a"].cache_threshold, Some(0.95));
    let cfg = switchyard::Config {
        models: file_cfg.models,
        ..config(urls, PolicyKind::CacheAware)
    };
    let gw = gateway(cfg).await;
    // The second prompt shares well under 95% but over 10% of the first: a hit for
    // model-b's threshold, not for model-a's.
    shared_prefix_requests(&http, &gw, "model-a").await;
    assert_eq!(decisions(&http, &gw, "cache_aware", "cache_hit").await, 0.0);
    shared_prefix_requests(&http, &gw, "model-b").await;
    assert_eq!(decisions(&http, &gw, "cache_aware", "cache_hit").await, 1.0);
}

#[tokio::test]
async fn worker_labels_set_a_models_policy() {
    let http = Http::new();
    let (a, b) = two_models().await;
    let gw = gateway(config(a.urls(), PolicyKind::CacheAware)).await;
    let admin = admin_url(&gw);
    // Bad policy labels are refused up front.
    for labels in [
        json!({"policy": "fastest"}),
        json!({"policy": "cache_aware", "policy.cache_threshold": "2"}),
        json!({"policy.colour": "red"}),
        // A label may not point the gateway at files on its disk.
        json!({"policy": "precise_prefix", "policy.kv_tokenizer": "/etc/passwd"}),
        json!({"policy.kv_chat_template": "/etc/passwd"}),
    ] {
        let (status, body) = http
            .post(
                &admin,
                "/workers",
                &json!({"url": b.urls()[0], "labels": labels}),
            )
            .await;
        assert_eq!(status, 400, "{labels} -> {body}");
        assert_error(&body, "invalid_request");
        assert_eq!(body["error"]["param"], "labels", "{body}");
    }
    for url in b.urls() {
        let (status, body) = http
            .post(
                &admin,
                "/workers",
                &json!({"url": url, "labels": {"policy": "round_robin"}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually("both model-b workers registered", || async {
        let v: Value = admin_workers(&http, &gw).await;
        v["workers"].as_array().unwrap().len() == 4
    })
    .await;
    let long = prompt_text(3, 400);
    for _ in 0..4 {
        assert_eq!(
            http.post(&gw.url(), "/v1/completions", &req("model-b", &long))
                .await
                .0,
            200
        );
        assert_eq!(
            http.post(&gw.url(), "/v1/completions", &req("model-a", &long))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        per_server(&b),
        [2, 2],
        "model-b takes turns, as its labels say"
    );
    assert!(
        per_server(&a).contains(&4),
        "model-a stays cache-aware: {:?}",
        per_server(&a)
    );
    assert_eq!(decisions(&http, &gw, "round_robin", "turn").await, 4.0);
}

#[test]
fn bad_model_flags_are_rejected() {
    for (policy, alias, flag) in [
        (vec!["model-a"], vec![], "--model-policy"),
        (vec!["model-a=fastest"], vec![], "--model-policy"),
        (vec![], vec!["fast"], "--model-alias"),
        (vec![], vec!["x=x"], "--model-alias"),
    ] {
        let cfg = switchyard::Config {
            model_policy: policy.into_iter().map(String::from).collect(),
            model_alias: alias.into_iter().map(String::from).collect(),
            ..switchyard::Config::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(flag), "{err}");
    }
    let mut models = std::collections::BTreeMap::new();
    models.insert(
        "model-a".to_string(),
        switchyard::ModelSettings {
            balance_rel_threshold: Some(0.5),
            ..Default::default()
        },
    );
    let cfg = switchyard::Config {
        models,
        ..switchyard::Config::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("models.model-a") && err.contains("balance-rel-threshold"),
        "{err}"
    );
}
