//! Checking a [`Config`]: each value, and the relations between options. Every error
//! names the option at fault. Nothing here builds the gateway's parts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::{Config, ConfigError, invalid};
use crate::upstream::EngineUrl;

/// Checks `--selector`-style `KEY=VALUE` pairs.
pub fn check_selector(option: &str, pairs: &[String]) -> Result<(), ConfigError> {
    for p in pairs {
        match p.split_once('=') {
            Some((k, v))
                if !k.is_empty()
                    && !k.contains(['=', ',', '!', ' '])
                    && !v.contains(['=', ',', ' ']) => {}
            _ => return Err(invalid(option, format!("{p:?}: expected KEY=VALUE"))),
        }
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// `--prefill` as (URL, bootstrap port) pairs, validated; `--decode` URLs validated.
    pub fn pd_workers(&self) -> Result<Vec<(EngineUrl, Option<u16>)>, ConfigError> {
        let mut out: Vec<(EngineUrl, Option<u16>)> = Vec::new();
        for v in &self.prefill {
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                let port = v.parse::<u16>().map_err(|_| {
                    invalid(
                        "prefill",
                        format!("bootstrap port {v:?} is not a port number"),
                    )
                })?;
                match out.last_mut() {
                    Some((_, p @ None)) => *p = Some(port),
                    _ => {
                        return Err(invalid(
                            "prefill",
                            format!("bootstrap port {v} must follow a URL"),
                        ));
                    }
                }
            } else {
                let url =
                    EngineUrl::parse(v).map_err(|e| invalid("prefill", format!("{v:?}: {e}")))?;
                out.push((url, None));
            }
        }
        Ok(out)
    }

    /// `--decode` URLs, validated.
    pub fn decode_workers(&self) -> Result<Vec<EngineUrl>, ConfigError> {
        urls("decode", &self.decode)
    }

    /// `--worker-urls`, validated.
    pub fn regular_workers(&self) -> Result<Vec<EngineUrl>, ConfigError> {
        urls("worker-urls", &self.worker_urls)
    }

    /// `--model-alias` as a map from alias to model.
    pub fn aliases(&self) -> Result<HashMap<String, Arc<str>>, ConfigError> {
        self.model_alias
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((a, m)) if !a.is_empty() && !m.is_empty() && a != m => {
                    Ok((a.to_string(), Arc::from(m)))
                }
                _ => Err(invalid(
                    "model-alias",
                    format!("{pair:?}: expected ALIAS=MODEL"),
                )),
            })
            .collect()
    }

    /// Checks values and their relations; the message names the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.regular_workers()?;
        self.validate_policy_settings()?;
        self.model_settings()?;
        self.validate_selection()?;
        self.validate_use_cases()?;
        self.validate_tools()?;
        self.validate_response_cache()?;
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("unix://"))
        {
            return Err(invalid(
                "redis-url",
                "use redis://host:port/db or unix:///path",
            ));
        }
        if let Some(url) = &self.otlp_traces_endpoint
            && let Err(e) = crate::telemetry::traces_url(url)
        {
            return Err(invalid("otlp-traces-endpoint", e));
        }
        if let Some(url) = &self.database_url
            && switchyard_stateful::store::Backend::of(url).is_err()
        {
            return Err(invalid(
                "database-url",
                "use sqlite://PATH, sqlite::memory: or postgres://user@host/db",
            ));
        }
        if self.max_background_responses == 0 {
            return Err(invalid("max-background-responses", "must be at least 1"));
        }
        if self.max_file_size == 0 {
            return Err(invalid("max-file-size", "must be at least 1 byte"));
        }
        if self.max_tool_calls == 0 {
            return Err(invalid("max-tool-calls", "must be at least 1"));
        }
        if self.ingest_workers == 0 {
            return Err(invalid("ingest-workers", "must be at least 1"));
        }
        if self.embedding_model.as_deref() == Some("") {
            return Err(invalid("embedding-model", "must name a model"));
        }
        if self.local_embedding_model.is_some() && self.embedding_model.is_some() {
            return Err(invalid(
                "local-embedding-model",
                "embed with --embedding-model or --local-embedding-model, not both",
            ));
        }
        if self.local_embedding_model.is_some() && !cfg!(feature = "local-embeddings") {
            return Err(invalid(
                "local-embedding-model",
                "this switchyard was built without the local-embeddings feature",
            ));
        }
        if self.store_retention_days == Some(0) {
            return Err(invalid("store-retention-days", "must be at least 1 day"));
        }
        if !(self.priority_aging_secs.is_finite() && self.priority_aging_secs > 0.0) {
            return Err(invalid("priority-aging-secs", "must be a positive number"));
        }
        if !(0.0..=1.0).contains(&self.batching_preference) {
            return Err(invalid(
                "batching-preference",
                format!("must be between 0 and 1, got {}", self.batching_preference),
            ));
        }
        if !(0.0..=1.0).contains(&self.retry_jitter_factor) {
            return Err(invalid(
                "retry-jitter-factor",
                format!("must be between 0 and 1, got {}", self.retry_jitter_factor),
            ));
        }
        if self.retry_backoff_multiplier.is_nan() || self.retry_backoff_multiplier < 1.0 {
            return Err(invalid("retry-backoff-multiplier", "must be at least 1.0"));
        }
        if !(self.rate_limit_tokens_per_second >= 0.0
            && self.rate_limit_tokens_per_second.is_finite())
        {
            return Err(invalid(
                "rate-limit-tokens-per-second",
                "must be a non-negative number",
            ));
        }
        let positive = [
            ("request-timeout-secs", self.request_timeout_secs as usize),
            ("max-payload-size", self.max_payload_size),
            ("redis-pool-size", self.redis_pool_size),
            ("workflow-ttl", self.workflow_ttl as usize),
            ("max-workflows", self.max_workflows),
            ("max-message-queue-size", self.max_message_queue_size),
            ("max-message-bytes", self.max_message_bytes),
            ("redis-timeout-ms", self.redis_timeout_ms as usize),
            ("session-timeout-secs", self.session_timeout_secs as usize),
            ("max-sessions", self.max_sessions),
            ("max-sessions-per-user", self.max_sessions_per_user),
            ("route-max-query-bytes", self.route_max_query_bytes),
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
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(name, "must be at least 1"));
        }
        if self.retry_initial_backoff_ms > self.retry_max_backoff_ms {
            return Err(invalid(
                "retry-initial-backoff-ms",
                "must not exceed --retry-max-backoff-ms",
            ));
        }
        if !self.health_check_endpoint.starts_with('/') {
            return Err(invalid("health-check-endpoint", "must start with /"));
        }
        if self
            .request_id_headers
            .iter()
            .any(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(invalid("request-id-headers", "must be valid header names"));
        }
        if let Some(h) = &self.hash_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(invalid(
                "hash-header",
                format!("{h:?} is not a valid header name"),
            ));
        }
        self.validate_pd()?;
        self.validate_discovery()?;
        self.validate_kv()?;
        self.aliases()?;
        self.validate_security()
    }

    fn validate_pd(&self) -> Result<(), ConfigError> {
        self.pd_workers()?;
        self.decode_workers()?;
        if !self.pd_disaggregation && (!self.prefill.is_empty() || !self.decode.is_empty()) {
            return Err(invalid(
                "prefill",
                "--prefill / --decode need --pd-disaggregation",
            ));
        }
        if self.pd_disaggregation
            && !self.service_discovery
            && (self.prefill.is_empty() || self.decode.is_empty())
        {
            return Err(invalid(
                "pd-disaggregation",
                "needs at least one --prefill and one --decode worker (or --service-discovery with --prefill-selector and --decode-selector)",
            ));
        }
        Ok(())
    }

    fn validate_discovery(&self) -> Result<(), ConfigError> {
        check_selector("selector", &self.selector)?;
        check_selector("prefill-selector", &self.prefill_selector)?;
        check_selector("decode-selector", &self.decode_selector)?;
        if !self.service_discovery {
            if !self.selector.is_empty()
                || !self.prefill_selector.is_empty()
                || !self.decode_selector.is_empty()
            {
                return Err(invalid(
                    "selector",
                    "--selector / --prefill-selector / --decode-selector need --service-discovery",
                ));
            }
            return Ok(());
        }
        if self.pd_disaggregation {
            if self.prefill_selector.is_empty() || self.decode_selector.is_empty() {
                return Err(invalid(
                    "service-discovery",
                    "with --pd-disaggregation it needs --prefill-selector and --decode-selector",
                ));
            }
            if !self.selector.is_empty() {
                return Err(invalid(
                    "selector",
                    "applies without --pd-disaggregation; use --prefill-selector and --decode-selector",
                ));
            }
        } else {
            if self.selector.is_empty() {
                return Err(invalid("service-discovery", "needs --selector KEY=VALUE"));
            }
            if !self.prefill_selector.is_empty() || !self.decode_selector.is_empty() {
                return Err(invalid(
                    "prefill-selector",
                    "--prefill-selector / --decode-selector need --pd-disaggregation",
                ));
            }
        }
        if self.service_discovery_port == 0 {
            return Err(invalid("service-discovery-port", "must be a port number"));
        }
        if self.service_discovery_relist_secs == 0 {
            return Err(invalid(
                "service-discovery-relist-secs",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.kube_api_url {
            url.parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme().is_some() && u.authority().is_some())
                .ok_or_else(|| invalid("kube-api-url", format!("{url:?} is not a URL")))?;
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        for entry in &self.worker_allowlist {
            if let Some((net, len)) = entry.split_once('/') {
                let ok = match net.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => len.parse::<u32>().is_ok_and(|l| l <= 32),
                    Ok(IpAddr::V6(_)) => len.parse::<u32>().is_ok_and(|l| l <= 128),
                    Err(_) => false,
                };
                if !ok {
                    return Err(invalid(
                        "worker-allowlist",
                        format!("{entry:?} is not a valid CIDR"),
                    ));
                }
            } else if entry.is_empty() {
                return Err(invalid("worker-allowlist", "entries must not be empty"));
            }
        }
        if self.worker_allowed_ports.contains(&0) {
            return Err(invalid("worker-allowed-ports", "0 is not a port"));
        }
        if self.admin_api_key.as_deref() == Some("") {
            return Err(invalid("admin-api-key", "must not be empty"));
        }
        if self.api_key.as_deref() == Some("") {
            return Err(invalid("api-key", "must not be empty"));
        }
        let mut tenant_ids = std::collections::HashSet::new();
        for t in &self.tenants {
            if !crate::tenancy::directory::valid_tenant_id(&t.id) {
                return Err(invalid(
                    "tenants",
                    format!(
                        "{:?}: an id is 1 to 64 of A-Z, a-z, 0-9, `_`, `.`, `-`",
                        t.id
                    ),
                ));
            }
            if !tenant_ids.insert(t.id.as_str()) {
                return Err(invalid("tenants", format!("{:?} is defined twice", t.id)));
            }
            t.limits
                .check()
                .map_err(|e| invalid("tenants", format!("{}: {e}", t.id)))?;
        }
        for k in &self.api_keys {
            if k.key.len() < 16 {
                return Err(invalid("api_keys", "a key must be at least 16 characters"));
            }
            if !crate::tenancy::directory::valid_tenant_id(&k.tenant) {
                return Err(invalid(
                    "api_keys",
                    format!("{:?} is not a tenant id", k.tenant),
                ));
            }
        }
        self.global_limits
            .check()
            .map_err(|e| invalid("global_limits", e))?;
        if self.rate_limit_replicas == 0 {
            return Err(invalid("rate-limit-replicas", "must be at least 1"));
        }
        if self.usage_flush_secs == 0 {
            return Err(invalid("usage-flush-secs", "must be at least 1"));
        }
        if !is_loopback(&self.admin_host) && self.admin_api_key.is_none() {
            return Err(invalid(
                "admin-host",
                format!(
                    "{:?} is not a loopback address: the worker API can register and remove workers, so it needs --admin-api-key there",
                    self.admin_host
                ),
            ));
        }
        Ok(())
    }
}

fn urls(option: &str, list: &[String]) -> Result<Vec<EngineUrl>, ConfigError> {
    list.iter()
        .map(|u| EngineUrl::parse(u).map_err(|e| invalid(option, format!("{u:?}: {e}"))))
        .collect()
}

impl Config {
    /// Checks the `--response-cache*` options (docs/caching.md).
    fn validate_response_cache(&self) -> Result<(), ConfigError> {
        let on = self.response_cache.is_some();
        if let Some(t) = self.response_cache_semantic_threshold {
            if !on {
                return Err(invalid(
                    "response-cache-semantic-threshold",
                    "needs --response-cache memory or redis",
                ));
            }
            if !(t.is_finite() && t > 0.0 && t <= 1.0) {
                return Err(invalid(
                    "response-cache-semantic-threshold",
                    format!("must be above 0 and at most 1, got {t}"),
                ));
            }
            if self.embedding_model.is_none() && self.local_embedding_model.is_none() {
                return Err(invalid(
                    "response-cache-semantic-threshold",
                    "semantic matching embeds prompts with --embedding-model or --local-embedding-model; set one",
                ));
            }
        }
        if self.response_cache == Some(super::CacheBackend::Redis) && self.redis_url.is_none() {
            return Err(invalid(
                "response-cache",
                "the redis backend needs --redis-url",
            ));
        }
        for (option, value) in [
            (
                "response-cache-ttl-secs",
                self.response_cache_ttl_secs as usize,
            ),
            (
                "response-cache-max-entries",
                self.response_cache_max_entries,
            ),
            ("response-cache-max-bytes", self.response_cache_max_bytes),
            (
                "response-cache-max-entry-bytes",
                self.response_cache_max_entry_bytes,
            ),
            (
                "response-cache-timeout-ms",
                self.response_cache_timeout_ms as usize,
            ),
            (
                "response-cache-semantic-bucket-size",
                self.response_cache_semantic_bucket_size,
            ),
            (
                "response-cache-embed-timeout-ms",
                self.response_cache_embed_timeout_ms as usize,
            ),
        ] {
            if value == 0 {
                return Err(invalid(option, "must be at least 1"));
            }
        }
        if self.response_cache_ttl_secs > 365 * 86_400 {
            return Err(invalid("response-cache-ttl-secs", "must be at most a year"));
        }
        if self.response_cache_timeout_ms > 60_000 {
            return Err(invalid(
                "response-cache-timeout-ms",
                "must be at most 60000 (a cache that slow is down)",
            ));
        }
        if self.response_cache == Some(super::CacheBackend::Memory)
            && self.response_cache_max_entry_bytes > self.response_cache_max_bytes
        {
            return Err(invalid(
                "response-cache-max-entry-bytes",
                format!(
                    "must not exceed --response-cache-max-bytes ({})",
                    self.response_cache_max_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_off_loopback_needs_a_key() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"] {
            let c = Config {
                admin_host: host.into(),
                ..Config::default()
            };
            assert!(c.validate().is_ok(), "{host}");
        }
        let open = Config {
            admin_host: "0.0.0.0".into(),
            ..Config::default()
        };
        let e = open.validate().unwrap_err().to_string();
        assert!(
            e.contains("--admin-host") && e.contains("--admin-api-key"),
            "{e}"
        );
        let keyed = Config {
            admin_api_key: Some("k".into()),
            ..open
        };
        assert!(keyed.validate().is_ok());
    }

    #[test]
    fn selectors_are_key_value_pairs() {
        assert!(check_selector("selector", &["app=vllm".into()]).is_ok());
        for bad in ["app", "=x", "a=b=c", "a!=b"] {
            let e = check_selector("selector", &[bad.into()]).unwrap_err();
            assert!(e.to_string().starts_with("--selector"), "{e}");
        }
    }
}
