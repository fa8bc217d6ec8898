//! precise_prefix's costs: tokenising a request at the gateway (chat template + BPE +
//! token-block hashes), and ingesting engines' KV events into the index.
//!
//! cargo bench -p switchyard --bench kv

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use switchyard::config::Config;
use switchyard::fleet::{WorkerId, WorkerRole};
use switchyard::metrics::Metrics;
use switchyard::routing::kv::KvState;
use switchyard::routing::kv::subscriber::Source;
use switchyard::routing::kv::wire::{Batch, Event};

fn state() -> KvState {
    KvState::new(&Config::default(), Arc::new(Metrics::new()))
}

/// A chat request with a system prompt of about `words` tokens.
fn chat(words: usize) -> Vec<u8> {
    let system: Vec<String> = (0..words).map(|i| format!("w{}", i % 5000)).collect();
    json!({"model": "m", "messages": [
        {"role": "system", "content": system.join(" ")},
        {"role": "user", "content": "What does the policy say about refunds?"}]})
    .to_string()
    .into_bytes()
}

fn tokenize(c: &mut Criterion) {
    let s = state();
    let cfg = Config::default();
    let t = s
        .tokenizer(&cfg.kv_tokenizer, &cfg.kv_chat_template)
        .expect("the default tokenizer loads");
    for words in [100, 1000, 4000] {
        let body = chat(words);
        assert!(!s.token_blocks_of(&t, &body).is_empty());
        // Named by the prompt's real length in tokens (template included).
        let tokens = t
            .request_tokens(&serde_json::from_slice(&body).unwrap())
            .unwrap()
            .len();
        c.bench_function(&format!("kv/tokenize/chat_{tokens}_tokens"), |b| {
            b.iter(|| black_box(s.token_blocks_of(&t, black_box(&body))))
        });
    }
}

/// One message storing 16 blocks of 16 tokens, then 16 messages removing one block
/// each (vLLM sends one `BlockRemoved` per block): 17 events, the index back where it
/// started.
fn ingest(c: &mut Criterion) {
    let s = state();
    let m = Metrics::new();
    let worker = WorkerId {
        url: "http://127.0.0.1:1".into(),
        dp_rank: None,
        role: WorkerRole::Regular,
    };
    let mut src = Source::new(worker, 1 << 22);
    let tokens: Vec<u32> = (0..256).collect();
    let hashes: Vec<u64> = (1..=16).collect();
    let store = Batch {
        ts: 0.0,
        events: vec![Event::Stored {
            hashes: hashes.clone(),
            parent: None,
            tokens,
            block_size: 16,
        }],
        dp_rank: Some(0),
    };
    let removes: Vec<Batch> = hashes
        .iter()
        .map(|h| Batch {
            ts: 0.0,
            events: vec![Event::Removed { hashes: vec![*h] }],
            dp_rank: Some(0),
        })
        .collect();
    let mut seq = 0u64;
    c.bench_function("kv/ingest/store_16_blocks_then_16_removals", |b| {
        b.iter(|| {
            src.apply(&s, &m, seq, black_box(&store));
            seq += 1;
            for r in &removes {
                src.apply(&s, &m, seq, black_box(r));
                seq += 1;
            }
        })
    });
    assert!(src.is_empty());
}

criterion_group!(benches, tokenize, ingest);
criterion_main!(benches);
