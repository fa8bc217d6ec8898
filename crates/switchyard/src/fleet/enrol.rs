//! Enrolment: how a worker joins the fleet after startup (the worker API, Kubernetes
//! discovery) and how it leaves. Joining probes the engine first (health, models,
//! data-parallel size); leaving drains it — no new requests, removed once its last
//! request ends or the drain timeout passes. The [`HostGuard`] keeps the worker API
//! from being used to reach arbitrary hosts.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{Registry, Worker, WorkerRole, WorkerSettings};
use crate::config::{Config, ConfigError, ModelSettings};
use crate::fleet::probe::Prober;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upstream::EngineUrl;

/// Why a worker could not join.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("{0}")]
    Forbidden(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("unreachable: {0}")]
    Probe(#[from] super::probe::ProbeError),
    #[error("the worker serves {served:?}, not `{wanted}`")]
    WrongModel { served: Vec<String>, wanted: String },
    #[error("worker {0} is already registered")]
    AlreadyRegistered(String),
    #[error("`labels`: {0}")]
    Labels(#[from] ConfigError),
}

/// What a registration asks for, validated.
#[derive(Clone, Debug)]
pub struct Registration {
    pub role: WorkerRole,
    pub bootstrap_port: Option<u16>,
    /// The model; none: read from the engine's `/v1/models`.
    pub model_id: Option<String>,
    /// Data-parallel ranks; none: counted from the engine's `/metrics`.
    pub dp_size: Option<usize>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub priority: u32,
    /// Where rank 0 of the engine publishes KV-cache events (other ranks: ports offset
    /// by their rank).
    pub kv_events: Option<crate::config::kv::KvEndpoints>,
}

/// The SSRF guard of the worker API: which hosts and ports workers may be registered
/// at (`--worker-allowlist`, `--worker-allowed-ports`). Host names in the allowlist are
/// resolved once, at startup; a registration's host is resolved once too, and the
/// worker then connects to an allowed address it resolved to, never to the name
/// again, so a later DNS answer cannot redirect it.
#[derive(Clone, Debug, Default)]
pub struct HostGuard {
    nets: Vec<(IpAddr, u32)>,
    addrs: Vec<IpAddr>,
    ports: Vec<u16>,
}

impl HostGuard {
    /// Builds the guard, resolving the allowlist's host names.
    pub async fn new(allowlist: &[String], ports: &[u16]) -> HostGuard {
        let mut g = HostGuard {
            ports: ports.to_vec(),
            ..HostGuard::default()
        };
        for entry in allowlist {
            if let Some((net, len)) = entry.split_once('/') {
                if let (Ok(ip), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) {
                    g.nets.push((ip, len));
                }
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                g.addrs.push(ip);
            } else {
                match tokio::net::lookup_host((entry.as_str(), 0)).await {
                    Ok(addrs) => g.addrs.extend(addrs.map(|a| a.ip())),
                    Err(e) => tracing::warn!(
                        host = %entry,
                        error = %e,
                        "--worker-allowlist host does not resolve; it allows nothing"
                    ),
                }
            }
        }
        g
    }

    /// Whether any host may be registered (no allowlist, no port list).
    pub fn is_open(&self) -> bool {
        self.nets.is_empty() && self.addrs.is_empty() && self.ports.is_empty()
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() && self.addrs.is_empty() {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.addrs.contains(&ip)
            || self.nets.iter().any(|(net, len)| match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    *len == 0 || (u32::from(a) ^ u32::from(*n)) >> (32 - len.min(&32)) == 0
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    *len == 0 || (u128::from(a) ^ u128::from(*n)) >> (128 - len.min(&128)) == 0
                }
                _ => false,
            })
    }

    /// Checks `url` and returns the address to connect to (`None`: the guard is open,
    /// connect as the URL says).
    pub async fn check(&self, url: &EngineUrl) -> Result<Option<SocketAddr>, EnrolError> {
        if self.is_open() {
            return Ok(None);
        }
        let port = url.port();
        if !self.ports.is_empty() && !self.ports.contains(&port) {
            return Err(EnrolError::Forbidden(format!(
                "port {port} is not in --worker-allowed-ports"
            )));
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host(), port))
            .await
            .map_err(|e| EnrolError::Unreachable(format!("{}: {e}", url.host())))?
            .collect();
        let Some(first) = addrs.first() else {
            return Err(EnrolError::Unreachable(format!(
                "{} resolves to no address",
                url.host()
            )));
        };
        // Only an allowed address is ever connected to, so one is enough.
        match addrs.iter().find(|a| self.allows_ip(a.ip())) {
            Some(ok) => Ok(Some(*ok)),
            None => Err(EnrolError::Forbidden(format!(
                "host `{}` ({}) is not in --worker-allowlist",
                url.host(),
                first.ip()
            ))),
        }
    }
}

/// Adds and removes workers at runtime.
pub struct Enroller {
    pub registry: Arc<Registry>,
    pub prober: Prober,
    pub settings: WorkerSettings,
    pub guard: HostGuard,
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
}

impl Enroller {
    pub fn new(
        cfg: Arc<Config>,
        prober: Prober,
        settings: WorkerSettings,
        guard: HostGuard,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> Self {
        Enroller {
            registry: prober.registry.clone(),
            prober,
            settings,
            guard,
            cfg,
            metrics,
            shutdown,
        }
    }

    /// Checks the `policy` / `policy.<setting>` labels a worker would bring.
    pub fn check_labels(&self, labels: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        if let Some(settings) = ModelSettings::from_labels(labels)? {
            settings.apply(&self.cfg).validate_policy_settings()?;
        }
        Ok(())
    }

    /// Probes the engine at `url` (health, models, data-parallel size) and adds one
    /// worker per rank, connecting to `pin` when the host guard resolved one.
    pub async fn register(
        &self,
        url: &EngineUrl,
        pin: Option<SocketAddr>,
        spec: Registration,
    ) -> Result<Vec<Arc<Worker>>, EnrolError> {
        self.check_labels(&spec.labels)?;
        let build = |rank: Option<u32>| {
            let offset = |ep: &str| crate::config::kv::offset_endpoint(ep, rank.unwrap_or(0));
            let kv = spec.kv_events.as_ref().and_then(|k| {
                Some(crate::config::kv::KvEndpoints {
                    live: offset(&k.live)?,
                    replay: k.replay.as_deref().and_then(offset),
                })
            });
            let w = Worker::new(url, rank, spec.role, &self.settings)
                .with_bootstrap_port(spec.bootstrap_port)
                .with_kv_events(kv);
            match pin {
                Some(addr) => {
                    let (endpoint, host) = url.pinned(addr);
                    w.with_endpoint(endpoint, host)
                }
                None => w,
            }
        };
        let probe = build(None);
        self.prober.passes_health_check(&probe).await?;
        let models = match self.prober.read_models(&probe).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(url = %url.as_string(), error = %e, "could not list models");
                Vec::new()
            }
        };
        let models = match spec.model_id {
            Some(m) if models.is_empty() => vec![m],
            Some(m) if models.contains(&m) => models,
            Some(m) => {
                return Err(EnrolError::WrongModel {
                    served: models,
                    wanted: m,
                });
            }
            None => models,
        };
        let dp_size = match spec.dp_size {
            Some(n) => n,
            None => self.prober.discover_dp_size(&probe).await,
        };
        let ranks: Vec<Option<u32>> = if dp_size == 1 {
            vec![None]
        } else {
            (0..dp_size as u32).map(Some).collect()
        };
        let mut added: Vec<Arc<Worker>> = Vec::new();
        for rank in ranks {
            let w = Arc::new(build(rank));
            w.set_models(models.clone());
            w.set_labels(spec.labels.clone());
            w.set_weight(spec.weight);
            w.set_priority(spec.priority);
            w.set_healthy(true);
            if !self.registry.add(w.clone()) {
                // All ranks or none: take back the ones already added.
                for added in &added {
                    self.registry.remove(&added.id);
                }
                return Err(EnrolError::AlreadyRegistered(w.label.to_string()));
            }
            self.metrics.set_worker_health(&w.label, true);
            added.push(w);
        }
        Ok(added)
    }

    /// Stops routing to `w` at once and removes it once its in-flight requests end, or
    /// after `--drain-timeout-secs` at most (or at shutdown).
    pub fn drain(&self, w: Arc<Worker>) {
        if !w.start_draining() {
            return;
        }
        let registry = self.registry.clone();
        let limit = Duration::from_secs(self.cfg.drain_timeout_secs);
        let shutdown = self.shutdown.clone();
        self.shutdown.spawn(async move {
            tokio::select! {
                _ = w.idle() => {}
                _ = tokio::time::sleep(limit) => {}
                _ = shutdown.cancelled() => {}
            }
            registry.remove(&w.id);
            tracing::info!(worker = %w.label, in_flight_left = w.in_flight(), "worker removed");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_guard_checks_addresses_ports_and_pins_them() {
        let g = HostGuard::new(
            &["10.0.0.0/8".into(), "127.0.0.1".into(), "fd00::/8".into()],
            &[],
        )
        .await;
        let url = |u: &str| EngineUrl::parse(u).unwrap();
        assert_eq!(
            g.check(&url("http://127.0.0.1:9")).await.unwrap(),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert!(g.check(&url("http://10.1.2.3:1")).await.is_ok());
        assert!(g.check(&url("http://[fd12::1]:1")).await.is_ok());
        for bad in [
            "http://11.0.0.1:1",
            "http://127.0.0.2:1",
            "http://[fe80::1]:1",
        ] {
            assert!(
                matches!(g.check(&url(bad)).await, Err(EnrolError::Forbidden(_))),
                "{bad}"
            );
        }
        // `localhost` resolves to an allowed address: allowed, and pinned to it.
        let pinned = g
            .check(&url("http://localhost:8000"))
            .await
            .unwrap()
            .unwrap();
        assert!(pinned.ip().is_loopback() && pinned.port() == 8000);

        let ports = HostGuard::new(&[], &[8000]).await;
        assert!(ports.check(&url("http://127.0.0.1:8000")).await.is_ok());
        assert!(matches!(
            ports.check(&url("http://127.0.0.1:8001")).await,
            Err(EnrolError::Forbidden(_))
        ));
        assert_eq!(
            HostGuard::default()
                .check(&url("http://anything:1"))
                .await
                .unwrap(),
            None,
            "no allowlist: any host, resolved at connect time"
        );
    }

    #[tokio::test]
    async fn allowlist_host_names_are_resolved_at_startup() {
        let g = HostGuard::new(&["localhost".into()], &[]).await;
        assert!(
            g.check(&EngineUrl::parse("http://127.0.0.1:1").unwrap())
                .await
                .is_ok()
        );
        assert!(
            g.check(&EngineUrl::parse("http://10.0.0.1:1").unwrap())
                .await
                .is_err()
        );
    }
}
