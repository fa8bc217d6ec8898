//! The `web_search` tool's HTTP provider (docs/tools.md) against fake search services
//! on loopback: a Responses request through the gateway searching a generic JSON API
//! (whole and streamed), the Brave format and a POST body template, and the SSRF
//! guard — a redirect to a host not allowed, a name resolving to loopback while
//! private addresses are not allowed, an address literal — and the size cap, a
//! failing provider and a key that never shows in an error. Each refused request is
//! checked not to have reached the service.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use serde_json::{Value, json};
use switchyard::config::tools::{
    HttpMethod, ResultFields, SearchProvider, ToolsConfig, WebSearchConfig,
};
use switchyard::tools::web_search::HttpSearch;
use switchyard_testkit::*;

const QUESTION: &str = "Where do puffins nest?";

/// A fake search service: what it was asked, and where its redirect points.
#[derive(Clone, Default)]
struct Fake {
    hits: Arc<AtomicUsize>,
    queries: Arc<std::sync::Mutex<Vec<String>>>,
    redirect_to: Arc<std::sync::Mutex<String>>,
}

async fn json_search(
    State(f): State<Fake>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<Value> {
    f.hits.fetch_add(1, Ordering::SeqCst);
    f.queries
        .lock()
        .unwrap()
        .push(q.get("q").cloned().unwrap_or_default());
    axum::Json(json!({"results": [
        {"title": "Puffin burrows", "url": "https://birds.example/puffins",
         "content": "Puffins nest in burrows on grassy cliff tops. They return each spring."},
        {"title": "No URL"},
        {"title": "Not the web", "url": "file:///etc/passwd", "content": "x"},
        {"title": "Terns", "url": "https://other.example/terns", "content": "Terns nest on the ground."}
    ]}))
}

async fn brave(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    f.hits.fetch_add(1, Ordering::SeqCst);
    if headers
        .get("x-subscription-token")
        .and_then(|v| v.to_str().ok())
        != Some("s3cret-brave-key")
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "bad token"})),
        );
    }
    f.queries
        .lock()
        .unwrap()
        .push(format!("{} n={}", q["q"], q["count"]));
    (
        StatusCode::OK,
        axum::Json(json!({"web": {"results": [
            {"title": "<strong>Puffins</strong> &amp; cliffs", "url": "https://birds.example/p",
             "description": "They nest in <strong>burrows</strong>."}
        ]}})),
    )
}

async fn posted(State(f): State<Fake>, axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
    f.hits.fetch_add(1, Ordering::SeqCst);
    f.queries.lock().unwrap().push(body.to_string());
    axum::Json(
        json!({"data": {"hits": [{"name": "A", "link": "https://a.example/", "text": "a"}]}}),
    )
}

async fn redirect(State(f): State<Fake>) -> Redirect {
    f.hits.fetch_add(1, Ordering::SeqCst);
    Redirect::temporary(&f.redirect_to.lock().unwrap().clone())
}

async fn big(State(f): State<Fake>) -> String {
    f.hits.fetch_add(1, Ordering::SeqCst);
    format!(
        "{{\"results\": [], \"pad\": \"{}\"}}",
        "x".repeat(64 * 1024)
    )
}

async fn down(State(f): State<Fake>) -> StatusCode {
    f.hits.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

/// Serves the fake on `ip`, port chosen by the system; its base URL.
async fn serve(ip: &str, fake: Fake) -> String {
    let app = Router::new()
        .route("/search", get(json_search))
        .route("/res/v1/web/search", get(brave))
        .route("/post", post(posted))
        .route("/redirect", get(redirect))
        .route("/big", get(big))
        .route("/down", get(down))
        .with_state(fake);
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn json_provider(url: String) -> SearchProvider {
    SearchProvider::Json {
        url,
        method: HttpMethod::Get,
        body: None,
        headers: Default::default(),
        results: "results".into(),
        fields: ResultFields::default(),
    }
}

fn settings(provider: SearchProvider, allow_private: bool) -> WebSearchConfig {
    WebSearchConfig {
        provider,
        allowed_hosts: Vec::new(),
        allow_private_addresses: allow_private,
        timeout_secs: 30.0,
        max_response_bytes: 16 * 1024,
        max_results: 10,
    }
}

/// The `data:` payloads of an SSE body.
fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_searches_the_configured_provider_through_the_gateway() {
    let fake = Fake::default();
    let base = serve("127.0.0.1", fake.clone()).await;
    let t = TestBed::with(sims(1).await, |c| {
        c.database_url = Some("sqlite::memory:".into());
        c.tools = ToolsConfig {
            web_search: Some(settings(
                json_provider(format!("{base}/search?q={{query}}&n={{count}}")),
                true,
            )),
            ..ToolsConfig::default()
        };
    })
    .await;
    let body = json!({"model": MODEL, "input": QUESTION, "tools": [{"type": "web_search"}],
                      "include": ["web_search_call.action.sources"]});
    let (status, r) = t.post("/v1/responses", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["output"][0]["type"], "web_search_call", "{r}");
    assert_eq!(r["output"][0]["status"], "completed");
    assert_eq!(r["output"][0]["action"]["query"], QUESTION);
    // Results without a URL, or not on the web, are left out.
    assert_eq!(
        r["output"][0]["action"]["sources"],
        json!([{"type": "url", "url": "https://birds.example/puffins"},
               {"type": "url", "url": "https://other.example/terns"}])
    );
    let text = &r["output"][1]["content"][0];
    assert!(
        text["text"]
            .as_str()
            .unwrap()
            .contains("Puffins nest in burrows"),
        "{text}"
    );
    assert_eq!(text["annotations"][0]["type"], "url_citation");
    assert_eq!(
        text["annotations"][0]["url"],
        "https://birds.example/puffins"
    );
    assert_eq!(
        fake.queries.lock().unwrap().clone(),
        vec![QUESTION.to_string()]
    );

    // Streamed.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/responses", t.url))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for n in [
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.output_text.annotation.added",
        "response.completed",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }

    // A provider that fails: the model is told, the client gets a completed response.
    let t2 = TestBed::with(sims(1).await, |c| {
        c.database_url = Some("sqlite::memory:".into());
        c.tools.web_search = Some(settings(
            json_provider(format!("{base}/down?q={{query}}")),
            true,
        ));
    })
    .await;
    let (status, r) = t2.post("/v1/responses", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["output"][0]["status"], "failed");
    assert_eq!(r["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brave_format_and_a_post_template_are_understood() {
    let fake = Fake::default();
    let base = serve("127.0.0.1", fake.clone()).await;
    // The keys, as the gateway's environment would hold them.
    let env = |name: &str| match name {
        "BRAVE_KEY" => Some("s3cret-brave-key".to_string()),
        "WRONG_KEY" => Some("wr0ng-key".to_string()),
        _ => None,
    };
    let brave = |var: &str| {
        settings(
            SearchProvider::Brave {
                endpoint: format!("{base}/res/v1/web/search"),
                api_key_env: var.into(),
            },
            true,
        )
    };
    let s = HttpSearch::with_env(&brave("BRAVE_KEY"), &env).unwrap();
    let pages = s.run("puffins", 4, &[]).await.unwrap();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].title, "Puffins & cliffs");
    assert_eq!(pages[0].snippet, "They nest in burrows.");
    assert_eq!(fake.queries.lock().unwrap().last().unwrap(), "puffins n=4");
    // A wrong key: the error says what the provider answered, never the key.
    let e = HttpSearch::with_env(&brave("WRONG_KEY"), &env)
        .unwrap()
        .run("puffins", 4, &[])
        .await
        .unwrap_err();
    assert!(e.contains("401") && !e.contains("wr0ng"), "{e}");
    let e = HttpSearch::with_env(&brave("UNSET_KEY"), &env)
        .err()
        .unwrap();
    assert!(e.contains("UNSET_KEY") && e.contains("is not set"), "{e}");

    let post_cfg = settings(
        SearchProvider::Json {
            url: format!("{base}/post"),
            method: HttpMethod::Post,
            body: Some(json!({"q": "{query}", "limit": "{count}"})),
            headers: Default::default(),
            results: "data.hits".into(),
            fields: ResultFields {
                title: "name".into(),
                url: "link".into(),
                snippet: "text".into(),
            },
        },
        true,
    );
    let pages = HttpSearch::new(&post_cfg)
        .unwrap()
        .run("gannets", 3, &[])
        .await
        .unwrap();
    assert_eq!(pages[0].url, "https://a.example/");
    let sent: Value = serde_json::from_str(fake.queries.lock().unwrap().last().unwrap()).unwrap();
    assert_eq!(sent, json!({"q": "gannets", "limit": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_what_the_operator_did_not_allow() {
    let fake = Fake::default();
    let base = serve("127.0.0.1", fake.clone()).await;
    // A second service on another loopback address, which nothing allows.
    let elsewhere = Fake::default();
    let other = serve("127.0.0.2", elsewhere.clone()).await;
    *fake.redirect_to.lock().unwrap() = format!("{other}/search?q=x");
    let port = base.rsplit(':').next().unwrap().to_string();

    // A redirect to a host that is not allowed.
    let s = HttpSearch::new(&settings(
        json_provider(format!("{base}/redirect?q={{query}}")),
        true,
    ))
    .unwrap();
    let e = s.run("q", 3, &[]).await.unwrap_err();
    assert!(
        e.contains("redirect was refused") && e.contains("127.0.0.2"),
        "{e}"
    );
    assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0, "never reached");
    // Allowed, the same redirect is followed.
    let mut cfg = settings(json_provider(format!("{base}/redirect?q={{query}}")), true);
    cfg.allowed_hosts = vec!["127.0.0.2".into()];
    assert_eq!(
        HttpSearch::new(&cfg)
            .unwrap()
            .run("q", 3, &[])
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 1);

    // A name that resolves to loopback, while private addresses are not allowed.
    let before = fake.hits.load(Ordering::SeqCst);
    let s = HttpSearch::new(&settings(
        json_provider(format!("http://localhost:{port}/search?q={{query}}")),
        false,
    ))
    .unwrap();
    let e = s.run("q", 3, &[]).await.unwrap_err();
    assert!(e.contains("could not be reached"), "{e}");
    // An address literal on loopback.
    let s = HttpSearch::new(&settings(
        json_provider(format!("{base}/search?q={{query}}")),
        false,
    ))
    .unwrap();
    let e = s.run("q", 3, &[]).await.unwrap_err();
    assert!(e.contains("127.0.0.1 is not allowed"), "{e}");
    assert_eq!(
        fake.hits.load(Ordering::SeqCst),
        before,
        "neither reached the service"
    );

    // An answer over the size cap (16 KiB here).
    let s = HttpSearch::new(&settings(
        json_provider(format!("{base}/big?q={{query}}")),
        true,
    ))
    .unwrap();
    let e = s.run("q", 3, &[]).await.unwrap_err();
    assert!(e.contains("larger than 16384 bytes"), "{e}");
    // A provider that fails.
    let s = HttpSearch::new(&settings(
        json_provider(format!("{base}/down?q={{query}}")),
        true,
    ))
    .unwrap();
    assert!(s.run("q", 3, &[]).await.unwrap_err().contains("503"));
    // Domain filters keep only their pages.
    let s = HttpSearch::new(&settings(
        json_provider(format!("{base}/search?q={{query}}")),
        true,
    ))
    .unwrap();
    let pages = s.run("q", 3, &["other.example".into()]).await.unwrap();
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].url, "https://other.example/terns");
}
