//! The worker API on the admin listener: registration jobs, listing, relabeling,
//! draining with streams in flight, loads, cache flushes, the SSRF guard, and every
//! validation error.

use std::convert::Infallible;

use serde_json::{Value, json};
use switchyard::{Config, PolicyKind};
use switchyard_sim::{Faults, SimConfig};
use switchyard_testkit::*;

/// Registers a worker and waits for its job to end; returns the job.
async fn register(http: &Http, gw: &switchyard::Gateway, body: Value) -> Value {
    let (status, resp) = http.post(&admin_url(gw), "/workers", &body).await;
    assert_eq!(status, 202, "{resp}");
    let url = format!(
        "{}/jobs/{}",
        admin_url(gw),
        resp["job_id"].as_str().unwrap()
    );
    let job = std::cell::RefCell::new(Value::Null);
    eventually("the registration job to end", || async {
        let j = http.get(&url).await.1;
        let done = j["state"] != "pending";
        *job.borrow_mut() = j;
        done
    })
    .await;
    job.into_inner()
}

#[tokio::test]
async fn a_registered_worker_takes_traffic_and_is_listed() {
    let http = Http::new();
    let sims = sims(1).await;
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let (status, _) = http
        .post(
            &gw.url(),
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 503, "no worker yet");
    let job = register(
        &http,
        &gw,
        json!({"url": sims.url(), "labels": {"zone": "a"}}),
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["worker_ids"][0].as_str().unwrap().to_string();
    let (status, body) = http
        .post(
            &gw.url(),
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = http.get(&format!("{}/workers", admin_url(&gw))).await;
    let w = &list["workers"][0];
    assert_eq!(w["id"], id.as_str());
    assert_eq!(w["url"], sims.url());
    assert_eq!(w["models"], json!([MODEL]));
    assert_eq!(w["labels"], json!({"zone": "a"}));
    assert_eq!(w["healthy"], true);
    let (status, one) = http.get(&format!("{}/workers/{id}", admin_url(&gw))).await;
    assert_eq!(status, 200);
    assert_eq!(one["in_flight"], 0);
    // Relabel.
    let resp = http
        .0
        .patch(format!("{}/workers/{id}", admin_url(&gw)))
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
    let (_, loads) = http.get(&format!("{}/get_loads", admin_url(&gw))).await;
    assert_eq!(loads["workers"][0]["id"], id.as_str());
    // Data-parallel registration makes one candidate per rank.
    let dp = sims_with(SimConfig {
        data_parallel_size: 2,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    let job = register(&http, &gw, json!({"url": dp.url(), "dp_size": 2})).await;
    assert_eq!(job["worker_ids"].as_array().unwrap().len(), 2, "{job}");
}

#[tokio::test]
async fn the_data_plane_does_not_serve_the_worker_api() {
    let http = Http::new();
    let sims = sims(1).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    for path in ["/workers", "/get_loads"] {
        let r = http
            .0
            .get(format!("{}{path}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn registration_errors_are_clear() {
    let http = Http::new();
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.worker_allowlist = vec!["127.0.0.0/8".into()];
    let gw = gateway(cfg).await;
    let a = admin_url(&gw);
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
        let (got, resp) = http.post(&a, "/workers", &body).await;
        assert_eq!(got, status, "{body} -> {resp}");
        assert_error(&resp, code);
    }
    let r = http
        .0
        .post(format!("{a}/workers"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unreachable: the job fails and says why.
    let job = register(&http, &gw, json!({"url": "http://127.0.0.1:9"})).await;
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
    let job = register(&http, &gw, json!({"url": other.url(), "model_id": MODEL})).await;
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("other"), "{job}");
    // Unknown ids.
    assert_eq!(http.get(&format!("{a}/workers/nope")).await.0, 404);
    assert_eq!(http.get(&format!("{a}/jobs/nope")).await.0, 404);
    let r = http
        .0
        .delete(format!("{a}/workers/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .0
        .patch(format!("{a}/workers/nope"))
        .json(&json!({"labels": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Patches that change nothing or set a bad weight.
    let id = http.get(&format!("{a}/workers")).await.1["workers"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (patch, param) in [
        (json!({}), Value::Null),
        (json!({"weight": 0}), json!("weight")),
        (json!({"weight": "heavy"}), json!("weight")),
        (json!({"colour": "red"}), Value::Null),
    ] {
        let r = http
            .0
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
    let http = Http::new();
    let dp = sims_with(SimConfig {
        data_parallel_size: 3,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await;
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let job = register(&http, &gw, json!({"url": dp.url()})).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["worker_ids"].as_array().unwrap().len(), 3, "{job}");
    let (_, list) = http.get(&format!("{}/workers", admin_url(&gw))).await;
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
    let job = register(&http, &gw, json!({"url": one.url()})).await;
    assert_eq!(job["worker_ids"].as_array().unwrap().len(), 1, "{job}");
    let (_, w) = http
        .get(&format!(
            "{}/workers/{}",
            admin_url(&gw),
            job["worker_ids"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!(w["dp_rank"], Value::Null);
}

#[tokio::test]
async fn weights_split_traffic_and_priorities_pick_the_preferred_tier() {
    let http = Http::new();
    let sims = sims(3).await;
    let urls = sims.urls();
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let heavy = register(&http, &gw, json!({"url": urls[0], "weight": 3})).await;
    let light = register(&http, &gw, json!({"url": urls[1]})).await;
    assert_eq!(heavy["state"], "succeeded", "{heavy}");
    assert_eq!(light["state"], "succeeded", "{light}");
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1});
    for _ in 0..40 {
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(per_server(&sims), vec![30, 10, 0], "3:1 by weight");
    // A higher-priority worker takes all traffic while it is eligible.
    let preferred = register(&http, &gw, json!({"url": urls[2], "priority": 1})).await;
    let pid = preferred["worker_ids"][0].as_str().unwrap().to_string();
    for _ in 0..10 {
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(per_server(&sims), vec![30, 10, 10]);
    let (_, w) = http.get(&format!("{}/workers/{pid}", admin_url(&gw))).await;
    assert_eq!(
        (w["priority"].as_u64(), w["weight"].as_u64()),
        (Some(1), Some(1))
    );
    // Demoted by PATCH, it shares traffic by weight again (3:1:1).
    let r = http
        .0
        .patch(format!("{}/workers/{pid}", admin_url(&gw)))
        .json(&json!({"priority": 0, "weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["priority"], 0);
    for _ in 0..50 {
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(per_server(&sims), vec![60, 20, 20]);
}

#[tokio::test]
async fn the_admin_key_guards_the_worker_api() {
    let http = Http::new();
    let sims = sims(1).await;
    let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
    cfg.admin_api_key = Some("admin-secret".into());
    let gw = gateway(cfg).await;
    let r = http
        .0
        .get(format!("{}/workers", admin_url(&gw)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error(&r.json().await.unwrap(), "invalid_api_key");
    let r = http
        .0
        .get(format!("{}/workers", admin_url(&gw)))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn delete_drains_a_worker_while_its_streams_finish() {
    let http = Http::new();
    let sims = sims(2).await;
    // Every stream stalls after its first event until the fault is lifted, so it is
    // certainly still open while the worker drains.
    set_faults_everywhere(&sims, &stalled());
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let mut stream = http
        .0
        .post(format!("{}/v1/completions", gw.url()))
        .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 20, "stream": true}))
        .send()
        .await
        .unwrap();
    stream.chunk().await.unwrap();
    let busy = if sims.server(0).requests() == 1 { 0 } else { 1 };
    let (_, list) = http.get(&format!("{}/workers", admin_url(&gw))).await;
    let id = list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["url"] == sims.urls()[busy])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .0
        .delete(format!("{}/workers/{id}", admin_url(&gw)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, w) = http.get(&format!("{}/workers/{id}", admin_url(&gw))).await;
    assert_eq!(w["draining"], true);
    assert_eq!(w["in_flight"], 1);
    // New requests avoid the draining worker.
    for i in 0..4 {
        let body = json!({"model": MODEL, "prompt": format!("{i}"), "max_tokens": 1});
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert_eq!(sims.server(busy).requests(), 1);
    // Still there while its stream is open.
    let (status, w) = http.get(&format!("{}/workers/{id}", admin_url(&gw))).await;
    assert_eq!((status, &w["in_flight"]), (200, &json!(1)));
    // The stream in flight runs to its end, then the worker is gone.
    sims.server(busy).set_faults(Faults::default()).unwrap();
    let mut text = Vec::new();
    while let Some(c) = stream.chunk().await.unwrap() {
        text.extend_from_slice(&c);
    }
    assert!(
        String::from_utf8(text)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
    let url = format!("{}/workers/{id}", admin_url(&gw));
    eventually("the drained worker to be removed", || async {
        http.get(&url).await.0 == 404
    })
    .await;
}

/// An engine whose `/health` answers 200 with a body that never ends.
async fn endless_health() -> String {
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(|| async {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let endless =
                futures_util::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
            axum::body::Body::from_stream(endless)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn probes_read_at_most_a_bounded_body() {
    let http = Http::new();
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let job = register(&http, &gw, json!({"url": endless_health().await})).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("larger than"),
        "{job}"
    );
}

#[tokio::test]
async fn the_allowlist_pins_the_resolved_address_and_restricts_ports() {
    let http = Http::new();
    let sims = sims(1).await;
    let port = sims.server(0).addr().port();
    let gw = gateway(Config {
        worker_allowlist: vec!["127.0.0.1/32".into()],
        worker_allowed_ports: vec![port],
        ..config(vec![], PolicyKind::RoundRobin)
    })
    .await;
    // A host name is allowed through the address it resolves to, and the worker keeps
    // the name while connecting to that checked address.
    let by_name = format!("http://localhost:{port}");
    let job = register(&http, &gw, json!({"url": by_name})).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, list) = http.get(&format!("{}/workers", admin_url(&gw))).await;
    assert_eq!(list["workers"][0]["url"], by_name.as_str());
    // Connections go to the checked address; the name travels in the Host header.
    let worker = gw.state.registry.all()[0].clone();
    assert_eq!(
        worker.uri("/v1/models").authority().unwrap().as_str(),
        format!("127.0.0.1:{port}")
    );
    assert_eq!(
        worker.host_header().unwrap(),
        format!("localhost:{port}").as_str()
    );
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 1});
    assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    assert_eq!(sims.server(0).requests(), 1);
    // Another port, or an address outside the list, is refused before any probe.
    for (url, why) in [
        (
            format!("http://127.0.0.1:{}", port + 1),
            "--worker-allowed-ports",
        ),
        (format!("http://127.0.0.2:{port}"), "--worker-allowlist"),
    ] {
        let (status, resp) = http
            .post(&admin_url(&gw), "/workers", &json!({"url": url}))
            .await;
        assert_eq!(status, 403, "{resp}");
        assert_error(&resp, "forbidden");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(why),
            "{resp}"
        );
    }
}

#[tokio::test]
async fn flush_cache_reports_each_engine() {
    let http = Http::new();
    let sims = sims(2).await;
    let gw = gateway(config(sims.urls(), PolicyKind::RoundRobin)).await;
    let body = json!({"model": MODEL, "prompt": prompt_text(2, 300), "max_tokens": 1});
    http.post(&gw.url(), "/v1/completions", &body).await;
    http.post(&gw.url(), "/v1/completions", &body).await;
    let (status, resp) = http.post(&admin_url(&gw), "/flush_cache", &json!({})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["all_ok"], true);
    assert_eq!(resp["results"].as_array().unwrap().len(), 2);
    let (_, after) = http.post(&gw.url(), "/v1/completions", &body).await;
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
    let (status, resp) = http.post(&admin_url(&gw), "/flush_cache", &json!({})).await;
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
