//! The simulator's configuration: one struct, filled by the CLI (clap) or built in code
//! for tests via [`SimConfig::default`] and struct update syntax.

use std::str::FromStr;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::faults::Faults;
use crate::kv_events::{HashAlgo, KvEventsConfig};

/// What part of disaggregated serving an engine plays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves whole requests and either side of a prefill/decode split.
    #[default]
    Both,
    /// Prefill side: refuses requests that expect KV from a remote prefill.
    Prefill,
    /// Decode side: refuses requests that ask to hand their KV to a remote decode.
    Decode,
}

/// Order in which an engine admits waiting requests (vLLM's `--scheduling-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served; a request's `priority` is accepted and ignored.
    #[default]
    Fcfs,
    /// Lowest request `priority` first, ties by arrival (earlier first).
    Priority,
}

/// How many tokens to generate when a request sets no `max_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OutputLen {
    /// Always `n` tokens.
    Fixed(u32),
    /// Uniform in `[lo, hi]`.
    Uniform(u32, u32),
    /// Normal with the given mean and standard deviation, clamped to at least 1.
    Normal(f64, f64),
}

impl FromStr for OutputLen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<f64, String> {
            parts
                .get(i)
                .ok_or_else(|| format!("`{s}`: missing a number"))?
                .parse::<f64>()
                .map_err(|e| format!("`{s}`: {e}"))
        };
        let out = match parts[0] {
            "fixed" if parts.len() == 2 => OutputLen::Fixed(num(1)? as u32),
            "uniform" if parts.len() == 3 => OutputLen::Uniform(num(1)? as u32, num(2)? as u32),
            "normal" if parts.len() == 3 => OutputLen::Normal(num(1)?, num(2)?),
            _ => {
                return Err(format!(
                    "`{s}`: expected fixed:N, uniform:LO:HI or normal:MEAN:STD"
                ));
            }
        };
        match out {
            OutputLen::Fixed(0) => Err("output length must be at least 1".into()),
            OutputLen::Uniform(lo, hi) if lo == 0 || lo > hi => {
                Err(format!("`{s}`: need 1 <= LO <= HI"))
            }
            OutputLen::Normal(m, sd) if m < 1.0 || sd < 0.0 => {
                Err(format!("`{s}`: need MEAN >= 1 and STD >= 0"))
            }
            ok => Ok(ok),
        }
    }
}

impl OutputLen {
    /// Draws a length from the distribution using `rng`.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u32 {
        match *self {
            OutputLen::Fixed(n) => n,
            OutputLen::Uniform(lo, hi) => rng.u32(lo..=hi),
            OutputLen::Normal(mean, sd) => {
                // Box-Muller.
                let u1 = rng.f64().max(f64::MIN_POSITIVE);
                let u2 = rng.f64();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean + sd * z).round().max(1.0) as u32
            }
        }
    }
}

/// The per-step cost model: `a + b·prefill_tokens + c·decode_seqs + d·context_tokens`.
///
/// Defaults approximate Llama-3.1-8B in bf16 on one H100 SXM (see docs/simulator.md).
#[derive(Clone, Copy, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct StepModel {
    /// a: fixed cost of one engine step in milliseconds (weights read once per step).
    #[arg(long = "step-base-ms", default_value_t = 5.0)]
    pub base_ms: f64,
    /// b: cost of each prompt token prefilled in the step, in microseconds.
    #[arg(long = "step-prefill-token-us", default_value_t = 40.0)]
    pub prefill_token_us: f64,
    /// c: cost of each sequence decoding one token in the step, in microseconds.
    #[arg(long = "step-decode-seq-us", default_value_t = 40.0)]
    pub decode_seq_us: f64,
    /// d: cost of each context token attended to by the step's sequences, in nanoseconds.
    #[arg(long = "step-context-token-ns", default_value_t = 40.0)]
    pub context_token_ns: f64,
}

impl Default for StepModel {
    fn default() -> Self {
        StepModel {
            base_ms: 5.0,
            prefill_token_us: 40.0,
            decode_seq_us: 40.0,
            context_token_ns: 40.0,
        }
    }
}

impl StepModel {
    /// Simulated seconds one step takes.
    pub fn step_secs(
        &self,
        prefill_tokens: usize,
        decode_seqs: usize,
        context_tokens: usize,
    ) -> f64 {
        self.base_ms * 1e-3
            + self.prefill_token_us * 1e-6 * prefill_tokens as f64
            + self.decode_seq_us * 1e-6 * decode_seqs as f64
            + self.context_token_ns * 1e-9 * context_tokens as f64
    }
}

/// `switchyard-sim`: simulated vLLM engines behind an OpenAI-compatible API.
#[derive(Clone, Debug, Parser, Serialize, Deserialize)]
#[command(name = "switchyard-sim", version, about, long_about = None)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the first engine (0 picks a free port).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Independent engines to serve, on ports PORT, PORT+1, … (each its own cache and scheduler).
    #[arg(long, default_value_t = 1)]
    pub engines: usize,
    /// Model name(s) the engine answers to; the first is reported in metrics. Repeatable.
    #[arg(long = "served-model-name", num_args = 1.., default_value = "switchyard/sim-8b")]
    pub served_model_name: Vec<String>,
    /// Longest prompt + output, in tokens.
    #[arg(long, default_value_t = 32768)]
    pub max_model_len: usize,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV-cache capacity in blocks, shared by running sequences and cached prefixes.
    #[arg(long, default_value_t = 28000)]
    pub num_gpu_blocks: usize,
    /// Most sequences running in one batch.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one step (chunked prefill splits longer prompts).
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: usize,
    /// Turn the prefix cache off (every request prefills its whole prompt).
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// How block hashes are computed: the simulator's own (`builtin`) or vLLM's
    /// `sha256_cbor` (what KV events then carry).
    #[arg(long, value_enum, default_value_t = HashAlgo::Builtin)]
    pub prefix_caching_hash_algo: HashAlgo,
    /// KV-cache events, as vLLM's JSON (`{"enable_kv_cache_events":true,
    /// "publisher":"zmq","endpoint":"tcp://*:5557","replay_endpoint":"tcp://*:5558"}`).
    /// Engine i's data-parallel rank r publishes on the ports raised by
    /// i × --data-parallel-size + r.
    #[arg(long, value_parser = <KvEventsConfig as FromStr>::from_str)]
    pub kv_events_config: Option<KvEventsConfig>,
    /// Order of the waiting queue: `fcfs`, or `priority` (lowest request `priority`
    /// first, ties by arrival).
    #[arg(long, value_enum, default_value_t = SchedulingPolicy::Fcfs)]
    pub scheduling_policy: SchedulingPolicy,
    /// Step-time coefficients.
    #[command(flatten)]
    pub step: StepModel,
    /// Per-engine multipliers of step time, comma-separated (e.g. `1,1,2`); the last one
    /// repeats. Makes some engines slower than others.
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    pub step_time_multiplier: Vec<f64>,
    /// Run this many times faster than real time. Reported latencies stay in simulated seconds.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Output length when a request sets no max_tokens: fixed:N, uniform:LO:HI, normal:MEAN:STD.
    #[arg(long, default_value = "uniform:32:512", value_parser = OutputLen::from_str)]
    pub output_len: OutputLen,
    /// Seed of generated text and output lengths (a request's `seed` overrides it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dimension of /v1/embeddings vectors.
    #[arg(long, default_value_t = 1024)]
    pub embedding_dim: usize,
    /// Role in prefill/decode disaggregation.
    #[arg(long, value_enum, default_value_t = Role::Both)]
    pub role: Role,
    /// Data-parallel ranks behind each port (each its own cache and scheduler).
    #[arg(long, default_value_t = 1)]
    pub data_parallel_size: usize,
    /// Fixed cost of receiving a remote prefill's KV, in milliseconds (simulated).
    #[arg(long, default_value_t = 1.0)]
    pub kv_transfer_base_ms: f64,
    /// Cost of receiving one token's KV from a remote prefill, in microseconds (simulated).
    #[arg(long, default_value_t = 5.0)]
    pub kv_transfer_token_us: f64,
    /// Extra port for the SGLang bootstrap endpoint (always served on the API port too);
    /// engine i of --engines uses PORT+i, 0 picks a free port.
    #[arg(long)]
    pub bootstrap_port: Option<u16>,
    /// Hosts a decode engine may fetch a prefill's bootstrap state from: IP addresses,
    /// CIDR blocks or host names, comma-separated (default: loopback only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1,localhost"
    )]
    pub bootstrap_allowed_hosts: Vec<String>,
    /// Report `usage.prompt_tokens_details.cached_tokens` (vLLM's flag; without it the
    /// details are `null`).
    #[arg(long)]
    pub enable_prompt_tokens_details: bool,
    /// Add the simulator's own `sim_timing` object (simulated queue, TTFT and end-to-end
    /// seconds) to answers and final stream chunks; off, answers carry only vLLM's fields.
    #[arg(long)]
    pub sim_timing: bool,
    /// Serve vLLM's scale-out render endpoints (`/v1/chat/completions/render`,
    /// `/v1/completions/render`); without it they answer 403, as vLLM does.
    #[arg(long)]
    pub enable_scale_out: bool,
    /// Answer every completion at once with a fixed text, skipping tokenizer, cache and
    /// scheduler: an engine that costs nothing, for measuring a gateway's overhead.
    #[arg(long)]
    pub instant: bool,
    /// Log filter (trace, debug, info, warn, error).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Faults active from the start (change them at runtime with POST /sim/faults).
    #[command(flatten)]
    pub faults: Faults,
}

/// The simulator built in code, for tests, benchmarks and the demo: the command line's
/// defaults on a free port, with the measurements they read switched on
/// (`--enable-prompt-tokens-details`, `--sim-timing`).
impl Default for SimConfig {
    fn default() -> Self {
        let mut c = SimConfig::parse_from(["switchyard-sim"]);
        c.port = 0;
        c.enable_prompt_tokens_details = true;
        c.sim_timing = true;
        c
    }
}

impl SimConfig {
    /// Checks ranges and relations between options; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--engines", self.engines),
            ("--max-model-len", self.max_model_len),
            ("--block-size", self.block_size),
            ("--num-gpu-blocks", self.num_gpu_blocks),
            ("--max-num-seqs", self.max_num_seqs),
            ("--max-num-batched-tokens", self.max_num_batched_tokens),
            ("--data-parallel-size", self.data_parallel_size),
            ("--embedding-dim", self.embedding_dim),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.served_model_name.is_empty() || self.served_model_name.iter().any(|m| m.is_empty())
        {
            return Err("--served-model-name must be non-empty".into());
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err("--time-scale must be a positive number".into());
        }
        let s = &self.step;
        for (name, v) in [
            ("--step-base-ms", s.base_ms),
            ("--step-prefill-token-us", s.prefill_token_us),
            ("--step-decode-seq-us", s.decode_seq_us),
            ("--step-context-token-ns", s.context_token_ns),
            ("--kv-transfer-base-ms", self.kv_transfer_base_ms),
            ("--kv-transfer-token-us", self.kv_transfer_token_us),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a non-negative number"));
            }
        }
        if s.base_ms <= 0.0 {
            return Err("--step-base-ms must be positive (a step cannot take no time)".into());
        }
        if self.step_time_multiplier.is_empty()
            || self
                .step_time_multiplier
                .iter()
                .any(|m| !(m.is_finite() && *m > 0.0))
        {
            return Err("--step-time-multiplier values must be positive numbers".into());
        }
        if self.num_gpu_blocks * self.block_size
            < self.max_model_len.min(self.max_num_batched_tokens)
        {
            return Err(format!(
                "--num-gpu-blocks × --block-size ({} tokens) cannot hold one step of \
                 min(--max-model-len, --max-num-batched-tokens) tokens",
                self.num_gpu_blocks * self.block_size
            ));
        }
        if self.engines > 1 && self.port != 0 && usize::from(self.port) + self.engines - 1 > 65535 {
            return Err("--port + --engines runs past port 65535".into());
        }
        self.faults.validate()
    }

    /// Whether a decode engine may contact `host` (a client-supplied `bootstrap_host`).
    pub fn bootstrap_host_allowed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: Option<std::net::IpAddr> = host.parse().ok();
        self.bootstrap_allowed_hosts.iter().any(|entry| {
            if let Some((net, bits)) = entry.split_once('/') {
                let (Ok(net), Ok(bits), Some(ip)) =
                    (net.parse::<std::net::IpAddr>(), bits.parse::<u32>(), ip)
                else {
                    return false;
                };
                match (net, ip) {
                    (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) if bits <= 32 => {
                        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                        u32::from(n) & mask == u32::from(a) & mask
                    }
                    (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) if bits <= 128 => {
                        let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                        u128::from(n) & mask == u128::from(a) & mask
                    }
                    _ => false,
                }
            } else {
                match (entry.parse::<std::net::IpAddr>(), ip) {
                    (Ok(e), Some(a)) => e == a,
                    _ => entry.eq_ignore_ascii_case(host),
                }
            }
        })
    }

    /// Step-time multiplier of engine `i`.
    pub fn multiplier(&self, i: usize) -> f64 {
        let m = &self.step_time_multiplier;
        m.get(i).or(m.last()).copied().unwrap_or(1.0)
    }
}
