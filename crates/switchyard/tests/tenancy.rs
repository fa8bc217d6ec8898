//! Tenancy over real HTTP (docs/tenancy.md is still to come; issue 16): keys issued,
//! used and revoked through the admin API; limits answered with 429 and the
//! `x-ratelimit-*` headers; models outside a tenant's list answered as unknown; stored
//! objects invisible to other tenants; failed authentications locked out per address;
//! usage and the audit log; the admin API's answers to bad input.

use reqwest::Method;
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_testkit::*;

/// A gateway (SQLite in memory, one simulated engine) and a client.
struct Gw {
    _sims: switchyard_sim::SimHandle,
    gw: switchyard::Gateway,
    url: String,
    admin: String,
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
        let sims = sims(1).await;
        let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
        adjust(&mut cfg);
        let gw = gateway(cfg).await;
        Gw {
            url: gw.url(),
            admin: format!("http://{}", gw.admin_addr),
            gw,
            _sims: sims,
            http: reqwest::Client::new(),
        }
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
    let g = Gw::start(|_| {}).await;
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
    let before: u64 = per_server(&g._sims).iter().sum();
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
    assert_eq!(
        per_server(&g._sims).iter().sum::<u64>(),
        before,
        "never reached an engine"
    );
    g.gw.shutdown();
}

#[tokio::test]
async fn stored_objects_belong_to_their_tenant() {
    let g = Gw::start(|_| {}).await;
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
    let paths = [
        format!("/v1/conversations/{}", conv.body["id"].as_str().unwrap()),
        format!("/v1/vector_stores/{}", store.body["id"].as_str().unwrap()),
        format!("/v1/responses/{}", resp.body["id"].as_str().unwrap()),
    ];
    for p in &paths {
        assert_eq!(g.api(Method::GET, p, &a, None).await.status, 200, "{p}");
        let other = g.api(Method::GET, p, &b, None).await;
        assert_eq!(other.status, 404, "{p}: {}", other.body);
        assert_eq!(g.api(Method::DELETE, p, &b, None).await.status, 404, "{p}");
    }
    let list = g.api(Method::GET, "/v1/vector_stores", &b, None).await;
    assert_eq!(list.body["data"], json!([]), "{}", list.body);
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
