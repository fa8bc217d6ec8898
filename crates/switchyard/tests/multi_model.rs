//! Several models behind one gateway: routing by `model`, aliases, per-model policies,
//! the model list and the 404 that names what is available.

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::SimConfig;

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
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let gw = gateway(config(urls, PolicyKind::RoundRobin)).await;
    for i in 0..4 {
        let (status, body) = post(
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
            post(
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
    let models: Value = client()
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["model-a", "model-b"]);
    let (status, body) = post(&gw.url(), "/v1/completions", &req("model-c", "x")).await;
    assert_eq!(status, 404);
    assert_error(&body, "model_not_found");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("model-a") && msg.contains("model-b"), "{msg}");
}

#[tokio::test]
async fn aliases_resolve_to_their_model_and_rewrite_the_body() {
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let mut cfg = config(urls, PolicyKind::RoundRobin);
    cfg.model_alias = vec!["fast=model-a".into(), "ghost=model-z".into()];
    let gw = gateway(cfg).await;
    let (status, body) = post(&gw.url(), "/v1/completions", &req("fast", "x")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["model"], "model-a",
        "the engine saw the real model name"
    );
    assert_eq!(a.servers().iter().map(|s| s.requests()).sum::<u64>(), 1);
    // An alias of a model nobody serves is a 404; it is not listed.
    let (status, _) = post(&gw.url(), "/v1/completions", &req("ghost", "x")).await;
    assert_eq!(status, 404);
    let models: Value = client()
        .get(format!("{}/v1/models", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let (a, b) = two_models().await;
    let mut urls = a.urls();
    urls.extend(b.urls());
    let mut cfg = config(urls, PolicyKind::CacheAware);
    cfg.model_policy = vec!["model-b=round_robin".into()];
    let gw = gateway(cfg).await;
    let long = system_prompt(5, 500);
    for _ in 0..4 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", &req("model-a", &long))
                .await
                .0,
            200
        );
        assert_eq!(
            post(&gw.url(), "/v1/completions", &req("model-b", &long))
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
        metric(
            &m,
            "switchyard_policy_decisions_total",
            &[("policy", "round_robin")]
        )
        .await,
        4.0
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_policy_decisions_total",
            &[("policy", "cache_aware")]
        )
        .await,
        4.0
    );
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
        let err = cfg.validate().unwrap_err();
        assert!(err.contains(flag), "{err}");
    }
}
