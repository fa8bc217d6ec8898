//! Background probes: active health checks (and model discovery when a worker turns
//! healthy), and the engine-load scrape of vLLM's `/metrics` that load-aware policies
//! read. Every probe reads at most [`PROBE_BODY_LIMIT`] bytes of an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;

use super::{Registry, Worker};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upstream::{self, PROBE_BODY_LIMIT, UpstreamClient, UpstreamError};

/// Why a probe did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path} answered {status}")]
    Status { path: String, status: StatusCode },
    #[error("{path}: {source}")]
    Upstream {
        path: String,
        #[source]
        source: UpstreamError,
    },
}

/// Settings of the probes.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub endpoint: String,
    pub load_interval: Duration,
}

/// What the probes need.
#[derive(Clone)]
pub struct Prober {
    pub registry: Arc<Registry>,
    pub client: UpstreamClient,
    pub cfg: ProbeConfig,
    pub metrics: Arc<Metrics>,
    /// Set by routing when a policy in use reads engine load; the scrape runs only then.
    pub load_wanted: Arc<AtomicBool>,
}

impl Prober {
    /// GET `path` on `w`, reading at most [`PROBE_BODY_LIMIT`] bytes.
    pub async fn get(&self, w: &Worker, path: &str) -> Result<(StatusCode, Bytes), UpstreamError> {
        let req = upstream::get_request(w.uri(path), w.host_header());
        upstream::fetch(&self.client, req, self.cfg.timeout, PROBE_BODY_LIMIT).await
    }

    /// POST with an empty body to `path` on `w`.
    pub async fn post_empty(&self, w: &Worker, path: &str) -> Result<StatusCode, UpstreamError> {
        let req = upstream::post_empty_request(w.uri(path), w.host_header());
        upstream::fetch(&self.client, req, self.cfg.timeout, PROBE_BODY_LIMIT)
            .await
            .map(|(s, _)| s)
    }

    /// GET `path`, requiring a success status; the body.
    async fn get_ok(&self, w: &Worker, path: &str) -> Result<Bytes, ProbeError> {
        match self.get(w, path).await {
            Ok((s, body)) if s.is_success() => Ok(body),
            Ok((status, _)) => Err(ProbeError::Status {
                path: path.to_string(),
                status,
            }),
            Err(source) => Err(ProbeError::Upstream {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Whether the health endpoint answers with a success now.
    pub async fn passes_health_check(&self, w: &Worker) -> Result<(), ProbeError> {
        let start = std::time::Instant::now();
        self.get_ok(w, &self.cfg.endpoint).await?;
        w.record_probe_time(start.elapsed());
        Ok(())
    }

    /// One check of one worker, applying thresholds. A worker that turns healthy has its
    /// models re-read.
    pub async fn check(&self, w: &Arc<Worker>) {
        let ok = self.passes_health_check(w).await.is_ok();
        let flipped = w.record_check(ok, self.cfg.failure_threshold, self.cfg.success_threshold);
        if flipped {
            if w.is_healthy() {
                tracing::info!(worker = %w.label, "worker healthy");
                self.discover_models(w).await;
            } else {
                tracing::warn!(worker = %w.label, "worker unhealthy: health checks failing");
            }
        }
        self.metrics.set_worker_health(&w.label, w.is_healthy());
    }

    /// First probe at startup: a single pass makes the worker healthy.
    pub async fn probe_now(&self, w: &Arc<Worker>) -> bool {
        let ok = self.passes_health_check(w).await.is_ok();
        if ok {
            w.set_healthy(true);
            self.discover_models(w).await;
        }
        self.metrics.set_worker_health(&w.label, ok);
        ok
    }

    /// Model ids on the engine's `/v1/models`.
    pub async fn read_models(&self, w: &Worker) -> Result<Vec<String>, ProbeError> {
        let body = self.get_ok(w, "/v1/models").await?;
        Ok(serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["data"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
            })
            .unwrap_or_default())
    }

    /// Reads `/v1/models` into the registry's groups.
    pub async fn discover_models(&self, w: &Arc<Worker>) {
        match self.read_models(w).await {
            Ok(ids) => self.registry.set_models(w, ids),
            Err(e) => tracing::warn!(worker = %w.label, error = %e, "could not list models"),
        }
    }

    /// Data-parallel ranks behind the engine: the distinct `engine` labels vLLM puts on
    /// `vllm:num_requests_running` (one per rank). 1 when that cannot be read.
    pub async fn discover_dp_size(&self, w: &Worker) -> usize {
        match self.get_ok(w, "/metrics").await {
            Ok(body) => engine_count(&String::from_utf8_lossy(&body), "vllm:num_requests_running"),
            Err(_) => 1,
        }
    }

    /// The engine's Prometheus metrics text (the dashboard reads it once a second while
    /// someone watches).
    pub async fn engine_metrics(&self, w: &Worker) -> Result<Bytes, ProbeError> {
        self.get_ok(w, "/metrics").await
    }

    /// Scrapes the engine's queue from its Prometheus metrics.
    pub async fn scrape_load(&self, w: &Arc<Worker>) {
        if let Ok(body) = self.get_ok(w, "/metrics").await {
            let text = String::from_utf8_lossy(&body);
            let rank = w.id.dp_rank;
            let running = engine_gauge(&text, "vllm:num_requests_running", rank);
            let waiting = engine_gauge(&text, "vllm:num_requests_waiting", rank);
            w.set_engine_load(running as u32, waiting as u32);
        }
    }

    /// Runs health checks every interval until shutdown.
    pub async fn run_health(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let workers = self.registry.all();
            tokio::select! {
                _ = join_all(workers.iter().map(|w| self.check(w))) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Scrapes engine load every `load_interval` while a policy reads it, until shutdown.
    pub async fn run_load(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.cfg.load_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if !self.load_wanted.load(Ordering::Relaxed) {
                continue;
            }
            let workers = self.registry.all();
            let scrapes = workers
                .iter()
                .filter(|w| w.is_healthy())
                .map(|w| self.scrape_load(w));
            tokio::select! {
                _ = join_all(scrapes) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Sum of a vLLM gauge's samples, restricted to `engine="<rank>"` when a rank is given.
pub fn engine_gauge(text: &str, name: &str, rank: Option<u32>) -> f64 {
    let want = rank.map(|r| format!("engine=\"{r}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            if metric != name {
                return None;
            }
            if let Some(w) = &want
                && !series.contains(w.as_str())
            {
                return None;
            }
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Distinct values of the `engine` label on a metric's samples (at least 1).
pub fn engine_count(text: &str, name: &str) -> usize {
    let mut engines: Vec<&str> = text
        .lines()
        .filter(|l| l.split('{').next() == Some(name))
        .filter_map(|l| {
            let rest = &l[l.find("engine=\"")? + 8..];
            Some(&rest[..rest.find('"')?])
        })
        .collect();
    engines.sort_unstable();
    engines.dedup();
    engines.len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_gauges_per_rank() {
        let text = "# HELP x\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3\n\
                    vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 5.0\n\
                    vllm:num_requests_waiting{model_name=\"m\",engine=\"1\"} 2\n";
        assert_eq!(engine_gauge(text, "vllm:num_requests_running", None), 8.0);
        assert_eq!(
            engine_gauge(text, "vllm:num_requests_running", Some(1)),
            5.0
        );
        assert_eq!(
            engine_gauge(text, "vllm:num_requests_waiting", Some(0)),
            0.0
        );
        assert_eq!(engine_count(text, "vllm:num_requests_running"), 2);
        assert_eq!(engine_count(text, "vllm:num_requests_waiting"), 1);
        assert_eq!(engine_count("", "vllm:num_requests_running"), 1);
    }
}
