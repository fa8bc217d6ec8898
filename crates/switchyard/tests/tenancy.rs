//! Tenancy over real HTTP (docs/tenancy.md): keys issued, used and revoked through the
//! admin API; limits (requests and tokens per minute, concurrency, budgets) answered
//! with 429 and the `x-ratelimit-*` headers, in memory and shared by two replicas
//! through Redis and PostgreSQL, and when Redis goes away; models outside a tenant's
//! list answered as unknown; stored objects invisible to other tenants; failed
//! authentications locked out per address; usage and the audit log; CORS; the admin
//! API's answers to bad input; no secret in the logs.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_stateful::testing::PgDatabase;
use switchyard_testkit::*;

/// This suite's Redis database number at 127.0.0.1:6379.
const REDIS_DB: u32 = 9;

/// A gateway (SQLite in memory unless told otherwise) in front of simulated engines,
/// and a client.
struct Gw {
    sims: Arc<switchyard_sim::SimHandle>,
    gw: switchyard::Gateway,
    url: String,
    admin: String,
    metrics: String,
    http: reqwest::Client,
}

/// An answer: status, headers, body (JSON, else a string).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Gw {
    async fn start(adjust: impl FnOnce(&mut switchyard::Config)) -> Gw {
        Gw::on(Arc::new(sims(1).await), adjust).await
    }

    /// A gateway in front of `sims` (a second replica: the same engines).
    async fn on(
        sims: Arc<switchyard_sim::SimHandle>,
        adjust: impl FnOnce(&mut switchyard::Config),
    ) -> Gw {
        let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
        adjust(&mut cfg);
        let gw = gateway(cfg).await;
        Gw {
            url: gw.url(),
            admin: admin_url(&gw),
            metrics: metrics_url(&gw),
            gw,
            sims,
            http: reqwest::Client::new(),
        }
    }

    /// Generation requests the engines have accepted, in all.
    fn engine_requests(&self) -> u64 {
        per_server(&self.sims).iter().sum()
    }

    /// Opens a stream and reads its first chunk: the request is in flight until the
    /// response is read to its end or dropped (with [`stalled`] faults, held there).
    async fn open_stream(&self, key: &str, body: &Value) -> reqwest::Response {
        let mut resp = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status(), 200);
        assert!(resp.chunk().await.expect("a first chunk").is_some());
        resp
    }

    /// Requests counted in the usage of `tenant` (settled ones).
    async fn settled(&self, tenant: &str) -> u64 {
        let a = self
            .admin(Method::GET, &format!("/admin/usage?tenant={tenant}"), None)
            .await;
        a.body["data"].as_array().map_or(0, |d| {
            d.iter().map(|r| r["requests"].as_u64().unwrap()).sum()
        })
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut req = self.http.request(method, url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        self.send(method, format!("{}{path}", self.admin), None, body)
            .await
    }

    async fn chat(&self, key: Option<&str>, body: &Value) -> Answer {
        self.send(
            Method::POST,
            format!("{}/v1/chat/completions", self.url),
            key,
            Some(body),
        )
        .await
    }

    async fn api(&self, method: Method, path: &str, key: &str, body: Option<&Value>) -> Answer {
        self.send(method, format!("{}{path}", self.url), Some(key), body)
            .await
    }

    /// Uploads a file (`purpose` assistants) with `key`.
    async fn upload(&self, key: &str, name: &str, bytes: &[u8]) -> Answer {
        let resp = self
            .http
            .post(format!("{}/v1/files", self.url))
            .bearer_auth(key)
            .header("content-type", multipart_type())
            .body(multipart_form(&[
                ("purpose", None, b"assistants"),
                ("file", Some(name), bytes),
            ]))
            .send()
            .await
            .expect("upload sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Answer {
            status,
            headers,
            body: resp.json().await.unwrap_or_default(),
        }
    }

    async fn tenant(&self, body: Value) {
        let a = self
            .admin(Method::POST, "/admin/tenants", Some(&body))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    /// Issues a key: (its id, the secret).
    async fn key(&self, body: Value) -> (String, String) {
        let a = self.admin(Method::POST, "/admin/keys", Some(&body)).await;
        assert_eq!(a.status, 201, "{}", a.body);
        (
            a.body["id"].as_str().unwrap().to_string(),
            a.body["key"].as_str().unwrap().to_string(),
        )
    }
}

#[tokio::test]
async fn keys_are_issued_used_expired_and_revoked() {
    let g = Gw::start(|_| {}).await;
    // No key configured: everyone is the default tenant.
    assert_eq!(g.chat(None, &chat("hi", 2)).await.status, 200);

    g.tenant(json!({"id": "team-a", "name": "Team A"})).await;
    let (id, secret) = g.key(json!({"tenant": "team-a", "name": "ci"})).await;
    assert!(secret.starts_with(&format!("sk-sy-{id}-")), "{secret}");
    // The secret is shown once: never in a read or a list.
    for path in [
        format!("/admin/keys/{id}"),
        "/admin/keys?tenant=team-a".to_string(),
    ] {
        let a = g.admin(Method::GET, &path, None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(!a.body.to_string().contains(&secret[20..]), "{}", a.body);
    }

    // A key now exists: requests need one.
    let a = g.chat(None, &chat("hi", 2)).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_error(&a.body, "invalid_api_key");
    assert_eq!(g.chat(Some(&secret), &chat("hi", 2)).await.status, 200);
    let mut forged = secret.clone();
    forged.pop();
    forged.push(if secret.ends_with('0') { '1' } else { '0' });
    assert_eq!(g.chat(Some(&forged), &chat("hi", 2)).await.status, 401);

    // Expired: an expiry in the past.
    let past = json!({"expires_at": 1_000_000_000});
    let a = g
        .admin(Method::PATCH, &format!("/admin/keys/{id}"), Some(&past))
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("expired")),
        "{}",
        a.body
    );
    assert_eq!(g.chat(Some(&secret), &chat("hi", 2)).await.status, 401);
    let a = g
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{id}"),
            Some(&json!({"expires_at": null})),
        )
        .await;
    assert_eq!(a.body["status"], "active", "{}", a.body);
    assert_eq!(g.chat(Some(&secret), &chat("hi", 2)).await.status, 200);

    // Revoked.
    let a = g
        .admin(Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("revoked")),
        "{}",
        a.body
    );
    assert_eq!(g.chat(Some(&secret), &chat("hi", 2)).await.status, 401);
    // Revoking the only key does not open the gateway to requests without one.
    assert_eq!(g.chat(None, &chat("hi", 2)).await.status, 401);

    // Every change is in the audit log, after the fact, with who made it.
    let a = g.admin(Method::GET, "/admin/audit", None).await;
    let actions: Vec<&str> = a.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "key.create",
            "key.update",
            "key.update",
            "key.revoke"
        ]
    );
    assert_eq!(a.body["data"][1]["target"], id.as_str());
    assert!(
        a.body["data"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin@127.0.0.1"),
        "{}",
        a.body
    );
    assert!(!a.body.to_string().contains(&secret[20..]));
    g.gw.shutdown();
}

#[tokio::test]
async fn limits_answer_429_with_rate_limit_headers() {
    let g = Gw::start(|c| c.use_case_routing.default_model = Some(MODEL.into())).await;
    g.tenant(json!({"id": "small", "limits": {"rpm": 2}})).await;
    let (_, key) = g.key(json!({"tenant": "small"})).await;
    for left in ["1", "0"] {
        let a = g.chat(Some(&key), &chat("hi", 2)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(a.header("x-ratelimit-remaining-requests"), Some(left));
        assert!(a.header("x-ratelimit-reset-requests").is_some());
    }
    let a = g.chat(Some(&key), &chat("hi", 2)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_error(&a.body, "rate_limit_exceeded");
    assert_eq!(a.body["error"]["type"], "rate_limit_error");
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("0"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    // `/route` passes the refusal on as it is, headers and all.
    let a = g
        .api(
            Method::POST,
            "/route",
            &key,
            Some(&json!({"query": "hello"})),
        )
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "rate_limit_exceeded", "{}", a.body);
    assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("0"));

    // A key's own limit, under a tenant without one.
    g.tenant(json!({"id": "big"})).await;
    let (_, k1) = g
        .key(json!({"tenant": "big", "limits": {"max_concurrent": 5, "tpm": 100}}))
        .await;
    // More tokens than the whole per-minute limit can never pass.
    let a = g.chat(Some(&k1), &chat("hi", 500)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_error(&a.body, "tokens_exceed_limit");
    assert!(a.body["error"]["message"].as_str().unwrap().contains("key"));
    assert_eq!(g.chat(Some(&k1), &chat("hi", 20)).await.status, 200);
    g.gw.shutdown();
}

#[tokio::test]
async fn a_model_outside_the_tenants_list_is_unknown_to_it() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "narrow", "allowed_models": ["some-other-model"]}))
        .await;
    let (_, key) = g.key(json!({"tenant": "narrow"})).await;
    let before: u64 = g.engine_requests();
    let a = g.chat(Some(&key), &chat("hi", 2)).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_error(&a.body, "model_not_found");
    assert!(
        !a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Available models: switchyard"),
        "{}",
        a.body
    );
    assert_eq!(g.engine_requests(), before, "never reached an engine");
    // Nor is it listed to that tenant; an unrestricted one sees it.
    let listed = g.api(Method::GET, "/v1/models", &key, None).await;
    assert_eq!(listed.body["data"], json!([]), "{}", listed.body);
    g.tenant(json!({"id": "wide"})).await;
    let (_, wide) = g.key(json!({"tenant": "wide"})).await;
    let listed = g.api(Method::GET, "/v1/models", &wide, None).await;
    assert_eq!(listed.body["data"][0]["id"], MODEL, "{}", listed.body);
    // A model nobody serves: the message names only the tenant's models.
    let mut unknown = chat("hi", 2);
    unknown["model"] = json!("no-such-model");
    let a = g.chat(Some(&key), &unknown).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(!a.body.to_string().contains(MODEL), "{}", a.body);
    g.gw.shutdown();
}

#[tokio::test]
async fn stored_objects_belong_to_their_tenant() {
    let g = Gw::start(|c| c.use_case_routing.default_model = Some(MODEL.into())).await;
    for t in ["alpha", "beta"] {
        g.tenant(json!({"id": t})).await;
    }
    let (_, a) = g.key(json!({"tenant": "alpha"})).await;
    let (_, b) = g.key(json!({"tenant": "beta"})).await;
    let conv = g
        .api(
            Method::POST,
            "/v1/conversations",
            &a,
            Some(&json!({"metadata": {"k": "v"}})),
        )
        .await;
    assert_eq!(conv.status, 200, "{}", conv.body);
    let store = g
        .api(
            Method::POST,
            "/v1/vector_stores",
            &a,
            Some(&json!({"name": "docs"})),
        )
        .await;
    assert_eq!(store.status, 200, "{}", store.body);
    let resp = g
        .api(
            Method::POST,
            "/v1/responses",
            &a,
            Some(&json!({"model": MODEL, "input": "hi", "max_output_tokens": 16})),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let file = g.upload(&a, "notes.txt", b"alpha's notes").await;
    assert_eq!(file.status, 200, "{}", file.body);
    let file_id = file.body["id"].as_str().unwrap();
    let vs_id = store.body["id"].as_str().unwrap();
    let attach = json!({"file_id": file_id});
    let attached = g
        .api(
            Method::POST,
            &format!("/v1/vector_stores/{vs_id}/files"),
            &a,
            Some(&attach),
        )
        .await;
    assert_eq!(attached.status, 200, "{}", attached.body);
    let paths = [
        format!("/v1/conversations/{}", conv.body["id"].as_str().unwrap()),
        format!("/v1/vector_stores/{vs_id}/files/{file_id}"),
        format!("/v1/vector_stores/{vs_id}"),
        format!("/v1/responses/{}", resp.body["id"].as_str().unwrap()),
        format!("/v1/files/{file_id}"),
    ];
    for p in &paths {
        assert_eq!(g.api(Method::GET, p, &a, None).await.status, 200, "{p}");
        let other = g.api(Method::GET, p, &b, None).await;
        assert_eq!(other.status, 404, "{p}: {}", other.body);
        assert_eq!(g.api(Method::DELETE, p, &b, None).await.status, 404, "{p}");
    }
    let content = g
        .api(
            Method::GET,
            &format!("/v1/files/{file_id}/content"),
            &b,
            None,
        )
        .await;
    assert_eq!(content.status, 404, "{}", content.body);
    let list = g.api(Method::GET, "/v1/vector_stores", &b, None).await;
    assert_eq!(list.body["data"], json!([]), "{}", list.body);
    let list = g.api(Method::GET, "/v1/files", &b, None).await;
    assert_eq!(list.body["data"], json!([]), "{}", list.body);
    // Nor can another tenant put the file in a store of its own.
    let own = g
        .api(
            Method::POST,
            "/v1/vector_stores",
            &b,
            Some(&json!({"name": "mine"})),
        )
        .await;
    let taken = g
        .api(
            Method::POST,
            &format!(
                "/v1/vector_stores/{}/files",
                own.body["id"].as_str().unwrap()
            ),
            &b,
            Some(&attach),
        )
        .await;
    assert_eq!(taken.status, 404, "{}", taken.body);
    let list = g.api(Method::GET, "/v1/vector_stores", &a, None).await;
    assert_eq!(
        list.body["data"].as_array().unwrap().len(),
        1,
        "{}",
        list.body
    );

    // A workflow of the same name is another tenant's own.
    let wf = |id: &str| {
        let mut body = chat("step", 2);
        body["workflow_metadata"] = json!({"workflow_id": id, "agent_id": "planner"});
        body
    };
    assert_eq!(g.chat(Some(&a), &wf("wf-1")).await.status, 200);
    let mine = g
        .api(Method::GET, "/v1/workflows/wf-1/status", &a, None)
        .await;
    assert_eq!(
        (mine.status, &mine.body["workflow_id"]),
        (200, &json!("wf-1")),
        "{}",
        mine.body
    );
    let theirs = g
        .api(Method::GET, "/v1/workflows/wf-1/status", &b, None)
        .await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);

    // A /route session: another tenant naming its id starts a session of its own.
    let first = g
        .api(
            Method::POST,
            "/route",
            &a,
            Some(&json!({"query": "hello", "user_id": "u1"})),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let sid = first.body["session_id"].as_str().unwrap().to_string();
    let path = format!("/sessions/{sid}");
    assert_eq!(g.api(Method::GET, &path, &b, None).await.status, 404);
    assert_eq!(g.api(Method::DELETE, &path, &b, None).await.status, 404);
    let other = g
        .api(
            Method::POST,
            "/route",
            &b,
            Some(&json!({"query": "hello", "session_id": sid, "user_id": "u1"})),
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
    let mine = g.api(Method::GET, &path, &a, None).await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(
        (&mine.body["request_count"], &mine.body["user_id"]),
        (&json!(1), &json!("u1")),
        "{}",
        mine.body
    );
    g.gw.shutdown();
}

#[tokio::test]
async fn failed_authentications_lock_the_address_out() {
    let g = Gw::start(|c| {
        c.api_key = Some("a-static-key-of-enough-length".into());
        c.auth_failures_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(g.chat(Some("sk-wrong"), &chat("hi", 2)).await.status, 401);
    }
    // Locked out for the rest of the minute, even with the right key.
    let a = g
        .chat(Some("a-static-key-of-enough-length"), &chat("hi", 2))
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_error(&a.body, "too_many_auth_failures");
    assert!(a.header("retry-after").is_some());
    g.gw.shutdown();
}

/// Where no key is required, a key of the gateway's form is still looked up (one issued
/// moments ago elsewhere must count as itself); made-up ones are failed authentications,
/// and an address that sends too many is refused them (keyless requests still pass).
#[tokio::test]
async fn made_up_keys_are_locked_out_even_where_no_key_is_required() {
    let g = Gw::start(|c| c.auth_failures_per_minute = 2).await;
    let made_up = format!("sk-sy-0123456789abcdef-{}", "e".repeat(64));
    for _ in 0..2 {
        let a = g.chat(Some(&made_up), &chat("hi", 2)).await;
        assert_eq!(a.status, 200, "served as `default`: {}", a.body);
    }
    let a = g.chat(Some(&made_up), &chat("hi", 2)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_error(&a.body, "too_many_auth_failures");
    assert_eq!(g.chat(None, &chat("hi", 2)).await.status, 200);
    assert_eq!(
        g.chat(Some("sk-some-other-key"), &chat("hi", 2))
            .await
            .status,
        200
    );
    g.gw.shutdown();
}

#[tokio::test]
async fn usage_is_counted_per_tenant_key_and_model() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "billed"})).await;
    let (id, key) = g.key(json!({"tenant": "billed"})).await;
    let (mut input, mut output) = (0, 0);
    for i in 0..3 {
        let a = g.chat(Some(&key), &chat(&format!("question {i}"), 3)).await;
        assert_eq!(a.status, 200);
        input += a.body["usage"]["prompt_tokens"].as_u64().unwrap();
        output += a.body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let expected = json!([{
        "tenant": "billed", "key": id, "requests": 3, "input_tokens": input,
        "cached_tokens": 0, "output_tokens": output, "errors": 0,
    }]);
    // Settled as each body ends: wait until all three are counted.
    eventually("the three requests are counted", || async {
        let a = g
            .admin(Method::GET, "/admin/usage?tenant=billed&group_by=key", None)
            .await;
        a.body["data"]
            .as_array()
            .is_some_and(|d| d.first().is_some_and(|r| r["requests"] == 3))
    })
    .await;
    let a = g
        .admin(Method::GET, "/admin/usage?tenant=billed&group_by=key", None)
        .await;
    let mut got = a.body["data"].clone();
    got[0]["cached_tokens"] = json!(0);
    assert_eq!(got, expected, "{}", a.body);
    let a = g
        .admin(
            Method::GET,
            "/admin/usage?tenant=billed&group_by=model",
            None,
        )
        .await;
    assert_eq!(a.body["data"][0]["model"], MODEL, "{}", a.body);
    g.gw.shutdown();
}

#[tokio::test]
async fn the_admin_api_answers_bad_input_with_openai_errors() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "t1"})).await;
    let cases: Vec<(Method, &str, Option<Value>, u16)> = vec![
        (Method::POST, "/admin/tenants", Some(json!([1])), 400),
        (
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "bad id"})),
            400,
        ),
        (
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "t2", "limits": {"rpm": 0}})),
            400,
        ),
        (
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "t2", "limits": {"rpx": 1}})),
            400,
        ),
        (
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "t2", "allowed_models": []})),
            400,
        ),
        (
            Method::POST,
            "/admin/tenants",
            Some(json!({"id": "t1"})),
            409,
        ),
        (
            Method::PATCH,
            "/admin/tenants/nope",
            Some(json!({"name": "x"})),
            404,
        ),
        (Method::GET, "/admin/tenants/nope", None, 404),
        (
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "nope"})),
            404,
        ),
        (
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "no tenant"})),
            400,
        ),
        (
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "t1", "expires_at": 1})),
            400,
        ),
        (Method::GET, "/admin/keys/nope", None, 404),
        (Method::DELETE, "/admin/keys/nope", None, 404),
        (Method::GET, "/admin/usage?group_by=week", None, 400),
        (Method::GET, "/admin/usage?from=yesterday", None, 400),
        (Method::GET, "/admin/audit?limit=0", None, 400),
    ];
    for (method, path, body, status) in cases {
        let a = g.admin(method.clone(), path, body.as_ref()).await;
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        assert!(
            a.body["error"]["message"].is_string(),
            "{method} {path}: {}",
            a.body
        );
        assert!(
            a.body["error"]["code"].is_string(),
            "{method} {path}: {}",
            a.body
        );
    }
    // Nothing refused was audited.
    let a = g.admin(Method::GET, "/admin/audit", None).await;
    assert_eq!(a.body["data"].as_array().unwrap().len(), 1, "{}", a.body);
    g.gw.shutdown();
}

/// A chat the simulator answers in one token whatever `max_tokens` is (`{}` under
/// `response_format: json_object`): its reservation is far above what it uses.
fn short_answer(max_tokens: u32, stream: bool) -> Value {
    let mut body = chat("Answer in JSON.", max_tokens);
    body["response_format"] = json!({"type": "json_object"});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Tokens per minute are reserved at admission and given back from the engine's usage
/// when the response ends, a stream's included: without the reconciliation the second
/// request below would wait 40 s for its tokens.
#[tokio::test]
async fn tokens_per_minute_are_reconciled_from_usage_streams_included() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "tpm", "limits": {"tpm": 1200}}))
        .await;
    let (_, key) = g.key(json!({"tenant": "tpm"})).await;
    // Reserves ~1000 tokens, uses ~20.
    let resp = g.open_stream(&key, &short_answer(1000, true)).await;
    let remaining: u64 = resp.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 200, "the reservation is held: {remaining} left");
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"usage\""), "{text}");
    eventually("the stream is settled", || async {
        g.settled("tpm").await == 1
    })
    .await;
    let a = g.chat(Some(&key), &short_answer(1000, false)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let used = a.body["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 100, "{}", a.body);
    let remaining: u64 = a
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // 1200 less the first request's real use and this one's reservation.
    assert!(
        (1200 - 1010 - used..=1200).contains(&remaining),
        "{remaining}"
    );
    g.gw.shutdown();
}

/// A stream whose client did not ask for usage is still reconciled and counted: the
/// gateway asks the engine for it and keeps it out of the client's stream.
#[tokio::test]
async fn a_stream_without_include_usage_is_reconciled_and_its_client_sees_no_usage() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "quiet", "limits": {"tpm": 1200}}))
        .await;
    let (_, key) = g.key(json!({"tenant": "quiet"})).await;
    // No `stream_options`, and `stream_options` without `include_usage`.
    for (n, options) in [(1, None), (2, Some(json!({"include_usage": false})))] {
        let mut body = short_answer(1000, true);
        match options {
            Some(o) => body["stream_options"] = o,
            None => drop(body.as_object_mut().unwrap().remove("stream_options")),
        }
        let text = g.open_stream(&key, &body).await.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(!text.contains("\"usage\":{"), "{text}");
        eventually("the stream is settled", || async {
            g.settled("quiet").await == n
        })
        .await;
    }
    // Counted with its real tokens: one output token each (`{}`).
    let usage = g
        .admin(Method::GET, "/admin/usage?tenant=quiet", None)
        .await;
    assert_eq!(usage.body["data"][0]["output_tokens"], 2, "{}", usage.body);
    // Reconciled: another ~1000-token reservation fits in 1200 (three would not).
    let a = g.chat(Some(&key), &short_answer(1000, false)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    g.gw.shutdown();
}

/// `max_concurrent` holds a key to that many requests in flight; a finished one frees
/// its slot.
#[tokio::test]
async fn concurrency_is_limited_and_slots_are_freed() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "narrow"})).await;
    let (_, key) = g
        .key(json!({"tenant": "narrow", "limits": {"max_concurrent": 2}}))
        .await;
    set_faults_everywhere(&g.sims, &stalled());
    let mut body = chat("hold", 8);
    body["stream"] = json!(true);
    let first = g.open_stream(&key, &body).await;
    let second = g.open_stream(&key, &body).await;
    let a = g.chat(Some(&key), &chat("third", 2)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_error(&a.body, "concurrency_limit_exceeded");
    assert!(a.header("retry-after").is_some());
    assert_eq!(g.engine_requests(), 2, "the third never reached an engine");
    set_faults_everywhere(&g.sims, &switchyard_sim::Faults::default());
    for s in [first, second] {
        assert!(s.text().await.unwrap().contains("[DONE]"));
    }
    eventually("a slot is free again", || async {
        g.chat(Some(&key), &chat("again", 2)).await.status == 200
    })
    .await;
    g.gw.shutdown();
}

/// A tenant's token budget for the period: spent, its requests are refused until the
/// period ends; another tenant is untouched.
#[tokio::test]
async fn a_spent_token_budget_refuses_until_the_period_ends() {
    let g = Gw::start(|_| {}).await;
    g.tenant(json!({"id": "frugal", "limits": {"token_budget": 100, "budget_period": "day"}}))
        .await;
    g.tenant(json!({"id": "other"})).await;
    let (_, key) = g.key(json!({"tenant": "frugal"})).await;
    let (_, other) = g.key(json!({"tenant": "other"})).await;
    let mut spent = 0;
    let mut answered = 0;
    let refusal = loop {
        let a = g.chat(Some(&key), &chat("spend", 30)).await;
        if a.status != 200 {
            break a;
        }
        answered += 1;
        spent += a.body["usage"]["total_tokens"].as_u64().unwrap();
        eventually("the request is settled", || async {
            g.settled("frugal").await == answered
        })
        .await;
        assert!(answered < 10, "the budget never ran out");
    };
    assert_eq!(refusal.status, 429, "{}", refusal.body);
    assert_error(&refusal.body, "budget_exceeded");
    // Refused exactly once the budget was spent.
    assert!(spent >= 100, "{spent}");
    assert!(answered >= 2, "{answered}");
    let retry: u64 = refusal.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert_eq!(g.chat(Some(&other), &chat("spend", 30)).await.status, 200);
    g.gw.shutdown();
}

/// Admitted requests of `n` sent at once, half through each replica.
async fn burst(a: &Gw, b: &Gw, key: &str, body: &Value, n: usize) -> (usize, Vec<Answer>) {
    let sends = (0..n).map(|i| {
        let g = if i % 2 == 0 { a } else { b };
        g.chat(Some(key), body)
    });
    let answers = futures_util::future::join_all(sends).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.into_iter().filter(|a| a.status != 200).collect();
    (ok, refused)
}

/// Two replicas on one PostgreSQL and one Redis: a key issued on one works on the
/// other; requests and tokens per minute hold across both as one limit; a revocation
/// on one is refused by the other.
#[tokio::test]
async fn two_replicas_share_keys_limits_and_revocations() {
    let db = PgDatabase::new("tenancy").await;
    let redis = RedisKeys::new(REDIS_DB, "replicas");
    let shared = |c: &mut switchyard::Config| {
        c.database_url = Some(db.url());
        c.redis_url = Some(redis.url.clone());
        c.redis_key_prefix = redis.prefix.clone();
    };
    let a = Gw::start(shared).await;
    let b = Gw::on(a.sims.clone(), shared).await;
    a.tenant(json!({"id": "shared", "limits": {"rpm": 30}}))
        .await;
    let (id, key) = a.key(json!({"tenant": "shared"})).await;
    assert_eq!(b.chat(Some(&key), &chat("hi", 2)).await.status, 200);

    // Requests per minute: 29 left of 30, and one more every 2 s (GCRA).
    let start = std::time::Instant::now();
    let (ok, refused) = burst(&a, &b, &key, &chat("burst", 2), 60).await;
    let refill = (start.elapsed().as_secs() / 2) as usize;
    assert!(
        (29..=29 + refill + 1).contains(&ok),
        "{ok} admitted of 60 (refill {refill})"
    );
    for r in &refused {
        assert_eq!(r.status, 429, "{}", r.body);
        assert_error(&r.body, "rate_limit_exceeded");
    }

    // Tokens per minute, through a key of its own (of a tenant with no limits of its
    // own): 10 reservations of ~104 fit in 1050.
    a.tenant(json!({"id": "bulk"})).await;
    let (_, tkey) = a
        .key(json!({"tenant": "bulk", "limits": {"tpm": 1050}}))
        .await;
    let start = std::time::Instant::now();
    let (ok, refused) = burst(&a, &b, &tkey, &chat("tokens", 100), 30).await;
    let refill = (start.elapsed().as_secs_f64() * 1050.0 / 60.0 / 100.0).ceil() as usize;
    assert!(
        (10..=10 + refill + 1).contains(&ok),
        "{ok} admitted of 30 (refill {refill})"
    );
    for r in &refused {
        assert_error(&r.body, "rate_limit_exceeded");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("token")
        );
    }

    // Reconciled across replicas: a stream through `a` reserves ~1000 of 1200 and
    // uses ~20; `b` admits another such request only once `a` has given the rest back.
    let (_, rkey) = a
        .key(json!({"tenant": "bulk", "limits": {"tpm": 1200}}))
        .await;
    set_faults_everywhere(&a.sims, &stalled());
    let held = a.open_stream(&rkey, &short_answer(1000, true)).await;
    let r = b.chat(Some(&rkey), &short_answer(1000, false)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    set_faults_everywhere(&a.sims, &switchyard_sim::Faults::default());
    assert!(held.text().await.unwrap().contains("\"usage\""));
    eventually("b sees the tokens given back", || async {
        b.chat(Some(&rkey), &short_answer(1000, false)).await.status == 200
    })
    .await;

    // Revoked through `a`, refused by `b`, which had the key cached.
    let revoked_at = std::time::Instant::now();
    let r = a
        .admin(Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually("b refuses the revoked key", || async {
        b.chat(Some(&key), &chat("hi", 2)).await.status == 401
    })
    .await;
    eprintln!(
        "revocation seen by the other replica after {:?}",
        revoked_at.elapsed()
    );
    a.gw.shutdown();
    b.gw.shutdown();
}

/// With Redis gone, `--rate-limit-on-store-error open` falls back to this replica's
/// share of each limit and `closed` refuses with 503; either way it is counted.
#[tokio::test]
async fn redis_going_away_falls_back_or_refuses_as_configured() {
    use switchyard::tenancy::limiter::OnStoreError;
    for mode in [OnStoreError::Open, OnStoreError::Closed] {
        let mut redis = OwnRedis::start(free_port());
        redis.ready().await;
        let url = redis.url();
        let g = Gw::start(|c| {
            c.redis_url = Some(url);
            c.rate_limit_on_store_error = mode;
            c.rate_limit_replicas = 2;
        })
        .await;
        g.tenant(json!({"id": "t", "limits": {"rpm": 10}})).await;
        let (_, key) = g.key(json!({"tenant": "t"})).await;
        let a = g.chat(Some(&key), &chat("hi", 2)).await;
        assert_eq!(a.status, 200, "{mode:?}: {}", a.body);
        assert_eq!(a.header("x-ratelimit-remaining-requests"), Some("9"));
        redis.stop();
        match mode {
            OnStoreError::Open => {
                // This replica's share: 10 / 2 = 5 a minute.
                let start = std::time::Instant::now();
                let mut ok = 0;
                for _ in 0..8 {
                    let a = g.chat(Some(&key), &chat("hi", 2)).await;
                    if a.status == 200 {
                        ok += 1;
                    } else {
                        assert_error(&a.body, "rate_limit_exceeded");
                    }
                }
                let refill = (start.elapsed().as_secs() / 12) as usize;
                assert!((5..=5 + refill).contains(&ok), "{ok} (refill {refill})");
            }
            OnStoreError::Closed => {
                let a = g.chat(Some(&key), &chat("hi", 2)).await;
                assert_eq!(a.status, 503, "{}", a.body);
                assert_error(&a.body, "rate_limit_unavailable");
                assert!(!a.body.to_string().contains("127.0.0.1"), "{}", a.body);
            }
        }
        let errors = Http::new()
            .metric(&g.metrics, "switchyard_rate_limit_store_errors_total", &[])
            .await;
        assert!(errors >= 1.0, "{mode:?}: {errors}");
        g.gw.shutdown();
    }
}

/// A browser's preflight is answered before authentication (it carries no key), and
/// credentials are not allowed.
#[tokio::test]
async fn cors_preflight_needs_no_key_and_allows_no_credentials() {
    let g = Gw::start(|c| {
        c.api_key = Some("a-static-key-of-enough-length".into());
        c.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        g.http
            .request(Method::OPTIONS, format!("{}/v1/chat/completions", g.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let r = preflight("https://app.example").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    // Named, not `*`: a browser never lets `*` cover Authorization.
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    // The request itself, with its key: the limit headers are readable by the page.
    let r = g
        .http
        .post(format!("{}/v1/chat/completions", g.url))
        .header("origin", "https://app.example")
        .bearer_auth("a-static-key-of-enough-length")
        .json(&chat("hi", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("x-ratelimit-remaining-requests"),
        "{exposed}"
    );
    let r = preflight("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    g.gw.shutdown();
}

/// The gateway binary at debug level, every secret in play (a static key, the admin
/// key, an issued key, a wrong key): none of them appears in its logs, its metrics or
/// an error body.
#[cfg(unix)]
#[tokio::test]
async fn no_secret_reaches_the_logs_metrics_or_error_bodies() {
    let engines = sims(1).await;
    let dir = std::env::temp_dir().join(format!("switchyard-secrets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (port, admin_port, metrics_port) = (free_port(), free_port(), free_port());
    let static_key = "static-secret-0123456789abcdef";
    let admin_key = "admin-secret-0123456789abcdef";
    let wrong_key = "sk-sy-0123456789abcdef-".to_string() + &"f".repeat(64);
    let log = dir.join("log");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--log-level", "debug"])
            .args([
                "--database-url",
                &format!("sqlite://{}", dir.join("state.db").display()),
            ])
            .args(["--worker-urls", &engines.urls().join(",")])
            .args(["--api-key", static_key, "--admin-api-key", admin_key])
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--prometheus-port", &metrics_port.to_string()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .expect("the binary starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let http = reqwest::Client::new();
    eventually("the gateway is ready", || async {
        matches!(http.get(format!("{url}/readiness")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let admin_call = |path: &str, body: Value| {
        http.post(format!("{admin}{path}"))
            .bearer_auth(admin_key)
            .json(&body)
            .send()
    };
    assert_eq!(
        admin_call("/admin/tenants", json!({"id": "t"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let issued: Value = admin_call("/admin/keys", json!({"tenant": "t"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issued_key = issued["key"].as_str().unwrap().to_string();
    let mut bodies = String::new();
    for key in [
        static_key,
        issued_key.as_str(),
        wrong_key.as_str(),
        admin_key,
    ] {
        let resp = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat("hi", 2))
            .send()
            .await
            .unwrap();
        bodies.push_str(&resp.text().await.unwrap());
    }
    // A wrong admin key, too.
    let resp = http
        .get(format!("{admin}/admin/keys"))
        .bearer_auth(static_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    bodies.push_str(&resp.text().await.unwrap());
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    child.kill();
    let logs =
        std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(dir.join("err")).unwrap();
    assert!(
        logs.contains("admin action"),
        "the audit line is logged: {logs}"
    );
    let secret_of_issued = &issued_key[issued_key.len() - 64..];
    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("error bodies", &bodies),
    ] {
        for secret in [static_key, admin_key, secret_of_issued, &wrong_key[23..]] {
            assert!(!text.contains(secret), "a secret in the {what}: {secret}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
