//! Workflows shared by gateway replicas through a real Redis (`--redis-url`): the
//! replicas agree on a workflow's worker, see one registry, and serve the same agent
//! queues (a message sent through one is received through the other, a long poll on
//! one wakes for a send through the other, the overflow bound holds across both);
//! expiry, eviction and deletion free the workflow for every replica.

use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_testkit::*;

/// This suite's Redis database (other suites use other numbers).
const REDIS_DB: u32 = 8;

/// A gateway replica in front of `urls`, sharing `keys`.
struct Replica {
    _gateway: switchyard::Gateway,
    url: String,
    http: Http,
}

impl Replica {
    async fn start(
        urls: Vec<String>,
        keys: &RedisKeys,
        adjust: impl FnOnce(&mut switchyard::Config),
    ) -> Replica {
        let mut cfg = config(urls, PolicyKind::WorkflowAware);
        cfg.redis_url = Some(keys.url.clone());
        cfg.redis_key_prefix = keys.prefix.clone();
        adjust(&mut cfg);
        let gateway = gateway(cfg).await;
        Replica {
            url: gateway.url(),
            _gateway: gateway,
            http: Http::new(),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.http.post(&self.url, path, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.http.get(&format!("{}{path}", self.url)).await
    }
}

fn agent_request(wf: &str, agent: &str, turn: usize) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 4,
        "messages": [
            {"role": "system", "content": format!("Workflow {wf} briefing. {}", prompt_text(9, 300))},
            {"role": "user", "content": format!("{agent}, step {turn}")}
        ],
        "workflow_metadata": {"workflow_id": wf, "agent_id": agent}
    })
}

#[tokio::test]
async fn two_replicas_share_a_workflows_worker_registry_and_queues() {
    let keys = RedisKeys::new(REDIS_DB, "shared");
    let sims = sims(4).await;
    let a = Replica::start(sims.urls(), &keys, |_| {}).await;
    let b = Replica::start(sims.urls(), &keys, |_| {}).await;
    // Three workflows whose agents' calls alternate between the replicas. Left alone,
    // each replica would place each workflow by its own cost (ties broken at random).
    let workflows = ["wf-r", "wf-s", "wf-t"];
    for wf in workflows {
        let mut n = 0;
        for turn in 0..2 {
            for agent in ["planner", "coder", "critic"] {
                let replica = if n % 2 == 0 { &a } else { &b };
                n += 1;
                let (s, body) = replica
                    .post("/v1/chat/completions", &agent_request(wf, agent, turn))
                    .await;
                assert_eq!(s, 200, "{body}");
            }
        }
    }
    assert_eq!(per_server(&sims).iter().sum::<u64>(), 18);
    // One registry: both replicas report each workflow's six requests, all on one
    // worker.
    for r in [&a, &b] {
        for wf in workflows {
            let path = format!("/v1/workflows/{wf}/status");
            eventually("both replicas to see every request", || async {
                r.get(&path).await.1["totals"]["requests"] == 6
            })
            .await;
            let (_, status) = r.get(&path).await;
            assert_eq!(status["agents"]["coder"]["requests"], 2, "{status}");
            assert_eq!(
                status["workers"].as_array().unwrap().len(),
                1,
                "one worker for both replicas: {status}"
            );
        }
        let (_, stats) = r.get("/v1/workflows/stats").await;
        assert_eq!(stats["active_workflows"], 3, "{stats}");
        assert_eq!(stats["created_workflows"], 3, "{stats}");
        assert_eq!(stats["requests"], 18, "{stats}");
        assert_eq!(
            stats["top_workflows"].as_array().unwrap().len(),
            3,
            "{stats}"
        );
        assert_eq!(stats["agent_roles"]["critic"]["requests"], 6, "{stats}");
    }
    // One set of queues: sent through A, read (and consumed) through B.
    let (s, sent) = a
        .post(
            "/v1/workflows/wf-r/agents/coder/messages",
            &json!({"from_agent": "planner", "payload": {"task": "sort"}}),
        )
        .await;
    assert_eq!(s, 201, "{sent}");
    let (_, peek) = a
        .get("/v1/workflows/wf-r/agents/coder/messages?consume=false")
        .await;
    assert_eq!(peek["count"], 1, "{peek}");
    let (_, got) = b.get("/v1/workflows/wf-r/agents/coder/messages").await;
    assert_eq!(got["messages"][0]["payload"]["task"], "sort", "{got}");
    assert_eq!(got["messages"][0]["message_id"], sent["message_id"]);
    let (_, again) = a.get("/v1/workflows/wf-r/agents/coder/messages").await;
    assert_eq!(again["count"], 0, "consumed once for both: {again}");
    // A broadcast through B reaches every other agent, read through A.
    let (s, out) = b
        .post(
            "/v1/workflows/wf-r/messages",
            &json!({"from_agent": "critic", "payload": "done"}),
        )
        .await;
    assert_eq!(s, 201, "{out}");
    assert_eq!(out["count"], 2, "planner and coder: {out}");
    for agent in ["planner", "coder"] {
        let (_, got) = a
            .get(&format!("/v1/workflows/wf-r/agents/{agent}/messages"))
            .await;
        assert_eq!(got["messages"][0]["payload"], "done", "{agent}: {got}");
    }
    // A long poll on A wakes for a message sent through B.
    let url = format!(
        "{}/v1/workflows/wf-r/agents/critic/messages?wait_secs=30",
        a.url
    );
    let http = a.http.clone();
    let waiting = tokio::spawn(async move { http.get(&url).await });
    eventually("the long poll to wait", || async {
        a.get("/v1/workflows/stats").await.1["messages"]["waiting_receivers"] == 1
    })
    .await;
    let (s, _) = b
        .post(
            "/v1/workflows/wf-r/agents/critic/messages",
            &json!({"from_agent": "coder", "payload": "review me"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, got) = waiting.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(got["messages"][0]["payload"], "review me", "{got}");
    let (_, stats) = b.get("/v1/workflows/stats").await;
    assert_eq!(stats["messages"]["sent"], 4, "{stats}");
    assert_eq!(stats["messages"]["delivered"], 4, "{stats}");
    assert_eq!(stats["messages"]["queued"], 0, "{stats}");
}

#[tokio::test]
async fn a_full_queue_refuses_through_every_replica_and_nothing_is_dropped() {
    let keys = RedisKeys::new(REDIS_DB, "overflow");
    let sims = sims(1).await;
    let bound = |c: &mut switchyard::Config| c.max_message_queue_size = 2;
    let a = Replica::start(sims.urls(), &keys, bound).await;
    let b = Replica::start(sims.urls(), &keys, bound).await;
    for (r, i) in [(&a, 1), (&b, 2)] {
        let (s, body) = r
            .post(
                "/v1/workflows/wf-o/agents/x/messages",
                &json!({"from_agent": "y", "payload": i}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, body) = a
        .post(
            "/v1/workflows/wf-o/agents/x/messages",
            &json!({"from_agent": "y", "payload": 3}),
        )
        .await;
    assert_eq!(s, 429, "{body}");
    assert_error(&body, "queue_full");
    let (_, got) = b
        .get("/v1/workflows/wf-o/agents/x/messages?consume=false")
        .await;
    let payloads: Vec<&Value> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(payloads, [&json!(1), &json!(2)], "{got}");
    let (_, stats) = a.get("/v1/workflows/stats").await;
    assert_eq!(stats["messages"]["rejected"], 1, "{stats}");
    // A message past its TTL leaves the queue, for both replicas.
    let (s, _) = b
        .post(
            "/v1/workflows/wf-t/agents/x/messages",
            &json!({"from_agent": "y", "payload": "brief", "ttl_secs": 1}),
        )
        .await;
    assert_eq!(s, 201);
    eventually("the message to expire", || async {
        a.get("/v1/workflows/wf-t/agents/x/messages?consume=false")
            .await
            .1["count"]
            == 0
    })
    .await;
    let (_, stats) = b.get("/v1/workflows/stats").await;
    assert_eq!(stats["messages"]["expired"], 1, "{stats}");
    // One nobody reads expires too: the sweep finds it (stats and metrics only read
    // the counts).
    let (s, _) = a
        .post(
            "/v1/workflows/wf-t/agents/idle/messages",
            &json!({"from_agent": "y", "payload": "unread", "ttl_secs": 1}),
        )
        .await;
    assert_eq!(s, 201);
    eventually("the unread message to expire", || async {
        let (_, stats) = b.get("/v1/workflows/stats").await;
        stats["messages"]["expired"] == 2
    })
    .await;
    let (_, stats) = a.get("/v1/workflows/stats").await;
    assert_eq!(stats["messages"]["queued"], 2, "the two of wf-o: {stats}");
}

#[tokio::test]
async fn redis_workflows_expire_are_evicted_and_deleted_for_every_replica() {
    let keys = RedisKeys::new(REDIS_DB, "lifecycle");
    let sims = sims(1).await;
    let a = Replica::start(sims.urls(), &keys, |c| c.max_workflows = 2).await;
    let b = Replica::start(sims.urls(), &keys, |c| c.max_workflows = 2).await;
    for (r, wf) in [(&a, "wf-1"), (&b, "wf-2"), (&a, "wf-3")] {
        let (s, body) = r
            .post("/v1/chat/completions", &agent_request(wf, "a", 0))
            .await;
        assert_eq!(s, 200, "{body}");
    }
    // The least recently active (wf-1) made room for wf-3.
    assert_eq!(b.get("/v1/workflows/wf-1/status").await.0, 404);
    let (_, stats) = b.get("/v1/workflows/stats").await;
    assert_eq!(stats["evicted_workflows"], 1, "{stats}");
    assert_eq!(stats["active_workflows"], 2, "{stats}");
    // Deleted through one replica, gone for the other, with its queue.
    a.post(
        "/v1/workflows/wf-2/agents/a/messages",
        &json!({"from_agent": "b", "payload": 0}),
    )
    .await;
    let resp = b
        .http
        .0
        .delete(format!("{}/v1/workflows/wf-2", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(a.get("/v1/workflows/wf-2/status").await.0, 404);
    assert_eq!(
        a.get("/v1/workflows/wf-2/agents/a/messages").await.0,
        404,
        "the queue went with it"
    );
    let (_, stats) = a.get("/v1/workflows/stats").await;
    assert_eq!(stats["messages"]["queued"], 0, "{stats}");

    // Idle past a short TTL, a workflow ends for both, counted once.
    let keys = RedisKeys::new(REDIS_DB, "expiry");
    let short = |c: &mut switchyard::Config| c.workflow_ttl = 1;
    let c = Replica::start(sims.urls(), &keys, short).await;
    let d = Replica::start(sims.urls(), &keys, short).await;
    let (s, _) = c
        .post("/v1/chat/completions", &agent_request("wf-x", "a", 0))
        .await;
    assert_eq!(s, 200);
    eventually("the idle workflow to expire", || async {
        d.get("/v1/workflows/stats").await.1["active_workflows"] == 0
    })
    .await;
    assert_eq!(d.get("/v1/workflows/wf-x/status").await.0, 404);
    let (_, stats) = c.get("/v1/workflows/stats").await;
    assert_eq!(stats["expired_workflows"], 1, "{stats}");
}

#[tokio::test]
async fn a_dead_redis_is_a_503_for_the_workflow_api_and_requests_still_route() {
    // A Redis URL where nothing listens.
    let keys = RedisKeys {
        url: format!("redis://127.0.0.1:{}/0", free_port()),
        prefix: "unused".into(),
    };
    let sims = sims(2).await;
    let a = Replica::start(sims.urls(), &keys, |c| c.redis_timeout_ms = 200).await;
    let (s, body) = a
        .post("/v1/chat/completions", &agent_request("wf-d", "a", 0))
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = a.get("/v1/workflows/wf-d/status").await;
    assert_eq!(s, 503, "{body}");
    assert_error(&body, "workflow_store_unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no address: {body}"
    );
    let (s, body) = a
        .post(
            "/v1/workflows/wf-d/agents/a/messages",
            &json!({"from_agent": "b", "payload": 0}),
        )
        .await;
    assert_eq!(s, 503, "{body}");
    assert_error(&body, "workflow_store_unavailable");
}
