//! The registry: every worker the gateway knows, as a cheap-to-read snapshot.

use std::sync::{Arc, RwLock};

use super::{Worker, WorkerId, WorkerRole};

/// Workers known to the gateway. Readers take an `Arc` snapshot; writers replace it.
#[derive(Debug, Default)]
pub struct Registry {
    workers: RwLock<Arc<Vec<Arc<Worker>>>>,
}

impl Registry {
    pub fn new(workers: Vec<Arc<Worker>>) -> Self {
        Registry {
            workers: RwLock::new(Arc::new(workers)),
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

    /// Eligible workers of `role` serving `model`.
    pub fn candidates_for(&self, model: &str, role: WorkerRole) -> Vec<Arc<Worker>> {
        self.all()
            .iter()
            .filter(|w| w.id.role == role && w.is_eligible() && w.serves(model))
            .cloned()
            .collect()
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
        Some(w)
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
