//! Assembling and running the gateway: the data-plane app (axum + tower layers), the
//! metrics listener, the background probes, and graceful shutdown.

pub mod admin;
pub mod health;
pub mod middleware;
pub mod openai;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use futures_util::future::join_all;
use http::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::Config;
use crate::dispatch::pd::Pd;
use crate::dispatch::{DispatchConfig, Dispatcher, RetryConfig, client};
use crate::fleet::health::{ProbeConfig, Prober};
use crate::fleet::{BreakerConfig, Registry, Worker, WorkerRole};
use crate::metrics::Metrics;
use crate::request::SessionHeaders;
use crate::routing::Policies;
use middleware::Admission;

/// Shared by every handler and layer.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub registry: Arc<Registry>,
    pub policies: Arc<Policies>,
    /// `--model-alias`: alias → model.
    pub aliases: std::collections::HashMap<String, Arc<str>>,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
    pub session: SessionHeaders,
    pub admission: Admission,
    pub request_id_headers: Vec<HeaderName>,
    /// Health and model probes, shared with the worker API.
    pub prober: Prober,
    pub jobs: admin::Jobs,
}

impl AppState {
    /// Every set of policies: the models' own, and the prefill and decode pools'.
    pub fn policy_pools(&self) -> Vec<Arc<Policies>> {
        let mut pools = vec![self.policies.clone()];
        if let Some(pd) = &self.dispatcher.pd {
            pools.push(pd.prefill.clone());
            pools.push(pd.decode.clone());
        }
        pools
    }

    /// The policies choosing workers of `role`.
    pub fn pool_for(&self, role: WorkerRole) -> &Arc<Policies> {
        match (role, &self.dispatcher.pd) {
            (WorkerRole::Prefill, Some(pd)) => &pd.prefill,
            (WorkerRole::Decode, Some(pd)) => &pd.decode,
            _ => &self.policies,
        }
    }

    /// Block size of the prefix hashes any policy reads (0: none). Policies set by
    /// worker labels may raise it at runtime.
    pub fn prefix_block_size(&self) -> usize {
        let mut n = self.policies.prefix_block_size();
        if let Some(pd) = &self.dispatcher.pd {
            n = n
                .max(pd.prefill.prefix_block_size())
                .max(pd.decode.prefix_block_size());
        }
        n
    }
}

fn sum_stats(pools: &[Arc<Policies>]) -> crate::routing::IndexStats {
    pools
        .iter()
        .map(|p| p.index_stats())
        .fold(Default::default(), |a, b| crate::routing::IndexStats {
            entries: a.entries + b.entries,
            blocks_total: a.blocks_total + b.blocks_total,
            blocks_matched: a.blocks_matched + b.blocks_matched,
        })
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The worker API's listener.
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Validates `cfg`, probes the workers once, and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::new());
        let breaker = BreakerConfig {
            enabled: !cfg.disable_circuit_breaker,
            failure_threshold: cfg.cb_failure_threshold,
            success_threshold: cfg.cb_success_threshold,
            timeout: Duration::from_secs(cfg.cb_timeout_duration_secs),
            window: Duration::from_secs(cfg.cb_window_duration_secs),
        };
        // One routing candidate per engine, or per data-parallel rank of it.
        let ranks: Vec<Option<u32>> = match cfg.dp_size {
            1 => vec![None],
            n => (0..n as u32).map(Some).collect(),
        };
        let mut workers = cfg
            .worker_urls
            .iter()
            .flat_map(|u| ranks.iter().map(move |r| (u, *r)))
            .map(|(u, rank)| {
                Worker::new(u, rank, WorkerRole::Regular, breaker.clone())
                    .map(Arc::new)
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (url, bootstrap) in cfg.pd_workers().map_err(anyhow::Error::msg)? {
            for rank in &ranks {
                let w = Worker::new(&url, *rank, WorkerRole::Prefill, breaker.clone())
                    .map_err(anyhow::Error::msg)?;
                workers.push(Arc::new(w.with_bootstrap_port(bootstrap)));
            }
        }
        for url in &cfg.decode {
            for rank in &ranks {
                workers.push(Arc::new(
                    Worker::new(url, *rank, WorkerRole::Decode, breaker.clone())
                        .map_err(anyhow::Error::msg)?,
                ));
            }
        }
        let pd: Option<Pd> = if cfg.pd_disaggregation {
            Some(Pd {
                mode: cfg.pd_mode,
                prefill: Arc::new(
                    Policies::with_default(&cfg, cfg.prefill_policy).map_err(anyhow::Error::msg)?,
                ),
                decode: Arc::new(
                    Policies::with_default(&cfg, cfg.decode_policy).map_err(anyhow::Error::msg)?,
                ),
            })
        } else {
            None
        };
        let registry = Arc::new(Registry::new(workers));
        let policies = Arc::new(Policies::new(&cfg).map_err(anyhow::Error::msg)?);
        let aliases = cfg.aliases().map_err(anyhow::Error::msg)?;
        let prober = Prober {
            registry: registry.clone(),
            client: client::build(),
            cfg: ProbeConfig {
                interval: Duration::from_secs(cfg.health_check_interval_secs),
                timeout: Duration::from_secs(cfg.health_check_timeout_secs),
                failure_threshold: cfg.health_failure_threshold,
                success_threshold: cfg.health_success_threshold,
                endpoint: cfg.health_check_endpoint.clone(),
                load_interval: Duration::from_secs(cfg.load_interval_secs),
            },
            metrics: metrics.clone(),
        };
        let all = registry.all();
        let healthy = join_all(all.iter().map(|w| prober.probe_now(w))).await;
        for (w, ok) in all.iter().zip(healthy) {
            if ok {
                tracing::info!(worker = %w.label, models = ?w.models(), "worker ready");
            } else {
                tracing::warn!(worker = %w.label, "worker not healthy yet; it joins once its health checks pass");
            }
        }

        let forward_client_auth = cfg.api_key.is_none() && cfg.worker_api_key.is_none();
        let worker_auth = match &cfg.worker_api_key {
            Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                anyhow::anyhow!("--worker-api-key has characters not allowed in a header")
            })?),
            None => None,
        };
        let dispatcher = Dispatcher {
            cfg: DispatchConfig {
                retry: RetryConfig {
                    max_retries: if cfg.disable_retries {
                        0
                    } else {
                        cfg.retry_max_retries
                    },
                    initial_backoff: Duration::from_millis(cfg.retry_initial_backoff_ms),
                    max_backoff: Duration::from_millis(cfg.retry_max_backoff_ms),
                    multiplier: cfg.retry_backoff_multiplier,
                    jitter: cfg.retry_jitter_factor,
                },
                timeout: Duration::from_secs(cfg.request_timeout_secs),
                worker_auth,
                forward_client_auth,
                passive_failure_threshold: cfg.health_failure_threshold,
                dp_rank_in_body: cfg.dp_rank_in_body,
            },
            metrics: metrics.clone(),
            registry: registry.clone(),
            policies: policies.clone(),
            pd,
        };
        let state = Arc::new(AppState {
            session: SessionHeaders {
                extra: cfg
                    .hash_header
                    .as_deref()
                    .map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()))
                    .transpose()?,
            },
            admission: Admission::new(
                cfg.rate_limit_tokens_per_second,
                cfg.max_concurrent_requests,
                cfg.queue_size,
                Duration::from_secs(cfg.queue_timeout_secs),
                metrics.clone(),
            ),
            request_id_headers: cfg
                .request_id_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()))
                .collect::<Result<_, _>>()?,
            cfg: cfg.clone(),
            registry,
            policies: policies.clone(),
            aliases,
            prober: prober.clone(),
            jobs: admin::Jobs::default(),
            dispatcher,
            metrics,
        });

        let (shutdown, shutdown_rx) = watch::channel(false);
        if let Some(discovery) = crate::fleet::kubernetes::Discovery::from_config(&cfg) {
            let kube = crate::fleet::kubernetes::client(&cfg).await?;
            crate::fleet::kubernetes::spawn(state.clone(), kube, discovery, shutdown_rx.clone());
        }
        tokio::spawn(prober.clone().run_health(shutdown_rx.clone()));
        let pools = state.policy_pools();
        tokio::spawn(prober.run_load(pools.clone(), shutdown_rx.clone()));
        tokio::spawn(maintain(
            pools,
            Duration::from_secs(cfg.eviction_interval),
            shutdown_rx.clone(),
        ));

        let addr: SocketAddr = tokio::net::lookup_host((cfg.host.as_str(), cfg.port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("--host {:?} resolves to no address", cfg.host))?;
        let first = reuseport_listener(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let addr = first.local_addr()?;
        let metrics_listener =
            TcpListener::bind((cfg.prometheus_host.as_str(), cfg.prometheus_port))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {}:{} for metrics: {e}",
                        cfg.prometheus_host,
                        cfg.prometheus_port
                    )
                })?;
        let metrics_addr = metrics_listener.local_addr()?;

        let admin_listener = TcpListener::bind((cfg.admin_host.as_str(), cfg.admin_port))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {}:{} for the worker API: {e}",
                    cfg.admin_host,
                    cfg.admin_port
                )
            })?;
        let admin_addr = admin_listener.local_addr()?;
        let admin_app = admin::router(state.clone());
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin_listener, admin_app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await;
        });

        let app = router(state.clone());
        let metrics_app = Router::new()
            .route("/metrics", get(render_metrics))
            .with_state(state.clone());
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(metrics_listener, metrics_app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await;
        });

        // Thread per core: each has its own event loop, its own listening socket on the
        // same port (the kernel spreads connections), and its own upstream pool, so a
        // request never hops between threads.
        let n = match cfg.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let grace = Duration::from_secs(cfg.shutdown_grace_period_secs);
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(reuseport_listener(addr)?);
        }
        let mut threads = Vec::with_capacity(n);
        for (i, std_listener) in listeners.into_iter().enumerate() {
            let (app, rx) = (app.clone(), shutdown_rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("switchyard-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("building a data-plane runtime");
                    rt.block_on(async move {
                        let listener =
                            TcpListener::from_std(std_listener).expect("registering the listener");
                        serve(listener, app, rx, grace).await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(Gateway {
            addr,
            metrics_addr,
            admin_addr,
            state,
            shutdown,
            threads,
        })
    }

    /// Base URL of the data plane.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections; in-flight requests finish within the grace period.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every data-plane thread has stopped (after [`shutdown`](Self::shutdown)).
    pub async fn wait(self) {
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// A non-blocking listening socket with SO_REUSEPORT, so several threads can accept
/// on the same port.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One thread's accept loop. On shutdown it stops accepting at once and lets open
/// connections finish their requests for up to `grace`.
async fn serve(
    listener: TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    // Generation routes handle request ids, auth and admission inline (the hot path);
    // the others get them from layers.
    let generation = Router::new()
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/completions",
            post(openai::completions).fallback(openai::method_not_allowed),
        )
        .route(
            "/v1/embeddings",
            post(openai::embeddings).fallback(openai::method_not_allowed),
        );
    let v1 = Router::new()
        .route(
            "/v1/models",
            get(openai::models).fallback(openai::method_not_allowed),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ));
    let rest = Router::new()
        .merge(v1)
        .route("/health", get(health::health))
        .route("/readiness", get(health::readiness))
        .route("/liveness", get(health::liveness))
        .fallback(openai::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_id,
        ));
    let mut app = generation.merge(rest);
    let origins = &state.cfg.cors_allowed_origins;
    if !origins.is_empty() {
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods(Any)
                .allow_headers(Any),
        );
    }
    app.with_state(state)
}

async fn render_metrics(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
) -> impl axum::response::IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics
            .render(&st.registry, sum_stats(&st.policy_pools())),
    )
}

/// Periodic policy upkeep: trims the prefix index every `interval`, and every second
/// while it is over its bound.
async fn maintain(
    pools: Vec<Arc<Policies>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => pools.iter().for_each(|p| p.maintain()),
            _ = shutdown.changed() => return,
        }
    }
}
