//! The entry layer: assembling and running the gateway. [`Gateway::start`] builds every
//! part from the config — fleet, routing, pipeline — starts the background tasks and
//! the three listeners (data plane, admin, metrics), and [`Gateway::shutdown`] /
//! [`Gateway::wait`] stop and join them all.
//!
//! - [`router`]: the data plane's routes; handlers in [`openai`] and [`health`].
//! - [`admin`]: the worker API on its own listener.
//! - [`listener`]: thread-per-core accept loops.
//! - [`layers`]: request-id and key layers of the routes off the hot path.
//! - [`state`]: what handlers share.

pub mod admin;
pub mod files;
pub mod health;
pub mod layers;
pub mod listener;
pub mod openai;
pub mod responses;
pub mod route;
pub mod router;
pub mod selection;
pub mod state;
pub mod vector_stores;
pub mod workflows;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::future::join_all;
use http::{HeaderName, HeaderValue};
use tokio::net::TcpListener;

use crate::config::{Config, PdMode};
use crate::dispatch::{DispatchConfig, Dispatcher, RetryConfig, Strategy};
use crate::fleet::{
    BreakerConfig, Enroller, HostGuard, ProbeConfig, Prober, Registry, Worker, WorkerRole,
    WorkerSettings,
};
use crate::metrics::{Metrics, PoolLabel};
use crate::pipeline::route::{RouteApi, RouteSettings};
use crate::pipeline::{Admission, AdmissionConfig, EntryConfig, Pipeline};
use crate::request::SessionHeaders;
use crate::routing::WorkerSelector;
use crate::selection::ModelSelector;
use crate::shutdown::Shutdown;
use crate::upstream::{self, EngineUrl};
pub use state::AppState;

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The worker API's listener.
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Shutdown,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The workers named in the config: one per engine, or per data-parallel rank of it.
fn static_workers(cfg: &Config, settings: &WorkerSettings) -> anyhow::Result<Vec<Arc<Worker>>> {
    let ranks: Vec<Option<u32>> = match cfg.dp_size {
        1 => vec![None],
        n => (0..n as u32).map(Some).collect(),
    };
    let mut engines: Vec<(EngineUrl, WorkerRole, Option<u16>)> = Vec::new();
    engines.extend(
        cfg.regular_workers()?
            .into_iter()
            .map(|u| (u, WorkerRole::Regular, None)),
    );
    engines.extend(
        cfg.pd_workers()?
            .into_iter()
            .map(|(u, b)| (u, WorkerRole::Prefill, b)),
    );
    engines.extend(
        cfg.decode_workers()?
            .into_iter()
            .map(|u| (u, WorkerRole::Decode, None)),
    );
    Ok(engines
        .iter()
        .flat_map(|(url, role, bootstrap)| {
            ranks.iter().map(move |rank| {
                Arc::new(
                    Worker::new(url, *rank, *role, settings)
                        .with_bootstrap_port(*bootstrap)
                        .with_kv_events(cfg.kv_endpoints(&url.as_string(), *rank)),
                )
            })
        })
        .collect())
}

/// The response cache the config asks for (docs/caching.md), on the shared Redis pool
/// when its backend is `redis`.
fn response_cache(
    cfg: &Config,
    redis: Option<Arc<crate::state::redis::Pool>>,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn crate::state::Clock>,
) -> Option<Arc<crate::pipeline::cache::ResponseCache>> {
    use crate::config::CacheBackend;
    use crate::state::cache::{CacheStore, Memory, Redis, SemanticIndex};
    let backend = cfg.response_cache?;
    let store: Arc<dyn CacheStore> = match (backend, redis) {
        (CacheBackend::Redis, Some(pool)) => Arc::new(Redis::new(
            pool,
            Duration::from_millis(cfg.response_cache_timeout_ms),
        )),
        // Validation makes the redis backend need --redis-url.
        _ => Arc::new(Memory::new(
            cfg.response_cache_max_entries,
            cfg.response_cache_max_bytes,
            clock.clone(),
            metrics.clone(),
        )),
    };
    let semantic = cfg.response_cache_semantic_threshold.map(|_| {
        SemanticIndex::new(
            cfg.response_cache_semantic_bucket_size,
            cfg.response_cache_max_entries,
            clock.clone(),
        )
    });
    Some(Arc::new(crate::pipeline::cache::ResponseCache::new(
        crate::pipeline::cache::CacheSettings {
            ttl: Duration::from_secs(cfg.response_cache_ttl_secs),
            max_entry_bytes: cfg.response_cache_max_entry_bytes,
            semantic_threshold: cfg.response_cache_semantic_threshold.map(|t| t as f32),
            embed_timeout: Duration::from_millis(cfg.response_cache_embed_timeout_ms),
        },
        store,
        semantic,
        metrics.clone(),
        clock.clone(),
    )))
}

impl Gateway {
    /// Validates `cfg`, probes the workers once, and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Gateway> {
        Self::start_with_clock(cfg, Arc::new(crate::state::SystemClock)).await
    }

    /// [`start`](Self::start) with the wall clock that state with a lifetime (sessions,
    /// workflows, limits' windows, cached answers) reads: tests move it by hand.
    pub async fn start_with_clock(
        cfg: Config,
        clock: Arc<dyn crate::state::Clock>,
    ) -> anyhow::Result<Gateway> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::new());
        let shutdown = Shutdown::new();
        let settings = WorkerSettings {
            breaker: BreakerConfig {
                enabled: !cfg.disable_circuit_breaker,
                failure_threshold: cfg.cb_failure_threshold,
                success_threshold: cfg.cb_success_threshold,
                timeout: Duration::from_secs(cfg.cb_timeout_duration_secs),
                window: Duration::from_secs(cfg.cb_window_duration_secs),
            },
            passive_failure_threshold: cfg.health_failure_threshold,
        };
        let registry = Arc::new(Registry::new(static_workers(&cfg, &settings)?));
        let load_wanted = Arc::new(AtomicBool::new(false));
        let workers =
            WorkerSelector::new(&cfg, registry.clone(), metrics.clone(), load_wanted.clone())?;
        // Per-worker KV-event subscriptions end with the gateway.
        {
            let (kv, s) = (workers.kv().clone(), shutdown.clone());
            shutdown.spawn(async move {
                s.cancelled().await;
                kv.stop_all();
            });
        }
        if let Some(ep) = &cfg.kv_events_bind {
            let sub = crate::routing::kv::subscriber::bind(ep)
                .await
                .map_err(|e| anyhow::anyhow!("--kv-events-bind {ep}: {e}"))?;
            shutdown.spawn_until_shutdown(crate::routing::kv::subscriber::run_bound(
                workers.kv().clone(),
                registry.clone(),
                sub,
            ));
        }
        let prober = Prober {
            registry: registry.clone(),
            client: upstream::build(),
            cfg: ProbeConfig {
                interval: Duration::from_secs(cfg.health_check_interval_secs),
                timeout: Duration::from_secs(cfg.health_check_timeout_secs),
                failure_threshold: cfg.health_failure_threshold,
                success_threshold: cfg.health_success_threshold,
                endpoint: cfg.health_check_endpoint.clone(),
                load_interval: Duration::from_secs(cfg.load_interval_secs),
            },
            metrics: metrics.clone(),
            load_wanted,
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
        let guard = HostGuard::new(&cfg.worker_allowlist, &cfg.worker_allowed_ports).await;
        let enroller = Arc::new(Enroller::new(
            cfg.clone(),
            prober.clone(),
            settings,
            guard,
            metrics.clone(),
            shutdown.clone(),
        ));

        let worker_auth = match &cfg.worker_api_key {
            Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                anyhow::anyhow!("--worker-api-key has characters not allowed in a header")
            })?),
            None => None,
        };
        let strategy = match (cfg.pd_disaggregation, cfg.pd_mode) {
            (false, _) => Strategy::Colocated,
            (true, mode @ (PdMode::Vllm | PdMode::Sglang)) => Strategy::Disaggregated(mode),
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
                forward_client_auth: cfg.forward_client_auth,
                dp_rank_in_body: cfg.dp_rank_in_body,
            },
            strategy,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let stores = crate::state::Stores::open(
            &crate::state::StateConfig {
                redis_url: cfg.redis_url.clone(),
                redis_prefix: cfg.redis_key_prefix.clone(),
                redis_pool_size: cfg.redis_pool_size,
                redis_timeout: Duration::from_millis(cfg.redis_timeout_ms),
                session_ttl: Duration::from_secs(cfg.session_timeout_secs),
                max_sessions: cfg.max_sessions,
                max_sessions_per_user: cfg.max_sessions_per_user,
            },
            clock.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let workflows = Arc::new(crate::workflows::Workflows::new(
            crate::workflows::WorkflowConfig {
                ttl_ms: (cfg.workflow_ttl as i64).saturating_mul(1000),
                max_workflows: cfg.max_workflows,
                max_queue: cfg.max_message_queue_size,
                max_message_bytes: cfg.max_message_bytes,
                default_message_ttl_ms: (cfg.workflow_ttl as i64).saturating_mul(1000),
            },
            clock.clone(),
            stores.redis.clone(),
        ));
        // The stateful APIs' store (in memory unless --database-url says otherwise).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let store = Arc::new(
            switchyard_stateful::store::Store::open(
                &switchyard_stateful::store::StoreConfig {
                    url: cfg
                        .database_url
                        .clone()
                        .unwrap_or_else(|| "sqlite::memory:".into()),
                    max_connections: 8,
                    acquire_timeout: Duration::from_secs(5),
                },
                now,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        // Keys, tenants and limits (docs/tenancy.md), over the same store.
        let directory = crate::tenancy::directory::Directory::open(
            store.clone(),
            clock.clone(),
            &cfg.tenants,
            &cfg.api_keys,
            cfg.api_key.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("tenancy: {e}"))?;
        let (tenancy, limit_settler) = crate::tenancy::Tenancy::new(
            directory,
            crate::tenancy::TenancyConfig {
                global: cfg.global_limits.clone(),
                on_store_error: cfg.rate_limit_on_store_error,
                replicas: cfg.rate_limit_replicas,
                default_max_tokens: cfg.default_max_tokens_estimate,
                auth_failures_per_minute: cfg.auth_failures_per_minute,
                slot_lease: Duration::from_secs(cfg.request_timeout_secs.saturating_add(60)),
            },
            stores.redis.clone(),
            clock.clone(),
            metrics.clone(),
        );
        tenancy.preload_budgets().await;
        if let Some(settler) = limit_settler {
            shutdown.spawn_until_shutdown(settler);
        }
        shutdown.spawn(
            tenancy
                .clone()
                .run(Duration::from_secs(cfg.usage_flush_secs), shutdown.clone()),
        );
        let response_cache = response_cache(&cfg, stores.redis.clone(), &metrics, &clock);
        let header = |h: &str| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes());
        let pipeline = Arc::new(Pipeline {
            entry: EntryConfig {
                request_id_headers: cfg
                    .request_id_headers
                    .iter()
                    .map(|h| header(h))
                    .collect::<Result<_, _>>()?,
                session: SessionHeaders {
                    extra: cfg.hash_header.as_deref().map(header).transpose()?,
                },
                max_payload_size: cfg.max_payload_size,
                metadata_in_body: cfg.routing_metadata_in_body,
                forward_workflow_metadata: cfg.forward_workflow_metadata,
                forward_priority: cfg.forward_priority,
            },
            admission: Admission::new(
                AdmissionConfig {
                    rate: cfg.rate_limit_tokens_per_second,
                    max_concurrent: cfg.max_concurrent_requests,
                    queue_size: cfg.queue_size,
                    queue_timeout: Duration::from_secs(cfg.queue_timeout_secs),
                    aging_secs: cfg.priority_aging_secs,
                },
                metrics.clone(),
            ),
            models: ModelSelector::new(&cfg, metrics.clone())?,
            workers: workers.clone(),
            dispatcher,
            registry: registry.clone(),
            metrics: metrics.clone(),
            workflows: workflows.clone(),
            tenancy: tenancy.clone(),
            cache: response_cache.clone(),
        });
        // The classifier's one-off work (embedding the intents' examples).
        pipeline.models.prepare(&*pipeline).await;
        let route = Arc::new(RouteApi::new(
            pipeline.clone(),
            stores,
            RouteSettings {
                history_messages: cfg.session_history_messages,
                max_query_bytes: cfg.route_max_query_bytes,
            },
        ));
        let (blobs, scratch_files): (Arc<dyn switchyard_stateful::files::blobs::Blobs>, _) =
            match (&cfg.files_url, &cfg.files_dir) {
                (Some(url), _) => (
                    Arc::new(
                        switchyard_stateful::files::blobs::ObjectBlobs::from_env(url)
                            .map_err(|e| anyhow::anyhow!("--files-url {e}"))?,
                    ),
                    None,
                ),
                (None, dir) => {
                    let (dir, scratch) = match dir {
                        Some(d) => (d.clone(), None),
                        None => {
                            let d = std::env::temp_dir().join(
                                switchyard_stateful::responses::service::random_id(
                                    "switchyard-files-",
                                ),
                            );
                            (d.clone(), Some(state::ScratchDir(d)))
                        }
                    };
                    let local = switchyard_stateful::files::blobs::LocalBlobs::new(&dir)
                        .map_err(|e| anyhow::anyhow!("--files-dir {}: {e}", dir.display()))?;
                    (Arc::new(local), scratch)
                }
            };
        let files = switchyard_stateful::files::Files::new(store.clone(), blobs, cfg.max_file_size);
        let embedder = cfg.embedding_model.clone().map(|model| {
            Arc::new(crate::pipeline::responses::PipelineEmbedder {
                pipeline: pipeline.clone(),
                model,
            }) as Arc<dyn switchyard_stateful::vector::embed::Embedder>
        });
        #[cfg(feature = "local-embeddings")]
        let embedder = match &cfg.local_embedding_model {
            Some(dir) => Some(Arc::new(
                crate::selection::classify::local::LocalEmbedder::load(dir).map_err(|e| {
                    anyhow::anyhow!("--local-embedding-model {}: {e}", dir.display())
                })?,
            )
                as Arc<dyn switchyard_stateful::vector::embed::Embedder>),
            None => embedder,
        };
        // Semantic cache matching embeds with the same model as vector stores.
        if let (Some(rc), Some(e)) = (&response_cache, &embedder) {
            rc.set_embedder(e.clone());
        }
        let vector_stores =
            switchyard_stateful::vector::VectorStores::new(store.clone(), files.clone(), embedder)
                .with_ingest(switchyard_stateful::vector::IngestConfig {
                    workers: cfg.ingest_workers,
                    ..Default::default()
                });
        let responses = switchyard_stateful::responses::service::Responses::new(
            store.clone(),
            Arc::new(crate::pipeline::responses::PipelineEngine(pipeline.clone())),
        )
        .observed(metrics.clone())
        .with_files(files.clone())
        .with_vector_stores(vector_stores.clone(), cfg.max_tool_calls)
        .with_tool_timeout(std::time::Duration::from_secs_f64(cfg.tools.timeout_secs))
        .with_max_background(cfg.max_background_responses);
        let responses = match &cfg.tools.web_search {
            Some(w) => responses.with_web_search(Arc::new(
                crate::tools::web_search::HttpSearch::new(w)
                    .map_err(|e| anyhow::anyhow!("tools.web_search: {e}"))?,
            )),
            None => responses,
        };
        let responses = Arc::new(match &cfg.tools.mcp {
            Some(m) => responses.with_mcp(Arc::new(crate::tools::mcp::RemoteMcp::new(m))),
            None => responses,
        });
        let state = Arc::new(AppState {
            cfg: cfg.clone(),
            route,
            responses: responses.clone(),
            conversations: Arc::new(
                switchyard_stateful::responses::conversations::Conversations::new(store.clone()),
            ),
            files: Arc::new(files),
            vector_stores: vector_stores.clone(),
            scratch_files,
            pipeline,
            registry,
            workers: workers.clone(),
            enroller: enroller.clone(),
            jobs: Default::default(),
            metrics: metrics.clone(),
            dashboard: Default::default(),
            shutdown: shutdown.clone(),
        });

        // Background work, every task joined at shutdown.
        if let Some(discovery) = crate::fleet::kubernetes::Discovery::from_config(&cfg) {
            let kube = crate::fleet::kubernetes::client(&cfg).await?;
            crate::fleet::kubernetes::spawn(enroller, kube, discovery, &cfg, &shutdown);
        }
        shutdown.spawn(prober.clone().run_health(shutdown.clone()));
        // Vector store ingestion: jobs an earlier run left (SQLite) resume now.
        if store.vectors().is_ok() {
            match vector_stores.resume_jobs().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "vector store ingestion resumes"),
                Err(e) => tracing::warn!(error = ?e, "vector store jobs were not resumed"),
            }
            for worker in vector_stores.workers() {
                shutdown.spawn_until_shutdown(worker);
            }
        }
        {
            let (workflows, shutdown) = (workflows.clone(), shutdown.clone());
            shutdown.clone().spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => workflows.sweep().await,
                        _ = shutdown.cancelled() => return,
                    }
                }
            });
        }
        {
            // Every second, background responses cancelled through another replica
            // stop; every minute, expired files and vector stores go; every third of a lease, leases of running responses are renewed and
            // abandoned ones failed; hourly, the retention purge.
            let (shutdown, retention) = (shutdown.clone(), cfg.store_retention_days);
            let metrics = metrics.clone();
            let files = state.files.clone();
            let vector_stores = state.vector_stores.clone();
            shutdown.clone().spawn(async move {
                let lease_every = (switchyard_stateful::responses::service::LEASE_SECS / 3) as u64;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut last_purge: Option<std::time::Instant> = None;
                for n in 0u64.. {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.cancelled() => return,
                    }
                    if let Err(e) = responses.poll_cancels().await {
                        tracing::warn!(error = %e, "response store upkeep failed");
                    }
                    let (open, idle) = store.pool_use();
                    for (state, n) in [
                        ("in_use", open as i64 - idle as i64),
                        ("idle", idle as i64),
                        ("max", i64::from(store.pool_max())),
                    ] {
                        metrics
                            .store_pool
                            .get_or_create(&PoolLabel { state })
                            .set(n);
                    }
                    if n % 60 == 0 {
                        match files.purge_expired().await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(files = n, "expired files deleted"),
                            Err(e) => tracing::warn!(error = ?e, "expired files purge failed"),
                        }
                        match vector_stores.purge_expired().await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::info!(vector_stores = n, "expired vector stores deleted")
                            }
                            Err(e) => {
                                tracing::warn!(error = ?e, "expired vector stores purge failed")
                            }
                        }
                    }
                    if n % lease_every != 0 {
                        continue;
                    }
                    if let Err(e) = responses.maintain().await {
                        tracing::warn!(error = %e, "response store upkeep failed");
                    }
                    let due = last_purge.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
                    if let (Some(days), true) = (retention, due) {
                        last_purge = Some(std::time::Instant::now());
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64);
                        match store.purge_before(now - i64::from(days) * 86_400).await {
                            Ok((r, c)) if r + c > 0 => {
                                tracing::info!(responses = r, conversations = c, "retention purge")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "retention purge failed"),
                        }
                    }
                }
            });
        }
        shutdown.spawn(prober.run_load(shutdown.clone()));
        shutdown.spawn(
            workers.run_maintenance(Duration::from_secs(cfg.eviction_interval), shutdown.clone()),
        );

        // Listeners.
        let addr: SocketAddr = tokio::net::lookup_host((cfg.host.as_str(), cfg.port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("--host {:?} resolves to no address", cfg.host))?;
        let first = listener::reuseport_listener(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let addr = first.local_addr()?;
        let bind = |host: &str, port: u16, what: &str| {
            let what = what.to_string();
            let host = host.to_string();
            async move {
                TcpListener::bind((host.as_str(), port))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port} for {what}: {e}"))
            }
        };
        let metrics_listener = bind(&cfg.prometheus_host, cfg.prometheus_port, "metrics").await?;
        let metrics_addr = metrics_listener.local_addr()?;
        let admin_listener = bind(&cfg.admin_host, cfg.admin_port, "the worker API").await?;
        let admin_addr = admin_listener.local_addr()?;
        listener::spawn_aux(admin_listener, admin::router(state.clone()), &shutdown);
        listener::spawn_aux(metrics_listener, router::metrics(state.clone()), &shutdown);
        let n = match cfg.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let threads = listener::spawn_threads(
            first,
            n,
            router::data_plane(state.clone()),
            &shutdown,
            Duration::from_secs(cfg.shutdown_grace_period_secs),
        )?;
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

    /// Reloads the model-selection settings from the `--config` file (SIGHUP,
    /// `POST /admin/reload`); a bad file changes nothing.
    pub async fn reload(&self) -> Result<(), crate::config::ConfigError> {
        self.state.reload().await
    }

    /// Stops accepting connections; in-flight requests finish within the grace period.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Waits until every data-plane thread and background task has stopped (after
    /// [`shutdown`](Self::shutdown)).
    pub async fn wait(mut self) {
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.shutdown.wait().await;
    }
}

impl Drop for Gateway {
    /// A gateway dropped without a shutdown stops anyway: its threads and tasks end.
    fn drop(&mut self) {
        self.shutdown.trigger();
        // Its files directory of its own goes with it, even while tasks still hold the
        // state.
        if let Some(dir) = &self.state.scratch_files {
            let _ = std::fs::remove_dir_all(&dir.0);
        }
    }
}
