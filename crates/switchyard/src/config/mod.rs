//! The one configuration schema. CLI flags ([`cli`]) and the YAML file (`--config`)
//! both fill [`Config`]; a flag given on the command line overrides the file. Every
//! option has one name: `--flag-name` on the CLI, `flag_name` in YAML and in the docs.
//! [`validate`] checks values and their relations; [`policy`] holds a model's own
//! policy settings.

pub mod cli;
pub mod intent;
pub mod kv;
pub mod policy;
pub mod tools;
pub mod use_cases;
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

pub use cli::{Cli, Command};
pub use intent::IntentRouting;
pub use policy::ModelSettings;

/// A configuration error; the message names the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{option}: {reason}")]
    Invalid { option: String, reason: String },
    #[error("--config {path}: {reason}")]
    File { path: String, reason: String },
    #[error("models.{model}: {source}")]
    Model {
        model: String,
        #[source]
        source: Box<ConfigError>,
    },
    /// A YAML-only setting, named by its path (e.g. `intent_routing.intents.code.model`).
    #[error("{path}: {reason}")]
    Setting { path: String, reason: String },
    #[error("label `{label}`: {reason}")]
    Label { label: String, reason: String },
    #[error("{0}")]
    Args(String),
}

/// An invalid value of `--option`.
pub(crate) fn invalid(option: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// Routing policy for choosing a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum PolicyKind {
    Random,
    RoundRobin,
    PowerOfTwo,
    ConsistentHash,
    CacheAware,
    /// Keeps a workflow's requests on one worker (docs/workflows.md).
    WorkflowAware,
    /// Routes on what each engine reports it caches, from its KV-cache events
    /// (docs/precise-routing.md).
    PrecisePrefix,
}

/// The prefill/decode protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PdMode {
    Vllm,
    Sglang,
}

/// Every gateway option.
#[derive(Clone, Debug, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// YAML file with any of these options (snake_case keys); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    // --- server ---
    /// Address the data plane listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the data plane.
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Time allowed until an upstream answers with headers (504 after it).
    #[arg(long, default_value_t = 1800)]
    pub request_timeout_secs: u64,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_payload_size: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the gateway closes.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_period_secs: u64,
    /// Data-plane threads, each with its own event loop, listener (SO_REUSEPORT) and
    /// upstream connection pool (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,

    // --- workers and policy ---
    /// Engine base URLs, e.g. http://10.0.0.5:8000.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub worker_urls: Vec<String>,
    /// Routing policy (`--routing-logic` is accepted too, as in the vLLM production stack).
    #[arg(long, value_enum, default_value_t = PolicyKind::CacheAware, alias = "routing-logic")]
    #[serde(alias = "routing_logic")]
    pub policy: PolicyKind,
    /// A model's own policy, as MODEL=POLICY (repeatable); other models use --policy.
    /// Every model gets its own policy instance (its own prefix index).
    #[arg(long, value_delimiter = ',')]
    pub model_policy: Vec<String>,
    /// Per-model settings (YAML only): a map from model id to any of `policy`,
    /// `cache_threshold`, `balance_abs_threshold`, `balance_rel_threshold`,
    /// `max_tree_size`, `cache_queue_weight`, `hash_load_factor` (unset ones inherit the
    /// top-level value), and `capabilities`, `description`, `fallbacks` (model
    /// selection, docs/model-selection.md).
    #[arg(skip)]
    pub models: BTreeMap<String, ModelSettings>,
    /// Choosing the model by the prompt's intent (YAML only; docs/model-selection.md).
    #[arg(skip)]
    pub intent_routing: Option<IntentRouting>,
    /// Keep `workflow_metadata` in the body forwarded to engines (removed by default).
    #[arg(long)]
    pub forward_workflow_metadata: bool,
    /// Send a workflow's priority to the engine as vLLM's request `priority` (lower is
    /// sooner there, so the value is negated and rounded; `--scheduling-policy priority`
    /// on the engine).
    #[arg(long)]
    pub forward_priority: bool,
    /// In the admission queue, waiting this many seconds counts as one priority level,
    /// so that nothing waits for ever behind higher priorities.
    #[arg(long, default_value_t = 10.0)]
    pub priority_aging_secs: f64,
    /// `workflow_aware`: how strongly a workflow stays on its worker under load, from 0
    /// (placed like `cache_aware`) to 1 (stays while healthy).
    #[arg(long, default_value_t = 0.8)]
    pub batching_preference: f64,
    /// A workflow idle this long (seconds) is forgotten: its placement, registry entry
    /// and queues.
    #[arg(long, default_value_t = 3600)]
    pub workflow_ttl: u64,
    /// Most workflows tracked; the least recently active is evicted first.
    #[arg(long, default_value_t = 1000)]
    pub max_workflows: usize,
    /// Most messages waiting in one agent's queue; more are refused with 429.
    #[arg(long, default_value_t = 1000)]
    pub max_message_queue_size: usize,
    /// Largest agent message payload, in bytes (413 above it).
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_message_bytes: usize,
    /// `/route` use cases (YAML only; docs/route-api.md). Unset: the six defaults.
    #[arg(skip)]
    pub use_cases: Option<Vec<use_cases::UseCase>>,
    /// How `/route` classifies queries and detects a change of subject (YAML only).
    #[arg(skip)]
    pub use_case_routing: use_cases::UseCaseRouting,
    /// Where the Responses and Conversations APIs store their objects:
    /// `sqlite://PATH` (created if missing), `sqlite::memory:`, or `postgres://…` (shared
    /// by replicas). `switchyard serve` defaults to `sqlite://switchyard.db`, the demo
    /// and the library to memory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Delete stored responses and conversations older than this many days (off when
    /// unset).
    #[arg(long)]
    pub store_retention_days: Option<u32>,
    /// Most background responses (`background: true`) one gateway runs at once; more
    /// are answered 429 `too_many_background_responses`.
    #[arg(long, default_value_t = 256)]
    pub max_background_responses: usize,
    /// Where uploaded files' bytes are kept (a local directory, created if missing).
    /// `switchyard serve` defaults to `switchyard-files`; the demo and the library use a
    /// directory of their own under the system's temporary directory, removed when the
    /// gateway is dropped.
    #[arg(long, conflicts_with = "files_url")]
    pub files_dir: Option<std::path::PathBuf>,
    /// Keep uploaded files' bytes in S3-compatible object storage instead:
    /// `s3://BUCKET/PREFIX`, with settings other than credentials as query parameters
    /// (`?endpoint=https://minio.local:9000&region=eu-west-1`; object_store's names).
    /// Credentials and the rest come from the standard `AWS_*` environment variables
    /// (docs/files-and-vector-stores.md).
    #[arg(long)]
    pub files_url: Option<String>,
    /// Largest file upload, in bytes (413 beyond).
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    pub max_file_size: u64,
    /// The model that embeds vector stores' chunks and search queries: any model of
    /// the fleet that serves `/v1/embeddings`, reached through this gateway's own
    /// routing. Unset: files added to vector stores fail with a message saying so.
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Embed vector stores in this process with the sentence-transformers BERT model
    /// in this directory (`config.json`, `tokenizer.json`, `model.safetensors`, e.g.
    /// all-MiniLM-L6-v2) instead of `--embedding-model` (needs the `local-embeddings`
    /// build feature).
    #[arg(long)]
    pub local_embedding_model: Option<std::path::PathBuf>,
    /// Files this gateway ingests into vector stores at once.
    #[arg(long, default_value_t = 2)]
    pub ingest_workers: usize,
    /// Most server-side tool calls (file and web searches) one response makes, whatever its own
    /// `max_tool_calls` says; past it the model is asked to answer without the tool.
    #[arg(long, default_value_t = 8)]
    pub max_tool_calls: usize,
    /// The Responses API's server-side tools: their timeout and the web search
    /// provider (YAML only; docs/tools.md).
    #[arg(skip)]
    pub tools: tools::ToolsConfig,
    /// Redis for state shared by replicas (`/route` sessions and stats), e.g.
    /// `redis://127.0.0.1:6379/0`. Unset: in memory.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so deployments can share a Redis.
    #[arg(long, default_value = "switchyard")]
    pub redis_key_prefix: String,
    /// Connections to Redis (each multiplexed).
    #[arg(long, default_value_t = 4)]
    pub redis_pool_size: usize,
    /// A Redis command slower than this counts as failed (the gateway degrades).
    #[arg(long, default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// A `/route` session ends this long after its last turn.
    #[arg(long, default_value_t = 1800)]
    pub session_timeout_secs: u64,
    /// Most `/route` sessions kept in memory (least recently used go first).
    #[arg(long, default_value_t = 100_000)]
    pub max_sessions: usize,
    /// Most live sessions per user; a new one evicts the user's least recently used.
    #[arg(long, default_value_t = 100)]
    pub max_sessions_per_user: usize,
    /// Messages of a session's history sent with each follow-up (and kept).
    #[arg(long, default_value_t = 10)]
    pub session_history_messages: usize,
    /// Longest `/route` query, in bytes (400 above it).
    #[arg(long, default_value_t = 32 * 1024)]
    pub route_max_query_bytes: usize,
    /// A request naming a model directly also falls back along that model's
    /// `fallbacks` (`--fallback-on-named-model false` keeps it on the named model).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub fallback_on_named_model: bool,
    /// Also put the routing metadata into non-streaming JSON response bodies, under
    /// `switchyard_routing` (it is always in the `x-routing-metadata` header).
    #[arg(long)]
    pub routing_metadata_in_body: bool,
    /// A model alias, as ALIAS=MODEL (repeatable): requests naming ALIAS go to MODEL's
    /// workers, and the body forwarded names MODEL.
    #[arg(long, value_delimiter = ',')]
    pub model_alias: Vec<String>,
    /// Prefill/decode disaggregation: requests are prefilled on a --prefill worker and
    /// decoded on a --decode worker (instead of --worker-urls).
    #[arg(long)]
    pub pd_disaggregation: bool,
    /// A prefill worker: URL [BOOTSTRAP_PORT] (repeatable; the bootstrap port is used in
    /// sglang mode and defaults to the worker's own port). In YAML, a list where a number
    /// after a URL is that URL's bootstrap port.
    #[arg(long, num_args = 1..=2, action = clap::ArgAction::Append, value_names = ["URL", "BOOTSTRAP_PORT"])]
    pub prefill: Vec<String>,
    /// A decode worker URL (repeatable).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub decode: Vec<String>,
    /// Policy choosing the prefill worker.
    #[arg(long, value_enum, default_value_t = PolicyKind::CacheAware)]
    pub prefill_policy: PolicyKind,
    /// Policy choosing the decode worker.
    #[arg(long, value_enum, default_value_t = PolicyKind::PowerOfTwo)]
    pub decode_policy: PolicyKind,
    /// How the two phases talk: `vllm` (NixlConnector kv_transfer_params, prefill then
    /// decode) or `sglang` (bootstrap host/port/room, both sent at once).
    #[arg(long, value_enum, default_value_t = PdMode::Vllm)]
    pub pd_mode: PdMode,
    /// Data-parallel ranks behind each worker URL; each rank is its own routing
    /// candidate (own cache state and load), addressed with `X-data-parallel-rank`.
    #[arg(long, default_value_t = 1)]
    pub dp_size: usize,
    /// Also put the rank in the request body as `data_parallel_rank` (SGLang).
    #[arg(long)]
    pub dp_rank_in_body: bool,

    // --- Kubernetes service discovery ---
    /// Discover workers from Kubernetes pods (in addition to any static ones).
    #[arg(long)]
    pub service_discovery: bool,
    /// Label selector of worker pods, as KEY=VALUE pairs (all must match; evaluated by
    /// the API server).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub selector: Vec<String>,
    /// Namespace to watch (default: all namespaces the service account may list).
    #[arg(long)]
    pub service_discovery_namespace: Option<String>,
    /// Port the engines listen on in their pods.
    #[arg(long, default_value_t = 8000)]
    pub service_discovery_port: u16,
    /// Label selector of prefill pods (with --pd-disaggregation).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub prefill_selector: Vec<String>,
    /// Label selector of decode pods (with --pd-disaggregation).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub decode_selector: Vec<String>,
    /// Annotation, else label, of a pod naming the model it serves (absent: read from
    /// the engine's /v1/models).
    #[arg(long, default_value = "switchyard.ai/model")]
    pub service_discovery_model_key: String,
    /// Annotation of a prefill pod giving its SGLang bootstrap port.
    #[arg(long, default_value = "sglang.ai/bootstrap-port")]
    pub bootstrap_port_annotation: String,
    /// Seconds between full relists that repair missed watch events.
    #[arg(long, default_value_t = 60)]
    pub service_discovery_relist_secs: u64,
    /// API server URL, e.g. `kubectl proxy`'s http://127.0.0.1:8001 (default: the
    /// in-cluster service account, else the kubeconfig).
    #[arg(long)]
    pub kube_api_url: Option<String>,

    // --- cache_aware ---
    /// Smallest fraction of a prompt that must match a worker's cached prefix to count as a hit.
    #[arg(long, default_value_t = 0.3)]
    pub cache_threshold: f64,
    /// Load gap (in-flight requests) above which, together with the relative threshold,
    /// the fleet counts as imbalanced and the least-loaded worker is chosen.
    #[arg(long, default_value_t = 32)]
    pub balance_abs_threshold: usize,
    /// Load ratio (max/min in-flight) above which, with the absolute gap, the fleet is imbalanced.
    #[arg(long, default_value_t = 1.5)]
    pub balance_rel_threshold: f64,
    /// Seconds between sweeps that trim the prefix index to its bound.
    #[arg(long, default_value_t = 60)]
    pub eviction_interval: u64,
    /// Bound of the prefix index in characters of prompt text (entries = this / block size).
    #[arg(long, default_value_t = 1 << 24)]
    pub max_tree_size: usize,
    /// Characters per prefix-index block.
    #[arg(long, default_value_t = 64)]
    pub cache_block_size: usize,
    /// Prompt blocks of work one in-flight request is worth when weighing a worker's queue.
    #[arg(long, default_value_t = 4.0)]
    pub cache_queue_weight: f64,

    // --- precise_prefix (KV-cache events) ---
    /// Where a worker's engine publishes KV-cache events: `URL=tcp://host:port` for one
    /// worker, or a template for every worker, `tcp://{host}:5557` (`{host}` is the
    /// worker URL's host). A data-parallel rank adds its rank to the port, as vLLM does.
    /// Repeatable.
    #[arg(long, value_name = "[URL=]ENDPOINT")]
    pub kv_events_endpoint: Vec<String>,
    /// vLLM's centralised mode: bind one SUB socket here (`tcp://0.0.0.0:5557`) for
    /// engines that connect to it; a message's topic must name its engine's `host:port`
    /// (`kv@HOST:PORT@MODEL`).
    #[arg(long, value_name = "ENDPOINT")]
    pub kv_events_bind: Option<String>,
    /// The engine's replay endpoint (vLLM's `replay_endpoint`), same forms: what a gap
    /// in the events lost is fetched from it.
    #[arg(long, value_name = "[URL=]ENDPOINT")]
    pub kv_events_replay_endpoint: Vec<String>,
    /// Tokenizer of the models routed by precise_prefix: `tiktoken:cl100k_base` (the
    /// simulator's), `tiktoken:o200k_base`, or a Hugging Face tokenizer.json.
    #[arg(long, default_value = "tiktoken:cl100k_base")]
    pub kv_tokenizer: String,
    /// Their chat template: `simulator`, a Jinja file, or a tokenizer_config.json.
    #[arg(long, default_value = "simulator")]
    pub kv_chat_template: String,
    /// Tokens per KV block until the engines' events report theirs.
    #[arg(long, default_value_t = 16)]
    pub kv_block_size: usize,
    /// Bound of the KV-event index, in blocks (all workers together).
    #[arg(long, default_value_t = 4_000_000)]
    pub kv_index_max_blocks: usize,

    // --- consistent_hash ---
    /// Extra header to take the session key from (after X-Session-ID and X-User-ID).
    #[arg(long)]
    pub hash_header: Option<String>,
    /// A worker may hold at most this factor × the mean in-flight load before keys walk on.
    #[arg(long, default_value_t = 1.25)]
    pub hash_load_factor: f64,

    // --- engine load ---
    /// Seconds between scrapes of each engine's /metrics (power_of_two's load signal).
    #[arg(long, default_value_t = 1)]
    pub load_interval_secs: u64,

    // --- retries ---
    /// Retries after the first attempt.
    #[arg(long, default_value_t = 3)]
    pub retry_max_retries: u32,
    #[arg(long, default_value_t = 50)]
    pub retry_initial_backoff_ms: u64,
    #[arg(long, default_value_t = 5000)]
    pub retry_max_backoff_ms: u64,
    #[arg(long, default_value_t = 2.0)]
    pub retry_backoff_multiplier: f64,
    /// Random fraction (0..1) added to or taken from each backoff.
    #[arg(long, default_value_t = 0.2)]
    pub retry_jitter_factor: f64,
    #[arg(long)]
    pub disable_retries: bool,

    // --- circuit breaker ---
    /// Failures within the window that open a worker's breaker.
    #[arg(long, default_value_t = 5)]
    pub cb_failure_threshold: u32,
    /// Successful probes in half-open that close it again.
    #[arg(long, default_value_t = 2)]
    pub cb_success_threshold: u32,
    /// Seconds a breaker stays open before it lets probes through.
    #[arg(long, default_value_t = 30)]
    pub cb_timeout_duration_secs: u64,
    /// Seconds over which failures are counted.
    #[arg(long, default_value_t = 60)]
    pub cb_window_duration_secs: u64,
    #[arg(long)]
    pub disable_circuit_breaker: bool,

    // --- health ---
    #[arg(long, default_value_t = 10)]
    pub health_check_interval_secs: u64,
    #[arg(long, default_value_t = 5)]
    pub health_check_timeout_secs: u64,
    /// Consecutive failed checks (or upstream failures) that mark a worker unhealthy.
    #[arg(long, default_value_t = 3)]
    pub health_failure_threshold: u32,
    /// Consecutive passed checks that mark it healthy again.
    #[arg(long, default_value_t = 2)]
    pub health_success_threshold: u32,
    #[arg(long, default_value = "/health")]
    pub health_check_endpoint: String,

    // --- admission ---
    /// Requests served at once (0: no limit); the permit lives until the body is sent.
    #[arg(long, default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for a permit, FIFO (503 when full).
    #[arg(long, default_value_t = 2048)]
    pub queue_size: usize,
    /// Seconds a request may wait in the queue (503 after it).
    #[arg(long, default_value_t = 60)]
    pub queue_timeout_secs: u64,
    /// Requests per second admitted by a token bucket (0: no limit; 429 above it).
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_tokens_per_second: f64,

    // --- worker API ---
    /// Address of the admin listener (worker API); the data plane never serves it. An
    /// address other than loopback needs --admin-api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub admin_host: String,
    /// Port of the admin listener (0: a free port).
    #[arg(long, default_value_t = 30080)]
    pub admin_port: u16,
    /// Clients of the worker API must send `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHYARD_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Hosts or CIDRs (e.g. 10.0.0.0/8) workers may be registered at through the API;
    /// none: any. Guards against the API being used to reach arbitrary hosts. Host
    /// names are resolved once, at startup; a registered worker is connected to the
    /// allowed address its host resolved to at registration.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub worker_allowlist: Vec<String>,
    /// Ports workers may be registered at through the API; none: any.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub worker_allowed_ports: Vec<u16>,
    /// Longest a deleted worker may keep serving its in-flight requests before removal.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout_secs: u64,

    // --- observability ---
    #[arg(long, default_value = "127.0.0.1")]
    pub prometheus_host: String,
    /// Port of the metrics listener (0: a free port).
    #[arg(long, default_value_t = 29000)]
    pub prometheus_port: u16,
    /// Headers a request id is taken from, first present wins.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = default_request_id_headers())]
    pub request_id_headers: Vec<String>,
    /// trace, debug, info, warn or error (or a tracing filter).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Also write logs to switchyard.log in this directory.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Export OpenTelemetry traces (OTLP over HTTP, protobuf) to this URL, e.g.
    /// http://collector:4318 (`/v1/traces` is added when the URL has no path), and
    /// propagate W3C `traceparent` to engines (docs/tracing.md). Unset: off, at no cost.
    #[arg(long, env = "SWITCHYARD_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,

    // --- security ---
    /// Clients must send `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sent to engines as `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHYARD_WORKER_API_KEY", hide_env_values = true)]
    pub worker_api_key: Option<String>,
    /// Forward the client's own `Authorization` header to engines (when no
    /// --worker-api-key is set). Off by default: a client's key stays at the gateway.
    #[arg(long)]
    pub forward_client_auth: bool,
    /// Origins allowed by CORS (`*` for any); none: CORS headers are not sent.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    // --- tenancy (docs/tenancy.md) ---
    /// Static API keys and their tenants (YAML only: `api_keys: [{key, tenant}]`).
    #[arg(skip)]
    pub api_keys: Vec<crate::tenancy::directory::StaticKey>,
    /// Tenants defined in the config (YAML only): `id`, `name`, `limits`,
    /// `allowed_models`. Tenants can also be created through the admin API.
    #[arg(skip)]
    pub tenants: Vec<crate::tenancy::directory::TenantConfig>,
    /// Limits of the whole gateway, over every tenant (YAML only).
    #[arg(skip)]
    pub global_limits: crate::tenancy::limits::Limits,
    /// When Redis cannot be reached for a limit check: `open` enforces each limit
    /// divided by --rate-limit-replicas in this replica; `closed` refuses limited
    /// requests with 503.
    #[arg(long, value_enum, default_value_t = crate::tenancy::limiter::OnStoreError::Open)]
    pub rate_limit_on_store_error: crate::tenancy::limiter::OnStoreError,
    /// Gateway replicas sharing the limits (each enforces its share when Redis is down).
    #[arg(long, default_value_t = 1)]
    pub rate_limit_replicas: u64,
    /// Seconds between writes of usage counts to the database (a crash loses at most
    /// this much).
    #[arg(long, default_value_t = 5)]
    pub usage_flush_secs: u64,
    /// Completion tokens reserved against a tokens-per-minute limit for a request that
    /// sets no `max_tokens`.
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens_estimate: u64,
    /// Failed authentications one client address may make per minute before it is
    /// refused for the rest of the minute (0: no limit).
    #[arg(long, default_value_t = 20)]
    pub auth_failures_per_minute: u32,

    // --- response cache (docs/caching.md) ---
    /// Answer repeated deterministic chat and completion requests from a cache kept
    /// `memory` (this replica) or in `redis` (shared; needs --redis-url). Unset: off.
    #[arg(long, value_enum)]
    pub response_cache: Option<CacheBackend>,
    /// How long a cached answer is served.
    #[arg(long, default_value_t = 3600)]
    pub response_cache_ttl_secs: u64,
    /// Most answers the in-memory cache holds (least recently used go first).
    #[arg(long, default_value_t = 10_000)]
    pub response_cache_max_entries: usize,
    /// Most bytes the in-memory cache holds (least recently used go first).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub response_cache_max_bytes: usize,
    /// Largest answer cached, in bytes; a larger one is passed on and not kept.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub response_cache_max_entry_bytes: usize,
    /// Longest a Redis cache read or write may take; past it the request goes on
    /// without the cache (`x-cache: BYPASS`).
    #[arg(long, default_value_t = 100)]
    pub response_cache_timeout_ms: u64,
    /// Semantic matching for requests that opt in (`x-cache-semantic: true`): a cached
    /// answer whose last user message is at least this similar (cosine, 0–1) is served.
    /// Embeds with --embedding-model or --local-embedding-model. Unset: off.
    #[arg(long)]
    pub response_cache_semantic_threshold: Option<f64>,
    /// Most prompt vectors kept in one semantic bucket (same tenant, model and request
    /// but for the last user message); each lookup compares against all of them.
    #[arg(long, default_value_t = 256)]
    pub response_cache_semantic_bucket_size: usize,
    /// Longest the embedding of a prompt for a semantic lookup may take.
    #[arg(long, default_value_t = 2000)]
    pub response_cache_embed_timeout_ms: u64,
}

/// Where the response cache keeps answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    Memory,
    Redis,
}

fn default_request_id_headers() -> Vec<String> {
    [
        "x-request-id",
        "x-correlation-id",
        "x-trace-id",
        "request-id",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for Config {
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            c: Config,
        }
        Only::parse_from(["switchyard"]).c
    }
}
