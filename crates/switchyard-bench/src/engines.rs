//! What the engines say about a run: prefix-cache counters and finished requests, read
//! from their Prometheus `/metrics` (vLLM's names), and the cache reset between targets.

use serde::Serialize;

/// Cumulative counters of one engine at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EngineCounters {
    pub prefix_queries: f64,
    pub prefix_hits: f64,
    pub requests: f64,
}

impl EngineCounters {
    pub fn delta(&self, before: &EngineCounters) -> EngineCounters {
        EngineCounters {
            prefix_queries: self.prefix_queries - before.prefix_queries,
            prefix_hits: self.prefix_hits - before.prefix_hits,
            requests: self.requests - before.requests,
        }
    }
}

/// Sums every sample of `name` in a Prometheus text exposition.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

pub fn parse(text: &str) -> EngineCounters {
    EngineCounters {
        prefix_queries: sum_metric(text, "vllm:prefix_cache_queries_total"),
        prefix_hits: sum_metric(text, "vllm:prefix_cache_hits_total"),
        requests: sum_metric(text, "vllm:request_success_total"),
    }
}

/// Reads one engine's counters.
pub async fn scrape(client: &reqwest::Client, url: &str) -> anyhow::Result<EngineCounters> {
    let resp = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("engine {url} unreachable: {e}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("engine {url}/metrics answered {}", resp.status());
    }
    Ok(parse(&resp.text().await?))
}

/// Empties one engine's prefix cache (`POST /reset_prefix_cache`).
pub async fn reset(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    post(client, url, "/reset_prefix_cache").await
}

/// Restarts a simulated engine (`POST /sim/restart`): its cache emptied without events.
pub async fn restart(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    post(client, url, "/sim/restart").await
}

/// An engine control call that must succeed.
async fn post(client: &reqwest::Client, url: &str, path: &str) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{url}{path}"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("engine {url} unreachable: {e}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("engine {url}{path} answered {}", resp.status());
    }
    Ok(())
}

/// CPU seconds and peak RSS of a local process, from /proc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcUsage {
    pub cpu_secs: f64,
    pub peak_rss_mb: f64,
}

pub fn proc_usage(pid: u32) -> anyhow::Result<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("process {pid}: {e}"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_secs = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(ProcUsage {
        cpu_secs,
        peak_rss_mb: hwm_kb / 1024.0,
    })
}
