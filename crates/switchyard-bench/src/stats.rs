//! Percentiles.

use serde::Serialize;

/// p50/p90/p99/mean of a sample, in the sample's unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub count: usize,
}

/// Nearest-rank percentiles.
pub fn summarize(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary::default();
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Summary {
        p50: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        count: v.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!((s.p50, s.p90, s.p99, s.count), (50.0, 90.0, 99.0, 100));
        assert_eq!(s.mean, 50.5);
        assert_eq!(summarize(&[]).count, 0);
    }
}
