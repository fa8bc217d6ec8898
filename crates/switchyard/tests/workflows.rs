//! Multi-agent workflows over real HTTP against simulated engines: affinity across
//! agents, the normal policy for requests without a workflow, migration when the home
//! fails or is overloaded, the registry's status and stats, agent message queues (send, receive,
//! consume, broadcast, selective, none, TTL, overflow, long poll), expiry and eviction,
//! and every bad input.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_testkit::*;

/// A chat request of `agent` in workflow `wf`, over the workflow's shared briefing.
fn agent_request(wf: &str, agent: &str, turn: usize) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 4,
        "messages": [
            {"role": "system", "content": format!("Workflow {wf} briefing. {}", prompt_text(7, 300))},
            {"role": "user", "content": format!("{agent}, step {turn}")}
        ],
        "workflow_metadata": {"workflow_id": wf, "agent_id": agent}
    })
}

async fn bed(n: usize, adjust: impl FnOnce(&mut switchyard::Config)) -> TestBed {
    TestBed::with(sims(n).await, |c| {
        c.policy = PolicyKind::WorkflowAware;
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn a_workflows_agents_stay_on_one_worker_and_the_registry_sees_them() {
    let t = bed(4, |_| {}).await;
    for turn in 0..3 {
        for agent in ["planner", "coder", "critic"] {
            let (s, body) = t
                .post("/v1/chat/completions", &agent_request("wf-a", agent, turn))
                .await;
            assert_eq!(s, 200, "{body}");
        }
    }
    let served = t.per_server();
    assert_eq!(
        served.iter().filter(|n| **n > 0).count(),
        1,
        "one worker: {served:?}"
    );
    assert_eq!(served.iter().sum::<u64>(), 9);

    let (s, status) = t
        .http
        .get(&format!("{}/v1/workflows/wf-a/status", t.url))
        .await;
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["workflow_id"], "wf-a");
    assert_eq!(status["totals"]["requests"], 9);
    assert_eq!(status["workers"].as_array().unwrap().len(), 1);
    assert!(
        status["workers"][0]["url"].is_null(),
        "no URL on the data plane"
    );
    for agent in ["planner", "coder", "critic"] {
        let a = &status["agents"][agent];
        assert_eq!(a["requests"], 3, "{status}");
        assert!(a["prompt_tokens"].as_u64().unwrap() > 300);
        assert!(a["avg_latency_ms"].as_f64().unwrap() > 0.0);
    }
    // The shared briefing is served from the cache after the first request.
    let rate = status["totals"]["cache_hit_rate"]
        .as_f64()
        .expect("the simulator reports cached tokens");
    assert!(rate > 0.5, "{status}");
    // The admin listener shows where the workflow runs.
    let (_, admin) = t.http.get(&format!("{}/workflows/wf-a", t.admin)).await;
    assert!(
        admin["workers"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://"),
        "{admin}"
    );

    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["active_workflows"], 1, "{stats}");
    assert_eq!(stats["created_workflows"], 1);
    assert_eq!(stats["requests"], 9);
    assert_eq!(stats["top_workflows"][0]["workflow_id"], "wf-a");
    assert_eq!(stats["agent_roles"]["coder"]["requests"], 3);
    assert_eq!(stats["migrations"], 0);
    assert_eq!(
        t.metric("switchyard_workflow_requests_total", &[]).await,
        9.0
    );
    assert_eq!(t.metric("switchyard_workflow_active", &[]).await, 1.0);
    assert!(t.metric("switchyard_workflow_cache_hit_rate", &[]).await > 0.5);
}

#[tokio::test]
async fn requests_without_a_workflow_follow_the_normal_policy() {
    let t = bed(2, |_| {}).await;
    for i in 0..8 {
        let (s, _) = t
            .post("/v1/chat/completions", &chat(&prompt_text(i, 200), 4))
            .await;
        assert_eq!(s, 200);
    }
    let served = t.per_server();
    assert!(
        served.iter().all(|n| *n > 0),
        "cache_aware spreads distinct prompts: {served:?}"
    );
    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["active_workflows"], 0);
}

#[tokio::test]
async fn headers_name_the_workflow_for_clients_that_cannot_add_body_fields() {
    let t = bed(2, |_| {}).await;
    let resp = t
        .http
        .0
        .post(format!("{}/v1/chat/completions", t.url))
        .header("x-workflow-id", "wf-h")
        .header("x-agent-id", "scout")
        .header("x-workflow-priority", "3")
        .json(&chat("hello", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, status) = t
        .http
        .get(&format!("{}/v1/workflows/wf-h/status", t.url))
        .await;
    assert_eq!(status["agents"]["scout"]["requests"], 1, "{status}");
    assert_eq!(status["workflow_priority"], 3.0);
}

#[tokio::test]
async fn a_workflow_whose_worker_fails_migrates() {
    let t = bed(2, |c| c.health_failure_threshold = 1).await;
    let (s, _) = t
        .post("/v1/chat/completions", &agent_request("wf-m", "a", 0))
        .await;
    assert_eq!(s, 200);
    let home = t.per_server().iter().position(|n| *n == 1).unwrap();
    t.sims.servers()[home].shutdown();
    eventually("the home to be marked unhealthy", || async {
        let (_, h) = t.http.get(&format!("{}/health", t.url)).await;
        h["healthy_workers"] == 1
    })
    .await;
    let (s, body) = t
        .post("/v1/chat/completions", &agent_request("wf-m", "a", 1))
        .await;
    assert_eq!(s, 200, "{body}");
    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["migrations"], 1, "{stats}");
    assert_eq!(
        t.metric("switchyard_workflow_migrations_total", &[]).await,
        1.0
    );
    let (_, status) = t
        .http
        .get(&format!("{}/v1/workflows/wf-m/status", t.url))
        .await;
    assert_eq!(status["workers"].as_array().unwrap().len(), 2, "{status}");
}

#[tokio::test]
async fn a_workflow_whose_home_is_overloaded_migrates() {
    // k = 1: the home stays while its load ≤ 1 + 2·min; queued work outweighs any
    // prompt, so beyond the bound the idle worker is the cheaper one.
    let t = bed(2, |c| {
        c.batching_preference = 0.5;
        c.cache_queue_weight = 1000.0;
        c.health_failure_threshold = 1;
    })
    .await;
    let (s, _) = t
        .post("/v1/chat/completions", &agent_request("wf-o", "a", 0))
        .await;
    assert_eq!(s, 200);
    let home = t.per_server().iter().position(|n| *n == 1).unwrap();
    let other = 1 - home;

    // Other traffic piles up on the home while the other worker is out of service.
    t.sims.servers()[other]
        .set_faults(switchyard_sim::Faults {
            health_fail: true,
            ..switchyard_sim::Faults::default()
        })
        .unwrap();
    eventually("the other worker to be marked unhealthy", || async {
        let (_, h) = t.http.get(&format!("{}/health", t.url)).await;
        h["healthy_workers"] == 1
    })
    .await;
    t.sims.servers()[home].set_faults(stalled()).unwrap();
    let mut held = Vec::new();
    for i in 0..2 {
        let mut r = t
            .http
            .0
            .post(format!("{}/v1/completions", t.url))
            .json(&json!({"model": MODEL, "prompt": format!("other work {i}"), "max_tokens": 20, "stream": true}))
            .send()
            .await
            .unwrap();
        r.chunk().await.unwrap();
        held.push(r);
    }
    assert_eq!(t.per_server()[home], 3);
    t.sims.servers()[other]
        .set_faults(switchyard_sim::Faults::default())
        .unwrap();
    eventually("the other worker to be back", || async {
        let (_, h) = t.http.get(&format!("{}/health", t.url)).await;
        h["healthy_workers"] == 2
    })
    .await;

    // Two in flight on the home against none: beyond the bound, so the workflow moves.
    let (s, body) = t
        .post("/v1/chat/completions", &agent_request("wf-o", "a", 1))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(t.per_server()[other], 1, "{:?}", t.per_server());
    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["migrations"], 1, "{stats}");
    // The new home keeps the workflow, though the old one is no longer busy.
    t.sims.servers()[home]
        .set_faults(switchyard_sim::Faults::default())
        .unwrap();
    for r in held {
        r.bytes().await.unwrap();
    }
    let (s, _) = t
        .post("/v1/chat/completions", &agent_request("wf-o", "b", 2))
        .await;
    assert_eq!(s, 200);
    assert_eq!(t.per_server()[other], 2, "{:?}", t.per_server());
    assert_eq!(
        t.metric("switchyard_workflow_migrations_total", &[]).await,
        1.0
    );
}

async fn send(t: &TestBed, path: &str, body: Value) -> (u16, Value) {
    t.post(path, &body).await
}

async fn receive(t: &TestBed, wf: &str, agent: &str, query: &str) -> (u16, Value) {
    t.http
        .get(&format!(
            "{}/v1/workflows/{wf}/agents/{agent}/messages?{query}",
            t.url
        ))
        .await
}

#[tokio::test]
async fn agents_message_each_other_through_queues() {
    let t = bed(1, |c| c.max_message_queue_size = 3).await;
    // Direct: 201 with an id and an expiry; read without consuming, then consume.
    let (s, sent) = send(
        &t,
        "/v1/workflows/wf-q/agents/coder/messages",
        json!({"from_agent": "planner", "payload": {"task": "parse dates"}, "type": "task"}),
    )
    .await;
    assert_eq!(s, 201, "{sent}");
    assert!(sent["message_id"].as_str().unwrap().starts_with("msg_"));
    assert!(sent["expires_at"].as_str().unwrap().ends_with('Z'));
    let (_, peek) = receive(&t, "wf-q", "coder", "consume=false").await;
    assert_eq!(peek["count"], 1);
    assert_eq!(peek["messages"][0]["payload"]["task"], "parse dates");
    assert_eq!(peek["messages"][0]["from_agent"], "planner");
    assert_eq!(peek["messages"][0]["type"], "task");
    let (_, got) = receive(&t, "wf-q", "coder", "").await;
    assert_eq!(got["count"], 1);
    let (_, empty) = receive(&t, "wf-q", "coder", "").await;
    assert_eq!(empty["count"], 0);

    // Broadcast reaches every known agent but the sender; selective only those named.
    send(
        &t,
        "/v1/workflows/wf-q/agents/critic/messages",
        json!({"from_agent": "planner", "payload": 1}),
    )
    .await;
    receive(&t, "wf-q", "critic", "").await;
    let (s, b) = send(
        &t,
        "/v1/workflows/wf-q/messages",
        json!({"from_agent": "planner", "payload": "all hands"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let mut to: Vec<&str> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["agent_id"].as_str().unwrap())
        .collect();
    to.sort();
    assert_eq!(to, ["coder", "critic"]);
    let (_, b) = send(
        &t,
        "/v1/workflows/wf-q/messages",
        json!({"from_agent": "planner", "payload": "just you", "to": ["critic"]}),
    )
    .await;
    assert_eq!(b["count"], 1);
    let (_, c) = receive(&t, "wf-q", "critic", "limit=10").await;
    let texts: Vec<&Value> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(texts, [&json!("all hands"), &json!("just you")], "in order");

    // Overflow: the fourth message to a queue of 3 is refused, nothing is dropped.
    for i in 0..2 {
        let (s, _) = send(
            &t,
            "/v1/workflows/wf-q/agents/coder/messages",
            json!({"from_agent": "p", "payload": i}),
        )
        .await;
        assert_eq!(s, 201);
    }
    let resp = t
        .http
        .0
        .post(format!("{}/v1/workflows/wf-q/agents/coder/messages", t.url))
        .json(&json!({"from_agent": "p", "payload": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "queue_full");
    let (_, all) = receive(&t, "wf-q", "coder", "consume=false").await;
    assert_eq!(
        all["count"], 3,
        "the accepted messages are all there: {all}"
    );

    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["messages"]["rejected"], 1, "{stats}");
    assert_eq!(stats["messages"]["delivered"], 4);
    let (_, status) = t
        .http
        .get(&format!("{}/v1/workflows/wf-q/status", t.url))
        .await;
    assert_eq!(status["queue_depths"]["coder"], 3);
}

#[tokio::test]
async fn a_long_poll_returns_when_a_message_arrives() {
    let t = bed(1, |_| {}).await;
    send(
        &t,
        "/v1/workflows/wf-l/agents/a/messages",
        json!({"from_agent": "b", "payload": 0}),
    )
    .await;
    receive(&t, "wf-l", "a", "").await;
    let url = format!("{}/v1/workflows/wf-l/agents/a/messages?wait_secs=30", t.url);
    let http = t.http.clone();
    let waiting = tokio::spawn(async move { http.get(&url).await });
    // The poll is open, with nothing to read, before the message is sent.
    eventually("the long poll to wait", || async {
        let (_, s) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
        s["messages"]["waiting_receivers"] == 1
    })
    .await;
    let (s, _) = send(
        &t,
        "/v1/workflows/wf-l/agents/a/messages",
        json!({"from_agent": "b", "payload": "wake"}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, got) = waiting.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(got["messages"][0]["payload"], "wake", "{got}");
}

#[tokio::test]
async fn sharing_strategies_gate_messaging() {
    let t = bed(1, |_| {}).await;
    for (wf, strategy) in [
        ("wf-none", "none"),
        ("wf-sel", "selective"),
        ("wf-bc", "broadcast"),
    ] {
        let mut r = agent_request(wf, "a", 0);
        r["workflow_metadata"]["context_sharing_strategy"] = json!(strategy);
        assert_eq!(t.post("/v1/chat/completions", &r).await.0, 200);
    }
    let (s, e) = send(
        &t,
        "/v1/workflows/wf-none/agents/a/messages",
        json!({"from_agent": "b", "payload": 1}),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert_error(&e, "conflict");
    let (s, _) = send(
        &t,
        "/v1/workflows/wf-sel/messages",
        json!({"from_agent": "b", "payload": 1}),
    )
    .await;
    assert_eq!(s, 409);
    let (s, _) = send(
        &t,
        "/v1/workflows/wf-sel/messages",
        json!({"from_agent": "b", "payload": 1, "to": ["a"]}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = send(
        &t,
        "/v1/workflows/wf-bc/messages",
        json!({"from_agent": "b", "payload": 1, "to": ["a"]}),
    )
    .await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn the_least_recently_active_workflow_is_evicted_beyond_the_bound() {
    let t = bed(1, |c| c.max_workflows = 2).await;
    send(
        &t,
        "/v1/workflows/wf-1/agents/a/messages",
        json!({"from_agent": "b", "payload": 1}),
    )
    .await;
    for wf in ["wf-2", "wf-3"] {
        assert_eq!(
            t.post("/v1/chat/completions", &agent_request(wf, "a", 0))
                .await
                .0,
            200
        );
    }
    // wf-1 was the least recently active of three with room for two.
    assert_eq!(
        t.http
            .get(&format!("{}/v1/workflows/wf-1/status", t.url))
            .await
            .0,
        404
    );
    assert_eq!(
        t.http
            .get(&format!("{}/v1/workflows/wf-3/status", t.url))
            .await
            .0,
        200
    );
    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["evicted_workflows"], 1, "{stats}");
    assert_eq!(stats["active_workflows"], 2);
    assert_eq!(
        t.metric("switchyard_workflow_evicted_total", &[]).await,
        1.0
    );
}

#[tokio::test]
async fn an_idle_workflow_expires() {
    let t = bed(1, |c| c.workflow_ttl = 1).await;
    assert_eq!(
        t.post("/v1/chat/completions", &agent_request("wf-x", "a", 0))
            .await
            .0,
        200
    );
    eventually("the idle workflow to expire", || async {
        let (_, s) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
        s["active_workflows"] == 0
    })
    .await;
    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["expired_workflows"], 1, "{stats}");
    assert_eq!(stats["created_workflows"], 1);
    assert_eq!(
        t.http
            .get(&format!("{}/v1/workflows/wf-x/status", t.url))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn a_message_expires_at_the_end_of_its_ttl() {
    let t = bed(1, |_| {}).await;
    send(
        &t,
        "/v1/workflows/wf-t/agents/a/messages",
        json!({"from_agent": "b", "payload": 1, "ttl_secs": 1}),
    )
    .await;
    send(
        &t,
        "/v1/workflows/wf-t/agents/a/messages",
        json!({"from_agent": "b", "payload": 2}),
    )
    .await;
    eventually("the short-lived message to expire", || async {
        let (_, m) = receive(&t, "wf-t", "a", "consume=false").await;
        m["count"] == 1
    })
    .await;
    let (_, m) = receive(&t, "wf-t", "a", "").await;
    assert_eq!(m["messages"][0]["payload"], 2);
    let (_, stats) = t.http.get(&format!("{}/v1/workflows/stats", t.url)).await;
    assert_eq!(stats["messages"]["expired"], 1, "{stats}");
}

#[tokio::test]
async fn deleting_a_workflow_frees_it() {
    let t = bed(1, |_| {}).await;
    assert_eq!(
        t.post("/v1/chat/completions", &agent_request("wf-d", "a", 0))
            .await
            .0,
        200
    );
    let resp = t
        .http
        .0
        .delete(format!("{}/v1/workflows/wf-d", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, e) = t
        .http
        .get(&format!("{}/v1/workflows/wf-d/status", t.url))
        .await;
    assert_eq!(s, 404);
    assert_error(&e, "not_found");
    let (s, _) = receive(&t, "wf-d", "a", "").await;
    assert_eq!(s, 404);
    let resp = t
        .http
        .0
        .delete(format!("{}/v1/workflows/wf-d", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn every_bad_input_is_a_400_naming_the_field_and_never_reaches_an_engine() {
    let t = bed(1, |c| c.max_message_bytes = 100).await;
    let long = "x".repeat(257);
    for (meta, param) in [
        (json!("wf"), "workflow_metadata"),
        (json!({"agent_id": "a"}), "workflow_metadata.workflow_id"),
        (json!({"workflow_id": ""}), "workflow_metadata.workflow_id"),
        (json!({"workflow_id": 5}), "workflow_metadata.workflow_id"),
        (
            json!({"workflow_id": long}),
            "workflow_metadata.workflow_id",
        ),
        (
            json!({"workflow_id": "w", "agent_id": ""}),
            "workflow_metadata.agent_id",
        ),
        (
            json!({"workflow_id": "w", "workflow_priority": "high"}),
            "workflow_metadata.workflow_priority",
        ),
        (
            json!({"workflow_id": "w", "context_sharing_strategy": "gossip"}),
            "workflow_metadata.context_sharing_strategy",
        ),
    ] {
        let mut r = chat("hi", 4);
        r["workflow_metadata"] = meta.clone();
        let (s, e) = t.post("/v1/chat/completions", &r).await;
        assert_eq!(s, 400, "{meta}: {e}");
        assert_error(&e, "invalid_request");
        assert_eq!(e["error"]["param"], param, "{meta}: {e}");
    }
    let resp = t
        .http
        .0
        .post(format!("{}/v1/chat/completions", t.url))
        .header("x-workflow-id", "w")
        .header("x-workflow-priority", "soon")
        .json(&chat("hi", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        t.per_server(),
        vec![0],
        "a malformed request reached an engine"
    );

    let path = "/v1/workflows/wf-b/agents/a/messages";
    for (body, status, param) in [
        (json!({"payload": 1}), 400, Some("from_agent")),
        (
            json!({"from_agent": 3, "payload": 1}),
            400,
            Some("from_agent"),
        ),
        (json!({"from_agent": "b"}), 400, Some("payload")),
        (
            json!({"from_agent": "b", "payload": 1, "ttl_secs": 0}),
            400,
            Some("ttl_secs"),
        ),
        (
            json!({"from_agent": "b", "payload": 1, "type": 7}),
            400,
            Some("type"),
        ),
        (
            json!({"from_agent": "b", "payload": "y".repeat(200)}),
            413,
            None,
        ),
    ] {
        let (s, e) = send(&t, path, body.clone()).await;
        assert_eq!(s, status, "{body}: {e}");
        assert_eq!(e["error"]["param"].as_str(), param, "{body}: {e}");
    }
    let (s, _) = send(
        &t,
        "/v1/workflows/wf-b/messages",
        json!({"from_agent": "b", "payload": 1, "to": []}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .http
        .post_raw(&t.url, path, Some("application/json"), "{")
        .await;
    assert_eq!(s, 400);
    send(&t, path, json!({"from_agent": "b", "payload": 1})).await;
    for q in ["limit=0", "limit=x", "wait_secs=61", "consume=maybe"] {
        let (s, e) = receive(&t, "wf-b", "a", q).await;
        assert_eq!(s, 400, "{q}: {e}");
    }
    let (s, _) = t
        .http
        .get(&format!(
            "{}/v1/workflows/{}/status",
            t.url,
            "x".repeat(300)
        ))
        .await;
    assert_eq!(s, 400);
}

/// Requests of three workflows with priorities 0, 1 and 5 wait, in that order, at a
/// one-slot engine under vLLM's priority scheduling; the order the engine served them
/// in (by its `sim_timing`), with `--forward-priority` on or off.
async fn engine_order(forward: bool) -> Vec<usize> {
    use switchyard_sim::{SchedulingPolicy, SimConfig};
    let sims = sims_with(SimConfig {
        max_num_seqs: 1,
        time_scale: 1.0,
        scheduling_policy: SchedulingPolicy::Priority,
        ..SimConfig::default()
    })
    .await;
    let server = sims.server(0).clone();
    let t = TestBed::with(sims, |c| {
        c.policy = PolicyKind::WorkflowAware;
        c.forward_priority = forward;
    })
    .await;
    // The holder keeps the only slot busy until it is dropped.
    let mut holder = t
        .http
        .0
        .post(format!("{}/v1/completions", t.url))
        .json(&json!({"model": MODEL, "prompt": "hold the engine", "max_tokens": 30000, "stream": true}))
        .send()
        .await
        .unwrap();
    holder.chunk().await.unwrap();
    let mut pending = Vec::new();
    for (i, priority) in [0, 1, 5].into_iter().enumerate() {
        let mut body = chat(&format!("queued {i}"), 4);
        body["workflow_metadata"] =
            json!({"workflow_id": format!("wf-p{i}"), "workflow_priority": priority});
        let (http, url) = (t.http.clone(), t.url.clone());
        pending.push(tokio::spawn(async move {
            http.post(&url, "/v1/chat/completions", &body).await
        }));
        eventually(
            &format!("{} request(s) waiting at the engine", i + 1),
            || async { server.engine_stats().await[0].waiting == i + 1 },
        )
        .await;
    }
    drop(holder);
    let mut scheduled = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        let (s, b) = p.await.unwrap();
        assert_eq!(s, 200, "{b}");
        let at = |k: &str| b["sim_timing"][k].as_f64().unwrap();
        scheduled.push((at("arrival") + at("queue_secs"), i));
    }
    scheduled.sort_by(|a, b| a.0.total_cmp(&b.0));
    scheduled.into_iter().map(|(_, i)| i).collect()
}

#[tokio::test]
async fn forwarded_priorities_reorder_the_engines_queue() {
    // Higher workflow priority is sooner: sent to vLLM negated (lower is sooner there).
    assert_eq!(engine_order(true).await, [2, 1, 0]);
    assert_eq!(engine_order(false).await, [0, 1, 2]);
}

#[tokio::test]
async fn a_workflow_stays_on_one_data_parallel_rank() {
    let sims = sims_with(switchyard_sim::SimConfig {
        data_parallel_size: 4,
        time_scale: 100.0,
        ..switchyard_sim::SimConfig::default()
    })
    .await;
    let server = sims.server(0).clone();
    let t = TestBed::with(sims, |c| {
        c.policy = PolicyKind::WorkflowAware;
        c.dp_size = 4;
    })
    .await;
    for turn in 0..2 {
        for agent in ["a", "b", "c", "d"] {
            let (s, b) = t
                .post("/v1/chat/completions", &agent_request("wf-dp", agent, turn))
                .await;
            assert_eq!(s, 200, "{b}");
        }
    }
    let ranks = server.requests_per_rank();
    assert_eq!(ranks.iter().filter(|n| **n > 0).count(), 1, "{ranks:?}");
    assert_eq!(ranks.iter().sum::<u64>(), 8);
}
