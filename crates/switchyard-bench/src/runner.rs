//! Runs a workload against one target: open loop (sessions start at their offsets) or
//! closed loop (a fixed number of sessions in flight), bounded by a request count and
//! wall time. Every request streams, so time to first token and inter-token latency are
//! measured at the client.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

use crate::workload::{RequestSpec, Session};

/// How sessions are started.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Arrivals {
    /// Each session starts at its `start` offset.
    Open,
    /// This many sessions run at once.
    Closed(usize),
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub name: String,
    pub url: String,
    pub model: String,
    pub arrivals: Arrivals,
    pub max_requests: usize,
    pub duration: Duration,
    pub request_timeout: Duration,
    /// A progress bar on stderr when it is a terminal (a summary line when it is not).
    pub progress: bool,
}

/// One request's outcome (seconds).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// HTTP status, or 0 when the request failed at the transport.
    pub status: u16,
    pub ttft: Option<f64>,
    pub itl: Vec<f64>,
    pub e2e: f64,
    pub output_tokens: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Offset from the run's start at which it was sent.
    pub sent_at: f64,
    /// The messages sent and the text received (for the oracle).
    #[serde(skip)]
    pub messages: Vec<Value>,
    #[serde(skip)]
    pub output: String,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct RunOutput {
    pub samples: Vec<Sample>,
    pub wall_secs: f64,
    /// Requests still unanswered when the time bound cut the run.
    pub cut: usize,
    /// Seconds from the first request of each session (conversation, workflow) that
    /// ran to the end until its last answer.
    pub session_secs: Vec<f64>,
}

struct Shared {
    cfg: RunConfig,
    client: reqwest::Client,
    started: Instant,
    deadline: Instant,
    sent: AtomicUsize,
    done: AtomicUsize,
    errors: AtomicUsize,
    samples: Mutex<Vec<Sample>>,
    session_secs: Mutex<Vec<f64>>,
    /// The target's replicas (`url` split at commas), used in turn.
    urls: Vec<String>,
    next_url: AtomicUsize,
}

impl Shared {
    fn may_send(&self) -> bool {
        Instant::now() < self.deadline && self.sent.load(Ordering::Relaxed) < self.cfg.max_requests
    }
}

/// Runs `sessions` against the target.
pub async fn run(cfg: RunConfig, sessions: Arc<Vec<Session>>) -> RunOutput {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(cfg.request_timeout)
        .build()
        .expect("building the HTTP client");
    let started = Instant::now();
    let shared = Arc::new(Shared {
        deadline: started + cfg.duration,
        cfg: cfg.clone(),
        client,
        started,
        sent: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        samples: Mutex::new(Vec::new()),
        session_secs: Mutex::new(Vec::new()),
        urls: cfg.url.split(',').map(str::to_string).collect(),
        next_url: AtomicUsize::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    match cfg.arrivals {
        Arrivals::Open => {
            for (i, s) in sessions.iter().enumerate() {
                let (shared, sessions) = (shared.clone(), sessions.clone());
                let at = started + Duration::from_secs_f64(s.start.unwrap_or(0.0));
                if at >= shared.deadline {
                    break;
                }
                tasks.spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    run_session(&shared, &sessions[i]).await;
                });
            }
        }
        Arrivals::Closed(n) => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..n.max(1) {
                let (shared, sessions, next) = (shared.clone(), sessions.clone(), next.clone());
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= sessions.len() || !shared.may_send() {
                            return;
                        }
                        run_session(&shared, &sessions[i]).await;
                    }
                });
            }
        }
    }
    // The requests this run can send at most: the bar's length.
    let planned = sessions
        .iter()
        .map(Session::requests)
        .sum::<usize>()
        .min(cfg.max_requests);
    let progress = cfg.progress.then(|| {
        let bar = progress_bar(&cfg.name, planned as u64);
        let (shared, b) = (shared.clone(), bar.clone());
        // Redraws five times a second, off the request path (the senders only bump
        // counters). Nothing waits on it: the bar is brought up to date once more
        // after the run, and no test looks at it in between.
        let ticker = tokio::spawn(async move {
            let mut redraw = tokio::time::interval(Duration::from_millis(200));
            redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                redraw.tick().await;
                update_bar(&b, &shared);
            }
        });
        (bar, ticker)
    });
    // Hard bound: the duration, plus one request timeout for answers in flight.
    let bound = cfg.duration + cfg.request_timeout;
    let finished =
        tokio::time::timeout(bound, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        update_bar(&bar, &shared);
        if bar.is_hidden() {
            // Not a terminal (a log file, CI): one line per run instead of a bar.
            eprintln!(
                "[{}] {:.1}s  sent {}  done {}  errors {}",
                cfg.name,
                shared.started.elapsed().as_secs_f64(),
                shared.sent.load(Ordering::Relaxed),
                shared.done.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
            );
        } else {
            bar.finish();
        }
    }
    let samples = std::mem::take(&mut *shared.samples.lock().expect("samples lock"));
    let cut = if finished.is_err() {
        shared
            .sent
            .load(Ordering::Relaxed)
            .saturating_sub(samples.len())
    } else {
        0
    };
    RunOutput {
        wall_secs: started.elapsed().as_secs_f64(),
        samples,
        cut,
        session_secs: std::mem::take(&mut *shared.session_secs.lock().expect("sessions lock")),
    }
}

/// A bar of the run's answered requests on stderr; hidden (drawing nothing) when
/// stderr is not a terminal, so that logs get no control characters.
fn progress_bar(name: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} answered  {msg}  (eta {eta})",
        )
        .expect("a valid progress template"),
    );
    bar.set_prefix(name.to_string());
    bar
}

fn update_bar(bar: &ProgressBar, s: &Shared) {
    bar.set_position(s.done.load(Ordering::Relaxed) as u64);
    bar.set_message(format!(
        "sent {}  errors {}",
        s.sent.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed)
    ));
}

async fn run_session(shared: &Shared, session: &Session) {
    let began = Instant::now();
    let mut history: Vec<Value> = Vec::new();
    let mut prev_outputs: Vec<String> = Vec::new();
    for step in &session.steps {
        if step.think_secs > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(step.think_secs)).await;
        }
        let mut batch = Vec::new();
        for spec in &step.requests {
            if !shared.may_send() {
                return;
            }
            shared.sent.fetch_add(1, Ordering::Relaxed);
            let prev = prev_outputs.join("\n");
            let mut messages = if session.conversational {
                history.clone()
            } else {
                Vec::new()
            };
            messages.extend(spec.messages.iter().map(|m| substitute(m, &prev)));
            batch.push(send(shared, spec, messages));
        }
        let results = futures_util::future::join_all(batch).await;
        prev_outputs.clear();
        let mut failed = false;
        for (sample, text) in results {
            failed |= sample.status != 200;
            if session.conversational {
                history = sample.messages.clone();
                history.push(json!({"role": "assistant", "content": text}));
            }
            prev_outputs.push(text);
            shared.samples.lock().expect("samples lock").push(sample);
        }
        if failed {
            return; // a broken conversation does not go on
        }
    }
    shared
        .session_secs
        .lock()
        .expect("sessions lock")
        .push(began.elapsed().as_secs_f64());
}

fn substitute(m: &Value, prev: &str) -> Value {
    match m {
        Value::String(s) if s.contains("{prev}") => Value::String(s.replace("{prev}", prev)),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), substitute(v, prev)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Sends one streaming chat request and measures it. Returns the sample and the text.
async fn send(shared: &Shared, spec: &RequestSpec, messages: Vec<Value>) -> (Sample, String) {
    let cfg = &shared.cfg;
    let mut body = json!({
        "model": cfg.model,
        "messages": messages,
        "max_tokens": spec.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let (Some(Value::Object(extra)), Some(obj)) = (&spec.extra, body.as_object_mut()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    let start = Instant::now();
    let mut sample = Sample {
        sent_at: start.duration_since(shared.started).as_secs_f64(),
        messages,
        ..Sample::default()
    };
    let mut req = shared
        .client
        .post(format!(
            "{}/v1/chat/completions",
            shared.urls[shared.next_url.fetch_add(1, Ordering::Relaxed) % shared.urls.len()]
        ))
        .json(&body);
    for (k, v) in &spec.headers {
        req = req.header(k, v);
    }
    let mut text = String::new();
    match req.send().await {
        Err(_) => sample.status = 0,
        Ok(resp) => {
            sample.status = resp.status().as_u16();
            if sample.status == 200 {
                if read_stream(resp, start, &mut sample, &mut text)
                    .await
                    .is_err()
                {
                    sample.status = 0;
                }
            } else {
                let _ = resp.bytes().await;
            }
        }
    }
    sample.e2e = start.elapsed().as_secs_f64();
    sample.output = text.clone();
    shared.done.fetch_add(1, Ordering::Relaxed);
    if sample.status != 200 {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
    (sample, text)
}

async fn read_stream(
    resp: reqwest::Response,
    start: Instant,
    sample: &mut Sample,
    text: &mut String,
) -> Result<(), ()> {
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Option<Instant> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let Some(data) = event.strip_prefix(b"data: ") else {
                continue;
            };
            let data = &data[..data.len() - 2];
            if data == b"[DONE]" {
                return Ok(());
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                sample.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
                sample.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
                sample.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0);
            }
            let content = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !content.is_empty() {
                let now = Instant::now();
                match last {
                    None => sample.ttft = Some(now.duration_since(start).as_secs_f64()),
                    Some(prev) => sample.itl.push(now.duration_since(prev).as_secs_f64()),
                }
                last = Some(now);
                text.push_str(content);
            }
        }
    }
    Ok(())
}

/// Counts of samples by status (`error` for transport failures).
pub fn by_status(samples: &[Sample]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in samples {
        let k = if s.status == 0 {
            "error".to_string()
        } else {
            s.status.to_string()
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}
