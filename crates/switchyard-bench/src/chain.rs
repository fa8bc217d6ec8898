//! `switchyard-bench chain`: long conversations through a gateway's Responses API, each
//! turn chained to the last with `previous_response_id` (the gateway rebuilds the
//! context from its store) — or, as the baseline, the same conversations sent as chat
//! completions that carry the whole history (what a client does without server state).
//! Conversations run one after another, so that the engines' request counters tell
//! which engines each one touched. The report: latency per turn, the engines'
//! prefix-cache hit rate, and how many conversations stayed on one engine.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::engines::{EngineCounters, scrape};
use crate::stats::{Summary, summarize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `POST /v1/responses` with `previous_response_id`.
    Responses,
    /// `POST /v1/chat/completions` with the whole history each turn.
    Chat,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainParams {
    pub mode: Mode,
    pub model: String,
    pub conversations: usize,
    pub turns: usize,
    /// Tokens of the first turn's shared briefing.
    pub first_len: usize,
    /// Tokens of each later user turn.
    pub turn_len: usize,
    pub output_len: u32,
    pub seed: u64,
    #[serde(skip)]
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct ChainReport {
    pub target: String,
    pub mode: Option<Mode>,
    pub conversations: usize,
    pub turns: usize,
    pub errors: usize,
    /// Milliseconds, per turn (index 0 is turn 1).
    pub latency_ms_by_turn: Vec<Summary>,
    /// Prefix-cache hits / queries over the run, from the engines' counters.
    pub hit_rate: f64,
    /// Conversations whose turns all went to one engine.
    pub on_one_engine: usize,
    /// Engines each conversation touched (its distribution: count of conversations).
    pub engines_touched: Vec<usize>,
}

async fn counters(
    http: &reqwest::Client,
    engines: &[String],
) -> anyhow::Result<Vec<EngineCounters>> {
    let mut out = Vec::with_capacity(engines.len());
    for e in engines {
        out.push(scrape(http, e).await?);
    }
    Ok(out)
}

/// Runs the conversations against `target` (the engines' caches are the caller's to
/// reset before).
pub async fn run(target: &str, engines: &[String], p: &ChainParams) -> anyhow::Result<ChainReport> {
    let http = reqwest::Client::builder().timeout(p.timeout).build()?;
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let mut report = ChainReport {
        target: target.to_string(),
        mode: Some(p.mode),
        conversations: p.conversations,
        turns: p.turns,
        engines_touched: vec![0; engines.len() + 1],
        ..ChainReport::default()
    };
    let mut by_turn: Vec<Vec<f64>> = vec![Vec::new(); p.turns];
    let start = counters(&http, engines).await?;
    for c in 0..p.conversations {
        let before = counters(&http, engines).await?;
        let briefing = crate::workload::text(&mut rng, p.first_len);
        let mut previous: Option<String> = None;
        let mut history: Vec<Value> = Vec::new();
        for (turn, lat) in by_turn.iter_mut().enumerate() {
            let question = format!(
                "Conversation {c}, turn {}: {}",
                turn + 1,
                crate::workload::text(&mut rng, p.turn_len)
            );
            let user = if turn == 0 {
                format!("{briefing}\n\n{question}")
            } else {
                question
            };
            let (path, body) = match p.mode {
                Mode::Responses => (
                    "/v1/responses",
                    json!({"model": p.model, "input": user, "previous_response_id": previous,
                           "max_output_tokens": p.output_len}),
                ),
                Mode::Chat => {
                    history.push(json!({"role": "user", "content": user}));
                    (
                        "/v1/chat/completions",
                        json!({"model": p.model, "messages": history, "max_tokens": p.output_len}),
                    )
                }
            };
            let t0 = Instant::now();
            let answer = http
                .post(format!("{target}{path}"))
                .json(&body)
                .send()
                .await;
            let answer = match answer {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
            let Some(answer) = answer else {
                report.errors += 1;
                break;
            };
            match p.mode {
                Mode::Responses => previous = answer["id"].as_str().map(str::to_string),
                Mode::Chat => history.push(json!({
                    "role": "assistant",
                    "content": answer["choices"][0]["message"]["content"].as_str().unwrap_or_default(),
                })),
            }
        }
        let after = counters(&http, engines).await?;
        let touched = after
            .iter()
            .zip(&before)
            .filter(|(a, b)| a.delta(b).requests > 0.0)
            .count();
        report.engines_touched[touched] += 1;
        if touched == 1 {
            report.on_one_engine += 1;
        }
    }
    let end = counters(&http, engines).await?;
    let (hits, queries) = end
        .iter()
        .zip(&start)
        .map(|(e, s)| e.delta(s))
        .fold((0.0, 0.0), |(h, q), d| {
            (h + d.prefix_hits, q + d.prefix_queries)
        });
    report.hit_rate = if queries > 0.0 { hits / queries } else { 0.0 };
    report.latency_ms_by_turn = by_turn.iter().map(|v| summarize(v)).collect();
    Ok(report)
}

impl ChainReport {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let first = self.latency_ms_by_turn.first().copied().unwrap_or_default();
        let last = self.latency_ms_by_turn.last().copied().unwrap_or_default();
        md.push_str(&format!(
            "| mode | conversations × turns | errors | prefix-cache hit rate | on one engine | turn 1 p50 (ms) | turn {} p50 (ms) | turn {} p99 (ms) |\n",
            self.turns, self.turns
        ));
        md.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        md.push_str(&format!(
            "| {:?} | {} × {} | {} | {:.1} % | {} / {} | {:.2} | {:.2} | {:.2} |\n",
            self.mode.unwrap_or(Mode::Responses),
            self.conversations,
            self.turns,
            self.errors,
            self.hit_rate * 100.0,
            self.on_one_engine,
            self.conversations,
            first.p50,
            last.p50,
            last.p99,
        ));
        md
    }
}
