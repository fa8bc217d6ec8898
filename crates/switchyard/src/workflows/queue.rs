//! One workflow's agent message queues: FIFO per agent, each message with an expiry.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{random_id, rfc3339};

/// A message as sent.
#[derive(Clone, Debug)]
pub struct Draft {
    pub from_agent: Option<Arc<str>>,
    pub kind: Option<String>,
    pub payload: Value,
    /// Its JSON size (checked against `--max-message-bytes`).
    pub payload_bytes: usize,
    pub ttl_ms: Option<i64>,
}

/// A queued message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub message_id: String,
    pub from_agent: Option<Arc<str>>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub payload: Value,
    pub created_at: String,
    pub expires_at: String,
}

/// A queued message and its expiry.
pub(super) struct Queued {
    pub id: String,
    pub expires_at: i64,
    message: Message,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq)]
pub enum SendError {
    /// The recipient's queue is full (429).
    Full(String),
    /// The workflow's strategy is `none` (409).
    Disabled,
    /// The recipients do not fit the workflow's strategy (409).
    Strategy(&'static str),
    /// The payload is over the limit (413).
    TooLarge(usize),
    /// The workflow ended (deleted, expired, evicted) while the message was being sent
    /// through another replica (404).
    Ended,
    /// The shared store (Redis) failed (503).
    Store(String),
}

#[derive(Default)]
pub(super) struct Queues {
    by_agent: BTreeMap<Arc<str>, VecDeque<Queued>>,
}

impl Queues {
    pub fn push(&mut self, agent: &Arc<str>, d: &Draft, now: i64, ttl_ms: i64) -> &Queued {
        let id = random_id("msg_");
        let expires_at = now.saturating_add(ttl_ms);
        let q = self.by_agent.entry(agent.clone()).or_default();
        q.push_back(Queued {
            message: Message {
                message_id: id.clone(),
                from_agent: d.from_agent.clone(),
                kind: d.kind.clone(),
                payload: d.payload.clone(),
                created_at: rfc3339(now),
                expires_at: rfc3339(expires_at),
            },
            id,
            expires_at,
        });
        q.back().expect("just pushed")
    }

    /// Drops expired messages; how many.
    pub fn expire(&mut self, now: i64) -> usize {
        let mut n = 0;
        for q in self.by_agent.values_mut() {
            let before = q.len();
            q.retain(|m| m.expires_at > now);
            n += before - q.len();
        }
        n
    }

    pub fn depth(&self, agent: &str) -> usize {
        self.by_agent.get(agent).map_or(0, VecDeque::len)
    }

    pub fn depths(&self) -> BTreeMap<String, usize> {
        self.by_agent
            .iter()
            .map(|(a, q)| (a.to_string(), q.len()))
            .collect()
    }

    pub fn total(&self) -> usize {
        self.by_agent.values().map(VecDeque::len).sum()
    }

    /// Up to `limit` of `agent`'s messages, oldest first; removed when `consume`.
    pub fn take(&mut self, agent: &str, limit: usize, consume: bool) -> Vec<Message> {
        let Some(q) = self.by_agent.get_mut(agent) else {
            return Vec::new();
        };
        let n = limit.min(q.len());
        if consume {
            q.drain(..n).map(|m| m.message).collect()
        } else {
            q.iter().take(n).map(|m| m.message.clone()).collect()
        }
    }
}
