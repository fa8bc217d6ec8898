//! The Redis connection pool shared by every Redis-backed store: a few multiplexed
//! connections (`ConnectionManager`s, which pipeline concurrent commands and reconnect
//! after a Redis restart) used in turn, with a timeout on every command. After a
//! failure the pool answers "down" at once for a short while instead of making every
//! request wait for a dead server; the next call after that tries again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::StateError;

/// How long the pool stays "down" after a failure before trying Redis again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What [`Pool::query`] sends.
#[derive(Clone, Copy)]
pub enum Op<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

pub struct Pool {
    managers: Vec<ConnectionManager>,
    next: AtomicUsize,
    /// Milliseconds since `epoch` until which Redis is taken as down (0: up).
    down_until: AtomicU64,
    epoch: Instant,
    timeout: Duration,
    prefix: String,
}

impl Pool {
    /// A pool of `size` connections to `url` (`redis://host:port/db`), opened lazily.
    pub fn new(
        url: &str,
        prefix: &str,
        size: usize,
        timeout: Duration,
    ) -> Result<Pool, StateError> {
        let client =
            redis::Client::open(url).map_err(|e| StateError(format!("--redis-url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let managers = (0..size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StateError(format!("redis: {e}")))?;
        Ok(Pool {
            managers,
            next: AtomicUsize::new(0),
            down_until: AtomicU64::new(0),
            epoch: Instant::now(),
            timeout,
            prefix: prefix.to_string(),
        })
    }

    /// `{prefix}:{rest}`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Whether a recent failure marks Redis as down.
    pub fn is_down(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 <= self.down_until.load(Ordering::Relaxed)
    }

    /// Runs one command or pipeline on a pooled connection, within the timeout. A
    /// connection found dead (Redis restarted) is replaced and the command tried once
    /// more on the new one: for commands that may safely run twice.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        op: Op<'_>,
    ) -> Result<T, StateError> {
        self.run(what, op, 2).await
    }

    /// `query` without the second try, for commands that must not run twice (additions,
    /// queue pushes and pops): a connection that died after Redis ran one but before its
    /// reply came back would otherwise repeat it.
    pub async fn query_once<T: redis::FromRedisValue>(
        &self,
        what: &str,
        op: Op<'_>,
    ) -> Result<T, StateError> {
        self.run(what, op, 1).await
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        op: Op<'_>,
        max_tries: u32,
    ) -> Result<T, StateError> {
        if self.is_down() {
            return Err(StateError(format!("redis is down ({what} not tried)")));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.managers.len();
        let mut conn = self.managers[i].clone();
        let mut tries = 0;
        let out = loop {
            tries += 1;
            let sent = async {
                match op {
                    Op::Cmd(c) => c.query_async(&mut conn).await,
                    Op::Pipe(p) => p.query_async(&mut conn).await,
                }
            };
            match tokio::time::timeout(self.timeout, sent).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e))
                    if tries < max_tries && (e.is_connection_dropped() || e.is_io_error()) => {}
                Ok(Err(e)) => break format!("redis {what}: {e}"),
                Err(_) => {
                    break format!(
                        "redis {what}: no answer within {} ms",
                        self.timeout.as_millis()
                    );
                }
            }
        };
        let until = self.epoch.elapsed() + RETRY_AFTER;
        self.down_until
            .store(until.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(error = %out, "session store degraded");
        Err(StateError(out))
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.query::<String>("PING", Op::Cmd(&redis::cmd("PING")))
            .await
            .map(|_| ())
    }
}
