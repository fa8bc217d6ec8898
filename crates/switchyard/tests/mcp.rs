//! Remote MCP tools of the Responses API (docs/tools.md) against an MCP server the test
//! runs in-process on loopback (the official Rust SDK's streamable HTTP server) with
//! two tools, `add` and `explode` (which fails): listing (and its reuse along a chain),
//! calls, the approval round trip (approved and declined), streaming events, headers
//! sent and never stored, and the allowlist — a host not allowed, a redirect to one,
//! a name resolving to loopback while private addresses are not allowed, a server
//! that is down. Each refused request is checked not to have reached a server.

mod common;

use std::sync::atomic::Ordering;

use common::mcp::{Seen, serve};
use serde_json::{Value, json};
use switchyard::config::tools::{McpConfig, ToolsConfig};
use switchyard_testkit::*;

fn mcp_config(hosts: &[&str], allow_private: bool) -> McpConfig {
    McpConfig {
        allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        allow_private_addresses: allow_private,
        timeout_secs: 30.0,
        max_response_bytes: 1 << 20,
    }
}

async fn gateway(mcp: Option<McpConfig>) -> TestBed {
    TestBed::with(sims(1).await, |c| {
        c.database_url = Some("sqlite::memory:".into());
        c.tools = ToolsConfig {
            mcp,
            ..ToolsConfig::default()
        };
    })
    .await
}

/// The events of a streamed Responses request (200 asserted).
async fn streamed(t: &TestBed, body: &Value) -> Vec<Value> {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/responses", t.url))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text()
        .await
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

fn types(r: &Value) -> Vec<String> {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_called_and_approved_through_the_gateway() {
    let seen = Seen::default();
    let base = serve("127.0.0.1", seen.clone()).await;
    let t = gateway(Some(mcp_config(&["127.0.0.1"], true))).await;
    let tool = |approval: Value| {
        json!({"type": "mcp", "server_label": "calc", "server_url": format!("{base}/mcp"),
               "headers": {"X-Api-Key": "k-123"}, "require_approval": approval})
    };

    // Listed, then called without approval.
    let body = json!({"model": MODEL, "input": "Please use add on two numbers",
                      "tools": [tool(json!("never"))]});
    let (status, r) = t.post("/v1/responses", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(types(&r), ["mcp_list_tools", "mcp_call", "message"], "{r}");
    let list = &r["output"][0];
    assert_eq!(list["server_label"], "calc");
    let names: Vec<&str> = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["add", "explode"]);
    assert_eq!(list["tools"][0]["annotations"]["readOnlyHint"], true);
    let call = &r["output"][1];
    assert_eq!(
        (call["name"].as_str(), call["status"].as_str()),
        (Some("add"), Some("completed"))
    );
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    let sum = args["a"].as_i64().unwrap() + args["b"].as_i64().unwrap();
    assert_eq!(call["output"], format!("sum: {sum}"));
    assert!(call["error"].is_null());
    let text = r["output"][2]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("sum: {sum}")),
        "the model saw the result: {text}"
    );
    assert_eq!(seen.calls.lock().unwrap().len(), 1);
    assert!(seen.api_keys.lock().unwrap().iter().all(|k| k == "k-123"));
    assert!(
        !seen.api_keys.lock().unwrap().is_empty(),
        "the headers were sent"
    );
    // The headers are not stored, nor echoed.
    assert!(r["tools"][0].get("headers").is_none(), "{}", r["tools"]);
    let (_, stored) = Http::new()
        .get(&format!(
            "{}/v1/responses/{}",
            t.url,
            r["id"].as_str().unwrap()
        ))
        .await;
    assert!(!stored.to_string().contains("k-123"), "{stored}");

    // Along the chain, the listing is reused; a failing tool is told to the model.
    let lists = seen.lists.load(Ordering::SeqCst);
    let body = json!({"model": MODEL, "input": "Now use explode", "tools": [tool(json!("never"))],
                      "previous_response_id": r["id"]});
    let (status, r2) = t.post("/v1/responses", &body).await;
    assert_eq!(status, 200, "{r2}");
    assert_eq!(types(&r2), ["mcp_call", "message"], "{r2}");
    assert_eq!(seen.lists.load(Ordering::SeqCst), lists, "not listed again");
    let call = &r2["output"][0];
    assert_eq!(
        (call["name"].as_str(), call["status"].as_str()),
        (Some("explode"), Some("failed"))
    );
    assert_eq!(
        call["error"],
        json!({"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": "the fuse blew"}]})
    );
    assert_eq!(r2["status"], "completed");
    assert!(
        r2["output"][1]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("the fuse blew")
    );

    // Approval asked (the default): the response ends with the request; nothing runs.
    let calls = seen.calls.lock().unwrap().len();
    let ask = json!({"model": MODEL, "input": "Please use add", "tools": [tool(Value::Null)]});
    let (status, r3) = t.post("/v1/responses", &ask).await;
    assert_eq!(status, 200, "{r3}");
    assert_eq!(
        types(&r3),
        ["mcp_list_tools", "mcp_approval_request"],
        "{r3}"
    );
    assert_eq!(r3["status"], "completed");
    let request = &r3["output"][1];
    assert_eq!(
        (request["name"].as_str(), request["server_label"].as_str()),
        (Some("add"), Some("calc"))
    );
    assert_eq!(
        seen.calls.lock().unwrap().len(),
        calls,
        "nothing ran before approval"
    );
    // Approved: the call runs, then the model answers.
    let approve = |id: &Value, yes: bool| {
        json!({"model": MODEL, "previous_response_id": r3["id"], "tools": [tool(Value::Null)],
               "input": [{"type": "mcp_approval_response", "approval_request_id": id, "approve": yes}]})
    };
    let (status, r4) = t
        .post("/v1/responses", &approve(&request["id"], true))
        .await;
    assert_eq!(status, 200, "{r4}");
    assert_eq!(types(&r4), ["mcp_call", "message"], "{r4}");
    assert_eq!(r4["output"][0]["approval_request_id"], request["id"]);
    assert_eq!(r4["output"][0]["arguments"], request["arguments"]);
    assert_eq!(r4["output"][0]["status"], "completed");
    assert_eq!(seen.calls.lock().unwrap().len(), calls + 1);
    assert!(
        r4["output"][1]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("sum: ")
    );
    // An approval answered twice, or naming no request.
    let (status, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "previous_response_id": r4["id"], "tools": [tool(Value::Null)],
                    "input": [{"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": true}]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "input[0].approval_request_id");
    let (status, e) = t
        .post("/v1/responses", &approve(&json!("mcpr_nope"), true))
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "input[0].approval_request_id");
    let (status, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "previous_response_id": r3["id"], "tools": [tool(Value::Null)],
                    "input": [{"type": "mcp_approval_response", "approval_request_id": request["id"]}]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "input[0].approve");
    // Declined: nothing runs; the model is told.
    let (status, r5) = t
        .post("/v1/responses", &approve(&request["id"], false))
        .await;
    assert_eq!(status, 200, "{r5}");
    assert_eq!(types(&r5), ["message"], "{r5}");
    assert!(
        r5["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("declined")
    );
    assert_eq!(seen.calls.lock().unwrap().len(), calls + 1);
    // Approved, but the server is no longer offered.
    let (status, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "previous_response_id": r3["id"],
                    "input": [{"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": true}]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "input[0]");

    // Streamed: the listing, the call and its arguments as events.
    for (input, end) in [
        ("Please use add", "response.mcp_call.completed"),
        ("use explode", "response.mcp_call.failed"),
    ] {
        let body = json!({"model": MODEL, "input": input, "tools": [tool(json!("never"))], "stream": true});
        let events = streamed(&t, &body).await;
        let names: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        let order = [
            "response.created",
            "response.mcp_list_tools.in_progress",
            "response.mcp_list_tools.completed",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            end,
            "response.output_text.delta",
            "response.completed",
        ];
        let mut at = 0;
        for n in order {
            at += names[at..]
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} after {at} in {names:?}"));
        }
        let done = events.last().unwrap();
        assert_eq!(
            types(&done["response"]),
            ["mcp_list_tools", "mcp_call", "message"]
        );
    }
    // Streamed, asking approval.
    let mut body = ask.clone();
    body["stream"] = json!(true);
    let events = streamed(&t, &body).await;
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(
        types(&done["response"]),
        ["mcp_list_tools", "mcp_approval_request"]
    );

    // In the background: the same items, stored.
    let body = json!({"model": MODEL, "input": "Please use add", "tools": [tool(json!("never"))],
                      "background": true});
    let (status, queued) = t.post("/v1/responses", &body).await;
    assert_eq!(status, 200, "{queued}");
    let at = format!("{}/v1/responses/{}", t.url, queued["id"].as_str().unwrap());
    let http = Http::new();
    eventually("the background response to finish", || async {
        http.get(&at).await.1["status"] == "completed"
    })
    .await;
    let (_, stored) = http.get(&at).await;
    assert_eq!(
        types(&stored),
        ["mcp_list_tools", "mcp_call", "message"],
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_servers_are_reached() {
    let seen = Seen::default();
    let base = serve("127.0.0.1", seen.clone()).await;
    let elsewhere = Seen::default();
    let other = serve("127.0.0.2", elsewhere.clone()).await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let body = |url: String| {
        json!({"model": MODEL, "input": "use add",
               "tools": [{"type": "mcp", "server_label": "calc", "server_url": url, "require_approval": "never"}]})
    };

    // No MCP servers configured.
    let none = gateway(None).await;
    let (status, e) = none
        .post("/v1/responses", &body(format!("{base}/mcp")))
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "tools[0]");

    let t = gateway(Some(mcp_config(&["127.0.0.1"], true))).await;
    // A host not on the list.
    let (status, e) = t.post("/v1/responses", &body(format!("{other}/mcp"))).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "tools[0].server_url");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2 is not allowed"),
        "{e}"
    );
    // A redirect to it.
    *seen.redirect_to.lock().unwrap() = format!("{other}/mcp");
    let (status, e) = t
        .post("/v1/responses", &body(format!("{base}/redirect")))
        .await;
    assert_eq!(status, 424, "{e}");
    assert_eq!(e["error"]["type"], "external_connector_error");
    assert_eq!(e["error"]["param"], "tools[0]");
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0, "never reached");
    // A server that is down.
    let (status, e) = t
        .post(
            "/v1/responses",
            &body(format!("http://127.0.0.1:{}/mcp", free_port())),
        )
        .await;
    assert_eq!(status, 424, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("calc"),
        "{e}"
    );

    // A name resolving to loopback, while private addresses are not allowed; and an
    // address literal on loopback.
    let strict = gateway(Some(mcp_config(&["localhost", "127.0.0.1"], false))).await;
    let before = seen.hits.load(Ordering::SeqCst);
    let (status, e) = strict
        .post(
            "/v1/responses",
            &body(format!("http://localhost:{port}/mcp")),
        )
        .await;
    assert_eq!(status, 424, "{e}");
    let (status, e) = strict
        .post("/v1/responses", &body(format!("{base}/mcp")))
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is not allowed"),
        "{e}"
    );
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        before,
        "neither reached the server"
    );

    // Bad tools, each named by its param; none reaches a server or an engine.
    let served: u64 = t.per_server().iter().sum();
    for (tool, param) in [
        (
            json!({"type": "mcp", "server_url": format!("{base}/mcp")}),
            "tools[0].server_label",
        ),
        (
            json!({"type": "mcp", "server_label": "calc"}),
            "tools[0].server_url",
        ),
        (
            json!({"type": "mcp", "server_label": "calc", "server_url": "ftp://x/"}),
            "tools[0].server_url",
        ),
        (
            json!({"type": "mcp", "server_label": "calc", "server_url": format!("{base}/mcp"),
                "require_approval": "maybe"}),
            "tools[0].require_approval",
        ),
        (
            json!({"type": "mcp", "server_label": "calc", "server_url": format!("{base}/mcp"),
                "headers": {"Content-Type": "text/plain"}}),
            "tools[0].headers.Content-Type",
        ),
    ] {
        let (status, e) = t
            .post(
                "/v1/responses",
                &json!({"model": MODEL, "input": "hi", "tools": [tool]}),
            )
            .await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    let twice = json!({"type": "mcp", "server_label": "calc", "server_url": format!("{base}/mcp")});
    let (status, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "hi", "tools": [twice.clone(), twice]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "tools[1].server_label");
    // A tool named as the client's own function.
    let (status, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "hi", "tools": [
                {"type": "function", "name": "add", "parameters": {"type": "object"}},
                {"type": "mcp", "server_label": "calc", "server_url": format!("{base}/mcp")}]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "tools[1].allowed_tools");
    // tool_choice naming a tool the server does not have.
    let (status, e) = t
        .post(
            "/v1/responses",
            &json!({"model": MODEL, "input": "hi",
                    "tool_choice": {"type": "mcp", "server_label": "calc", "name": "nope"},
                    "tools": [{"type": "mcp", "server_label": "calc", "server_url": format!("{base}/mcp")}]}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "tool_choice.name");
    assert_eq!(
        t.per_server().iter().sum::<u64>(),
        served,
        "no engine was asked"
    );
}
