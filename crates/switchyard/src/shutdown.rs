//! Shutdown: one signal every background task listens to, and one tracker that knows
//! every task spawned through it, so stopping the gateway joins them all (probes,
//! discovery, drains, registration jobs, the admin and metrics listeners).

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone; every clone sees the same signal and tracker.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a task the shutdown waits for. The task should end once
    /// [`cancelled`](Self::cancelled) completes.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns `task` and stops it at shutdown (for tasks with nothing to finish).
    pub fn spawn_until_shutdown<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = token.cancelled() => {}
            }
        });
    }

    /// Completes once shutdown has begun.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begins shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Waits for every task spawned through this shutdown to end (after [`trigger`](Self::trigger)).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_joins_every_task_after_the_signal() {
        let s = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s2 = s.clone();
        s.spawn(async move {
            s2.cancelled().await;
            tx.send(()).unwrap();
        });
        s.spawn_until_shutdown(std::future::pending());
        assert!(!s.is_shutting_down());
        s.trigger();
        s.wait().await;
        rx.await
            .expect("the task ran to its end before wait returned");
    }
}
