//! `--workload sessions`: multi-turn conversations through a gateway's `POST /route`.
//! Each conversation opens on one of the six default use cases and continues with
//! follow-ups; at each follow-up it changes to another use case with probability
//! `--topic-change-rate` (the client's truth). From the answers the report counts how
//! often the gateway bypassed classification, how many real changes it caught (routed
//! afresh, and to the right use case), how many unchanged follow-ups it re-routed
//! needlessly, and the gateway-side routing time of bypassed and fully routed turns.
//!
//! Queries are written for the default use cases (docs/route-api.md): openings carry
//! the subject's words and, for audio, image and video subjects, the modality hint a
//! client would send; follow-ups are mostly subject-neutral ("make it shorter"), some
//! repeat a word of the subject.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{Summary, summarize};

/// A subject: its use case, modality hint, openings and on-subject follow-ups.
struct Subject {
    use_case: &'static str,
    modality: Option<&'static str>,
    openings: &'static [&'static str],
    follow_ups: &'static [&'static str],
}

const SUBJECTS: &[Subject] = &[
    Subject {
        use_case: "agent",
        modality: None,
        openings: &[
            "Write a Python function that merges two sorted lists",
            "Draft an email to the team about Friday's release",
            "Explain how this SQL query works and fix the bug in it",
            "Plan the steps to migrate our API to a new framework",
            "Write a blog article about remote work",
            "Refactor this JavaScript code so it is easier to test",
        ],
        follow_ups: &[
            "Add error handling to that function",
            "Now write the unit tests for the code",
            "Make the email more formal",
        ],
    },
    Subject {
        use_case: "avatar",
        modality: None,
        openings: &[
            "Have the avatar greet visitors at the front desk",
            "Make the talking head present our new product",
            "Give the virtual assistant a cheerful persona",
            "Let the presenter character welcome the audience",
        ],
        follow_ups: &[
            "Make the avatar smile more",
            "Change the persona to a pirate",
        ],
    },
    Subject {
        use_case: "speech_to_text",
        modality: Some("audio"),
        openings: &[
            "Transcribe this recording",
            "Turn the voicemail into a transcript",
            "Write captions for the speech in this clip of audio",
            "Make a transcription of the interview recording",
        ],
        follow_ups: &[
            "Transcribe the second recording too",
            "Add timestamps to the transcript",
        ],
    },
    Subject {
        use_case: "text_to_speech",
        modality: None,
        openings: &[
            "Read this paragraph aloud",
            "Narrate the story in a calm voice",
            "Turn this text into speech",
            "Say this welcome message in a warm voice",
        ],
        follow_ups: &["Narrate it more slowly", "Use a deeper voice"],
    },
    Subject {
        use_case: "multimodal_rag",
        modality: Some("image"),
        openings: &[
            "What does the chart in this screenshot show?",
            "Find the total in the scanned document",
            "Describe the diagram in the PDF",
            "What is in this photo?",
        ],
        follow_ups: &[
            "And what does the second chart show?",
            "Which figure in the document is wrong?",
        ],
    },
    Subject {
        use_case: "video_understanding",
        modality: Some("video"),
        openings: &[
            "What happens in this video?",
            "Find the scene where the car appears in the footage",
            "Summarize this clip",
            "At which timestamp does the speaker leave the frame?",
        ],
        follow_ups: &["And in the next scene?", "How long is the clip?"],
    },
];

/// Follow-ups that fit any subject.
const NEUTRAL: &[&str] = &[
    "Make it shorter",
    "Can you add more detail?",
    "Why?",
    "Give me another version",
    "And the second part?",
    "Thanks, continue",
    "Now do the same for the rest",
    "That is not quite right, try again",
    "Summarize what we have so far",
    "What would you change?",
];

/// How the sessions workload runs.
#[derive(Clone, Debug, Serialize)]
pub struct SessionsParams {
    pub seed: u64,
    pub conversations: usize,
    pub turns: usize,
    pub users: usize,
    pub topic_change_rate: f64,
    /// Share of follow-ups that repeat a word of the subject (the rest are neutral).
    pub on_subject_rate: f64,
    pub concurrency: usize,
    pub max_tokens: u32,
    pub duration: Duration,
    pub timeout: Duration,
}

/// One turn as sent, with the client's truth.
#[derive(Clone, Debug)]
struct Turn {
    query: &'static str,
    modality: Option<&'static str>,
    use_case: &'static str,
    /// This follow-up moved to another subject.
    changed: bool,
}

/// A conversation's turns, seeded.
fn conversation(rng: &mut fastrand::Rng, p: &SessionsParams) -> Vec<Turn> {
    let mut at = rng.usize(..SUBJECTS.len());
    let pick = |rng: &mut fastrand::Rng, xs: &[&'static str]| xs[rng.usize(..xs.len())];
    let s = &SUBJECTS[at];
    let mut out = vec![Turn {
        query: pick(rng, s.openings),
        modality: s.modality,
        use_case: s.use_case,
        changed: false,
    }];
    for _ in 1..p.turns {
        if rng.f64() < p.topic_change_rate {
            at = (at + 1 + rng.usize(..SUBJECTS.len() - 1)) % SUBJECTS.len();
            let s = &SUBJECTS[at];
            out.push(Turn {
                query: pick(rng, s.openings),
                modality: s.modality,
                use_case: s.use_case,
                changed: true,
            });
        } else {
            let s = &SUBJECTS[at];
            let query = if rng.f64() < p.on_subject_rate {
                pick(rng, s.follow_ups)
            } else {
                pick(rng, NEUTRAL)
            };
            out.push(Turn {
                query,
                modality: s.modality,
                use_case: s.use_case,
                changed: false,
            });
        }
    }
    out
}

/// What one turn got.
#[derive(Clone, Debug, Default)]
struct Outcome {
    ok: bool,
    bypass: bool,
    use_case: String,
    routing_ms: f64,
    total_ms: f64,
    first: bool,
    changed: bool,
    truth: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct SessionsReport {
    pub params: Option<SessionsParams>,
    pub turns: usize,
    pub failed: usize,
    pub follow_ups: usize,
    /// Bypassed turns over all turns (first turns included: they cannot bypass).
    pub bypass_rate_percent: f64,
    /// Bypassed follow-ups over follow-ups.
    pub follow_up_bypass_rate_percent: f64,
    pub first_turn_accuracy_percent: f64,
    pub real_changes: usize,
    /// Real changes routed afresh.
    pub changes_caught_percent: f64,
    /// Real changes routed afresh to the right use case.
    pub changes_routed_right_percent: f64,
    pub unchanged_follow_ups: usize,
    /// Unchanged follow-ups routed afresh anyway.
    pub needless_reroutes_percent: f64,
    /// Gateway-side `routing_time`, ms.
    pub routing_ms_bypass: Summary,
    pub routing_ms_full: Summary,
    /// Client-side round trip, ms.
    pub total_ms: Summary,
    pub wall_secs: f64,
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        (1e4 * n as f64 / d as f64).round() / 100.0
    }
}

/// Runs the conversations against `url` (closed loop, `concurrency` at once).
pub async fn run(url: &str, p: &SessionsParams) -> anyhow::Result<SessionsReport> {
    let client = reqwest::Client::builder().timeout(p.timeout).build()?;
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let convs: Vec<(String, Vec<Turn>)> = (0..p.conversations)
        .map(|i| {
            (
                format!("user-{}", i % p.users.max(1)),
                conversation(&mut rng, p),
            )
        })
        .collect();
    let convs = Arc::new(convs);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + p.duration;
    let mut tasks = Vec::new();
    for _ in 0..p.concurrency.max(1) {
        let (client, convs, next) = (client.clone(), convs.clone(), next.clone());
        let url = format!("{}/route", url.trim_end_matches('/'));
        let max_tokens = p.max_tokens;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= convs.len() || Instant::now() >= deadline {
                    return out;
                }
                let (user, turns) = &convs[i];
                let mut session: Option<String> = None;
                for (k, t) in turns.iter().enumerate() {
                    let mut body =
                        json!({"query": t.query, "user_id": user, "max_tokens": max_tokens});
                    if let Some(m) = t.modality {
                        body["modality"] = json!(m);
                    }
                    if let Some(s) = &session {
                        body["session_id"] = json!(s);
                    }
                    let sent = Instant::now();
                    let answer: Option<Value> = match client.post(&url).json(&body).send().await {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                    let total_ms = sent.elapsed().as_secs_f64() * 1e3;
                    let mut o = Outcome {
                        first: k == 0,
                        changed: t.changed,
                        truth: t.use_case,
                        total_ms,
                        ..Outcome::default()
                    };
                    if let Some(a) = answer.filter(|a| a["success"] == true) {
                        o.ok = true;
                        o.bypass = a["bypass_used"] == true;
                        o.use_case = a["use_case"].as_str().unwrap_or_default().to_string();
                        o.routing_ms = a["routing_time"].as_f64().unwrap_or(0.0);
                        if let Some(s) = a["session_id"].as_str() {
                            session = Some(s.to_string());
                        }
                    }
                    out.push(o);
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await?);
    }
    let wall_secs = start.elapsed().as_secs_f64();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let follow: Vec<&&Outcome> = ok.iter().filter(|o| !o.first).collect();
    let firsts: Vec<&&Outcome> = ok.iter().filter(|o| o.first).collect();
    let changes: Vec<&&&Outcome> = follow.iter().filter(|o| o.changed).collect();
    let same: Vec<&&&Outcome> = follow.iter().filter(|o| !o.changed).collect();
    let times = |bypass: bool| -> Vec<f64> {
        ok.iter()
            .filter(|o| o.bypass == bypass)
            .map(|o| o.routing_ms)
            .collect()
    };
    Ok(SessionsReport {
        params: Some(p.clone()),
        turns: outcomes.len(),
        failed: outcomes.len() - ok.len(),
        follow_ups: follow.len(),
        bypass_rate_percent: pct(ok.iter().filter(|o| o.bypass).count(), ok.len()),
        follow_up_bypass_rate_percent: pct(
            follow.iter().filter(|o| o.bypass).count(),
            follow.len(),
        ),
        first_turn_accuracy_percent: pct(
            firsts.iter().filter(|o| o.use_case == o.truth).count(),
            firsts.len(),
        ),
        real_changes: changes.len(),
        changes_caught_percent: pct(changes.iter().filter(|o| !o.bypass).count(), changes.len()),
        changes_routed_right_percent: pct(
            changes
                .iter()
                .filter(|o| !o.bypass && o.use_case == o.truth)
                .count(),
            changes.len(),
        ),
        unchanged_follow_ups: same.len(),
        needless_reroutes_percent: pct(same.iter().filter(|o| !o.bypass).count(), same.len()),
        routing_ms_bypass: summarize(&times(true)),
        routing_ms_full: summarize(&times(false)),
        total_ms: summarize(&ok.iter().map(|o| o.total_ms).collect::<Vec<_>>()),
        wall_secs,
    })
}

impl SessionsReport {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| turns | failed | bypass % (all turns) | bypass % (follow-ups) | first-turn accuracy % | real changes | caught % | routed right % | needless re-routes % |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|\n");
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} |\n\n",
            self.turns,
            self.failed,
            self.bypass_rate_percent,
            self.follow_up_bypass_rate_percent,
            self.first_turn_accuracy_percent,
            self.real_changes,
            self.changes_caught_percent,
            self.changes_routed_right_percent,
            self.needless_reroutes_percent,
        ));
        s.push_str(
            "| routing time (gateway), ms | n | p50 | p99 | mean |\n|---|---|---|---|---|\n",
        );
        for (name, x) in [
            ("bypass", &self.routing_ms_bypass),
            ("full", &self.routing_ms_full),
        ] {
            s.push_str(&format!(
                "| {name} | {} | {:.3} | {:.3} | {:.3} |\n",
                x.count, x.p50, x.p99, x.mean
            ));
        }
        s.push_str(&format!(
            "\nclient round trip: p50 {:.2} ms, p99 {:.2} ms; wall {:.1} s\n",
            self.total_ms.p50, self.total_ms.p99, self.wall_secs
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rate: f64) -> SessionsParams {
        SessionsParams {
            seed: 7,
            conversations: 200,
            turns: 6,
            users: 10,
            topic_change_rate: rate,
            on_subject_rate: 0.3,
            concurrency: 1,
            max_tokens: 8,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn conversations_change_subject_at_the_configured_rate() {
        let p = params(0.2);
        let mut rng = fastrand::Rng::with_seed(p.seed);
        let convs: Vec<Vec<Turn>> = (0..p.conversations)
            .map(|_| conversation(&mut rng, &p))
            .collect();
        let follow_ups = p.conversations * (p.turns - 1);
        let changes = convs.iter().flatten().filter(|t| t.changed).count();
        let rate = changes as f64 / follow_ups as f64;
        assert!((0.15..0.25).contains(&rate), "{rate}");
        // A change always lands on another subject, and the first turn never changes.
        for c in &convs {
            assert!(!c[0].changed);
            for w in c.windows(2) {
                if w[1].changed {
                    assert_ne!(w[0].use_case, w[1].use_case);
                } else {
                    assert_eq!(w[0].use_case, w[1].use_case);
                }
            }
        }
        let mut again = fastrand::Rng::with_seed(p.seed);
        assert_eq!(conversation(&mut again, &p)[0].query, convs[0][0].query);
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(
            conversation(&mut rng, &params(0.0))
                .iter()
                .all(|t| !t.changed)
        );
    }
}
