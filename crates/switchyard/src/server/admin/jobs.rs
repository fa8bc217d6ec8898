//! Registration jobs: a worker registered through the API is probed in the background;
//! its job says how that went. The most recent 1000 are kept.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// State of a registration job.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Job {
    pub id: String,
    pub url: String,
    /// `pending`, `succeeded` or `failed`.
    pub state: &'static str,
    pub error: Option<String>,
    pub worker_ids: Vec<String>,
}

/// The jobs.
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Job>>,
}

impl Jobs {
    pub fn create(&self, url: &str) -> Job {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Job {
            id: format!("job-{n}"),
            url: url.to_string(),
            state: "pending",
            error: None,
            worker_ids: Vec::new(),
        };
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.insert(n, job.clone());
        while jobs.len() > 1000 {
            jobs.pop_first();
        }
        job
    }

    pub fn finish(&self, id: &str, result: Result<Vec<String>, String>) {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if let Some(job) = jobs.values_mut().find(|j| j.id == id) {
            match result {
                Ok(ids) => {
                    job.state = "succeeded";
                    job.worker_ids = ids;
                }
                Err(e) => {
                    job.state = "failed";
                    job.error = Some(e);
                }
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .values()
            .find(|j| j.id == id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_finish_and_only_the_newest_thousand_are_kept() {
        let jobs = Jobs::default();
        let first = jobs.create("http://a:1");
        jobs.finish(&first.id, Err("unreachable".into()));
        assert_eq!(jobs.get(&first.id).unwrap().state, "failed");
        for _ in 0..1000 {
            jobs.create("http://b:1");
        }
        assert!(jobs.get(&first.id).is_none());
        assert!(jobs.get("job-1001").is_some());
    }
}
