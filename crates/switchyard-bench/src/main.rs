//! `switchyard-bench`: run a workload against one or more targets and write the results.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use switchyard_bench::report::{self, CompareConfig, Target};
use switchyard_bench::runner::Arrivals;
use switchyard_bench::workload::{self, Params};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    SharedPrefix,
    MultiTurn,
    Agentic,
    Random,
    PrefixRepetition,
    Trace,
    /// Conversations through `POST /route` (bypass rate, caught topic changes).
    Sessions,
    /// Multi-agent workflows: turns and fan-out bursts over a shared briefing.
    Workflows,
}

/// Measure OpenAI-compatible targets (routers, engines) on one workload, side by side.
#[derive(Debug, Parser)]
#[command(name = "switchyard-bench", version, about)]
struct Args {
    /// A target as NAME=URL (repeatable); the first is the baseline of the ratios.
    /// NAME=URL1,URL2,… is one target of several replicas, sent requests in turn (a load
    /// balancer without affinity).
    #[arg(long = "target", required = true, value_parser = parse_target)]
    targets: Vec<(String, String)>,
    /// Attribute CPU time and peak RSS to a target's local process: NAME=PID.
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Engine base URLs whose /metrics give the prefix-cache hit rate and request
    /// shares, and whose caches are reset before each target (repeatable).
    #[arg(long = "engine")]
    engines: Vec<String>,
    #[arg(long, value_enum, default_value_t = Workload::SharedPrefix)]
    workload: Workload,
    /// Model name sent in requests.
    #[arg(long, default_value = "switchyard/sim-8b")]
    model: String,
    /// Open loop: sessions (conversations, workflows, requests) started per second, Poisson.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: sessions in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Stop sending after this many requests.
    #[arg(long, default_value_t = 100_000)]
    max_requests: usize,
    /// Stop sending after this many seconds (answers in flight get --request-timeout more).
    #[arg(long, default_value_t = 300)]
    duration: u64,
    #[arg(long, default_value_t = 120)]
    request_timeout: u64,
    /// Runs of every target, rotating their order each time.
    #[arg(long, default_value_t = 1)]
    repetitions: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output tokens per request.
    #[arg(long, default_value_t = 256)]
    output_len: u32,
    /// shared-prefix: system prompts.
    #[arg(long, default_value_t = 64)]
    groups: usize,
    /// shared-prefix: questions per system prompt.
    #[arg(long, default_value_t = 16)]
    prompts_per_group: usize,
    /// shared-prefix: system prompt tokens; multi-turn: first-turn system prompt tokens.
    #[arg(long, default_value_t = 2048)]
    system_len: usize,
    /// shared-prefix: question tokens; agentic: task tokens.
    #[arg(long, default_value_t = 128)]
    question_len: usize,
    /// multi-turn: conversations.
    #[arg(long, default_value_t = 32)]
    conversations: usize,
    /// multi-turn: turns per conversation.
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// multi-turn: user tokens per turn.
    #[arg(long, default_value_t = 128)]
    turn_len: usize,
    /// multi-turn: mean think time between turns, seconds.
    #[arg(long, default_value_t = 1.0)]
    think_time: f64,
    /// agentic: workflows.
    #[arg(long, default_value_t = 16)]
    workflows: usize,
    /// agentic: parallel agents per workflow.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// workflows: rounds of turns plus a burst per workflow.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// agentic: shared context tokens.
    #[arg(long, default_value_t = 4096)]
    context_len: usize,
    /// random, prefix-repetition: requests.
    #[arg(long, default_value_t = 1000)]
    num_requests: usize,
    /// random: prompt tokens.
    #[arg(long, default_value_t = 1024)]
    prompt_len: usize,
    /// prefix-repetition: distinct prefixes.
    #[arg(long, default_value_t = 8)]
    num_prefixes: usize,
    /// prefix-repetition: prefix tokens.
    #[arg(long, default_value_t = 2048)]
    prefix_len: usize,
    /// prefix-repetition: suffix tokens.
    #[arg(long, default_value_t = 128)]
    suffix_len: usize,
    /// sessions: distinct user ids the conversations are spread over.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// sessions: probability that a follow-up changes to another subject.
    #[arg(long, default_value_t = 0.1)]
    topic_change_rate: f64,
    /// sessions: share of same-subject follow-ups that repeat a word of the subject.
    #[arg(long, default_value_t = 0.3)]
    on_subject_rate: f64,
    /// trace: JSONL file to replay.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Restart a simulated engine during every run: URL@SECS after the run starts
    /// (repeatable; `POST URL/sim/restart`, its cache lost without KV events).
    #[arg(long = "restart-engine", value_parser = parse_restart)]
    restarts: Vec<(String, u64)>,
    /// Write OUT.json, OUT.md and the plots OUT-ttft-cdf.svg, OUT-throughput.svg and
    /// OUT-hit-rate.svg (default: print the table only).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar (it is drawn only when stderr is a terminal) and no per-run
    /// summary line.
    #[arg(long)]
    quiet: bool,
}

fn parse_target(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected NAME=URL")?;
    if name.is_empty() {
        return Err("empty target name".into());
    }
    let mut urls = Vec::new();
    for u in url.split(',') {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!("{u:?} is not an http(s) URL"));
        }
        urls.push(u.trim_end_matches('/'));
    }
    Ok((name.to_string(), urls.join(",")))
}

fn parse_restart(s: &str) -> Result<(String, u64), String> {
    let (url, secs) = s.rsplit_once('@').ok_or("expected URL@SECS")?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    let secs = secs.parse().map_err(|e| format!("SECS {secs:?}: {e}"))?;
    Ok((url.trim_end_matches('/').to_string(), secs))
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    Ok((
        name.to_string(),
        pid.parse().map_err(|e| format!("PID {pid:?}: {e}"))?,
    ))
}

/// `switchyard-bench classify`: accuracy, confusion matrix and latency of a gateway's
/// intent classifier (`POST /router/classify`) on labelled prompts.
#[derive(Debug, Parser)]
#[command(name = "switchyard-bench classify")]
struct ClassifyArgs {
    /// JSONL file, one `{"text", "label", "source"?}` per line.
    #[arg(long)]
    dataset: PathBuf,
    /// The gateway's base URL.
    #[arg(long)]
    target: String,
    /// A dataset label's intent name, as LABEL=INTENT (repeatable; default: the same).
    #[arg(long = "map", value_parser = parse_map)]
    map: Vec<(String, String)>,
    /// Seconds allowed per classification.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Write OUT.json and OUT.md (default: print the Markdown only).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_map(s: &str) -> Result<(String, String), String> {
    let (l, i) = s.split_once('=').ok_or("expected LABEL=INTENT")?;
    Ok((l.to_string(), i.to_string()))
}

async fn classify(a: ClassifyArgs) -> anyhow::Result<()> {
    let examples = switchyard_bench::classify::load(&a.dataset)?;
    if examples.is_empty() {
        anyhow::bail!("{}: no prompts", a.dataset.display());
    }
    let map = a.map.into_iter().collect();
    let report =
        switchyard_bench::classify::run(&a.target, &examples, &map, Duration::from_secs(a.timeout))
            .await?;
    let md = report.markdown();
    println!("{md}");
    if let Some(out) = a.out {
        std::fs::write(out.with_extension("md"), &md)?;
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    Ok(())
}

/// `switchyard-bench chain`: conversations of many turns through the Responses API
/// (`previous_response_id`), or as chat completions resending their whole history.
#[derive(Debug, Parser)]
#[command(name = "switchyard-bench chain")]
struct ChainArgs {
    /// The gateway's base URL.
    #[arg(long)]
    target: String,
    /// Engine base URLs (their /metrics: hit rate, which engines a conversation used;
    /// their caches are reset first).
    #[arg(long = "engine")]
    engines: Vec<String>,
    #[arg(long, value_enum, default_value_t = switchyard_bench::chain::Mode::Responses)]
    mode: switchyard_bench::chain::Mode,
    #[arg(long, default_value = "switchyard/sim-8b")]
    model: String,
    /// Conversations, one after another.
    #[arg(long, default_value_t = 16)]
    conversations: usize,
    #[arg(long, default_value_t = 20)]
    turns: usize,
    /// Tokens of the first turn's briefing.
    #[arg(long, default_value_t = 1024)]
    first_len: usize,
    /// Tokens of each later turn.
    #[arg(long, default_value_t = 64)]
    turn_len: usize,
    #[arg(long, default_value_t = 32)]
    output_len: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 120)]
    request_timeout: u64,
    /// Write OUT.json and OUT.md (default: print the Markdown only).
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn chain(a: ChainArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for e in &a.engines {
        switchyard_bench::engines::reset(&http, e).await?;
    }
    let p = switchyard_bench::chain::ChainParams {
        mode: a.mode,
        model: a.model,
        conversations: a.conversations,
        turns: a.turns.max(1),
        first_len: a.first_len,
        turn_len: a.turn_len,
        output_len: a.output_len,
        seed: a.seed,
        timeout: Duration::from_secs(a.request_timeout),
    };
    let report = switchyard_bench::chain::run(&a.target, &a.engines, &p).await?;
    let md = report.markdown();
    println!("{md}");
    if let Some(out) = a.out {
        std::fs::write(out.with_extension("md"), &md)?;
        let json = serde_json::json!({"params": p, "report": report});
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&json)?,
        )?;
    }
    Ok(())
}

/// `--workload sessions`: every target in turn (they share nothing, so no rotation).
async fn run_sessions(a: &Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&a.topic_change_rate) || !(0.0..=1.0).contains(&a.on_subject_rate) {
        anyhow::bail!("--topic-change-rate and --on-subject-rate are probabilities");
    }
    let p = switchyard_bench::sessions::SessionsParams {
        seed: a.seed,
        conversations: a.conversations,
        turns: a.turns.max(1),
        users: a.users,
        topic_change_rate: a.topic_change_rate,
        on_subject_rate: a.on_subject_rate,
        concurrency: a.concurrency.unwrap_or(8),
        max_tokens: a.output_len,
        duration: Duration::from_secs(a.duration),
        timeout: Duration::from_secs(a.request_timeout),
    };
    let mut all = serde_json::Map::new();
    let mut md = String::new();
    for (name, url) in &a.targets {
        let report = switchyard_bench::sessions::run(url, &p).await?;
        md.push_str(&format!("### {name}\n\n{}\n", report.markdown()));
        all.insert(name.clone(), serde_json::to_value(&report)?);
    }
    println!("{md}");
    if let Some(out) = &a.out {
        std::fs::write(out.with_extension("md"), &md)?;
        let json = serde_json::json!({"workload": "sessions", "params": p, "targets": all});
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&json)?,
        )?;
    }
    Ok(())
}

/// `switchyard-bench vectors`: vector store ingestion, search and file_search latency.
#[derive(Debug, Parser)]
#[command(name = "switchyard-bench vectors")]
struct VectorArgs {
    /// The gateway's base URL.
    #[arg(long)]
    target: String,
    /// The row's label in the Markdown table.
    #[arg(long, default_value = "gateway")]
    label: String,
    #[arg(long, default_value = "switchyard/sim-8b")]
    model: String,
    #[arg(long, default_value_t = 1000)]
    docs: usize,
    #[arg(long, default_value_t = 2000)]
    doc_tokens: usize,
    #[arg(long, default_value_t = 200)]
    chunk_tokens: usize,
    #[arg(long, default_value_t = 200)]
    searches: usize,
    #[arg(long, default_value_t = 100)]
    responses: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Write OUT.json and OUT.md (default: print the Markdown only).
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn vectors(a: VectorArgs) -> anyhow::Result<()> {
    let p = switchyard_bench::vectors::VectorParams {
        model: a.model,
        docs: a.docs,
        doc_tokens: a.doc_tokens,
        chunk_tokens: a.chunk_tokens,
        searches: a.searches,
        responses: a.responses,
        seed: a.seed,
        timeout: Duration::from_secs(a.request_timeout),
    };
    let report = switchyard_bench::vectors::run(&reqwest::Client::new(), &a.target, &p).await?;
    let row = report.markdown_row(&a.label);
    println!("{row}");
    if let Some(out) = &a.out {
        std::fs::write(out.with_extension("md"), format!("{row}\n"))?;
        let json = serde_json::json!({"workload": "vectors", "params": p, "report": report});
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&json)?,
        )?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("vectors") {
        let args = VectorArgs::parse_from(std::env::args().skip(1));
        if let Err(e) = vectors(args).await {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("classify") {
        let args = ClassifyArgs::parse_from(std::env::args().skip(1));
        if let Err(e) = classify(args).await {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("chain") {
        let args = ChainArgs::parse_from(std::env::args().skip(1));
        if let Err(e) = chain(args).await {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let p = Params {
        seed: a.seed,
        output_len: a.output_len,
        groups: a.groups,
        prompts_per_group: a.prompts_per_group,
        system_len: a.system_len,
        question_len: a.question_len,
        conversations: a.conversations,
        turns: a.turns,
        turn_len: a.turn_len,
        think_secs: a.think_time,
        workflows: a.workflows,
        agents: a.agents,
        context_len: a.context_len,
        rounds: a.rounds,
        num_requests: a.num_requests,
        prompt_len: a.prompt_len,
        num_prefixes: a.num_prefixes,
        prefix_len: a.prefix_len,
        suffix_len: a.suffix_len,
    };
    if a.output_len == 0 {
        anyhow::bail!("--output-len must be at least 1");
    }
    let mut sessions = match a.workload {
        Workload::Sessions => return run_sessions(&a).await,
        Workload::SharedPrefix => workload::shared_prefix(&p),
        Workload::MultiTurn => workload::multi_turn(&p),
        Workload::Agentic => workload::agentic(&p),
        Workload::Workflows => workload::workflows(&p),
        Workload::Random => workload::random(&p),
        Workload::PrefixRepetition => workload::prefix_repetition(&p),
        Workload::Trace => {
            let path = a
                .trace
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--workload trace needs --trace FILE"))?;
            workload::trace(path, a.output_len)?
        }
    };
    let arrivals = match (a.rate, a.concurrency) {
        (Some(r), _) if !(r.is_finite() && r > 0.0) => {
            anyhow::bail!("--rate must be a positive number")
        }
        (Some(r), _) => {
            workload::poisson_starts(&mut sessions, r, a.seed);
            Arrivals::Open
        }
        (None, Some(0)) => anyhow::bail!("--concurrency must be at least 1"),
        (None, Some(c)) => Arrivals::Closed(c),
        (None, None) if matches!(a.workload, Workload::Trace) => Arrivals::Open,
        (None, None) => anyhow::bail!(
            "choose an arrival process: --rate R (open loop) or --concurrency N (closed loop)"
        ),
    };
    let targets: Vec<Target> = a
        .targets
        .iter()
        .map(|(name, url)| Target {
            name: name.clone(),
            url: url.clone(),
            pid: a.pids.iter().find(|(n, _)| n == name).map(|(_, p)| *p),
        })
        .collect();
    if let Some((n, _)) = a
        .pids
        .iter()
        .find(|(n, _)| !targets.iter().any(|t| &t.name == n))
    {
        anyhow::bail!("--pid {n}=…: no target named {n}");
    }
    let cfg = CompareConfig {
        targets: targets.clone(),
        engines: a
            .engines
            .iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect(),
        model: a.model.clone(),
        arrivals,
        max_requests: a.max_requests,
        duration: Duration::from_secs(a.duration),
        request_timeout: Duration::from_secs(a.request_timeout),
        repetitions: a.repetitions,
        progress: !a.quiet,
        restarts: a
            .restarts
            .iter()
            .map(|(url, secs)| (url.clone(), Duration::from_secs(*secs)))
            .collect(),
    };
    let requests: usize = sessions.iter().map(|s| s.requests()).sum();
    eprintln!(
        "workload {:?}: {} sessions, {} requests",
        a.workload,
        sessions.len(),
        requests
    );
    let results = report::compare(&cfg, Arc::new(sessions)).await?;
    let rows = report::aggregate(&results, &targets);
    let title = format!(
        "{:?} ({} requests, {:?})",
        a.workload,
        requests.min(a.max_requests),
        arrivals
    );
    let md = report::markdown(&title, &rows);
    println!("{md}");
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::json!({"workload": format!("{:?}", a.workload), "params": p, "summary": rows, "runs": results});
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        let plots = switchyard_bench::plots::write(out, &title, &rows)?;
        std::fs::write(
            out.with_extension("md"),
            format!("{md}{}", switchyard_bench::plots::markdown(out)),
        )?;
        eprintln!(
            "wrote {}, {} and {}",
            out.with_extension("json").display(),
            out.with_extension("md").display(),
            plots.map(|p| p.display().to_string()).join(", ")
        );
    }
    Ok(())
}
