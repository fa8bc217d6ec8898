//! The binary's `--out` writes three SVG plots beside its Markdown, one series per
//! target, and keeps its stderr free of progress-bar drawing when it is not a terminal.

use std::path::Path;
use std::process::Command;

use switchyard_bench::plots;
use switchyard_sim::SimConfig;
use switchyard_testkit::sims_with;

const TARGETS: [&str; 2] = ["alpha", "beta"];

fn svg_color(i: usize) -> String {
    let c = plots::color(i);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

/// Polylines of more than two points (a data series; legend samples and mesh lines
/// are two-point lines) of each target's colour.
fn series_per_target(doc: &roxmltree::Document) -> Vec<usize> {
    (0..TARGETS.len())
        .map(|i| {
            doc.descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .filter(|n| n.attribute("stroke").map(str::to_uppercase) == Some(svg_color(i)))
                .filter(|n| {
                    n.attribute("points")
                        .unwrap_or("")
                        .split_whitespace()
                        .count()
                        > 2
                })
                .count()
        })
        .collect()
}

fn parse(path: &Path) -> String {
    assert!(path.exists(), "{} was not written", path.display());
    let text = std::fs::read_to_string(path).unwrap();
    roxmltree::Document::parse(&text)
        .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_writes_a_plot_of_each_kind_with_one_series_per_target() {
    let sims = sims_with(SimConfig {
        engines: 2,
        time_scale: 50.0,
        ..SimConfig::default()
    })
    .await;
    let urls = sims.urls();
    let dir = std::env::temp_dir().join(format!("switchyard-bench-plots-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("run");
    let mut args: Vec<String> = vec![
        "--workload".into(),
        "shared-prefix".into(),
        "--groups".into(),
        "2".into(),
        "--prompts-per-group".into(),
        "6".into(),
        "--system-len".into(),
        "200".into(),
        "--question-len".into(),
        "10".into(),
        "--output-len".into(),
        "8".into(),
        "--concurrency".into(),
        "2".into(),
        "--duration".into(),
        "60".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for (name, url) in TARGETS.iter().zip(&urls) {
        args.push("--target".into());
        args.push(format!("{name}={url}"));
        args.push("--engine".into());
        args.push(url.clone());
    }
    // The sims serve on this runtime's workers while the binary runs.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard-bench"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    // stderr is a pipe: no bar drawn (no carriage returns or escape sequences), one
    // summary line per run.
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    for name in TARGETS {
        assert!(stderr.contains(&format!("[{name}] ")), "{stderr}");
    }

    let [cdf, throughput, hits] = plots::paths(&out);
    let md = std::fs::read_to_string(out.with_extension("md")).unwrap();
    for p in [&cdf, &throughput, &hits] {
        let file = p.file_name().unwrap().to_str().unwrap();
        assert!(md.contains(&format!("]({file})")), "{md}");
    }

    for (path, title) in [
        (&cdf, "TTFT CDF: "),
        (&throughput, "Throughput over time: "),
    ] {
        let text = parse(path);
        let doc = roxmltree::Document::parse(&text).unwrap();
        let t = texts(&doc);
        assert!(
            t.iter().any(|s| s.starts_with(title)),
            "{title:?} not in {t:?}"
        );
        for name in TARGETS {
            assert!(
                t.iter().any(|s| s == name),
                "no legend entry {name} in {t:?}"
            );
        }
        assert_eq!(series_per_target(&doc), vec![1, 1], "{}", path.display());
    }

    let text = parse(&hits);
    let doc = roxmltree::Document::parse(&text).unwrap();
    let t = texts(&doc);
    assert!(
        t.iter().any(|s| s.starts_with("Prefix-cache hit rate: ")),
        "{t:?}"
    );
    for (i, name) in TARGETS.iter().enumerate() {
        assert!(t.iter().any(|s| s == name), "no axis label {name} in {t:?}");
        let bars = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .filter(|n| n.attribute("fill").map(str::to_uppercase) == Some(svg_color(i)))
            .count();
        assert_eq!(bars, 1, "one bar of {name}'s colour");
    }
    // Both engines had a shared-prefix workload: a hit rate above zero, printed on
    // its bar with one decimal (the axis ticks have none).
    let above_zero = t
        .iter()
        .filter(|s| s.contains('.'))
        .filter_map(|s| s.strip_suffix('%')?.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .count();
    assert_eq!(above_zero, TARGETS.len(), "{t:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
