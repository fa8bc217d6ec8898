//! The web_search tool of the Responses API against the simulator (which calls the
//! offered `web_search` function with the question and quotes result [1] in its
//! answer) and a search provider in-process: the call's item and its sources, the
//! `url_citation`, the streamed events, a failing and a hanging provider (the model is
//! told, the response completes), the request's filters reaching the provider, and a
//! chain after a search. The HTTP provider and its SSRF guard are tested in the
//! gateway's crate (tests/web_search.rs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_stateful::responses::service::{Created, Responses};
use switchyard_stateful::responses::tools::{WebResult, WebSearch};
use switchyard_stateful::store::Store;

mod common;
use common::{SimEngine, SqliteFile, config, create_json, events_of};

const MODEL: &str = "sim";
const QUESTION: &str = "Do otters really hold hands?";

/// What a provider was asked: (query, count, domains), in order.
type Asked = Arc<Mutex<Vec<(String, usize, Vec<String>)>>>;

#[derive(Clone, Copy)]
enum Mode {
    Pages,
    Fail,
    Hang,
}

/// A provider that answers two pages, fails, or never answers; it records what it was
/// asked (query, count, domains).
struct FakeSearch {
    mode: Mode,
    asked: Asked,
}

impl WebSearch for FakeSearch {
    fn search(
        &self,
        query: String,
        count: usize,
        domains: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<WebResult>, String>> {
        self.asked.lock().unwrap().push((query, count, domains));
        let mode = self.mode;
        Box::pin(async move {
            match mode {
                Mode::Pages => Ok(vec![
                    WebResult {
                        title: "Otters".into(),
                        url: "https://otters.example/hands".into(),
                        snippet:
                            "Sea otters hold hands while they sleep. They drift apart otherwise."
                                .into(),
                    },
                    WebResult {
                        title: "Seals".into(),
                        url: "https://seals.example/".into(),
                        snippet: "Seals do not.".into(),
                    },
                ]),
                Mode::Fail => Err("the provider answered 503 Service Unavailable".into()),
                Mode::Hang => futures_util::future::pending().await,
            }
        })
    }
}

struct Bed {
    _sim: switchyard_sim::SimHandle,
    _db: SqliteFile,
    svc: Responses,
    sent: Arc<Mutex<Vec<(Value, String)>>>,
    asked: Asked,
}

impl Bed {
    async fn new(test: &str, mode: Mode) -> Bed {
        let sim = switchyard_sim::spawn(switchyard_sim::SimConfig {
            instant: true,
            served_model_name: vec![MODEL.into()],
            ..switchyard_sim::SimConfig::default()
        })
        .await
        .unwrap();
        let db = SqliteFile::new(test);
        let store = Arc::new(Store::open(&config(&db.url()), 0).await.unwrap());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let engine = SimEngine {
            http: reqwest::Client::new(),
            url: sim.url(),
            sent: sent.clone(),
        };
        let svc = Responses::new(store, Arc::new(engine))
            .with_web_search(Arc::new(FakeSearch {
                mode,
                asked: asked.clone(),
            }))
            // Only the hanging provider meets it, and it never answers.
            .with_tool_timeout(Duration::from_millis(200));
        Bed {
            _sim: sim,
            _db: db,
            svc,
            sent,
            asked,
        }
    }
}

fn ask(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "input": QUESTION, "tools": [{"type": "web_search"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn a_question_is_searched_answered_and_cited_by_url() {
    let b = Bed::new("ws-whole", Mode::Pages).await;
    let r = create_json(
        &b.svc,
        &ask(json!({"include": ["web_search_call.action.sources"],
                    "tools": [{"type": "web_search", "search_context_size": "low",
                               "filters": {"allowed_domains": ["otters.example"]}}]})),
    )
    .await;
    assert_eq!(r["status"], "completed", "{r}");
    let out = r["output"].as_array().unwrap();
    assert_eq!(out.len(), 2, "{r}");
    assert_eq!(out[0]["type"], "web_search_call");
    assert_eq!(out[0]["status"], "completed");
    assert!(out[0]["id"].as_str().unwrap().starts_with("ws_"));
    assert_eq!(
        out[0]["action"],
        json!({"type": "search", "query": QUESTION, "sources": [
            {"type": "url", "url": "https://otters.example/hands"},
            {"type": "url", "url": "https://seals.example/"}]})
    );
    let text = out[1]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("According to [1], \"Sea otters hold hands"),
        "{text}"
    );
    assert_eq!(
        out[1]["content"][0]["annotations"],
        json!([{"type": "url_citation", "url": "https://otters.example/hands", "title": "Otters",
                "start_index": 13, "end_index": 16}])
    );
    assert_eq!(r["tools"][0]["type"], "web_search");
    assert_eq!(r["tools"][0]["search_context_size"], "low");
    // The provider got the query, the count the context size asks for, the domains.
    assert_eq!(
        b.asked.lock().unwrap().clone(),
        vec![(QUESTION.to_string(), 3, vec!["otters.example".to_string()])]
    );
    // The engine was offered the function, then given the numbered pages.
    let sent = b.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].0["tools"][0]["function"]["name"], "web_search");
    let last = sent[1].0["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "tool");
    let shown = last["content"].as_str().unwrap();
    assert!(
        shown.contains("[1] Otters (https://otters.example/hands)\nSea otters")
            && shown.contains("[2] Seals (https://seals.example/)"),
        "{shown}"
    );
    // Without include, no sources; a chain goes on after a search.
    let again = create_json(
        &b.svc,
        &ask(
            json!({"previous_response_id": r["id"], "input": "And seals?", "tool_choice": "none"}),
        ),
    )
    .await;
    assert_ne!(again["status"], "failed", "{again}");
    assert_eq!(again["output"][0]["type"], "message");
    let r = create_json(&b.svc, &ask(json!({}))).await;
    assert!(r["output"][0]["action"].get("sources").is_none(), "{r}");
}

#[tokio::test]
async fn a_streamed_search_sends_its_events_in_order_and_is_stored_as_streamed() {
    let b = Bed::new("ws-stream", Mode::Pages).await;
    let events = match b.svc.create(&ask(json!({"stream": true})), "default").await {
        Ok(Created::Events(s)) => s.collect::<Vec<String>>().await,
        _ => panic!("a stream"),
    };
    let events = events_of(&events);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(at("response.created") < at("response.web_search_call.in_progress"));
    assert!(at("response.web_search_call.in_progress") < at("response.web_search_call.searching"));
    assert!(at("response.web_search_call.searching") < at("response.web_search_call.completed"));
    assert!(at("response.web_search_call.completed") < at("response.output_text.delta"));
    let ann = &events[at("response.output_text.annotation.added")];
    assert_eq!(ann["annotation"]["type"], "url_citation");
    assert_eq!(ann["output_index"], 1);
    assert_eq!(*names.last().unwrap(), "response.completed");
    assert!(!names.contains(&"response.function_call_arguments.delta"));
    let added = &events[at("response.output_item.added")];
    assert_eq!(added["item"]["type"], "web_search_call");
    assert_eq!(added["item"]["action"]["query"], QUESTION);
    let done = events.last().unwrap();
    let stored = b
        .svc
        .get(done["response"]["id"].as_str().unwrap(), "default")
        .await
        .unwrap();
    assert_eq!(stored["output"], done["response"]["output"]);
    assert_eq!(stored["output"][0]["status"], "completed");
}

#[tokio::test]
async fn a_failing_provider_is_told_to_the_model_and_the_response_completes() {
    let b = Bed::new("ws-fail", Mode::Fail).await;
    let r = create_json(&b.svc, &ask(json!({}))).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["output"][0]["type"], "web_search_call");
    assert_eq!(r["output"][0]["status"], "failed");
    let text = r["output"][1]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("The tool returned: The web search failed: the provider answered 503"),
        "{text}"
    );
    assert_eq!(r["output"][1]["content"][0]["annotations"], json!([]));
}

#[tokio::test]
async fn a_provider_that_never_answers_times_out_for_the_model() {
    let b = Bed::new("ws-hang", Mode::Hang).await;
    let events = match b.svc.create(&ask(json!({"stream": true})), "default").await {
        Ok(Created::Events(s)) => s.collect::<Vec<String>>().await,
        _ => panic!("a stream"),
    };
    let events = events_of(&events);
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.completed", "{done}");
    let out = &done["response"]["output"];
    assert_eq!(out[0]["status"], "failed");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "response.web_search_call.completed"),
        "a failed call does not complete"
    );
    let text = out[1]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("The web_search call timed out"), "{text}");
}

#[tokio::test]
async fn bad_web_search_tools_are_refused_before_the_engine() {
    let b = Bed::new("ws-bad", Mode::Pages).await;
    for (extra, param) in [
        (
            json!({"tools": [{"type": "web_search", "search_context_size": "all"}]}),
            "tools[0].search_context_size",
        ),
        (
            json!({"tools": [{"type": "web_search"}, {"type": "web_search_preview"}]}),
            "tools[1]",
        ),
        (
            json!({"tools": [{"type": "web_search", "filters": {"allowed_domains": ["http://x.org"]}}]}),
            "tools[0].filters.allowed_domains",
        ),
        (
            json!({"tools": [{"type": "web_search"}, {"type": "function", "name": "web_search"}]}),
            "tools[1].name",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "web_search"}}),
            "tool_choice",
        ),
    ] {
        let e = b
            .svc
            .create(&ask(extra.clone()), "default")
            .await
            .err()
            .unwrap_or_else(|| panic!("{extra}"));
        assert_eq!(
            (e.status, e.param.as_deref()),
            (400, Some(param)),
            "{extra}: {}",
            e.message
        );
    }
    assert!(
        b.sent.lock().unwrap().is_empty(),
        "nothing reached the engine"
    );
    // Forced: the first round calls it, and the Response says how it was forced.
    let r = create_json(
        &b.svc,
        &ask(
            json!({"tool_choice": {"type": "web_search_preview"}, "input": "hello",
                    "tools": [{"type": "web_search_preview"}]}),
        ),
    )
    .await;
    assert_eq!(r["output"][0]["type"], "web_search_call", "{r}");
    assert_eq!(r["tool_choice"], json!({"type": "web_search_preview"}));
    assert_eq!(r["tools"][0]["type"], "web_search_preview");
}
