//! Every metric the gateway exports, in one place (documented in docs/metrics.md).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Live state mirrored into gauges when metrics are rendered: a snapshot the caller
/// takes from the fleet and the policies, so this module depends on neither.
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    pub workers: Vec<WorkerGauges>,
    /// Prefix index entries, summed over models.
    pub index_entries: usize,
    /// Prompt blocks routed so far, and how many the chosen worker already held.
    pub blocks_total: u64,
    pub blocks_matched: u64,
    /// Each model the fleet serves or the config names, and whether a healthy,
    /// non-draining worker serves it.
    pub models: Vec<(Arc<str>, bool)>,
    pub workflows: WorkflowFigures,
    /// KV-event index: blocks held, and workers whose event stream is live.
    pub kv_index_blocks: usize,
    pub kv_streams_live: usize,
}

/// Workflow totals, read from the registry and the policies when metrics are rendered
/// (no label per workflow: ids are unbounded).
#[derive(Clone, Debug, Default)]
pub struct WorkflowFigures {
    pub active: usize,
    pub queued_messages: usize,
    pub created: u64,
    pub expired: u64,
    pub evicted: u64,
    pub migrations: u64,
    pub splits: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_expired: u64,
    pub messages_rejected: u64,
    pub requests: u64,
    /// Cached share of prompt tokens over active workflows (`None`: not reported).
    pub cache_hit_rate: Option<f64>,
}

/// One worker's gauges.
#[derive(Clone, Debug)]
pub struct WorkerGauges {
    pub label: Arc<str>,
    pub in_flight: usize,
    pub healthy: bool,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub model: Arc<str>,
    pub worker: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteModel {
    pub route: &'static str,
    pub model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelWorker {
    pub model: Arc<str>,
    pub worker: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: Arc<str>,
}

/// A tenant's requests (the tenant label: a configured tenant, else `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: Arc<str>,
    /// `ok`, `error` or `limited`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantTokenLabels {
    pub tenant: Arc<str>,
    /// `input`, `cached` or `output`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub tenant: Arc<str>,
    /// `requests`, `tokens`, `concurrency` or `budget`.
    pub limit: &'static str,
    /// `key`, `tenant` or `global`.
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub policy: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelIntentStatus {
    pub model: Arc<str>,
    /// The classified intent; empty for a request that named its model.
    pub intent: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelIntent {
    pub model: Arc<str>,
    pub intent: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub from: Arc<str>,
    pub to: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassificationLabels {
    pub classifier: &'static str,
    pub intent: Arc<str>,
    pub confidence_level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassifierLabel {
    pub classifier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassifierErrorLabels {
    pub classifier: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelErrorLabels {
    pub model: Arc<str>,
    pub error_type: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 120.0, 300.0,
    ])
}

fn itl_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
    ])
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Hist<RouteModel>,
    pub ttft: Hist<ModelWorker>,
    pub itl: Hist<RouteModel>,
    pub tokens: Family<TokenLabels, Counter>,
    pub worker_in_flight: Family<WorkerLabel, Gauge>,
    pub worker_healthy: Family<WorkerLabel, Gauge>,
    pub worker_breaker: Family<WorkerLabel, Gauge>,
    pub retries: Family<ReasonLabel, Counter>,
    pub rejected: Family<ReasonLabel, Counter>,
    pub tenant_requests: Family<TenantLabels, Counter>,
    pub tenant_tokens: Family<TenantTokenLabels, Counter>,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub rate_limit_store_errors: Counter,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub queue_depth: Gauge,
    pub queue_wait: Histogram,
    pub decisions: Family<DecisionLabels, Counter>,
    pub index_entries: Gauge,
    pub index_hit_ratio: Gauge<f64, AtomicU64>,
    pub kv_events: Family<KindLabel, Counter>,
    pub kv_skipped: Family<ReasonLabel, Counter>,
    pub kv_replays: Family<OutcomeLabel, Counter>,
    pub kv_resets: Family<ReasonLabel, Counter>,
    pub kv_lag: Histogram,
    pub kv_index_blocks: Gauge,
    pub kv_streams_live: Gauge,
    pub kv_matched_blocks: Histogram,
    pub kv_fallbacks: Counter,
    pub upstream_errors: Family<ReasonLabel, Counter>,
    pub pd_phase: Hist<PhaseLabel>,
    pub pd_failures: Family<PhaseLabel, Counter>,
    pub model_requests: Family<ModelIntentStatus, Counter>,
    pub model_duration: Hist<ModelIntent>,
    pub fallbacks: Family<FallbackLabels, Counter>,
    pub classifications: Family<ClassificationLabels, Counter>,
    pub classification_duration: Hist<ClassifierLabel>,
    pub classifier_errors: Family<ClassifierErrorLabels, Counter>,
    pub model_healthy: Family<ModelLabel, Gauge>,
    pub model_errors: Family<ModelErrorLabels, Counter>,
    pub route_requests: Family<RouteLabels, Counter>,
    pub route_routing: Hist<RoutePathLabel>,
    pub route_inference: Histogram,
    pub route_total: Histogram,
    pub route_session_creations: Counter,
    pub route_context_changes: Family<ReasonLabel, Counter>,
    pub route_session_degraded: Counter,
    pub route_session_evictions: Counter,
    pub responses: Family<ResponseLabels, Counter>,
    pub response_tool_rounds: Counter,
    pub response_tool_calls: Counter,
    pub store_ops: Hist<StoreOpLabels>,
    pub store_pool: Family<PoolLabel, Gauge>,
    pub vector_searches: Hist<OutcomeLabel>,
    pub vector_files: Family<StatusLabel, Counter>,
    pub vector_chunks: Counter,
    pub vector_ingest: Hist<StatusLabel>,
    pub cache_hits: Family<CacheHitLabels, Counter>,
    pub cache_misses: Family<RouteOnly, Counter>,
    pub cache_bypasses: Family<ReasonLabel, Counter>,
    pub cache_stores: Family<OutcomeLabel, Counter>,
    pub cache_stored_bytes: Counter,
    pub cache_evictions: Family<ReasonLabel, Counter>,
    pub cache_latency_saved: Counter<f64, AtomicU64>,
    pub cache_errors: Family<OpLabel, Counter>,
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub cache_semantic_vectors: Gauge,
}

/// A response cache hit: its route and whether it matched exactly or by meaning.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheHitLabels {
    pub route: &'static str,
    /// `exact` or `semantic`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: &'static str,
}

/// A backend operation (`get`, `put`, `embed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// An operation's outcome (`ok`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// How a piece of work ended (`completed`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// Responses API answers by final status, and whether they ran in the background.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub status: &'static str,
    pub background: &'static str,
}

/// Storage operations (`read`, `write`) by outcome (`ok`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

/// Database connections by state (`in_use`, `idle`, `max`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub state: &'static str,
}

/// Seconds to ingest a file: from a short note to a long PDF embedded remotely.
fn ingest_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    ])
}

fn storage_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0,
    ])
}

impl switchyard_stateful::Observe for Metrics {
    fn store_op(&self, op: &'static str, seconds: f64, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_ops
            .get_or_create(&StoreOpLabels { op, outcome })
            .observe(seconds);
    }

    fn response_done(&self, status: &'static str, background: bool) {
        let background = if background { "true" } else { "false" };
        self.responses
            .get_or_create(&ResponseLabels { status, background })
            .inc();
    }

    fn tool_round(&self, calls: usize) {
        self.response_tool_rounds.inc();
        self.response_tool_calls.inc_by(calls as u64);
    }

    fn vector_search(&self, seconds: f64, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.vector_searches
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
    }

    fn file_ingested(&self, status: &'static str, chunks: u64, seconds: f64) {
        self.vector_files
            .get_or_create(&StatusLabel { status })
            .inc();
        self.vector_chunks.inc_by(chunks);
        self.vector_ingest
            .get_or_create(&StatusLabel { status })
            .observe(seconds);
    }
}

/// `/route` requests by use case, routing path (`bypass`, `full`) and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub use_case: Arc<str>,
    pub path: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutePathLabel {
    pub path: &'static str,
}

/// Routing decisions take microseconds on bypass, milliseconds with a model call.
fn routing_histogram() -> Histogram {
    Histogram::new([
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05, 0.1, 0.25, 0.5, 1.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A KV event of `kind` was received.
    pub fn kv_event(&self, kind: &'static str) {
        self.kv_events.get_or_create(&KindLabel { kind }).inc();
    }

    /// A KV-event message or event was not used.
    pub fn kv_skipped(&self, reason: &'static str) {
        self.kv_skipped.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A replay ended with `outcome`.
    pub fn kv_replay(&self, outcome: &'static str) {
        self.kv_replays
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A worker's KV-index entries were dropped.
    pub fn kv_reset(&self, reason: &'static str) {
        self.kv_resets.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A batch stamped `ts` (Unix seconds) arrived now.
    pub fn kv_lag(&self, ts: f64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if ts.is_finite() && ts > 0.0 {
            self.kv_lag.observe((now - ts).max(0.0));
        }
    }

    pub fn new() -> Self {
        let mut r = Registry::with_prefix("switchyard");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            ttft: Family::new_with_constructor(latency_histogram),
            itl: Family::new_with_constructor(itl_histogram),
            tokens: Family::default(),
            worker_in_flight: Family::default(),
            worker_healthy: Family::default(),
            worker_breaker: Family::default(),
            retries: Family::default(),
            rejected: Family::default(),
            tenant_requests: Family::default(),
            tenant_tokens: Family::default(),
            rate_limited: Family::default(),
            rate_limit_store_errors: Counter::default(),
            auth_failures: Family::default(),
            queue_depth: Gauge::default(),
            queue_wait: latency_histogram(),
            decisions: Family::default(),
            index_entries: Gauge::default(),
            index_hit_ratio: Gauge::default(),
            kv_events: Family::default(),
            kv_skipped: Family::default(),
            kv_replays: Family::default(),
            kv_resets: Family::default(),
            kv_lag: latency_histogram(),
            kv_index_blocks: Gauge::default(),
            kv_streams_live: Gauge::default(),
            kv_matched_blocks: Histogram::new([
                0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            ]),
            kv_fallbacks: Counter::default(),
            upstream_errors: Family::default(),
            pd_phase: Family::new_with_constructor(latency_histogram),
            pd_failures: Family::default(),
            model_requests: Family::default(),
            model_duration: Family::new_with_constructor(latency_histogram),
            fallbacks: Family::default(),
            classifications: Family::default(),
            classification_duration: Family::new_with_constructor(latency_histogram),
            classifier_errors: Family::default(),
            model_healthy: Family::default(),
            model_errors: Family::default(),
            route_requests: Family::default(),
            route_routing: Family::new_with_constructor(routing_histogram),
            route_inference: latency_histogram(),
            route_total: latency_histogram(),
            route_session_creations: Counter::default(),
            route_context_changes: Family::default(),
            route_session_degraded: Counter::default(),
            route_session_evictions: Counter::default(),
            responses: Family::default(),
            response_tool_rounds: Counter::default(),
            response_tool_calls: Counter::default(),
            store_ops: Family::new_with_constructor(storage_histogram),
            store_pool: Family::default(),
            vector_searches: Family::new_with_constructor(storage_histogram),
            vector_files: Family::default(),
            vector_chunks: Counter::default(),
            vector_ingest: Family::new_with_constructor(ingest_histogram),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_bypasses: Family::default(),
            cache_stores: Family::default(),
            cache_stored_bytes: Counter::default(),
            cache_evictions: Family::default(),
            cache_latency_saved: Counter::default(),
            cache_errors: Family::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_semantic_vectors: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "requests",
            "Requests answered, by route, model, worker and status",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request arrival to the last byte sent",
            m.duration.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time from request arrival to the first response byte from the engine",
            m.ttft.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Gaps between content-bearing chunks of a stream (tokens, reasoning or tool calls)",
            m.itl.clone(),
        );
        r.register(
            "tokens",
            "Tokens reported in responses' usage (kind: prompt, completion, cached)",
            m.tokens.clone(),
        );
        r.register(
            "worker_in_flight",
            "Requests in flight per worker",
            m.worker_in_flight.clone(),
        );
        r.register(
            "worker_healthy",
            "1 if the worker passes health checks",
            m.worker_healthy.clone(),
        );
        r.register(
            "worker_circuit_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
            m.worker_breaker.clone(),
        );
        r.register(
            "retries",
            "Upstream attempts retried, by reason",
            m.retries.clone(),
        );
        r.register("rejected", "Requests the gateway refused (rate_limited, queue_full, queue_timeout, no_worker, unauthorized, ...)", m.rejected.clone());
        r.register(
            "tenant_requests",
            "Requests per tenant (configured tenants; others as `other`) by outcome: ok, error, limited",
            m.tenant_requests.clone(),
        );
        r.register(
            "tenant_tokens",
            "Tokens per tenant from the engines' usage (kind: input, cached, output)",
            m.tenant_tokens.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a tenant, key or global limit (limit: requests, tokens, concurrency, budget)",
            m.rate_limited.clone(),
        );
        r.register(
            "rate_limit_store_errors",
            "Limit checks that could not reach Redis (then --rate-limit-on-store-error decides)",
            m.rate_limit_store_errors.clone(),
        );
        r.register(
            "auth_failures",
            "Requests refused for their credentials (reason: invalid_key, locked_out)",
            m.auth_failures.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a concurrency permit",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time requests waited for a concurrency permit",
            m.queue_wait.clone(),
        );
        r.register(
            "policy_decisions",
            "Routing decisions by policy and reason",
            m.decisions.clone(),
        );
        r.register(
            "kv_events",
            "KV-cache events received from engines, by kind: stored, removed, cleared, unknown",
            m.kv_events.clone(),
        );
        r.register(
            "kv_events_skipped",
            "KV-event messages or events not used, by reason: frames, payload, unknown_parent",
            m.kv_skipped.clone(),
        );
        r.register(
            "kv_replays",
            "Replays of missed KV-event messages, by outcome: recovered, lost",
            m.kv_replays.clone(),
        );
        r.register(
            "kv_worker_resets",
            "Times a worker's KV-index entries were dropped, by reason: restart, gap, reconnect, overflow",
            m.kv_resets.clone(),
        );
        r.register(
            "kv_event_lag_seconds",
            "Time from an engine's KV-event batch (its ts) to its receipt by the gateway",
            m.kv_lag.clone(),
        );
        r.register(
            "kv_index_blocks",
            "Blocks in the KV-event index (engine-reported cache contents)",
            m.kv_index_blocks.clone(),
        );
        r.register(
            "kv_streams_live",
            "Workers whose KV-event stream is connected and in sequence",
            m.kv_streams_live.clone(),
        );
        r.register(
            "kv_matched_blocks",
            "precise_prefix decisions by prompt blocks the chosen worker held",
            m.kv_matched_blocks.clone(),
        );
        r.register(
            "kv_fallbacks",
            "precise_prefix decisions that routed some candidate approximately (its KV-event stream was down)",
            m.kv_fallbacks.clone(),
        );
        r.register(
            "prefix_index_entries",
            "Blocks held by the cache-aware prefix index",
            m.index_entries.clone(),
        );
        r.register(
            "prefix_index_hit_ratio",
            "Share of routed prompt blocks the chosen worker already held",
            m.index_hit_ratio.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures by kind (connect, timeout, status, stream)",
            m.upstream_errors.clone(),
        );
        r.register(
            "pd_phase_seconds",
            "Prefill/decode: time until each phase's response headers",
            m.pd_phase.clone(),
        );
        r.register(
            "pd_phase_failures",
            "Prefill/decode: failed attempts by phase",
            m.pd_failures.clone(),
        );
        r.register(
            "model_requests",
            "Requests by the model that answered, the intent that chose it (empty: named) and status",
            m.model_requests.clone(),
        );
        r.register(
            "model_request_duration_seconds",
            "Time from arrival to the last byte, by model and intent",
            m.model_duration.clone(),
        );
        r.register(
            "model_fallbacks",
            "Requests that moved from one model of their fallback chain to the next",
            m.fallbacks.clone(),
        );
        r.register(
            "classifications",
            "Intent classifications by classifier, chosen intent and confidence level",
            m.classifications.clone(),
        );
        r.register(
            "classification_duration_seconds",
            "Time to classify a prompt (cache misses)",
            m.classification_duration.clone(),
        );
        r.register(
            "classifier_errors",
            "Classifications that failed (kind: timeout, backend, answer)",
            m.classifier_errors.clone(),
        );
        r.register(
            "model_healthy",
            "1 if a healthy, non-draining worker serves the model",
            m.model_healthy.clone(),
        );
        r.register(
            "model_errors",
            "Failed requests by model and error type",
            m.model_errors.clone(),
        );
        r.register(
            "route_requests",
            "/route requests by use case, routing path (bypass, full) and status",
            m.route_requests.clone(),
        );
        r.register(
            "route_routing_duration_seconds",
            "/route: time to decide the use case and model, by path (bypass, full)",
            m.route_routing.clone(),
        );
        r.register(
            "route_inference_duration_seconds",
            "/route: time spent generating (through the pipeline)",
            m.route_inference.clone(),
        );
        r.register(
            "route_total_duration_seconds",
            "/route: time from arrival to the answer's end",
            m.route_total.clone(),
        );
        r.register(
            "route_session_creations",
            "/route sessions created",
            m.route_session_creations.clone(),
        );
        r.register(
            "route_context_changes",
            "/route follow-ups routed afresh because the subject or modality changed (reason: topic, modality)",
            m.route_context_changes.clone(),
        );
        r.register(
            "route_session_degraded",
            "/route requests answered without a session because the session store failed",
            m.route_session_degraded.clone(),
        );
        r.register(
            "route_session_evictions",
            "/route sessions evicted by max_sessions_per_user",
            m.route_session_evictions.clone(),
        );
        r.register(
            "responses",
            "Responses API answers by final status (completed, incomplete, failed, cancelled) and background",
            m.responses.clone(),
        );
        r.register(
            "response_tool_rounds",
            "Responses that ended asking the client to run function calls (one tool-call round each)",
            m.response_tool_rounds.clone(),
        );
        r.register(
            "response_tool_calls",
            "Function calls the Responses API asked clients to run",
            m.response_tool_calls.clone(),
        );
        r.register(
            "store_operation_duration_seconds",
            "Latency of the response store's operations (op: read, write; outcome: ok, error)",
            m.store_ops.clone(),
        );
        r.register(
            "store_pool_connections",
            "The response store's database connections (state: in_use, idle, max)",
            m.store_pool.clone(),
        );
        r.register(
            "vector_search_duration_seconds",
            "Latency of vector store searches, the query's embedding included (outcome: ok, error)",
            m.vector_searches.clone(),
        );
        r.register(
            "vector_store_files_ingested",
            "Files ingested into vector stores by how they ended (status: completed, failed)",
            m.vector_files.clone(),
        );
        r.register(
            "vector_store_chunks_ingested",
            "Chunks stored in vector stores by ingestion",
            m.vector_chunks.clone(),
        );
        r.register(
            "vector_store_ingest_duration_seconds",
            "Time to ingest one file into a vector store: parse, chunk, embed, store (status: completed, failed)",
            m.vector_ingest.clone(),
        );
        r.register(
            "response_cache_hits",
            "Requests answered from the response cache (kind: exact, semantic)",
            m.cache_hits.clone(),
        );
        r.register(
            "response_cache_misses",
            "Cacheable requests not found in the response cache (sent to an engine)",
            m.cache_misses.clone(),
        );
        r.register(
            "response_cache_bypasses",
            "Requests to a cached route that skipped the response cache, by reason (no_cache, not_cacheable, unparsable, backend_error, rejected)",
            m.cache_bypasses.clone(),
        );
        r.register(
            "response_cache_stores",
            "Answers offered to the response cache, by outcome (stored, too_large, incomplete, error)",
            m.cache_stores.clone(),
        );
        r.register(
            "response_cache_stored_bytes",
            "Bytes of answers written to the response cache",
            m.cache_stored_bytes.clone(),
        );
        r.register(
            "response_cache_evictions",
            "Entries the in-memory response cache dropped (reason: capacity, expired)",
            m.cache_evictions.clone(),
        );
        r.register(
            "response_cache_latency_saved_seconds",
            "Engine time the response cache saved: each hit adds the original answer's latency",
            m.cache_latency_saved.clone(),
        );
        r.register(
            "response_cache_errors",
            "Response cache operations that failed (op: get, put, embed); the request went on without the cache",
            m.cache_errors.clone(),
        );
        r.register(
            "response_cache_entries",
            "Entries in the in-memory response cache",
            m.cache_entries.clone(),
        );
        r.register(
            "response_cache_bytes",
            "Bytes held by the in-memory response cache",
            m.cache_bytes.clone(),
        );
        r.register(
            "response_cache_semantic_vectors",
            "Prompt vectors in the response cache's semantic index",
            m.cache_semantic_vectors.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn set_worker_health(&self, worker: &str, healthy: bool) {
        self.worker_healthy
            .get_or_create(&WorkerLabel {
                worker: Arc::from(worker),
            })
            .set(i64::from(healthy));
    }

    /// A request for `model` (chosen for `intent`) that ended with `status`.
    pub fn model_request(
        &self,
        model: &Arc<str>,
        intent: Option<&Arc<str>>,
        status: u16,
        elapsed: std::time::Duration,
        error_type: Option<&'static str>,
    ) {
        static NAMED: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        let intent = intent.unwrap_or(&NAMED);
        self.model_requests
            .get_or_create(&ModelIntentStatus {
                model: model.clone(),
                intent: intent.clone(),
                status,
            })
            .inc();
        self.model_duration
            .get_or_create(&ModelIntent {
                model: model.clone(),
                intent: intent.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(error_type) = error_type {
            self.model_errors
                .get_or_create(&ModelErrorLabels {
                    model: model.clone(),
                    error_type,
                })
                .inc();
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Refreshes gauges that mirror live state, then renders the text exposition.
    pub fn render(&self, live: &LiveState) -> String {
        for w in &live.workers {
            let l = WorkerLabel {
                worker: w.label.clone(),
            };
            self.worker_in_flight
                .get_or_create(&l)
                .set(w.in_flight as i64);
            self.worker_healthy
                .get_or_create(&l)
                .set(i64::from(w.healthy));
            self.worker_breaker
                .get_or_create(&l)
                .set(i64::from(w.breaker));
        }
        for (model, healthy) in &live.models {
            self.model_healthy
                .get_or_create(&ModelLabel {
                    model: model.clone(),
                })
                .set(i64::from(*healthy));
        }
        self.index_entries.set(live.index_entries as i64);
        self.kv_index_blocks.set(live.kv_index_blocks as i64);
        self.kv_streams_live.set(live.kv_streams_live as i64);
        if live.blocks_total > 0 {
            self.index_hit_ratio
                .set(live.blocks_matched as f64 / live.blocks_total as f64);
        }
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("writing to a String");
        prometheus_client::encoding::text::encode_registry(
            &mut out,
            &workflow_registry(&live.workflows),
        )
        .expect("writing to a String");
        prometheus_client::encoding::text::encode_eof(&mut out).expect("writing to a String");
        out
    }
}

/// `switchyard_workflow_*`, built from a snapshot at each scrape: the counts live in
/// the workflow registry and the policies, which this module does not depend on.
fn workflow_registry(w: &WorkflowFigures) -> Registry {
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    let mut r = Registry::with_prefix("switchyard_workflow");
    r.register(
        "active",
        "Workflows tracked now",
        ConstGauge::new(w.active as i64),
    );
    r.register(
        "messages_queued",
        "Agent messages waiting in queues",
        ConstGauge::new(w.queued_messages as i64),
    );
    for (name, help, v) in [
        ("created", "Workflows created", w.created),
        ("expired", "Workflows ended by --workflow-ttl", w.expired),
        (
            "evicted",
            "Workflows evicted by --max-workflows (least recently active)",
            w.evicted,
        ),
        (
            "migrations",
            "Workflows moved to another worker (load bound or worker failure)",
            w.migrations,
        ),
        (
            "splits",
            "Requests a workflow sent to a second worker during a burst",
            w.splits,
        ),
        (
            "messages_sent",
            "Agent messages queued (one per recipient)",
            w.messages_sent,
        ),
        (
            "messages_delivered",
            "Agent messages consumed",
            w.messages_delivered,
        ),
        (
            "messages_expired",
            "Agent messages dropped at the end of their TTL",
            w.messages_expired,
        ),
        (
            "messages_rejected",
            "Agent messages refused (queue full, too large, strategy)",
            w.messages_rejected,
        ),
        ("requests", "Requests of active workflows", w.requests),
    ] {
        r.register(name, help, ConstCounter::new(v));
    }
    if let Some(h) = w.cache_hit_rate {
        r.register(
            "cache_hit_rate",
            "Cached share of prompt tokens of active workflows, where engines report it",
            ConstGauge::<f64>::new(h),
        );
    }
    r
}
