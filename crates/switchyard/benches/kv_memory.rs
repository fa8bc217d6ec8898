//! Memory of the KV-event index: the resident-set growth of storing one million blocks
//! (62,500 `BlockStored` events of 16 blocks, spread over 4 workers), index and the
//! per-worker engine-hash maps together. Three runs, each in a fresh index.
//!
//! cargo bench -p switchyard --bench kv_memory

use std::sync::Arc;

use switchyard::config::Config;
use switchyard::fleet::{WorkerId, WorkerRole};
use switchyard::metrics::Metrics;
use switchyard::routing::kv::KvState;
use switchyard::routing::kv::subscriber::Source;
use switchyard::routing::kv::wire::{Batch, Event};

/// Resident set size in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const BLOCKS: u64 = 1_000_000;

fn main() {
    for run in 1..=3 {
        let s = KvState::new(&Config::default(), Arc::new(Metrics::new()));
        let m = Metrics::new();
        let mut sources: Vec<Source> = (0..4)
            .map(|i| {
                Source::new(
                    WorkerId {
                        url: format!("http://127.0.0.1:{}", 9000 + i),
                        dp_rank: None,
                        role: WorkerRole::Regular,
                    },
                    1 << 24,
                )
            })
            .collect();
        let before = rss();
        let mut seq = [0u64; 4];
        let started = std::time::Instant::now();
        for e in 0..BLOCKS / 16 {
            let w = (e % 4) as usize;
            let tokens: Vec<u32> = (0..256).map(|t| (e * 256 + t) as u32).collect();
            let hashes: Vec<u64> = (0..16).map(|b| e * 16 + b + 1).collect();
            let batch = Batch {
                ts: 0.0,
                events: vec![Event::Stored {
                    hashes,
                    parent: None,
                    tokens,
                    block_size: 16,
                }],
                dp_rank: Some(0),
            };
            sources[w].apply(&s, &m, seq[w], &batch);
            seq[w] += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        let grown = rss().saturating_sub(before);
        assert_eq!(s.index.len() as u64, BLOCKS);
        println!(
            "run {run}: {BLOCKS} blocks, index {} entries, RSS +{:.1} MiB = {:.0} bytes/block; stored in {:.2} s ({:.0} events/s, {:.0} blocks/s)",
            s.index.len(),
            grown as f64 / (1 << 20) as f64,
            grown as f64 / BLOCKS as f64,
            secs,
            (BLOCKS / 16) as f64 / secs,
            BLOCKS as f64 / secs,
        );
        drop(sources);
    }
}
