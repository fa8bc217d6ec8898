//! Named totals that several replicas add to (the `/route` figures of `GET /stats`).
//! With Redis they are one hash (`{prefix}:route_stats`, `HINCRBYFLOAT`), so every
//! replica reads the fleet-wide totals. Additions that fail while Redis is down are kept
//! and added with the next one that succeeds, so none is lost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::StateError;
use super::redis::{Op, Pool};

pub trait Counters: Send + Sync {
    /// Adds each `(name, delta)`.
    fn add<'a>(
        &'a self,
        deltas: &'a [(&'static str, f64)],
    ) -> BoxFuture<'a, Result<(), StateError>>;
    /// Every total.
    fn read(&self) -> BoxFuture<'_, Result<BTreeMap<String, f64>, StateError>>;
}

#[derive(Default)]
pub struct Memory {
    totals: Mutex<BTreeMap<String, f64>>,
}

fn merge(into: &mut BTreeMap<String, f64>, deltas: &[(&'static str, f64)]) {
    for (k, v) in deltas {
        *into.entry((*k).to_string()).or_default() += v;
    }
}

impl Counters for Memory {
    fn add<'a>(
        &'a self,
        deltas: &'a [(&'static str, f64)],
    ) -> BoxFuture<'a, Result<(), StateError>> {
        merge(
            &mut self.totals.lock().unwrap_or_else(|e| e.into_inner()),
            deltas,
        );
        Box::pin(std::future::ready(Ok(())))
    }

    fn read(&self) -> BoxFuture<'_, Result<BTreeMap<String, f64>, StateError>> {
        let totals = self
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Box::pin(std::future::ready(Ok(totals)))
    }
}

pub struct Redis {
    pool: Arc<Pool>,
    key: String,
    /// Additions not yet written (Redis was down).
    pending: Mutex<BTreeMap<String, f64>>,
}

impl Redis {
    pub fn new(pool: Arc<Pool>) -> Redis {
        Redis {
            key: pool.key("route_stats"),
            pool,
            pending: Mutex::default(),
        }
    }
}

impl Counters for Redis {
    fn add<'a>(
        &'a self,
        deltas: &'a [(&'static str, f64)],
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let mut batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            merge(&mut batch, deltas);
            let mut p = redis::pipe();
            p.atomic();
            for (k, v) in &batch {
                p.cmd("HINCRBYFLOAT").arg(&self.key).arg(k).arg(*v).ignore();
            }
            let written = self.pool.query::<()>("HINCRBYFLOAT", Op::Pipe(&p)).await;
            if written.is_err() {
                merge_owned(
                    &mut self.pending.lock().unwrap_or_else(|e| e.into_inner()),
                    batch,
                );
            }
            written
        })
    }

    fn read(&self) -> BoxFuture<'_, Result<BTreeMap<String, f64>, StateError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&self.key);
            let raw: BTreeMap<String, String> = self.pool.query("HGETALL", Op::Cmd(&cmd)).await?;
            let mut totals: BTreeMap<String, f64> = raw
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect();
            // This replica's unwritten additions count too.
            merge_owned(
                &mut totals,
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            );
            Ok(totals)
        })
    }
}

fn merge_owned(into: &mut BTreeMap<String, f64>, from: BTreeMap<String, f64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}
