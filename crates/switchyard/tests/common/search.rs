//! A fake web search service for the tests (docs/tools.md): SearxNG's JSON shape on
//! loopback, two pages about seabirds; and the gateway's provider settings for it.
#![allow(dead_code)]

use serde_json::{Value, json};
use switchyard::config::tools::{HttpMethod, ResultFields, SearchProvider, WebSearchConfig};

/// Its first page's URL.
pub const FIRST_URL: &str = "https://birds.example/puffins";

/// Serves it on 127.0.0.1; its base URL.
pub async fn serve() -> String {
    async fn search() -> axum::Json<Value> {
        axum::Json(json!({"results": [
            {"title": "Puffin burrows", "url": FIRST_URL,
             "content": "Puffins nest in burrows on grassy cliff tops. They come back each spring."},
            {"title": "Gannets", "url": "https://birds.example/gannets",
             "content": "Gannets nest in crowded colonies on rocky islands."}
        ]}))
    }
    let app = axum::Router::new().route("/search", axum::routing::get(search));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// `tools.web_search` for the service at `base` (a JSON provider; loopback allowed).
pub fn provider(base: &str) -> WebSearchConfig {
    WebSearchConfig {
        provider: SearchProvider::Json {
            url: format!("{base}/search?q={{query}}&format=json"),
            method: HttpMethod::Get,
            body: None,
            headers: Default::default(),
            results: "results".into(),
            fields: ResultFields::default(),
        },
        allowed_hosts: Vec::new(),
        allow_private_addresses: true,
        timeout_secs: 30.0,
        max_response_bytes: 1 << 20,
        max_results: 10,
    }
}
