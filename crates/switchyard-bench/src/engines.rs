//! What the engines say about a run: prefix-cache counters and finished requests, read
//! from their Prometheus `/metrics` (vLLM's names), and the cache reset between targets.

use serde::Serialize;

/// Cumulative counters of one engine at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EngineCounters {
    pub prefix_queries: f64,
    pub prefix_hits: f64,
    pub requests: f64,
    /// The engine's KV capacity in blocks (`num_gpu_blocks` of `vllm:cache_config_info`,
    /// summed over its samples: vLLM gives one per data-parallel engine core), 0 when it
    /// does not say. Not a counter: a delta keeps the later value.
    pub kv_blocks: f64,
}

impl EngineCounters {
    pub fn delta(&self, before: &EngineCounters) -> EngineCounters {
        EngineCounters {
            prefix_queries: self.prefix_queries - before.prefix_queries,
            prefix_hits: self.prefix_hits - before.prefix_hits,
            requests: self.requests - before.requests,
            kv_blocks: self.kv_blocks,
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
        kv_blocks: label_values(text, "vllm:cache_config_info", "num_gpu_blocks")
            .filter_map(|v| v.parse::<f64>().ok())
            .sum(),
    }
}

/// The values of label `label` on the samples of `name` that carry it.
fn label_values<'t>(text: &'t str, name: &'t str, label: &str) -> impl Iterator<Item = &'t str> {
    // Matched after a comma (or a comma and spaces), so `num_gpu_blocks` never matches
    // `extra_num_gpu_blocks`.
    let key = format!("{label}=\"");
    text.lines()
        .filter(move |l| l.split('{').next() == Some(name))
        .filter_map(move |l| {
            let labels = l.split_once('{')?.1.rsplit_once('}')?.0;
            labels.split(',').find_map(|pair| {
                let value = pair.trim_start().strip_prefix(key.as_str())?;
                value.split('"').next()
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_capacity_is_read_from_cache_config_info() {
        let text = "# TYPE vllm:cache_config_info gauge\n\
            vllm:cache_config_info{block_size=\"16\",extra_num_gpu_blocks=\"7\",num_gpu_blocks=\"2600\"} 1\n\
            vllm:request_success_total{finished_reason=\"stop\"} 5\n";
        let c = parse(text);
        assert_eq!((c.kv_blocks, c.requests), (2600.0, 5.0));
        assert_eq!(parse("vllm:request_success_total 1\n").kv_blocks, 0.0);
        // The label first, after a space, or next to an override that says None; and
        // one sample per data-parallel engine core, summed.
        let dp = "vllm:cache_config_info{num_gpu_blocks=\"100\",num_gpu_blocks_override=\"None\",engine=\"0\"} 1\n\
            vllm:cache_config_info{engine=\"1\", num_gpu_blocks=\"100\"} 1\n\
            vllm:cache_config_info_other{num_gpu_blocks=\"7\"} 1\n";
        assert_eq!(parse(dp).kv_blocks, 200.0);
        // A later scrape's delta keeps the capacity.
        assert_eq!(c.delta(&c).kv_blocks, 2600.0);
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
