//! The workflow API (docs/workflows.md): status, stats and deletion of workflows, and
//! the agents' message queues. On the data plane workers appear by opaque id; the
//! admin listener's `GET /workflows/{id}` adds their URLs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;
use crate::request::workflow::{check_id, owned_id, scoped_id};
use crate::state::StateError;
use crate::tenancy::Caller;
use crate::workflows::queue::Draft;
use crate::workflows::{Recipients, SendError};

/// Longest long poll.
const MAX_WAIT_SECS: u64 = 60;

fn not_found(id: &str) -> Response {
    ApiError::not_found_named(format!("Workflow `{id}` does not exist or has expired"))
        .into_response()
}

/// The answer when the shared store (Redis) fails: 503, the detail only in the log.
fn store_down(e: &StateError) -> ApiError {
    tracing::warn!(error = %e, "workflow store unavailable");
    ApiError::unavailable(
        "workflow_store_unavailable",
        "The workflow store is unavailable; try again shortly".to_string(),
        1,
    )
}

async fn status_of(st: &AppState, id: &str, kept: &str, detailed: bool) -> Response {
    if let Err(e) = check_id(id, "workflow_id") {
        return e.into_response();
    }
    match st.pipeline.workflows.status(kept, detailed).await {
        Ok(Some(mut v)) => {
            v["workflow_id"] = json!(id);
            Json(v).into_response()
        }
        Ok(None) => not_found(id),
        Err(e) => store_down(&e).into_response(),
    }
}

/// `GET /v1/workflows/{id}/status`.
pub async fn status(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    status_of(&st, &id, &scoped_id(caller.owner(), &id), false).await
}

/// `GET /workflows/{id}` on the admin listener: the status with worker URLs.
pub async fn admin_status(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    status_of(&st, &id, &id, true).await
}

/// `GET /v1/workflows/stats`.
pub async fn stats(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Response {
    let mut v = match st.pipeline.workflows.stats(10).await {
        Ok(v) => v,
        Err(e) => return store_down(&e).into_response(),
    };
    // The busiest workflows listed are the caller's own.
    if let Some(top) = v.get_mut("top_workflows").and_then(Value::as_array_mut) {
        top.retain_mut(|w| {
            let own = w["workflow_id"]
                .as_str()
                .and_then(|k| owned_id(caller.owner(), k))
                .map(str::to_string);
            match own {
                Some(id) => {
                    w["workflow_id"] = json!(id);
                    true
                }
                None => false,
            }
        });
    }
    let (migrations, splits) = st.workers.workflow_moves();
    v["migrations"] = json!(migrations);
    v["splits"] = json!(splits);
    Json(v).into_response()
}

/// `DELETE /v1/workflows/{id}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = check_id(&id, "workflow_id") {
        return e.into_response();
    }
    match st
        .pipeline
        .workflows
        .delete(&scoped_id(caller.owner(), &id))
        .await
    {
        Ok(true) => Json(json!({"success": true, "message": format!("Workflow {id} ended")}))
            .into_response(),
        Ok(false) => not_found(&id),
        Err(e) => store_down(&e).into_response(),
    }
}

/// Reads a message body: JSON of at most the payload limit plus room for the fields.
async fn message_body(st: &AppState, body: Body) -> Result<Value, ApiError> {
    let limit = st.cfg.max_message_bytes + 64 * 1024;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::payload_too_large(st.cfg.max_message_bytes))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("The body is not valid JSON: {e}"), None))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "The body must be a JSON object",
            None,
        ));
    }
    Ok(v)
}

/// A message's fields: `from_agent` (required), `payload` (required, any JSON),
/// `ttl_secs`, `type`.
fn draft(v: &Value, workflow_ttl: u64) -> Result<Draft, ApiError> {
    let from = match v.get("from_agent") {
        Some(Value::String(s)) => {
            check_id(s, "from_agent")?;
            Arc::from(s.as_str())
        }
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "`from_agent` is required",
                Some("from_agent"),
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`from_agent` must be a string",
                Some("from_agent"),
            ));
        }
    };
    let Some(payload) = v.get("payload") else {
        return Err(ApiError::bad_request(
            "`payload` is required",
            Some("payload"),
        ));
    };
    let ttl_ms = match v.get("ttl_secs") {
        None | Some(Value::Null) => None,
        Some(t) => match t.as_u64() {
            Some(s) if (1..=workflow_ttl).contains(&s) => Some(s as i64 * 1000),
            _ => {
                return Err(ApiError::bad_request(
                    format!(
                        "`ttl_secs` must be an integer from 1 to {workflow_ttl} (--workflow-ttl)"
                    ),
                    Some("ttl_secs"),
                ));
            }
        },
    };
    let kind = match v.get("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`type` must be a string of at most 256 bytes",
                Some("type"),
            ));
        }
    };
    Ok(Draft {
        from_agent: Some(from),
        kind,
        payload_bytes: serde_json::to_string(payload).map_or(usize::MAX, |s| s.len()),
        payload: payload.clone(),
        ttl_ms,
    })
}

fn send_error(e: SendError) -> ApiError {
    match e {
        SendError::Full(agent) => {
            let mut e = ApiError::rate_limited(1);
            e.code = "queue_full";
            e.message = format!(
                "The message queue of agent `{agent}` is full (--max-message-queue-size); nothing was queued"
            );
            e
        }
        SendError::Store(e) => store_down(&StateError(e)),
        SendError::Ended => ApiError::not_found_named(
            "The workflow ended while the message was being sent; nothing was queued".to_string(),
        ),
        SendError::Disabled => ApiError::conflict(
            "Messaging is off for this workflow (context_sharing_strategy: none)",
        ),
        SendError::Strategy(why) => ApiError::conflict(why),
        SendError::TooLarge(limit) => {
            let mut e = ApiError::payload_too_large(limit);
            e.message = format!("The message payload exceeds {limit} bytes (--max-message-bytes)");
            e
        }
    }
}

/// `POST /v1/workflows/{id}/agents/{agent}/messages`: 201 `{"message_id", "expires_at"}`.
pub async fn send_to_agent(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, agent)): Path<(String, String)>,
    body: Body,
) -> Response {
    let run = async {
        check_id(&id, "workflow_id")?;
        check_id(&agent, "agent_id")?;
        let v = message_body(&st, body).await?;
        let d = draft(&v, st.cfg.workflow_ttl)?;
        let agent: Arc<str> = Arc::from(agent.as_str());
        let sent = st
            .pipeline
            .workflows
            .send(
                &Arc::from(scoped_id(caller.owner(), &id)),
                Recipients::One(&agent),
                d,
            )
            .await
            .map_err(send_error)?;
        let (_, message_id, expires_at) = sent.into_iter().next().expect("one recipient");
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                Json(json!({"message_id": message_id, "expires_at": expires_at})),
            )
                .into_response(),
        )
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/workflows/{id}/messages`: to every agent, or to those in `to`.
pub async fn send_to_workflow(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let run = async {
        check_id(&id, "workflow_id")?;
        let v = message_body(&st, body).await?;
        let d = draft(&v, st.cfg.workflow_ttl)?;
        let to: Option<Vec<Arc<str>>> = match v.get("to") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if !a.is_empty() => Some(
                a.iter()
                    .map(|x| match x.as_str() {
                        Some(s) => check_id(s, "to").map(|_| Arc::from(s)),
                        None => Err(ApiError::bad_request(
                            "`to` must list agent ids",
                            Some("to"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "`to` must be a non-empty list of agent ids",
                    Some("to"),
                ));
            }
        };
        let recipients = match &to {
            Some(list) => Recipients::Listed(list),
            None => Recipients::All,
        };
        let sent = st
            .pipeline
            .workflows
            .send(&Arc::from(scoped_id(caller.owner(), &id)), recipients, d)
            .await
            .map_err(send_error)?;
        let messages: Vec<Value> = sent
            .into_iter()
            .map(|(agent, message_id, expires_at)| {
                json!({"agent_id": agent, "message_id": message_id, "expires_at": expires_at})
            })
            .collect();
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                Json(json!({"count": messages.len(), "messages": messages})),
            )
                .into_response(),
        )
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
pub struct ReceiveQuery {
    limit: Option<usize>,
    consume: Option<bool>,
    wait_secs: Option<u64>,
}

/// `GET /v1/workflows/{id}/agents/{agent}/messages?limit=&consume=&wait_secs=`: the
/// agent's messages, oldest first (consumed by default). With `wait_secs`, waits for
/// one to arrive if none is there.
pub async fn receive(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path((id, agent)): Path<(String, String)>,
    q: Result<Query<ReceiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let kept = scoped_id(caller.owner(), &id);
    let run = async {
        check_id(&id, "workflow_id")?;
        check_id(&agent, "agent_id")?;
        let Ok(Query(q)) = q else {
            return Err(ApiError::bad_request(
                "limit and wait_secs must be non-negative integers, consume true or false",
                None,
            ));
        };
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(
                "limit must be from 1 to 1000",
                Some("limit"),
            ));
        }
        let wait = q.wait_secs.unwrap_or(0);
        if wait > MAX_WAIT_SECS {
            return Err(ApiError::bad_request(
                format!("wait_secs must be at most {MAX_WAIT_SECS}"),
                Some("wait_secs"),
            ));
        }
        let consume = q.consume.unwrap_or(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let workflows = &st.pipeline.workflows;
        loop {
            // Listen before looking, so a message queued in between is not missed.
            let arrival = workflows.arrival();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            let Some(messages) = workflows
                .receive(&kept, &agent, limit, consume)
                .await
                .map_err(|e| store_down(&e))?
            else {
                return Ok(not_found(&id));
            };
            if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Json(json!({
                    "workflow_id": id,
                    "agent_id": agent,
                    "messages": messages,
                    "count": messages.len(),
                }))
                .into_response());
            }
            let _waiting = workflows.waiting();
            // With Redis, other replicas' sends are seen by looking again every poll.
            let look_again = match workflows.is_shared() {
                true => deadline.min(tokio::time::Instant::now() + crate::workflows::SHARED_POLL),
                false => deadline,
            };
            tokio::select! {
                _ = arrival => {}
                _ = tokio::time::sleep_until(look_again) => {}
            }
        }
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
