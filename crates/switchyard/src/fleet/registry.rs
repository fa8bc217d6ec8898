//! The registry: every worker the gateway knows, as a cheap-to-read snapshot.

use std::sync::{Arc, RwLock};

use super::{Worker, WorkerId, WorkerRole};

/// Workers known to the gateway. Readers take an `Arc` snapshot; writers replace it.
#[derive(Debug, Default)]
pub struct Registry {
    workers: RwLock<Arc<Vec<Arc<Worker>>>>,
    /// Woken whenever a worker is removed.
    removed: tokio::sync::Notify,
}

impl Registry {
    pub fn new(workers: Vec<Arc<Worker>>) -> Self {
        Registry {
            workers: RwLock::new(Arc::new(workers)),
            removed: tokio::sync::Notify::new(),
        }
    }

    /// Every worker, healthy or not.
    pub fn all(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers.read().expect("registry lock").clone()
    }

    /// Workers a request for `model` may be routed to now: eligible and serving it.
    pub fn candidates(&self, model: &str) -> Vec<Arc<Worker>> {
        self.candidates_for(model, WorkerRole::Regular)
    }

    /// Eligible workers of `role` serving `model`, of the highest priority among them.
    pub fn candidates_for(&self, model: &str, role: WorkerRole) -> Vec<Arc<Worker>> {
        let mut out: Vec<Arc<Worker>> = self
            .all()
            .iter()
            .filter(|w| w.id.role == role && w.is_eligible() && w.serves(model))
            .cloned()
            .collect();
        let top = out.iter().map(|w| w.priority()).max().unwrap_or(0);
        if out.iter().any(|w| w.priority() != top) {
            out.retain(|w| w.priority() == top);
        }
        out
    }

    /// Adds a worker; false if one with the same id exists.
    pub fn add(&self, worker: Arc<Worker>) -> bool {
        let mut guard = self.workers.write().expect("registry lock");
        if guard.iter().any(|w| w.id == worker.id) {
            return false;
        }
        let mut next = (**guard).clone();
        next.push(worker);
        *guard = Arc::new(next);
        true
    }

    /// Removes a worker by id, returning it.
    pub fn remove(&self, id: &WorkerId) -> Option<Arc<Worker>> {
        let mut guard = self.workers.write().expect("registry lock");
        let pos = guard.iter().position(|w| &w.id == id)?;
        let mut next = (**guard).clone();
        let w = next.remove(pos);
        *guard = Arc::new(next);
        drop(guard);
        self.removed.notify_waiters();
        Some(w)
    }

    /// Waits until no worker of `role` at `url` is left (a draining one is removed when
    /// its last request ends).
    pub async fn wait_gone(&self, url: &str, role: WorkerRole) {
        loop {
            let removed = self.removed.notified();
            let mut removed = std::pin::pin!(removed);
            removed.as_mut().enable();
            if !self
                .all()
                .iter()
                .any(|w| w.id.url == url && w.id.role == role)
            {
                return;
            }
            removed.await;
        }
    }

    /// Union of the models healthy workers report, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .all()
            .iter()
            .filter(|w| w.is_healthy())
            .flat_map(|w| w.models())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether any healthy worker reports `model` (or reports no models at all).
    pub fn knows_model(&self, model: &str) -> bool {
        let all = self.all();
        let mut any_healthy = false;
        for w in all.iter().filter(|w| w.is_healthy()) {
            any_healthy = true;
            if w.serves(model) {
                return true;
            }
        }
        !any_healthy
    }

    pub fn healthy_count(&self) -> usize {
        self.all().iter().filter(|w| w.is_healthy()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(port: u16, priority: u32) -> Arc<Worker> {
        let w = crate::fleet::test_worker(port);
        w.set_healthy(true);
        w.set_priority(priority);
        w
    }

    #[test]
    fn the_highest_eligible_priority_wins_and_lower_ones_are_fallbacks() {
        let (a, b, c) = (worker(1, 2), worker(2, 1), worker(3, 1));
        let reg = Registry::new(vec![a.clone(), b.clone(), c.clone()]);
        let ports = |v: Vec<Arc<Worker>>| v.iter().map(|w| w.port()).collect::<Vec<_>>();
        assert_eq!(ports(reg.candidates("m")), vec![1]);
        a.set_healthy(false);
        assert_eq!(ports(reg.candidates("m")), vec![2, 3]);
        b.start_draining();
        assert_eq!(ports(reg.candidates("m")), vec![3]);
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
