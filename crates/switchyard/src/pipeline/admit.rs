//! The `admit` phase: a request's id, its caller (`crate::tenancy`), and admission — a token-bucket rate
//! limit, then a concurrency limit with a bounded queue ordered by workflow priority
//! with aging (FIFO among equals) and a queue timeout. The concurrency permit
//! ([`Admitted`]) lives until the response body has been sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The id of a request with these headers: the first of `sources` present, else a
/// generated one.
pub fn request_id(sources: &[HeaderName], headers: &HeaderMap) -> String {
    sources
        .iter()
        .find_map(|h| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty() && s.len() <= 256)
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req-{:032x}", fastrand::u128(..)))
}

/// Echoes the request id in a response.
pub fn set_request_id<B>(resp: &mut http::Response<B>, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
}

/// Whether `headers` carry `Authorization: Bearer <key>`.
pub fn bearer_matches(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token bucket refilled continuously at `rate` tokens per second.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        let capacity = rate.max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is available.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
            .min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// An admitted request's concurrency permit (none when there is no limit); held until
/// the response body has been sent, released when dropped.
#[derive(Debug, Default)]
pub struct Admitted {
    _permit: Option<Slot>,
}

impl Admitted {
    /// A request the gateway makes on behalf of an admitted one (a classifier's call
    /// to the fleet): it rides on that request's permit.
    pub(crate) fn on_behalf() -> Admitted {
        Admitted { _permit: None }
    }
}

/// The concurrency limit: free slots and the requests waiting for one, best first.
/// A released slot goes straight to the best waiter. Waiters are ordered by
/// `priority + waited / aging` — higher first, arrival order among equals — which,
/// since every waiter ages at the same rate, is the fixed key
/// `priority − arrival / aging`: a heap needs no re-sorting as time passes.
#[derive(Debug)]
struct Gate {
    state: Mutex<GateState>,
    epoch: Instant,
    /// Seconds of waiting worth one priority level.
    aging_secs: f64,
}

#[derive(Debug)]
struct GateState {
    free: usize,
    waiters: std::collections::BinaryHeap<Waiter>,
    seq: u64,
}

#[derive(Debug)]
struct Waiter {
    key: f64,
    seq: u64,
    tx: tokio::sync::oneshot::Sender<Slot>,
}

impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    /// The heap's top is the highest key, then the earliest arrival.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.total_cmp(&o.key).then(o.seq.cmp(&self.seq))
    }
}

/// One unit of the concurrency limit; dropping it frees it for the best waiter.
#[derive(Debug)]
struct Slot(Option<Arc<Gate>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gate) = self.0.take() {
            gate.release();
        }
    }
}

impl Gate {
    /// A slot now, if one is free and nobody waits for it.
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut s = self.state.lock().expect("gate lock");
        (s.free > 0 && s.waiters.is_empty()).then(|| {
            s.free -= 1;
            Slot(Some(self.clone()))
        })
    }

    /// Joins the queue with `priority`; the receiver gets a slot when it is this
    /// waiter's turn (or at once if one is free).
    fn wait(self: &Arc<Self>, priority: f64) -> tokio::sync::oneshot::Receiver<Slot> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let arrival = self.epoch.elapsed().as_secs_f64();
        let mut s = self.state.lock().expect("gate lock");
        s.seq += 1;
        let seq = s.seq;
        s.waiters.push(Waiter {
            key: priority - arrival / self.aging_secs,
            seq,
            tx,
        });
        drop(s);
        self.hand_over();
        rx
    }

    fn release(self: &Arc<Self>) {
        self.state.lock().expect("gate lock").free += 1;
        self.hand_over();
    }

    /// Gives free slots to the best waiters still waiting.
    fn hand_over(self: &Arc<Self>) {
        loop {
            let mut s = self.state.lock().expect("gate lock");
            if s.free == 0 {
                return;
            }
            let Some(w) = s.waiters.pop() else { return };
            s.free -= 1;
            drop(s);
            if let Err(mut slot) = w.tx.send(Slot(Some(self.clone()))) {
                // The waiter went away: the slot is free again, for the next one.
                slot.0 = None;
                self.state.lock().expect("gate lock").free += 1;
            }
        }
    }
}

/// Admission control state.
pub struct Admission {
    bucket: Option<Mutex<TokenBucket>>,
    gate: Option<Arc<Gate>>,
    waiting: AtomicUsize,
    queue_size: usize,
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Admission settings.
pub struct AdmissionConfig {
    pub rate: f64,
    pub max_concurrent: usize,
    pub queue_size: usize,
    pub queue_timeout: Duration,
    /// `--priority-aging-secs`: waiting this long counts as one priority level.
    pub aging_secs: f64,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig, metrics: Arc<Metrics>) -> Self {
        Admission {
            bucket: (cfg.rate > 0.0).then(|| Mutex::new(TokenBucket::new(cfg.rate))),
            gate: (cfg.max_concurrent > 0).then(|| {
                Arc::new(Gate {
                    state: Mutex::new(GateState {
                        free: cfg.max_concurrent,
                        waiters: std::collections::BinaryHeap::new(),
                        seq: 0,
                    }),
                    epoch: Instant::now(),
                    aging_secs: cfg.aging_secs.max(1e-3),
                })
            }),
            waiting: AtomicUsize::new(0),
            queue_size: cfg.queue_size,
            queue_timeout: cfg.queue_timeout,
            metrics,
        }
    }

    /// Admits a request, or answers 429 / 503 with Retry-After. A request that must
    /// wait joins the queue with the priority `priority` gives (read only then: the
    /// uncontended path never looks), 0 when it gives none.
    pub async fn admit(
        &self,
        priority: impl FnOnce() -> Option<f64>,
    ) -> Result<Admitted, ApiError> {
        if let Some(bucket) = &self.bucket
            && let Err(wait) = bucket.lock().expect("bucket lock").take()
        {
            self.metrics.reject("rate_limited");
            return Err(ApiError::rate_limited(wait.as_secs_f64().ceil() as u64));
        }
        let Some(gate) = &self.gate else {
            return Ok(Admitted::default());
        };
        if let Some(slot) = gate.try_take() {
            return Ok(Admitted {
                _permit: Some(slot),
            });
        }
        // Reserve a queue place; give it back if the queue is full.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.reject("queue_full");
            return Err(ApiError::unavailable(
                "queue_full",
                "The gateway's request queue is full",
                1,
            ));
        }
        // Gives the place back however the wait ends, the caller going away included
        // (its waiter's receiver drops, and a slot handed to it goes to the next).
        let _place = QueuePlace::take(self);
        let rx = gate.wait(priority().unwrap_or(0.0));
        match tokio::time::timeout(self.queue_timeout, rx).await {
            Ok(Ok(slot)) => Ok(Admitted {
                _permit: Some(slot),
            }),
            _ => {
                self.metrics.reject("queue_timeout");
                Err(ApiError::unavailable(
                    "queue_timeout",
                    format!(
                        "No capacity within the queue timeout of {} s",
                        self.queue_timeout.as_secs()
                    ),
                    1,
                ))
            }
        }
    }
}

/// A place in the admission queue, held while a request waits for a permit.
struct QueuePlace<'a> {
    admission: &'a Admission,
    since: Instant,
}

impl<'a> QueuePlace<'a> {
    /// Counts a place already reserved in `waiting`.
    fn take(admission: &'a Admission) -> Self {
        admission.metrics.queue_depth.inc();
        QueuePlace {
            admission,
            since: Instant::now(),
        }
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        let a = self.admission;
        a.waiting.fetch_sub(1, Ordering::AcqRel);
        a.metrics.queue_depth.dec();
        a.metrics
            .queue_wait
            .observe(self.since.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(2.0);
        assert!(b.take().is_ok());
        assert!(b.take().is_ok());
        assert_eq!(b.take().unwrap_err(), Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(b.take().unwrap_err(), Duration::from_millis(250));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(b.take().is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            b.take().is_ok() && b.take().is_ok(),
            "refills up to its capacity"
        );
        assert!(b.take().is_err(), "and no further");
    }

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k1 ".parse().unwrap());
        assert!(bearer_matches(&h, "k1"));
        assert!(!bearer_matches(&h, "k2"));
        assert!(!bearer_matches(&HeaderMap::new(), "k1"));
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_are_admitted_in_arrival_order_then_time_out() {
        let adm = Arc::new(Admission::new(
            AdmissionConfig {
                rate: 0.0,
                max_concurrent: 1,
                queue_size: 3,
                queue_timeout: Duration::from_secs(60),
                aging_secs: 10.0,
            },
            Arc::new(Metrics::new()),
        ));
        let first = adm.admit(|| None).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (queued, tx) = (adm.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = queued.admit(|| None).await.unwrap();
                tx.send(i).unwrap();
                // Hold the permit a while so the next waiter comes strictly after.
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(permit);
            });
            // Let it join the queue before the next one arrives.
            while adm.waiting.load(Ordering::Acquire) != i + 1 {
                tokio::task::yield_now().await;
            }
        }
        let e = adm.admit(|| None).await.unwrap_err();
        assert_eq!(e.code, "queue_full");
        drop(first);
        let order: Vec<usize> = [rx.recv().await, rx.recv().await, rx.recv().await]
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
        // A waiter that gets no permit within the timeout is turned away.
        let held = adm.admit(|| None).await.unwrap();
        let waiter = tokio::spawn({
            let adm = adm.clone();
            async move { adm.admit(|| None).await.map(|_| ()) }
        });
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(waiter.await.unwrap().unwrap_err().code, "queue_timeout");
        // A waiter that goes away (its client disconnected) gives its place back.
        let gone = tokio::spawn({
            let adm = adm.clone();
            async move { adm.admit(|| None).await.map(|_| ()) }
        });
        while adm.waiting.load(Ordering::Acquire) != 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(adm.waiting.load(Ordering::Acquire), 0);
        assert_eq!(adm.metrics.queue_depth.get(), 0);
        drop(held);
    }

    /// One slot held; waiters queued at the given (priority, seconds after the start);
    /// the order they are admitted in once the slot frees up.
    async fn admission_order(waiters: &[(f64, u64)]) -> Vec<usize> {
        let adm = Arc::new(Admission::new(
            AdmissionConfig {
                rate: 0.0,
                max_concurrent: 1,
                queue_size: 10,
                queue_timeout: Duration::from_secs(600),
                aging_secs: 10.0,
            },
            Arc::new(Metrics::new()),
        ));
        let held = adm.admit(|| None).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut at = 0;
        for (i, &(p, when)) in waiters.iter().enumerate() {
            tokio::time::advance(Duration::from_secs(when - at)).await;
            at = when;
            let (adm2, tx) = (adm.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = adm2.admit(move || Some(p)).await.unwrap();
                tx.send(i).unwrap();
                // Dropped at once: the slot goes straight to the best waiter.
                drop(permit);
            });
            while adm.waiting.load(Ordering::Acquire) != i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let mut order = Vec::new();
        for _ in waiters {
            order.push(rx.recv().await.unwrap());
        }
        order
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priorities_go_first_and_equal_ones_in_arrival_order() {
        assert_eq!(
            admission_order(&[(0.0, 0), (5.0, 1), (5.0, 2), (1.0, 3)]).await,
            [1, 2, 3, 0]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ages_a_request_past_later_higher_priorities() {
        // 10 s of waiting is one level: after 20 s, priority 0 outranks a new priority 1.
        assert_eq!(admission_order(&[(0.0, 0), (1.0, 20)]).await, [0, 1]);
        assert_eq!(admission_order(&[(0.0, 0), (1.0, 5)]).await, [1, 0]);
    }
}
