//! Workloads: seeded, deterministic request sets whose sizes are in tokens (cl100k, the
//! simulator's tokenizer). A workload is a list of sessions; a session is a sequence of
//! steps run in order (a conversation's turns, a workflow's stages), and a step is one
//! or more requests sent at once (fan-out).

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};
use switchyard_sim::tokenizer::word_tokens;

/// One request to send.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestSpec {
    /// Chat messages. In a conversational session they are appended to the history.
    /// The text `{prev}` is replaced by the previous step's outputs.
    pub messages: Vec<Value>,
    pub max_tokens: u32,
    /// Extra headers (e.g. `X-Session-ID`).
    pub headers: Vec<(String, String)>,
    /// Extra body fields (e.g. `workflow_metadata`).
    pub extra: Option<Value>,
}

/// Requests sent together, after an optional pause.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub think_secs: f64,
    pub requests: Vec<RequestSpec>,
}

/// A unit of dependent work.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Session {
    pub id: String,
    /// Open-loop start offset in seconds (set by the arrival process or a trace).
    pub start: Option<f64>,
    /// Each turn's messages extend the conversation so far (history resent).
    pub conversational: bool,
    pub steps: Vec<Step>,
}

impl Session {
    pub fn requests(&self) -> usize {
        self.steps.iter().map(|s| s.requests.len()).sum()
    }
}

/// Text of exactly `n` tokens, drawn with `rng`.
pub fn text(rng: &mut fastrand::Rng, n: usize) -> String {
    let words = word_tokens();
    (0..n).map(|_| words[rng.usize(..words.len())]).collect()
}

/// Parameters of the generated workloads (each uses the ones that apply).
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub seed: u64,
    pub output_len: u32,
    pub groups: usize,
    pub prompts_per_group: usize,
    pub system_len: usize,
    pub question_len: usize,
    pub conversations: usize,
    pub turns: usize,
    pub turn_len: usize,
    pub think_secs: f64,
    pub workflows: usize,
    pub agents: usize,
    pub context_len: usize,
    pub rounds: usize,
    pub num_requests: usize,
    pub prompt_len: usize,
    pub num_prefixes: usize,
    pub prefix_len: usize,
    pub suffix_len: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 0,
            output_len: 256,
            groups: 64,
            prompts_per_group: 16,
            system_len: 2048,
            question_len: 128,
            conversations: 32,
            turns: 8,
            turn_len: 128,
            think_secs: 1.0,
            workflows: 16,
            agents: 4,
            context_len: 4096,
            rounds: 2,
            num_requests: 1000,
            prompt_len: 1024,
            num_prefixes: 8,
            prefix_len: 2048,
            suffix_len: 128,
        }
    }
}

fn user(content: String) -> Value {
    json!({"role": "user", "content": content})
}

fn system(content: String) -> Value {
    json!({"role": "system", "content": content})
}

fn single(id: String, messages: Vec<Value>, max_tokens: u32) -> Session {
    Session {
        id,
        start: None,
        conversational: false,
        steps: vec![Step {
            think_secs: 0.0,
            requests: vec![RequestSpec {
                messages,
                max_tokens,
                headers: Vec::new(),
                extra: None,
            }],
        }],
    }
}

/// SGLang's generated-shared-prefix: `groups` system prompts, each followed by
/// `prompts_per_group` distinct questions, in a shuffled order.
pub fn shared_prefix(p: &Params) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let systems: Vec<String> = (0..p.groups)
        .map(|_| text(&mut rng, p.system_len))
        .collect();
    let mut out = Vec::with_capacity(p.groups * p.prompts_per_group);
    for (g, sys) in systems.iter().enumerate() {
        for q in 0..p.prompts_per_group {
            let msgs = vec![system(sys.clone()), user(text(&mut rng, p.question_len))];
            out.push(single(format!("g{g}-q{q}"), msgs, p.output_len));
        }
    }
    rng.shuffle(&mut out);
    out
}

/// Conversations of `turns` turns; each turn resends the history, after a think time.
pub fn multi_turn(p: &Params) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    (0..p.conversations)
        .map(|c| {
            let mut steps = Vec::with_capacity(p.turns);
            for t in 0..p.turns {
                let mut messages = Vec::new();
                if t == 0 && p.system_len > 0 {
                    messages.push(system(text(&mut rng, p.system_len)));
                }
                messages.push(user(text(&mut rng, p.turn_len)));
                let think = if t == 0 {
                    0.0
                } else {
                    p.think_secs * (0.5 + rng.f64())
                };
                steps.push(Step {
                    think_secs: think,
                    requests: vec![RequestSpec {
                        messages,
                        max_tokens: p.output_len,
                        headers: vec![("X-Session-ID".into(), format!("conv-{c}"))],
                        extra: None,
                    }],
                });
            }
            Session {
                id: format!("conv-{c}"),
                start: None,
                conversational: true,
                steps,
            }
        })
        .collect()
}

/// Agent workflows over a shared long context: a planner, then `agents` agents in
/// parallel (fan-out) on the plan, then an aggregator over their outputs.
pub fn agentic(p: &Params) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    (0..p.workflows)
        .map(|w| {
            let wf = format!("wf-{w}");
            let context = text(&mut rng, p.context_len);
            let req = |agent: &str, task: String, rng: &mut fastrand::Rng| RequestSpec {
                messages: vec![
                    system(context.clone()),
                    user(format!("{task}{}", text(rng, p.question_len))),
                ],
                max_tokens: p.output_len,
                headers: vec![("X-Session-ID".into(), wf.clone())],
                extra: Some(json!({"workflow_metadata": {"workflow_id": wf, "agent_id": agent}})),
            };
            let planner = req("planner", String::new(), &mut rng);
            let agents = (0..p.agents)
                .map(|a| req(&format!("agent-{a}"), "{prev}".into(), &mut rng))
                .collect();
            let aggregator = req("aggregator", "{prev}".into(), &mut rng);
            Session {
                id: wf.clone(),
                start: None,
                conversational: false,
                steps: vec![
                    Step {
                        think_secs: 0.0,
                        requests: vec![planner],
                    },
                    Step {
                        think_secs: 0.0,
                        requests: agents,
                    },
                    Step {
                        think_secs: 0.0,
                        requests: vec![aggregator],
                    },
                ],
            }
        })
        .collect()
}

/// Multi-agent workflows (docs/workflows.md): each has a shared briefing of
/// `context_len` tokens and `agents` agents. A round is the agents taking turns, one
/// after another, each given the previous answer, then all of them at once (a fan-out
/// burst) on the last turn's answer. `rounds` rounds per workflow. Every request carries
/// `workflow_metadata` and `X-Session-ID: <workflow>` (so `consistent_hash` keys on the
/// workflow too).
pub fn workflows(p: &Params) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    (0..p.workflows)
        .map(|w| {
            let wf = format!("wf-{w}");
            let briefing = text(&mut rng, p.context_len);
            let req = |agent: &str, rng: &mut fastrand::Rng| RequestSpec {
                messages: vec![
                    system(briefing.clone()),
                    user(format!("{{prev}}{}", text(rng, p.question_len))),
                ],
                max_tokens: p.output_len,
                headers: vec![("X-Session-ID".into(), wf.clone())],
                extra: Some(json!({"workflow_metadata": {"workflow_id": wf, "agent_id": agent}})),
            };
            let mut steps = Vec::new();
            for _ in 0..p.rounds.max(1) {
                for a in 0..p.agents {
                    steps.push(Step {
                        think_secs: 0.0,
                        requests: vec![req(&format!("agent-{a}"), &mut rng)],
                    });
                }
                steps.push(Step {
                    think_secs: 0.0,
                    requests: (0..p.agents)
                        .map(|a| req(&format!("agent-{a}"), &mut rng))
                        .collect(),
                });
            }
            Session {
                id: wf.clone(),
                start: None,
                conversational: false,
                steps,
            }
        })
        .collect()
}

/// Unique prompts: nothing shared.
pub fn random(p: &Params) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    (0..p.num_requests)
        .map(|i| {
            single(
                format!("r{i}"),
                vec![user(text(&mut rng, p.prompt_len))],
                p.output_len,
            )
        })
        .collect()
}

/// After vLLM's prefix-repetition dataset: each prompt is one of `num_prefixes` prefixes
/// followed by a unique suffix.
pub fn prefix_repetition(p: &Params) -> Vec<Session> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let prefixes: Vec<String> = (0..p.num_prefixes)
        .map(|_| text(&mut rng, p.prefix_len))
        .collect();
    (0..p.num_requests)
        .map(|i| {
            let prefix = &prefixes[rng.usize(..prefixes.len())];
            let prompt = format!("{prefix}{}", text(&mut rng, p.suffix_len));
            single(format!("pr{i}"), vec![user(prompt)], p.output_len)
        })
        .collect()
}

/// Replays a JSONL trace: one request per line with `timestamp` (seconds) and either
/// `messages` or `prompt`; optional `max_tokens` (default `default_output`) and
/// `session_id` (sent as `X-Session-ID`). A bad line is an error naming its number.
pub fn trace(path: &Path, default_output: u32) -> anyhow::Result<Vec<Session>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--trace {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| anyhow::anyhow!("--trace {} line {n}: {why}", path.display());
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let ts = v["timestamp"]
            .as_f64()
            .ok_or_else(|| bad("missing numeric `timestamp`".into()))?;
        if ts < 0.0 {
            return Err(bad("`timestamp` must not be negative".into()));
        }
        let messages = match (&v["messages"], &v["prompt"]) {
            (Value::Array(m), _) if !m.is_empty() => m.clone(),
            (_, Value::String(p)) => vec![user(p.clone())],
            _ => {
                return Err(bad(
                    "needs a non-empty `messages` array or a `prompt` string".into(),
                ));
            }
        };
        let max_tokens = match &v["max_tokens"] {
            Value::Null => default_output,
            m => m
                .as_u64()
                .filter(|m| *m > 0)
                .ok_or_else(|| bad("`max_tokens` must be a positive integer".into()))?
                as u32,
        };
        let headers = v["session_id"]
            .as_str()
            .map(|s| vec![("X-Session-ID".to_string(), s.to_string())])
            .unwrap_or_default();
        let mut s = single(format!("line-{n}"), messages, max_tokens);
        s.start = Some(ts);
        s.steps[0].requests[0].headers = headers;
        out.push(s);
    }
    if out.is_empty() {
        anyhow::bail!("--trace {}: no requests", path.display());
    }
    Ok(out)
}

/// Assigns Poisson arrival offsets (rate in sessions per second) to sessions that have none.
pub fn poisson_starts(sessions: &mut [Session], rate: f64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xA11_1CE);
    let mut t = 0.0;
    for s in sessions.iter_mut().filter(|s| s.start.is_none()) {
        s.start = Some(t);
        t += -(1.0 - rng.f64()).ln() / rate;
    }
}
