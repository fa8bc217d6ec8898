//! Cost of the keyword intent classifier per prompt, with the example configuration's
//! keywords (bench/configs/intent-keywords.yaml: ~80 words and regexes over three
//! intents), for 1 KB and 16 KB prompts of English prose with a few keywords in them;
//! and of taking the text to classify out of a chat request body.
//!
//! cargo bench -p switchyard --bench classify

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchyard::Config;
use switchyard::config::intent::ClassifyText;
use switchyard::selection::classify::keywords::Keywords;
use switchyard::selection::classify::text_of;

fn classifier() -> Keywords {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/configs/intent-keywords.yaml"
    );
    let cfg: Config =
        yaml_serde::from_str(&std::fs::read_to_string(path).expect("example config")).unwrap();
    cfg.validate_selection().expect("valid");
    let ir = cfg.intent_routing.expect("intent_routing");
    let default = ir.intents.values().position(|i| i.default).unwrap();
    Keywords::new(ir.intents.iter(), default).expect("compiles")
}

/// `bytes` of prose: a question about a failing program, repeated.
fn prompt(bytes: usize) -> String {
    let para = "I have been working on a small service that reads events from a queue and \
        writes summaries to a database. Since yesterday the nightly job fails with an \
        exception that I cannot explain, and the logs only show a stack trace from the \
        driver. Could you look at what might cause this and suggest how to debug it? ";
    let mut s = para.repeat(bytes / para.len() + 1);
    s.truncate(bytes);
    s
}

fn classify(c: &mut Criterion) {
    let k = classifier();
    let mut g = c.benchmark_group("keywords");
    for kb in [1usize, 16] {
        let text = prompt(kb * 1024);
        assert_eq!(k.score(&text).intent, 0, "the prompt reads as code");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("classify", format!("{kb}KB")),
            &text,
            |b, t| b.iter(|| black_box(k.score(black_box(t)))),
        );
        let body = serde_json::to_vec(&serde_json::json!({"model": "auto", "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": text}]}))
        .unwrap();
        g.bench_with_input(
            BenchmarkId::new("text_of", format!("{kb}KB")),
            &body,
            |b, body| b.iter(|| black_box(text_of(black_box(body), ClassifyText::LastUser))),
        );
    }
    g.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
