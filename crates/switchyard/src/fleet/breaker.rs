//! A per-worker circuit breaker: closed → open after `failure_threshold` failures within
//! a sliding window; open → half-open after `timeout`; half-open lets at most
//! `success_threshold` probe requests through at once and closes after that many
//! successes, or re-opens on any failure.
//!
//! Routing asks every candidate whether it could take a request
//! ([`can_attempt`](CircuitBreaker::can_attempt)), so that answer comes from atomics;
//! the lock is taken only to change state or to count a failure. Time is tokio's, so
//! tests drive it with a paused clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub timeout: Duration,
    pub window: Duration,
}

/// The state as reported in metrics and the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
    },
    /// `period` numbers each half-open period: a probe from an earlier one no longer
    /// counts.
    HalfOpen {
        probes: u32,
        successes: u32,
        period: u64,
    },
}

/// One worker's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    /// Mirrors of the locked state, for lock-free reads.
    state: AtomicU8,
    open_until_us: AtomicU64,
    half_open_probes: AtomicU32,
    /// Half-open periods so far.
    periods: AtomicU64,
    epoch: Instant,
}

/// Permission to send one request; report its outcome with [`record`](Permit::record).
/// Dropping it unreported (the client went away) frees a half-open probe slot. It owns
/// its breaker so it can travel with a response body until the stream ends.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    /// The half-open period this permit probes in, if it is a probe.
    probe: Option<u64>,
    done: bool,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        CircuitBreaker {
            cfg,
            inner: Mutex::new(Inner::Closed {
                failures: VecDeque::new(),
            }),
            state: AtomicU8::new(BreakerState::Closed as u8),
            open_until_us: AtomicU64::new(0),
            half_open_probes: AtomicU32::new(0),
            periods: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The current state (lock-free read).
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Whether a request could be sent now (used to filter routing candidates). Lock-free.
    pub fn can_attempt(&self) -> bool {
        if !self.cfg.enabled {
            return true;
        }
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => {
                self.us(Instant::now()) >= self.open_until_us.load(Ordering::Relaxed)
            }
            BreakerState::HalfOpen => {
                self.half_open_probes.load(Ordering::Relaxed) < self.cfg.success_threshold
            }
        }
    }

    /// Takes a permit, moving open → half-open when the timeout has passed.
    pub fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let permit = |probe| Permit {
            breaker: self.clone(),
            probe,
            done: false,
        };
        if !self.cfg.enabled || self.state() == BreakerState::Closed {
            // Closed: nothing to count until an outcome is a failure.
            return Some(permit(None));
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        if let Inner::Open { until } = &*inner {
            if Instant::now() < *until {
                return None;
            }
            let period = self.periods.fetch_add(1, Ordering::Relaxed) + 1;
            self.set(
                &mut inner,
                Inner::HalfOpen {
                    probes: 0,
                    successes: 0,
                    period,
                },
            );
        }
        match &mut *inner {
            Inner::Closed { .. } => Some(permit(None)),
            Inner::HalfOpen { probes, period, .. } if *probes < self.cfg.success_threshold => {
                *probes += 1;
                self.half_open_probes.store(*probes, Ordering::Relaxed);
                Some(permit(Some(*period)))
            }
            _ => None,
        }
    }

    fn set(&self, inner: &mut Inner, next: Inner) {
        let code = match &next {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } => {
                self.open_until_us.store(self.us(*until), Ordering::Relaxed);
                BreakerState::Open
            }
            Inner::HalfOpen { probes, .. } => {
                self.half_open_probes.store(*probes, Ordering::Relaxed);
                BreakerState::HalfOpen
            }
        };
        *inner = next;
        self.state.store(code as u8, Ordering::Relaxed);
    }

    fn outcome(&self, probe: Option<u64>, success: Option<bool>) {
        if probe.is_none() && success != Some(false) && self.state() == BreakerState::Closed {
            return; // a success while closed changes nothing
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        let now = Instant::now();
        match &mut *inner {
            Inner::Closed { failures } if success == Some(false) => {
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.cfg.window)
                {
                    failures.pop_front();
                }
                if failures.len() >= self.cfg.failure_threshold as usize {
                    self.set(
                        &mut inner,
                        Inner::Open {
                            until: now + self.cfg.timeout,
                        },
                    );
                }
            }
            Inner::HalfOpen {
                probes,
                successes,
                period,
            } if probe == Some(*period) => {
                *probes = probes.saturating_sub(1);
                self.half_open_probes.store(*probes, Ordering::Relaxed);
                match success {
                    Some(true) => {
                        *successes += 1;
                        if *successes >= self.cfg.success_threshold {
                            self.set(
                                &mut inner,
                                Inner::Closed {
                                    failures: VecDeque::new(),
                                },
                            );
                        }
                    }
                    Some(false) => self.set(
                        &mut inner,
                        Inner::Open {
                            until: now + self.cfg.timeout,
                        },
                    ),
                    None => {}
                }
            }
            // Outcomes of requests let through before the state changed (in an earlier
            // period) do not count.
            _ => {}
        }
    }
}

impl Permit {
    /// Reports the request's outcome.
    pub fn record(mut self, success: bool) {
        self.done = true;
        if self.breaker.cfg.enabled {
            self.breaker.outcome(self.probe, Some(success));
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe.is_some() && self.breaker.cfg.enabled {
            self.breaker.outcome(self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            success_threshold: 2,
            timeout: Duration::from_secs(30),
            window: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_failures_and_recovers_through_half_open() {
        let b = Arc::new(CircuitBreaker::new(cfg()));
        for _ in 0..2 {
            b.acquire().unwrap().record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().unwrap().record(true);
        b.acquire().unwrap().record(false);
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "3 failures in the window, successes do not reset it"
        );
        assert!(b.acquire().is_none());
        assert!(!b.can_attempt());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!b.can_attempt(), "still open before the timeout");
        assert!(b.acquire().is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.can_attempt());
        let p1 = b.acquire().unwrap();
        let p2 = b.acquire().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            b.acquire().is_none(),
            "only success_threshold probes at once"
        );
        p1.record(true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p2.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_failure_reopens_and_dropped_probe_frees_its_slot() {
        let b = Arc::new(CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            ..cfg()
        }));
        b.acquire().unwrap().record(false);
        tokio::time::advance(Duration::from_secs(30)).await;
        let p = b.acquire().unwrap();
        let q = b.acquire().unwrap();
        assert!(!b.can_attempt(), "both probe slots taken");
        drop(q);
        assert!(b.can_attempt());
        let r = b.acquire().expect("the dropped probe's slot is free again");
        drop(r);
        p.record(false);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_from_an_earlier_half_open_period_does_not_count() {
        let b = Arc::new(CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            ..cfg()
        }));
        b.acquire().unwrap().record(false);
        tokio::time::advance(Duration::from_secs(30)).await;
        let (early, late) = (b.acquire().unwrap(), b.acquire().unwrap());
        early.record(false);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe re-opens");
        tokio::time::advance(Duration::from_secs(30)).await;
        let p = b.acquire().unwrap();
        // The probe of the first period ends now: it neither frees a slot of this
        // period nor counts towards closing.
        late.record(true);
        let q = b.acquire().unwrap();
        assert!(b.acquire().is_none(), "still two probes at most");
        p.record(true);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "one success of this period"
        );
        q.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_count() {
        let b = Arc::new(CircuitBreaker::new(BreakerConfig {
            window: Duration::from_secs(20),
            ..cfg()
        }));
        b.acquire().unwrap().record(false);
        b.acquire().unwrap().record(false);
        tokio::time::advance(Duration::from_secs(21)).await;
        b.acquire().unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().unwrap().record(false);
        b.acquire().unwrap().record(false);
        assert_eq!(b.state(), BreakerState::Open, "three within the window");
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let b = Arc::new(CircuitBreaker::new(BreakerConfig {
            enabled: false,
            failure_threshold: 1,
            ..cfg()
        }));
        for _ in 0..5 {
            b.acquire().unwrap().record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.can_attempt());
    }
}
