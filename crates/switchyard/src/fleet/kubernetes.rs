//! Kubernetes discovery: watches pods matching a label selector (server-side) and keeps
//! one worker per Ready pod. A pod that turns Ready is probed and registered like a
//! worker-API registration; one that turns NotReady, starts terminating or is deleted is
//! drained. Every `--service-discovery-relist-secs` the watch is replaced by a full list
//! that is reconciled against what is registered, repairing any missed event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::watch;

use super::WorkerRole;
use crate::config::Config;
use crate::server::AppState;
use crate::server::admin::{Registration, drain, register};

/// Annotation giving a pod's worker weight.
pub const WEIGHT_ANNOTATION: &str = "switchyard.ai/weight";
/// Annotation giving a pod's worker priority.
pub const PRIORITY_ANNOTATION: &str = "switchyard.ai/priority";

/// What discovery watches: one label selector per role.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub namespace: Option<String>,
    pub port: u16,
    pub watches: Vec<(String, WorkerRole)>,
    pub model_key: String,
    pub bootstrap_port_annotation: String,
    pub relist: Duration,
}

impl Discovery {
    /// The discovery settings in `cfg`, or `None` when discovery is off.
    pub fn from_config(cfg: &Config) -> Option<Discovery> {
        if !cfg.service_discovery {
            return None;
        }
        let watches = if cfg.pd_disaggregation {
            vec![
                (selector(&cfg.prefill_selector), WorkerRole::Prefill),
                (selector(&cfg.decode_selector), WorkerRole::Decode),
            ]
        } else {
            vec![(selector(&cfg.selector), WorkerRole::Regular)]
        };
        Some(Discovery {
            namespace: cfg.service_discovery_namespace.clone(),
            port: cfg.service_discovery_port,
            watches,
            model_key: cfg.service_discovery_model_key.clone(),
            bootstrap_port_annotation: cfg.bootstrap_port_annotation.clone(),
            relist: Duration::from_secs(cfg.service_discovery_relist_secs),
        })
    }
}

/// `k=v` pairs as a Kubernetes equality-based label selector.
fn selector(pairs: &[String]) -> String {
    pairs.join(",")
}

/// Checks `--selector`-style `k=v` pairs.
pub fn check_selector(flag: &str, pairs: &[String]) -> Result<(), String> {
    for p in pairs {
        match p.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && !k.contains(['=', ',', '!', ' '])
                    && !v.contains(['=', ',', ' ']) => {}
            _ => return Err(format!("--{flag} {p:?}: expected KEY=VALUE")),
        }
    }
    Ok(())
}

/// A client for the API server: `--kube-api-url` if given, else the in-cluster
/// service account, else the kubeconfig.
pub async fn client(cfg: &Config) -> anyhow::Result<kube::Client> {
    let config = match &cfg.kube_api_url {
        Some(url) => kube::Config::new(
            url.parse()
                .map_err(|e| anyhow::anyhow!("--kube-api-url {url:?}: {e}"))?,
        ),
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "--service-discovery: no Kubernetes configuration (in-cluster or kubeconfig): {e}"
            )
        })?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The worker a pod should be, if it should be one now.
#[derive(Clone, Debug, PartialEq)]
struct PodWorker {
    url: String,
    model: Option<String>,
    bootstrap_port: Option<u16>,
    labels: BTreeMap<String, String>,
    weight: u32,
    priority: u32,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Ready, not terminating, with an IP: a worker at `http://IP:port`.
fn desired(pod: &Pod, d: &Discovery) -> Option<PodWorker> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if !ready {
        return None;
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let number = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    Some(PodWorker {
        url: format!("http://{host}:{}", d.port),
        model: annotations
            .get(&d.model_key)
            .or_else(|| labels.get(&d.model_key))
            .cloned(),
        bootstrap_port: annotations
            .get(&d.bootstrap_port_annotation)
            .and_then(|v| v.trim().parse().ok()),
        weight: number(WEIGHT_ANNOTATION).unwrap_or(1).clamp(1, 1000),
        priority: number(PRIORITY_ANNOTATION).unwrap_or(0),
        labels,
    })
}

/// One watch (one selector, one role) and the pods it has registered.
struct Watcher {
    st: Arc<AppState>,
    d: Discovery,
    selector: String,
    role: WorkerRole,
    api: Api<Pod>,
    /// Pod key → the worker registered for it.
    tracked: HashMap<String, PodWorker>,
}

impl Watcher {
    /// Brings the pod's worker in line with the pod.
    async fn apply(&mut self, key: String, want: Option<PodWorker>) {
        let current = self.tracked.get(&key);
        match (current, want) {
            (None, None) => {}
            // Registered and still there (a worker removed through the worker API
            // while its pod stays Ready is registered again below).
            (Some(cur), Some(want))
                if cur.url == want.url && !self.workers(&want.url).is_empty() =>
            {
                if *cur != want {
                    for w in self.workers(&want.url) {
                        w.set_labels(want.labels.clone());
                        w.set_weight(want.weight);
                        w.set_priority(want.priority);
                    }
                    self.tracked.insert(key, want);
                }
            }
            (Some(_), None) => {
                let cur = self.tracked.remove(&key).expect("tracked");
                self.remove(&key, &cur.url);
            }
            (cur, Some(want)) => {
                if let Some(cur) = cur.cloned() {
                    if cur.url != want.url {
                        self.remove(&key, &cur.url);
                    }
                    self.tracked.remove(&key);
                }
                let spec = Registration {
                    role: self.role,
                    bootstrap_port: want.bootstrap_port,
                    model_id: want.model.clone(),
                    dp_size: None,
                    labels: want.labels.clone(),
                    weight: want.weight,
                    priority: want.priority,
                };
                match register(&self.st, &want.url, spec).await {
                    Ok(ids) => {
                        tracing::info!(pod = %key, url = %want.url, workers = ?ids, "pod registered");
                        self.tracked.insert(key, want);
                    }
                    // Retried at the next event or relist.
                    Err(e) => {
                        tracing::warn!(pod = %key, url = %want.url, error = %e, "pod not registered")
                    }
                }
            }
        }
    }

    fn workers(&self, url: &str) -> Vec<Arc<super::Worker>> {
        self.st
            .registry
            .all()
            .iter()
            .filter(|w| w.id.url == url && w.id.role == self.role)
            .cloned()
            .collect()
    }

    fn remove(&self, key: &str, url: &str) {
        tracing::info!(pod = %key, %url, "pod gone or not ready: draining its worker");
        for w in self.workers(url) {
            drain(&self.st, w);
        }
    }

    /// Lists every matching pod and reconciles; returns the list's resource version.
    async fn relist(&mut self) -> Result<String, kube::Error> {
        let list = self
            .api
            .list(&ListParams::default().labels(&self.selector))
            .await?;
        let mut seen: HashMap<String, Option<PodWorker>> = list
            .items
            .iter()
            .map(|p| (pod_key(p), desired(p, &self.d)))
            .collect();
        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.apply(key, None).await;
        }
        for (key, want) in seen.drain() {
            self.apply(key, want).await;
        }
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    /// List, then watch from the list's version until the relist interval ends or the
    /// watch breaks; repeat until shutdown.
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let version = match self.relist().await {
                Ok(v) => {
                    backoff = Duration::from_millis(500);
                    v
                }
                Err(e) => {
                    tracing::warn!(selector = %self.selector, error = %e, "listing pods failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let until = tokio::time::Instant::now() + self.d.relist;
            let params = WatchParams::default()
                .labels(&self.selector)
                .timeout(self.d.relist.as_secs().clamp(1, 290) as u32);
            let stream = match self.api.watch(&params, &version).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(selector = %self.selector, error = %e, "watching pods failed");
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shutdown.changed() => return,
                };
                match event {
                    Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                        let want = desired(&pod, &self.d);
                        self.apply(pod_key(&pod), want).await;
                    }
                    Some(Ok(WatchEvent::Deleted(pod))) => self.apply(pod_key(&pod), None).await,
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Ok(WatchEvent::Error(status))) => {
                        tracing::debug!(?status, "watch ended by the API server; relisting");
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pod watch failed; relisting");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}

/// Starts one watcher per selector; they stop when `shutdown` flips.
pub fn spawn(
    st: Arc<AppState>,
    client: kube::Client,
    d: Discovery,
    shutdown: watch::Receiver<bool>,
) {
    for (selector, role) in d.watches.clone() {
        let api: Api<Pod> = match &d.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let w = Watcher {
            st: st.clone(),
            d: d.clone(),
            selector,
            role,
            api,
            tracked: HashMap::new(),
        };
        tokio::spawn(w.run(shutdown.clone()));
    }
}
