//! A worker: one routing target (an engine, or one data-parallel rank of it) and its
//! live state, shared as `Arc<Worker>` with every counter atomic. A [`Lease`] is one
//! attempt's hold on a worker; settling it is the only place a worker's breaker and
//! passive health learn how an attempt went.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderValue, Uri};
use tokio::time::Instant;

use super::breaker::{BreakerConfig, CircuitBreaker, Permit};
use crate::upstream::EngineUrl;

/// What a worker does in prefill/decode disaggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// Serves whole requests.
    Regular,
    Prefill,
    Decode,
}

impl WorkerRole {
    pub const ALL: [WorkerRole; 3] = [WorkerRole::Regular, WorkerRole::Prefill, WorkerRole::Decode];

    /// Position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRole::Regular => "regular",
            WorkerRole::Prefill => "prefill",
            WorkerRole::Decode => "decode",
        }
    }
}

/// A worker's identity: engine URL, data-parallel rank and role. Typed, never a
/// formatted `url@rank` string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerId {
    pub url: String,
    pub dp_rank: Option<u32>,
    pub role: WorkerRole,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        if let Some(r) = self.dp_rank {
            write!(f, "#dp{r}")?;
        }
        Ok(())
    }
}

/// Longest a worker is kept away after asking to wait (`Retry-After`): an engine that
/// asks for a year is still tried again after this.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// Settings every worker of the gateway shares.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub breaker: BreakerConfig,
    /// Consecutive upstream failures that eject a worker until a health check passes.
    pub passive_failure_threshold: u32,
}

/// One routing target and its live state.
#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    /// `url` or `url#dpN`, for logs and metric labels (admin-side surfaces only).
    pub label: Arc<str>,
    /// Opaque id: the worker API's handle, and how data-plane answers name the worker.
    pub api_id: Arc<str>,
    /// SGLang bootstrap port of a prefill worker (default: its own port).
    pub bootstrap_port: Option<u16>,
    /// Where its engine publishes KV-cache events (this rank's own ports).
    pub kv_events: Option<crate::config::kv::KvEndpoints>,
    /// Where connections go: the URL, or the address it resolved to when registered
    /// under an allowlist (then `host` keeps the original `Host` header).
    endpoint: EngineUrl,
    host: Option<HeaderValue>,
    draining: AtomicBool,
    /// Relative capacity (≥ 1): load-aware policies divide load by it, random and
    /// round-robin send traffic in proportion to it.
    weight: AtomicU32,
    /// Routing prefers the eligible workers of the highest priority; lower ones are
    /// fallbacks.
    priority: AtomicU32,
    labels: RwLock<BTreeMap<String, String>>,
    in_flight: AtomicUsize,
    /// Woken when the last in-flight request of a draining worker ends.
    idle: tokio::sync::Notify,
    healthy: AtomicBool,
    check_failures: AtomicU32,
    check_successes: AtomicU32,
    upstream_failures: AtomicU32,
    passive_failure_threshold: u32,
    pub breaker: Arc<CircuitBreaker>,
    engine_running: AtomicU32,
    engine_waiting: AtomicU32,
    cooldown_until_ms: AtomicU64,
    /// Microseconds the last passed health check took, plus one (0: none passed yet).
    probe_us: AtomicU64,
    /// Model ids the engine reported; the registry groups workers by them.
    models: RwLock<Vec<String>>,
    epoch: Instant,
}

/// Stable opaque id of a worker: `w` + 16 hex digits of FNV-1a over its label.
pub fn api_id(label: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("w{h:016x}")
}

impl Worker {
    /// A worker for `url`, initially unhealthy until its first check passes.
    pub fn new(
        url: &EngineUrl,
        dp_rank: Option<u32>,
        role: WorkerRole,
        settings: &WorkerSettings,
    ) -> Self {
        let id = WorkerId {
            url: url.as_string(),
            dp_rank,
            role,
        };
        let label = id.to_string();
        // The id of a prefill or decode worker includes its role, so that ids stay
        // unique if a config lists one URL in both roles.
        let api_key = match role {
            WorkerRole::Regular => label.clone(),
            r => format!("{label}#{}", r.as_str()),
        };
        Worker {
            api_id: Arc::from(api_id(&api_key)),
            label: Arc::from(label),
            bootstrap_port: None,
            kv_events: None,
            endpoint: url.clone(),
            host: None,
            draining: AtomicBool::new(false),
            weight: AtomicU32::new(1),
            priority: AtomicU32::new(0),
            labels: RwLock::new(BTreeMap::new()),
            id,
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            healthy: AtomicBool::new(false),
            check_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            upstream_failures: AtomicU32::new(0),
            passive_failure_threshold: settings.passive_failure_threshold,
            breaker: Arc::new(CircuitBreaker::new(settings.breaker.clone())),
            engine_running: AtomicU32::new(0),
            engine_waiting: AtomicU32::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            probe_us: AtomicU64::new(0),
            models: RwLock::new(Vec::new()),
            epoch: Instant::now(),
        }
    }

    /// Sets where the engine publishes KV-cache events.
    pub fn with_kv_events(mut self, ep: Option<crate::config::kv::KvEndpoints>) -> Self {
        self.kv_events = ep;
        self
    }

    /// Sets the SGLang bootstrap port (prefill workers).
    pub fn with_bootstrap_port(mut self, port: Option<u16>) -> Self {
        self.bootstrap_port = port;
        self
    }

    /// Connects to `endpoint` (a resolved address) with `host` as the `Host` header.
    pub fn with_endpoint(mut self, endpoint: EngineUrl, host: HeaderValue) -> Self {
        self.endpoint = endpoint;
        self.host = Some(host);
        self
    }

    /// Host the engine is reached at (for SGLang's bootstrap address).
    pub fn host(&self) -> &str {
        self.endpoint.host()
    }

    /// Port of the worker URL.
    pub fn port(&self) -> u16 {
        self.endpoint.port()
    }

    /// The upstream URI for `path_and_query` (which starts with `/`).
    pub fn uri(&self, path_and_query: &str) -> Uri {
        self.endpoint.uri(path_and_query)
    }

    /// The `Host` header to send, when it differs from the URI's authority.
    pub fn host_header(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// Requests sent to this worker whose response has not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard drops (when its body has been sent).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Takes an in-flight slot and a breaker permit for one attempt; `None` when the
    /// breaker refuses.
    pub fn lease(self: &Arc<Self>) -> Option<Lease> {
        let permit = self.breaker.acquire()?;
        Some(Lease {
            in_flight: self.begin(),
            permit,
        })
    }

    /// Waits until no request is in flight (used while draining).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether routing may use this worker now: healthy, not draining, breaker allows,
    /// not cooling down after a Retry-After. Lock-free.
    pub fn is_eligible(&self) -> bool {
        self.is_healthy()
            && !self.is_draining()
            && !self.cooling_down()
            && self.breaker.can_attempt()
    }

    /// Being removed: takes no new requests.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining; false if it already was.
    pub fn start_draining(&self) -> bool {
        !self.draining.swap(true, Ordering::Relaxed)
    }

    /// Relative capacity, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    pub fn priority(&self) -> u32 {
        self.priority.load(Ordering::Relaxed)
    }

    pub fn set_priority(&self, priority: u32) {
        self.priority.store(priority, Ordering::Relaxed);
    }

    /// Whether this worker carries less load per unit of capacity than `other`, given
    /// each one's load (cross-multiplied, so no division on the hot path).
    pub fn lighter_than(&self, load: usize, other: &Worker, other_load: usize) -> bool {
        (load as u64) * (other.weight() as u64) < (other_load as u64) * (self.weight() as u64)
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels.read().expect("labels lock").clone()
    }

    /// Replaces the labels; the registry's `relabel` also tells its observers.
    pub(super) fn set_labels(&self, labels: BTreeMap<String, String>) {
        *self.labels.write().expect("labels lock") = labels;
    }

    /// Forces the health state (first probe at startup, registration, tests).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.check_failures.store(0, Ordering::Relaxed);
        self.check_successes.store(0, Ordering::Relaxed);
        if healthy {
            self.upstream_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Applies an active health-check result; returns true when the state flipped.
    pub fn record_check(&self, ok: bool, failure_threshold: u32, success_threshold: u32) -> bool {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && n >= success_threshold {
                self.set_healthy(true);
                return true;
            }
        } else {
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && n >= failure_threshold {
                self.set_healthy(false);
                return true;
            }
        }
        false
    }

    /// Passive health: consecutive upstream failures eject the worker until an active
    /// check passes again. Returns true when this call ejected it.
    fn record_upstream(&self, ok: bool) -> bool {
        if ok {
            self.upstream_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.upstream_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.passive_failure_threshold && self.healthy.swap(false, Ordering::Relaxed) {
            self.check_successes.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Keeps routing away from this worker for `d` (an upstream's Retry-After), at most
    /// [`MAX_COOLDOWN`].
    pub fn cool_down(&self, d: Duration) {
        let until = self
            .now_ms()
            .saturating_add(d.min(MAX_COOLDOWN).as_millis() as u64);
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Time left before a cooled-down worker may be used again.
    pub fn cooldown_remaining(&self) -> Duration {
        Duration::from_millis(
            self.cooldown_until_ms
                .load(Ordering::Relaxed)
                .saturating_sub(self.now_ms()),
        )
    }

    pub fn cooling_down(&self) -> bool {
        // Never cooled down (the common case): no clock read.
        let until = self.cooldown_until_ms.load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    /// The engine's own queue, from its /metrics: (running, waiting).
    /// Records how long a passed health check took.
    pub fn record_probe_time(&self, took: std::time::Duration) {
        self.probe_us
            .store(took.as_micros() as u64 + 1, Ordering::Relaxed);
    }

    /// How long the last passed health check took.
    pub fn probe_time(&self) -> Option<std::time::Duration> {
        match self.probe_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us - 1)),
        }
    }

    pub fn engine_load(&self) -> (u32, u32) {
        (
            self.engine_running.load(Ordering::Relaxed),
            self.engine_waiting.load(Ordering::Relaxed),
        )
    }

    pub fn set_engine_load(&self, running: u32, waiting: u32) {
        self.engine_running.store(running, Ordering::Relaxed);
        self.engine_waiting.store(waiting, Ordering::Relaxed);
    }

    /// Model ids the engine reported on `/v1/models` (empty: it serves any model).
    pub fn models(&self) -> Vec<String> {
        self.models.read().expect("models lock").clone()
    }

    /// Whether the worker serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        let m = self.models.read().expect("models lock");
        m.is_empty() || m.iter().any(|x| x == model)
    }

    /// Replaces the models; only the registry calls this, as it regroups workers.
    pub(super) fn set_models(&self, models: Vec<String>) {
        *self.models.write().expect("models lock") = models;
    }
}

/// Holds one in-flight slot of a worker; released on drop, i.e. when the response body
/// has been fully sent or the client went away — never when headers arrive.
#[derive(Debug)]
pub struct InFlight(Arc<Worker>);

impl InFlight {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 && self.0.is_draining() {
            self.0.idle.notify_waiters();
        }
    }
}

/// How an attempt went, from the worker's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answered (a 2xx, or a 4xx that is the request's fault).
    Success,
    /// Unreachable, timed out, a 5xx, or a stream cut short.
    Failure,
    /// Asked to wait (429, 408): not a failure, but not a breaker success either.
    Throttled,
    /// Counts for nothing: the client went away, or the request itself is at fault
    /// (it failed the same way on another worker).
    Excused,
}

/// One attempt's hold on a worker: an in-flight slot and a breaker permit. Settle it
/// with [`settle`](Lease::settle); dropping it unsettled counts as [`Verdict::Excused`].
#[derive(Debug)]
pub struct Lease {
    in_flight: InFlight,
    permit: Permit,
}

impl Lease {
    pub fn worker(&self) -> &Arc<Worker> {
        self.in_flight.worker()
    }

    /// Applies the verdict to the breaker and to passive health, and frees the slot.
    /// Returns true when this ejected the worker.
    pub fn settle(self, verdict: Verdict) -> bool {
        let w = self.in_flight.worker().clone();
        let ejected = match verdict {
            Verdict::Success => {
                self.permit.record(true);
                w.record_upstream(true)
            }
            Verdict::Failure => {
                self.permit.record(false);
                w.record_upstream(false)
            }
            Verdict::Throttled => {
                drop(self.permit);
                w.record_upstream(true)
            }
            Verdict::Excused => false,
        };
        if ejected {
            tracing::warn!(worker = %w.label, "worker ejected after consecutive upstream failures");
        }
        ejected
    }
}

/// A regular worker at `http://h:{port}`, healthy, with a default breaker, for unit tests.
#[cfg(test)]
pub(crate) fn test_worker(port: u16) -> Arc<Worker> {
    let url = EngineUrl::parse(&format!("http://h:{port}")).expect("a valid test URL");
    let w = Arc::new(Worker::new(
        &url,
        None,
        WorkerRole::Regular,
        &test_settings(),
    ));
    w.set_healthy(true);
    w
}

#[cfg(test)]
pub(crate) fn test_settings() -> WorkerSettings {
    WorkerSettings {
        breaker: BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            success_threshold: 2,
            timeout: Duration::from_secs(1),
            window: Duration::from_secs(1),
        },
        passive_failure_threshold: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(rank: Option<u32>) -> Arc<Worker> {
        let url = EngineUrl::parse("http://h:1").unwrap();
        Arc::new(Worker::new(
            &url,
            rank,
            WorkerRole::Regular,
            &test_settings(),
        ))
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let w = worker(None);
        let a = w.begin();
        let b = w.begin();
        assert_eq!(w.in_flight(), 2);
        drop(a);
        assert_eq!(w.in_flight(), 1);
        drop(b);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn health_thresholds_and_passive_ejection() {
        let w = worker(Some(1));
        assert_eq!(&*w.label, "http://h:1#dp1");
        assert!(!w.is_healthy());
        assert!(!w.record_check(true, 3, 2));
        assert!(w.record_check(true, 3, 2));
        assert!(w.is_healthy());
        assert!(!w.lease().unwrap().settle(Verdict::Failure));
        assert!(
            !w.lease().unwrap().settle(Verdict::Excused),
            "excused: not counted"
        );
        assert!(
            w.lease().unwrap().settle(Verdict::Failure),
            "second failure ejects"
        );
        assert!(!w.is_healthy());
        w.record_check(true, 3, 2);
        w.record_check(true, 3, 2);
        assert!(w.is_healthy());
        for _ in 0..2 {
            assert!(!w.record_check(false, 3, 2));
        }
        assert!(w.record_check(false, 3, 2));
        assert!(!w.is_healthy());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let w = worker(None);
        w.set_healthy(true);
        w.lease().unwrap().settle(Verdict::Failure);
        w.lease().unwrap().settle(Verdict::Success);
        assert!(!w.lease().unwrap().settle(Verdict::Failure));
        assert!(w.is_healthy());
        assert_eq!(w.in_flight(), 0, "every lease gave its slot back");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_cools_a_worker_down() {
        let w = worker(None);
        w.set_healthy(true);
        assert!(w.is_eligible());
        w.cool_down(Duration::from_secs(60));
        assert!(!w.is_eligible());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(w.is_eligible());
        // A huge Retry-After neither overflows nor sidelines the worker for long.
        w.cool_down(Duration::from_secs(u64::MAX));
        assert!(!w.is_eligible());
        assert_eq!(w.cooldown_remaining(), MAX_COOLDOWN);
        tokio::time::advance(MAX_COOLDOWN).await;
        assert!(w.is_eligible());
    }

    #[tokio::test]
    async fn idle_returns_when_the_last_request_of_a_draining_worker_ends() {
        let w = worker(None);
        let slot = w.begin();
        w.start_draining();
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(slot);
        waiter.await.unwrap();
    }

    #[test]
    fn api_ids_are_stable_and_distinct() {
        assert_eq!(api_id("http://h:1"), api_id("http://h:1"));
        assert_ne!(api_id("http://h:1"), api_id("http://h:2"));
        assert_eq!(api_id("x").len(), 17);
    }
}
