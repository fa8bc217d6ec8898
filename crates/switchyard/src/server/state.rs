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
    pub registry: Arc<Registry>,
    pub workers: Arc<WorkerSelector>,
    pub enroller: Arc<Enroller>,
    pub jobs: Jobs,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

impl AppState {
    /// Whether the gateway runs prefill/decode disaggregation.
    pub fn disaggregated(&self) -> bool {
        self.cfg.pd_disaggregation
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
            blocks_total,
            blocks_matched,
        }
    }
}
