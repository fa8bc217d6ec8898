//! `switchyard-sim`: simulated vLLM engines that react to routing the way real ones do.
//!
//! - [`tokenizer`]: cl100k BPE and the chat template.
//! - [`kv_cache`]: the paged prefix cache (chained block hashes, LRU of free blocks).
//! - [`kv_events`]: the cache's changes published over ZeroMQ as vLLM publishes them.
//! - [`scheduler`]: continuous batching with chunked prefill and preemption.
//! - [`engine`]: the step loop paced by the simulated [`clock`].
//! - [`server`]: the OpenAI/vLLM HTTP API, faults and metrics of one port.
//! - [`spawn`]: start engines in-process (tests, `switchyard demo`, benchmarks).
//! - [`cli`]: the `switchyard-sim` command (its binary is built in the `switchyard` package).

pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod faults;
pub mod kv_cache;
pub mod kv_events;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod tokenizer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use config::{OutputLen, Role, SchedulingPolicy, SimConfig, StepModel};
pub use faults::Faults;
pub use server::SimServer;

use clock::SimClock;

/// Every server started by one [`spawn`] call.
pub struct SimHandle {
    servers: Vec<SimServer>,
}

impl SimHandle {
    /// Base URLs of the servers, one per `--engines`.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(SimServer::url).collect()
    }

    /// Base URL of the first server.
    pub fn url(&self) -> String {
        self.servers[0].url()
    }

    /// The servers, for faults and counters.
    pub fn servers(&self) -> &[SimServer] {
        &self.servers
    }

    /// Server `i`.
    pub fn server(&self, i: usize) -> &SimServer {
        &self.servers[i]
    }

    /// Stops every server.
    pub fn shutdown(&self) {
        self.servers.iter().for_each(SimServer::shutdown);
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts `config.engines` servers (port 0: ephemeral ports) on the current tokio runtime.
pub async fn spawn(config: SimConfig) -> anyhow::Result<SimHandle> {
    config.validate().map_err(anyhow::Error::msg)?;
    tokenizer::warm_up();
    let ip: IpAddr = config
        .host
        .parse()
        .map_err(|e| anyhow::anyhow!("--host {:?}: {e}", config.host))?;
    let clock = SimClock::new(config.time_scale);
    let cfg = Arc::new(config);
    let mut servers = Vec::with_capacity(cfg.engines);
    for i in 0..cfg.engines {
        let port = if cfg.port == 0 {
            0
        } else {
            cfg.port + i as u16
        };
        let server = SimServer::start(cfg.clone(), SocketAddr::new(ip, port), i, clock).await?;
        servers.push(server);
    }
    Ok(SimHandle { servers })
}
