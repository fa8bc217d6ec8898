//! SVG plots of a comparison, written next to its Markdown table: the TTFT CDF of
//! every target, each target's completed requests per second over its run, and the
//! engines' prefix-cache hit rate per target.
//!
//! plotters with its SVG backend only: text is SVG `<text>` that the viewer sets in its
//! own sans-serif font, so no font files are read (layout uses plotters' estimate).

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::TargetResult;

/// Series colours (the tab10 palette), one per target in order, cycling.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Points drawn per CDF at most (quantiles of the sorted TTFTs beyond that).
const CDF_POINTS: usize = 1000;
/// Time bins of the throughput plot.
const THROUGHPUT_BINS: usize = 60;
const SIZE: (u32, u32) = (900, 520);
const FONT: &str = "sans-serif";

/// The colour of the `i`th target.
pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// The three plots' paths for results written to `out` (`out` with its extension
/// replaced, as `OUT.md` is): `OUT-ttft-cdf.svg`, `OUT-throughput.svg`,
/// `OUT-hit-rate.svg`.
pub fn paths(out: &Path) -> [PathBuf; 3] {
    let base = out.with_extension("");
    let stem = base
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    ["ttft-cdf", "throughput", "hit-rate"]
        .map(|kind| base.with_file_name(format!("{stem}-{kind}.svg")))
}

/// Writes the three plots of `rows` (aggregated results, one per target) for results
/// written to `out`; returns their paths.
pub fn write(out: &Path, title: &str, rows: &[TargetResult]) -> anyhow::Result<[PathBuf; 3]> {
    let [cdf, throughput, hits] = paths(out);
    ttft_cdf(&cdf, title, rows)?;
    throughput_over_time(&throughput, title, rows)?;
    hit_rate(&hits, title, rows)?;
    Ok([cdf, throughput, hits])
}

/// Markdown image links to the plots, relative to the Markdown file beside them.
pub fn markdown(out: &Path) -> String {
    let [cdf, throughput, hits] = paths(out);
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    format!(
        "\n![TTFT CDF per target]({})\n\n![Completed requests per second over the run]({})\n\n![Prefix-cache hit rate per target]({})\n",
        name(&cdf),
        name(&throughput),
        name(&hits)
    )
}

/// The empirical CDF of `v` (seconds) as (milliseconds, fraction) points, from
/// (first, 0) to (last, 1); quantiles when there are more than [`CDF_POINTS`].
pub fn cdf_points(v: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Vec::new();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mut pts = vec![(v[0] * 1e3, 0.0)];
    let k = n.min(CDF_POINTS);
    for j in 0..k {
        let i = if k == n {
            j
        } else {
            j * (n - 1) / (k - 1).max(1)
        };
        pts.push((v[i] * 1e3, (i + 1) as f64 / n as f64));
    }
    pts
}

/// Completed requests per second in [`THROUGHPUT_BINS`] equal bins over `[0, span]`,
/// as (bin centre seconds, requests/s) points.
pub fn throughput_points(done_at: &[f64], span: f64) -> Vec<(f64, f64)> {
    let span = done_at.iter().copied().fold(span, f64::max);
    if span <= 0.0 {
        return Vec::new();
    }
    let w = span / THROUGHPUT_BINS as f64;
    let mut counts = [0u64; THROUGHPUT_BINS];
    for t in done_at {
        let b = ((t / w) as usize).min(THROUGHPUT_BINS - 1);
        counts[b] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(b, &c)| ((b as f64 + 0.5) * w, c as f64 / w))
        .collect()
}

fn ttft_cdf(path: &Path, title: &str, rows: &[TargetResult]) -> anyhow::Result<()> {
    let series: Vec<Vec<(f64, f64)>> = rows.iter().map(|r| cdf_points(&r.series.ttfts)).collect();
    let xmax = max_of(&series, |p| p.0) * 1.05;
    let chart = LineChart {
        caption: format!("TTFT CDF: {title}"),
        x_desc: "time to first token (ms)",
        y_desc: "fraction of answered requests",
        ymax: 1.0,
        percent: true,
        legend: SeriesLabelPosition::LowerRight,
    };
    chart.draw(path, xmax, rows, series)
}

fn throughput_over_time(path: &Path, title: &str, rows: &[TargetResult]) -> anyhow::Result<()> {
    let series: Vec<Vec<(f64, f64)>> = rows
        .iter()
        .map(|r| throughput_points(&r.series.done_at, r.series.wall_secs))
        .collect();
    let chart = LineChart {
        caption: format!("Throughput over time: {title}"),
        x_desc: "seconds since the run started (first repetition)",
        y_desc: "completed requests per second",
        ymax: max_of(&series, |p| p.1) * 1.1,
        percent: false,
        legend: SeriesLabelPosition::UpperRight,
    };
    chart.draw(path, max_of(&series, |p| p.0) * 1.02, rows, series)
}

/// The largest coordinate `f` picks over every series' points (at least 1).
fn max_of(series: &[Vec<(f64, f64)>], f: impl Fn(&(f64, f64)) -> f64) -> f64 {
    series.iter().flatten().map(f).fold(0.0, f64::max).max(1.0)
}

/// One line per target over a shared x range from 0.
struct LineChart {
    caption: String,
    x_desc: &'static str,
    y_desc: &'static str,
    ymax: f64,
    /// The y axis is a fraction, labelled in percent.
    percent: bool,
    legend: SeriesLabelPosition,
}

impl LineChart {
    fn draw(
        self,
        path: &Path,
        xmax: f64,
        rows: &[TargetResult],
        series: Vec<Vec<(f64, f64)>>,
    ) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.caption, (FONT, 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..self.ymax)?;
        let percent = |y: &f64| format!("{:.0}%", y * 100.0);
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_desc).y_desc(self.y_desc);
        if self.percent {
            mesh.y_label_formatter(&percent);
        }
        mesh.draw()?;
        for (i, (r, pts)) in rows.iter().zip(series).enumerate() {
            if pts.is_empty() {
                continue;
            }
            let c = color(i);
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(r.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(self.legend)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

fn hit_rate(path: &Path, title: &str, rows: &[TargetResult]) -> anyhow::Result<()> {
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Prefix-cache hit rate: {title}"), (FONT, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        // A segmented range a..b has a segment for every value of a..=b: end at n - 1.
        .build_cartesian_2d(
            (0..rows.len().saturating_sub(1).max(1)).into_segmented(),
            0f64..1.1f64,
        )?;
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len().max(1))
        .x_label_formatter(&label)
        .x_desc("target")
        .y_desc("engines' prefix-cache hit rate (hits / queried tokens)")
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let (text, top) = match r.engine_hit_rate {
            Some(h) => {
                let c = color(i);
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), h),
                    ],
                    c.filled(),
                );
                bar.set_margin(0, 0, 25, 25);
                chart.draw_series(std::iter::once(bar))?;
                (format!("{:.1}%", h * 100.0), h)
            }
            // No --engine: the engines' counters were not read.
            None => ("n/a".to_string(), 0.0),
        };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (SegmentValue::CenterOf(i), top + 0.03),
            (FONT, 14).into_font().color(&BLACK),
        )))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_paths_sit_beside_the_markdown() {
        let [a, b, c] = paths(Path::new("bench/results/2026-12-04-0900-plots"));
        assert_eq!(
            a,
            Path::new("bench/results/2026-12-04-0900-plots-ttft-cdf.svg")
        );
        assert_eq!(
            b,
            Path::new("bench/results/2026-12-04-0900-plots-throughput.svg")
        );
        assert_eq!(
            c,
            Path::new("bench/results/2026-12-04-0900-plots-hit-rate.svg")
        );
        // OUT.md names the same files as OUT.
        assert_eq!(
            paths(Path::new("x/out.md"))[0],
            Path::new("x/out-ttft-cdf.svg")
        );
    }

    #[test]
    fn cdf_rises_from_zero_to_one_in_order() {
        let pts = cdf_points(&[0.3, 0.1, 0.2]);
        assert_eq!(
            pts,
            vec![
                (100.0, 0.0),
                (100.0, 1.0 / 3.0),
                (200.0, 2.0 / 3.0),
                (300.0, 1.0)
            ]
        );
        let many: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let pts = cdf_points(&many);
        assert_eq!(pts.len(), CDF_POINTS + 1);
        assert_eq!(pts.last(), Some(&(9_999_000.0, 1.0)));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn throughput_bins_count_completions_per_second() {
        // 60 completions spread over 6 s: 10 per second in every bin.
        let done: Vec<f64> = (0..60).map(|i| i as f64 * 0.1 + 0.05).collect();
        let pts = throughput_points(&done, 6.0);
        assert_eq!(pts.len(), THROUGHPUT_BINS);
        assert!(pts.iter().all(|p| (p.1 - 10.0).abs() < 1e-9), "{pts:?}");
        assert!(throughput_points(&[], 0.0).is_empty());
    }
}
