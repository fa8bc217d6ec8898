//! What the dashboard computes from the gateway's own metrics text: the series it
//! shows, summed over the labels it does not show, and rates and latency percentiles
//! over a window of earlier samples (as Prometheus' `rate` and `histogram_quantile`
//! would). Reading the rendered text keeps the hot path free of a second bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A series the dashboard reads, and the labels it keeps (the others are summed).
struct Spec {
    name: &'static str,
    keep: &'static [&'static str],
}

pub const REQUESTS: usize = 0;
pub const E2E: usize = 1;
pub const TTFT: usize = 2;
pub const DECISIONS: usize = 3;
pub const INTENTS: usize = 4;
pub const TENANT_REQUESTS: usize = 5;
pub const TENANT_TOKENS: usize = 6;
pub const CACHE_HITS: usize = 7;
pub const CACHE_MISSES: usize = 8;
pub const PREFIX_HIT_RATIO: usize = 9;
pub const QUEUE_DEPTH: usize = 10;
pub const ROUTE_REQUESTS: usize = 11;
pub const ROUTE_SESSIONS: usize = 12;
pub const RETRIES: usize = 13;
pub const REJECTED: usize = 14;

const SPECS: &[Spec] = &[
    Spec {
        name: "switchyard_requests_total",
        keep: &["model", "status"],
    },
    Spec {
        name: "switchyard_request_duration_seconds_bucket",
        keep: &["model", "le"],
    },
    Spec {
        name: "switchyard_time_to_first_token_seconds_bucket",
        keep: &["model", "le"],
    },
    Spec {
        name: "switchyard_policy_decisions_total",
        keep: &["policy", "reason"],
    },
    Spec {
        name: "switchyard_model_requests_total",
        keep: &["intent", "model"],
    },
    Spec {
        name: "switchyard_tenant_requests_total",
        keep: &["tenant", "outcome"],
    },
    Spec {
        name: "switchyard_tenant_tokens_total",
        keep: &["tenant", "kind"],
    },
    Spec {
        name: "switchyard_response_cache_hits_total",
        keep: &[],
    },
    Spec {
        name: "switchyard_response_cache_misses_total",
        keep: &[],
    },
    Spec {
        name: "switchyard_prefix_index_hit_ratio",
        keep: &[],
    },
    Spec {
        name: "switchyard_queue_depth",
        keep: &[],
    },
    Spec {
        name: "switchyard_route_requests_total",
        keep: &["use_case", "path"],
    },
    Spec {
        name: "switchyard_route_session_creations_total",
        keep: &[],
    },
    Spec {
        name: "switchyard_retries_total",
        keep: &[],
    },
    Spec {
        name: "switchyard_rejected_total",
        keep: &[],
    },
];

/// One reading of the gateway's metrics: per series (a [`SPECS`] index), the value of
/// each combination of kept labels.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    values: HashMap<(usize, Vec<String>), f64>,
}

impl Sample {
    /// Reads the series the dashboard uses out of OpenMetrics text.
    pub fn parse(text: &str) -> Sample {
        let mut values: HashMap<(usize, Vec<String>), f64> = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            let Some(i) = SPECS.iter().position(|s| s.name == name) else {
                continue;
            };
            let key = SPECS[i]
                .keep
                .iter()
                .map(|k| {
                    labels
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect();
            *values.entry((i, key)).or_default() += value;
        }
        Sample { values }
    }

    /// The value of one label combination (0 when absent).
    pub fn get(&self, series: usize, labels: &[&str]) -> f64 {
        self.values
            .iter()
            .find(|((s, k), _)| {
                *s == series && k.iter().map(String::as_str).eq(labels.iter().copied())
            })
            .map_or(0.0, |(_, v)| *v)
    }

    /// Every label combination of a series, with its value.
    pub fn series(&self, series: usize) -> impl Iterator<Item = (&[String], f64)> {
        self.values
            .iter()
            .filter(move |((s, _), _)| *s == series)
            .map(|((_, k), v)| (k.as_slice(), *v))
    }

    /// A series summed by its first `n` kept labels.
    pub fn by(&self, series: usize, n: usize) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for (k, v) in self.series(series) {
            *out.entry(k[..n].to_vec()).or_default() += v;
        }
        out
    }

    /// A series' total over every label.
    pub fn total(&self, series: usize) -> f64 {
        self.series(series).map(|(_, v)| v).sum()
    }

    /// Requests per model: all, and those answered with an error status (≥ 400).
    pub fn requests_by_model(&self) -> BTreeMap<String, (f64, f64)> {
        let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (k, v) in self.series(REQUESTS) {
            let e = out.entry(k[0].clone()).or_default();
            e.0 += v;
            if k[1].parse::<u16>().is_ok_and(|s| s >= 400) {
                e.1 += v;
            }
        }
        out
    }

    /// A histogram's cumulative buckets per model: `(upper bound, count)`, ascending.
    pub fn buckets(&self, series: usize) -> BTreeMap<String, Vec<(f64, f64)>> {
        let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (k, v) in self.series(series) {
            if let Ok(le) = k[1].parse::<f64>() {
                out.entry(k[0].clone()).or_default().push((le, v));
            }
        }
        for b in out.values_mut() {
            b.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }
}

/// A sample's labels, in the order written.
pub type Labels = Vec<(String, String)>;

/// `name{a="x",b="y"} value` → its parts; label values unescaped. `None` for anything
/// else (comments, exemplars are ignored after the value).
pub fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (label, after) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_string(), value));
            r = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// The `q` quantile (0..1) of a histogram given as cumulative `(upper bound, count)`
/// buckets, interpolated linearly inside the bucket as `histogram_quantile` does.
/// `None` without observations; the largest finite bound when it falls in `+Inf`.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let width = count - below;
            let within = if width > 0.0 {
                (rank - below) / width
            } else {
                1.0
            };
            return Some(lower + (le - lower) * within);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// Buckets observed between two readings (`now` minus `then`, bound by bound).
pub fn bucket_delta(now: &[(f64, f64)], then: Option<&Vec<(f64, f64)>>) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(le, c)| {
            let before = then
                .and_then(|t| t.iter().find(|(l, _)| *l == le))
                .map_or(0.0, |(_, c)| *c);
            (le, (c - before).max(0.0))
        })
        .collect()
}

/// p50, p95 and p99 in seconds, `None` each without observations.
pub fn percentiles(buckets: &[(f64, f64)]) -> [Option<f64>; 3] {
    [0.5, 0.95, 0.99].map(|q| quantile(buckets, q))
}

/// Every model named by any of the readings' series.
pub fn models(samples: &[&Sample]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in samples {
        for series in [REQUESTS, E2E, TTFT] {
            out.extend(
                s.series(series)
                    .map(|(k, _)| k[0].clone())
                    .filter(|m| !m.is_empty()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP switchyard_requests_total Requests.
# TYPE switchyard_requests_total counter
switchyard_requests_total{route="chat",model="m",worker="w1",status="200"} 7
switchyard_requests_total{route="chat",model="m",worker="w2",status="200"} 3
switchyard_requests_total{route="chat",model="m",worker="",status="503"} 2
switchyard_requests_total{route="completions",model="a \"quoted\" one",worker="w1",status="200"} 1
switchyard_request_duration_seconds_bucket{route="chat",model="m",le="0.1"} 4
switchyard_request_duration_seconds_bucket{route="chat",model="m",le="1.0"} 10
switchyard_request_duration_seconds_bucket{route="chat",model="m",le="+Inf"} 12
switchyard_queue_depth 5
switchyard_policy_decisions_total{policy="cache_aware",reason="cache_hit"} 9 # {trace_id="x"} 1
"#;

    #[test]
    fn sums_over_labels_it_does_not_keep() {
        let s = Sample::parse(TEXT);
        assert_eq!(s.get(REQUESTS, &["m", "200"]), 10.0);
        assert_eq!(s.get(REQUESTS, &["m", "503"]), 2.0);
        assert_eq!(s.get(QUEUE_DEPTH, &[]), 5.0);
        assert_eq!(s.get(DECISIONS, &["cache_aware", "cache_hit"]), 9.0);
        let by_model = s.requests_by_model();
        assert_eq!(by_model["m"], (12.0, 2.0));
        assert_eq!(by_model["a \"quoted\" one"], (1.0, 0.0));
        assert_eq!(
            s.buckets(E2E)["m"],
            vec![(0.1, 4.0), (1.0, 10.0), (f64::INFINITY, 12.0)]
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let s = Sample::parse(
            "switchyard_queue_depth\nswitchyard_queue_depth{x=\"1} 3\nswitchyard_queue_depth nope\n",
        );
        assert_eq!(s.get(QUEUE_DEPTH, &[]), 0.0);
        assert!(parse_line("{} 1").is_some_and(|(n, _, _)| n.is_empty()));
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.1, 4.0), (1.0, 10.0), (f64::INFINITY, 12.0)];
        // rank 6 of 12: 2 of the 6 in (0.1, 1.0].
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - (0.1 + 0.9 * 2.0 / 6.0)).abs() < 1e-9, "{p50}");
        // rank 11.4 falls in +Inf: the largest finite bound.
        assert_eq!(quantile(&b, 0.95), Some(1.0));
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn deltas_are_taken_bound_by_bound() {
        let then = vec![(0.1, 4.0), (1.0, 4.0), (f64::INFINITY, 4.0)];
        let now = [(0.1, 4.0), (1.0, 9.0), (f64::INFINITY, 9.0)];
        let d = bucket_delta(&now, Some(&then));
        assert_eq!(d, vec![(0.1, 0.0), (1.0, 5.0), (f64::INFINITY, 5.0)]);
        // Everything in the window was in (0.1, 1]: the median is inside it.
        let p50 = quantile(&d, 0.5).unwrap();
        assert!(p50 > 0.1 && p50 < 1.0);
        assert_eq!(bucket_delta(&now, None), now.to_vec());
    }
}
