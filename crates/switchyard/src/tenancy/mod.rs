//! Tenancy (docs/tenancy.md): who a request is ([`Caller`]: its tenant and key), the
//! limits it is held to, what it used, and which stored objects it may see.
//!
//! - [`directory`]: tenants and keys (stored hashed, cached, kept current by polling).
//! - [`limits`] and [`limiter`]: requests and tokens per minute, concurrency and token
//!   budgets per key, tenant and gateway, in memory or in Redis.
//! - [`usage`]: counts per tenant, key, model and hour, written in batches.
//!
//! The pipeline's `admit` phase authenticates ([`Tenancy::authenticate`]); once the
//! model is known the request is checked against its limits ([`Tenancy::admit`]),
//! and its [`Ticket`] settles when the response ends.

pub mod directory;
pub mod limiter;
pub mod limits;
pub mod usage;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::error::ApiError;
use crate::metrics::{LimitLabels, Metrics, ReasonLabel, TenantLabels, TenantTokenLabels};
use crate::state::Clock;
use directory::{ApiKey, Directory, Source, Tenant};
use limiter::{
    Charge, Denied, LimitKind, LocalLimiter, OnStoreError, Quotas, RedisLimiter, Scope, ScopeKind,
};
use limits::{Limits, reset_text};

/// The tenant of requests when no key is configured, and of `--api-key`.
pub const DEFAULT_TENANT: &str = "default";

/// How a tenant's object id is kept where every tenant's ids share one namespace
/// (sessions, workflows, users): the `default` tenant's as its client names it,
/// another's as `owner` + `sep` + `id`. `sep` is a character no client id (and no tenant
/// id) may hold, so the prefix cannot be forged.
pub fn scoped(owner: &str, sep: char, id: &str) -> String {
    if owner == DEFAULT_TENANT {
        id.to_string()
    } else {
        format!("{owner}{sep}{id}")
    }
}

/// The id `owner`'s client knows a kept id by, or `None` when it is another tenant's.
pub fn unscoped<'a>(owner: &str, sep: char, kept: &'a str) -> Option<&'a str> {
    if owner == DEFAULT_TENANT {
        (!kept.contains(sep)).then_some(kept)
    } else {
        kept.strip_prefix(owner)?.strip_prefix(sep)
    }
}

/// Who sent a request.
#[derive(Debug)]
pub struct Caller {
    pub tenant: Arc<Tenant>,
    /// The stored key it used (none: a static key, or no key needed).
    pub key: Option<Arc<ApiKey>>,
    /// The key as usage names it: its id, `static-<8 hex of its hash>`, or empty.
    pub key_label: Arc<str>,
    /// The gateway's own request (a classifier's call): no limits apply.
    pub internal: bool,
}

impl Caller {
    /// The tenant whose stored objects the caller sees.
    pub fn owner(&self) -> &str {
        &self.tenant.id
    }

    /// Whether the caller may use `model`: it is in the key's and the tenant's
    /// `allowed_models`, where they are set.
    pub fn may_use(&self, model: &str) -> bool {
        let ok = |list: Option<&[String]>| list.is_none_or(|l| l.iter().any(|m| m == model));
        ok(self.tenant.allowed_models.as_deref())
            && ok(self.key.as_ref().and_then(|k| k.allowed_models.as_deref()))
    }

    /// The models the caller may use, when restricted.
    pub fn allowed_models(&self) -> Option<Vec<String>> {
        let t = self.tenant.allowed_models.as_deref();
        let k = self.key.as_ref().and_then(|k| k.allowed_models.as_deref());
        match (t, k) {
            (None, None) => None,
            (Some(l), None) | (None, Some(l)) => Some(l.to_vec()),
            (Some(t), Some(k)) => Some(k.iter().filter(|m| t.contains(m)).cloned().collect()),
        }
    }
}

/// Tenancy settings.
#[derive(Clone, Debug)]
pub struct TenancyConfig {
    /// Limits of the whole gateway (every request).
    pub global: Limits,
    pub on_store_error: OnStoreError,
    /// Replicas sharing the limits: each enforces its share when Redis is down.
    pub replicas: u64,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// Failed authentications a client address may make per minute (0: no limit).
    pub auth_failures_per_minute: u32,
    /// How long a Redis concurrency slot outlives a replica that never settled it.
    pub slot_lease: Duration,
}

/// Failed authentications per client address, in fixed one-minute windows.
struct Lockout {
    limit: u32,
    by_addr: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl Lockout {
    /// Milliseconds until `addr` may try again, when it is locked out.
    fn locked(&self, addr: IpAddr, now: i64) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let map = self.by_addr.lock().expect("lockout lock");
        let (window, n) = *map.get(&addr)?;
        let end = window + 60_000;
        (now < end && n >= self.limit).then(|| (end - now) as u64)
    }

    fn failed(&self, addr: IpAddr, now: i64) {
        if self.limit == 0 {
            return;
        }
        let mut map = self.by_addr.lock().expect("lockout lock");
        if map.len() > 65_536 {
            map.retain(|_, (w, _)| now < *w + 60_000);
        }
        let e = map.entry(addr).or_insert((now, 0));
        if now >= e.0 + 60_000 {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// Keys, tenants, limits and usage.
pub struct Tenancy {
    pub directory: Directory,
    /// Limits in this process: all of them without Redis; this replica's share when
    /// Redis is down (in `open` mode).
    local: LocalLimiter,
    redis: Option<Arc<RedisLimiter>>,
    global: Arc<Limits>,
    pub usage: usage::Usage,
    lockout: Lockout,
    cfg: TenancyConfig,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// When Redis failures were last logged (one line per 10 s at most).
    store_error_logged: AtomicI64,
    /// The caller of every request when no key is configured and `default` is defined
    /// nowhere.
    anonymous: Arc<Caller>,
    /// Tenant ids given their own metrics label (the rest are `other`).
    labelled: Mutex<std::collections::HashSet<Arc<str>>>,
    /// Random per process, and a count: the names of this replica's concurrency slots.
    replica_nonce: u64,
    slots: std::sync::atomic::AtomicU64,
}

/// Tenants with a metrics label of their own at most.
const MAX_TENANT_LABELS: usize = 200;

impl Tenancy {
    /// Tenancy over `directory`; with `redis`, limits are shared through it (the
    /// returned future applies settlements: spawn it).
    pub fn new(
        directory: Directory,
        cfg: TenancyConfig,
        redis: Option<Arc<crate::state::redis::Pool>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> (
        Arc<Tenancy>,
        Option<impl std::future::Future<Output = ()> + Send + 'static>,
    ) {
        let (redis, worker) = match redis {
            Some(pool) => {
                let (l, w) = RedisLimiter::new(pool, clock.clone(), cfg.slot_lease);
                (Some(l), Some(w))
            }
            None => (None, None),
        };
        let divisor = if redis.is_some() { cfg.replicas } else { 1 };
        let anonymous = Arc::new(Caller {
            tenant: Arc::new(Tenant::implicit(DEFAULT_TENANT)),
            key: None,
            key_label: Arc::from(""),
            internal: false,
        });
        let t = Tenancy {
            local: LocalLimiter::new(clock.clone(), divisor),
            redis,
            global: Arc::new(cfg.global.clone()),
            usage: usage::Usage::default(),
            lockout: Lockout {
                limit: cfg.auth_failures_per_minute,
                by_addr: Mutex::default(),
            },
            cfg,
            clock,
            metrics,
            store_error_logged: AtomicI64::new(i64::MIN),
            anonymous,
            labelled: Mutex::default(),
            replica_nonce: {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).expect("the OS random source");
                u64::from_le_bytes(b)
            },
            slots: std::sync::atomic::AtomicU64::new(0),
            directory,
        };
        (Arc::new(t), worker)
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn tenant_or_implicit(&self, id: &str) -> Arc<Tenant> {
        self.directory
            .tenant(id)
            .unwrap_or_else(|| Arc::new(Tenant::implicit(id)))
    }

    /// The caller of an issued key (`id` parsed from `token`), if it verifies.
    async fn stored_caller(&self, id: &str, token: &str) -> Result<Option<Arc<Caller>>, ApiError> {
        let key = self.directory.key(id).await.map_err(|e| {
            tracing::warn!(error = %e, "API key lookup failed");
            ApiError::unavailable("auth_unavailable", "Keys cannot be checked right now", 1)
        })?;
        let hash = directory::key_hash(token);
        Ok(key.filter(|k| self.directory.verify(k, &hash)).map(|key| {
            Arc::new(Caller {
                tenant: self.tenant_or_implicit(&key.tenant),
                key_label: key.id.clone(),
                key: Some(key),
                internal: false,
            })
        }))
    }

    /// Who sent a request with these headers from `addr`: the `default` tenant when no
    /// key is configured, else the owner of its key (401 without a valid one; 429 for an
    /// address that failed too often in the last minute).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        addr: Option<IpAddr>,
    ) -> Result<Arc<Caller>, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !self.directory.auth_required() {
            // A key of ours is honoured even so: one issued through another replica
            // moments ago, before this replica's poll saw it, must not pass as `default`.
            // An id nobody issued costs a database read: counted as a failed
            // authentication, so an address gets a bounded number of them (then its
            // keys of this form are refused, as where keys are required).
            if let (Some(id), Some(t)) = (token.and_then(directory::key_id), token) {
                let now = self.clock.now_ms();
                if let Some(wait) = addr.and_then(|a| self.lockout.locked(a, now)) {
                    return Err(locked_out(wait));
                }
                if let Some(c) = self.stored_caller(id, t).await? {
                    return Ok(c);
                }
                if let Some(a) = addr {
                    self.lockout.failed(a, now);
                }
            }
            // `default` as it stands now (the admin API may have given it limits).
            return Ok(match self.directory.tenant(DEFAULT_TENANT) {
                None => self.anonymous.clone(),
                Some(tenant) => Arc::new(Caller {
                    tenant,
                    key: None,
                    key_label: Arc::from(""),
                    internal: false,
                }),
            });
        }
        let now = self.clock.now_ms();
        if let Some(wait) = addr.and_then(|a| self.lockout.locked(a, now)) {
            self.metrics
                .auth_failures
                .get_or_create(&ReasonLabel {
                    reason: "locked_out",
                })
                .inc();
            return Err(locked_out(wait));
        }
        if let Some(token) = token {
            if let Some(id) = directory::key_id(token) {
                if let Some(c) = self.stored_caller(id, token).await? {
                    return Ok(c);
                }
            } else if let Some((tenant, hash)) = {
                let hash = directory::key_hash(token);
                self.directory.static_key(&hash).map(|t| (t, hash))
            } {
                let label: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
                return Ok(Arc::new(Caller {
                    tenant: self.tenant_or_implicit(&tenant),
                    key: None,
                    key_label: Arc::from(format!("static-{label}")),
                    internal: false,
                }));
            }
        }
        if let Some(a) = addr {
            self.lockout.failed(a, now);
        }
        self.metrics
            .auth_failures
            .get_or_create(&ReasonLabel {
                reason: "invalid_key",
            })
            .inc();
        self.metrics.reject("unauthorized");
        Err(ApiError::unauthorized())
    }

    /// The caller the gateway acts as for `tenant`'s stored work (a response's engine
    /// calls, which may run after the client left): the tenant's limits and usage.
    pub fn on_behalf_of(&self, tenant: &str) -> Arc<Caller> {
        Arc::new(Caller {
            tenant: self.tenant_or_implicit(tenant),
            key: None,
            key_label: Arc::from(""),
            internal: false,
        })
    }

    /// The caller of the gateway's own requests (a classifier's calls to the fleet,
    /// made for a request already admitted): counted as tenant `_gateway`, unlimited.
    pub fn internal(&self) -> Arc<Caller> {
        Arc::new(Caller {
            tenant: Arc::new(Tenant::implicit("_gateway")),
            key: None,
            key_label: Arc::from(""),
            internal: true,
        })
    }

    /// The scopes `caller`'s requests are limited in.
    fn scopes(&self, caller: &Caller) -> Vec<Scope> {
        let mut out = Vec::new();
        if caller.internal {
            return out;
        }
        if let Some(k) = &caller.key
            && let Some(l) = k.limits.as_ref().filter(|l| !l.is_empty())
        {
            out.push(Scope {
                kind: ScopeKind::Key,
                id: k.id.clone(),
                limits: l.clone(),
            });
        }
        if !caller.tenant.limits.is_empty() {
            out.push(Scope {
                kind: ScopeKind::Tenant,
                id: caller.tenant.id.clone(),
                limits: caller.tenant.limits.clone(),
            });
        }
        if !self.global.is_empty() {
            out.push(Scope {
                kind: ScopeKind::Global,
                id: Arc::from(""),
                limits: self.global.clone(),
            });
        }
        out
    }

    /// The tokens reserved for a request: its prompt's estimate plus the completion it
    /// may ask for (docs/tenancy.md).
    pub fn estimate(&self, prompt_bytes: usize, max_tokens: Option<u64>) -> u64 {
        (prompt_bytes as u64).div_ceil(4) + max_tokens.unwrap_or(self.cfg.default_max_tokens)
    }

    /// The metrics label of a tenant.
    pub fn label(&self, tenant: &Tenant) -> Arc<str> {
        if tenant.source == Source::Implicit && &*tenant.id != DEFAULT_TENANT {
            return Arc::from("other");
        }
        let mut l = self.labelled.lock().expect("labels lock");
        if l.contains(&tenant.id) || l.len() < MAX_TENANT_LABELS {
            l.insert(tenant.id.clone());
            tenant.id.clone()
        } else {
            Arc::from("other")
        }
    }

    /// Checks `caller`'s request for `model`, costing an estimated `cost` tokens,
    /// against its model list and every limit it falls under; the ticket to settle it
    /// with, or the refusal (carrying the `x-ratelimit-*` headers).
    pub async fn admit(
        self: &Arc<Self>,
        caller: &Arc<Caller>,
        model: &str,
        cost: u64,
    ) -> Result<Ticket, ApiError> {
        if !caller.may_use(model) {
            // Answered as an unknown model, so a tenant learns nothing of other models.
            return Err(ApiError::model_not_found(
                model,
                &caller.allowed_models().unwrap_or_default(),
            ));
        }
        let scopes = self.scopes(caller);
        if scopes.is_empty() {
            return Ok(Ticket::new(self, caller, None, Quotas::default()));
        }
        // The request's concurrency slot in Redis: unique to this admission (never the
        // client's request id, which a client could repeat to share one slot).
        let member = format!(
            "{:016x}{:x}",
            self.replica_nonce,
            self.slots.fetch_add(1, Ordering::Relaxed)
        );
        let (decision, local) = match &self.redis {
            None => (self.local.acquire(&scopes, cost), true),
            Some(r) => match r.acquire(&scopes, cost, &member).await {
                Ok(d) => (d, false),
                Err(e) => {
                    self.metrics.rate_limit_store_errors.inc();
                    let now = self.clock.now_ms();
                    let last = self.store_error_logged.load(Ordering::Relaxed);
                    if now.saturating_sub(last) >= 10_000
                        && self
                            .store_error_logged
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(error = %e, mode = ?self.cfg.on_store_error, "rate limits cannot reach Redis");
                    }
                    match self.cfg.on_store_error {
                        OnStoreError::Open => (self.local.acquire(&scopes, cost), true),
                        OnStoreError::Closed => {
                            return Err(ApiError::unavailable(
                                "rate_limit_unavailable",
                                "Limits cannot be checked right now",
                                1,
                            ));
                        }
                    }
                }
            },
        };
        match decision {
            Ok(quotas) => {
                let charge = Charge {
                    scopes,
                    reserved: cost,
                    member,
                    local,
                };
                Ok(Ticket::new(self, caller, Some(charge), quotas))
            }
            Err(d) => Err(self.refusal(caller, d)),
        }
    }

    fn refusal(&self, caller: &Caller, d: Denied) -> ApiError {
        self.metrics
            .rate_limited
            .get_or_create(&LimitLabels {
                tenant: self.label(&caller.tenant),
                limit: d.kind.as_str(),
                scope: d.scope.as_str(),
            })
            .inc();
        self.metrics.reject("rate_limited");
        let who = d.scope.as_str();
        let (code, message) = match (d.kind, d.retry_ms) {
            (LimitKind::Tokens, None) => (
                "tokens_exceed_limit",
                format!(
                    "The request needs more tokens than the {who}'s whole per-minute limit; lower max_tokens or shorten the prompt"
                ),
            ),
            (LimitKind::Requests, _) => (
                "rate_limit_exceeded",
                format!("Rate limit reached: the {who}'s requests per minute"),
            ),
            (LimitKind::Tokens, _) => (
                "rate_limit_exceeded",
                format!("Rate limit reached: the {who}'s tokens per minute"),
            ),
            (LimitKind::Concurrency, _) => (
                "concurrency_limit_exceeded",
                format!("Too many requests in flight for the {who}"),
            ),
            (LimitKind::Budget, _) => (
                "budget_exceeded",
                format!("The {who}'s token budget for this period is used up"),
            ),
        };
        let retry = d.retry_ms.unwrap_or(60_000).div_ceil(1000).max(1);
        let mut e = ApiError::limited(code, message, retry);
        e.headers = rate_headers(&d.quotas);
        e
    }

    /// Counts a request that ended, for usage and metrics.
    fn account(
        &self,
        caller: &Caller,
        model: &Arc<str>,
        usage: Option<&TokenUsage>,
        outcome: &'static str,
    ) {
        let tenant = self.label(&caller.tenant);
        self.metrics
            .tenant_requests
            .get_or_create(&TenantLabels {
                tenant: tenant.clone(),
                outcome,
            })
            .inc();
        let u = usage.copied().unwrap_or_default();
        for (kind, v) in [
            ("input", u.input),
            ("cached", u.cached),
            ("output", u.output),
        ] {
            if v > 0 {
                self.metrics
                    .tenant_tokens
                    .get_or_create(&TenantTokenLabels {
                        tenant: tenant.clone(),
                        kind,
                    })
                    .inc_by(v);
            }
        }
        self.usage.record(
            &caller.tenant.id,
            &caller.key_label,
            model,
            self.clock.now_ms(),
            usage::Counts {
                requests: 1,
                input: u.input,
                cached: u.cached,
                output: u.output,
                errors: u64::from(outcome != "ok"),
            },
        );
    }

    /// Counts a request refused before it reached an engine.
    pub fn refused(&self, caller: &Caller, model: &Arc<str>, limited: bool) {
        self.account(
            caller,
            model,
            None,
            if limited { "limited" } else { "error" },
        );
    }

    /// Reads, at start, what budgets used so far this period (in-memory limits only:
    /// Redis keeps its own counts).
    pub async fn preload_budgets(&self) {
        if self.redis.is_some() {
            return;
        }
        let store = self.directory.store().clone();
        let mut scopes = Vec::new();
        for t in self.directory.tenants() {
            if t.limits.token_budget.is_some() {
                scopes.push((
                    Scope {
                        kind: ScopeKind::Tenant,
                        id: t.id.clone(),
                        limits: t.limits.clone(),
                    },
                    None,
                ));
            }
        }
        for k in self.directory.keys(None) {
            if let Some(l) = k.limits.as_ref().filter(|l| l.token_budget.is_some()) {
                scopes.push((
                    Scope {
                        kind: ScopeKind::Key,
                        id: k.id.clone(),
                        limits: l.clone(),
                    },
                    Some(k.tenant.clone()),
                ));
            }
        }
        for (s, tenant) in scopes {
            let (start, _) = s
                .limits
                .budget_period
                .unwrap_or_default()
                .window(self.clock.now_ms());
            let (t, k) = match &tenant {
                Some(t) => (t.as_ref(), Some(&*s.id)),
                None => (&*s.id, None),
            };
            match usage::used_since(&store, t, k, start / 1000).await {
                Ok(used) => self.local.preload_budget(&s, used),
                Err(e) => {
                    tracing::warn!(error = %e, "token budgets were not read from the usage table")
                }
            }
        }
    }

    /// Background upkeep: directory changes every 250 ms, usage written every `flush`.
    pub async fn run(self: Arc<Self>, flush: Duration, shutdown: crate::shutdown::Shutdown) {
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut write = tokio::time::interval(flush);
        write.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing: u64 = 0;
        loop {
            tokio::select! {
                _ = poll.tick() => match self.directory.poll().await {
                    // Logged when it starts failing, then once a minute while it does.
                    Err(e) => {
                        if failing.is_multiple_of(240) {
                            tracing::warn!(error = %e, polls_failed = failing + 1, "tenancy changes not read");
                        }
                        failing += 1;
                    }
                    Ok(_) => {
                        if failing > 0 {
                            tracing::info!(polls_failed = failing, "tenancy changes read again");
                        }
                        failing = 0;
                    }
                },
                _ = write.tick() => self.flush_usage().await,
                _ = shutdown.cancelled() => {
                    self.flush_usage().await;
                    return;
                }
            }
        }
    }

    pub async fn flush_usage(&self) {
        if let Err(e) = self.usage.flush(self.directory.store()).await {
            tracing::warn!(error = %e, "usage not written (kept for the next flush)");
        }
    }
}

/// Tokens a response used, from the engine's `usage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
}

/// An admitted request's tenancy: its charge and quotas, settled when it ends.
pub struct Ticket {
    tenancy: Arc<Tenancy>,
    pub caller: Arc<Caller>,
    charge: Option<Charge>,
    pub quotas: Quotas,
    done: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("tenant", &self.caller.tenant.id)
            .finish()
    }
}

impl Ticket {
    fn new(
        tenancy: &Arc<Tenancy>,
        caller: &Arc<Caller>,
        charge: Option<Charge>,
        quotas: Quotas,
    ) -> Ticket {
        Ticket {
            tenancy: tenancy.clone(),
            caller: caller.clone(),
            charge,
            quotas,
            done: false,
        }
    }

    /// The `x-ratelimit-*` headers of the response.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        rate_headers(&self.quotas)
    }

    /// Settles the request: tokens reconciled with `usage` (kept as reserved when the
    /// engine reported none), the budget charged, slots freed, usage counted.
    pub fn finish(mut self, model: &Arc<str>, usage: Option<TokenUsage>, ok: bool) {
        self.done = true;
        let actual = usage.map(|u| u.input + u.output);
        self.release(actual);
        self.tenancy.account(
            &self.caller,
            model,
            usage.as_ref(),
            if ok { "ok" } else { "error" },
        );
    }

    fn release(&mut self, actual: Option<u64>) {
        if let Some(charge) = self.charge.take() {
            match (&self.tenancy.redis, charge.local) {
                (Some(r), false) => r.settle(charge, actual),
                _ => self.tenancy.local.settle(&charge, actual),
            }
        }
    }
}

impl Drop for Ticket {
    /// A request dropped before it was answered used no tokens.
    fn drop(&mut self) {
        if !self.done {
            self.release(Some(0));
        }
    }
}

/// The answer to an address locked out for `wait_ms` more.
fn locked_out(wait_ms: u64) -> ApiError {
    ApiError::limited(
        "too_many_auth_failures",
        "Too many failed authentications from this address; try again later",
        wait_ms.div_ceil(1000),
    )
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for `q`.
pub fn rate_headers(q: &Quotas) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (what, quota) in [("requests", q.requests), ("tokens", q.tokens)] {
        let Some(quota) = quota else { continue };
        for (name, value) in [
            ("limit", quota.limit.to_string()),
            ("remaining", quota.remaining.to_string()),
            ("reset", reset_text(quota.reset_ms)),
        ] {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(format!("x-ratelimit-{name}-{what}").as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                out.push((n, v));
            }
        }
    }
    out
}
