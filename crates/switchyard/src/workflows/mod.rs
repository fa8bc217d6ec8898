//! Multi-agent workflows (docs/workflows.md): the registry of live workflows — their
//! agents, the workers they ran on, tokens, cache hits and latencies — and the agents'
//! message queues. Requests join their workflow when they arrive (`touch`) and report
//! what they cost when they settle (`record`); the workflow-aware policy keeps the
//! placement itself (`routing::workflow_aware`).
//!
//! A workflow idle for `--workflow-ttl` expires; past `--max-workflows` the least
//! recently active is evicted. Both free its queues.
//!
//! With `--redis-url` the registry, the homes the workflow-aware policy chose and the
//! queues live in Redis (`shared`), so every replica sees the same workflows, sends a
//! workflow to the same worker and serves the same queues; without it they live here.
//!
//! Queues: a message waits in its agent's queue until consumed or until its TTL ends.
//! A full queue (`--max-message-queue-size`) refuses new messages (429); nothing
//! accepted is ever dropped to make room — the alternative, dropping the oldest, would
//! lose a message the sender was told was delivered.

pub mod queue;
mod shared;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::fleet::WorkerRole;
use crate::request::workflow::{Sharing, Workflow};
use crate::state::{Clock, StateError, rfc3339};
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

    /// What `r` adds, field by field (the Redis backend adds these to a hash).
    fn deltas(r: &Outcome) -> Vec<(&'static str, f64)> {
        let mut d = vec![("requests", 1.0), ("failed", f64::from(u8::from(!r.ok)))];
        if let Some(u) = r.usage {
            d.push(("prompt_tokens", u.prompt as f64));
            d.push(("completion_tokens", u.completion as f64));
            if let Some(c) = u.cached {
                d.push(("cached_tokens", c as f64));
                d.push(("reported_prompt_tokens", u.prompt as f64));
            }
        }
        if let Some(t) = r.ttft_ms {
            d.push(("ttft_ms_sum", t));
            d.push(("ttft_count", 1.0));
        }
        d.push(("total_ms_sum", r.total_ms));
        d
    }

    /// Rebuilds a usage from the fields `deltas` added (and `last_seen`).
    fn from_fields<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> Usage {
        let mut u = Usage::default();
        for (k, v) in fields {
            let x: f64 = v.parse().unwrap_or(0.0);
            match k {
                "requests" => u.requests = x as u64,
                "failed" => u.failed = x as u64,
                "prompt_tokens" => u.prompt_tokens = x as u64,
                "completion_tokens" => u.completion_tokens = x as u64,
                "cached_tokens" => u.cached_tokens = x as u64,
                "reported_prompt_tokens" => u.reported_prompt_tokens = x as u64,
                "ttft_ms_sum" => u.ttft_ms_sum = x,
                "ttft_count" => u.ttft_count = x as u64,
                "total_ms_sum" => u.total_ms_sum = x,
                "last_seen" => u.last_seen = x as i64,
                _ => {}
            }
        }
        u
    }

    fn merge(&mut self, o: &Usage) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cached_tokens += o.cached_tokens;
        self.reported_prompt_tokens += o.reported_prompt_tokens;
        self.ttft_ms_sum += o.ttft_ms_sum;
        self.ttft_count += o.ttft_count;
        self.total_ms_sum += o.total_ms_sum;
        self.last_seen = self.last_seen.max(o.last_seen);
    }

    /// Cached share of prompt tokens; `None` ("unknown") when no engine reported it.
    fn hit_rate(&self) -> Option<f64> {
        (self.reported_prompt_tokens > 0)
            .then(|| self.cached_tokens as f64 / self.reported_prompt_tokens as f64)
    }

    fn hit_rate_json(&self) -> Value {
        self.hit_rate()
            .map_or(json!("unknown"), |r| json!((r * 1e4).round() / 1e4))
    }

    fn json(&self) -> Value {
        let avg = |sum: f64, n: u64| (n > 0).then(|| (sum / n as f64 * 1e3).round() / 1e3);
        json!({
            "requests": self.requests,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": (self.reported_prompt_tokens > 0).then_some(self.cached_tokens),
            "cache_hit_rate": self.hit_rate_json(),
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

/// The counts as read once (from memory or from Redis).
#[derive(Clone, Copy, Debug, Default)]
struct CountsSnapshot {
    created: u64,
    expired: u64,
    evicted: u64,
    messages_sent: u64,
    messages_delivered: u64,
    messages_expired: u64,
    messages_rejected: u64,
    queued: u64,
}

impl Counts {
    fn snapshot(&self, queued: u64) -> CountsSnapshot {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountsSnapshot {
            created: n(&self.created),
            expired: n(&self.expired),
            evicted: n(&self.evicted),
            messages_sent: n(&self.messages_sent),
            messages_delivered: n(&self.messages_delivered),
            messages_expired: n(&self.messages_expired),
            messages_rejected: n(&self.messages_rejected),
            queued,
        }
    }
}

/// One workflow as `status` shows it, from either backend.
struct StatusView<'a> {
    id: &'a str,
    created_at: i64,
    last_activity: i64,
    sharing: Sharing,
    priority: Option<f64>,
    /// (opaque id, URL label, requests), in first-use order.
    workers: Vec<(&'a str, &'a str, u64)>,
    agents: Vec<(&'a str, &'a Usage)>,
    totals: &'a Usage,
    depths: BTreeMap<String, usize>,
}

impl StatusView<'_> {
    fn json(&self, detailed: bool) -> Value {
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|(api, label, n)| {
                let mut w = json!({"id": api, "requests": n});
                if detailed {
                    w["url"] = json!(label);
                }
                w
            })
            .collect();
        let agents: serde_json::Map<String, Value> = self
            .agents
            .iter()
            .map(|(a, u)| {
                let mut v = u.json();
                v["queue_depth"] = json!(self.depths.get(*a).copied().unwrap_or(0));
                (a.to_string(), v)
            })
            .collect();
        json!({
            "workflow_id": self.id,
            "created_at": rfc3339(self.created_at),
            "last_activity": rfc3339(self.last_activity),
            "context_sharing_strategy": self.sharing.as_str(),
            "workflow_priority": self.priority,
            "workers": workers,
            "agents": agents,
            "totals": self.totals.json(),
            "queue_depths": self.depths,
        })
    }
}

/// A workflow in the top list of `stats`: (id, requests, agents, totals).
type TopEntry = (String, u64, usize, Usage);

/// `/v1/workflows/stats` from either backend. The overall figures are lifetime sums
/// over every request of every workflow (the per-role totals add up to them).
fn stats_json(
    active: usize,
    c: CountsSnapshot,
    waiting: usize,
    top: Vec<TopEntry>,
    roles: &BTreeMap<String, Usage>,
) -> Value {
    let mut all = Usage::default();
    roles.values().for_each(|u| all.merge(u));
    let top: Vec<Value> = top
        .iter()
        .map(|(id, requests, agents, totals)| {
            json!({
                "workflow_id": id,
                "requests": requests,
                "agents": agents,
                "cache_hit_rate": totals.hit_rate_json(),
            })
        })
        .collect();
    let roles: serde_json::Map<String, Value> =
        roles.iter().map(|(r, u)| (r.clone(), u.json())).collect();
    json!({
        "active_workflows": active,
        "created_workflows": c.created,
        "expired_workflows": c.expired,
        "evicted_workflows": c.evicted,
        "messages": {
            "sent": c.messages_sent,
            "delivered": c.messages_delivered,
            "expired": c.messages_expired,
            "rejected": c.messages_rejected,
            "queued": c.queued,
            "waiting_receivers": waiting,
        },
        "requests": all.requests,
        "cache_hit_rate": all.hit_rate_json(),
        "top_workflows": top,
        "agent_roles": roles,
    })
}

/// The metrics' figures from the same parts as `stats_json`.
fn figures_of(
    active: usize,
    c: CountsSnapshot,
    roles: &BTreeMap<String, Usage>,
) -> crate::metrics::WorkflowFigures {
    let mut all = Usage::default();
    roles.values().for_each(|u| all.merge(u));
    crate::metrics::WorkflowFigures {
        active,
        queued_messages: c.queued as usize,
        created: c.created,
        expired: c.expired,
        evicted: c.evicted,
        messages_sent: c.messages_sent,
        messages_delivered: c.messages_delivered,
        messages_expired: c.messages_expired,
        messages_rejected: c.messages_rejected,
        requests: all.requests,
        cache_hit_rate: all.hit_rate(),
        ..Default::default()
    }
}

/// The role a request counts under in the per-role figures.
fn role_of(wf: &Workflow) -> Arc<str> {
    wf.agent.clone().unwrap_or_else(|| Arc::from("(none)"))
}

/// The workers the workflow-aware policy chose for a workflow, shared by replicas
/// through Redis: one URL label per worker role (empty without Redis).
pub type Homes = [Option<Arc<str>>; 3];

/// The registry.
pub struct Workflows {
    cfg: WorkflowConfig,
    clock: Arc<dyn Clock>,
    map: Mutex<HashMap<Arc<str>, Entry>>,
    pub counts: Counts,
    /// Per-role totals that outlive their workflows (average latency per agent role).
    roles: Mutex<BTreeMap<String, Usage>>,
    /// Woken when a message is queued (long polls wait on it).
    arrived: tokio::sync::Notify,
    /// Long polls waiting now.
    waiting: std::sync::atomic::AtomicUsize,
    /// The Redis backend, when `--redis-url` is set.
    shared: Option<Arc<shared::Shared>>,
    /// The metrics' figures from Redis, refreshed by `sweep`.
    shared_figures: Mutex<crate::metrics::WorkflowFigures>,
}

/// Counts a long poll as waiting while it lives.
pub struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workflows {
    /// The registry, in Redis when `redis` is given, else in memory.
    pub fn new(
        cfg: WorkflowConfig,
        clock: Arc<dyn Clock>,
        redis: Option<Arc<crate::state::redis::Pool>>,
    ) -> Workflows {
        Workflows {
            shared: redis.map(|pool| Arc::new(shared::Shared::new(pool, cfg.clone()))),
            cfg,
            clock,
            map: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            roles: Mutex::new(BTreeMap::new()),
            arrived: tokio::sync::Notify::new(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            shared_figures: Mutex::default(),
        }
    }

    /// Whether the state lives in Redis (replicas share it).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
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

    /// A request of `wf` arrived; the homes other replicas chose for it (with Redis).
    /// A Redis failure leaves the homes unknown: the policy then decides alone.
    pub async fn arrive(&self, wf: &Workflow) -> Homes {
        let now = self.clock.now_ms();
        if let Some(s) = &self.shared {
            return match s.arrive(wf, now).await {
                Ok(homes) => homes,
                Err(e) => {
                    tracing::warn!(error = %e, "workflow store unavailable; placing alone");
                    Homes::default()
                }
            };
        }
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
        Homes::default()
    }

    /// The policy placed `wf`'s request on `label` as its home for `role`, which other
    /// replicas did not know yet: tell them (with Redis).
    pub async fn publish_home(&self, wf: &Workflow, role: WorkerRole, label: &Arc<str>) {
        if let Some(s) = &self.shared
            && let Err(e) = s.publish_home(&wf.id, role, label).await
        {
            tracing::warn!(error = %e, "workflow home not shared");
        }
    }

    /// A request of `wf` settled.
    pub fn record(&self, wf: &Workflow, r: &Outcome) {
        let now = self.clock.now_ms();
        if let Some(s) = &self.shared {
            let (s, wf, r) = (s.clone(), wf.clone(), r.clone());
            tokio::spawn(async move {
                if let Err(e) = s.record(&wf, &r, now).await {
                    tracing::warn!(error = %e, "workflow usage not recorded");
                }
            });
            return;
        }
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
        self.roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(role_of(wf).to_string())
            .or_default()
            .add(r, now);
    }

    /// Drops idle workflows and expired messages (the maintenance tick); with Redis,
    /// also refreshes the metrics' figures.
    pub async fn sweep(&self) {
        let now = self.clock.now_ms();
        if let Some(s) = &self.shared {
            match s.sweep(now).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "workflow sweep failed"),
            }
            if let Ok((active, counts, roles)) = s.totals().await {
                *self
                    .shared_figures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = figures_of(active, counts, &roles);
            }
            return;
        }
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
    pub async fn delete(&self, id: &str) -> Result<bool, StateError> {
        match &self.shared {
            Some(s) => s.delete(id).await,
            None => Ok(self.lock().remove(id).is_some()),
        }
    }

    /// `GET /v1/workflows/{id}/status`; `detailed` adds worker URLs (admin listener).
    pub async fn status(&self, id: &str, detailed: bool) -> Result<Option<Value>, StateError> {
        let now = self.clock.now_ms();
        if let Some(s) = &self.shared {
            return s.status(id, detailed, now).await;
        }
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else {
            return Ok(None);
        };
        let expired = e.queues.expire(now);
        self.counts
            .messages_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        Ok(Some(
            StatusView {
                id,
                created_at: e.created_at,
                last_activity: e.last_activity,
                sharing: e.sharing,
                priority: e.priority,
                workers: e.workers.iter().map(|(a, l, n)| (&**a, &**l, *n)).collect(),
                agents: e.agents.iter().map(|(a, u)| (&**a, u)).collect(),
                totals: &e.totals,
                depths: e.queues.depths(),
            }
            .json(detailed),
        ))
    }

    /// `GET /v1/workflows/stats`.
    pub async fn stats(&self, top: usize) -> Result<Value, StateError> {
        let waiting = self.waiting.load(Ordering::Relaxed);
        if let Some(s) = &self.shared {
            let (active, counts, roles) = s.totals().await?;
            let top = s.top(top).await?;
            return Ok(stats_json(active, counts, waiting, top, &roles));
        }
        let (active, queued, top) = {
            let map = self.lock();
            let mut by_traffic: Vec<(&Arc<str>, &Entry)> = map.iter().collect();
            by_traffic.sort_by(|a, b| {
                b.1.totals
                    .requests
                    .cmp(&a.1.totals.requests)
                    .then(a.0.cmp(b.0))
            });
            let top: Vec<TopEntry> = by_traffic
                .iter()
                .take(top)
                .map(|(id, e)| {
                    (
                        id.to_string(),
                        e.totals.requests,
                        e.agents.len(),
                        e.totals.clone(),
                    )
                })
                .collect();
            let queued: usize = map.values().map(|e| e.queues.total()).sum();
            (map.len(), queued, top)
        };
        let roles = self.roles.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(stats_json(
            active,
            self.counts.snapshot(queued as u64),
            waiting,
            top,
            &roles,
        ))
    }

    /// The figures the metrics show (`migrations`, `splits` are the policies'). With
    /// Redis, the fleet-wide figures as of the last sweep (at most a second old).
    pub fn figures(&self) -> crate::metrics::WorkflowFigures {
        if self.shared.is_some() {
            return self
                .shared_figures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
        }
        let (active, queued) = {
            let map = self.lock();
            (
                map.len(),
                map.values().map(|e| e.queues.total()).sum::<usize>(),
            )
        };
        let roles = self.roles.lock().unwrap_or_else(|e| e.into_inner());
        figures_of(active, self.counts.snapshot(queued as u64), &roles)
    }

    /// Queues `payload` for `to` (one agent, or the workflow's agents as its sharing
    /// strategy allows when `None`), creating the workflow if new. The ids and expiry
    /// of the messages queued.
    pub async fn send(
        &self,
        id: &Arc<str>,
        to: Recipients<'_>,
        msg: queue::Draft,
    ) -> Result<Vec<(String, String, String)>, SendError> {
        if msg.payload_bytes > self.cfg.max_message_bytes {
            self.reject_message().await;
            return Err(SendError::TooLarge(self.cfg.max_message_bytes));
        }
        let now = self.clock.now_ms();
        let ttl = msg.ttl_ms.unwrap_or(self.cfg.default_message_ttl_ms);
        if let Some(s) = &self.shared {
            let out = s.send(id, to, &msg, now, ttl).await?;
            self.arrived.notify_waiters();
            return Ok(out);
        }
        let mut map = self.lock();
        let e = self.entry(&mut map, id, now);
        let expired = e.queues.expire(now);
        self.counts
            .messages_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        if let Some(from) = &msg.from_agent {
            e.agents.entry(from.clone()).or_default();
        }
        let agents: Vec<Arc<str>> = e.agents.keys().cloned().collect();
        let targets = match recipients(e.sharing, to, &agents, msg.from_agent.as_ref()) {
            Ok(t) => t,
            Err(err) => {
                self.counts
                    .messages_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Err(err);
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

    /// Counts a message refused before it reached a queue.
    async fn reject_message(&self) {
        match &self.shared {
            Some(s) => s.count("messages_rejected").await,
            None => {
                self.counts
                    .messages_rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Up to `limit` messages waiting for `agent`, oldest first, removed if `consume`.
    /// `None` when the workflow does not exist.
    pub async fn receive(
        &self,
        id: &str,
        agent: &str,
        limit: usize,
        consume: bool,
    ) -> Result<Option<Vec<Message>>, StateError> {
        let now = self.clock.now_ms();
        if let Some(s) = &self.shared {
            return s.receive(id, agent, limit, consume, now).await;
        }
        let mut map = self.lock();
        let Some(e) = map.get_mut(id) else {
            return Ok(None);
        };
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
        Ok(Some(out))
    }

    /// Marks a long poll as waiting until the guard drops.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Resolves when a message is queued through this replica (a long poll then looks
    /// again; with Redis it also looks every `shared::POLL`, for other replicas' sends).
    pub fn arrival(&self) -> tokio::sync::futures::Notified<'_> {
        self.arrived.notified()
    }
}

/// How often a long poll looks at Redis for messages other replicas queued.
pub const SHARED_POLL: std::time::Duration = shared::POLL;

/// Who a message goes to.
pub enum Recipients<'a> {
    One(&'a Arc<str>),
    Listed(&'a [Arc<str>]),
    All,
}

/// The agents a message goes to, as the workflow's strategy allows (`agents`: the
/// workflow's known agents).
fn recipients(
    sharing: Sharing,
    to: Recipients<'_>,
    agents: &[Arc<str>],
    from: Option<&Arc<str>>,
) -> Result<Vec<Arc<str>>, SendError> {
    if sharing == Sharing::None {
        return Err(SendError::Disabled);
    }
    Ok(match to {
        Recipients::One(a) => vec![a.clone()],
        Recipients::Listed(list) => {
            if sharing == Sharing::Broadcast {
                return Err(SendError::Strategy(
                    "the workflow's strategy is broadcast: send without `to`",
                ));
            }
            list.to_vec()
        }
        Recipients::All => {
            if sharing == Sharing::Selective {
                return Err(SendError::Strategy(
                    "the workflow's strategy is selective: name the agents in `to`",
                ));
            }
            agents
                .iter()
                .filter(|a| Some(*a) != from)
                .cloned()
                .collect()
        }
    })
}
