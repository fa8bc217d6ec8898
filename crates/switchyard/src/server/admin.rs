//! The worker API, on its own listener (`--admin-host`, `--admin-port`), never on the
//! data plane: register workers (probed before they take traffic, as a job), list,
//! inspect, relabel and drain them, read loads, and flush every engine's prefix cache.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::dispatch::client;
use crate::error::ApiError;
use crate::fleet::{BreakerConfig, Worker, WorkerRole, parse_worker_url};

/// State of a registration job.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Job {
    pub id: String,
    pub url: String,
    /// `pending`, `succeeded` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    pub worker_ids: Vec<String>,
}

/// Registration jobs, the most recent 1000 kept.
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Job>>,
}

impl Jobs {
    fn create(&self, url: &str) -> Job {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Job {
            id: format!("job-{n}"),
            url: url.to_string(),
            state: "pending",
            error: None,
            worker_ids: Vec::new(),
        };
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.insert(n, job.clone());
        while jobs.len() > 1000 {
            jobs.pop_first();
        }
        job
    }

    fn finish(&self, id: &str, result: Result<Vec<String>, String>) {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if let Some(job) = jobs.values_mut().find(|j| j.id == id) {
            match result {
                Ok(ids) => {
                    job.state = "succeeded";
                    job.worker_ids = ids;
                }
                Err(e) => {
                    job.state = "failed";
                    job.error = Some(e);
                }
            }
        }
    }

    fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .values()
            .find(|j| j.id == id)
            .cloned()
    }
}

/// The admin router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/workers", post(add_worker).get(list_workers))
        .route(
            "/workers/{id}",
            get(get_worker).delete(delete_worker).patch(patch_worker),
        )
        .route("/jobs/{id}", get(get_job))
        .route("/get_loads", get(get_loads))
        .route("/flush_cache", post(flush_cache))
        .fallback(|req: Request| async move {
            ApiError::route_not_found(req.method().as_str(), req.uri().path()).into_response()
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Requires `Authorization: Bearer <--admin-api-key>` when one is set.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.admin_api_key {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|g| {
                super::middleware::constant_time_eq(g.trim().as_bytes(), key.as_bytes())
            });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        ApiError::bad_request(format!("Invalid request body: {}", e.inner()), param)
    })
}

fn worker_json(w: &Worker) -> Value {
    let (running, waiting) = w.engine_load();
    json!({
        "id": w.api_id,
        "url": w.id.url,
        "dp_rank": w.id.dp_rank,
        "role": w.id.role,
        "bootstrap_port": w.bootstrap_port,
        "models": w.models(),
        "labels": w.labels(),
        "weight": w.weight(),
        "priority": w.priority(),
        "healthy": w.is_healthy(),
        "draining": w.is_draining(),
        "circuit": w.breaker.state().as_str(),
        "in_flight": w.in_flight(),
        "engine_running": running,
        "engine_waiting": waiting,
    })
}

fn find(st: &AppState, id: &str) -> Result<Arc<Worker>, ApiError> {
    st.registry
        .all()
        .iter()
        .find(|w| w.api_id == id)
        .cloned()
        .ok_or_else(|| ApiError::not_found_named(format!("No worker with id `{id}`")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddWorker {
    url: String,
    model_id: Option<String>,
    dp_size: Option<usize>,
    labels: Option<BTreeMap<String, String>>,
    /// `regular` (default), `prefill` or `decode`.
    role: Option<String>,
    /// SGLang bootstrap port of a prefill worker.
    bootstrap_port: Option<u16>,
    /// Relative capacity, 1..=1000 (default 1).
    weight: Option<u32>,
    /// Higher is preferred; lower priorities are fallbacks (default 0).
    priority: Option<u32>,
}

/// Checks the `policy` / `policy.<setting>` labels a worker would bring.
fn check_policy_labels(
    st: &AppState,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), ApiError> {
    let Some(labels) = labels else { return Ok(()) };
    let bad = |e: String| ApiError::bad_request(format!("`labels`: {e}"), Some("labels"));
    if let Some(settings) = crate::config::ModelSettings::from_labels(labels).map_err(bad)? {
        settings
            .apply(&st.cfg)
            .validate_policy_settings()
            .map_err(bad)?;
    }
    Ok(())
}

fn check_weight(weight: Option<u32>) -> Result<(), ApiError> {
    match weight {
        Some(w) if !(1..=1000).contains(&w) => Err(ApiError::bad_request(
            "`weight` must be between 1 and 1000",
            Some("weight"),
        )),
        _ => Ok(()),
    }
}

/// Whether `host` is allowed by `--worker-allowlist` entries (hosts or CIDRs).
pub fn allowed(host: &str, allowlist: &[String]) -> bool {
    if allowlist.is_empty() {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<IpAddr> = host.parse().ok();
    allowlist
        .iter()
        .any(|entry| match (entry.split_once('/'), ip) {
            (Some((net, len)), Some(ip)) => match (net.parse::<IpAddr>(), len.parse::<u32>()) {
                (Ok(IpAddr::V4(n)), Ok(l)) if l <= 32 => match ip {
                    IpAddr::V4(a) => l == 0 || (u32::from(a) ^ u32::from(n)) >> (32 - l) == 0,
                    IpAddr::V6(_) => false,
                },
                (Ok(IpAddr::V6(n)), Ok(l)) if l <= 128 => match ip {
                    IpAddr::V6(a) => l == 0 || (u128::from(a) ^ u128::from(n)) >> (128 - l) == 0,
                    IpAddr::V4(_) => false,
                },
                _ => false,
            },
            _ => entry.eq_ignore_ascii_case(host),
        })
}

/// `POST /workers`: validates, then probes the worker in a job before it takes traffic.
async fn add_worker(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: AddWorker = json_body(&body)?;
    let (scheme, authority, base) = parse_worker_url(&req.url)
        .map_err(|e| ApiError::bad_request(format!("`url` {:?}: {e}", req.url), Some("url")))?;
    if !allowed(authority.host(), &st.cfg.worker_allowlist) {
        return Err(ApiError::forbidden(format!(
            "host `{}` is not in --worker-allowlist",
            authority.host()
        )));
    }
    if req.dp_size.is_some_and(|n| !(1..=1024).contains(&n)) {
        return Err(ApiError::bad_request(
            "`dp_size` must be between 1 and 1024",
            Some("dp_size"),
        ));
    }
    check_weight(req.weight)?;
    check_policy_labels(&st, req.labels.as_ref())?;
    if req.model_id.as_deref() == Some("") {
        return Err(ApiError::bad_request(
            "`model_id` must not be empty",
            Some("model_id"),
        ));
    }
    let role = match req.role.as_deref() {
        None | Some("regular") => WorkerRole::Regular,
        Some("prefill") => WorkerRole::Prefill,
        Some("decode") => WorkerRole::Decode,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("`role` must be regular, prefill or decode, not {other:?}"),
                Some("role"),
            ));
        }
    };
    if req.bootstrap_port.is_some() && role != WorkerRole::Prefill {
        return Err(ApiError::bad_request(
            "`bootstrap_port` applies to prefill workers only",
            Some("bootstrap_port"),
        ));
    }
    let pd = st.dispatcher.pd.is_some();
    if pd == (role == WorkerRole::Regular) {
        let why = if pd {
            "this gateway runs prefill/decode disaggregation: `role` must be prefill or decode"
        } else {
            "`role` prefill/decode needs a gateway started with --pd-disaggregation"
        };
        return Err(ApiError::bad_request(why, Some("role")));
    }
    let url = format!("{scheme}://{authority}{base}");
    if st.registry.all().iter().any(|w| w.id.url == url) {
        return Err(ApiError::conflict(format!(
            "worker {url} is already registered"
        )));
    }
    let job = st.jobs.create(&url);
    let id = job.id.clone();
    let st2 = st.clone();
    tokio::spawn(async move {
        let spec = Registration {
            role,
            bootstrap_port: req.bootstrap_port,
            model_id: req.model_id,
            dp_size: req.dp_size,
            labels: req.labels.unwrap_or_default(),
            weight: req.weight.unwrap_or(1),
            priority: req.priority.unwrap_or(0),
        };
        let result = register(&st2, &url, spec).await;
        match &result {
            Ok(ids) => tracing::info!(%url, workers = ?ids, "worker registered"),
            Err(e) => tracing::warn!(%url, error = %e, "worker registration failed"),
        }
        st2.jobs.finish(&id, result);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"job_id": job.id, "state": job.state, "url": job.url})),
    )
        .into_response())
}

/// What a registration asks for, validated.
pub(crate) struct Registration {
    pub role: WorkerRole,
    pub bootstrap_port: Option<u16>,
    /// The model; none: read from the engine's `/v1/models`.
    pub model_id: Option<String>,
    /// Data-parallel ranks; none: counted from the engine's `/metrics`.
    pub dp_size: Option<usize>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub priority: u32,
}

/// Probes the engine at `url` (health, models, data-parallel size) and adds one worker
/// per rank. Shared by the worker API and Kubernetes discovery.
pub(crate) async fn register(
    st: &AppState,
    url: &str,
    spec: Registration,
) -> Result<Vec<String>, String> {
    let Registration {
        role,
        bootstrap_port,
        model_id,
        dp_size,
        labels,
        weight,
        priority,
    } = spec;
    let c = &st.prober.cfg;
    let breaker = BreakerConfig {
        enabled: !st.cfg.disable_circuit_breaker,
        failure_threshold: st.cfg.cb_failure_threshold,
        success_threshold: st.cfg.cb_success_threshold,
        timeout: Duration::from_secs(st.cfg.cb_timeout_duration_secs),
        window: Duration::from_secs(st.cfg.cb_window_duration_secs),
    };
    let probe = Worker::new(url, None, role, breaker.clone()).map(Arc::new)?;
    match client::get(&st.prober.client, probe.uri(&c.endpoint), c.timeout).await {
        Ok((s, _)) if s.is_success() => {}
        Ok((s, _)) => return Err(format!("health check {} answered {s}", c.endpoint)),
        Err(e) => return Err(format!("unreachable: {e}")),
    }
    st.prober.discover_models(&probe).await;
    let models = probe.models();
    let dp_size = match dp_size {
        Some(n) => n,
        None => st.prober.discover_dp_size(&probe).await,
    };
    let ranks: Vec<Option<u32>> = if dp_size == 1 {
        vec![None]
    } else {
        (0..dp_size as u32).map(Some).collect()
    };
    let workers: Vec<Arc<Worker>> = ranks
        .iter()
        .map(|r| {
            Worker::new(url, *r, role, breaker.clone())
                .map(|w| Arc::new(w.with_bootstrap_port(bootstrap_port)))
        })
        .collect::<Result<_, _>>()?;
    let models = match model_id {
        Some(m) if models.is_empty() => vec![m],
        Some(m) if models.contains(&m) => models,
        Some(m) => return Err(format!("the worker serves {models:?}, not `{m}`")),
        None => models,
    };
    st.pool_for(role).adopt_labels(&models, &labels)?;
    let mut ids = Vec::new();
    for w in &workers {
        w.set_models(models.clone());
        w.set_labels(labels.clone());
        w.set_weight(weight);
        w.set_priority(priority);
        w.set_healthy(true);
        if !st.registry.add(w.clone()) {
            return Err(format!("worker {} is already registered", w.label));
        }
        st.metrics.set_worker_health(&w.label, true);
        ids.push(w.api_id.clone());
    }
    Ok(ids)
}

async fn get_job(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    st.jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found_named(format!("No job with id `{id}`")))
}

async fn list_workers(State(st): State<Arc<AppState>>) -> Json<Value> {
    let workers: Vec<Value> = st.registry.all().iter().map(|w| worker_json(w)).collect();
    Json(json!({"workers": workers}))
}

async fn get_worker(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let w = find(&st, &id)?;
    Ok(Json(worker_json(&w)))
}

/// `DELETE /workers/{id}`: no new requests; removed once its in-flight requests end,
/// or after `--drain-timeout-secs` at most.
async fn delete_worker(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    drain(&st, find(&st, &id)?);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": "draining"})),
    )
        .into_response())
}

/// Stops routing to `w` at once and removes it once its in-flight requests end, or after
/// `--drain-timeout-secs` at most. Shared by the worker API and Kubernetes discovery.
pub(crate) fn drain(st: &Arc<AppState>, w: Arc<Worker>) {
    if !w.start_draining() {
        return;
    }
    let st = st.clone();
    let deadline = Instant::now() + Duration::from_secs(st.cfg.drain_timeout_secs);
    tokio::spawn(async move {
        while w.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        st.registry.remove(&w.id);
        for pool in st.policy_pools() {
            pool.on_worker_removed(&w.id);
        }
        tracing::info!(worker = %w.label, in_flight_left = w.in_flight(), "worker removed");
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchWorker {
    labels: Option<BTreeMap<String, String>>,
    weight: Option<u32>,
    priority: Option<u32>,
}

/// `PATCH /workers/{id}`: replaces the given ones of labels, weight and priority.
async fn patch_worker(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let w = find(&st, &id)?;
    let patch: PatchWorker = json_body(&body)?;
    if patch.labels.is_none() && patch.weight.is_none() && patch.priority.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give `labels`, `weight` or `priority`",
            None,
        ));
    }
    check_weight(patch.weight)?;
    check_policy_labels(&st, patch.labels.as_ref())?;
    if let Some(labels) = patch.labels {
        st.pool_for(w.id.role)
            .adopt_labels(&w.models(), &labels)
            .map_err(|e| ApiError::bad_request(format!("`labels`: {e}"), Some("labels")))?;
        w.set_labels(labels);
    }
    if let Some(weight) = patch.weight {
        w.set_weight(weight);
    }
    if let Some(priority) = patch.priority {
        w.set_priority(priority);
    }
    Ok(Json(worker_json(&w)))
}

/// `GET /get_loads`: each worker's queue as the gateway and the engine see it.
async fn get_loads(State(st): State<Arc<AppState>>) -> Json<Value> {
    let loads: Vec<Value> = st
        .registry
        .all()
        .iter()
        .map(|w| {
            let (running, waiting) = w.engine_load();
            json!({"id": w.api_id, "url": w.id.url, "dp_rank": w.id.dp_rank, "in_flight": w.in_flight(),
                   "engine_running": running, "engine_waiting": waiting})
        })
        .collect();
    Json(json!({"workers": loads}))
}

/// `POST /flush_cache`: `POST /reset_prefix_cache` on every engine, reported per engine.
async fn flush_cache(State(st): State<Arc<AppState>>) -> Response {
    let mut urls: Vec<(String, Arc<Worker>)> = Vec::new();
    for w in st.registry.all().iter() {
        if !urls.iter().any(|(u, _)| *u == w.id.url) {
            urls.push((w.id.url.clone(), w.clone()));
        }
    }
    let c = st.prober.client.clone();
    let timeout = st.prober.cfg.timeout;
    let results = futures_util::future::join_all(urls.iter().map(|(url, w)| {
        let c = c.clone();
        async move {
            match client::post_empty(&c, w.uri("/reset_prefix_cache"), timeout).await {
                Ok(s) if s.is_success() => json!({"url": url, "ok": true, "status": s.as_u16()}),
                Ok(s) => json!({"url": url, "ok": false, "status": s.as_u16()}),
                Err(e) => json!({"url": url, "ok": false, "error": e}),
            }
        }
    }))
    .await;
    let all_ok = results.iter().all(|r| r["ok"] == true);
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    (status, Json(json!({"all_ok": all_ok, "results": results}))).into_response()
}

/// Stable API ids of workers: `w` + 16 hex digits of the worker's label.
pub fn api_id(label: &str) -> String {
    format!("w{:016x}", crate::request::hash_block(0, label.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn allowlist_matches_hosts_and_cidrs() {
        let list = vec![
            "10.0.0.0/8".to_string(),
            "engine.local".to_string(),
            "fd00::/8".to_string(),
        ];
        assert!(allowed("10.1.2.3", &list));
        assert!(!allowed("11.0.0.1", &list));
        assert!(allowed("ENGINE.local", &list));
        assert!(!allowed("other.local", &list));
        assert!(allowed("[fd12::1]", &list));
        assert!(!allowed("fe80::1", &list));
        assert!(allowed("anything", &[]));
        assert!(allowed("127.0.0.1", &["127.0.0.1/32".to_string()]));
        assert!(!allowed("127.0.0.2", &["127.0.0.1/32".to_string()]));
    }
}
