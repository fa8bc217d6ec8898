//! Prometheus metrics under vLLM's names and labels (`model_name`, `engine`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels vLLM puts on every engine metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub model_name: String,
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    model_name: String,
    engine: String,
    finished_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheConfigLabels {
    block_size: String,
    num_gpu_blocks: String,
    enable_prefix_caching: String,
    engine: String,
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

fn ttft_histogram() -> Histogram {
    Histogram::new(TTFT_BUCKETS.iter().copied())
}
fn itl_histogram() -> Histogram {
    Histogram::new(ITL_BUCKETS.iter().copied())
}
fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS.iter().copied())
}

type HistFamily = Family<EngineLabels, Histogram, fn() -> Histogram>;

/// Every metric family of one server (one port, possibly several data-parallel engines).
pub struct ServerMetrics {
    registry: Registry,
    running: Family<EngineLabels, Gauge>,
    waiting: Family<EngineLabels, Gauge>,
    kv_usage: Family<EngineLabels, Gauge<f64, AtomicU64>>,
    queries: Family<EngineLabels, Counter>,
    hits: Family<EngineLabels, Counter>,
    prompt_tokens: Family<EngineLabels, Counter>,
    generation_tokens: Family<EngineLabels, Counter>,
    preemptions: Family<EngineLabels, Counter>,
    success: Family<FinishLabels, Counter>,
    ttft: HistFamily,
    itl: HistFamily,
    e2e: HistFamily,
    queue: HistFamily,
}

impl ServerMetrics {
    /// Registers every family; `block_size` and `num_gpu_blocks` go into
    /// `vllm:cache_config_info`, one sample per data-parallel rank (`engine` label), as
    /// vLLM reports each engine core's cache.
    pub fn new(
        block_size: usize,
        num_gpu_blocks: usize,
        prefix_caching: bool,
        data_parallel_size: usize,
    ) -> Self {
        let mut registry = Registry::default();
        let running = Family::<EngineLabels, Gauge>::default();
        let waiting = Family::<EngineLabels, Gauge>::default();
        let kv_usage = Family::<EngineLabels, Gauge<f64, AtomicU64>>::default();
        let queries = Family::<EngineLabels, Counter>::default();
        let hits = Family::<EngineLabels, Counter>::default();
        let prompt_tokens = Family::<EngineLabels, Counter>::default();
        let generation_tokens = Family::<EngineLabels, Counter>::default();
        let preemptions = Family::<EngineLabels, Counter>::default();
        let success = Family::<FinishLabels, Counter>::default();
        let ttft: HistFamily = Family::new_with_constructor(ttft_histogram);
        let itl: HistFamily = Family::new_with_constructor(itl_histogram);
        let e2e: HistFamily = Family::new_with_constructor(request_histogram);
        let queue: HistFamily = Family::new_with_constructor(request_histogram);
        let cache_info = Family::<CacheConfigLabels, Gauge>::default();
        for rank in 0..data_parallel_size.max(1) {
            cache_info
                .get_or_create(&CacheConfigLabels {
                    block_size: block_size.to_string(),
                    num_gpu_blocks: num_gpu_blocks.to_string(),
                    enable_prefix_caching: if prefix_caching { "True" } else { "False" }.into(),
                    engine: rank.to_string(),
                })
                .set(1);
        }

        registry.register(
            "vllm:num_requests_running",
            "Number of requests in model execution batches",
            running.clone(),
        );
        registry.register(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed",
            waiting.clone(),
        );
        registry.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage",
            kv_usage.clone(),
        );
        registry.register(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens",
            queries.clone(),
        );
        registry.register(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens",
            hits.clone(),
        );
        registry.register(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed",
            prompt_tokens.clone(),
        );
        registry.register(
            "vllm:generation_tokens",
            "Number of generation tokens processed",
            generation_tokens.clone(),
        );
        registry.register(
            "vllm:num_preemptions",
            "Cumulative number of preemptions from the engine",
            preemptions.clone(),
        );
        registry.register(
            "vllm:request_success",
            "Count of successfully processed requests",
            success.clone(),
        );
        registry.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            ttft.clone(),
        );
        registry.register(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds",
            itl.clone(),
        );
        registry.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds",
            e2e.clone(),
        );
        registry.register(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request",
            queue.clone(),
        );
        registry.register(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            cache_info,
        );

        ServerMetrics {
            registry,
            running,
            waiting,
            kv_usage,
            queries,
            hits,
            prompt_tokens,
            generation_tokens,
            preemptions,
            success,
            ttft,
            itl,
            e2e,
            queue,
        }
    }

    /// Handles for one engine, so the hot path never looks labels up.
    pub fn engine(&self, model_name: &str, engine: usize) -> EngineMetrics {
        let l = EngineLabels {
            model_name: model_name.to_string(),
            engine: engine.to_string(),
        };
        let finish = |reason: &str| {
            self.success.get_or_create_owned(&FinishLabels {
                model_name: l.model_name.clone(),
                engine: l.engine.clone(),
                finished_reason: reason.to_string(),
            })
        };
        EngineMetrics {
            running: self.running.get_or_create_owned(&l),
            waiting: self.waiting.get_or_create_owned(&l),
            kv_usage: self.kv_usage.get_or_create_owned(&l),
            queries: self.queries.get_or_create_owned(&l),
            hits: self.hits.get_or_create_owned(&l),
            prompt_tokens: self.prompt_tokens.get_or_create_owned(&l),
            generation_tokens: self.generation_tokens.get_or_create_owned(&l),
            preemptions: self.preemptions.get_or_create_owned(&l),
            finished_stop: finish("stop"),
            finished_length: finish("length"),
            finished_abort: finish("abort"),
            ttft: self.ttft.get_or_create_owned(&l),
            itl: self.itl.get_or_create_owned(&l),
            e2e: self.e2e.get_or_create_owned(&l),
            queue: self.queue.get_or_create_owned(&l),
        }
    }

    /// Every metric in Prometheus' text format (0.0.4), as vLLM's Python client writes
    /// it: a counter's `# HELP` and `# TYPE` name its `_total` sample, and there is no
    /// OpenMetrics `# EOF` or `# UNIT`.
    pub fn encode(&self) -> String {
        let mut om = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut om, &self.registry)
            .expect("writing to a String cannot fail");
        let counters: std::collections::HashSet<&str> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(om.len());
        for line in om.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{p}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// One engine's metric handles (cheap clones of the registered ones).
#[derive(Clone, Debug)]
pub struct EngineMetrics {
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_usage: Gauge<f64, AtomicU64>,
    pub queries: Counter,
    pub hits: Counter,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub preemptions: Counter,
    pub finished_stop: Counter,
    pub finished_length: Counter,
    pub finished_abort: Counter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
}

impl Default for EngineMetrics {
    /// Handles registered nowhere, for schedulers run outside a server (unit tests).
    fn default() -> Self {
        EngineMetrics {
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            queries: Counter::default(),
            hits: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            preemptions: Counter::default(),
            finished_stop: Counter::default(),
            finished_length: Counter::default(),
            finished_abort: Counter::default(),
            ttft: ttft_histogram(),
            itl: itl_histogram(),
            e2e: request_histogram(),
            queue: request_histogram(),
        }
    }
}
