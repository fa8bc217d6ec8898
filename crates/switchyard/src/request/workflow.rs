//! A request's workflow identity (docs/workflows.md): `workflow_metadata` in the body
//! (`workflow_id`, `agent_id`, `workflow_priority`, `context_sharing_strategy`), or the
//! headers `X-Workflow-ID`, `X-Agent-ID`, `X-Workflow-Priority` for clients that cannot
//! add body fields. The body wins where both are given.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Longest workflow or agent id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Which agents of a workflow a message may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Broadcast unless the sender names recipients.
    #[default]
    Auto,
    /// Every agent.
    Broadcast,
    /// Only named agents.
    Selective,
    /// No messaging.
    None,
}

impl Sharing {
    pub fn parse(s: &str) -> Option<Sharing> {
        Some(match s {
            "auto" => Sharing::Auto,
            "broadcast" => Sharing::Broadcast,
            "selective" => Sharing::Selective,
            "none" => Sharing::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Auto => "auto",
            Sharing::Broadcast => "broadcast",
            Sharing::Selective => "selective",
            Sharing::None => "none",
        }
    }
}

/// The workflow a request belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    pub id: Arc<str>,
    pub agent: Option<Arc<str>>,
    /// Higher is sooner.
    pub priority: Option<f64>,
    pub sharing: Option<Sharing>,
}

/// `workflow_metadata` as sent.
#[derive(Deserialize)]
pub(super) struct WorkflowWire<'a> {
    #[serde(borrow)]
    pub workflow_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub agent_id: Option<Cow<'a, str>>,
    pub workflow_priority: Option<f64>,
    #[serde(borrow)]
    pub context_sharing_strategy: Option<Cow<'a, str>>,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// The id a tenant's workflow is kept under: the `default` tenant's as the client
/// names it, another's behind its tenant id and a unit separator (a control character,
/// which no client id may hold), so tenants never reach each other's workflows.
pub fn scoped_id(owner: &str, id: &str) -> String {
    crate::tenancy::scoped(owner, '\u{1f}', id)
}

/// Whether a kept workflow id belongs to `owner`, and the id its client knows.
pub fn owned_id<'a>(owner: &str, kept: &'a str) -> Option<&'a str> {
    crate::tenancy::unscoped(owner, '\u{1f}', kept)
}

/// Checks an id: not empty, at most [`MAX_ID_BYTES`], no control characters.
pub fn check_id(id: &str, param: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(bad(format!("`{param}` must not be empty"), param));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(bad(
            format!(
                "`{param}` is {} bytes; the limit is {MAX_ID_BYTES}",
                id.len()
            ),
            param,
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(bad(format!("`{param}` has control characters"), param));
    }
    Ok(())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| bad(format!("the {name} header is not visible ASCII"), name)),
    }
}

/// The workflow of a request, from its `workflow_metadata` and headers; `None` when it
/// names none. 400 names the field at fault.
pub(super) fn of(
    wire: Option<&WorkflowWire<'_>>,
    headers: &HeaderMap,
) -> Result<Option<Workflow>, ApiError> {
    let h_id = header(headers, "x-workflow-id")?;
    let h_agent = header(headers, "x-agent-id")?;
    let h_priority = header(headers, "x-workflow-priority")?;
    let id = match wire.and_then(|w| w.workflow_id.as_deref()) {
        Some(id) => {
            check_id(id, "workflow_metadata.workflow_id")?;
            Some(id)
        }
        None if wire.is_some() => {
            return Err(bad(
                "`workflow_metadata.workflow_id` is required",
                "workflow_metadata.workflow_id",
            ));
        }
        None => match h_id {
            Some(id) => {
                check_id(id, "X-Workflow-ID")?;
                Some(id)
            }
            None => None,
        },
    };
    let Some(id) = id else {
        return Ok(None);
    };
    let agent = match wire.and_then(|w| w.agent_id.as_deref()) {
        Some(a) => {
            check_id(a, "workflow_metadata.agent_id")?;
            Some(a)
        }
        None => match h_agent {
            Some(a) => {
                check_id(a, "X-Agent-ID")?;
                Some(a)
            }
            None => None,
        },
    };
    let priority = match wire.and_then(|w| w.workflow_priority) {
        Some(p) => Some(p),
        None => match h_priority {
            Some(p) => Some(p.trim().parse::<f64>().map_err(|_| {
                bad(
                    "X-Workflow-Priority must be a number",
                    "X-Workflow-Priority",
                )
            })?),
            None => None,
        },
    };
    if priority.is_some_and(|p| !p.is_finite()) {
        return Err(bad(
            "`workflow_priority` must be a finite number",
            "workflow_metadata.workflow_priority",
        ));
    }
    let sharing = match wire.and_then(|w| w.context_sharing_strategy.as_deref()) {
        None => None,
        Some(s) => Some(Sharing::parse(s).ok_or_else(|| {
            bad(
                format!(
                    "`context_sharing_strategy` must be auto, broadcast, selective or none; got {s:?}"
                ),
                "workflow_metadata.context_sharing_strategy",
            )
        })?),
    };
    Ok(Some(Workflow {
        id: Arc::from(id),
        agent: agent.map(Arc::from),
        priority,
        sharing,
    }))
}

/// The priority a request asks for (`X-Workflow-Priority`, else
/// `workflow_metadata.workflow_priority`), read leniently for the admission queue: a
/// malformed one counts as none here and is refused when the request is parsed.
pub fn priority_hint(headers: &HeaderMap, body: &[u8]) -> Option<f64> {
    #[derive(Deserialize)]
    struct Meta {
        workflow_priority: Option<f64>,
    }
    #[derive(Deserialize)]
    struct Light {
        workflow_metadata: Option<Meta>,
    }
    if let Some(p) = headers
        .get("x-workflow-priority")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return p.is_finite().then_some(p);
    }
    let light: Light = serde_json::from_slice(body).ok()?;
    light
        .workflow_metadata?
        .workflow_priority
        .filter(|p| p.is_finite())
}
