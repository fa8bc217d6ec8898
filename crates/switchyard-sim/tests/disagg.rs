//! Prefill/decode disaggregation: vLLM's NixlConnector `kv_transfer_params` and
//! SGLang's bootstrap rooms.

use serde_json::{Value, json};
use switchyard_sim::{Role, SimConfig};
use switchyard_testkit::*;

fn role(role: Role) -> SimConfig {
    SimConfig {
        role,
        bootstrap_port: Some(0),
        ..fast()
    }
}

#[tokio::test]
async fn nixl_prefill_then_decode_round_trip() {
    let http = Http::new();
    let prefill = sims_with(role(Role::Prefill)).await;
    let decode = sims_with(role(Role::Decode)).await;
    let prompt = prompt_text(11, 2000);
    let (status, p) = http.post(
        &prefill.url(),
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 1, "stream": false,
                "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
                    "remote_engine_id": null, "remote_block_ids": null, "remote_host": null, "remote_port": null}}),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    let kv = &p["kv_transfer_params"];
    assert_eq!(kv["do_remote_prefill"], true);
    assert_eq!(kv["do_remote_decode"], false);
    let prompt_tokens = p["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(
        kv["remote_block_ids"].as_array().unwrap().len() as u64,
        prompt_tokens.div_ceil(16)
    );
    assert!(kv["remote_engine_id"].as_str().unwrap().starts_with("sim-"));
    assert_eq!(
        kv["remote_port"].as_u64().unwrap(),
        u64::from(prefill.server(0).addr().port())
    );

    let mut events = Vec::new();
    let (status, stream) = http.sse(
        &decode.url(),
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true},
                "kv_transfer_params": kv}),
    )
    .await;
    assert_eq!(status, 200, "{stream:?}");
    events.extend(stream);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    // The prefill engine computed the whole prompt; the decode engine received its KV
    // and computed only the last prompt token (the one that yields the first output).
    assert_eq!(
        p["sim_timing"]["computed_prompt_tokens"].as_u64(),
        Some(prompt_tokens),
        "{p}"
    );
    assert_eq!(usage["sim_timing"]["computed_prompt_tokens"], 1, "{usage}");
}

#[tokio::test]
async fn roles_refuse_the_wrong_half() {
    let http = Http::new();
    let prefill = sims_with(role(Role::Prefill)).await;
    let decode = sims_with(role(Role::Decode)).await;
    let remote_prefill =
        json!({"do_remote_prefill": true, "remote_block_ids": [1, 2], "remote_engine_id": "x"});
    let (status, body) = http
        .post(
            &prefill.url(),
            "/v1/completions",
            &json!({"prompt": "x", "kv_transfer_params": remote_prefill}),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, 400);
    assert_eq!(body["error"]["param"], "kv_transfer_params");
    let (status, body) = http
        .post(
            &decode.url(),
            "/v1/completions",
            &json!({"prompt": "x", "kv_transfer_params": {"do_remote_decode": true}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, 400);
    let (status, body) = http
        .post(
            &decode.url(),
            "/v1/completions",
            &json!({"prompt": "x", "kv_transfer_params": {"do_remote_prefill": true}}),
        )
        .await;
    assert_eq!(status, 400, "missing remote_block_ids");
    assert_error(&body, 400);
    let both = sims_with(fast()).await;
    let (status, body) = http
        .post(
            &both.url(),
            "/v1/completions",
            &json!({"prompt": "x", "bootstrap_room": 5}),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, 400);
    let (status, body) = http
        .post(
            &decode.url(),
            "/v1/completions",
            &json!({"prompt": "x", "bootstrap_room": 5}),
        )
        .await;
    assert_eq!(status, 400, "decode needs bootstrap_host/port");
    assert_error(&body, 400);
    // A decode engine fetches only from allowed hosts (loopback by default): another
    // address, or a name, is refused before anything is fetched.
    for host in [
        "10.0.0.1",
        "169.254.169.254",
        "metadata.google.internal",
        "[fe80::1]",
    ] {
        let (status, body) = http
            .post(
                &decode.url(),
                "/v1/completions",
                &json!({"prompt": "x", "bootstrap_room": 5, "bootstrap_host": host, "bootstrap_port": 80}),
            )
            .await;
        assert_eq!(status, 400, "{host}: {body}");
        assert_error(&body, 400);
        assert_eq!(body["error"]["param"], "bootstrap_host");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--bootstrap-allowed-hosts")
        );
    }
}

#[test]
fn the_bootstrap_allowlist_takes_addresses_blocks_and_names() {
    let c = switchyard_sim::SimConfig {
        bootstrap_allowed_hosts: vec!["10.1.0.0/16".into(), "::1".into(), "engine-a".into()],
        ..switchyard_sim::SimConfig::default()
    };
    for ok in ["10.1.200.3", "::1", "[::1]", "ENGINE-A"] {
        assert!(c.bootstrap_host_allowed(ok), "{ok}");
    }
    for no in ["10.2.0.1", "127.0.0.1", "engine-b", "::2", ""] {
        assert!(!c.bootstrap_host_allowed(no), "{no}");
    }
    let d = switchyard_sim::SimConfig::default();
    assert!(d.bootstrap_host_allowed("127.0.0.1") && d.bootstrap_host_allowed("localhost"));
    assert!(!d.bootstrap_host_allowed("192.168.1.1"));
}

#[tokio::test]
async fn sglang_bootstrap_pairs_prefill_and_decode_sent_together() {
    let http = Http::new();
    let prefill = sims_with(role(Role::Prefill)).await;
    let decode = sims_with(role(Role::Decode)).await;
    let bootstrap = prefill
        .server(0)
        .bootstrap_addr()
        .expect("bootstrap listener");
    let prompt = prompt_text(12, 1500);
    let body = |max: u32| {
        json!({"prompt": prompt, "max_tokens": max, "bootstrap_host": "127.0.0.1",
               "bootstrap_port": bootstrap.port(), "bootstrap_room": 987654321u64})
    };
    let (purl, durl, pbody, dbody) = (prefill.url(), decode.url(), body(1), body(6));
    let (p, d) = tokio::join!(
        http.post(&purl, "/v1/completions", &pbody),
        http.post(&durl, "/v1/completions", &dbody)
    );
    assert_eq!(p.0, 200, "{}", p.1);
    assert_eq!(d.0, 200, "{}", d.1);
    assert_eq!(d.1["usage"]["completion_tokens"], 6);
    // The decode engine received the prefill's KV instead of computing the prompt.
    assert_eq!(
        p.1["sim_timing"]["computed_prompt_tokens"], p.1["usage"]["prompt_tokens"],
        "{}",
        p.1
    );
    assert_eq!(d.1["sim_timing"]["computed_prompt_tokens"], 1, "{}", d.1);
}

#[tokio::test]
async fn sglang_decode_fails_clearly_when_the_prefill_aborts() {
    let http = Http::new();
    let prefill = sims_with(SimConfig {
        time_scale: 1.0,
        ..role(Role::Prefill)
    })
    .await;
    let decode = sims_with(role(Role::Decode)).await;
    let port = prefill.server(0).addr().port();
    let room = 4242u64;
    // The prefill is streamed and dropped before its first token.
    let resp = http.0
        .post(format!("{}/v1/completions", prefill.url()))
        .json(&json!({"prompt": prompt_text(13, 3000), "max_tokens": 1, "stream": true,
                      "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let (status, body) = http.post(
        &decode.url(),
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2, "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_error(&body, 500);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("KV transfer from prefill failed")
    );
}
