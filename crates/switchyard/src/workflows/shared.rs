//! The workflow registry, homes and message queues in Redis (`--redis-url`), so that
//! every replica sees the same workflows, sends a workflow to the same worker and
//! serves the same queues. Keys, under the pool's prefix (`{n}` is the id's length in
//! bytes, which keeps ids with colons from colliding):
//!
//! - `wf:{n}:{id}`: hash — `created_at`, `last_activity`, `sharing`, `priority`,
//!   `home:{role}` (the worker's URL label), totals `t:{field}`, agents
//!   `a:{agent}:{field}`, workers `w:{label}` (requests) and `wid:{label}` (opaque id);
//! - `wf:{n}:{id}:q:{agent}`: list — the agent's queue, each item
//!   `{expiry ms, 13 digits}|{message JSON}`;
//! - `wf:active`: sorted set — id → last activity (ms): liveness, idle expiry and the
//!   eviction order;
//! - `wf:traffic`: sorted set — id → requests (the top workflows);
//! - `wf:counts`: hash — lifetime counts, and `queued` (messages waiting);
//! - `wf:roles`: hash — `{role}:{field}`, usage per agent role.
//!
//! Every change that must be all-or-nothing across keys (a send to several queues
//! with its overflow check, a receive, dropping a workflow) is one Lua script. Usage
//! is added with `HINCRBYFLOAT`, so replicas never overwrite each other's figures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::queue::{Draft, Message, SendError};
use super::{
    CountsSnapshot, Homes, Outcome, Recipients, StatusView, TopEntry, Usage, WorkflowConfig,
    recipients, role_of,
};
use crate::fleet::WorkerRole;
use crate::request::workflow::{Sharing, Workflow};
use crate::state::redis::{Op, Pool};
use crate::state::{StateError, random_id, rfc3339};

/// How often a long poll looks for messages queued through another replica.
pub const POLL: Duration = Duration::from_millis(100);

/// Keys outlive the workflow's TTL by this much, so that the sweep (not Redis) ends a
/// workflow and frees its queues, and counts it.
const GRACE_MS: i64 = 60_000;

const ROLES: [WorkerRole; 3] = [WorkerRole::Regular, WorkerRole::Prefill, WorkerRole::Decode];

/// Shared by the scripts below, whose first two keys are always the counts and the
/// due set (queue → its earliest expiry, so that the sweep finds expired messages
/// nobody reads): `purge` drops a queue's expired items (counted) and keeps its entry
/// in the due set right; `live` says whether a workflow is active; `drop_queues` frees
/// every agent queue of a workflow hash.
const PRELUDE: &str = r"
local function purge(k, now)
  local items = redis.call('LRANGE', k, 0, -1)
  local kept, gone, due = {}, 0, false
  for _, m in ipairs(items) do
    local e = tonumber(string.sub(m, 1, 13))
    if e > now then
      kept[#kept + 1] = m
      if not due or e < due then due = e end
    else
      gone = gone + 1
    end
  end
  if gone > 0 then
    local ttl = redis.call('PTTL', k)
    redis.call('DEL', k)
    for _, m in ipairs(kept) do redis.call('RPUSH', k, m) end
    if ttl > 0 and #kept > 0 then redis.call('PEXPIRE', k, ttl) end
    redis.call('HINCRBY', KEYS[1], 'messages_expired', gone)
    redis.call('HINCRBY', KEYS[1], 'queued', -gone)
  end
  if due then redis.call('ZADD', KEYS[2], due, k) else redis.call('ZREM', KEYS[2], k) end
  return gone
end
local function live(active, id, cutoff)
  local s = redis.call('ZSCORE', active, id)
  return s and tonumber(s) > tonumber(cutoff)
end
local function drop_queues(hash)
  local q = 0
  for _, f in ipairs(redis.call('HKEYS', hash)) do
    if string.sub(f, 1, 2) == 'a:' and string.sub(f, -9) == ':requests' then
      local k = hash .. ':q:' .. string.sub(f, 3, -10)
      q = q + redis.call('LLEN', k)
      redis.call('DEL', k)
      redis.call('ZREM', KEYS[2], k)
    end
  end
  return q
end
";

/// KEYS: counts, due, active, hash, queue…; ARGV: now, max depth, queue TTL, id, hash
/// TTL, oldest live activity, then one agent per queue, then one item per queue.
/// Returns 0 when every item was queued, -1 when the workflow has ended meanwhile, else
/// the 1-based index of the full queue (nothing queued).
const SEND: &str = r"
local now, max, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not live(KEYS[3], ARGV[4], ARGV[6]) then return -1 end
local n = #KEYS - 4
for i = 1, n do
  local k = KEYS[i + 4]
  if redis.call('LLEN', k) >= max then
    purge(k, now)
    if redis.call('LLEN', k) >= max then
      redis.call('HINCRBY', KEYS[1], 'messages_rejected', 1)
      return i
    end
  end
end
for i = 1, n do
  local k, item = KEYS[i + 4], ARGV[6 + n + i]
  redis.call('HINCRBY', KEYS[4], 'a:' .. ARGV[6 + i] .. ':requests', 0)
  redis.call('RPUSH', k, item)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
  redis.call('ZADD', KEYS[2], 'LT', tonumber(string.sub(item, 1, 13)), k)
end
redis.call('PEXPIRE', KEYS[4], ARGV[5])
redis.call('HINCRBY', KEYS[1], 'messages_sent', n)
redis.call('HINCRBY', KEYS[1], 'queued', n)
return 0
";

/// KEYS: counts, due, active, hash, queue; ARGV: now, limit, consume (1/0), id, oldest
/// live activity, hash TTL. '0' when the workflow is gone, else '1' and the items,
/// oldest first. Consuming is activity.
const RECEIVE: &str = r"
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if not live(KEYS[3], ARGV[4], ARGV[5]) then return {'0'} end
purge(KEYS[5], now)
local items = redis.call('LRANGE', KEYS[5], 0, limit - 1)
if ARGV[3] == '1' then
  if #items > 0 then
    redis.call('LTRIM', KEYS[5], #items, -1)
    redis.call('HINCRBY', KEYS[1], 'messages_delivered', #items)
    redis.call('HINCRBY', KEYS[1], 'queued', -#items)
    purge(KEYS[5], now)
  end
  redis.call('ZADD', KEYS[3], 'XX', now, ARGV[4])
  redis.call('HSET', KEYS[4], 'last_activity', now)
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
table.insert(items, 1, '1')
return items
";

/// KEYS: counts, due, queue…; ARGV: now. Each queue's depth once its expired items
/// are gone (the sweep uses it on the due queues).
const DEPTHS: &str = r"
local out = {}
for i = 3, #KEYS do
  purge(KEYS[i], tonumber(ARGV[1]))
  out[#out + 1] = redis.call('LLEN', KEYS[i])
end
return out
";

/// KEYS: counts, due, active, traffic, hash; ARGV: id, the count to add ('' for none),
/// the latest activity that may be dropped ('+inf': any). 1 if dropped here.
const DROP: &str = r"
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not score then return 0 end
if ARGV[3] ~= '+inf' and tonumber(score) > tonumber(ARGV[3]) then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local q = drop_queues(KEYS[5])
redis.call('DEL', KEYS[5])
if q > 0 then redis.call('HINCRBY', KEYS[1], 'queued', -q) end
if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
return 1
";

pub struct Shared {
    pool: Arc<Pool>,
    cfg: WorkflowConfig,
    active: String,
    traffic: String,
    counts: String,
    roles: String,
    due: String,
}

/// `EVAL` of `body` (with the shared functions) on `keys` and `args`.
fn eval(body: &str, keys: &[String], args: &[String]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(format!("{PRELUDE}{body}"))
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    c
}

/// The agents named in a workflow hash's fields.
fn agents_of(fields: &HashMap<String, String>) -> Vec<String> {
    fields
        .keys()
        .filter_map(|k| k.strip_prefix("a:")?.strip_suffix(":requests"))
        .map(str::to_string)
        .collect()
}

impl Shared {
    pub fn new(pool: Arc<Pool>, cfg: WorkflowConfig) -> Shared {
        Shared {
            active: pool.key("wf:active"),
            traffic: pool.key("wf:traffic"),
            counts: pool.key("wf:counts"),
            roles: pool.key("wf:roles"),
            due: pool.key("wf:due"),
            pool,
            cfg,
        }
    }

    fn hash(&self, id: &str) -> String {
        self.pool.key(&format!("wf:{}:{id}", id.len()))
    }

    fn queue(&self, id: &str, agent: &str) -> String {
        format!("{}:q:{agent}", self.hash(id))
    }

    /// Whether a workflow last active at `score` (its `wf:active` entry) is alive now:
    /// idle past the TTL, it is gone even before a sweep drops it.
    fn live(&self, score: Option<f64>, now: i64) -> bool {
        score.is_some_and(|s| (s as i64) > now - self.cfg.ttl_ms)
    }

    fn key_ttl(&self) -> i64 {
        self.cfg.ttl_ms.saturating_add(GRACE_MS)
    }

    /// A request arrived: the workflow is active now (created if new, evicting the least
    /// recently active past `--max-workflows`); the homes replicas chose for it.
    pub async fn arrive(&self, wf: &Workflow, now: i64) -> Result<Homes, StateError> {
        let h = self.hash(&wf.id);
        let mut p = redis::pipe();
        p.atomic();
        self.join(&mut p, &wf.id, wf.agent.as_deref(), now);
        if let Some(s) = wf.sharing {
            p.cmd("HSET")
                .arg(&h)
                .arg("sharing")
                .arg(s.as_str())
                .ignore();
        }
        if let Some(pr) = wf.priority {
            p.cmd("HSET").arg(&h).arg("priority").arg(pr).ignore();
        }
        p.cmd("HMGET")
            .arg(&h)
            .arg(ROLES.map(|r| format!("home:{}", r.as_str())).to_vec());
        let (created, active, homes): (i64, usize, Vec<Option<String>>) =
            self.pool.query("workflow arrive", Op::Pipe(&p)).await?;
        self.joined(&wf.id, created, active).await?;
        let mut out = Homes::default();
        for (slot, home) in out.iter_mut().zip(homes) {
            *slot = home.map(Arc::from);
        }
        Ok(out)
    }

    /// Adds to `p` what makes `id` active now, with `agent` one of its agents. Its two
    /// replies, in order: whether this created the workflow (1/0), and how many are
    /// active; hand them to `joined`.
    fn join(&self, p: &mut redis::Pipeline, id: &str, agent: Option<&str>, now: i64) {
        let h = self.hash(id);
        p.cmd("HSETNX").arg(&h).arg("created_at").arg(now);
        p.cmd("HSET").arg(&h).arg("last_activity").arg(now).ignore();
        if let Some(a) = agent {
            p.cmd("HINCRBY")
                .arg(&h)
                .arg(format!("a:{a}:requests"))
                .arg(0)
                .ignore();
        }
        p.cmd("PEXPIRE").arg(&h).arg(self.key_ttl()).ignore();
        p.cmd("ZADD").arg(&self.active).arg(now).arg(id).ignore();
        p.cmd("ZCARD").arg(&self.active);
    }

    /// Counts a workflow `join` created, and evicts the least recently active beyond
    /// `--max-workflows`.
    async fn joined(&self, id: &str, created: i64, active: usize) -> Result<(), StateError> {
        let max = self.cfg.max_workflows.max(1);
        if created == 1 {
            self.count("created").await;
            if active > max {
                self.evict(id, active - max).await?;
            }
        }
        Ok(())
    }

    /// Evicts the `n` least recently active workflows other than `keep`.
    async fn evict(&self, keep: &str, n: usize) -> Result<(), StateError> {
        let mut c = redis::cmd("ZRANGE");
        c.arg(&self.active).arg(0).arg(n as i64).arg("WITHSCORES");
        let oldest: Vec<(String, f64)> = self.pool.query("workflow eviction", Op::Cmd(&c)).await?;
        for (id, last) in oldest.iter().filter(|(id, _)| id != keep).take(n) {
            // Only as idle as it was when read: one that became active meanwhile stays.
            self.drop_workflow(id, "evicted", &last.to_string()).await?;
        }
        Ok(())
    }

    /// Adds one to a lifetime count (best effort: a failure is logged).
    pub async fn count(&self, name: &str) {
        let mut c = redis::cmd("HINCRBY");
        c.arg(&self.counts).arg(name).arg(1);
        if let Err(e) = self.pool.query::<i64>("workflow count", Op::Cmd(&c)).await {
            tracing::warn!(error = %e, "workflow count lost");
        }
    }

    /// Drops `id` with its queues, adding to the count `why` ('' for none), if its last
    /// activity is at most `until` ("+inf": whatever it is). Whether this call dropped it.
    async fn drop_workflow(&self, id: &str, why: &str, until: &str) -> Result<bool, StateError> {
        let keys = [
            self.counts.clone(),
            self.due.clone(),
            self.active.clone(),
            self.traffic.clone(),
            self.hash(id),
        ];
        let args = [id.to_string(), why.to_string(), until.to_string()];
        let dropped: i64 = self
            .pool
            .query("workflow drop", Op::Cmd(&eval(DROP, &keys, &args)))
            .await?;
        Ok(dropped == 1)
    }

    pub async fn delete(&self, id: &str) -> Result<bool, StateError> {
        self.drop_workflow(id, "", "+inf").await
    }

    /// Ends the workflows idle past the TTL (each counted once, by the replica that
    /// dropped it).
    pub async fn sweep(&self, now: i64) -> Result<(), StateError> {
        let cutoff = now - self.cfg.ttl_ms;
        let mut c = redis::cmd("ZRANGEBYSCORE");
        c.arg(&self.active)
            .arg("-inf")
            .arg(cutoff)
            .arg("LIMIT")
            .arg(0)
            .arg(100);
        let idle: Vec<String> = self.pool.query("workflow sweep", Op::Cmd(&c)).await?;
        for id in idle {
            self.drop_workflow(&id, "expired", &cutoff.to_string())
                .await?;
        }
        // Messages past their TTL in queues nobody reads.
        let mut c = redis::cmd("ZRANGEBYSCORE");
        c.arg(&self.due)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(100);
        let due: Vec<String> = self.pool.query("workflow sweep", Op::Cmd(&c)).await?;
        if !due.is_empty() {
            let mut keys = vec![self.counts.clone(), self.due.clone()];
            keys.extend(due);
            self.pool
                .query::<Vec<usize>>(
                    "workflow sweep",
                    Op::Cmd(&eval(DEPTHS, &keys, &[now.to_string()])),
                )
                .await?;
        }
        Ok(())
    }

    /// The workflow-aware policy chose `label` as the home of `id` for `role`.
    pub async fn publish_home(
        &self,
        id: &str,
        role: WorkerRole,
        label: &str,
    ) -> Result<(), StateError> {
        let h = self.hash(id);
        let mut p = redis::pipe();
        p.cmd("HSET")
            .arg(&h)
            .arg(format!("home:{}", role.as_str()))
            .arg(label)
            .ignore();
        p.cmd("PEXPIRE").arg(&h).arg(self.key_ttl()).ignore();
        self.pool.query("workflow home", Op::Pipe(&p)).await
    }

    /// Adds a settled request to the workflow, its agent, its worker and its role.
    pub async fn record(&self, wf: &Workflow, r: &Outcome, now: i64) -> Result<(), StateError> {
        let h = self.hash(&wf.id);
        let deltas = Usage::deltas(r);
        let role = role_of(wf);
        // As in memory, a request that settles after its workflow ended starts it again.
        let mut p = redis::pipe();
        p.atomic();
        self.join(&mut p, &wf.id, wf.agent.as_deref(), now);
        let mut scopes = vec!["t:".to_string()];
        if let Some(a) = &wf.agent {
            scopes.push(format!("a:{a}:"));
        }
        for scope in &scopes {
            for (k, v) in &deltas {
                p.cmd("HINCRBYFLOAT")
                    .arg(&h)
                    .arg(format!("{scope}{k}"))
                    .arg(*v)
                    .ignore();
            }
            p.cmd("HSET")
                .arg(&h)
                .arg(format!("{scope}last_seen"))
                .arg(now)
                .ignore();
        }
        let (api, label) = &r.worker;
        p.cmd("HINCRBY")
            .arg(&h)
            .arg(format!("w:{label}"))
            .arg(1)
            .ignore();
        p.cmd("HSET")
            .arg(&h)
            .arg(format!("wid:{label}"))
            .arg(&**api)
            .ignore();
        p.cmd("ZINCRBY")
            .arg(&self.traffic)
            .arg(1)
            .arg(&*wf.id)
            .ignore();
        for (k, v) in &deltas {
            p.cmd("HINCRBYFLOAT")
                .arg(&self.roles)
                .arg(format!("{role}:{k}"))
                .arg(*v)
                .ignore();
        }
        p.cmd("HSET")
            .arg(&self.roles)
            .arg(format!("{role}:last_seen"))
            .arg(now)
            .ignore();
        // Additions: sent once, never replayed after a lost reply.
        let (created, active): (i64, usize) = self
            .pool
            .query_once("workflow record", Op::Pipe(&p))
            .await?;
        self.joined(&wf.id, created, active).await
    }

    /// The workflow's hash, if it is active (not idle past the TTL).
    async fn fields(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<HashMap<String, String>>, StateError> {
        let mut p = redis::pipe();
        p.cmd("ZSCORE").arg(&self.active).arg(id);
        p.cmd("HGETALL").arg(self.hash(id));
        let (score, fields): (Option<f64>, HashMap<String, String>) =
            self.pool.query("workflow read", Op::Pipe(&p)).await?;
        Ok((self.live(score, now) && !fields.is_empty()).then_some(fields))
    }

    pub async fn status(
        &self,
        id: &str,
        detailed: bool,
        now: i64,
    ) -> Result<Option<Value>, StateError> {
        let Some(fields) = self.fields(id, now).await? else {
            return Ok(None);
        };
        let int = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as i64)
        };
        let mut agents: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        let mut totals = Vec::new();
        let mut workers: Vec<(&str, &str, u64)> = Vec::new();
        for (k, v) in &fields {
            if let Some(f) = k.strip_prefix("t:") {
                totals.push((f, v.as_str()));
            } else if let Some((a, f)) = k.strip_prefix("a:").and_then(|r| r.rsplit_once(':')) {
                agents.entry(a).or_default().push((f, v.as_str()));
            } else if let Some(label) = k.strip_prefix("w:") {
                let api = fields
                    .get(&format!("wid:{label}"))
                    .map_or("", String::as_str);
                workers.push((api, label, v.parse().unwrap_or(0)));
            }
        }
        // Most used first (Redis keeps no first-use order).
        workers.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(b.1)));
        let agents: Vec<(&str, Usage)> = agents
            .into_iter()
            .map(|(a, f)| (a, Usage::from_fields(f.into_iter())))
            .collect();
        let names: Vec<&str> = agents.iter().map(|(a, _)| *a).collect();
        let mut keys = vec![self.counts.clone(), self.due.clone()];
        keys.extend(names.iter().map(|a| self.queue(id, a)));
        let depths: Vec<usize> = self
            .pool
            .query(
                "workflow queue depths",
                Op::Cmd(&eval(DEPTHS, &keys, &[now.to_string()])),
            )
            .await?;
        let totals = Usage::from_fields(totals.into_iter());
        Ok(Some(
            StatusView {
                id,
                created_at: int("created_at").unwrap_or(now),
                last_activity: int("last_activity").unwrap_or(now),
                sharing: fields
                    .get("sharing")
                    .and_then(|s| Sharing::parse(s))
                    .unwrap_or_default(),
                priority: fields.get("priority").and_then(|v| v.parse().ok()),
                workers,
                agents: agents.iter().map(|(a, u)| (*a, u)).collect(),
                totals: &totals,
                depths: names
                    .iter()
                    .zip(depths)
                    .filter(|(_, d)| *d > 0)
                    .map(|(a, d)| (a.to_string(), d))
                    .collect(),
            }
            .json(detailed),
        ))
    }

    /// Active workflows, the lifetime counts, and usage per role.
    pub async fn totals(
        &self,
    ) -> Result<(usize, CountsSnapshot, BTreeMap<String, Usage>), StateError> {
        let mut p = redis::pipe();
        p.cmd("ZCARD").arg(&self.active);
        p.cmd("HGETALL").arg(&self.counts);
        p.cmd("HGETALL").arg(&self.roles);
        let (active, counts, roles): (usize, HashMap<String, i64>, HashMap<String, String>) =
            self.pool.query("workflow totals", Op::Pipe(&p)).await?;
        let n = |k: &str| counts.get(k).copied().unwrap_or(0).max(0) as u64;
        let snapshot = CountsSnapshot {
            created: n("created"),
            expired: n("expired"),
            evicted: n("evicted"),
            messages_sent: n("messages_sent"),
            messages_delivered: n("messages_delivered"),
            messages_expired: n("messages_expired"),
            messages_rejected: n("messages_rejected"),
            queued: n("queued"),
        };
        let mut by_role: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for (k, v) in &roles {
            if let Some((r, f)) = k.rsplit_once(':') {
                by_role.entry(r).or_default().push((f, v.as_str()));
            }
        }
        let roles = by_role
            .into_iter()
            .map(|(r, f)| (r.to_string(), Usage::from_fields(f.into_iter())))
            .collect();
        Ok((active, snapshot, roles))
    }

    /// The `n` workflows with the most requests.
    pub async fn top(&self, n: usize) -> Result<Vec<TopEntry>, StateError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("ZRANGE");
        c.arg(&self.traffic)
            .arg(0)
            .arg(n as i64 - 1)
            .arg("REV")
            .arg("WITHSCORES");
        let ids: Vec<(String, f64)> = self.pool.query("workflow top", Op::Cmd(&c)).await?;
        let mut p = redis::pipe();
        for (id, _) in &ids {
            p.cmd("HGETALL").arg(self.hash(id));
        }
        let hashes: Vec<HashMap<String, String>> = if ids.is_empty() {
            Vec::new()
        } else {
            self.pool.query("workflow top", Op::Pipe(&p)).await?
        };
        Ok(ids
            .into_iter()
            .zip(hashes)
            .map(|((id, requests), fields)| {
                let totals = Usage::from_fields(
                    fields
                        .iter()
                        .filter_map(|(k, v)| Some((k.strip_prefix("t:")?, v.as_str()))),
                );
                (id, requests as u64, agents_of(&fields).len(), totals)
            })
            .collect())
    }

    /// Queues `d` for its recipients, all or none (a full queue refuses the send).
    pub async fn send(
        &self,
        id: &Arc<str>,
        to: Recipients<'_>,
        d: &Draft,
        now: i64,
        ttl: i64,
    ) -> Result<Vec<(String, String, String)>, SendError> {
        let h = self.hash(id);
        // The workflow joins (or stays) active, and its sender is one of its agents.
        let mut p = redis::pipe();
        p.atomic();
        self.join(&mut p, id, d.from_agent.as_deref(), now);
        p.cmd("HGETALL").arg(&h);
        let (created, active, fields): (i64, usize, HashMap<String, String>) =
            self.pool.query("workflow send", Op::Pipe(&p)).await?;
        self.joined(id, created, active).await?;
        let sharing = fields
            .get("sharing")
            .and_then(|s| Sharing::parse(s))
            .unwrap_or_default();
        let agents: Vec<Arc<str>> = agents_of(&fields).into_iter().map(Arc::from).collect();
        let targets = match recipients(sharing, to, &agents, d.from_agent.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                self.count("messages_rejected").await;
                return Err(e);
            }
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let expires_at = now.saturating_add(ttl);
        let mut keys = vec![
            self.counts.clone(),
            self.due.clone(),
            self.active.clone(),
            h,
        ];
        let mut args = vec![
            now.to_string(),
            self.cfg.max_queue.to_string(),
            ttl.max(self.cfg.ttl_ms)
                .saturating_add(GRACE_MS)
                .to_string(),
            id.to_string(),
            self.key_ttl().to_string(),
            (now - self.cfg.ttl_ms).to_string(),
        ];
        // The recipients become agents of the workflow (broadcasts and status see them).
        args.extend(targets.iter().map(|a| a.to_string()));
        let mut out = Vec::new();
        for a in &targets {
            let m = Message {
                message_id: random_id("msg_"),
                from_agent: d.from_agent.clone(),
                kind: d.kind.clone(),
                payload: d.payload.clone(),
                created_at: rfc3339(now),
                expires_at: rfc3339(expires_at),
            };
            keys.push(self.queue(id, a));
            args.push(format!(
                "{expires_at:013}|{}",
                serde_json::to_string(&m).expect("a message serializes")
            ));
            out.push((a.to_string(), m.message_id, m.expires_at));
        }
        // Sent once: a replay after a lost reply would queue the messages twice.
        let answer: i64 = self
            .pool
            .query_once("workflow send", Op::Cmd(&eval(SEND, &keys, &args)))
            .await?;
        match answer {
            0 => Ok(out),
            -1 => Err(SendError::Ended),
            i => Err(SendError::Full(targets[i as usize - 1].to_string())),
        }
    }

    /// Up to `limit` of `agent`'s messages, oldest first, removed when `consume`.
    pub async fn receive(
        &self,
        id: &str,
        agent: &str,
        limit: usize,
        consume: bool,
        now: i64,
    ) -> Result<Option<Vec<Message>>, StateError> {
        let keys = [
            self.counts.clone(),
            self.due.clone(),
            self.active.clone(),
            self.hash(id),
            self.queue(id, agent),
        ];
        let args = [
            now.to_string(),
            limit.to_string(),
            u8::from(consume).to_string(),
            id.to_string(),
            (now - self.cfg.ttl_ms).to_string(),
            self.key_ttl().to_string(),
        ];
        // Sent once: a replay after a lost reply would consume the next messages too.
        let mut items: Vec<String> = self
            .pool
            .query_once("workflow receive", Op::Cmd(&eval(RECEIVE, &keys, &args)))
            .await?;
        if items.first().map(String::as_str) != Some("1") {
            return Ok(None);
        }
        items.remove(0);
        Ok(Some(
            items
                .iter()
                .filter_map(|m| serde_json::from_str(m.get(14..)?).ok())
                .collect(),
        ))
    }
}

impl From<StateError> for SendError {
    fn from(e: StateError) -> Self {
        SendError::Store(e.0)
    }
}
