//! Workload generators are deterministic and have the documented shapes, in tokens.

use std::io::Write;

use serde_json::Value;
use switchyard_bench::workload::{self, Params};
use switchyard_sim::tokenizer::encode;

fn content(m: &Value) -> &str {
    m["content"].as_str().unwrap()
}

fn small() -> Params {
    Params {
        groups: 4,
        prompts_per_group: 3,
        system_len: 300,
        question_len: 20,
        conversations: 3,
        turns: 4,
        turn_len: 30,
        workflows: 2,
        agents: 3,
        context_len: 200,
        num_requests: 10,
        prompt_len: 50,
        num_prefixes: 2,
        prefix_len: 100,
        suffix_len: 10,
        ..Params::default()
    }
}

#[test]
fn generators_are_deterministic_for_a_seed() {
    let p = small();
    assert_eq!(workload::shared_prefix(&p), workload::shared_prefix(&p));
    assert_eq!(workload::multi_turn(&p), workload::multi_turn(&p));
    assert_eq!(workload::agentic(&p), workload::agentic(&p));
    assert_eq!(workload::random(&p), workload::random(&p));
    assert_eq!(
        workload::prefix_repetition(&p),
        workload::prefix_repetition(&p)
    );
    let other = Params { seed: 1, ..small() };
    assert_ne!(workload::shared_prefix(&p), workload::shared_prefix(&other));
}

#[test]
fn shared_prefix_has_groups_of_prompts_sharing_exact_token_prefixes() {
    let p = small();
    let w = workload::shared_prefix(&p);
    assert_eq!(w.len(), 12);
    let mut by_system = std::collections::HashMap::new();
    for s in &w {
        assert_eq!(s.requests(), 1);
        let r = &s.steps[0].requests[0];
        assert_eq!(r.max_tokens, p.output_len);
        let sys = content(&r.messages[0]);
        assert_eq!(encode(sys).len(), 300, "system prompt tokens");
        assert_eq!(encode(content(&r.messages[1])).len(), 20, "question tokens");
        *by_system.entry(sys.to_string()).or_insert(0) += 1;
    }
    assert_eq!(by_system.len(), 4);
    assert!(by_system.values().all(|n| *n == 3));
    // Interleaved, not grouped: the first four requests are not all from one group.
    let first: std::collections::HashSet<_> = w[..4]
        .iter()
        .map(|s| content(&s.steps[0].requests[0].messages[0]).to_string())
        .collect();
    assert!(first.len() > 1);
}

#[test]
fn multi_turn_conversations_resend_history() {
    let p = small();
    let w = workload::multi_turn(&p);
    assert_eq!(w.len(), 3);
    for s in &w {
        assert!(s.conversational);
        assert_eq!(s.steps.len(), 4);
        assert_eq!(
            s.steps[0].requests[0].messages.len(),
            2,
            "system + first user turn"
        );
        assert!(
            s.steps[1..]
                .iter()
                .all(|st| st.requests[0].messages.len() == 1 && st.think_secs > 0.0)
        );
        assert_eq!(
            encode(content(&s.steps[2].requests[0].messages[0])).len(),
            30
        );
        assert_eq!(s.steps[0].requests[0].headers[0].0, "X-Session-ID");
    }
}

#[test]
fn agentic_workflows_fan_out_over_a_shared_context() {
    let p = small();
    let w = workload::agentic(&p);
    assert_eq!(w.len(), 2);
    let wf = &w[0];
    assert_eq!(
        wf.steps
            .iter()
            .map(|s| s.requests.len())
            .collect::<Vec<_>>(),
        [1, 3, 1]
    );
    let ctx = content(&wf.steps[0].requests[0].messages[0]);
    assert_eq!(encode(ctx).len(), 200);
    for step in &wf.steps {
        for r in &step.requests {
            assert_eq!(
                content(&r.messages[0]),
                ctx,
                "every agent sees the shared context"
            );
            assert_eq!(
                r.extra.as_ref().unwrap()["workflow_metadata"]["workflow_id"],
                wf.id.as_str()
            );
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| k == "X-Session-ID" && v == &wf.id)
            );
        }
    }
    assert!(content(&wf.steps[1].requests[0].messages[1]).starts_with("{prev}"));
}

#[test]
fn random_and_prefix_repetition_shapes() {
    let p = small();
    let r = workload::random(&p);
    assert_eq!(r.len(), 10);
    assert!(
        r.iter()
            .all(|s| encode(content(&s.steps[0].requests[0].messages[0])).len() == 50)
    );
    let pr = workload::prefix_repetition(&p);
    assert_eq!(pr.len(), 10);
    let prefixes: std::collections::HashSet<String> = pr
        .iter()
        .map(|s| {
            let t = encode(content(&s.steps[0].requests[0].messages[0]));
            assert_eq!(t.len(), 110);
            format!("{:?}", &t[..100])
        })
        .collect();
    assert!(prefixes.len() <= 2);
}

#[test]
fn poisson_arrivals_are_increasing_with_the_right_mean() {
    let mut w = workload::random(&Params {
        num_requests: 2000,
        prompt_len: 1,
        ..small()
    });
    workload::poisson_starts(&mut w, 100.0, 0);
    let starts: Vec<f64> = w.iter().map(|s| s.start.unwrap()).collect();
    assert!(starts.windows(2).all(|p| p[1] >= p[0]));
    let mean_gap = starts.last().unwrap() / 1999.0;
    assert!((mean_gap - 0.01).abs() < 0.002, "{mean_gap}");
}

#[test]
fn trace_replay_and_bad_lines() {
    let dir = std::env::temp_dir();
    let good = dir.join(format!("sy-trace-{}.jsonl", std::process::id()));
    let mut f = std::fs::File::create(&good).unwrap();
    writeln!(
        f,
        r#"{{"timestamp": 0.0, "prompt": "hello", "max_tokens": 5}}"#
    )
    .unwrap();
    writeln!(f).unwrap();
    writeln!(f, r#"{{"timestamp": 1.5, "messages": [{{"role": "user", "content": "hi"}}], "session_id": "s1"}}"#).unwrap();
    let w = workload::trace(&good, 64).unwrap();
    assert_eq!(w.len(), 2);
    assert_eq!(w[1].start, Some(1.5));
    assert_eq!(w[0].steps[0].requests[0].max_tokens, 5);
    assert_eq!(w[1].steps[0].requests[0].max_tokens, 64);
    assert_eq!(
        w[1].steps[0].requests[0].headers,
        [("X-Session-ID".to_string(), "s1".to_string())]
    );

    for (line, why) in [
        ("{not json", "not JSON"),
        (r#"{"prompt": "x"}"#, "timestamp"),
        (r#"{"timestamp": 1}"#, "messages"),
        (
            r#"{"timestamp": 1, "prompt": "x", "max_tokens": 0}"#,
            "max_tokens",
        ),
    ] {
        let bad = dir.join(format!("sy-trace-bad-{}.jsonl", std::process::id()));
        std::fs::write(
            &bad,
            format!("{{\"timestamp\": 0, \"prompt\": \"ok\"}}\n{line}\n"),
        )
        .unwrap();
        let err = workload::trace(&bad, 8).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains(why), "{err}");
    }
}
