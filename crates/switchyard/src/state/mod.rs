//! Hot state shared by the layers above and, through Redis, by several gateway
//! replicas: `/route` sessions and counters today, workflows and limits next. Each kind
//! of state is a trait with two backends: in memory (the embedded default, bounded) and
//! Redis (`--redis-url`). A backend that fails says so with a [`StateError`]; callers
//! degrade (and count it) instead of failing the request.
//!
//! - [`sessions`]: `/route` sessions, with a TTL and a per-user bound.
//! - [`counters`]: named totals (the `/stats` figures).
//! - [`redis`]: the connection pool every Redis backend shares.
//! - [`cache`]: the response cache's entries and its semantic index.

pub mod cache;
pub mod counters;
pub mod redis;
pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use counters::Counters;
pub use sessions::{Session, SessionStore, Turn};

/// A backend could not do what was asked (Redis unreachable, timed out, or answered
/// something unreadable).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateError(pub String);

/// Wall-clock time in milliseconds since the Unix epoch; injected so tests can move it.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// RFC 3339 (UTC, milliseconds) of a time in milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => String::new(),
    }
}

/// A new identifier: `prefix` and 128 random bits from the OS (unguessable: a session
/// id is all a client needs to read the session).
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (never seen on Linux): fall back to a seeded generator.
        bytes = fastrand::u128(..).to_le_bytes();
    }
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Where state lives and how it is bounded.
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// `--redis-url`; memory when `None`.
    pub redis_url: Option<String>,
    /// Keys are `{prefix}:…`, so several deployments can share one Redis.
    pub redis_prefix: String,
    pub redis_pool_size: usize,
    pub redis_timeout: Duration,
    pub session_ttl: Duration,
    /// In-memory backend: most sessions kept (least recently used go first).
    pub max_sessions: usize,
    pub max_sessions_per_user: usize,
}

/// The stores built from a [`StateConfig`].
pub struct Stores {
    pub sessions: Arc<dyn SessionStore>,
    pub counters: Arc<dyn Counters>,
    pub clock: Arc<dyn Clock>,
    /// `memory` or `redis`.
    pub backend: &'static str,
    pub redis: Option<Arc<redis::Pool>>,
}

impl Stores {
    /// Opens the configured backend. Redis connects lazily: a Redis that is down at
    /// start makes the stores degraded, not the gateway unable to start.
    pub fn open(cfg: &StateConfig, clock: Arc<dyn Clock>) -> Result<Stores, StateError> {
        match &cfg.redis_url {
            None => Ok(Stores {
                sessions: Arc::new(sessions::Memory::new(cfg, clock.clone())),
                counters: Arc::new(counters::Memory::default()),
                clock,
                backend: "memory",
                redis: None,
            }),
            Some(url) => {
                let pool = Arc::new(redis::Pool::new(
                    url,
                    &cfg.redis_prefix,
                    cfg.redis_pool_size,
                    cfg.redis_timeout,
                )?);
                Ok(Stores {
                    sessions: Arc::new(sessions::Redis::new(pool.clone(), cfg)),
                    counters: Arc::new(counters::Redis::new(pool.clone())),
                    clock,
                    backend: "redis",
                    redis: Some(pool),
                })
            }
        }
    }

    /// Whether the backend answers (memory always does).
    pub async fn ping(&self) -> Result<(), StateError> {
        match &self.redis {
            None => Ok(()),
            Some(p) => p.ping().await,
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A clock a test moves by hand.
    pub struct ManualClock(pub AtomicI64);

    impl crate::state::Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl ManualClock {
        pub fn advance(&self, ms: i64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_random_and_formatted() {
        let a = crate::state::random_id("sess_");
        let b = crate::state::random_id("sess_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 32);
        assert!(a[5..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(
            crate::state::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
