//! Comparing targets on one workload: cache resets between targets, rotation across
//! repetitions, and the JSON / Markdown results with ratios against the first target.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::engines::{self, EngineCounters, ProcUsage};
use crate::oracle;
use crate::runner::{self, Arrivals, RunConfig};
use crate::stats::{Summary, summarize};
use crate::workload::Session;

/// A router, engine or anything OpenAI-compatible to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub url: String,
    /// Local process to account CPU time and peak RSS to.
    pub pid: Option<u32>,
}

/// Settings shared by every target of a comparison.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    pub targets: Vec<Target>,
    pub engines: Vec<String>,
    pub model: String,
    pub arrivals: Arrivals,
    pub max_requests: usize,
    pub duration: Duration,
    pub request_timeout: Duration,
    pub repetitions: usize,
    pub progress: bool,
    /// Engines restarted during every run (`POST /sim/restart`), each this long after
    /// the run's start: a cache lost without events, as a crashed engine loses it.
    pub restarts: Vec<(String, Duration)>,
}

/// One target's results in one repetition.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub url: String,
    pub repetition: usize,
    pub ok: u64,
    pub by_status: BTreeMap<String, u64>,
    /// Requests cut by the run's time bound.
    pub cut: usize,
    pub wall_secs: f64,
    pub req_per_sec: f64,
    pub output_tok_per_sec: f64,
    pub ttft: Summary,
    pub itl: Summary,
    pub e2e: Summary,
    /// A whole session's time (a conversation's or a workflow's), first request to last
    /// answer, over the sessions that ran to the end.
    pub session_e2e: Summary,
    /// Engines' prefix-cache hit rate over the run (hits / queried tokens).
    pub engine_hit_rate: Option<f64>,
    /// Best possible hit rate for the prompts sent (unbounded cache).
    pub oracle_hit_rate: f64,
    /// The same with the fleet's combined KV capacity and LRU eviction, when the
    /// engines say their capacity (`oracle::bounded_hit_rate`).
    pub bounded_oracle_hit_rate: Option<f64>,
    /// Each engine's share of the requests it finished during the run.
    pub engine_share: Vec<f64>,
    pub process: Option<ProcUsage>,
    /// The raw numbers the plots draw (not in the JSON: the summaries are).
    #[serde(skip)]
    pub series: Series,
}

/// Per-request numbers of a target's successful requests, for the plots.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Time to first token of every answered request, seconds; over every repetition.
    pub ttfts: Vec<f64>,
    /// When each answered request completed, seconds from its run's start; of the
    /// first repetition only (repetitions' timelines do not add up).
    pub done_at: Vec<f64>,
    /// That run's wall time, seconds.
    pub wall_secs: f64,
}

async fn scrape_all(
    client: &reqwest::Client,
    engines: &[String],
) -> anyhow::Result<Vec<EngineCounters>> {
    let mut out = Vec::new();
    for e in engines {
        out.push(engines::scrape(client, e).await?);
    }
    Ok(out)
}

/// Checks that a target answers at all before a run starts.
pub async fn check_reachable(client: &reqwest::Client, t: &Target) -> anyhow::Result<()> {
    for url in t.url.split(',') {
        client
            .get(format!("{url}/v1/models"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("target {} ({url}) is unreachable: {e}", t.name))?;
    }
    Ok(())
}

/// Runs every target on `sessions`, `repetitions` times, rotating the order.
pub async fn compare(
    cfg: &CompareConfig,
    sessions: Arc<Vec<Session>>,
) -> anyhow::Result<Vec<TargetResult>> {
    let client = reqwest::Client::new();
    for t in &cfg.targets {
        check_reachable(&client, t).await?;
    }
    let mut results = Vec::new();
    for rep in 0..cfg.repetitions.max(1) {
        let n = cfg.targets.len();
        for k in 0..n {
            let t = &cfg.targets[(k + rep) % n];
            for e in &cfg.engines {
                engines::reset(&client, e).await?;
            }
            let before = scrape_all(&client, &cfg.engines).await?;
            let proc_before = t.pid.map(engines::proc_usage).transpose()?;
            let run_cfg = RunConfig {
                name: t.name.clone(),
                url: t.url.clone(),
                model: cfg.model.clone(),
                arrivals: cfg.arrivals,
                max_requests: cfg.max_requests,
                duration: cfg.duration,
                request_timeout: cfg.request_timeout,
                progress: cfg.progress,
            };
            let restarts: Vec<_> = cfg
                .restarts
                .iter()
                .map(|(url, after)| {
                    let (client, url, after) = (client.clone(), url.clone(), *after);
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        engines::restart(&client, &url).await
                    })
                })
                .collect();
            let out = runner::run(run_cfg, sessions.clone()).await;
            for r in restarts {
                if r.is_finished() {
                    r.await??;
                } else {
                    r.abort();
                    anyhow::bail!("a restart was due after the run of {} had ended", t.name);
                }
            }
            let after = scrape_all(&client, &cfg.engines).await?;
            let process = match (t.pid, proc_before) {
                (Some(pid), Some(b)) => {
                    let a = engines::proc_usage(pid)?;
                    Some(ProcUsage {
                        cpu_secs: a.cpu_secs - b.cpu_secs,
                        peak_rss_mb: a.peak_rss_mb,
                    })
                }
                _ => None,
            };
            results.push(summarize_run(t, rep, out, &before, &after, process));
        }
    }
    Ok(results)
}

fn summarize_run(
    t: &Target,
    rep: usize,
    mut out: runner::RunOutput,
    before: &[EngineCounters],
    after: &[EngineCounters],
    process: Option<ProcUsage>,
) -> TargetResult {
    out.samples.sort_by(|a, b| a.sent_at.total_cmp(&b.sent_at));
    let ok: Vec<&runner::Sample> = out.samples.iter().filter(|s| s.status == 200).collect();
    let ttfts: Vec<f64> = ok.iter().filter_map(|s| s.ttft).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|s| s.itl.iter().copied()).collect();
    let e2es: Vec<f64> = ok.iter().map(|s| s.e2e).collect();
    let out_tokens: u64 = ok.iter().map(|s| s.output_tokens).sum();
    let deltas: Vec<EngineCounters> = after.iter().zip(before).map(|(a, b)| a.delta(b)).collect();
    let queries: f64 = deltas.iter().map(|d| d.prefix_queries).sum();
    let hits: f64 = deltas.iter().map(|d| d.prefix_hits).sum();
    let finished: f64 = deltas.iter().map(|d| d.requests).sum();
    let prompts: Vec<(Vec<u32>, Vec<u32>)> = out
        .samples
        .iter()
        .map(|s| {
            (
                oracle::prompt_tokens(&s.messages),
                switchyard_sim::tokenizer::encode(&s.output),
            )
        })
        .collect();
    let wall = out.wall_secs.max(1e-9);
    // Counted only when every engine says its capacity.
    let capacity = if after.iter().all(|c| c.kv_blocks > 0.0) {
        after.iter().map(|c| c.kv_blocks).sum()
    } else {
        0.0
    };
    TargetResult {
        name: t.name.clone(),
        url: t.url.clone(),
        repetition: rep,
        ok: ok.len() as u64,
        by_status: runner::by_status(&out.samples),
        cut: out.cut,
        wall_secs: out.wall_secs,
        req_per_sec: ok.len() as f64 / wall,
        output_tok_per_sec: out_tokens as f64 / wall,
        ttft: summarize(&ttfts),
        itl: summarize(&itls),
        e2e: summarize(&e2es),
        session_e2e: summarize(&out.session_secs),
        engine_hit_rate: (queries > 0.0).then(|| hits / queries),
        oracle_hit_rate: oracle::hit_rate(&prompts),
        bounded_oracle_hit_rate: (capacity > 0.0)
            .then(|| oracle::bounded_hit_rate(&prompts, capacity as usize)),
        engine_share: deltas
            .iter()
            .map(|d| {
                if finished > 0.0 {
                    d.requests / finished
                } else {
                    0.0
                }
            })
            .collect(),
        process,
        series: Series {
            ttfts,
            done_at: ok.iter().map(|s| s.sent_at + s.e2e).collect(),
            wall_secs: out.wall_secs,
        },
    }
}

/// The median of each target's numbers over its repetitions (the mean of the middle
/// two for an even count), in target order; counts are summed, peak RSS is the peak.
pub fn aggregate(results: &[TargetResult], targets: &[Target]) -> Vec<TargetResult> {
    targets
        .iter()
        .filter_map(|t| {
            let rs: Vec<&TargetResult> = results.iter().filter(|r| r.name == t.name).collect();
            let first = (*rs.first()?).clone();
            let mid = |f: &dyn Fn(&TargetResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let msum = |f: &dyn Fn(&TargetResult) -> Summary| Summary {
                p50: mid(&|r| f(r).p50),
                p90: mid(&|r| f(r).p90),
                p99: mid(&|r| f(r).p99),
                mean: mid(&|r| f(r).mean),
                count: rs.iter().map(|r| f(r).count).sum(),
            };
            let mut by_status = BTreeMap::new();
            for r in &rs {
                for (k, v) in &r.by_status {
                    *by_status.entry(k.clone()).or_insert(0) += v;
                }
            }
            Some(TargetResult {
                repetition: rs.len(),
                ok: rs.iter().map(|r| r.ok).sum(),
                by_status,
                cut: rs.iter().map(|r| r.cut).sum(),
                wall_secs: mid(&|r| r.wall_secs),
                req_per_sec: mid(&|r| r.req_per_sec),
                output_tok_per_sec: mid(&|r| r.output_tok_per_sec),
                ttft: msum(&|r| r.ttft),
                itl: msum(&|r| r.itl),
                e2e: msum(&|r| r.e2e),
                session_e2e: msum(&|r| r.session_e2e),
                engine_hit_rate: first
                    .engine_hit_rate
                    .map(|_| mid(&|r| r.engine_hit_rate.unwrap_or(0.0))),
                oracle_hit_rate: mid(&|r| r.oracle_hit_rate),
                // Over the runs that counted it (every engine said its capacity).
                bounded_oracle_hit_rate: {
                    let v: Vec<f64> = rs
                        .iter()
                        .filter_map(|r| r.bounded_oracle_hit_rate)
                        .collect();
                    (!v.is_empty()).then(|| median(v))
                },
                engine_share: (0..first.engine_share.len())
                    .map(|i| mid(&|r| r.engine_share.get(i).copied().unwrap_or(0.0)))
                    .collect(),
                process: first.process.map(|_| ProcUsage {
                    cpu_secs: mid(&|r| r.process.map_or(0.0, |p| p.cpu_secs)),
                    peak_rss_mb: rs
                        .iter()
                        .filter_map(|r| r.process)
                        .map(|p| p.peak_rss_mb)
                        .fold(0.0, f64::max),
                }),
                series: Series {
                    ttfts: rs
                        .iter()
                        .flat_map(|r| r.series.ttfts.iter().copied())
                        .collect(),
                    ..first.series.clone()
                },
                ..first
            })
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(s: f64) -> String {
    if s >= 10.0 {
        format!("{:.1} s", s)
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

/// A Markdown table of aggregated results, with ratios against the first row.
pub fn markdown(title: &str, rows: &[TargetResult]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### {title}\n");
    let _ = writeln!(
        md,
        "| target | ok | errors | req/s | out tok/s | TTFT p50 | TTFT p90 | TTFT p99 | ITL p50 | ITL p90 | E2E p90 | session E2E p90 | engine hit rate | oracle | oracle (fleet KV) | engine share | CPU s | peak RSS | TTFT p90 vs first | req/s vs first |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    let base = rows.first();
    for r in rows {
        let errors: u64 = r
            .by_status
            .iter()
            .filter(|(k, _)| k.as_str() != "200")
            .map(|(_, v)| v)
            .sum();
        let err_detail = if errors > 0 {
            let parts: Vec<String> = r
                .by_status
                .iter()
                .filter(|(k, _)| k.as_str() != "200")
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{errors} ({})", parts.join(", "))
        } else {
            "0".into()
        };
        let share = if r.engine_share.is_empty() {
            "—".into()
        } else {
            r.engine_share
                .iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1}% | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.ok,
            err_detail,
            r.req_per_sec,
            r.output_tok_per_sec,
            ms(r.ttft.p50),
            ms(r.ttft.p90),
            ms(r.ttft.p99),
            ms(r.itl.p50),
            ms(r.itl.p90),
            ms(r.e2e.p90),
            ms(r.session_e2e.p90),
            r.engine_hit_rate
                .map_or("—".into(), |h| format!("{:.1}%", h * 100.0)),
            r.oracle_hit_rate * 100.0,
            r.bounded_oracle_hit_rate
                .map_or("—".into(), |h| format!("{:.1}%", h * 100.0)),
            share,
            r.process
                .map_or("—".into(), |p| format!("{:.1}", p.cpu_secs)),
            r.process
                .map_or("—".into(), |p| format!("{:.0} MB", p.peak_rss_mb)),
            base.map_or("—".into(), |b| ratio(r.ttft.p90, b.ttft.p90)),
            base.map_or("—".into(), |b| ratio(r.req_per_sec, b.req_per_sec)),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_aggregate_to_their_median() {
        let rep = |rps: f64, p90: f64, ok: u64| TargetResult {
            name: "a".into(),
            req_per_sec: rps,
            ttft: Summary {
                p90,
                count: 10,
                ..Summary::default()
            },
            engine_hit_rate: Some(rps / 100.0),
            ok,
            ..TargetResult::default()
        };
        let target = Target {
            name: "a".into(),
            url: "http://x".into(),
            pid: None,
        };
        // One outlier run does not move the figure (a mean would say 4.33 and 0.37).
        let rows = aggregate(
            &[rep(1.0, 0.1, 5), rep(10.0, 0.9, 5), rep(2.0, 0.11, 5)],
            std::slice::from_ref(&target),
        );
        assert_eq!(rows[0].req_per_sec, 2.0);
        assert_eq!(rows[0].ttft.p90, 0.11);
        assert_eq!(rows[0].engine_hit_rate, Some(0.02));
        assert_eq!((rows[0].ok, rows[0].ttft.count), (15, 30));
        // An even count takes the middle two.
        let rows = aggregate(&[rep(1.0, 0.1, 1), rep(3.0, 0.3, 1)], &[target]);
        assert_eq!(rows[0].req_per_sec, 2.0);
    }
}
