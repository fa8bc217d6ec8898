//! The worker API on the admin listener: registration jobs, listing, relabeling,
//! draining with streams in flight, loads, cache flushes, and every validation error.

mod common;

use common::*;
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::{Faults, SimConfig};

fn admin(gw: &switchyard::Gateway) -> String {
    format!("http://{}", gw.admin_addr)
}

async fn admin_post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    post(url, path, body).await
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Registers `url` and waits for the job to end; returns the job.
async fn register(gw: &switchyard::Gateway, body: Value) -> Value {
    let (status, resp) = admin_post(&admin(gw), "/workers", &body).await;
    assert_eq!(status, 202, "{resp}");
    let job = resp["job_id"].as_str().unwrap().to_string();
    let url = format!("{}/jobs/{job}", admin(gw));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, j) = get_json(&url).await;
        if j["state"] != "pending" {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "registration job still pending: {j}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_registered_worker_takes_traffic_and_is_listed() {
    let sims = sims(1).await;
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let (status, _) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 503, "no worker yet");
    let job = register(&gw, json!({"url": sims.url(), "labels": {"zone": "a"}})).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["worker_ids"][0].as_str().unwrap().to_string();
    let (status, body) = post(
        &gw.url(),
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = get_json(&format!("{}/workers", admin(&gw))).await;
    let w = &list["workers"][0];
    assert_eq!(w["id"], id.as_str());
    assert_eq!(w["url"], sims.url());
    assert_eq!(w["models"], json!([MODEL]));
    assert_eq!(w["labels"], json!({"zone": "a"}));
    assert_eq!(w["healthy"], true);
    let (status, one) = get_json(&format!("{}/workers/{id}", admin(&gw))).await;
    assert_eq!(status, 200);
    assert_eq!(one["in_flight"], 0);
    // Relabel.
    let resp = client()
        .patch(format!("{}/workers/{id}", admin(&gw)))
        .json(&json!({"labels": {"zone": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["labels"],
        json!({"zone": "b"})
    );
    // Loads.
    let (_, loads) = get_json(&format!("{}/get_loads", admin(&gw))).await;
    assert_eq!(loads["workers"][0]["id"], id.as_str());
    // Data-parallel registration makes one candidate per rank.
    let dp = sims_with(SimConfig {
        data_parallel_size: 2,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    let job = register(&gw, json!({"url": dp.url(), "dp_size": 2})).await;
    assert_eq!(job["worker_ids"].as_array().unwrap().len(), 2, "{job}");
}

#[tokio::test]
async fn the_data_plane_does_not_serve_the_worker_api() {
    let sims = sims(1).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    for path in ["/workers", "/get_loads"] {
        let r = client()
            .get(format!("{}{path}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn registration_errors_are_clear() {
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.worker_allowlist = vec!["127.0.0.0/8".into()];
    let gw = gateway(cfg).await;
    let a = admin(&gw);
    for (body, status, code) in [
        (json!({"url": "not a url"}), 400, "invalid_request"),
        (
            json!({"url": "https://127.0.0.1:8000"}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "ftp://127.0.0.1:8000"}),
            400,
            "invalid_request",
        ),
        (json!({"url": sims.url()}), 409, "conflict"),
        (json!({"url": "http://10.1.2.3:8000"}), 403, "forbidden"),
        (
            json!({"url": "http://127.0.0.1:9", "flavor": 3}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "http://127.0.0.1:9", "weight": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "http://127.0.0.1:9", "weight": 1001}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "http://127.0.0.1:9", "priority": -1}),
            400,
            "invalid_request",
        ),
        (json!({"model_id": "m"}), 400, "invalid_request"),
        (
            json!({"url": "http://127.0.0.1:9", "dp_size": 0}),
            400,
            "invalid_request",
        ),
    ] {
        let (got, resp) = admin_post(&a, "/workers", &body).await;
        assert_eq!(got, status, "{body} -> {resp}");
        assert_error(&resp, code);
    }
    let r = client()
        .post(format!("{a}/workers"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unreachable: the job fails and says why.
    let job = register(&gw, json!({"url": "http://127.0.0.1:9"})).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"].as_str().unwrap().contains("unreachable"),
        "{job}"
    );
    // Serving another model than asked for.
    let other = sims_with(SimConfig {
        time_scale: 100.0,
        served_model_name: vec!["other".into()],
        ..SimConfig::default()
    })
    .await;
    let job = register(&gw, json!({"url": other.url(), "model_id": MODEL})).await;
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("other"), "{job}");
    // Unknown ids.
    assert_eq!(get_json(&format!("{a}/workers/nope")).await.0, 404);
    assert_eq!(get_json(&format!("{a}/jobs/nope")).await.0, 404);
    let r = client()
        .delete(format!("{a}/workers/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .patch(format!("{a}/workers/nope"))
        .json(&json!({"labels": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Patches that change nothing or set a bad weight.
    let id = get_json(&format!("{a}/workers")).await.1["workers"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (patch, param) in [
        (json!({}), Value::Null),
        (json!({"weight": 0}), json!("weight")),
        (json!({"weight": "heavy"}), json!("weight")),
        (json!({"colour": "red"}), Value::Null),
    ] {
        let r = client()
            .patch(format!("{a}/workers/{id}"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{patch}");
        let body: Value = r.json().await.unwrap();
        assert_error(&body, "invalid_request");
        if !param.is_null() {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    }
}

#[tokio::test]
async fn dp_size_is_discovered_from_the_engine_metrics() {
    let dp = sims_with(SimConfig {
        data_parallel_size: 3,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let job = register(&gw, json!({"url": dp.url()})).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["worker_ids"].as_array().unwrap().len(), 3, "{job}");
    let (_, list) = get_json(&format!("{}/workers", admin(&gw))).await;
    let mut ranks: Vec<u64> = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["dp_rank"].as_u64().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, vec![0, 1, 2]);
    // A single-rank engine stays one candidate without a rank.
    let one = sims(1).await;
    let job = register(&gw, json!({"url": one.url()})).await;
    assert_eq!(job["worker_ids"].as_array().unwrap().len(), 1, "{job}");
    let (_, w) = get_json(&format!(
        "{}/workers/{}",
        admin(&gw),
        job["worker_ids"][0].as_str().unwrap()
    ))
    .await;
    assert_eq!(w["dp_rank"], Value::Null);
}

#[tokio::test]
async fn weights_split_traffic_and_priorities_pick_the_preferred_tier() {
    let sims = sims(3).await;
    let urls = sims.urls();
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let heavy = register(&gw, json!({"url": urls[0], "weight": 3})).await;
    let light = register(&gw, json!({"url": urls[1]})).await;
    assert_eq!(heavy["state"], "succeeded", "{heavy}");
    assert_eq!(light["state"], "succeeded", "{light}");
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1});
    for _ in 0..40 {
        assert_eq!(post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(per_server(&sims), vec![30, 10, 0], "3:1 by weight");
    // A higher-priority worker takes all traffic while it is eligible.
    let preferred = register(&gw, json!({"url": urls[2], "priority": 1})).await;
    let pid = preferred["worker_ids"][0].as_str().unwrap().to_string();
    for _ in 0..10 {
        assert_eq!(post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(per_server(&sims), vec![30, 10, 10]);
    let (_, w) = get_json(&format!("{}/workers/{pid}", admin(&gw))).await;
    assert_eq!(
        (w["priority"].as_u64(), w["weight"].as_u64()),
        (Some(1), Some(1))
    );
    // Demoted by PATCH, it shares traffic by weight again (3:1:1).
    let r = client()
        .patch(format!("{}/workers/{pid}", admin(&gw)))
        .json(&json!({"priority": 0, "weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["priority"], 0);
    for _ in 0..50 {
        assert_eq!(post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(per_server(&sims), vec![60, 20, 20]);
}

#[tokio::test]
async fn the_admin_key_guards_the_worker_api() {
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.admin_api_key = Some("admin-secret".into());
    let gw = gateway(cfg).await;
    let r = client()
        .get(format!("{}/workers", admin(&gw)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.json().await.unwrap(), "invalid_api_key");
    let r = client()
        .get(format!("{}/workers", admin(&gw)))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn delete_drains_a_worker_while_its_streams_finish() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 20.0,
        ..SimConfig::default()
    })
    .await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let mut stream = client()
        .post(format!("{}/v1/completions", gw.url()))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 200, "stream": true}))
        .send()
        .await
        .unwrap();
    stream.chunk().await.unwrap();
    let busy = if sims.server(0).requests() == 1 { 0 } else { 1 };
    let (_, list) = get_json(&format!("{}/workers", admin(&gw))).await;
    let id = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["url"] == sims.urls()[busy])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client()
        .delete(format!("{}/workers/{id}", admin(&gw)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, w) = get_json(&format!("{}/workers/{id}", admin(&gw))).await;
    assert_eq!(w["draining"], true);
    assert_eq!(w["in_flight"], 1);
    // New requests avoid the draining worker.
    for i in 0..4 {
        assert_eq!(
            post(
                &gw.url(),
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1})
            )
            .await
            .0,
            200
        );
    }
    assert_eq!(sims.server(busy).requests(), 1);
    // The stream in flight runs to its end, then the worker is gone.
    let mut text = Vec::new();
    while let Some(c) = stream.chunk().await.unwrap() {
        text.extend_from_slice(&c);
    }
    assert!(
        String::from_utf8(text)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
    let url = format!("{}/workers/{id}", admin(&gw));
    eventually("the drained worker to be removed", || {
        let url = url.clone();
        async move { get_json(&url).await.0 == 404 }
    })
    .await;
}

#[tokio::test]
async fn flush_cache_reports_each_engine() {
    let sims = sims(2).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let body = json!({"model": MODEL, "prompt": system_prompt(2, 300), "max_tokens": 1});
    post(&gw.url(), "/v1/completions", &body).await;
    post(&gw.url(), "/v1/completions", &body).await;
    let (status, resp) = admin_post(&admin(&gw), "/flush_cache", &json!({})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["all_ok"], true);
    assert_eq!(resp["results"].as_array().unwrap().len(), 2);
    let (_, after) = post(&gw.url(), "/v1/completions", &body).await;
    assert_eq!(
        after["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "caches were flushed"
    );
    // An engine that cannot flush is reported, not hidden.
    sims.server(1)
        .set_faults(Faults {
            refuse_connections: true,
            ..Faults::default()
        })
        .unwrap();
    sims.server(1).shutdown();
    let (status, resp) = admin_post(&admin(&gw), "/flush_cache", &json!({})).await;
    assert_eq!(status, 502, "{resp}");
    assert_eq!(resp["all_ok"], false);
    let failed: Vec<&Value> = resp["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["url"], sims.urls()[1]);
}
