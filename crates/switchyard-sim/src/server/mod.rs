//! One simulated server: an HTTP listener with one or more data-parallel engines.

mod admin;
mod error;
mod openai;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bootstrap::Rooms;
use crate::clock::SimClock;
use crate::config::SimConfig;
use crate::engine::EngineHandle;
use crate::faults::{FaultState, Faults};
use crate::kv_events::{EventSink, Publisher};
use crate::metrics::ServerMetrics;
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerStats};

pub use error::ApiError;

/// State shared by the handlers of one server.
pub(crate) struct ServerState {
    pub cfg: Arc<SimConfig>,
    pub engines: Vec<EngineHandle>,
    pub rr: AtomicUsize,
    pub faults: FaultState,
    pub metrics: ServerMetrics,
    pub rooms: Rooms,
    pub clock: SimClock,
    /// Requests being answered (vLLM's `server_load`).
    pub in_flight: AtomicI64,
    /// Requests accepted (generation, embeddings, audio), per data-parallel rank.
    pub requests: Vec<AtomicU64>,
    /// `/v1/audio/transcriptions` requests accepted (also counted in `requests`).
    pub transcription_requests: AtomicU64,
    /// `/v1/audio/speech` requests accepted (also counted in `requests`).
    pub speech_requests: AtomicU64,
    pub addr: SocketAddr,
    pub engine_id: String,
    /// Each rank's KV-event publisher and its sink, when events are published.
    pub kv_events: Vec<(Publisher, EventSink)>,
    pub http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
}

/// A running server: its address, faults and counters.
#[derive(Clone)]
pub struct SimServer {
    state: Arc<ServerState>,
    shutdown: watch::Sender<bool>,
    bootstrap_addr: Option<SocketAddr>,
}

impl SimServer {
    /// Binds `addr` and starts the engines and the HTTP listener.
    pub(crate) async fn start(
        cfg: Arc<SimConfig>,
        addr: SocketAddr,
        index: usize,
        clock: SimClock,
    ) -> anyhow::Result<Self> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let metrics = ServerMetrics::new(
            cfg.block_size,
            cfg.num_gpu_blocks,
            !cfg.no_enable_prefix_caching,
            cfg.data_parallel_size,
        );
        let model = cfg.served_model_name[0].clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut kv_events = Vec::new();
        if let Some(kv) = cfg.kv_events_config.as_ref().filter(|k| k.publishes()) {
            let dp = cfg.data_parallel_size;
            for rank in 0..dp {
                let p = Publisher::start(kv, index * dp + rank, rank as u32, shutdown_rx.clone())
                    .await?;
                kv_events.push(p);
            }
        }
        let none_hash = crate::kv_events::none_hash();
        let mut engines = Vec::with_capacity(cfg.data_parallel_size);
        for rank in 0..cfg.data_parallel_size {
            {
                let sched_cfg = SchedulerConfig {
                    block_size: cfg.block_size,
                    num_gpu_blocks: cfg.num_gpu_blocks,
                    max_num_seqs: cfg.max_num_seqs,
                    max_num_batched_tokens: cfg.max_num_batched_tokens,
                    prefix_caching: !cfg.no_enable_prefix_caching,
                    policy: cfg.scheduling_policy,
                    step: cfg.step,
                    step_multiplier: cfg.multiplier(index),
                    kv_transfer_base_secs: cfg.kv_transfer_base_ms * 1e-3,
                    kv_transfer_token_secs: cfg.kv_transfer_token_us * 1e-6,
                };
                let mut sched = Scheduler::new(sched_cfg, metrics.engine(&model, rank));
                let sink = kv_events.get(rank).map(|(_, sink)| sink.clone());
                if sink.is_some()
                    || cfg
                        .kv_events_config
                        .as_ref()
                        .is_some_and(|k| k.enable_kv_cache_events)
                {
                    sched.publish_kv_events(cfg.prefix_caching_hash_algo, none_hash);
                }
                engines.push(EngineHandle::spawn(sched, clock, sink));
            }
        }
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let state = Arc::new(ServerState {
            engines,
            rr: AtomicUsize::new(0),
            faults: FaultState::new(cfg.faults.clone()),
            metrics,
            rooms: Rooms::default(),
            clock,
            in_flight: AtomicI64::new(0),
            requests: (0..cfg.data_parallel_size)
                .map(|_| AtomicU64::new(0))
                .collect(),
            transcription_requests: AtomicU64::new(0),
            speech_requests: AtomicU64::new(0),
            addr,
            engine_id: format!("sim-{}-{}", addr.port(), index),
            kv_events,
            http,
            cfg: cfg.clone(),
        });
        let app = router(state.clone());
        tokio::spawn(serve(
            Some(listener),
            addr,
            app.clone(),
            state.faults.subscribe(),
            shutdown_rx.clone(),
        ));
        let mut bootstrap_addr = None;
        if let Some(port) = cfg.bootstrap_port {
            let port = if port == 0 { 0 } else { port + index as u16 };
            let blistener = bind(SocketAddr::new(addr.ip(), port))?;
            let baddr = blistener.local_addr()?;
            bootstrap_addr = Some(baddr);
            let bapp = Router::new()
                .route("/sim/bootstrap/{room}", get(admin::bootstrap))
                .with_state(state.clone());
            tokio::spawn(serve(
                Some(blistener),
                baddr,
                bapp,
                state.faults.subscribe(),
                shutdown_rx,
            ));
        }
        Ok(SimServer {
            state,
            shutdown,
            bootstrap_addr,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:8001`.
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Address of the extra SGLang bootstrap listener (`--bootstrap-port`), if any.
    pub fn bootstrap_addr(&self) -> Option<SocketAddr> {
        self.bootstrap_addr
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.state.faults.get()
    }

    /// Replaces the faults (as `POST /sim/faults` does).
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.state.faults.set(faults);
        Ok(())
    }

    /// Generation requests accepted by each data-parallel rank.
    pub fn requests_per_rank(&self) -> Vec<u64> {
        self.state
            .requests
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Generation requests accepted in total.
    pub fn requests(&self) -> u64 {
        self.requests_per_rank().iter().sum()
    }

    /// Audio requests accepted (transcriptions and speech); they are also in [`Self::requests`].
    pub fn audio_requests(&self) -> u64 {
        self.state.transcription_requests.load(Ordering::Relaxed)
            + self.state.speech_requests.load(Ordering::Relaxed)
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> i64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// Scheduler snapshots, one per data-parallel rank.
    pub async fn engine_stats(&self) -> Vec<SchedulerStats> {
        let mut out = Vec::new();
        for e in &self.state.engines {
            out.push(e.stats().await);
        }
        out
    }

    /// Each data-parallel rank's KV-event endpoint (PUB) and replay endpoint (ROUTER),
    /// when `--kv-events-config` publishes.
    pub fn kv_events_endpoints(&self) -> Vec<(String, Option<String>)> {
        self.state
            .kv_events
            .iter()
            .map(|(p, _)| (p.endpoint.clone(), p.replay_endpoint.clone()))
            .collect()
    }

    /// Acts out a restart of the engine processes (`POST /sim/restart`): caches emptied
    /// without events, event sequences from 0 again, nothing from before replayable.
    pub async fn restart(&self) {
        admin::restart_engines(&self.state).await;
    }

    /// Withholds the next `n` live KV-event messages of every rank (they stay
    /// replayable), as a lost connection would (`POST /sim/kv_events/drop`).
    pub async fn drop_kv_events(&self, n: u64) {
        for (_, sink) in &self.state.kv_events {
            sink.drop_next(n).await;
        }
    }

    /// Stops listening and drops open connections.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

fn router(state: Arc<ServerState>) -> Router {
    let generation = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/audio/transcriptions", post(openai::transcriptions))
        .route("/v1/audio/speech", post(openai::speech))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::faults_and_load,
        ));
    Router::new()
        .merge(generation)
        .route("/v1/models", get(openai::models))
        .route("/tokenize", post(openai::tokenize))
        .route("/detokenize", post(openai::detokenize))
        .route("/v1/chat/completions/render", post(openai::chat_render))
        .route("/v1/completions/render", post(openai::completions_render))
        .route("/health", get(admin::health))
        .route("/load", get(admin::load))
        .route("/metrics", get(admin::metrics))
        .route("/reset_prefix_cache", post(admin::reset_prefix_cache))
        .route(
            "/sim/faults",
            get(admin::get_faults).post(admin::set_faults),
        )
        .route("/sim/stats", get(admin::stats))
        .route("/sim/restart", post(admin::restart))
        .route("/sim/kv_events/drop", post(admin::drop_kv_events))
        .route("/sim/bootstrap/{room}", get(admin::bootstrap))
        .fallback(admin::not_found)
        .with_state(state)
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(socket.listen(4096)?)
}

/// Accept loop. Closing the listener while `refuse_connections` is set makes new
/// connections fail with "connection refused"; it is bound again when the fault clears.
async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    app: Router,
    mut faults: watch::Receiver<Faults>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let service = TowerToHyperService::new(app);
    loop {
        let refuse = faults.borrow_and_update().refuse_connections;
        if refuse {
            listener = None;
        } else if listener.is_none() {
            match bind(addr) {
                Ok(l) => listener = Some(l),
                Err(e) => tracing::error!("re-binding {addr} after refuse_connections: {e}"),
            }
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = faults.changed() => if changed.is_err() { break },
            accepted = async { listener.as_ref().expect("guarded").accept().await }, if listener.is_some() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}
