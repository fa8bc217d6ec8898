//! `/route` over real HTTP: use-case routing, sessions (in memory and in a real Redis),
//! bypass and context-change detection, stats, health, streaming, the audio routes, and
//! every bad input — against simulated engines serving one model per use case.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use switchyard::{Config, Gateway, ModelSettings, PolicyKind};
use switchyard_sim::SimHandle;
use switchyard_testkit::*;

/// A chat model (two engines), a vision model and a speech model.
struct Fleet {
    chat: SimHandle,
    vision: SimHandle,
    whisper: SimHandle,
}

impl Fleet {
    async fn start() -> Fleet {
        Fleet {
            chat: serving("chat-model", 2).await,
            vision: serving("vision-model", 1).await,
            whisper: serving("whisper", 1).await,
        }
    }

    fn urls(&self) -> Vec<String> {
        [&self.chat, &self.vision, &self.whisper]
            .iter()
            .flat_map(|s| s.urls())
            .collect()
    }

    /// Chat-style requests every engine has taken.
    fn requests(&self) -> u64 {
        [&self.chat, &self.vision, &self.whisper]
            .iter()
            .flat_map(|s| s.servers())
            .map(|s| s.requests() + s.audio_requests())
            .sum()
    }

    /// The gateway config: the default use cases, their models by capability, the
    /// chat model for the rest; sessions keyed to engines by consistent hashing.
    fn config(&self) -> Config {
        let mut cfg = config(self.urls(), PolicyKind::ConsistentHash);
        let caps = |c: &[&str]| ModelSettings {
            capabilities: c.iter().map(|s| s.to_string()).collect(),
            ..ModelSettings::default()
        };
        cfg.models = BTreeMap::from([
            ("chat-model".to_string(), caps(&["agent"])),
            ("vision-model".to_string(), caps(&["vision"])),
            ("whisper".to_string(), caps(&["transcription"])),
        ]);
        cfg.use_case_routing.default_model = Some("chat-model".into());
        cfg
    }
}

struct Gw {
    gw: Gateway,
    url: String,
    metrics: String,
    admin: String,
    http: Http,
}

async fn start(cfg: Config) -> Gw {
    let gw = gateway(cfg).await;
    Gw {
        url: gw.url(),
        metrics: metrics_url(&gw),
        admin: admin_url(&gw),
        gw,
        http: Http::new(),
    }
}

impl Gw {
    async fn route(&self, body: Value) -> (u16, Value) {
        self.http.post(&self.url, "/route", &body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.http.get(&format!("{}{path}", self.url)).await
    }

    async fn classifications(&self) -> f64 {
        self.http
            .metric(&self.metrics, "switchyard_classifications_total", &[])
            .await
    }
}

/// A `/route` failure: the status, and `success: false` with a message and the
/// OpenAI error object.
fn assert_failure(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["routing_time"].is_number(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn a_first_query_creates_a_session_and_a_follow_up_bypasses_with_history() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    let (s, first) = gw
        .route(json!({"query": "Write a python function that parses dates", "user_id": "ann"}))
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["success"], true);
    assert_eq!(first["use_case"], "agent");
    assert_eq!(first["selected_model"], "chat-model");
    assert_eq!(first["new_session"], true);
    assert_eq!(first["bypass_used"], false);
    assert_eq!(first["session_degraded"], false);
    assert!(first["result"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(first["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(first["request_id"].is_string());
    for k in ["confidence", "routing_time", "inference_time", "total_time"] {
        assert!(first[k].is_number(), "{k}: {first}");
    }
    let id = first["session_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sess_") && id.len() == 37, "{id}");

    let classified = gw.classifications().await;
    assert!(classified >= 1.0);
    let follow_up = "Add error handling to that function";
    let (s, second) = gw
        .route(json!({"query": follow_up, "session_id": id, "user_id": "ann"}))
        .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["bypass_used"], true);
    assert_eq!(second["new_session"], false);
    assert_eq!(second["use_case"], "agent");
    assert_eq!(second["session_id"], id.as_str());
    // No classification ran for the bypassed turn.
    assert_eq!(gw.classifications().await, classified);
    // The history went with it: more prompt than the follow-up alone.
    let (_, alone) = gw
        .http
        .post(
            &gw.url,
            "/v1/chat/completions",
            &json!({"model": "vision-model", "messages": [{"role": "user", "content": follow_up}], "max_tokens": 5}),
        )
        .await;
    assert!(
        second["usage"]["prompt_tokens"].as_u64().unwrap()
            > alone["usage"]["prompt_tokens"].as_u64().unwrap() + 5,
        "{second} vs {alone}"
    );

    let (_, third) = gw
        .route(json!({"query": "And a docstring", "session_id": id}))
        .await;
    assert_eq!(third["bypass_used"], true);
    let (s, session) = gw.get(&format!("/sessions/{id}")).await;
    assert_eq!(s, 200, "{session}");
    assert_eq!(session["request_count"], 3);
    assert_eq!(session["user_id"], "ann");
    assert_eq!(session["use_case"], "agent");
    assert_eq!(session["model_id"], "chat-model");
    assert_eq!(session["bypass_enabled"], true);
    assert_eq!(session["turns"].as_array().unwrap().len(), 6);
    assert_eq!(session["turns"][2]["content"], follow_up);
    for k in ["created_at", "last_accessed"] {
        let t = session[k].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{k}: {t}");
    }
    // The endpoint is a worker's opaque id, the same for every turn of the session.
    let (_, health) = gw.get("/health").await;
    let endpoint = session["endpoint"].as_str().unwrap();
    assert!(
        health["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == endpoint),
        "{endpoint} in {health}"
    );
    assert!(!endpoint.contains("http"));
    let served: Vec<u64> = per_server(&fleet.chat);
    assert!(
        served.contains(&0),
        "one engine took the whole session: {served:?}"
    );

    let (_, stats) = gw.get("/stats").await;
    assert_eq!(stats["total_requests"], 3, "{stats}");
    assert_eq!(stats["bypass_requests"], 2);
    assert_eq!(stats["full_routing_requests"], 1);
    assert_eq!(stats["session_creations"], 1);
    assert_eq!(stats["context_changes"], 0);
    assert!((stats["bypass_rate_percent"].as_f64().unwrap() - 66.667).abs() < 0.01);
    for k in [
        "average_routing_time",
        "average_bypass_time",
        "average_inference_time",
        "average_total_time",
    ] {
        assert!(stats[k].as_f64().unwrap() > 0.0, "{k}: {stats}");
    }
    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let http = gw.http.clone();
        let base = gw.metrics.clone();
        async move { http.metric(&base, name, labels).await }
    };
    assert_eq!(
        m(
            "switchyard_route_requests_total",
            &[("path", "bypass"), ("use_case", "agent")]
        )
        .await,
        2.0
    );
    assert_eq!(
        m("switchyard_route_session_creations_total", &[]).await,
        1.0
    );
    assert_eq!(
        m(
            "switchyard_route_routing_duration_seconds_count",
            &[("path", "full")]
        )
        .await,
        1.0
    );

    // The admin listener lists the user's sessions; the data plane does not.
    let (s, list) = gw
        .http
        .get(&format!("{}/sessions?user_id=ann&limit=5", gw.admin))
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["session_id"], id.as_str());
    let (s, e) = gw.http.get(&format!("{}/sessions", gw.admin)).await;
    assert_eq!(s, 400);
    assert_error(&e, "invalid_request");
    let (s, _) = gw.get("/sessions?user_id=ann").await;
    assert_eq!(s, 404);
    gw.gw.shutdown();
}

#[tokio::test]
async fn a_change_of_topic_or_modality_routes_afresh_and_is_counted() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    let (_, first) = gw
        .route(json!({"query": "Refactor this rust code to fix the bug"}))
        .await;
    assert_eq!(first["use_case"], "agent", "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();

    // New subject: the session's use case has no keyword, another has several.
    let (_, topic) = gw
        .route(json!({"query": "What does the chart in this screenshot show?", "session_id": id}))
        .await;
    assert_eq!(topic["bypass_used"], false, "{topic}");
    assert_eq!(topic["context_change"], "topic");
    assert_eq!(topic["use_case"], "multimodal_rag");
    assert_eq!(topic["selected_model"], "vision-model");
    // The session follows: the next turn on the same subject bypasses to the new model.
    let (_, more) = gw
        .route(json!({"query": "And the second one?", "session_id": id}))
        .await;
    assert_eq!(more["bypass_used"], true, "{more}");
    assert_eq!(more["selected_model"], "vision-model");

    // New modality: audio goes to a use case that accepts it.
    let (_, audio) = gw
        .route(json!({"query": "Transcribe this recording", "session_id": id, "modality": "audio"}))
        .await;
    assert_eq!(audio["context_change"], "modality", "{audio}");
    assert_eq!(audio["use_case"], "speech_to_text");
    assert_eq!(audio["selected_model"], "whisper");

    // The client can insist on full routing, or turn bypass off for the session.
    let (_, forced) = gw
        .route(json!({"query": "Transcribe the rest", "session_id": id, "force_route": true}))
        .await;
    assert_eq!(forced["bypass_used"], false, "{forced}");
    assert_eq!(forced["context_change"], Value::Null);
    let (_, off) = gw
        .route(json!({"query": "Transcribe more", "session_id": id, "bypass_enabled": false}))
        .await;
    assert_eq!(off["bypass_used"], false, "{off}");
    let (_, still_off) = gw
        .route(json!({"query": "Transcribe it all", "session_id": id}))
        .await;
    assert_eq!(still_off["bypass_used"], false, "{still_off}");
    let (_, session) = gw.get(&format!("/sessions/{id}")).await;
    assert_eq!(session["bypass_enabled"], false);
    assert_eq!(session["modality"], "audio");

    let (_, stats) = gw.get("/stats").await;
    assert_eq!(stats["context_changes"], 2, "{stats}");
    assert_eq!(stats["bypass_requests"], 1);
    let changes = |reason: &'static str| {
        let http = gw.http.clone();
        let base = gw.metrics.clone();
        async move {
            http.metric(
                &base,
                "switchyard_route_context_changes_total",
                &[("reason", reason)],
            )
            .await
        }
    };
    assert_eq!(changes("topic").await, 1.0);
    assert_eq!(changes("modality").await, 1.0);
    gw.gw.shutdown();
}

#[tokio::test]
async fn modality_and_context_weigh_in_a_first_classification() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    // Only video_understanding accepts video: the hint decides.
    let (_, video) = gw
        .route(json!({"query": "What happens here?", "modality": "video"}))
        .await;
    assert_eq!(video["use_case"], "video_understanding", "{video}");
    assert_eq!(video["confidence"], 1.0);
    // The context's values count as words of the query.
    let (_, plain) = gw.route(json!({"query": "Help me with this"})).await;
    let (_, ctx) = gw
        .route(json!({"query": "Help me with this", "context": {"domain": "video", "kind": "footage"}}))
        .await;
    assert_eq!(plain["use_case"], "agent", "{plain}");
    assert_eq!(ctx["use_case"], "video_understanding", "{ctx}");
    gw.gw.shutdown();
}

#[tokio::test]
async fn sessions_are_created_for_unknown_ids_404_when_required_and_deleted() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    let (s, created) = gw
        .route(json!({"query": "Draft an email", "session_id": "conv-42"}))
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(created["session_id"], "conv-42");
    assert_eq!(created["new_session"], true);

    let before = fleet.requests();
    let (s, body) = gw
        .route(json!({"query": "Draft an email", "session_id": "nope-1", "require_session": true}))
        .await;
    assert_failure(s, &body, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(
        fleet.requests(),
        before,
        "a refused request reached an engine"
    );

    // Another user's session is not continued.
    let (_, other) = gw
        .route(json!({"query": "Draft an email", "session_id": "conv-42", "user_id": "mallory", "require_session": true}))
        .await;
    assert_eq!(other["success"], false, "{other}");

    let resp = gw
        .http
        .0
        .delete(format!("{}/sessions/conv-42", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deleted: Value = resp.json().await.unwrap();
    assert_eq!(deleted["success"], true);
    assert!(deleted["message"].is_string());
    let (s, body) = gw.get("/sessions/conv-42").await;
    assert_eq!(s, 404);
    assert_error(&body, "not_found");
    let resp = gw
        .http
        .0
        .delete(format!("{}/sessions/conv-42", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let (s, body) = gw.get("/sessions/bad%20id").await;
    assert_eq!(s, 400);
    assert_error(&body, "invalid_request");
    gw.gw.shutdown();
}

#[tokio::test]
async fn a_session_expires_after_its_ttl() {
    let fleet = Fleet::start().await;
    let mut cfg = fleet.config();
    cfg.session_timeout_secs = 1;
    let gw = start(cfg).await;
    let (_, first) = gw.route(json!({"query": "Write a haiku"})).await;
    let id = first["session_id"].as_str().unwrap().to_string();
    eventually("the session to expire", || {
        let gw = &gw;
        let id = id.clone();
        async move { gw.get(&format!("/sessions/{id}")).await.0 == 404 }
    })
    .await;
    let (_, again) = gw
        .route(json!({"query": "Another haiku", "session_id": id}))
        .await;
    assert_eq!(again["new_session"], true, "{again}");
    assert_eq!(again["bypass_used"], false);
    gw.gw.shutdown();
}

#[tokio::test]
async fn every_bad_input_is_a_400_that_never_reaches_an_engine() {
    let fleet = Fleet::start().await;
    let mut cfg = fleet.config();
    cfg.route_max_query_bytes = 1000;
    let gw = start(cfg).await;
    let cases = [
        (json!({}), Some("query")),
        (json!({"query": 42}), Some("query")),
        (json!({"query": ""}), Some("query")),
        (json!({"query": "x".repeat(1001)}), Some("query")),
        (json!({"query": "q", "modality": "smell"}), Some("modality")),
        (json!({"query": "q", "modality": 3}), Some("modality")),
        (
            json!({"query": "q", "session_id": "has space"}),
            Some("session_id"),
        ),
        (
            json!({"query": "q", "session_id": "x".repeat(129)}),
            Some("session_id"),
        ),
        (json!({"query": "q", "user_id": 7}), Some("user_id")),
        (json!({"query": "q", "context": [1, 2]}), Some("context")),
        (json!({"query": "q", "max_tokens": -1}), Some("max_tokens")),
        (
            json!({"query": "q", "max_tokens": "many"}),
            Some("max_tokens"),
        ),
        (json!({"query": "q", "temperature": 9}), Some("temperature")),
        (json!({"query": "q", "stream": "yes"}), Some("stream")),
        (
            json!({"query": "q", "require_session": 1}),
            Some("require_session"),
        ),
        (json!([1, 2]), None),
    ];
    for (body, param) in cases {
        let (s, resp) = gw.route(body.clone()).await;
        assert_failure(s, &resp, 400);
        assert_eq!(resp["error"]["param"].as_str(), param, "{body} → {resp}");
    }
    for (ct, raw) in [
        (Some("application/json"), "{\"query\": "),
        (Some("text/plain"), "{\"query\": \"q\"}"),
    ] {
        let (s, resp) = gw.http.post_raw(&gw.url, "/route", ct, raw).await;
        assert_failure(s, &resp, 400);
    }
    assert_eq!(fleet.requests(), 0, "a malformed request reached an engine");
    gw.gw.shutdown();
}

#[tokio::test]
async fn no_healthy_model_for_the_use_case_is_a_503_with_retry_after() {
    let fleet = Fleet::start().await;
    let mut cfg = fleet.config();
    // A text-to-speech model the config names and nothing serves.
    cfg.models.insert(
        "tts-model".into(),
        ModelSettings {
            capabilities: vec!["tts".into()],
            ..ModelSettings::default()
        },
    );
    let gw = start(cfg).await;
    let resp = gw
        .http
        .0
        .post(format!("{}/route", gw.url))
        .json(&json!({"query": "Read this aloud in a calm voice"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let retry_after = resp.headers().contains_key("retry-after");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after);
    assert_failure(503, &body, 503);
    assert_eq!(body["use_case"], "text_to_speech");
    let (_, cases) = gw.get("/use-cases").await;
    let tts = cases["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "text_to_speech")
        .unwrap()
        .clone();
    assert_eq!(tts["model"], "tts-model");
    assert_eq!(tts["status"], "unhealthy");
    gw.gw.shutdown();
}

#[tokio::test]
async fn use_cases_and_health_report_models_and_the_session_store() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    let (s, cases) = gw.get("/use-cases").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = cases["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "agent",
            "avatar",
            "speech_to_text",
            "text_to_speech",
            "multimodal_rag",
            "video_understanding"
        ]
    );
    let agent = &cases["data"][0];
    assert_eq!(agent["model"], "chat-model");
    assert_eq!(agent["healthy"], true);
    assert!(agent["description"].as_str().unwrap().len() > 5);
    assert_eq!(agent["modalities"], json!(["text"]));
    assert_eq!(cases["data"][2]["model"], "whisper");

    let (_, health) = gw.get("/health").await;
    assert_eq!(health["bypass_router"]["status"], "healthy", "{health}");
    assert_eq!(health["bypass_router"]["backend"], "memory");
    let e = &health["model_endpoints"]["multimodal_rag"];
    assert_eq!(e["model"], "vision-model");
    assert_eq!(e["status"], "healthy");
    assert!(e["response_time_ms"].as_f64().unwrap() >= 0.0, "{e}");
    gw.gw.shutdown();
}

#[tokio::test]
async fn a_streamed_answer_starts_with_the_decision_and_ends_with_the_times() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    let (s, events) = gw
        .http
        .sse(
            &gw.url,
            "/route",
            &json!({"query": "Write a short story about a robot", "stream": true, "max_tokens": 12}),
        )
        .await;
    assert_eq!(s, 200);
    let parsed: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(parsed[0]["type"], "route", "{parsed:?}");
    assert_eq!(parsed[0]["use_case"], "agent");
    assert_eq!(parsed[0]["bypass_used"], false);
    let id = parsed[0]["session_id"].as_str().unwrap().to_string();
    let tokens: String = parsed
        .iter()
        .filter(|e| e["type"] == "token")
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert!(!tokens.is_empty());
    let done = parsed.last().unwrap();
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(done["result"], tokens.as_str());
    assert_eq!(done["session_id"], id.as_str());
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );
    assert!(done["inference_time"].as_f64().unwrap() > 0.0);
    // The streamed turn is in the session.
    let (_, session) = gw.get(&format!("/sessions/{id}")).await;
    assert_eq!(session["turns"][1]["content"], tokens.as_str());
    gw.gw.shutdown();
}

/// A multipart upload with `model`, and `file` holding `audio`.
fn upload(model: &str, audio: &[u8]) -> (String, Vec<u8>) {
    let b = "sWiTcHyArDbOuNdArY";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

#[tokio::test]
async fn audio_transcriptions_and_speech_pass_through_to_the_named_model() {
    let fleet = Fleet::start().await;
    let mut cfg = fleet.config();
    cfg.model_alias = vec!["stt=whisper".into()];
    let gw = start(cfg).await;
    let audio: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for model in ["whisper", "stt"] {
        let (ct, body) = upload(model, &audio);
        let (s, resp) = gw
            .http
            .post_raw(&gw.url, "/v1/audio/transcriptions", Some(&ct), body)
            .await;
        assert_eq!(s, 200, "{model}: {resp}");
        assert!(
            resp["text"]
                .as_str()
                .unwrap()
                .starts_with("transcript of 5000 bytes "),
            "{resp}"
        );
    }
    assert_eq!(fleet.whisper.servers()[0].audio_requests(), 2);

    let resp = gw
        .http
        .0
        .post(format!("{}/v1/audio/speech", gw.url))
        .json(&json!({"model": "whisper", "input": "Hello there", "voice": "alloy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    assert!(resp.headers().contains_key("x-routing-metadata"));
    let wav = resp.bytes().await.unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..12], b"WAVE");

    // Bad uploads and speech requests stop at the gateway.
    let before = fleet.requests();
    let (ct, body) = upload("", &audio);
    for (ct, body, param) in [
        (ct.as_str(), body, Some("model")),
        ("multipart/form-data", b"x".to_vec(), None),
        (
            "multipart/form-data; boundary=zz",
            b"--zz\r\ngarbage".to_vec(),
            None,
        ),
        ("application/json", b"{}".to_vec(), None),
    ] {
        let (s, resp) = gw
            .http
            .post_raw(&gw.url, "/v1/audio/transcriptions", Some(ct), body)
            .await;
        assert_eq!(s, 400, "{ct}: {resp}");
        assert_error(&resp, "invalid_request");
        assert_eq!(resp["error"]["param"].as_str(), param);
    }
    let no_file =
        "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b--\r\n";
    let (s, resp) = gw
        .http
        .post_raw(
            &gw.url,
            "/v1/audio/transcriptions",
            Some("multipart/form-data; boundary=b"),
            no_file,
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(resp["error"]["param"], "file");
    for (body, param) in [
        (json!({"model": "whisper", "voice": "alloy"}), "input"),
        (
            json!({"model": "whisper", "input": 5, "voice": "alloy"}),
            "input",
        ),
        (
            json!({"model": "whisper", "input": "", "voice": "alloy"}),
            "input",
        ),
        (json!({"input": "hi", "voice": "alloy"}), "model"),
    ] {
        let (s, resp) = gw.http.post(&gw.url, "/v1/audio/speech", &body).await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert_eq!(resp["error"]["param"], param);
    }
    assert_eq!(
        fleet.requests(),
        before,
        "a malformed audio request reached an engine"
    );
    gw.gw.shutdown();
}

#[tokio::test]
async fn chat_with_image_audio_and_video_parts_routes_like_any_chat() {
    let fleet = Fleet::start().await;
    let gw = start(fleet.config()).await;
    let body = json!({"model": "vision-model", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe these"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "https://example.invalid/v.mp4"}}
    ]}]});
    let (s, resp) = gw.http.post(&gw.url, "/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{resp}");
    assert_eq!(resp["model"], "vision-model");
    assert_eq!(per_server(&fleet.vision), vec![1]);
    gw.gw.shutdown();
}

// --- Redis ---------------------------------------------------------------------------

/// This suite's Redis database at 127.0.0.1:6379 (others use other numbers).
const REDIS_DB: u32 = 7;

#[tokio::test]
async fn two_replicas_sharing_redis_see_the_same_sessions_and_stats() {
    let fleet = Fleet::start().await;
    let keys = RedisKeys::new(REDIS_DB, "replicas");
    let replica = || {
        let mut cfg = fleet.config();
        cfg.redis_url = Some(keys.url.clone());
        cfg.redis_key_prefix = keys.prefix.clone();
        start(cfg)
    };
    let a = replica().await;
    let b = replica().await;
    let (_, first) = a
        .route(json!({"query": "Write a python function to sort users", "user_id": "bo"}))
        .await;
    assert_eq!(first["new_session"], true, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    let classified_b = b.classifications().await;
    let (_, second) = b
        .route(json!({"query": "Now add type hints", "session_id": id, "user_id": "bo"}))
        .await;
    assert_eq!(second["bypass_used"], true, "{second}");
    assert_eq!(second["new_session"], false);
    assert_eq!(b.classifications().await, classified_b);
    let (_, on_a) = a.get(&format!("/sessions/{id}")).await;
    assert_eq!(on_a["request_count"], 2, "{on_a}");
    assert_eq!(on_a["turns"][2]["content"], "Now add type hints");
    let (_, list) = b
        .http
        .get(&format!("{}/sessions?user_id=bo", b.admin))
        .await;
    assert_eq!(list["total"], 1, "{list}");
    let (_, sa) = a.get("/stats").await;
    let (_, sb) = b.get("/stats").await;
    assert_eq!(sa["scope"], "shared");
    for k in [
        "total_requests",
        "bypass_requests",
        "full_routing_requests",
        "session_creations",
    ] {
        assert_eq!(sa[k], sb[k], "{k}: {sa} vs {sb}");
    }
    assert_eq!(sa["total_requests"], 2);
    assert_eq!(sa["bypass_requests"], 1);
    let (_, health) = b.get("/health").await;
    assert_eq!(health["bypass_router"]["backend"], "redis");
    assert_eq!(health["bypass_router"]["status"], "healthy");
    // Deleted on one replica, gone on the other.
    let resp = a
        .http
        .0
        .delete(format!("{}/sessions/{id}", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.get(&format!("/sessions/{id}")).await.0, 404);
    a.gw.shutdown();
    b.gw.shutdown();
}

#[tokio::test]
async fn a_redis_session_expires_with_its_redis_ttl() {
    let fleet = Fleet::start().await;
    // The TTL is set on the session's hash, and refreshed by each turn (read from Redis
    // with a TTL long enough that no test runs near it).
    let keys = RedisKeys::new(REDIS_DB, "ttl-set");
    let mut cfg = fleet.config();
    cfg.redis_url = Some(keys.url.clone());
    cfg.redis_key_prefix = keys.prefix.clone();
    cfg.session_timeout_secs = 600;
    let gw = start(cfg).await;
    let (_, first) = gw
        .route(json!({"query": "Write a limerick", "user_id": "cy"}))
        .await;
    let id = first["session_id"].as_str().unwrap().to_string();
    let pttl = |key: String| {
        let url = keys.url.clone();
        move || -> i64 {
            let mut c = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("PTTL").arg(key).query(&mut c).unwrap()
        }
    };
    let session_ttl = pttl(format!("{}:session:{id}", keys.prefix))();
    assert!((1..=600_000).contains(&session_ttl), "PTTL {session_ttl}");
    let user_ttl = pttl(format!("{}:user_sessions:cy", keys.prefix))();
    assert!((1..=600_000).contains(&user_ttl), "PTTL {user_ttl}");
    gw.gw.shutdown();

    // A short TTL: the session is gone once it passes, from the lists too.
    let keys = RedisKeys::new(REDIS_DB, "ttl-end");
    let mut cfg = fleet.config();
    cfg.redis_url = Some(keys.url.clone());
    cfg.redis_key_prefix = keys.prefix.clone();
    cfg.session_timeout_secs = 1;
    let gw = start(cfg).await;
    let (_, first) = gw
        .route(json!({"query": "Write a limerick", "user_id": "cy"}))
        .await;
    assert_eq!(first["session_degraded"], false, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();
    eventually("the Redis TTL to end the session", || {
        let gw = &gw;
        let id = id.clone();
        async move { gw.get(&format!("/sessions/{id}")).await.0 == 404 }
    })
    .await;
    let (_, list) = gw
        .http
        .get(&format!("{}/sessions?user_id=cy", gw.admin))
        .await;
    assert_eq!(list["total"], 0, "{list}");
    gw.gw.shutdown();
}

#[tokio::test]
async fn with_redis_stopped_route_degrades_without_failing_and_recovers() {
    let fleet = Fleet::start().await;
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    redis.ready().await;
    let mut cfg = fleet.config();
    cfg.redis_url = Some(format!("redis://127.0.0.1:{port}/0"));
    let gw = start(cfg).await;
    let (_, first) = gw.route(json!({"query": "Write a python script"})).await;
    assert_eq!(first["session_degraded"], false, "{first}");
    let id = first["session_id"].as_str().unwrap().to_string();

    redis.stop();
    let classified = gw.classifications().await;
    let (s, degraded) = gw
        .route(json!({"query": "Add logging to it", "session_id": id}))
        .await;
    assert_eq!(s, 200, "{degraded}");
    assert_eq!(degraded["success"], true);
    assert_eq!(degraded["session_degraded"], true);
    assert_eq!(degraded["bypass_used"], false);
    assert_eq!(degraded["session_id"], Value::Null);
    assert!(
        gw.classifications().await > classified,
        "a degraded turn is classified in full"
    );
    let (s, stats) = gw.get("/stats").await;
    assert_eq!(s, 200);
    assert_eq!(
        stats["total_requests"], 2,
        "this replica's own totals: {stats}"
    );
    let (s, e) = gw.get(&format!("/sessions/{id}")).await;
    assert_eq!(s, 503);
    assert_error(&e, "session_store_unavailable");
    let (_, health) = gw.get("/health").await;
    assert_eq!(health["bypass_router"]["status"], "degraded", "{health}");
    assert!(
        gw.http
            .metric(&gw.metrics, "switchyard_route_session_degraded_total", &[])
            .await
            >= 1.0
    );

    // Back up (empty): sessions work again, and the totals written while it was down
    // are not lost.
    let redis = OwnRedis::start(port);
    redis.ready().await;
    eventually("sessions to work again", || {
        let gw = &gw;
        async move {
            let (_, r) = gw.route(json!({"query": "Write a rust macro"})).await;
            r["session_degraded"] == false
        }
    })
    .await;
    let (_, stats) = gw.get("/stats").await;
    assert_eq!(stats["scope"], "shared", "{stats}");
    // Redis came back empty: the degraded turn's figures, kept while it was down, were
    // added with the first write that succeeded, along with that write's own.
    assert!(stats["total_requests"].as_u64().unwrap() >= 2, "{stats}");
    gw.gw.shutdown();
}

#[tokio::test]
async fn redis_bounds_a_users_live_sessions() {
    let fleet = Fleet::start().await;
    let keys = RedisKeys::new(REDIS_DB, "per-user");
    let mut cfg = fleet.config();
    cfg.redis_url = Some(keys.url.clone());
    cfg.redis_key_prefix = keys.prefix.clone();
    cfg.max_sessions_per_user = 2;
    let gw = start(cfg).await;
    let mut ids = Vec::new();
    for q in ["Write a poem", "Write a story", "Write an essay"] {
        let (_, r) = gw.route(json!({"query": q, "user_id": "dee"})).await;
        assert_eq!(r["new_session"], true, "{r}");
        ids.push(r["session_id"].as_str().unwrap().to_string());
    }
    // The third session evicted the least recently used: the first.
    assert_eq!(gw.get(&format!("/sessions/{}", ids[0])).await.0, 404);
    let (_, list) = gw
        .http
        .get(&format!("{}/sessions?user_id=dee&limit=1", gw.admin))
        .await;
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["data"][0]["session_id"], ids[2].as_str());
    assert_eq!(list["has_more"], true);
    assert_eq!(list["next_offset"], 1);
    assert_eq!(
        gw.http
            .metric(&gw.metrics, "switchyard_route_session_evictions_total", &[])
            .await,
        1.0
    );
    gw.gw.shutdown();
}
