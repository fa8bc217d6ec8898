//! What every handler shares: the pipeline and the parts the admin and health
//! surfaces read.

use std::sync::Arc;

use crate::config::Config;
use crate::fleet::{Enroller, Registry};
use crate::metrics::{LiveState, Metrics, WorkerGauges};
use crate::pipeline::Pipeline;
use crate::routing::WorkerSelector;
use crate::shutdown::Shutdown;

use super::admin::jobs::Jobs;

/// Shared by every handler.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    /// `/route`, its sessions and stats.
    pub route: Arc<crate::pipeline::route::RouteApi>,
    /// The Responses API's service (docs/responses.md).
    pub responses: Arc<switchyard_stateful::responses::service::Responses>,
    /// The Conversations API's service.
    pub conversations: Arc<switchyard_stateful::responses::conversations::Conversations>,
    /// The Files API's service.
    pub files: Arc<switchyard_stateful::files::Files>,
    pub vector_stores: switchyard_stateful::vector::VectorStores,
    /// A files directory of the gateway's own (no `--files-dir`), removed with it.
    pub scratch_files: Option<ScratchDir>,
    pub registry: Arc<Registry>,
    pub workers: Arc<WorkerSelector>,
    pub enroller: Arc<Enroller>,
    pub jobs: Jobs,
    pub metrics: Arc<Metrics>,
    /// The live dashboard's sampler and latest snapshot.
    pub dashboard: super::admin::dashboard::Dashboard,
    pub shutdown: Shutdown,
}

impl AppState {
    /// Whether the gateway runs prefill/decode disaggregation.
    pub fn disaggregated(&self) -> bool {
        self.cfg.pd_disaggregation
    }

    /// Reloads the model-selection settings from the `--config` file; a bad file
    /// changes nothing.
    pub async fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let cfg = self.cfg.reload_selection()?;
        self.pipeline.models.reload(&cfg, &*self.pipeline).await?;
        tracing::info!("model selection settings reloaded");
        Ok(())
    }

    /// Every model the fleet serves or the config names, with the number of workers
    /// that serve it and of those that are healthy and not draining.
    pub fn model_health(&self) -> Vec<(String, usize, usize)> {
        let workers = self.registry.all();
        let mut models: std::collections::BTreeSet<String> = self
            .pipeline
            .models
            .configured_models()
            .into_iter()
            .collect();
        for w in &workers {
            models.extend(w.models());
        }
        models
            .into_iter()
            .map(|m| {
                let serving = workers.iter().filter(|w| w.serves(&m));
                let (mut all, mut ok) = (0, 0);
                for w in serving {
                    all += 1;
                    ok += usize::from(w.is_healthy() && !w.is_draining());
                }
                (m, ok, all)
            })
            .collect()
    }

    /// The live state mirrored into gauges.
    pub fn live_state(&self) -> LiveState {
        let (index_entries, blocks_total, blocks_matched) = self.workers.stats();
        LiveState {
            workers: self
                .registry
                .all()
                .iter()
                .map(|w| WorkerGauges {
                    label: w.label.clone(),
                    in_flight: w.in_flight(),
                    healthy: w.is_healthy(),
                    breaker: w.breaker.state() as u8,
                })
                .collect(),
            index_entries,
            kv_index_blocks: self.workers.kv().index.len(),
            kv_streams_live: self.workers.kv().live_streams(),
            blocks_total,
            blocks_matched,
            models: self
                .model_health()
                .into_iter()
                .map(|(m, ok, _)| (Arc::from(m), ok > 0))
                .collect(),
            workflows: {
                let mut w = self.pipeline.workflows.figures();
                (w.migrations, w.splits) = self.workers.workflow_moves();
                w
            },
        }
    }
}

/// A directory removed when dropped.
pub struct ScratchDir(pub std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
