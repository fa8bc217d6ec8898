//! Kubernetes discovery against a fake API server that speaks real HTTP list and watch
//! of pods (JSON lists, newline-delimited watch events, resource versions, server-side
//! label selectors). Engines are simulators, each on its own loopback address and the
//! same port, as pods are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_sim::{Role, SimConfig, SimHandle};
use switchyard_testkit::*;
use tokio::sync::broadcast;

const NS: &str = "llm";

/// The fake API server's pods, resource version and event history.
#[derive(Default)]
struct Store {
    rv: u64,
    pods: BTreeMap<String, Value>,
    history: Vec<(u64, &'static str, Value)>,
    /// `labelSelector` of every list and watch request, in order.
    selectors: Vec<String>,
    lists: usize,
}

struct FakeKube {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, &'static str, Value)>,
}

impl FakeKube {
    /// Creates or replaces a pod; `notify: false` changes it without a watch event (a
    /// missed event, for the relist to repair).
    fn put(&self, pod: Value, notify: bool) {
        let mut s = self.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let mut pod = pod;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if s.pods.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.pods.insert(name, pod.clone());
        if notify {
            s.history.push((rv, kind, pod.clone()));
            let _ = self.events.send((rv, kind, pod));
        }
    }

    fn delete(&self, name: &str, notify: bool) {
        let mut s = self.store.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        if let Some(mut pod) = s.pods.remove(name) {
            pod["metadata"]["resourceVersion"] = json!(rv.to_string());
            if notify {
                s.history.push((rv, "DELETED", pod.clone()));
                let _ = self.events.send((rv, "DELETED", pod));
            }
        }
    }

    fn lists(&self) -> usize {
        self.store.lock().unwrap().lists
    }

    fn selectors(&self) -> Vec<String> {
        self.store.lock().unwrap().selectors.clone()
    }
}

/// Whether `pod` is in namespace `ns` (if given) and has every `k=v` of the selector.
fn matches(pod: &Value, ns: Option<&str>, selector: &str) -> bool {
    if ns.is_some_and(|ns| pod["metadata"]["namespace"] != ns) {
        return false;
    }
    selector.split(',').filter(|p| !p.is_empty()).all(|p| {
        let (k, v) = p.split_once('=').expect("equality selector");
        pod["metadata"]["labels"][k] == v
    })
}

async fn pods(
    State(kube): State<Arc<FakeKube>>,
    ns: Option<Path<String>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ns = ns.map(|Path(ns)| ns);
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let mut store = kube.store.lock().unwrap();
    store.selectors.push(selector.clone());
    if q.get("watch").map(String::as_str) != Some("true") {
        store.lists += 1;
        let items: Vec<Value> = store
            .pods
            .values()
            .filter(|p| matches(p, ns.as_deref(), &selector))
            .cloned()
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "PodList",
                          "metadata": {"resourceVersion": store.rv.to_string()}, "items": items});
        return axum::Json(list).into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let backlog: Vec<(u64, &'static str, Value)> = store
        .history
        .iter()
        .filter(|(rv, _, _)| *rv > from)
        .cloned()
        .collect();
    let live = kube.events.subscribe();
    drop(store);
    let timeout: u64 = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let wanted =
        move |(_, _, pod): &(u64, &'static str, Value)| matches(pod, ns.as_deref(), &selector);
    let line = |(_, kind, pod): (u64, &'static str, Value)| {
        Ok::<_, std::io::Error>(format!("{}\n", json!({"type": kind, "object": pod})))
    };
    let backlog = futures_util::stream::iter(backlog.into_iter().filter(wanted.clone()).map(line));
    let live = futures_util::stream::unfold(live, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    let live = live
        .filter(move |e| std::future::ready(wanted(e)))
        .map(line)
        .take_until(tokio::time::sleep(std::time::Duration::from_secs(timeout)));
    let body = axum::body::Body::from_stream(backlog.chain(live));
    ([("content-type", "application/json")], body).into_response()
}

/// Starts the fake API server; returns it and its URL.
async fn fake_kube() -> (Arc<FakeKube>, String) {
    let kube = Arc::new(FakeKube {
        store: Mutex::new(Store::default()),
        events: broadcast::channel(1024).0,
    });
    let app = axum::Router::new()
        .route("/api/v1/namespaces/{ns}/pods", get(pods))
        .route(
            "/api/v1/pods",
            get(|st, q| async move { pods(st, None, q).await }),
        )
        .with_state(kube.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (kube, url)
}

fn pod(name: &str, ip: &str, labels: Value, annotations: Value, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "engine", "image": "vllm/vllm-openai"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// A free port, then one simulated engine per loopback address on that port.
async fn engines_on(engines: &[(&str, Role)]) -> (u16, Vec<SimHandle>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sims = Vec::new();
    for (ip, role) in engines {
        sims.push(
            sims_with(SimConfig {
                host: ip.to_string(),
                port,
                role: *role,
                time_scale: 100.0,
                ..SimConfig::default()
            })
            .await,
        );
    }
    (port, sims)
}

fn discovery_config(api: &str, port: u16) -> switchyard::Config {
    let mut cfg = config(vec![], PolicyKind::RoundRobin);
    cfg.service_discovery = true;
    cfg.selector = vec!["app=engine".into()];
    cfg.service_discovery_namespace = Some(NS.into());
    cfg.service_discovery_port = port;
    cfg.kube_api_url = Some(api.into());
    cfg
}

/// The URLs of the gateway's workers (not draining), sorted.
async fn worker_urls(http: &Http, gw: &switchyard::Gateway) -> Vec<String> {
    let v: Value = admin_workers(http, gw).await;
    let mut urls: Vec<String> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["draining"] == false)
        .map(|w| w["url"].as_str().unwrap().to_string())
        .collect();
    urls.sort();
    urls
}

async fn workers_become(http: &Http, gw: &switchyard::Gateway, want: &[String]) {
    eventually(&format!("workers {want:?}"), || async {
        worker_urls(http, gw).await == want
    })
    .await;
}

#[tokio::test]
async fn pods_join_when_ready_and_leave_when_not_ready_or_deleted() {
    let http = Http::new();
    let (port, sims) = engines_on(&[
        ("127.0.0.2", Role::Both),
        ("127.0.0.3", Role::Both),
        ("127.0.0.4", Role::Both),
    ])
    .await;
    let url = |i: usize| format!("http://127.0.0.{}:{port}", i + 2);
    let (kube, api) = fake_kube().await;
    let engine = json!({"app": "engine"});
    kube.put(
        pod(
            "a",
            "127.0.0.2",
            engine.clone(),
            json!({"switchyard.ai/weight": "2"}),
            true,
        ),
        true,
    );
    kube.put(
        pod("b", "127.0.0.3", engine.clone(), json!({}), false),
        true,
    );
    // Another app's pod: the selector keeps it out.
    kube.put(
        pod("c", "127.0.0.4", json!({"app": "other"}), json!({}), true),
        true,
    );
    let gw = gateway(discovery_config(&api, port)).await;
    workers_become(&http, &gw, &[url(0)]).await;
    assert!(
        kube.selectors().iter().all(|s| s == "app=engine"),
        "the selector is sent to the API server: {:?}",
        kube.selectors()
    );
    let v: Value = admin_workers(&http, &gw).await;
    assert_eq!(
        v["workers"][0]["weight"], 2,
        "weight from the pod's annotation"
    );
    assert_eq!(v["workers"][0]["models"], json!([MODEL]));
    assert_eq!(v["workers"][0]["labels"]["app"], "engine");
    let body = json!({"model": MODEL, "prompt": "hello", "max_tokens": 2});
    assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    assert_eq!(sims[0].servers()[0].requests(), 1);

    // b turns Ready: it joins and takes traffic.
    kube.put(pod("b", "127.0.0.3", engine.clone(), json!({}), true), true);
    workers_become(&http, &gw, &[url(0), url(1)]).await;
    for _ in 0..4 {
        assert_eq!(http.post(&gw.url(), "/v1/completions", &body).await.0, 200);
    }
    assert!(sims[1].servers()[0].requests() > 0);

    // b turns NotReady: drained and removed.
    kube.put(
        pod("b", "127.0.0.3", engine.clone(), json!({}), false),
        true,
    );
    workers_become(&http, &gw, &[url(0)]).await;
    // a starts terminating (deletion timestamp), then is deleted.
    let mut terminating = pod("a", "127.0.0.2", engine.clone(), json!({}), true);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-11-24T00:00:00Z");
    kube.put(terminating, true);
    workers_become(&http, &gw, &[]).await;
    kube.delete("a", true);
    eventually("no workers left at all", || async {
        let v: Value = admin_workers(&http, &gw).await;
        v["workers"].as_array().unwrap().is_empty()
    })
    .await;
    let (status, resp) = http.post(&gw.url(), "/v1/completions", &body).await;
    assert_eq!(status, 503, "{resp}");
    assert_error(&resp, "no_healthy_worker");
}

#[tokio::test]
async fn a_relist_repairs_missed_events() {
    let http = Http::new();
    let (port, _sims) = engines_on(&[("127.0.0.5", Role::Both), ("127.0.0.6", Role::Both)]).await;
    let (kube, api) = fake_kube().await;
    let engine = json!({"app": "engine"});
    kube.put(pod("a", "127.0.0.5", engine.clone(), json!({}), true), true);
    let mut cfg = discovery_config(&api, port);
    cfg.service_discovery_relist_secs = 1;
    let gw = gateway(cfg).await;
    workers_become(&http, &gw, &[format!("http://127.0.0.5:{port}")]).await;
    // Changes the watch never reports: a is deleted and b appears.
    kube.delete("a", false);
    kube.put(pod("b", "127.0.0.6", engine, json!({}), true), false);
    let lists = kube.lists();
    workers_become(&http, &gw, &[format!("http://127.0.0.6:{port}")]).await;
    assert!(kube.lists() > lists, "repaired by a new list");
    // A worker removed through the worker API while its pod stays Ready comes back at
    // the next relist: the pods are the source of truth.
    let admin = format!("http://{}", gw.admin_addr);
    let v: Value = admin_workers(&http, &gw).await;
    let id = v["workers"][0]["id"].as_str().unwrap().to_string();
    let r = http
        .0
        .delete(format!("{admin}/workers/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the deleted worker is gone and back", || async {
        let v: Value = admin_workers(&http, &gw).await;
        v["workers"].as_array().unwrap().len() == 1 && v["workers"][0]["draining"] == false
    })
    .await;
}

#[tokio::test]
async fn prefill_and_decode_pods_come_from_their_selectors() {
    let http = Http::new();
    let (port, sims) =
        engines_on(&[("127.0.0.7", Role::Prefill), ("127.0.0.8", Role::Decode)]).await;
    let (kube, api) = fake_kube().await;
    let mut cfg = discovery_config(&api, port);
    cfg.selector = vec![];
    cfg.pd_disaggregation = true;
    cfg.prefill_selector = vec!["role=prefill".into()];
    cfg.decode_selector = vec!["role=decode".into()];
    let gw = gateway(cfg).await;
    kube.put(
        pod(
            "p",
            "127.0.0.7",
            json!({"role": "prefill"}),
            json!({"sglang.ai/bootstrap-port": "8998", "switchyard.ai/model": MODEL}),
            true,
        ),
        true,
    );
    kube.put(
        pod("d", "127.0.0.8", json!({"role": "decode"}), json!({}), true),
        true,
    );
    // A pod matching neither selector stays out.
    kube.put(
        pod("x", "127.0.0.9", json!({"role": "other"}), json!({}), true),
        true,
    );
    workers_become(
        &http,
        &gw,
        &[
            format!("http://127.0.0.7:{port}"),
            format!("http://127.0.0.8:{port}"),
        ],
    )
    .await;
    let v: Value = admin_workers(&http, &gw).await;
    let by_url = |u: &str| {
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["url"].as_str().unwrap().contains(u))
            .unwrap()
            .clone()
    };
    let (p, d) = (by_url("127.0.0.7"), by_url("127.0.0.8"));
    assert_eq!(
        (p["role"].as_str(), d["role"].as_str()),
        (Some("prefill"), Some("decode"))
    );
    assert_eq!(p["bootstrap_port"], 8998, "from the pod's annotation");
    assert_eq!(p["models"], json!([MODEL]), "from the pod's annotation");
    let body = json!({"model": MODEL, "prompt": "hello", "max_tokens": 3});
    let (status, resp) = http.post(&gw.url(), "/v1/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["usage"]["completion_tokens"], 3);
    assert_eq!(
        sims[0].servers()[0].requests(),
        1,
        "prefilled on the prefill pod"
    );
    assert_eq!(
        sims[1].servers()[0].requests(),
        1,
        "decoded on the decode pod"
    );
    let mut sel = kube.selectors();
    sel.sort();
    sel.dedup();
    assert_eq!(
        sel,
        vec!["role=decode".to_string(), "role=prefill".to_string()]
    );
}

#[tokio::test]
async fn an_unresponsive_pod_does_not_hold_up_the_others() {
    let http = Http::new();
    let (port, sims) = engines_on(&[("127.0.0.11", Role::Both)]).await;
    // A Ready pod whose engine accepts connections and never answers: its probe waits
    // out the whole health-check timeout.
    let silent = tokio::net::TcpListener::bind(("127.0.0.10", port))
        .await
        .unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    let (kube, api) = fake_kube().await;
    let engine = json!({"app": "engine"});
    kube.put(
        pod("silent", "127.0.0.10", engine.clone(), json!({}), true),
        true,
    );
    let mut cfg = discovery_config(&api, port);
    cfg.health_check_timeout_secs = 120;
    let gw = gateway(cfg).await;
    eventually("the silent pod is being probed", || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    // While that probe hangs, another pod turns Ready and joins at once.
    kube.put(pod("ok", "127.0.0.11", engine, json!({}), true), true);
    workers_become(&http, &gw, &[format!("http://127.0.0.11:{port}")]).await;
    let body = json!({"model": MODEL, "prompt": "hello", "max_tokens": 2});
    let (status, resp) = http.post(&gw.url(), "/v1/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(sims[0].servers()[0].requests(), 1);
    // The silent pod going away is handled without waiting for its probe either.
    kube.delete("silent", true);
    kube.delete("ok", true);
    workers_become(&http, &gw, &[]).await;
}

#[tokio::test]
async fn a_pod_ready_again_while_its_worker_drains_comes_back_once_drained() {
    let http = Http::new();
    let (port, sims) = engines_on(&[("127.0.0.12", Role::Both)]).await;
    let url = format!("http://127.0.0.12:{port}");
    let (kube, api) = fake_kube().await;
    let engine = json!({"app": "engine"});
    kube.put(
        pod("a", "127.0.0.12", engine.clone(), json!({}), true),
        true,
    );
    // The default relist (60 s) is far off: only the pod's own events can bring it back.
    let gw = gateway(discovery_config(&api, port)).await;
    workers_become(&http, &gw, std::slice::from_ref(&url)).await;
    // A request the engine never answers keeps the worker busy.
    let server = sims[0].servers()[0].clone();
    server
        .set_faults(switchyard_sim::Faults {
            hang_rate: 1.0,
            ..Default::default()
        })
        .unwrap();
    let body = json!({"model": MODEL, "prompt": "hello", "max_tokens": 2});
    let (gw_url, http2) = (gw.url(), http.clone());
    let hanging = tokio::spawn(async move { http2.post(&gw_url, "/v1/completions", &body).await });
    eventually("the request is in flight", || async {
        admin_workers(&http, &gw).await["workers"][0]["in_flight"] == 1
    })
    .await;
    // NotReady: the worker drains but stays while its request is open; Ready again.
    kube.put(
        pod("a", "127.0.0.12", engine.clone(), json!({}), false),
        true,
    );
    eventually("the worker drains", || async {
        admin_workers(&http, &gw).await["workers"][0]["draining"] == true
    })
    .await;
    kube.put(pod("a", "127.0.0.12", engine, json!({}), true), true);
    // The request ends (the client goes away); the drained worker is removed and the
    // pod registered again.
    server
        .set_faults(switchyard_sim::Faults::default())
        .unwrap();
    hanging.abort();
    eventually("the pod's worker is back, not draining", || async {
        let v: Value = admin_workers(&http, &gw).await;
        v["workers"].as_array().unwrap().len() == 1
            && v["workers"][0]["draining"] == false
            && v["workers"][0]["in_flight"] == 0
    })
    .await;
    let body = json!({"model": MODEL, "prompt": "hello", "max_tokens": 2});
    let (status, resp) = http.post(&gw.url(), "/v1/completions", &body).await;
    assert_eq!(status, 200, "{resp}");
}
