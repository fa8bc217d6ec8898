//! Prefill/decode disaggregation against simulated engines in each role, in vLLM
//! (NixlConnector) and SGLang (bootstrap) modes: the round trip, streaming, a failure
//! in each phase, retries that re-select the pair, and bad input answered like a
//! colocated gateway answers it.

use serde_json::{Value, json};
use switchyard::config::PdMode;
use switchyard::{Config, PolicyKind};
use switchyard_sim::{Faults, Role, SimConfig, SimHandle};
use switchyard_testkit::*;

async fn role(role: Role, engines: usize) -> SimHandle {
    sims_with(SimConfig {
        engines,
        role,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await
}

fn pd_config(prefill: &SimHandle, decode: &SimHandle, mode: PdMode) -> Config {
    let mut cfg = config(vec![], PolicyKind::CacheAware);
    cfg.pd_disaggregation = true;
    cfg.pd_mode = mode;
    cfg.prefill = prefill.urls();
    cfg.decode = decode.urls();
    cfg.cb_failure_threshold = 100;
    cfg.health_failure_threshold = 100;
    cfg
}

/// Tokens an engine generated (its own metric).
async fn generated(http: &Http, url: &str) -> f64 {
    http.metric(url, "vllm:generation_tokens_total", &[]).await
}

async fn stream_chat(http: &Http, gw: &str, content: &str, max_tokens: u32) -> (u16, String) {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                      "stream": true, "stream_options": {"include_usage": true}});
    let resp = http
        .0
        .post(format!("{gw}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn vllm_mode_prefills_then_streams_the_decode() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 2).await;
    let decode = role(Role::Decode, 2).await;
    let gw = gateway(pd_config(&prefill, &decode, PdMode::Vllm)).await;
    let (status, text) = stream_chat(&http, &gw.url(), &prompt_text(1, 800), 12).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("\"completion_tokens\":12"), "{text}");
    assert_eq!(per_server(&prefill).iter().sum::<u64>(), 1);
    assert_eq!(per_server(&decode).iter().sum::<u64>(), 1);
    // The prefill produced exactly one token; the decode all twelve.
    let mut p = 0.0;
    for u in prefill.urls() {
        p += generated(&http, &u).await;
    }
    let mut d = 0.0;
    for u in decode.urls() {
        d += generated(&http, &u).await;
    }
    assert_eq!((p, d), (1.0, 12.0));
    // Non-streaming works the same way.
    let (status, body) = http
        .post(&gw.url(), "/v1/chat/completions", &chat("again", 5))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let m = metrics_url(&gw);
    for phase in ["prefill", "decode"] {
        assert_eq!(
            http.metric(&m, "switchyard_pd_phase_seconds_count", &[("phase", phase)])
                .await,
            2.0
        );
    }
}

#[tokio::test]
async fn sglang_mode_sends_both_with_a_bootstrap_room() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 1).await;
    let decode = role(Role::Decode, 1).await;
    let gw = gateway(pd_config(&prefill, &decode, PdMode::Sglang)).await;
    let (status, text) = stream_chat(&http, &gw.url(), &prompt_text(2, 500), 7).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"completion_tokens\":7"), "{text}");
    assert_eq!(per_server(&prefill), [1]);
    assert_eq!(per_server(&decode), [1]);
}

#[tokio::test]
async fn a_failing_phase_is_named_in_the_error() {
    let http = Http::new();
    for (failing, phase) in [(Role::Prefill, "prefill"), (Role::Decode, "decode")] {
        let prefill = role(Role::Prefill, 1).await;
        let decode = role(Role::Decode, 1).await;
        let bad = if failing == Role::Prefill {
            &prefill
        } else {
            &decode
        };
        bad.server(0)
            .set_faults(Faults {
                error_rate: 1.0,
                error_status: 500,
                ..Faults::default()
            })
            .unwrap();
        let mut cfg = pd_config(&prefill, &decode, PdMode::Vllm);
        cfg.retry_max_retries = 1;
        let gw = gateway(cfg).await;
        let (status, body) = http
            .post(&gw.url(), "/v1/chat/completions", &chat("x", 3))
            .await;
        assert_eq!(status, 502, "{body}");
        assert_error(&body, "upstream_error");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{phase} phase failed")), "{msg}");
        assert_eq!(
            http.metric(
                &metrics_url(&gw),
                "switchyard_pd_phase_failures_total",
                &[("phase", phase)]
            )
            .await,
            2.0
        );
        if failing == Role::Prefill {
            assert_eq!(per_server(&decode), [0], "no decode without a prefill");
        }
    }
}

#[tokio::test]
async fn sglang_mode_fails_fast_when_the_prefill_fails() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 1).await;
    let decode = role(Role::Decode, 1).await;
    prefill
        .server(0)
        .set_faults(Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        })
        .unwrap();
    let mut cfg = pd_config(&prefill, &decode, PdMode::Sglang);
    cfg.retry_max_retries = 0;
    let gw = gateway(cfg).await;
    let (status, body) = http
        .post(&gw.url(), "/v1/chat/completions", &chat("x", 3))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("prefill phase failed")
    );
    // The decode (which waits for KV that never comes) was dropped, not awaited: its
    // phase never finished.
    let m = metrics_url(&gw);
    assert_eq!(
        http.metric(
            &m,
            "switchyard_pd_phase_seconds_count",
            &[("phase", "prefill")]
        )
        .await,
        1.0
    );
    assert_eq!(
        http.metric(
            &m,
            "switchyard_pd_phase_seconds_count",
            &[("phase", "decode")]
        )
        .await,
        0.0,
        "the decode waiting for KV was cancelled"
    );
}

#[tokio::test]
async fn retries_re_select_the_pair() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 2).await;
    let decode = role(Role::Decode, 2).await;
    prefill
        .server(0)
        .set_faults(Faults {
            error_rate: 1.0,
            error_status: 503,
            retry_after_secs: 0,
            ..Faults::default()
        })
        .unwrap();
    decode
        .server(1)
        .set_faults(Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        })
        .unwrap();
    let gw = gateway(pd_config(&prefill, &decode, PdMode::Vllm)).await;
    for i in 0..6 {
        let (status, text) = stream_chat(&http, &gw.url(), &format!("question {i}"), 4).await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(
        per_server(&prefill)[1],
        per_server(&prefill).iter().sum::<u64>(),
        "only the healthy prefill engine prefilled"
    );
    assert_eq!(
        per_server(&decode)[0],
        6,
        "every decode on the healthy decode engine"
    );
    assert!(
        http.metric(
            &metrics_url(&gw),
            "switchyard_retries_total",
            &[("reason", "pd_pair")]
        )
        .await
            >= 1.0
    );
}

/// Chat bodies a new user might send by mistake, or a fuzzer would: malformed,
/// mistyped, valid JSON that only the engine rejects, and valid-looking objects with
/// escapes and numbers that no JSON library holds in unknown fields.
fn awkward_bodies() -> Vec<String> {
    let msgs = r#"[{"role":"user","content":"hi"}]"#;
    let mut bodies = vec![
        "{".to_string(),
        "[]".to_string(),
        "null".to_string(),
        r#"{"model":"switchyard/sim-8b"}"#.to_string(),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"max_tokens":-1}}"#),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"max_tokens":0}}"#),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"max_tokens":100000000}}"#),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"n":3}}"#),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"temperature":5}}"#),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"stream":"yes"}}"#),
        format!(r#"{{"model":"switchyard/sim-8b","messages":{msgs},"min_tokens":9,"max_tokens":2}}"#),
        format!(r#"{{"model":"nope","messages":{msgs}}}"#),
        r#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":""}]}"#.to_string(),
        r#"{"model":"switchyard/sim-8b","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#.to_string(),
    ];
    for extra in [
        r#""x":"\ud800""#,
        r#""x":"\udc00\ud800""#,
        r#""x":1e400"#,
        r#""x":-1e400"#,
        r#""x":123456789012345678901234567890"#,
        r#""x":{"y":["\ud83d",1e999]}"#,
        r#""x":"\u0000""#,
    ] {
        bodies.push(format!(
            r#"{{"model":"switchyard/sim-8b","messages":{msgs},{extra}}}"#
        ));
    }
    bodies
}

/// Sends each body; the statuses in order (a reset connection fails the test).
async fn statuses(http: &Http, url: &str, bodies: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for b in bodies {
        let (status, resp) = http
            .post_raw(
                url,
                "/v1/chat/completions",
                Some("application/json"),
                b.clone(),
            )
            .await;
        assert!(status < 500, "{b} -> {status} {resp}");
        if status >= 400 {
            assert!(resp["error"]["message"].is_string(), "{b} -> {resp}");
        }
        out.push(status);
    }
    out
}

#[tokio::test]
async fn bad_input_is_answered_with_the_same_4xx_as_a_colocated_gateway() {
    let http = Http::new();
    let bodies = awkward_bodies();
    // Colocated: one engine serving whole requests.
    let both = sims(1).await;
    let colocated = gateway(config(both.urls(), PolicyKind::RoundRobin)).await;
    let expected = statuses(&http, &colocated.url(), &bodies).await;
    // Disaggregated, with breakers and ejection that open after two failures: an
    // engine's 4xx must count against nothing.
    let prefill = role(Role::Prefill, 1).await;
    let decode = role(Role::Decode, 1).await;
    for mode in [PdMode::Vllm, PdMode::Sglang] {
        let mut cfg = pd_config(&prefill, &decode, mode);
        cfg.cb_failure_threshold = 2;
        cfg.health_failure_threshold = 2;
        let gw = gateway(cfg).await;
        for round in 0..2 {
            let got = statuses(&http, &gw.url(), &bodies).await;
            assert_eq!(got, expected, "{mode:?} round {round}");
        }
        let m = metrics_url(&gw);
        assert_eq!(
            http.metric(&m, "switchyard_pd_phase_failures_total", &[])
                .await,
            0.0
        );
        assert_eq!(
            http.metric(&m, "switchyard_worker_circuit_state", &[])
                .await,
            0.0,
            "every breaker closed"
        );
        let (status, body) = http
            .post(&gw.url(), "/v1/chat/completions", &chat("fine", 2))
            .await;
        assert_eq!(status, 200, "{mode:?}: {body}");
    }
}

#[tokio::test]
async fn pd_flags_are_validated() {
    let bad = |cfg: Config, needle: &str| {
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    };
    bad(
        Config {
            pd_disaggregation: true,
            ..Config::default()
        },
        "--pd-disaggregation",
    );
    bad(
        Config {
            prefill: vec!["http://a:1".into()],
            ..Config::default()
        },
        "--pd-disaggregation",
    );
    bad(
        Config {
            pd_disaggregation: true,
            prefill: vec!["8998".into()],
            decode: vec!["http://b:1".into()],
            ..Config::default()
        },
        "must follow a URL",
    );
    bad(
        Config {
            pd_disaggregation: true,
            prefill: vec!["ftp://a:1".into()],
            decode: vec!["http://b:1".into()],
            ..Config::default()
        },
        "--prefill",
    );
    let ok = Config {
        pd_disaggregation: true,
        prefill: vec!["http://a:1".into(), "8998".into(), "http://c:1".into()],
        decode: vec!["http://b:1".into()],
        ..Config::default()
    };
    let workers: Vec<(String, Option<u16>)> = ok
        .pd_workers()
        .unwrap()
        .into_iter()
        .map(|(u, p)| (u.as_string(), p))
        .collect();
    assert_eq!(
        workers,
        [
            ("http://a:1".to_string(), Some(8998)),
            ("http://c:1".to_string(), None)
        ]
    );
    let (_, parsed) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--pd-disaggregation",
        "--prefill",
        "http://a:1",
        "8998",
        "--prefill",
        "http://c:1",
        "--decode",
        "http://b:1",
        "--prefill-policy",
        "round_robin",
        "--decode-policy",
        "random",
        "--pd-mode",
        "sglang",
    ])
    .unwrap();
    assert_eq!(parsed.pd_workers().unwrap().len(), 2);
    assert_eq!(parsed.pd_mode, PdMode::Sglang);
    let _: Value = serde_json::to_value(&parsed).unwrap();
}

#[tokio::test]
async fn prefill_and_decode_workers_can_be_registered_through_the_api() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 1).await;
    let decode = role(Role::Decode, 2).await;
    let mut cfg = pd_config(&prefill, &decode, PdMode::Vllm);
    cfg.decode = vec![decode.urls()[0].clone()];
    let gw = gateway(cfg).await;
    let admin = admin_url(&gw);
    for (body, param) in [
        (json!({"url": decode.urls()[1]}), "role"),
        (json!({"url": decode.urls()[1], "role": "regular"}), "role"),
        (json!({"url": decode.urls()[1], "role": "verifier"}), "role"),
        (
            json!({"url": decode.urls()[1], "role": "decode", "bootstrap_port": 8998}),
            "bootstrap_port",
        ),
    ] {
        let (status, resp) = http.post(&admin, "/workers", &body).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_eq!(resp["error"]["param"], param);
    }
    let (status, resp) = http
        .post(
            &admin,
            "/workers",
            &json!({"url": decode.urls()[1], "role": "decode"}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let job_url = format!("{admin}/jobs/{}", resp["job_id"].as_str().unwrap());
    eventually("the decode worker to register", || async {
        http.get(&job_url).await.1["state"] == "succeeded"
    })
    .await;
    // The configured decode engine goes away; the registered one serves.
    decode.server(0).shutdown();
    for i in 0..3 {
        let (status, body) = http
            .post(
                &gw.url(),
                "/v1/chat/completions",
                &chat(&format!("q{i}"), 2),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(decode.server(1).requests(), 3);
}

#[tokio::test]
async fn a_regular_gateway_refuses_prefill_workers() {
    let http = Http::new();
    let sims = sims(1).await;
    let gw = gateway(config(vec![], PolicyKind::RoundRobin)).await;
    let (status, resp) = http
        .post(
            &admin_url(&gw),
            "/workers",
            &json!({"url": sims.url(), "role": "prefill"}),
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"]["param"], "role");
}

#[tokio::test]
async fn a_workflow_keeps_its_prefill_and_decode_workers() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 3).await;
    let decode = role(Role::Decode, 2).await;
    let mut cfg = pd_config(&prefill, &decode, PdMode::Vllm);
    // Each role has its own policy: the prefill side is where the shared context is
    // computed, the decode side holds it for the answer.
    cfg.prefill_policy = PolicyKind::WorkflowAware;
    cfg.decode_policy = PolicyKind::WorkflowAware;
    let gw = gateway(cfg).await;
    let briefing = prompt_text(3, 400);
    for turn in 0..3 {
        for agent in ["planner", "coder", "critic"] {
            let body = json!({"model": MODEL, "max_tokens": 4, "messages": [
                {"role": "system", "content": briefing},
                {"role": "user", "content": format!("{agent} {turn}")}],
                "workflow_metadata": {"workflow_id": "wf-pd", "agent_id": agent}});
            let (s, b) = http.post(&gw.url(), "/v1/chat/completions", &body).await;
            assert_eq!(s, 200, "{b}");
        }
    }
    for (side, sims) in [("prefill", &prefill), ("decode", &decode)] {
        let served = per_server(sims);
        assert_eq!(
            served.iter().filter(|n| **n > 0).count(),
            1,
            "{side}: {served:?}"
        );
        assert_eq!(served.iter().sum::<u64>(), 9, "{side}: {served:?}");
    }
}

/// The Responses API on a disaggregated fleet: a response is prefilled then decoded,
/// and a token count (`input_tokens`, `truncation: auto`) goes to one prefill worker
/// alone.
#[tokio::test]
async fn responses_and_token_counts_run_on_a_disaggregated_fleet() {
    let http = Http::new();
    let prefill = role(Role::Prefill, 1).await;
    let decode = role(Role::Decode, 1).await;
    let gw = gateway(pd_config(&prefill, &decode, PdMode::Vllm)).await;
    let (s, counted) = http
        .post(
            &gw.url(),
            "/v1/responses/input_tokens",
            &json!({"model": MODEL, "input": "How long is this?"}),
        )
        .await;
    assert_eq!(s, 200, "{counted}");
    assert_eq!(
        (per_server(&prefill)[0], per_server(&decode)[0]),
        (0, 0),
        "a count generates nothing"
    );
    let (s, r) = http
        .post(
            &gw.url(),
            "/v1/responses",
            &json!({"model": MODEL, "input": "How long is this?", "truncation": "auto",
                    "max_output_tokens": 16}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["usage"]["input_tokens"], counted["input_tokens"]);
    assert_eq!((per_server(&prefill)[0], per_server(&decode)[0]), (1, 1));
}
