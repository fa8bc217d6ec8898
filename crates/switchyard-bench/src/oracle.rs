//! The oracle hit rate: of all prompt tokens sent in a run, the share that one engine
//! with an unbounded prefix cache (and every request on it) could have served from
//! cache — full 16-token blocks already seen earlier in the run, in an earlier prompt
//! or in the prompt plus generated reply of an earlier request (engines cache generated
//! blocks too, which is what multi-turn conversations reuse, except the last token
//! sampled, which is never fed through the model), with at least one token
//! of every prompt computed, as vLLM counts hits. No router can do better on that
//! workload; the distance to it is what routing leaves on the table.
//!
//! Under memory pressure that bound counts hits no fleet of the run's size could hold,
//! so [`bounded_hit_rate`] also gives the oracle the fleet's combined KV capacity and
//! the engines' eviction: one cache of every engine's blocks together, least recently
//! used blocks evicted first, every request on it in the order sent, as if each
//! finished before the next, its blocks entering the cache last block oldest (vLLM
//! frees a request's blocks in reverse order). It never restarts, never holds a block
//! twice and has no blocks pinned by running requests: an optimistic bound for routers
//! in front of those engines in practice, not a proof (one LRU cache is not always
//! better than several).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use switchyard_sim::kv_cache::{BlockHash, extend_block_hashes};
use switchyard_sim::tokenizer::{Token, encode, render_chat};

pub const BLOCK: usize = 16;

/// Tokens of a chat prompt as the simulator renders it.
pub fn prompt_tokens(messages: &[Value]) -> Vec<Token> {
    encode(&render_chat(messages))
}

/// The tokens an engine computed for a request, and so may cache: the prompt and every
/// generated token but the last.
fn computed(prompt: &[Token], generated: &[Token]) -> Vec<Token> {
    let mut all = prompt.to_vec();
    all.extend_from_slice(&generated[..generated.len().saturating_sub(1)]);
    all
}

/// Oracle hit rate over requests given as (prompt tokens, generated tokens), in the
/// order they were sent.
pub fn hit_rate(requests: &[(Vec<Token>, Vec<Token>)]) -> f64 {
    replay(requests, &mut HashSet::new())
}

/// The oracle hit rate with a cache of `capacity` blocks evicted least recently used
/// first (see the module's doc).
pub fn bounded_hit_rate(requests: &[(Vec<Token>, Vec<Token>)], capacity: usize) -> f64 {
    replay(
        requests,
        &mut Lru {
            capacity,
            used: HashMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
        },
    )
}

/// What an oracle's cache holds.
trait Cache {
    fn holds(&self, block: &BlockHash) -> bool;
    /// Takes in a finished request's blocks, in order.
    fn store(&mut self, blocks: &[BlockHash]);
}

impl Cache for HashSet<BlockHash> {
    fn holds(&self, block: &BlockHash) -> bool {
        self.contains(block)
    }

    fn store(&mut self, blocks: &[BlockHash]) {
        self.extend(blocks.iter().copied());
    }
}

struct Lru {
    capacity: usize,
    /// Block → when it was last used, and the reverse, oldest first.
    used: HashMap<BlockHash, u64>,
    by_age: BTreeMap<u64, BlockHash>,
    clock: u64,
}

impl Cache for Lru {
    fn holds(&self, block: &BlockHash) -> bool {
        self.used.contains_key(block)
    }

    /// Last block oldest, as vLLM frees a request's blocks in reverse order.
    fn store(&mut self, blocks: &[BlockHash]) {
        for h in blocks.iter().rev() {
            self.clock += 1;
            if let Some(old) = self.used.insert(*h, self.clock) {
                self.by_age.remove(&old);
            }
            self.by_age.insert(self.clock, *h);
        }
        while self.used.len() > self.capacity {
            let (_, h) = self.by_age.pop_first().expect("aged as used");
            self.used.remove(&h);
        }
    }
}

/// The share of prompt tokens `cache` serves when the requests go through it in order.
fn replay(requests: &[(Vec<Token>, Vec<Token>)], cache: &mut impl Cache) -> f64 {
    let (mut hits, mut total) = (0usize, 0usize);
    for (p, generated) in requests {
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, p, BLOCK);
        let max_blocks = p.len().saturating_sub(1) / BLOCK;
        let hit_blocks = hashes
            .iter()
            .take(max_blocks)
            .take_while(|h| cache.holds(h))
            .count();
        hits += hit_blocks * BLOCK;
        total += p.len();
        extend_block_hashes(&mut hashes, &computed(p, generated), BLOCK);
        cache.store(&hashes);
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
        // A reply is reusable: A's 40 tokens + 25 generated, of which 24 were computed
        // = 4 full blocks; a next turn resending 64 of those tokens plus 8 new ones hits
        // 4 blocks = 64 of its 72 tokens.
        let mut turn2 = a.clone();
        turn2.extend(200..232);
        let reply: Vec<Token> = (200..225).collect();
        let rate = hit_rate(&[(a.clone(), reply.clone()), (turn2.clone(), none())]);
        assert!((rate - 64.0 / 112.0).abs() < 1e-12, "{rate}");
        // With 24 generated, the last one never computed: 63 tokens cached, 3 blocks.
        let short: Vec<Token> = (200..224).collect();
        let rate_short = hit_rate(&[(a.clone(), short), (turn2.clone(), none())]);
        assert!((rate_short - 48.0 / 112.0).abs() < 1e-12, "{rate_short}");
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
        // A block used again is young again. With room for four: A, X, then A's first
        // block alone (a hit of 16 tokens) makes it younger than X's block, so Y's 3
        // blocks evict A's last two and X's, and A's last visit still hits its first
        // block (16). Without the refresh, A's first block would go before X's.
        let a0: Vec<Token> = (0..17).collect();
        let x: Vec<Token> = (1000..1017).collect();
        let y: Vec<Token> = (2000..2049).collect();
        let reqs = [
            (a.clone(), none()),
            (x, none()),
            (a0, none()),
            (y, none()),
            (a, none()),
        ];
        let rate = bounded_hit_rate(&reqs, 4);
        assert!((rate - 32.0 / 181.0).abs() < 1e-12, "{rate}");
    }
}
