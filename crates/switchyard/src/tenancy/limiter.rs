//! Enforcement: a request is checked against every scope it falls in (its key, its
//! tenant, the whole gateway) and admitted only if all of them have room; then every
//! scope is charged. In memory that is one lock; with Redis it is one Lua script, one
//! round trip, so replicas share one limit. Settlement (reconciling tokens with the
//! engine's usage, the budget, the concurrency slot) is off the request path: in memory
//! it is a lock, with Redis a queue drained by a task that pipelines many settlements
//! into one round trip.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::limits::{Limits, Quota, WINDOW_MS, gcra_quota, gcra_take, tighter};
use crate::state::Clock;
use crate::state::redis::{Op, Pool};

/// What a scope is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    Key,
    Tenant,
    Global,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::Tenant => "tenant",
            ScopeKind::Global => "global",
        }
    }
}

/// One scope a request is limited in.
#[derive(Clone, Debug)]
pub struct Scope {
    pub kind: ScopeKind,
    pub id: Arc<str>,
    pub limits: Arc<Limits>,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
    Budget,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
            LimitKind::Budget => "budget",
        }
    }

    fn from_code(c: i64) -> LimitKind {
        match c {
            1 => LimitKind::Requests,
            2 => LimitKind::Tokens,
            3 => LimitKind::Concurrency,
            _ => LimitKind::Budget,
        }
    }
}

/// The per-minute quotas left after a decision: the tightest over the scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

/// A refused request.
#[derive(Clone, Debug)]
pub struct Denied {
    pub kind: LimitKind,
    pub scope: ScopeKind,
    /// Milliseconds until it could pass (`None`: never, the cost being above the limit).
    pub retry_ms: Option<u64>,
    pub quotas: Quotas,
}

/// An admitted request's charge, to settle when it ends.
#[derive(Debug)]
pub struct Charge {
    pub scopes: Vec<Scope>,
    /// Tokens reserved at admission.
    pub reserved: u64,
    /// The concurrency slot's member (the request id) in Redis.
    pub member: String,
    /// Admitted by the in-memory limiter (Redis off, or down in `open` mode).
    pub local: bool,
}

/// What happens when Redis cannot be reached.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Enforce locally, each replica its share (`--rate-limit-replicas`).
    #[default]
    Open,
    /// Refuse limited requests (503) until Redis is back.
    Closed,
}

/// One scope's state in memory.
#[derive(Debug, Default)]
struct ScopeState {
    rpm_tat: f64,
    tpm_tat: f64,
    inflight: u64,
    /// The budget period's start, and the tokens used in it.
    budget_start: i64,
    budget_used: u64,
}

/// Limits enforced in this process.
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    /// Each limit divided by this (the share of one replica when Redis is down).
    divisor: u64,
    scopes: Mutex<HashMap<(ScopeKind, Arc<str>), ScopeState>>,
}

/// Scopes kept in memory before idle ones are dropped.
const PRUNE_ABOVE: usize = 16_384;

impl LocalLimiter {
    pub fn new(clock: Arc<dyn Clock>, divisor: u64) -> Self {
        LocalLimiter {
            clock,
            divisor: divisor.max(1),
            scopes: Mutex::new(HashMap::new()),
        }
    }

    fn limits(&self, s: &Scope) -> Limits {
        if self.divisor == 1 {
            Limits::clone(&s.limits)
        } else {
            s.limits.divided(self.divisor)
        }
    }

    /// Admits a request costing `cost` tokens in every scope, or says which refused it.
    pub fn acquire(&self, scopes: &[Scope], cost: u64) -> Result<Quotas, Denied> {
        let now_ms = self.clock.now_ms();
        let now = now_ms as f64;
        let mut map = self.scopes.lock().expect("limiter lock");
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, s| {
                s.inflight > 0 || s.rpm_tat > now || s.tpm_tat > now || s.budget_used > 0
            });
        }
        let mut quotas = Quotas::default();
        // Check every scope first, then charge them all: a refusal charges none.
        let mut plan: Vec<(f64, f64)> = Vec::with_capacity(scopes.len());
        for s in scopes {
            let l = self.limits(s);
            let st = map.entry((s.kind, s.id.clone())).or_default();
            let deny = |kind, retry: Option<f64>, quotas: Quotas| Denied {
                kind,
                scope: s.kind,
                retry_ms: retry.map(|r| r.ceil() as u64),
                quotas,
            };
            let mut rpm_tat = st.rpm_tat;
            if let Some(rpm) = l.rpm {
                match gcra_take(st.rpm_tat, now, rpm, 1) {
                    Ok(t) => {
                        rpm_tat = t;
                        quotas.requests = Some(tighter(quotas.requests, gcra_quota(t, now, rpm)));
                    }
                    Err(retry) => {
                        quotas.requests =
                            Some(tighter(quotas.requests, gcra_quota(st.rpm_tat, now, rpm)));
                        return Err(deny(LimitKind::Requests, retry, quotas));
                    }
                }
            }
            let mut tpm_tat = st.tpm_tat;
            if let Some(tpm) = l.tpm {
                match gcra_take(st.tpm_tat, now, tpm, cost) {
                    Ok(t) => {
                        tpm_tat = t;
                        quotas.tokens = Some(tighter(quotas.tokens, gcra_quota(t, now, tpm)));
                    }
                    Err(retry) => {
                        quotas.tokens =
                            Some(tighter(quotas.tokens, gcra_quota(st.tpm_tat, now, tpm)));
                        return Err(deny(LimitKind::Tokens, retry, quotas));
                    }
                }
            }
            if l.max_concurrent.is_some_and(|m| st.inflight >= m) {
                return Err(deny(LimitKind::Concurrency, Some(1000.0), quotas));
            }
            if let Some(budget) = l.token_budget {
                let (start, end) = l.budget_period.unwrap_or_default().window(now_ms);
                if st.budget_start != start {
                    st.budget_start = start;
                    st.budget_used = 0;
                }
                if st.budget_used >= budget {
                    return Err(deny(LimitKind::Budget, Some((end - now_ms) as f64), quotas));
                }
            }
            plan.push((rpm_tat, tpm_tat));
        }
        for (s, (rpm_tat, tpm_tat)) in scopes.iter().zip(plan) {
            let st = map.get_mut(&(s.kind, s.id.clone())).expect("checked above");
            st.rpm_tat = rpm_tat;
            st.tpm_tat = tpm_tat;
            st.inflight += 1;
        }
        Ok(quotas)
    }

    /// Settles a charge: tokens reconciled (`actual`, when the engine reported usage),
    /// the budget charged, the concurrency slot freed.
    pub fn settle(&self, charge: &Charge, actual: Option<u64>) {
        let used = actual.unwrap_or(charge.reserved);
        let now_ms = self.clock.now_ms();
        let mut map = self.scopes.lock().expect("limiter lock");
        for s in &charge.scopes {
            let l = self.limits(s);
            let Some(st) = map.get_mut(&(s.kind, s.id.clone())) else {
                continue;
            };
            st.inflight = st.inflight.saturating_sub(1);
            if let (Some(tpm), Some(actual)) = (l.tpm, actual) {
                let t = WINDOW_MS / tpm as f64;
                st.tpm_tat += (actual as f64 - charge.reserved as f64) * t;
            }
            if l.token_budget.is_some() {
                let (start, _) = l.budget_period.unwrap_or_default().window(now_ms);
                if st.budget_start != start {
                    st.budget_start = start;
                    st.budget_used = 0;
                }
                st.budget_used += used;
            }
        }
    }

    /// Adds tokens already used in the current budget period (read from the usage
    /// table at start, so a restart does not refill a budget).
    pub fn preload_budget(&self, scope: &Scope, used: u64) {
        let Some(period) = scope
            .limits
            .token_budget
            .map(|_| scope.limits.budget_period.unwrap_or_default())
        else {
            return;
        };
        let (start, _) = period.window(self.clock.now_ms());
        let mut map = self.scopes.lock().expect("limiter lock");
        let st = map.entry((scope.kind, scope.id.clone())).or_default();
        st.budget_start = start;
        st.budget_used = used;
    }
}

/// The Lua script that checks and charges every scope of a request at once. Per scope
/// `i` (0-based), KEYS `4i+1..4i+4` are its rpm TAT, tpm TAT, in-flight set and budget
/// counter; ARGV is `now, member, lease_ms, cost, n` then per scope `rpm, tpm,
/// max_concurrent, budget` (0: none). Returns `{ok, kind, scope, retry_ms, req_limit,
/// req_remaining, req_reset, tok_limit, tok_remaining, tok_reset}` (-1: no such limit).
const ACQUIRE_LUA: &str = r#"
local now = tonumber(ARGV[1])
local member = ARGV[2]
local lease = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local W = 60000
local q = {-1, -1, -1, -1, -1, -1}
local function quota(base, tat, limit)
  local t = W / limit
  local used = math.max(tat - now, 0)
  local rem = math.max(math.floor((W - used) / t + 1e-9), 0)
  local reset = math.ceil(used)
  if q[base] < 0 or rem < q[base + 1] or (rem == q[base + 1] and reset > q[base + 2]) then
    q[base] = limit; q[base + 1] = rem; q[base + 2] = reset
  end
end
local function deny(kind, i, retry)
  return {0, kind, i, retry, q[1], q[2], q[3], q[4], q[5], q[6]}
end
local new_r, new_t = {}, {}
for i = 0, n - 1 do
  local a = 6 + i * 4
  local k = i * 4
  local rpm, tpm, mc, bud = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm > 0 then
    local tat = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    local nt = math.max(tat, now) + W / rpm
    if nt - now > W + 1e-6 then
      quota(1, tat, rpm)
      return deny(1, i, math.ceil(nt - now - W))
    end
    new_r[i] = nt
    quota(1, nt, rpm)
  end
  if tpm > 0 then
    local tat = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
    if cost > tpm then
      quota(4, tat, tpm)
      return deny(2, i, -1)
    end
    local nt = math.max(tat, now) + cost * W / tpm
    if nt - now > W + 1e-6 then
      quota(4, tat, tpm)
      return deny(2, i, math.ceil(nt - now - W))
    end
    new_t[i] = nt
    quota(4, nt, tpm)
  end
  if mc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= mc then
      return deny(3, i, 1000)
    end
  end
  if bud > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 4]) or '0')
    if used >= bud then
      return deny(4, i, 1000)
    end
  end
end
for i = 0, n - 1 do
  local k = i * 4
  if new_r[i] then redis.call('SET', KEYS[k + 1], tostring(new_r[i]), 'PX', math.ceil(new_r[i] - now) + 1000) end
  if new_t[i] then redis.call('SET', KEYS[k + 2], tostring(new_t[i]), 'PX', math.ceil(new_t[i] - now) + 1000) end
  if tonumber(ARGV[8 + i * 4]) > 0 then
    redis.call('ZADD', KEYS[k + 3], now + lease, member)
    redis.call('PEXPIRE', KEYS[k + 3], lease)
  end
end
return {1, 0, -1, 0, q[1], q[2], q[3], q[4], q[5], q[6]}
"#;

/// Limits enforced in Redis, shared by every replica that uses it.
pub struct RedisLimiter {
    pool: Arc<Pool>,
    clock: Arc<dyn Clock>,
    /// The script's SHA1 once loaded (`SCRIPT LOAD`), sent with `EVALSHA`.
    sha: tokio::sync::RwLock<Option<String>>,
    /// How long a concurrency slot lives if its settlement never comes (a replica died).
    lease_ms: u64,
    settle_tx: tokio::sync::mpsc::UnboundedSender<(Charge, Option<u64>)>,
}

/// Settlements pipelined in one round trip at most.
const SETTLE_BATCH: usize = 256;

impl RedisLimiter {
    /// The limiter and the task that applies settlements (spawn it).
    pub fn new(
        pool: Arc<Pool>,
        clock: Arc<dyn Clock>,
        lease: Duration,
    ) -> (
        Arc<Self>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Charge, Option<u64>)>();
        let me = Arc::new(RedisLimiter {
            pool: pool.clone(),
            clock: clock.clone(),
            sha: tokio::sync::RwLock::new(None),
            lease_ms: lease.as_millis().max(1000) as u64,
            settle_tx: tx,
        });
        let worker = {
            let me = Arc::downgrade(&me);
            async move {
                let mut batch = Vec::with_capacity(SETTLE_BATCH);
                while rx.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
                    let Some(me) = me.upgrade() else { return };
                    me.apply_settlements(&batch).await;
                    batch.clear();
                }
            }
        };
        (me, worker)
    }

    fn key(&self, what: &str, s: &Scope) -> String {
        self.pool
            .key(&format!("rl:{what}:{}:{}", s.kind.as_str(), s.id))
    }

    fn budget_key(&self, s: &Scope, now_ms: i64) -> (String, i64) {
        let (start, end) = s.limits.budget_period.unwrap_or_default().window(now_ms);
        (self.key(&format!("budget:{start}"), s), end)
    }

    /// Admits a request in Redis (`Err(Err(_))`: Redis failed).
    pub async fn acquire(
        &self,
        scopes: &[Scope],
        cost: u64,
        member: &str,
    ) -> Result<Result<Quotas, Denied>, crate::state::StateError> {
        let now = self.clock.now_ms();
        let mut keys = Vec::with_capacity(scopes.len() * 4);
        let mut args: Vec<String> = vec![
            now.to_string(),
            member.to_string(),
            self.lease_ms.to_string(),
            cost.to_string(),
            scopes.len().to_string(),
        ];
        for s in scopes {
            keys.push(self.key("rpm", s));
            keys.push(self.key("tpm", s));
            keys.push(self.key("inflight", s));
            keys.push(self.budget_key(s, now).0);
            let l = &s.limits;
            for v in [l.rpm, l.tpm, l.max_concurrent, l.token_budget] {
                args.push(v.unwrap_or(0).to_string());
            }
        }
        let reply: Vec<i64> = self.eval(&keys, &args).await?;
        if reply.len() != 10 {
            return Err(crate::state::StateError(
                "rate limit script: bad reply".into(),
            ));
        }
        let quota = |b: usize| {
            (reply[b] >= 0).then(|| Quota {
                limit: reply[b] as u64,
                remaining: reply[b + 1].max(0) as u64,
                reset_ms: reply[b + 2].max(0) as u64,
            })
        };
        let quotas = Quotas {
            requests: quota(4),
            tokens: quota(7),
        };
        if reply[0] == 1 {
            Ok(Ok(quotas))
        } else {
            let i = (reply[2].max(0) as usize).min(scopes.len().saturating_sub(1));
            let kind = LimitKind::from_code(reply[1]);
            let retry_ms = match (kind, scopes.get(i)) {
                // A spent budget refills when its period ends (the counter outlives it).
                (LimitKind::Budget, Some(s)) => {
                    Some(self.budget_key(s, now).1.saturating_sub(now).max(1000) as u64)
                }
                _ => (reply[3] >= 0).then_some(reply[3] as u64),
            };
            Ok(Err(Denied {
                kind,
                scope: scopes.get(i).map_or(ScopeKind::Global, |s| s.kind),
                retry_ms,
                quotas,
            }))
        }
    }

    /// `EVALSHA`, loading the script first (and again after a Redis restart).
    async fn eval(
        &self,
        keys: &[String],
        args: &[String],
    ) -> Result<Vec<i64>, crate::state::StateError> {
        for _ in 0..2 {
            // Bound first: a read guard in the match would be held into the write below.
            let loaded = self.sha.read().await.clone();
            let sha = match loaded {
                Some(s) => s,
                None => {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(ACQUIRE_LUA);
                    let sha: String = self.pool.query("SCRIPT LOAD", Op::Cmd(&load)).await?;
                    *self.sha.write().await = Some(sha.clone());
                    sha
                }
            };
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&sha).arg(keys.len()).arg(keys).arg(args);
            match self
                .pool
                .query_once::<Vec<i64>>("EVALSHA", Op::Cmd(&cmd))
                .await
            {
                Err(e) if e.0.contains("NOSCRIPT") => {
                    *self.sha.write().await = None;
                }
                other => return other,
            }
        }
        Err(crate::state::StateError(
            "rate limit script could not be loaded".into(),
        ))
    }

    /// Queues a settlement (applied by the settlement task).
    pub fn settle(&self, charge: Charge, actual: Option<u64>) {
        let _ = self.settle_tx.send((charge, actual));
    }

    async fn apply_settlements(&self, batch: &[(Charge, Option<u64>)]) {
        let now = self.clock.now_ms();
        let mut pipe = redis::pipe();
        for (charge, actual) in batch {
            let used = actual.unwrap_or(charge.reserved);
            for s in &charge.scopes {
                let l = &s.limits;
                if l.max_concurrent.is_some() {
                    pipe.cmd("ZREM")
                        .arg(self.key("inflight", s))
                        .arg(&charge.member)
                        .ignore();
                }
                if let (Some(tpm), Some(actual)) = (l.tpm, actual) {
                    let delta = (*actual as f64 - charge.reserved as f64) * WINDOW_MS / tpm as f64;
                    if delta != 0.0 {
                        let k = self.key("tpm", s);
                        pipe.cmd("INCRBYFLOAT").arg(&k).arg(delta).ignore();
                        pipe.cmd("PEXPIRE")
                            .arg(&k)
                            .arg(2 * WINDOW_MS as u64)
                            .ignore();
                    }
                }
                if l.token_budget.is_some() && used > 0 {
                    let (k, end) = self.budget_key(s, now);
                    pipe.cmd("INCRBY").arg(&k).arg(used).ignore();
                    pipe.cmd("PEXPIREAT").arg(&k).arg(end + 3_600_000).ignore();
                }
            }
        }
        // Nothing to settle (only request limits): Redis answers an empty pipeline with
        // an error, which would mark it down.
        if pipe.cmd_iter().next().is_none() {
            return;
        }
        if let Err(e) = self
            .pool
            .query_once::<()>("settle limits", Op::Pipe(&pipe))
            .await
        {
            // Concurrency slots expire with their lease; tokens stay as reserved.
            tracing::debug!(error = %e, "rate limit settlements lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::ManualClock;
    use std::sync::atomic::AtomicI64;

    fn scope(kind: ScopeKind, id: &str, limits: Limits) -> Scope {
        Scope {
            kind,
            id: id.into(),
            limits: Arc::new(limits),
        }
    }

    fn charge(scopes: &[Scope], reserved: u64) -> Charge {
        Charge {
            scopes: scopes.to_vec(),
            reserved,
            member: "r".into(),
            local: true,
        }
    }

    #[test]
    fn every_scope_must_have_room_and_a_refusal_charges_none() {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
        let lim = LocalLimiter::new(clock.clone(), 1);
        let key = scope(
            ScopeKind::Key,
            "k",
            Limits {
                rpm: Some(10),
                ..Default::default()
            },
        );
        let tenant = scope(
            ScopeKind::Tenant,
            "t",
            Limits {
                rpm: Some(2),
                ..Default::default()
            },
        );
        let both = [key.clone(), tenant.clone()];
        let q = lim.acquire(&both, 0).unwrap();
        assert_eq!(q.requests.unwrap().remaining, 1, "the tenant's is tighter");
        lim.acquire(&both, 0).unwrap();
        let d = lim.acquire(&both, 0).unwrap_err();
        assert_eq!((d.kind, d.scope), (LimitKind::Requests, ScopeKind::Tenant));
        assert_eq!(d.retry_ms, Some(30_000));
        // The refused request did not use the key's limit.
        let only_key = [key];
        assert_eq!(
            lim.acquire(&only_key, 0)
                .unwrap()
                .requests
                .unwrap()
                .remaining,
            7
        );
    }

    #[test]
    fn tokens_are_reserved_then_reconciled() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let lim = LocalLimiter::new(clock, 1);
        let s = [scope(
            ScopeKind::Tenant,
            "t",
            Limits {
                tpm: Some(1000),
                ..Default::default()
            },
        )];
        let q = lim.acquire(&s, 800).unwrap();
        assert_eq!(q.tokens.unwrap().remaining, 200);
        assert_eq!(lim.acquire(&s, 300).unwrap_err().kind, LimitKind::Tokens);
        // The engine used 100 of the 800 reserved: 700 come back.
        lim.settle(&charge(&s, 800), Some(100));
        assert_eq!(lim.acquire(&s, 300).unwrap().tokens.unwrap().remaining, 600);
        let d = lim.acquire(&s, 2000).unwrap_err();
        assert_eq!(d.retry_ms, None, "more than the whole limit never fits");
    }

    #[test]
    fn concurrency_and_budget_hold_until_released_or_renewed() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let lim = LocalLimiter::new(clock.clone(), 1);
        let s = [scope(
            ScopeKind::Tenant,
            "t",
            Limits {
                max_concurrent: Some(1),
                token_budget: Some(50),
                budget_period: Some(crate::tenancy::limits::Period::Hour),
                ..Default::default()
            },
        )];
        lim.acquire(&s, 10).unwrap();
        assert_eq!(
            lim.acquire(&s, 10).unwrap_err().kind,
            LimitKind::Concurrency
        );
        lim.settle(&charge(&s, 10), Some(60));
        let d = lim.acquire(&s, 10).unwrap_err();
        assert_eq!(d.kind, LimitKind::Budget);
        assert_eq!(d.retry_ms, Some(3_600_000));
        clock.advance(3_600_000);
        assert!(lim.acquire(&s, 10).is_ok(), "a new hour, a new budget");
    }

    #[test]
    fn a_replicas_share_is_its_part_of_each_limit() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let lim = LocalLimiter::new(clock, 4);
        let s = [scope(
            ScopeKind::Global,
            "",
            Limits {
                rpm: Some(8),
                ..Default::default()
            },
        )];
        lim.acquire(&s, 0).unwrap();
        lim.acquire(&s, 0).unwrap();
        assert!(lim.acquire(&s, 0).is_err());
    }
}
