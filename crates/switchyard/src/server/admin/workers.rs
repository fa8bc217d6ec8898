//! The worker API: register workers (probed in a job before they take traffic), list,
//! inspect, relabel and drain them, read loads, and flush every engine's prefix cache.
//! Handlers validate and answer; enrolment and draining are the fleet's.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::jobs::Job;
use crate::error::ApiError;
use crate::fleet::{EnrolError, Registration, Worker, WorkerRole};
use crate::upstream::EngineUrl;

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        ApiError::bad_request(format!("Invalid request body: {}", e.inner()), param)
    })
}

/// A worker on the admin API: its state, and its KV-event subscription if any.
fn worker_json(st: &AppState, w: &Arc<Worker>) -> Value {
    let mut v = super::super::health::describe(w, true);
    let info = st.workers.kv().info(&w.id);
    if w.kv_events.is_some() || info.is_some() {
        let ep = w.kv_events.as_ref();
        v["kv_events"] = json!({
            // None: the engine connects to the gateway's --kv-events-bind socket.
            "endpoint": ep.map(|e| &e.live),
            "replay_endpoint": ep.and_then(|e| e.replay.as_ref()),
            "stream": match info.map(|i| i.stream) {
                Some(crate::routing::kv::Stream::Live) => "live",
                _ => "down",
            },
            "blocks": info.map_or(0, |i| i.blocks),
            "next_seq": info.and_then(|i| i.next_seq),
        });
    }
    v
}

fn find(st: &AppState, id: &str) -> Result<Arc<Worker>, ApiError> {
    st.registry
        .all()
        .into_iter()
        .find(|w| &*w.api_id == id)
        .ok_or_else(|| ApiError::not_found_named(format!("No worker with id `{id}`")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddWorker {
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
    /// Where the engine publishes KV-cache events (`tcp://HOST:PORT`, HOST the URL's);
    /// default: the gateway's --kv-events-endpoint for this URL.
    kv_events_endpoint: Option<String>,
    /// The engine's KV-event replay endpoint, same form.
    kv_events_replay_endpoint: Option<String>,
}

/// A registration's KV-event endpoints: its own (on the engine's host only, so the
/// worker API cannot point the gateway at another machine), else the configured ones.
fn kv_endpoints(
    st: &AppState,
    url: &EngineUrl,
    req: &AddWorker,
) -> Result<Option<crate::config::kv::KvEndpoints>, ApiError> {
    let host = url.host();
    let check = |field: &str, ep: &str| -> Result<String, ApiError> {
        let ok = crate::config::kv::offset_endpoint(ep, 0).filter(|e| {
            e.strip_prefix("tcp://")
                .and_then(|r| r.rsplit_once(':'))
                .is_some_and(|(h, _)| h.trim_matches(['[', ']']) == host.trim_matches(['[', ']']))
        });
        ok.ok_or_else(|| {
            ApiError::bad_request(
                format!("`{field}` must be tcp://HOST:PORT on the worker's host ({host})"),
                Some(field),
            )
        })
    };
    let live = match &req.kv_events_endpoint {
        Some(ep) => check("kv_events_endpoint", ep)?,
        None => {
            if req.kv_events_replay_endpoint.is_some() {
                return Err(ApiError::bad_request(
                    "`kv_events_replay_endpoint` needs `kv_events_endpoint`",
                    Some("kv_events_replay_endpoint"),
                ));
            }
            return Ok(st.cfg.kv_endpoints(&url.as_string(), None));
        }
    };
    let replay = req
        .kv_events_replay_endpoint
        .as_deref()
        .map(|ep| check("kv_events_replay_endpoint", ep))
        .transpose()?;
    Ok(Some(crate::config::kv::KvEndpoints { live, replay }))
}

fn check_labels(st: &AppState, labels: Option<&BTreeMap<String, String>>) -> Result<(), ApiError> {
    match labels.map(|l| st.enroller.check_labels(l)) {
        Some(Err(e)) => Err(ApiError::bad_request(
            format!("`labels`: {e}"),
            Some("labels"),
        )),
        _ => Ok(()),
    }
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

/// `POST /workers`: validates, then probes the worker in a job before it takes traffic.
pub async fn add(State(st): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: AddWorker = json_body(&body)?;
    let url = EngineUrl::parse(&req.url)
        .map_err(|e| ApiError::bad_request(format!("`url` {:?}: {e}", req.url), Some("url")))?;
    if req.dp_size.is_some_and(|n| !(1..=1024).contains(&n)) {
        return Err(ApiError::bad_request(
            "`dp_size` must be between 1 and 1024",
            Some("dp_size"),
        ));
    }
    check_weight(req.weight)?;
    check_labels(&st, req.labels.as_ref())?;
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
    let pd = st.disaggregated();
    if pd == (role == WorkerRole::Regular) {
        let why = if pd {
            "this gateway runs prefill/decode disaggregation: `role` must be prefill or decode"
        } else {
            "`role` prefill/decode needs a gateway started with --pd-disaggregation"
        };
        return Err(ApiError::bad_request(why, Some("role")));
    }
    let kv_events = kv_endpoints(&st, &url, &req)?;
    let pin = match st.enroller.guard.check(&url).await {
        Ok(pin) => pin,
        Err(EnrolError::Forbidden(why)) => return Err(ApiError::forbidden(why)),
        Err(e) => {
            return Err(ApiError::bad_request(format!("`url`: {e}"), Some("url")));
        }
    };
    let canonical = url.as_string();
    if st.registry.all().iter().any(|w| w.id.url == canonical) {
        return Err(ApiError::conflict(format!(
            "worker {canonical} is already registered"
        )));
    }
    let job = st.jobs.create(&canonical);
    let spec = Registration {
        role,
        bootstrap_port: req.bootstrap_port,
        model_id: req.model_id,
        dp_size: req.dp_size,
        labels: req.labels.unwrap_or_default(),
        weight: req.weight.unwrap_or(1),
        priority: req.priority.unwrap_or(0),
        kv_events,
    };
    let (st2, id) = (st.clone(), job.id.clone());
    st.shutdown.spawn(async move {
        let result = tokio::select! {
            r = st2.enroller.register(&url, pin, spec) => r,
            _ = st2.shutdown.cancelled() => return,
        };
        let result = match result {
            Ok(workers) => {
                let ids: Vec<String> = workers.iter().map(|w| w.api_id.to_string()).collect();
                tracing::info!(url = %canonical, workers = ?ids, "worker registered");
                Ok(ids)
            }
            Err(e) => {
                tracing::warn!(url = %canonical, error = %e, "worker registration failed");
                Err(e.to_string())
            }
        };
        st2.jobs.finish(&id, result);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"job_id": job.id, "state": job.state, "url": job.url})),
    )
        .into_response())
}

/// `GET /jobs/{id}`.
pub async fn job(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    st.jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found_named(format!("No job with id `{id}`")))
}

/// `GET /workers`.
pub async fn list(State(st): State<Arc<AppState>>) -> Json<Value> {
    let workers: Vec<Value> = st
        .registry
        .all()
        .iter()
        .map(|w| worker_json(&st, w))
        .collect();
    Json(json!({"workers": workers}))
}

/// `GET /workers/{id}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(worker_json(&st, &find(&st, &id)?)))
}

/// `DELETE /workers/{id}`: no new requests; removed once its in-flight requests end,
/// or after `--drain-timeout-secs` at most.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.enroller.drain(find(&st, &id)?);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": "draining"})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchWorker {
    labels: Option<BTreeMap<String, String>>,
    weight: Option<u32>,
    priority: Option<u32>,
}

/// `PATCH /workers/{id}`: replaces the given ones of labels, weight and priority.
pub async fn patch(
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
    check_labels(&st, patch.labels.as_ref())?;
    if let Some(labels) = patch.labels {
        st.registry.relabel(&w, labels);
    }
    if let Some(weight) = patch.weight {
        w.set_weight(weight);
    }
    if let Some(priority) = patch.priority {
        w.set_priority(priority);
    }
    Ok(Json(worker_json(&st, &w)))
}

/// `GET /get_loads`: each worker's queue as the gateway and the engine see it.
pub async fn loads(State(st): State<Arc<AppState>>) -> Json<Value> {
    let loads: Vec<Value> = st
        .registry
        .all()
        .iter()
        .map(|w| {
            let (running, waiting) = w.engine_load();
            json!({"id": &*w.api_id, "url": w.id.url, "dp_rank": w.id.dp_rank, "in_flight": w.in_flight(),
                   "engine_running": running, "engine_waiting": waiting})
        })
        .collect();
    Json(json!({"workers": loads}))
}

/// `POST /flush_cache`: `POST /reset_prefix_cache` on every engine, reported per engine.
pub async fn flush_cache(State(st): State<Arc<AppState>>) -> Response {
    let mut engines: Vec<Arc<Worker>> = Vec::new();
    for w in st.registry.all() {
        if !engines.iter().any(|e| e.id.url == w.id.url) {
            engines.push(w);
        }
    }
    let prober = &st.enroller.prober;
    let results = futures_util::future::join_all(engines.iter().map(|w| async move {
        let url = &w.id.url;
        match prober.post_empty(w, "/reset_prefix_cache").await {
            Ok(s) => json!({"url": url, "ok": s.is_success(), "status": s.as_u16()}),
            Err(e) => json!({"url": url, "ok": false, "error": e.to_string()}),
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
