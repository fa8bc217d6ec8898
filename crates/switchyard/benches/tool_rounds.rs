//! What one server-side tool round costs the gateway (docs/BENCHMARKS.md, "Server-side
//! tool rounds"): `POST /v1/responses` with no tool, with `web_search` (a fake search
//! service) and with an `mcp` tool (a fake MCP server, no approval), against instant
//! simulated engines, all on loopback; and, measured alone, what the round's parts cost
//! without the gateway: one engine call, one search request, one MCP listing and one
//! call through the gateway's own MCP client. The gateway's own cost of a round is what
//! is left: tool − none − engine − remote.
//!
//! `cargo bench -p switchyard --bench tool_rounds` (N requests per
//! target, one at a time, after a warm-up; `N` defaults to 400). Prints a Markdown table.

#[path = "../tests/common/mcp.rs"]
mod fake_mcp;
#[path = "../tests/common/search.rs"]
mod fake_search;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::config::tools::McpConfig;
use switchyard_stateful::responses::mcp::{McpClient, McpServer};
use switchyard_testkit::*;

/// p50 and p99 of `n` runs of `f`, in µs, after `n / 10` unmeasured ones.
async fn measure<F, Fut>(n: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let at = Instant::now();
        f().await;
        t.push(at.elapsed());
    }
    t.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(t[n / 2]), us(t[(n * 99 / 100).min(n - 1)]))
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let search = fake_search::serve().await;
    let mcp_base = fake_mcp::serve("127.0.0.1", Default::default()).await;
    let mcp_url = format!("{mcp_base}/mcp");
    let mcp_cfg = McpConfig {
        allowed_hosts: vec!["127.0.0.1".into()],
        allow_private_addresses: true,
        timeout_secs: 30.0,
        max_response_bytes: 1 << 20,
    };
    let engines = sims_with(switchyard_sim::SimConfig {
        engines: 1,
        instant: true,
        ..switchyard_sim::SimConfig::default()
    })
    .await;
    let engine = engines.url();
    let t = TestBed::with(engines, |c| {
        c.database_url = Some("sqlite::memory:".into());
        c.tools.web_search = Some(fake_search::provider(&search));
        c.tools.mcp = Some(mcp_cfg.clone());
    })
    .await;
    let http = reqwest::Client::new();
    let post = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    };
    let responses = format!("{}/v1/responses", t.url);
    let none = json!({"model": MODEL, "input": "Where do puffins nest?", "store": false,
                      "max_output_tokens": 16});
    let mut ws = none.clone();
    ws["tools"] = json!([{"type": "web_search"}]);
    let mut mcp = none.clone();
    mcp["input"] = json!("Please use add");
    mcp["tools"] = json!([{"type": "mcp", "server_label": "calc", "server_url": mcp_url,
                           "require_approval": "never"}]);
    // The answers are what they should be before anything is timed.
    for (body, kind) in [(&ws, "web_search_call"), (&mcp, "mcp_call")] {
        let r: Value = http
            .post(&responses)
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            r["output"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["type"] == kind && i["status"] == "completed"),
            "{r}"
        );
    }

    let r_none = measure(n, || post(responses.clone(), none.clone())).await;
    let r_ws = measure(n, || post(responses.clone(), ws.clone())).await;
    let r_mcp = measure(n, || post(responses.clone(), mcp.clone())).await;
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Where do puffins nest?"}],
                      "max_tokens": 16});
    let r_engine = measure(n, || {
        post(format!("{engine}/v1/chat/completions"), chat.clone())
    })
    .await;
    let r_search = measure(n, || {
        let (http, url) = (
            http.clone(),
            format!("{search}/search?q=puffins&format=json"),
        );
        async move {
            http.get(url).send().await.unwrap().bytes().await.unwrap();
        }
    })
    .await;
    let client = switchyard::tools::mcp::RemoteMcp::new(&mcp_cfg);
    let server = McpServer {
        label: "calc".into(),
        url: mcp_url.clone(),
        headers: Vec::new(),
    };
    let r_remote_mcp = measure(n, || {
        let (list, call) = (
            client.list_tools(server.clone()),
            client.call_tool(
                server.clone(),
                "add".into(),
                json!({"a": 1, "b": 2}).as_object().unwrap().clone(),
            ),
        );
        async move {
            list.await.unwrap();
            call.await.unwrap();
        }
    })
    .await;

    println!(
        "N = {n} requests per target, one at a time, after {} unmeasured",
        n / 10
    );
    println!();
    println!("| target | p50 (µs) | p99 (µs) |");
    println!("|---|---:|---:|");
    for (name, (p50, p99)) in [
        ("response, no tool (1 engine call)", r_none),
        ("response, web_search (2 engine calls, 1 search)", r_ws),
        ("response, mcp (2 engine calls, 1 listing, 1 call)", r_mcp),
        (
            "alone: one engine call (chat completion to the engine)",
            r_engine,
        ),
        ("alone: one search request to the fake provider", r_search),
        (
            "alone: MCP listing + call through the gateway's client (2 sessions)",
            r_remote_mcp,
        ),
    ] {
        println!("| {name} | {p50:.0} | {p99:.0} |");
    }
    let own_ws = r_ws.0 - r_none.0 - r_engine.0 - r_search.0;
    let own_mcp = r_mcp.0 - r_none.0 - r_engine.0 - r_remote_mcp.0;
    println!();
    println!(
        "| tool | round, p50 (µs): tool − none | gateway's own, p50 (µs): − engine − remote |"
    );
    println!("|---|---:|---:|");
    println!("| web_search | {:.0} | {own_ws:.0} |", r_ws.0 - r_none.0);
    println!("| mcp | {:.0} | {own_mcp:.0} |", r_mcp.0 - r_none.0);
}
