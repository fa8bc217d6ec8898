//! One config schema from flags and YAML: flags override the file, validation names
//! the option.

use std::io::Write;

use switchyard::{Config, PolicyKind};

#[test]
fn flags_override_the_yaml_file() {
    let mut f = tempfile();
    writeln!(f.1, "policy: round_robin\nport: 31111\nworker_urls: [\"http://127.0.0.1:9\"]\nretry_max_retries: 7\ncache_threshold: 0.8").unwrap();
    let (demo, cfg) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--config",
        f.0.to_str().unwrap(),
        "--port",
        "32222",
        "--policy",
        "cache_aware",
    ])
    .unwrap();
    assert!(!demo);
    assert_eq!(cfg.port, 32222, "flag wins");
    assert_eq!(cfg.policy, PolicyKind::CacheAware, "flag wins");
    assert_eq!(cfg.retry_max_retries, 7, "file value kept");
    assert_eq!(cfg.cache_threshold, 0.8);
    assert_eq!(cfg.worker_urls, ["http://127.0.0.1:9"]);
    assert_eq!(cfg.prometheus_port, 29000, "default kept");
}

#[test]
fn yaml_errors_name_the_option() {
    let mut f = tempfile();
    writeln!(f.1, "retry_max_retries: lots").unwrap();
    let err = Config::from_arg_list(["switchyard", "serve", "--config", f.0.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("retry_max_retries"), "{err}");
    let mut g = tempfile();
    writeln!(g.1, "no_such_option: 1").unwrap();
    let err = Config::from_arg_list(["switchyard", "serve", "--config", g.0.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_option"), "{err}");
}

#[test]
fn validation_names_the_option() {
    let bad = |c: Config, flag: &str| {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(flag), "{e}");
    };
    // `tools:` (YAML only): each bad setting is named by its path.
    for (yaml, path) in [
        ("tools: {timeout_secs: 0}", "tools.timeout_secs"),
        ("tools: {timeout_secs: 1.0e20}", "tools.timeout_secs"),
        (
            "tools: {web_search: {provider: {type: json, url: 'http://s/search'}}}",
            "tools.web_search.provider",
        ),
        (
            "tools: {web_search: {provider: {type: json, url: 'ftp://s/?q={query}'}}}",
            "tools.web_search.provider.url",
        ),
        (
            "tools: {web_search: {provider: {type: json, url: 'http://s/', body: {q: '{query}'}}}}",
            "tools.web_search.provider.body",
        ),
        (
            "tools: {web_search: {provider: {type: brave}, max_results: 0}}",
            "tools.web_search.max_results",
        ),
        (
            "tools: {web_search: {provider: {type: brave}, allowed_hosts: ['http://x']}}",
            "tools.web_search.allowed_hosts",
        ),
        (
            "tools: {web_search: {provider: {type: brave}, max_response_bytes: 10}}",
            "tools.web_search.max_response_bytes",
        ),
        (
            "tools: {mcp: {allowed_hosts: []}}",
            "tools.mcp.allowed_hosts",
        ),
        (
            "tools: {mcp: {allowed_hosts: ['https://mcp.example']}}",
            "tools.mcp.allowed_hosts",
        ),
        (
            "tools: {mcp: {allowed_hosts: ['mcp.example'], timeout_secs: -1}}",
            "tools.mcp.timeout_secs",
        ),
        (
            "tools: {mcp: {allowed_hosts: ['*.mcp.example'], max_response_bytes: 5}}",
            "tools.mcp.max_response_bytes",
        ),
    ] {
        let c: Config = yaml_serde::from_str(yaml).unwrap();
        bad(c, path);
    }
    let ok: Config =
        yaml_serde::from_str("tools: {mcp: {allowed_hosts: ['*.mcp.example', '10.0.0.7']}}")
            .unwrap();
    ok.validate().unwrap();
    // An MCP setting the gateway does not know is refused when the file is read.
    assert!(
        yaml_serde::from_str::<Config>("tools: {mcp: {allowed_hosts: [a], servers: []}}").is_err()
    );
    // A provider type the gateway does not know is refused when the file is read.
    assert!(
        yaml_serde::from_str::<Config>("tools: {web_search: {provider: {type: bing}}}").is_err()
    );
    bad(
        Config {
            worker_urls: vec!["ftp://x:1".into()],
            ..Config::default()
        },
        "--worker-urls",
    );
    bad(
        Config {
            cache_threshold: 1.5,
            ..Config::default()
        },
        "--cache-threshold",
    );
    bad(
        Config {
            balance_rel_threshold: 0.5,
            ..Config::default()
        },
        "--balance-rel-threshold",
    );
    bad(
        Config {
            retry_initial_backoff_ms: 10_000,
            retry_max_backoff_ms: 10,
            ..Config::default()
        },
        "--retry-initial-backoff-ms",
    );
    bad(
        Config {
            health_check_endpoint: "health".into(),
            ..Config::default()
        },
        "--health-check-endpoint",
    );
    bad(
        Config {
            cb_failure_threshold: 0,
            ..Config::default()
        },
        "--cb-failure-threshold",
    );
    bad(
        Config {
            request_id_headers: vec!["bad header".into()],
            ..Config::default()
        },
        "--request-id-headers",
    );
    bad(
        Config {
            admin_host: "0.0.0.0".into(),
            ..Config::default()
        },
        "--admin-host",
    );
    bad(
        Config {
            worker_allowed_ports: vec![8000, 0],
            ..Config::default()
        },
        "--worker-allowed-ports",
    );
    bad(
        Config {
            worker_allowlist: vec!["10.0.0.0/33".into()],
            ..Config::default()
        },
        "--worker-allowlist",
    );
    let discovery = |f: fn(&mut Config)| {
        let mut c = Config {
            service_discovery: true,
            selector: vec!["app=vllm".into()],
            ..Config::default()
        };
        f(&mut c);
        c
    };
    assert!(discovery(|_| {}).validate().is_ok());
    bad(discovery(|c| c.selector.clear()), "--selector");
    bad(discovery(|c| c.selector = vec!["app".into()]), "--selector");
    bad(
        discovery(|c| c.prefill_selector = vec!["role=prefill".into()]),
        "--prefill-selector",
    );
    bad(
        discovery(|c| {
            c.pd_disaggregation = true;
            c.selector.clear();
            c.prefill_selector = vec!["role=prefill".into()];
        }),
        "--decode-selector",
    );
    bad(
        discovery(|c| c.service_discovery_relist_secs = 0),
        "--service-discovery-relist-secs",
    );
    bad(
        discovery(|c| c.kube_api_url = Some("nowhere".into())),
        "--kube-api-url",
    );
    bad(
        Config {
            selector: vec!["app=vllm".into()],
            ..Config::default()
        },
        "--service-discovery",
    );
    assert!(Config::default().validate().is_ok());
}

#[test]
fn response_cache_settings_are_validated_by_name() {
    use switchyard::config::CacheBackend;
    let bad = |c: Config, flag: &str| {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with(&format!("--{flag}:")), "{e}");
    };
    let on = |f: fn(&mut Config)| {
        let mut c = Config {
            response_cache: Some(CacheBackend::Memory),
            ..Config::default()
        };
        f(&mut c);
        c
    };
    assert!(on(|_| {}).validate().is_ok());
    bad(
        on(|c| c.response_cache = Some(CacheBackend::Redis)),
        "response-cache",
    );
    assert!(
        on(|c| {
            c.response_cache = Some(CacheBackend::Redis);
            c.redis_url = Some("redis://127.0.0.1:6379/0".into());
        })
        .validate()
        .is_ok()
    );
    bad(
        on(|c| c.response_cache_ttl_secs = 0),
        "response-cache-ttl-secs",
    );
    bad(
        on(|c| c.response_cache_ttl_secs = 400 * 86_400),
        "response-cache-ttl-secs",
    );
    bad(
        on(|c| c.response_cache_max_entries = 0),
        "response-cache-max-entries",
    );
    bad(
        on(|c| c.response_cache_max_bytes = 0),
        "response-cache-max-bytes",
    );
    bad(
        on(|c| c.response_cache_max_entry_bytes = 0),
        "response-cache-max-entry-bytes",
    );
    bad(
        on(|c| {
            c.response_cache_max_bytes = 1000;
            c.response_cache_max_entry_bytes = 1001;
        }),
        "response-cache-max-entry-bytes",
    );
    bad(
        on(|c| c.response_cache_timeout_ms = 0),
        "response-cache-timeout-ms",
    );
    bad(
        on(|c| c.response_cache_timeout_ms = 60_001),
        "response-cache-timeout-ms",
    );
    bad(
        on(|c| c.response_cache_embed_timeout_ms = 0),
        "response-cache-embed-timeout-ms",
    );
    bad(
        on(|c| c.response_cache_semantic_bucket_size = 0),
        "response-cache-semantic-bucket-size",
    );
    // Semantic matching: a threshold in (0, 1], an embedder, and the cache on.
    let semantic = |t: f64| {
        let mut c = on(|c| c.embedding_model = Some("embedder".into()));
        c.response_cache_semantic_threshold = Some(t);
        c
    };
    assert!(semantic(0.9).validate().is_ok());
    assert!(semantic(1.0).validate().is_ok());
    for t in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
        bad(semantic(t), "response-cache-semantic-threshold");
    }
    let mut no_embedder = semantic(0.9);
    no_embedder.embedding_model = None;
    bad(no_embedder, "response-cache-semantic-threshold");
    let mut off = semantic(0.9);
    off.response_cache = None;
    bad(off, "response-cache-semantic-threshold");
    // Settings of a cache that is off are still checked.
    bad(
        Config {
            response_cache_ttl_secs: 0,
            ..Config::default()
        },
        "response-cache-ttl-secs",
    );
}

#[test]
fn response_cache_options_come_from_flags_and_yaml() {
    use switchyard::config::CacheBackend;
    let (_, cfg) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--response-cache",
        "memory",
        "--response-cache-ttl-secs",
        "30",
        "--response-cache-max-bytes",
        "1048576",
    ])
    .unwrap();
    assert_eq!(cfg.response_cache, Some(CacheBackend::Memory));
    assert_eq!(cfg.response_cache_ttl_secs, 30);
    assert_eq!(cfg.response_cache_max_bytes, 1 << 20);
    assert!(cfg.validate().is_ok());
    let mut f = tempfile();
    writeln!(
        f.1,
        "response_cache: redis\nredis_url: redis://127.0.0.1:6379/3\nresponse_cache_semantic_threshold: 0.93\nembedding_model: e"
    )
    .unwrap();
    let (_, cfg) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--config",
        f.0.to_str().unwrap(),
        "--response-cache",
        "memory",
    ])
    .unwrap();
    assert_eq!(cfg.response_cache, Some(CacheBackend::Memory), "flag wins");
    assert_eq!(cfg.response_cache_semantic_threshold, Some(0.93));
    assert!(cfg.validate().is_ok());
    // An unknown backend is refused when the file is read, naming the option.
    let mut g = tempfile();
    writeln!(g.1, "response_cache: disk").unwrap();
    let err = Config::from_arg_list(["switchyard", "serve", "--config", g.0.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("response_cache"), "{err}");
}

#[test]
fn vllm_router_style_flags_parse() {
    let (_, cfg) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--worker-urls",
        "http://a:1",
        "http://b:2",
        "--policy",
        "consistent_hash",
        "--cache-threshold",
        "0.5",
        "--balance-abs-threshold",
        "8",
        "--balance-rel-threshold",
        "2",
        "--eviction-interval",
        "30",
        "--max-tree-size",
        "1000000",
        "--retry-max-retries",
        "2",
        "--retry-initial-backoff-ms",
        "10",
        "--retry-max-backoff-ms",
        "100",
        "--retry-backoff-multiplier",
        "3",
        "--retry-jitter-factor",
        "0.5",
        "--cb-failure-threshold",
        "4",
        "--cb-success-threshold",
        "1",
        "--cb-timeout-duration-secs",
        "9",
        "--cb-window-duration-secs",
        "20",
        "--health-check-interval-secs",
        "5",
        "--health-check-timeout-secs",
        "2",
        "--health-failure-threshold",
        "2",
        "--health-success-threshold",
        "1",
        "--health-check-endpoint",
        "/ping",
        "--max-concurrent-requests",
        "10",
        "--queue-size",
        "5",
        "--queue-timeout-secs",
        "3",
        "--rate-limit-tokens-per-second",
        "100",
        "--prometheus-host",
        "0.0.0.0",
        "--prometheus-port",
        "9100",
        "--request-id-headers",
        "x-my-id",
        "--log-level",
        "debug",
        "--log-json",
        "--api-key",
        "k",
        "--worker-api-key",
        "w",
        "--cors-allowed-origins",
        "*",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--request-timeout-secs",
        "60",
        "--max-payload-size",
        "1024",
        "--disable-retries",
        "--disable-circuit-breaker",
    ])
    .unwrap();
    assert_eq!(cfg.worker_urls.len(), 2);
    assert_eq!(cfg.policy, PolicyKind::ConsistentHash);
    assert_eq!(cfg.request_id_headers, ["x-my-id"]);
    assert!(cfg.disable_retries && cfg.disable_circuit_breaker && cfg.log_json);
    assert_eq!(cfg.health_check_endpoint, "/ping");
    assert!(cfg.validate().is_ok());
}

/// A YAML file in the temp directory, removed when dropped.
struct TempFile(std::path::PathBuf, std::fs::File);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile() -> TempFile {
    let path = std::env::temp_dir().join(format!("switchyard-test-{:x}.yaml", fastrand_u64()));
    let f = std::fs::File::create(&path).unwrap();
    TempFile(path, f)
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The config in the ConfigMap of deploy/kubernetes/switchyard.yaml (rendered from the
/// Helm chart) is one this gateway accepts.
#[test]
fn the_kubernetes_example_config_is_valid() {
    use serde::Deserialize;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/switchyard.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<yaml_serde::Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| yaml_serde::Value::deserialize(d).unwrap())
        .collect();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let embedded = cm["data"]["switchyard.yaml"].as_str().unwrap();
    let mut f = tempfile();
    write!(f.1, "{embedded}").unwrap();
    let (_, cfg) =
        Config::from_arg_list(["switchyard", "serve", "--config", f.0.to_str().unwrap()]).unwrap();
    cfg.validate().unwrap();
    assert!(cfg.service_discovery);
    assert_eq!(cfg.selector, vec!["app=vllm".to_string()]);
    assert_eq!(cfg.service_discovery_namespace.as_deref(), Some("llm"));
}
