//! The one configuration schema. CLI flags and the YAML file (`--config`) both fill this
//! struct; a flag given on the command line overrides the file. Every option has one
//! name: `--flag-name` on the CLI, `flag_name` in YAML and in the docs.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

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
}

/// The prefill/decode protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PdMode {
    Vllm,
    Sglang,
}

/// A model's own routing policy and settings; `None` inherits the gateway-wide value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    pub policy: Option<PolicyKind>,
    pub cache_threshold: Option<f64>,
    pub balance_abs_threshold: Option<usize>,
    pub balance_rel_threshold: Option<f64>,
    pub max_tree_size: Option<usize>,
    pub cache_queue_weight: Option<f64>,
    pub hash_load_factor: Option<f64>,
}

impl ModelSettings {
    /// Label naming a model's policy on its workers; `policy.<setting>` labels carry
    /// the settings (e.g. `policy.cache_threshold=0.5`).
    pub const LABEL: &'static str = "policy";

    /// Settings from worker labels (`policy`, `policy.<setting>`); `None` when the
    /// labels carry none.
    pub fn from_labels(
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<ModelSettings>, String> {
        let mut map = serde_json::Map::new();
        for (k, v) in labels {
            let key = if k == Self::LABEL {
                "policy"
            } else if let Some(setting) = k.strip_prefix("policy.") {
                setting
            } else {
                continue;
            };
            let value = serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .filter(|v| v.is_number())
                .unwrap_or_else(|| serde_json::Value::String(v.clone()));
            map.insert(key.to_string(), value);
        }
        if map.is_empty() {
            return Ok(None);
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map(Some)
            .map_err(|e| format!("label `policy.{}`: {}", e.path(), e.inner()))
    }

    /// `base` with these settings applied.
    pub fn apply(&self, base: &Config) -> Config {
        let mut c = base.clone();
        c.models.clear();
        c.model_policy.clear();
        if let Some(v) = self.policy {
            c.policy = v;
        }
        if let Some(v) = self.cache_threshold {
            c.cache_threshold = v;
        }
        if let Some(v) = self.balance_abs_threshold {
            c.balance_abs_threshold = v;
        }
        if let Some(v) = self.balance_rel_threshold {
            c.balance_rel_threshold = v;
        }
        if let Some(v) = self.max_tree_size {
            c.max_tree_size = v;
        }
        if let Some(v) = self.cache_queue_weight {
            c.cache_queue_weight = v;
        }
        if let Some(v) = self.hash_load_factor {
            c.hash_load_factor = v;
        }
        c
    }
}

/// `switchyard`: an OpenAI-compatible gateway in front of vLLM / SGLang engines.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in front of the given workers.
    Serve(Box<Config>),
    /// Run the gateway with 3 embedded simulated engines (no GPU needed).
    Demo(Box<Config>),
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
    /// Routing policy.
    #[arg(long, value_enum, default_value_t = PolicyKind::CacheAware)]
    pub policy: PolicyKind,
    /// A model's own policy, as MODEL=POLICY (repeatable); other models use --policy.
    /// Every model gets its own policy instance (its own prefix index).
    #[arg(long, value_delimiter = ',')]
    pub model_policy: Vec<String>,
    /// Per-model policy and policy settings (YAML only): a map from model id to any of
    /// `policy`, `cache_threshold`, `balance_abs_threshold`, `balance_rel_threshold`,
    /// `max_tree_size`, `cache_queue_weight`, `hash_load_factor`. Unset ones inherit the
    /// top-level value.
    #[arg(skip)]
    pub models: std::collections::BTreeMap<String, ModelSettings>,
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
    /// Address of the admin listener (worker API); the data plane never serves it.
    #[arg(long, default_value = "127.0.0.1")]
    pub admin_host: String,
    /// Port of the admin listener (0: a free port).
    #[arg(long, default_value_t = 30080)]
    pub admin_port: u16,
    /// Clients of the worker API must send `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHYARD_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Hosts or CIDRs (e.g. 10.0.0.0/8) workers may be registered at through the API;
    /// none: any. Guards against the API being used to reach arbitrary hosts.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub worker_allowlist: Vec<String>,
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

    // --- security ---
    /// Clients must send `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sent to engines as `Authorization: Bearer <key>`.
    #[arg(long, env = "SWITCHYARD_WORKER_API_KEY", hide_env_values = true)]
    pub worker_api_key: Option<String>,
    /// Origins allowed by CORS (`*` for any); none: CORS headers are not sent.
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
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

impl Config {
    /// Parses the process arguments: returns the subcommand's config with the YAML file
    /// (if any) applied under the flags given on the command line.
    pub fn from_args() -> anyhow::Result<(bool, Config)> {
        Self::from_arg_list(std::env::args_os())
    }

    /// As [`from_args`](Self::from_args), for a given argument list. Returns whether the
    /// subcommand is `demo`.
    pub fn from_arg_list<I, T>(args: I) -> anyhow::Result<(bool, Config)>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args).map_err(|e| {
            let _ = e.print();
            std::process::exit(e.exit_code());
        })?;
        let cli = Cli::from_arg_matches(&matches)?;
        let (demo, sub) = match matches.subcommand() {
            Some((name, sub)) => (name == "demo", sub),
            None => anyhow::bail!("a subcommand is required"),
        };
        let cfg = match cli.command {
            Command::Serve(c) | Command::Demo(c) => *c,
        };
        let merged = match &cfg.config {
            Some(path) => Self::merge_file(path, &cfg, sub)?,
            None => cfg,
        };
        Ok((demo, merged))
    }

    /// Loads `path` and applies the command-line flags on top of it.
    fn merge_file(path: &Path, cli: &Config, matches: &ArgMatches) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
        let mut file: serde_json::Value = serde_yaml::from_str::<serde_json::Value>(&text)
            .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
        if file.is_null() {
            file = serde_json::json!({});
        }
        let Some(map) = file.as_object_mut() else {
            anyhow::bail!(
                "--config {}: expected a mapping of option names to values",
                path.display()
            );
        };
        let cli_values = serde_json::to_value(cli)?;
        for id in matches.ids() {
            let id = id.as_str();
            if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
                if let Some(v) = cli_values.get(id) {
                    map.insert(id.to_string(), v.clone());
                }
            }
        }
        let mut cfg: Config = serde_path_to_error::deserialize(file).map_err(|e| {
            anyhow::anyhow!(
                "--config {}: option `{}`: {}",
                path.display(),
                e.path(),
                e.inner()
            )
        })?;
        cfg.config = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// `--prefill` as (URL, bootstrap port) pairs, validated; `--decode` URLs validated.
    pub fn pd_workers(&self) -> Result<Vec<(String, Option<u16>)>, String> {
        let mut out: Vec<(String, Option<u16>)> = Vec::new();
        for v in &self.prefill {
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                let port = v
                    .parse::<u16>()
                    .map_err(|_| format!("--prefill bootstrap port {v:?} is not a port number"))?;
                match out.last_mut() {
                    Some((_, p @ None)) => *p = Some(port),
                    _ => return Err(format!("--prefill bootstrap port {v} must follow a URL")),
                }
            } else {
                crate::fleet::parse_worker_url(v).map_err(|e| format!("--prefill {v:?}: {e}"))?;
                out.push((v.clone(), None));
            }
        }
        for url in &self.decode {
            crate::fleet::parse_worker_url(url).map_err(|e| format!("--decode {url:?}: {e}"))?;
        }
        Ok(out)
    }

    /// `--model-alias` as a map from alias to model.
    pub fn aliases(
        &self,
    ) -> Result<std::collections::HashMap<String, std::sync::Arc<str>>, String> {
        self.model_alias
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((a, m)) if !a.is_empty() && !m.is_empty() && a != m => {
                    Ok((a.to_string(), std::sync::Arc::from(m)))
                }
                _ => Err(format!("--model-alias {pair:?}: expected ALIAS=MODEL")),
            })
            .collect()
    }

    /// Checks the settings a policy reads (also run on each model's own settings).
    pub fn validate_policy_settings(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.cache_threshold) {
            return Err(format!(
                "--cache-threshold must be between 0 and 1, got {}",
                self.cache_threshold
            ));
        }
        if self.balance_rel_threshold.is_nan() || self.balance_rel_threshold < 1.0 {
            return Err("--balance-rel-threshold must be at least 1.0".into());
        }
        if self.hash_load_factor.is_nan() || self.hash_load_factor < 1.0 {
            return Err("--hash-load-factor must be at least 1.0".into());
        }
        if self.cache_queue_weight.is_nan() || self.cache_queue_weight < 0.0 {
            return Err("--cache-queue-weight must be non-negative".into());
        }
        if self.max_tree_size == 0 {
            return Err("--max-tree-size must be at least 1".into());
        }
        Ok(())
    }

    /// Checks values and their relations; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        for url in &self.worker_urls {
            crate::fleet::parse_worker_url(url)
                .map_err(|e| format!("--worker-urls {url:?}: {e}"))?;
        }
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("--{name} must be between 0 and 1, got {v}"))
            }
        };
        self.validate_policy_settings()?;
        unit("retry-jitter-factor", self.retry_jitter_factor)?;
        if self.retry_backoff_multiplier.is_nan() || self.retry_backoff_multiplier < 1.0 {
            return Err("--retry-backoff-multiplier must be at least 1.0".into());
        }
        if !(self.rate_limit_tokens_per_second >= 0.0
            && self.rate_limit_tokens_per_second.is_finite())
        {
            return Err("--rate-limit-tokens-per-second must be a non-negative number".into());
        }
        let positive = [
            ("request-timeout-secs", self.request_timeout_secs as usize),
            ("max-payload-size", self.max_payload_size),
            ("cache-block-size", self.cache_block_size),
            ("dp-size", self.dp_size),
            ("eviction-interval", self.eviction_interval as usize),
            ("load-interval-secs", self.load_interval_secs as usize),
            ("cb-failure-threshold", self.cb_failure_threshold as usize),
            ("cb-success-threshold", self.cb_success_threshold as usize),
            (
                "cb-timeout-duration-secs",
                self.cb_timeout_duration_secs as usize,
            ),
            (
                "cb-window-duration-secs",
                self.cb_window_duration_secs as usize,
            ),
            (
                "health-check-interval-secs",
                self.health_check_interval_secs as usize,
            ),
            (
                "health-check-timeout-secs",
                self.health_check_timeout_secs as usize,
            ),
            (
                "health-failure-threshold",
                self.health_failure_threshold as usize,
            ),
            (
                "health-success-threshold",
                self.health_success_threshold as usize,
            ),
            ("queue-timeout-secs", self.queue_timeout_secs as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        if self.retry_initial_backoff_ms > self.retry_max_backoff_ms {
            return Err("--retry-initial-backoff-ms must not exceed --retry-max-backoff-ms".into());
        }
        if !self.health_check_endpoint.starts_with('/') {
            return Err("--health-check-endpoint must start with /".into());
        }
        if self
            .request_id_headers
            .iter()
            .any(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err("--request-id-headers must be valid header names".into());
        }
        if let Some(h) = &self.hash_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(format!("--hash-header {h:?} is not a valid header name"));
            }
        }
        crate::routing::Policies::new(self)?;
        self.pd_workers()?;
        if !self.pd_disaggregation && (!self.prefill.is_empty() || !self.decode.is_empty()) {
            return Err("--prefill / --decode need --pd-disaggregation".into());
        }
        if self.pd_disaggregation
            && !self.service_discovery
            && (self.prefill.is_empty() || self.decode.is_empty())
        {
            return Err(
                "--pd-disaggregation needs at least one --prefill and one --decode worker (or --service-discovery with --prefill-selector and --decode-selector)".into(),
            );
        }
        crate::fleet::kubernetes::check_selector("selector", &self.selector)?;
        crate::fleet::kubernetes::check_selector("prefill-selector", &self.prefill_selector)?;
        crate::fleet::kubernetes::check_selector("decode-selector", &self.decode_selector)?;
        if self.service_discovery {
            if self.pd_disaggregation {
                if self.prefill_selector.is_empty() || self.decode_selector.is_empty() {
                    return Err("--service-discovery with --pd-disaggregation needs --prefill-selector and --decode-selector".into());
                }
                if !self.selector.is_empty() {
                    return Err("--selector applies without --pd-disaggregation; use --prefill-selector and --decode-selector".into());
                }
            } else {
                if self.selector.is_empty() {
                    return Err("--service-discovery needs --selector KEY=VALUE".into());
                }
                if !self.prefill_selector.is_empty() || !self.decode_selector.is_empty() {
                    return Err(
                        "--prefill-selector / --decode-selector need --pd-disaggregation".into(),
                    );
                }
            }
            if self.service_discovery_port == 0 {
                return Err("--service-discovery-port must be a port number".into());
            }
            if self.service_discovery_relist_secs == 0 {
                return Err("--service-discovery-relist-secs must be at least 1".into());
            }
            if let Some(url) = &self.kube_api_url {
                url.parse::<http::Uri>()
                    .ok()
                    .filter(|u| u.scheme().is_some() && u.authority().is_some())
                    .ok_or_else(|| format!("--kube-api-url {url:?} is not a URL"))?;
            }
        } else if !self.selector.is_empty()
            || !self.prefill_selector.is_empty()
            || !self.decode_selector.is_empty()
        {
            return Err(
                "--selector / --prefill-selector / --decode-selector need --service-discovery"
                    .into(),
            );
        }
        self.aliases()?;
        for entry in &self.worker_allowlist {
            if let Some((net, len)) = entry.split_once('/') {
                let ok = match net.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(_)) => len.parse::<u32>().is_ok_and(|l| l <= 32),
                    Ok(std::net::IpAddr::V6(_)) => len.parse::<u32>().is_ok_and(|l| l <= 128),
                    Err(_) => false,
                };
                if !ok {
                    return Err(format!("--worker-allowlist {entry:?} is not a valid CIDR"));
                }
            } else if entry.is_empty() {
                return Err("--worker-allowlist entries must not be empty".into());
            }
        }
        if self.admin_api_key.as_deref() == Some("") {
            return Err("--admin-api-key must not be empty".into());
        }
        if self.api_key.as_deref() == Some("") {
            return Err("--api-key must not be empty".into());
        }
        Ok(())
    }
}
