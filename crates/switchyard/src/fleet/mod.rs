//! The fleet: workers (engine endpoints), their live state, the registry that holds
//! them, and the background probes (health, engine load) that keep that state true.

pub mod breaker;
pub mod health;
pub mod kubernetes;
pub mod registry;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::Uri;
use http::uri::{Authority, Scheme};

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit};
pub use registry::Registry;

/// What a worker does in prefill/decode disaggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// Serves whole requests.
    Regular,
    Prefill,
    Decode,
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

/// Checks a worker base URL: `http://host:port[/base]`, no query or fragment.
pub fn parse_worker_url(url: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("missing scheme (use http://host:port)")?;
    if scheme != Scheme::HTTP {
        return Err(format!(
            "unsupported scheme `{scheme}`: engines are reached over http://"
        ));
    }
    let authority = uri.authority().cloned().ok_or("missing host")?;
    if authority.host().is_empty() {
        return Err("missing host".into());
    }
    if uri.query().is_some() {
        return Err("a worker URL cannot have a query".into());
    }
    let base = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, base))
}

/// One routing target: an engine (or one data-parallel rank of it) and its live state.
/// Shared as `Arc<Worker>`; every counter is atomic.
#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    /// `url` or `url#dpN`, for logs and metric labels.
    pub label: Arc<str>,
    /// Opaque id used by the worker API.
    pub api_id: String,
    /// SGLang bootstrap port of a prefill worker (default: its own port).
    pub bootstrap_port: Option<u16>,
    draining: AtomicBool,
    /// Relative capacity (≥ 1): load-aware policies divide load by it, random and
    /// round-robin send traffic in proportion to it.
    weight: AtomicU32,
    /// Routing prefers the eligible workers of the highest priority; lower ones are
    /// fallbacks.
    priority: AtomicU32,
    labels: RwLock<std::collections::BTreeMap<String, String>>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    check_failures: AtomicU32,
    check_successes: AtomicU32,
    upstream_failures: AtomicU32,
    pub breaker: Arc<CircuitBreaker>,
    engine_running: AtomicU32,
    engine_waiting: AtomicU32,
    cooldown_until_ms: AtomicU64,
    models: RwLock<Vec<String>>,
    epoch: Instant,
}

impl Worker {
    /// A worker for `url` (validated), initially unhealthy until its first check passes.
    pub fn new(
        url: &str,
        dp_rank: Option<u32>,
        role: WorkerRole,
        breaker: BreakerConfig,
    ) -> Result<Self, String> {
        let (scheme, authority, base_path) = parse_worker_url(url)?;
        let url = format!("{scheme}://{authority}{base_path}");
        let id = WorkerId { url, dp_rank, role };
        Ok(Worker {
            label: Arc::from(id.to_string()),
            api_id: crate::server::admin::api_id(&id.to_string()),
            bootstrap_port: None,
            draining: AtomicBool::new(false),
            weight: AtomicU32::new(1),
            priority: AtomicU32::new(0),
            labels: RwLock::new(std::collections::BTreeMap::new()),
            id,
            scheme,
            authority,
            base_path,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(false),
            check_failures: AtomicU32::new(0),
            check_successes: AtomicU32::new(0),
            upstream_failures: AtomicU32::new(0),
            breaker: Arc::new(CircuitBreaker::new(breaker)),
            engine_running: AtomicU32::new(0),
            engine_waiting: AtomicU32::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            models: RwLock::new(Vec::new()),
            epoch: Instant::now(),
        })
    }

    /// Sets the SGLang bootstrap port (prefill workers).
    pub fn with_bootstrap_port(mut self, port: Option<u16>) -> Self {
        self.bootstrap_port = port;
        self
    }

    /// Host of the worker URL.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// Port of the worker URL.
    pub fn port(&self) -> u16 {
        self.authority.port_u16().unwrap_or(80)
    }

    /// The upstream URI for `path_and_query` (which starts with `/`).
    pub fn uri(&self, path_and_query: &str) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.base_path, path_and_query))
            .build()
            .expect("validated worker URL plus an absolute path")
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

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether routing may use this worker now: healthy, not draining, breaker allows,
    /// not cooling down after a Retry-After.
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

    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.labels.read().expect("labels lock").clone()
    }

    pub fn set_labels(&self, labels: std::collections::BTreeMap<String, String>) {
        *self.labels.write().expect("labels lock") = labels;
    }

    /// Forces the health state (first probe at startup, tests).
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
    pub fn record_upstream(&self, ok: bool, failure_threshold: u32) -> bool {
        if ok {
            self.upstream_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.upstream_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= failure_threshold && self.healthy.swap(false, Ordering::Relaxed) {
            self.check_successes.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Keeps routing away from this worker for `d` (an upstream's Retry-After).
    pub fn cool_down(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as u64;
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
        self.cooldown_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// The engine's own queue, from its /metrics: (running, waiting).
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

    /// Model ids the engine reported on `/v1/models`.
    pub fn models(&self) -> Vec<String> {
        self.models.read().expect("models lock").clone()
    }

    pub fn serves(&self, model: &str) -> bool {
        let m = self.models.read().expect("models lock");
        m.is_empty() || m.iter().any(|x| x == model)
    }

    pub fn set_models(&self, models: Vec<String>) {
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
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A regular worker at `http://h:{port}` with a default breaker, for unit tests.
#[cfg(test)]
pub(crate) fn test_worker(port: u16) -> Arc<Worker> {
    let breaker = BreakerConfig {
        enabled: true,
        failure_threshold: 5,
        success_threshold: 2,
        timeout: Duration::from_secs(1),
        window: Duration::from_secs(1),
    };
    let w = Worker::new(
        &format!("http://h:{port}"),
        None,
        WorkerRole::Regular,
        breaker,
    );
    Arc::new(w.expect("a valid test URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            success_threshold: 2,
            timeout: Duration::from_secs(1),
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn worker_urls_are_validated() {
        assert!(parse_worker_url("http://127.0.0.1:8000").is_ok());
        assert_eq!(parse_worker_url("http://h:1/base/").unwrap().2, "/base");
        for bad in [
            "127.0.0.1:8000",
            "ftp://h:1",
            "https://h:1",
            "http://h:1/?x=1",
            "not a url",
            "",
        ] {
            assert!(parse_worker_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let w = Arc::new(Worker::new("http://h:1", None, WorkerRole::Regular, breaker()).unwrap());
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
        let w = Worker::new("http://h:1", Some(1), WorkerRole::Regular, breaker()).unwrap();
        assert_eq!(&*w.label, "http://h:1#dp1");
        assert!(!w.is_healthy());
        assert!(!w.record_check(true, 3, 2));
        assert!(w.record_check(true, 3, 2));
        assert!(w.is_healthy());
        assert!(!w.record_upstream(false, 2));
        assert!(w.record_upstream(false, 2));
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
    fn retry_after_cools_a_worker_down() {
        let w = Worker::new("http://h:1", None, WorkerRole::Regular, breaker()).unwrap();
        w.set_healthy(true);
        assert!(w.is_eligible());
        w.cool_down(Duration::from_secs(60));
        assert!(!w.is_eligible());
    }
}
