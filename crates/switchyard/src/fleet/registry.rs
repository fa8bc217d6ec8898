//! The registry: every worker the gateway knows, grouped by role and model, as an
//! immutable snapshot that readers load without a lock. Writers (startup, the worker
//! API, discovery, probes that learn a worker's models) build the next snapshot under
//! one writer lock; observers hear about each change before it is published, and
//! `changes()` wakes anything waiting for the fleet to change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::worker::{Worker, WorkerId, WorkerRole};

/// Something that keeps per-worker state and must hear about fleet changes (routing
/// policies and their prefix indexes). Called with the registry's writer lock held:
/// it must not change the registry itself.
pub trait RegistryObserver: Send + Sync {
    /// `worker` is about to take traffic, or the models it serves changed.
    fn added(&self, _worker: &Arc<Worker>) {}
    /// `worker` left the fleet; forget it.
    fn removed(&self, _worker: &Arc<Worker>) {}
    /// `worker`'s labels changed.
    fn relabelled(&self, _worker: &Arc<Worker>) {}
}

type Group = Vec<Arc<Worker>>;

/// One version of the fleet.
#[derive(Default)]
pub struct Snapshot {
    workers: Vec<Arc<Worker>>,
    /// Per role: model → the workers serving it (including those serving any model).
    by_model: [HashMap<Arc<str>, Group>; 3],
    /// Per role: workers that reported no model list, so serve any model.
    any_model: [Group; 3],
}

impl Snapshot {
    fn build(workers: Vec<Arc<Worker>>) -> Snapshot {
        let mut s = Snapshot {
            workers,
            ..Snapshot::default()
        };
        for w in &s.workers {
            if w.models().is_empty() {
                s.any_model[w.id.role.index()].push(w.clone());
            }
        }
        for w in &s.workers {
            let role = w.id.role.index();
            for m in w.models() {
                let group = s.by_model[role]
                    .entry(Arc::from(m.as_str()))
                    .or_insert_with(|| s.any_model[role].clone());
                if !group.iter().any(|g| Arc::ptr_eq(g, w)) {
                    group.push(w.clone());
                }
            }
        }
        s
    }

    /// Every worker, healthy or not.
    pub fn workers(&self) -> &[Arc<Worker>] {
        &self.workers
    }

    /// The workers of `role` that serve `model`, whatever their state.
    pub fn group(&self, model: &str, role: WorkerRole) -> &[Arc<Worker>] {
        match self.by_model[role.index()].get(model) {
            Some(g) => g,
            None => &self.any_model[role.index()],
        }
    }
}

/// Workers known to the gateway.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// Serialises writers.
    write: Mutex<()>,
    /// Held weakly: an observer usually holds the registry.
    observers: RwLock<Vec<Weak<dyn RegistryObserver>>>,
    /// Bumped on every published change.
    generation: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("workers", &self.current.load().workers.len())
            .finish()
    }
}

impl Registry {
    pub fn new(workers: Vec<Arc<Worker>>) -> Self {
        Registry {
            current: ArcSwap::from_pointee(Snapshot::build(workers)),
            write: Mutex::new(()),
            observers: RwLock::new(Vec::new()),
            generation: watch::Sender::new(0),
        }
    }

    /// Adds an observer, held weakly for as long as it lives; it is told about the
    /// workers already registered.
    pub fn observe(&self, observer: &Arc<dyn RegistryObserver>) {
        let _w = self.write.lock().expect("registry writer lock");
        for w in self.current.load().workers() {
            observer.added(w);
        }
        let mut observers = self.observers.write().expect("observers lock");
        observers.retain(|o| o.strong_count() > 0);
        observers.push(Arc::downgrade(observer));
    }

    fn notify(&self, f: impl Fn(&dyn RegistryObserver)) {
        for o in self.observers.read().expect("observers lock").iter() {
            if let Some(o) = o.upgrade() {
                f(o.as_ref());
            }
        }
    }

    /// The current version of the fleet.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Every worker, healthy or not.
    pub fn all(&self) -> Vec<Arc<Worker>> {
        self.current.load().workers.clone()
    }

    /// A receiver that sees a new value on every change of the fleet.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn publish(&self, workers: Vec<Arc<Worker>>) {
        self.current.store(Arc::new(Snapshot::build(workers)));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Eligible workers of `role` serving `model`, of the highest priority among them.
    /// Touches only that model's group, with no lock.
    pub fn candidates(&self, model: &str, role: WorkerRole) -> Vec<Arc<Worker>> {
        let snap = self.current.load();
        let group = snap.group(model, role);
        let mut out: Vec<Arc<Worker>> = Vec::with_capacity(group.len());
        let mut top = 0;
        for w in group {
            if !w.is_eligible() {
                continue;
            }
            let p = w.priority();
            if out.is_empty() || p > top {
                if p > top {
                    out.clear();
                }
                top = p;
            } else if p < top {
                continue;
            }
            out.push(w.clone());
        }
        out
    }

    /// Healthy workers of `role` serving `model` that are cooling down after a
    /// Retry-After, and the shortest wait until one is usable.
    pub fn cooling(&self, model: &str, role: WorkerRole) -> Option<std::time::Duration> {
        self.current
            .load()
            .group(model, role)
            .iter()
            .filter(|w| w.is_healthy() && !w.is_draining() && w.cooling_down())
            .map(|w| w.cooldown_remaining())
            .min()
    }

    /// Adds a worker; false if one with the same id exists.
    pub fn add(&self, worker: Arc<Worker>) -> bool {
        let _w = self.write.lock().expect("registry writer lock");
        let mut next = self.current.load().workers.clone();
        if next.iter().any(|w| w.id == worker.id) {
            return false;
        }
        self.notify(|o| o.added(&worker));
        next.push(worker);
        self.publish(next);
        true
    }

    /// Removes a worker by id, returning it.
    pub fn remove(&self, id: &WorkerId) -> Option<Arc<Worker>> {
        let _w = self.write.lock().expect("registry writer lock");
        let mut next = self.current.load().workers.clone();
        let pos = next.iter().position(|w| &w.id == id)?;
        let w = next.remove(pos);
        self.publish(next);
        self.notify(|o| o.removed(&w));
        Some(w)
    }

    /// Records the models `worker` serves and regroups the fleet.
    pub fn set_models(&self, worker: &Arc<Worker>, models: Vec<String>) {
        let _w = self.write.lock().expect("registry writer lock");
        if worker.models() == models {
            return;
        }
        worker.set_models(models);
        let next = self.current.load().workers.clone();
        if next.iter().any(|w| Arc::ptr_eq(w, worker)) {
            self.notify(|o| o.added(worker));
            self.publish(next);
        }
    }

    /// Replaces `worker`'s labels and tells the observers.
    pub fn relabel(&self, worker: &Arc<Worker>, labels: BTreeMap<String, String>) {
        let _w = self.write.lock().expect("registry writer lock");
        worker.set_labels(labels);
        self.notify(|o| o.relabelled(worker));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Waits until no worker of `role` at `url` is left (a draining one is removed when
    /// its last request ends).
    pub async fn wait_gone(&self, url: &str, role: WorkerRole) {
        let mut changes = self.changes();
        loop {
            changes.borrow_and_update();
            if !self
                .current
                .load()
                .workers
                .iter()
                .any(|w| w.id.url == url && w.id.role == role)
            {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Union of the models healthy workers report, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .current
            .load()
            .workers
            .iter()
            .filter(|w| w.is_healthy())
            .flat_map(|w| w.models())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether some worker lists `model` on its `/v1/models` (rather than serving it
    /// only because it accepts any model).
    pub fn lists(&self, model: &str) -> bool {
        self.current
            .load()
            .by_model
            .iter()
            .any(|m| m.contains_key(model))
    }

    /// Whether a healthy worker serves `model`, or no worker is healthy at all (then
    /// the request fails as unavailable, not as an unknown model).
    pub fn knows_model(&self, model: &str) -> bool {
        let snap = self.current.load();
        let served = WorkerRole::ALL
            .iter()
            .any(|r| snap.group(model, *r).iter().any(|w| w.is_healthy()));
        served || !snap.workers.iter().any(|w| w.is_healthy())
    }

    pub fn healthy_count(&self) -> usize {
        self.current
            .load()
            .workers
            .iter()
            .filter(|w| w.is_healthy())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::worker::test_worker;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn worker(port: u16, priority: u32) -> Arc<Worker> {
        let w = test_worker(port);
        w.set_priority(priority);
        w
    }

    fn ports(v: Vec<Arc<Worker>>) -> Vec<u16> {
        v.iter().map(|w| w.port()).collect()
    }

    #[test]
    fn the_highest_eligible_priority_wins_and_lower_ones_are_fallbacks() {
        let (a, b, c) = (worker(1, 2), worker(2, 1), worker(3, 1));
        let reg = Registry::new(vec![b.clone(), a.clone(), c.clone()]);
        let cands = |reg: &Registry| ports(reg.candidates("m", WorkerRole::Regular));
        assert_eq!(cands(&reg), vec![1]);
        a.set_healthy(false);
        assert_eq!(cands(&reg), vec![2, 3]);
        b.start_draining();
        assert_eq!(cands(&reg), vec![3]);
    }

    #[test]
    fn candidates_come_from_the_models_group_only() {
        let (a, b, c) = (worker(1, 0), worker(2, 0), worker(3, 0));
        let reg = Registry::new(vec![a.clone(), b.clone(), c.clone()]);
        reg.set_models(&a, vec!["x".into()]);
        reg.set_models(&b, vec!["y".into()]);
        // c reports no models: it serves any.
        assert_eq!(ports(reg.candidates("x", WorkerRole::Regular)), vec![3, 1]);
        assert_eq!(ports(reg.candidates("y", WorkerRole::Regular)), vec![3, 2]);
        assert_eq!(ports(reg.candidates("z", WorkerRole::Regular)), vec![3]);
        assert!(reg.candidates("x", WorkerRole::Prefill).is_empty());
        assert!(reg.knows_model("x"));
        assert_eq!(reg.models(), vec!["x".to_string(), "y".to_string()]);
    }

    #[derive(Default)]
    struct Count {
        added: AtomicUsize,
        removed: AtomicUsize,
        relabelled: AtomicUsize,
    }
    impl RegistryObserver for Count {
        fn added(&self, _: &Arc<Worker>) {
            self.added.fetch_add(1, Ordering::Relaxed);
        }
        fn removed(&self, _: &Arc<Worker>) {
            self.removed.fetch_add(1, Ordering::Relaxed);
        }
        fn relabelled(&self, _: &Arc<Worker>) {
            self.relabelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn observers_and_waiters_hear_of_every_change() {
        let a = worker(1, 0);
        let reg = Registry::new(vec![a.clone()]);
        let count = Arc::new(Count::default());
        let observer: Arc<dyn RegistryObserver> = count.clone();
        reg.observe(&observer);
        assert_eq!(
            count.added.load(Ordering::Relaxed),
            1,
            "told of existing workers"
        );
        let changes = reg.changes();
        let b = worker(2, 0);
        assert!(reg.add(b.clone()));
        assert!(!reg.add(b.clone()), "same id twice");
        assert!(changes.has_changed().unwrap());
        reg.relabel(&b, BTreeMap::from([("k".into(), "v".into())]));
        assert_eq!(b.labels()["k"], "v");
        reg.remove(&a.id);
        assert_eq!(count.added.load(Ordering::Relaxed), 2);
        assert_eq!(count.relabelled.load(Ordering::Relaxed), 1);
        assert_eq!(count.removed.load(Ordering::Relaxed), 1);
        assert_eq!(ports(reg.all()), vec![2]);
    }

    #[tokio::test]
    async fn wait_gone_returns_once_the_last_worker_at_the_url_is_removed() {
        let (a, b) = (worker(1, 0), worker(2, 0));
        let reg = Arc::new(Registry::new(vec![a.clone(), b.clone()]));
        let url = a.id.url.clone();
        let waiter = tokio::spawn({
            let reg = reg.clone();
            async move { reg.wait_gone(&url, WorkerRole::Regular).await }
        });
        reg.remove(&b.id);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a's worker is still there");
        reg.remove(&a.id);
        waiter.await.unwrap();
        // Nothing at that URL: returns at once.
        reg.wait_gone(&a.id.url, WorkerRole::Regular).await;
    }
}
