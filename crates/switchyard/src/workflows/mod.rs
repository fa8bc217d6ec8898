//! Multi-agent workflows (docs/workflows.md): the registry of live workflows — their
//! agents, the workers they ran on, tokens, cache hits and latencies — and the agents'
//! message queues. Requests join their workflow when they arrive (`touch`) and report
//! what they cost when they settle (`record`); the workflow-aware policy keeps the
//! placement itself (`routing::workflow_aware`).
//!
//! A workflow idle for `--workflow-ttl` expires; past `--max-workflows` the least
//! recently active is evicted. Both free its queues.
//!
//! Queues: a message waits in its agent's queue until consumed or until its TTL ends.
//! A full queue (`--max-message-queue-size`) refuses new messages (429); nothing
//! accepted is ever dropped to make room — the alternative, dropping the oldest, would
//! lose a message the sender was told was delivered.

pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::request::workflow::{Sharing, Workflow};
use crate::state::{Clock, rfc3339};
pub use queue::{Message, SendError};

/// Registry settings.
#[derive(Clone, Debug)]
pub struct WorkflowConfig {
    pub ttl_ms: i64,
    pub max_workflows: usize,
    pub max_queue: usize,
    pub max_message_bytes: usize,
    /// A message's TTL when the sender gives none.
    pub default_message_ttl_ms: i64,
}

/// What one agent (or a whole workflow) did.
#[derive(Clone, Debug, Default)]
struct Usage {
    requests: u64,
    failed: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Cached prompt tokens, over the requests whose engine reported them.
    cached_tokens: u64,
    /// Prompt tokens of those requests (the hit rate's denominator).
    reported_prompt_tokens: u64,
    ttft_ms_sum: f64,
    ttft_count: u64,
    total_ms_sum: f64,
    last_seen: i64,
}

impl Usage {
    fn add(&mut self, r: &Outcome, now: i64) {
        self.requests += 1;
        self.failed += u64::from(!r.ok);
        if let Some(u) = r.usage {
            self.prompt_tokens += u.prompt;
            self.completion_tokens += u.completion;
            if let Some(c) = u.cached {
                self.cached_tokens += c;
                self.reported_prompt_tokens += u.prompt;
            }
        }
        if let Some(t) = r.ttft_ms {
            self.ttft_ms_sum += t;
            self.ttft_count += 1;
        }
        self.total_ms_sum += r.total_ms;
        self.last_seen = now;
    }

    /// Cached share of prompt tokens; `None` ("unknown") when no engine reported it.
    fn hit_rate(&self) -> Option<f64> {
        (self.reported_prompt_tokens > 0)
            .then(|| self.cached_tokens as f64 / self.reported_prompt_tokens as f64)
    }

    fn json(&self) -> Value {
        let avg = |sum: f64, n: u64| (n > 0).then(|| (sum / n as f64 * 1e3).round() / 1e3);
        json!({
            "requests": self.requests,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": (self.reported_prompt_tokens > 0).then_some(self.cached_tokens),
            "cache_hit_rate": self.hit_rate().map_or(json!("unknown"), |r| json!((r * 1e4).round() / 1e4)),
            "avg_ttft_ms": avg(self.ttft_ms_sum, self.ttft_count),
            "avg_latency_ms": avg(self.total_ms_sum, self.requests),
            "last_seen": (self.last_seen > 0).then(|| rfc3339(self.last_seen)),
        })
    }
}

/// Token counts from an engine's `usage`.
#[derive(Clone, Copy, Debug)]
pub struct TokenUsage {
    pub prompt: u64,
    pub completion: u64,
    /// `prompt_tokens_details.cached_tokens`, when the engine reports it.
    pub cached: Option<u64>,
}

/// One settled request of a workflow.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub ok: bool,
    pub usage: Option<TokenUsage>,
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
    /// The worker: opaque id, and its URL label (shown on the admin listener only).
    pub worker: (Arc<str>, Arc<str>),
}

struct Entry {
    created_at: i64,
    last_activity: i64,
    sharing: Sharing,
    priority: Option<f64>,
    /// Workers it ran on, in first-use order, with their request counts.
    workers: Vec<(Arc<str>, Arc<str>, u64)>,
    agents: BTreeMap<Arc<str>, Usage>,
    totals: Usage,
    queues: queue::Queues,
}

impl Entry {
    fn new(now: i64) -> Entry {
        Entry {
            created_at: now,
            last_activity: now,
            sharing: Sharing::Auto,
            priority: None,
            workers: Vec::new(),
            agents: BTreeMap::new(),
            totals: Usage::default(),
            queues: queue::Queues::default(),
        }
    }
}

/// Lifetime counts, for `/v1/workflows/stats` and the metrics.
#[derive(Default)]
pub struct Counts {
    pub created: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub messages_expired: AtomicU64,
    pub messages_rejected: AtomicU64,
}

/// The registry.
pub struct Workflows {
    cfg: WorkflowConfig,
    clock: Arc<dyn Clock>,
    map: Mutex<HashMap<Arc<str>, Entry>>,
    pub counts: Counts,
    /// Per-role totals that outlive their workflows (average latency per agent role).
    roles: Mutex<BTreeMap<Arc<str>, Usage>>,
    /// Woken when a message is queued (long polls wait on it).
    arrived: tokio::sync::Notify,
    /// Long polls waiting now.
    waiting: std::sync::atomic::AtomicUsize,
}

/// Counts a long poll as waiting while it lives.
pub struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workflows {
    pub fn new(cfg: WorkflowConfig, clock: Arc<dyn Clock>) -> Workflows {
        Workflows {
            cfg,
            clock,
            map: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            roles: Mutex::new(BTreeMap::new()),
            arrived: tokio::sync::Notify::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of `id`, created if new (evicting the least recently active beyond
    /// the bound); its activity time is now.
    fn entry<'m>(
        &self,
        map: &'m mut HashMap<Arc<str>, Entry>,
        id: &Arc<str>,
        now: i64,
    ) -> &'m mut Entry {
        if !map.contains_key(id) {
            self.counts.created.fetch_add(1, Ordering::Relaxed);
            while map.len() >= self.cfg.max_workflows.max(1) {
                let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.last_activity)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
                self.counts.evicted.fetch_add(1, Ordering::Relaxed);
            }
            map.insert(id.clone(), Entry::new(now));
        }
        let e = map.get_mut(id).expect("just inserted");
        e.last_activity = now;
        e
    }

    /// A request of `wf` arrived.
    pub fn touch(&self, wf: &Workflow) {
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let e = self.entry(&mut map, &wf.id, now);
        if let Some(s) = wf.sharing {
            e.sharing = s;
        }
        if let Some(p) = wf.priority {
            e.priority = Some(p);
        }
        if let Some(a) = &wf.agent {
            e.agents.entry(a.clone()).or_default();
        }
    }

    /// A request of `wf` settled.
    pub fn record(&self, wf: &Workflow, r: &Outcome) {
        let now = self.clock.now_ms();
        {
            let mut map = self.lock();
            let e = self.entry(&mut map, &wf.id, now);
            e.totals.add(r, now);
            if let Some(a) = &wf.agent {
                e.agents.entry(a.clone()).or_default().add(r, now);
            }
            match e.workers.iter_mut().find(|w| w.0 == r.worker.0) {
                Some(w) => w.2 += 1,
                None => e.workers.push((r.worker.0.clone(), r.worker.1.clone(), 1)),
            }
        }
        let role = wf.agent.clone().unwrap_or_else(|| Arc::from("(none)"));
        self.roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(role)
            .or_default()
            .add(r, now);
    }

    /// Drops idle workflows and expired messages (the maintenance tick).
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, e| now - e.last_activity < self.cfg.ttl_ms);
        self.counts
            .expired
            .fetch_add((before - map.len()) as u64, Ordering::Relaxed);
        let mut expired = 0;
        for e in map.values_mut() {
            expired += e.queues.expire(now);
        }
        self.counts
            .messages_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
    }

    /// Ends `id`; whether it existed.
    pub fn delete(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }

    /// `GET /v1/workflows/{id}/status`; `detailed` adds worker URLs (admin listener).
    pub fn status(&self, id: &str, detailed: bool) -> Option<Value> {
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        let expired = e.queues.expire(now);
        self.counts
            .messages_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        let workers: Vec<Value> = e
            .workers
            .iter()
            .map(|(api, label, n)| {
                let mut w = json!({"id": &**api, "requests": n});
                if detailed {
                    w["url"] = json!(&**label);
                }
                w
            })
            .collect();
        let agents: serde_json::Map<String, Value> = e
            .agents
            .iter()
            .map(|(a, u)| {
                let mut v = u.json();
                v["queue_depth"] = json!(e.queues.depth(a));
                (a.to_string(), v)
            })
            .collect();
        Some(json!({
            "workflow_id": id,
            "created_at": rfc3339(e.created_at),
            "last_activity": rfc3339(e.last_activity),
            "context_sharing_strategy": e.sharing.as_str(),
            "workflow_priority": e.priority,
            "workers": workers,
            "agents": agents,
            "totals": e.totals.json(),
            "queue_depths": e.queues.depths(),
        }))
    }

    /// `GET /v1/workflows/stats`.
    pub fn stats(&self, top: usize) -> Value {
        let map = self.lock();
        let mut all = Usage::default();
        let mut by_traffic: Vec<(&Arc<str>, &Entry)> = map.iter().collect();
        for (_, e) in &by_traffic {
            all.requests += e.totals.requests;
            all.cached_tokens += e.totals.cached_tokens;
            all.reported_prompt_tokens += e.totals.reported_prompt_tokens;
            all.prompt_tokens += e.totals.prompt_tokens;
        }
        by_traffic.sort_by(|a, b| {
            b.1.totals
                .requests
                .cmp(&a.1.totals.requests)
                .then(a.0.cmp(b.0))
        });
        let top: Vec<Value> = by_traffic
            .iter()
            .take(top)
            .map(|(id, e)| {
                json!({
                    "workflow_id": &***id,
                    "requests": e.totals.requests,
                    "agents": e.agents.len(),
                    "cache_hit_rate": e.totals.hit_rate().map_or(json!("unknown"), |r| json!((r * 1e4).round() / 1e4)),
                })
            })
            .collect();
        let queued: usize = map.values().map(|e| e.queues.total()).sum();
        let active = map.len();
        drop(map);
        let roles: serde_json::Map<String, Value> = self
            .roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, u)| (r.to_string(), u.json()))
            .collect();
        let c = &self.counts;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "active_workflows": active,
            "created_workflows": n(&c.created),
            "expired_workflows": n(&c.expired),
            "evicted_workflows": n(&c.evicted),
            "messages": {
                "sent": n(&c.messages_sent),
                "delivered": n(&c.messages_delivered),
                "expired": n(&c.messages_expired),
                "rejected": n(&c.messages_rejected),
                "queued": queued,
                "waiting_receivers": self.waiting.load(Ordering::Relaxed),
            },
            "requests": all.requests,
            "cache_hit_rate": all.hit_rate().map_or(json!("unknown"), |r| json!((r * 1e4).round() / 1e4)),
            "top_workflows": top,
            "agent_roles": roles,
        })
    }

    /// The figures the metrics show (`migrations`, `splits` are the policies').
    pub fn figures(&self) -> crate::metrics::WorkflowFigures {
        let map = self.lock();
        let mut all = Usage::default();
        for e in map.values() {
            all.requests += e.totals.requests;
            all.cached_tokens += e.totals.cached_tokens;
            all.reported_prompt_tokens += e.totals.reported_prompt_tokens;
        }
        let c = &self.counts;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::metrics::WorkflowFigures {
            active: map.len(),
            queued_messages: map.values().map(|e| e.queues.total()).sum(),
            created: n(&c.created),
            expired: n(&c.expired),
            evicted: n(&c.evicted),
            messages_sent: n(&c.messages_sent),
            messages_delivered: n(&c.messages_delivered),
            messages_expired: n(&c.messages_expired),
            messages_rejected: n(&c.messages_rejected),
            requests: all.requests,
            cache_hit_rate: all.hit_rate(),
            ..Default::default()
        }
    }

    /// Queues `payload` for `to` (one agent, or the workflow's agents as its sharing
    /// strategy allows when `None`), creating the workflow if new. The ids and expiry
    /// of the messages queued.
    pub fn send(
        &self,
        id: &Arc<str>,
        to: Recipients<'_>,
        msg: queue::Draft,
    ) -> Result<Vec<(String, String, String)>, SendError> {
        if msg.payload_bytes > self.cfg.max_message_bytes {
            self.counts
                .messages_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(SendError::TooLarge(self.cfg.max_message_bytes));
        }
        let now = self.clock.now_ms();
        let ttl = msg.ttl_ms.unwrap_or(self.cfg.default_message_ttl_ms);
        let mut map = self.lock();
        let e = self.entry(&mut map, id, now);
        let expired = e.queues.expire(now);
        self.counts
            .messages_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        if e.sharing == Sharing::None {
            self.counts
                .messages_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(SendError::Disabled);
        }
        if let Some(from) = &msg.from_agent {
            e.agents.entry(from.clone()).or_default();
        }
        let targets: Vec<Arc<str>> = match to {
            Recipients::One(a) => vec![a.clone()],
            Recipients::Listed(list) => {
                if e.sharing == Sharing::Broadcast {
                    self.counts
                        .messages_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(SendError::Strategy(
                        "the workflow's strategy is broadcast: send without `to`",
                    ));
                }
                list.to_vec()
            }
            Recipients::All => {
                if e.sharing == Sharing::Selective {
                    self.counts
                        .messages_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(SendError::Strategy(
                        "the workflow's strategy is selective: name the agents in `to`",
                    ));
                }
                e.agents
                    .keys()
                    .filter(|a| Some(*a) != msg.from_agent.as_ref())
                    .cloned()
                    .collect()
            }
        };
        for a in &targets {
            e.agents.entry(a.clone()).or_default();
        }
        // All or nothing: no recipient's queue may be full.
        if let Some(full) = targets
            .iter()
            .find(|a| e.queues.depth(a) >= self.cfg.max_queue)
        {
            self.counts
                .messages_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(SendError::Full(full.to_string()));
        }
        let out: Vec<(String, String, String)> = targets
            .iter()
            .map(|a| {
                let m = e.queues.push(a, &msg, now, ttl);
                (a.to_string(), m.id.clone(), rfc3339(m.expires_at))
            })
            .collect();
        self.counts
            .messages_sent
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        drop(map);
        self.arrived.notify_waiters();
        Ok(out)
    }

    /// Up to `limit` messages waiting for `agent`, oldest first, removed if `consume`.
    /// `None` when the workflow does not exist.
    pub fn receive(
        &self,
        id: &str,
        agent: &str,
        limit: usize,
        consume: bool,
    ) -> Option<Vec<Message>> {
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        let expired = e.queues.expire(now);
        self.counts
            .messages_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        let out = e.queues.take(agent, limit, consume);
        if consume {
            e.last_activity = now;
            self.counts
                .messages_delivered
                .fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        Some(out)
    }

    /// Marks a long poll as waiting until the guard drops.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Resolves when a message is queued anywhere (a long poll then looks again).
    pub fn arrival(&self) -> tokio::sync::futures::Notified<'_> {
        self.arrived.notified()
    }
}

/// Who a message goes to.
pub enum Recipients<'a> {
    One(&'a Arc<str>),
    Listed(&'a [Arc<str>]),
    All,
}
