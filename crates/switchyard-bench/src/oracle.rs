//! The oracle hit rate: of all prompt tokens sent in a run, the share that one engine
//! with an unbounded prefix cache (and every request on it) could have served from
//! cache — full 16-token blocks already seen earlier in the run, in an earlier prompt
//! or in the prompt plus generated reply of an earlier request (engines cache generated
//! blocks too, which is what multi-turn conversations reuse), with at least one token
//! of every prompt computed, as vLLM counts hits. No router can do better on that
//! workload; the distance to it is what routing leaves on the table.
//!
//! Under memory pressure that bound counts hits no fleet of the run's size could hold,
//! so [`bounded_hit_rate`] also gives the oracle the fleet's combined KV capacity and
//! the engines' eviction: one cache of every engine's blocks together, least recently
//! used blocks evicted first, a finished request's blocks freed last block first (as
//! vLLM frees them), every request on it in the order sent. It never restarts, never
//! holds a block twice and has no blocks pinned by running requests, so it stays
//! above what any router can reach on the same engines.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use switchyard_sim::kv_cache::{BlockHash, extend_block_hashes};
use switchyard_sim::tokenizer::{Token, encode, render_chat};

pub const BLOCK: usize = 16;

/// Tokens of a chat prompt as the simulator renders it.
pub fn prompt_tokens(messages: &[Value]) -> Vec<Token> {
    encode(&render_chat(messages))
}

/// Oracle hit rate over requests given as (prompt tokens, generated tokens), in the
/// order they were sent.
pub fn hit_rate(requests: &[(Vec<Token>, Vec<Token>)]) -> f64 {
    let mut seen: HashSet<BlockHash> = HashSet::new();
    let (mut hits, mut total) = (0usize, 0usize);
    for (p, generated) in requests {
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, p, BLOCK);
        let max_blocks = p.len().saturating_sub(1) / BLOCK;
        let hit_blocks = hashes
            .iter()
            .take(max_blocks)
            .take_while(|h| seen.contains(h))
            .count();
        hits += hit_blocks * BLOCK;
        total += p.len();
        let mut full = p.clone();
        full.extend_from_slice(generated);
        extend_block_hashes(&mut hashes, &full, BLOCK);
        seen.extend(hashes);
    }
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// The oracle hit rate with a cache of `capacity` blocks evicted least recently used
/// first (see the module's doc).
pub fn bounded_hit_rate(requests: &[(Vec<Token>, Vec<Token>)], capacity: usize) -> f64 {
    // Block → when it was last used, and the reverse, oldest first.
    let mut used: HashMap<BlockHash, u64> = HashMap::new();
    let mut by_age: BTreeMap<u64, BlockHash> = BTreeMap::new();
    let mut clock = 0u64;
    let (mut hits, mut total) = (0usize, 0usize);
    for (p, generated) in requests {
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, p, BLOCK);
        let max_blocks = p.len().saturating_sub(1) / BLOCK;
        let hit_blocks = hashes
            .iter()
            .take(max_blocks)
            .take_while(|h| used.contains_key(*h))
            .count();
        hits += hit_blocks * BLOCK;
        total += p.len();
        let mut full = p.clone();
        full.extend_from_slice(generated);
        extend_block_hashes(&mut hashes, &full, BLOCK);
        for h in hashes.iter().rev() {
            clock += 1;
            if let Some(old) = used.insert(*h, clock) {
                by_age.remove(&old);
            }
            by_age.insert(clock, *h);
        }
        while used.len() > capacity {
            let (_, h) = by_age.pop_first().expect("aged as used");
            used.remove(&h);
        }
    }
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_oracle() {
        // A: 40 tokens (2 full blocks), nothing seen: 0 hits.
        // B: shares A's first 32 tokens then differs, 40 tokens: 2 blocks hit = 32.
        // C: exactly A again (40 tokens): at most (40-1)/16 = 2 blocks = 32.
        // D: 16 tokens equal to A's first block: at most (16-1)/16 = 0 blocks.
        let a: Vec<Token> = (0..40).collect();
        let mut b: Vec<Token> = (0..32).collect();
        b.extend(100..108);
        let c = a.clone();
        let d: Vec<Token> = (0..16).collect();
        let none = Vec::new;
        let rate = hit_rate(&[(a.clone(), none()), (b, none()), (c, none()), (d, none())]);
        assert!((rate - 64.0 / 136.0).abs() < 1e-12, "{rate}");
        assert_eq!(hit_rate(&[]), 0.0);
        // A reply is reusable: A's 40 tokens + 24 generated = 4 full blocks; a next turn
        // resending all 64 tokens plus 8 new ones hits 4 blocks = 64 of its 72 tokens.
        let mut turn2 = a.clone();
        turn2.extend(200..232);
        let reply: Vec<Token> = (200..224).collect();
        let rate = hit_rate(&[(a.clone(), reply.clone()), (turn2.clone(), none())]);
        assert!((rate - 64.0 / 112.0).abs() < 1e-12, "{rate}");
        let ample = bounded_hit_rate(&[(a, reply), (turn2, none())], 1000);
        assert!((ample - rate).abs() < 1e-12, "{ample}");
    }

    #[test]
    fn a_bounded_oracle_evicts_least_recently_used_blocks_last_block_first() {
        let none = Vec::new;
        // A: 49 tokens, 3 full blocks; X: 17 tokens, 1 block of its own.
        let a: Vec<Token> = (0..49).collect();
        let x: Vec<Token> = (1000..1017).collect();
        let reqs = [(a.clone(), none()), (x, none()), (a.clone(), none())];
        // Room for all four blocks: A's second visit hits its 3 blocks.
        let rate = bounded_hit_rate(&reqs, 4);
        assert!((rate - 48.0 / 115.0).abs() < 1e-12, "{rate}");
        // Room for three: X evicts A's last block, not its first, so 2 blocks still hit.
        let rate = bounded_hit_rate(&reqs, 3);
        assert!((rate - 32.0 / 115.0).abs() < 1e-12, "{rate}");
        // Room for one: nothing of A survives X.
        assert_eq!(bounded_hit_rate(&reqs, 1), 0.0);
        // A block used again is young again: A, A's first block alone, X, A with room
        // for three keeps A's first block over its second and third.
        let a0: Vec<Token> = (0..17).collect();
        let y: Vec<Token> = (2000..2033).collect();
        let reqs = [(a.clone(), none()), (a0, none()), (y, none()), (a, none())];
        // A's visit 2 hits 1 block (16 of 17 tokens); after Y's 2 blocks only A's first
        // block is left of A: 1 block = 16 tokens.
        let rate = bounded_hit_rate(&reqs, 3);
        assert!((rate - 32.0 / 148.0).abs() < 1e-12, "{rate}");
    }
}
