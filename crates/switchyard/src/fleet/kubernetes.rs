//! Kubernetes discovery: watches pods matching a label selector (server-side) and keeps
//! one worker per Ready pod. A pod that turns Ready is probed and registered like a
//! worker-API registration; one that turns NotReady, starts terminating or is deleted is
//! drained, each pod on its own so that one slow probe holds up no other pod. Every
//! `--service-discovery-relist-secs` the watch is replaced by a full list that is
//! reconciled against what is registered, repairing any missed event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Enroller, Registration, WorkerRole};
use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::upstream::EngineUrl;

/// Annotation giving a pod's worker weight.
pub const WEIGHT_ANNOTATION: &str = "switchyard.ai/weight";
/// Annotation giving a pod's worker priority.
pub const PRIORITY_ANNOTATION: &str = "switchyard.ai/priority";
/// Annotation giving the port on the pod's IP where its engine publishes KV events.
pub const KV_EVENTS_PORT_ANNOTATION: &str = "switchyard.ai/kv-events-port";
/// Annotation giving the port of its engine's KV-event replay socket.
pub const KV_REPLAY_PORT_ANNOTATION: &str = "switchyard.ai/kv-events-replay-port";

/// What discovery watches: one label selector per role.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub namespace: Option<String>,
    pub port: u16,
    pub watches: Vec<(String, WorkerRole)>,
    pub model_key: String,
    pub bootstrap_port_annotation: String,
    pub relist: Duration,
    /// `--kv-events-endpoint` and `--kv-events-replay-endpoint`, for pods without the
    /// KV-event annotations.
    pub kv_events: (Vec<String>, Vec<String>),
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
            kv_events: (
                cfg.kv_events_endpoint.clone(),
                cfg.kv_events_replay_endpoint.clone(),
            ),
        })
    }
}

/// `k=v` pairs as a Kubernetes equality-based label selector.
fn selector(pairs: &[String]) -> String {
    pairs.join(",")
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
    kv_events: Option<crate::config::kv::KvEndpoints>,
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
    let url = format!("http://{host}:{}", d.port);
    let port = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.trim().parse::<u16>().ok())
            .filter(|p| *p > 0)
    };
    let kv_events = match port(KV_EVENTS_PORT_ANNOTATION) {
        Some(p) => Some(crate::config::kv::KvEndpoints {
            live: format!("tcp://{host}:{p}"),
            replay: port(KV_REPLAY_PORT_ANNOTATION).map(|r| format!("tcp://{host}:{r}")),
        }),
        None => crate::config::kv::endpoints_for(&d.kv_events.0, &d.kv_events.1, &url, None),
    };
    Some(PodWorker {
        kv_events,
        url,
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

/// One watch (one selector, one role). Each pod is reconciled by its own task, fed the
/// pod's latest desired worker, so a slow or unreachable pod's probe never holds up
/// another pod's registration or removal.
struct Watcher {
    pods: PodCtx,
    d: Discovery,
    selector: String,
    api: Api<Pod>,
    /// Pod key → its reconciler.
    slots: HashMap<String, PodSlot>,
    /// Reconcilers of pods that went away and may still be draining, awaited by a new
    /// reconciler of the same pod before it starts.
    finishing: HashMap<String, JoinHandle<()>>,
}

struct PodSlot {
    want: watch::Sender<Option<PodWorker>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Hands the pod's desired worker (`None`: none) to its reconciler, starting one
    /// for a pod not seen before. A relist sends every pod again, which retries failed
    /// registrations and restores workers removed through the worker API.
    fn apply(&mut self, key: String, want: Option<PodWorker>) {
        match (self.slots.remove(&key), want) {
            (None, None) => {}
            (Some(slot), None) => {
                // The reconciler drains the worker, then sees the channel closed and ends.
                slot.want.send_replace(None);
                self.finishing.insert(key, slot.task);
            }
            (Some(slot), Some(want)) => {
                slot.want.send_replace(Some(want));
                self.slots.insert(key, slot);
            }
            (None, Some(want)) => {
                let (tx, rx) = watch::channel(Some(want));
                let previous = self.finishing.remove(&key);
                let task = self.pods.shutdown.spawn(self.pods.clone().reconcile(
                    key.clone(),
                    rx,
                    previous,
                ));
                self.slots.insert(key, PodSlot { want: tx, task });
            }
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
            .slots
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.apply(key, None);
        }
        for (key, want) in seen.drain() {
            self.apply(key, want);
        }
        self.finishing.retain(|_, task| !task.is_finished());
        Ok(list.metadata.resource_version.unwrap_or_default())
    }

    /// List, then watch from the list's version until the relist interval ends or the
    /// watch breaks; repeat until shutdown.
    async fn run(mut self, shutdown: Shutdown) {
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
                        _ = shutdown.cancelled() => return,
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
                    // Relist after a pause, not at once: the API server may refuse
                    // watches for a while.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shutdown.cancelled() => return,
                };
                match event {
                    Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                        let want = desired(&pod, &self.d);
                        self.apply(pod_key(&pod), want);
                    }
                    Some(Ok(WatchEvent::Deleted(pod))) => self.apply(pod_key(&pod), None),
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

/// What a pod's reconciler needs: enrolment and the role its watch registers.
#[derive(Clone)]
struct PodCtx {
    enroller: Arc<Enroller>,
    role: WorkerRole,
    drain_timeout: Duration,
    shutdown: Shutdown,
}

impl PodCtx {
    /// One pod's reconciler: brings its worker in line with each desired state in turn
    /// (intermediate states it had no time to see are skipped), until the watcher drops
    /// the pod. Starts after the previous reconciler of the same pod, if any, has ended.
    async fn reconcile(
        self,
        key: String,
        mut want: watch::Receiver<Option<PodWorker>>,
        previous: Option<JoinHandle<()>>,
    ) {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let mut current = None;
        loop {
            let next = want.borrow_and_update().clone();
            current = tokio::select! {
                c = self.apply(&key, current, next) => c,
                _ = self.shutdown.cancelled() => return,
            };
            tokio::select! {
                changed = want.changed() => if changed.is_err() { return },
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Brings the pod's worker from `current` to `want`; returns what is registered.
    async fn apply(
        &self,
        key: &str,
        current: Option<PodWorker>,
        want: Option<PodWorker>,
    ) -> Option<PodWorker> {
        match (current, want) {
            (None, None) => None,
            // Registered and still there (a worker removed through the worker API
            // while its pod stays Ready is registered again below).
            (Some(cur), Some(want))
                if cur.url == want.url
                    && self.workers(&want.url).iter().any(|w| !w.is_draining()) =>
            {
                if cur != want {
                    for w in self.workers(&want.url) {
                        self.enroller.registry.relabel(&w, want.labels.clone());
                        w.set_weight(want.weight);
                        w.set_priority(want.priority);
                    }
                }
                Some(want)
            }
            (Some(cur), None) => {
                self.remove(key, &cur.url);
                None
            }
            (cur, Some(want)) => {
                if let Some(cur) = cur.filter(|cur| cur.url != want.url) {
                    self.remove(key, &cur.url);
                }
                if self.workers(&want.url).iter().any(|w| w.is_draining()) {
                    // Back to Ready while its old worker still drains: register afresh
                    // once that one is gone (`drain_timeout_secs` at most).
                    let bound = self.drain_timeout + Duration::from_secs(1);
                    let gone = self.enroller.registry.wait_gone(&want.url, self.role);
                    let _ = tokio::time::timeout(bound, gone).await;
                }
                let spec = Registration {
                    role: self.role,
                    bootstrap_port: want.bootstrap_port,
                    model_id: want.model.clone(),
                    dp_size: None,
                    labels: want.labels.clone(),
                    weight: want.weight,
                    priority: want.priority,
                    kv_events: want.kv_events.clone(),
                };
                let url = match EngineUrl::parse(&want.url) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(pod = %key, url = %want.url, error = %e, "pod has no usable address");
                        return None;
                    }
                };
                match self.enroller.register(&url, None, spec).await {
                    Ok(workers) => {
                        let ids: Vec<&str> = workers.iter().map(|w| &*w.api_id).collect();
                        tracing::info!(pod = %key, url = %want.url, workers = ?ids, "pod registered");
                        Some(want)
                    }
                    // Retried at the pod's next event or the next relist.
                    Err(e) => {
                        tracing::warn!(pod = %key, url = %want.url, error = %e, "pod not registered");
                        None
                    }
                }
            }
        }
    }

    fn workers(&self, url: &str) -> Vec<Arc<super::Worker>> {
        self.enroller
            .registry
            .all()
            .into_iter()
            .filter(|w| w.id.url == url && w.id.role == self.role)
            .collect()
    }

    fn remove(&self, key: &str, url: &str) {
        tracing::info!(pod = %key, %url, "pod gone or not ready: draining its worker");
        for w in self.workers(url) {
            self.enroller.drain(w);
        }
    }
}

/// Starts one watcher per selector; they stop at shutdown.
pub fn spawn(
    enroller: Arc<Enroller>,
    client: kube::Client,
    d: Discovery,
    cfg: &Config,
    shutdown: &Shutdown,
) {
    for (selector, role) in d.watches.clone() {
        let api: Api<Pod> = match &d.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let w = Watcher {
            pods: PodCtx {
                enroller: enroller.clone(),
                role,
                drain_timeout: Duration::from_secs(cfg.drain_timeout_secs),
                shutdown: shutdown.clone(),
            },
            d: d.clone(),
            selector,
            api,
            slots: HashMap::new(),
            finishing: HashMap::new(),
        };
        shutdown.spawn(w.run(shutdown.clone()));
    }
}
