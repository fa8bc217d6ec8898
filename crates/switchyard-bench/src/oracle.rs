//! The oracle hit rate: of all prompt tokens sent in a run, the share that one engine
//! with an unbounded prefix cache (and every request on it) could have served from
//! cache — full 16-token blocks already seen earlier in the run, in an earlier prompt
//! or in the prompt plus generated reply of an earlier request (engines cache generated
//! blocks too, which is what multi-turn conversations reuse), with at least one token
//! of every prompt computed, as vLLM counts hits. No router can do better on that
//! workload; the distance to it is what routing leaves on the table.

use std::collections::HashSet;

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
        let rate = hit_rate(&[(a, reply), (turn2, none())]);
        assert!((rate - 64.0 / 112.0).abs() < 1e-12, "{rate}");
    }
}
