//! A paged KV cache with automatic prefix caching, after vLLM's `BlockPool`.
//!
//! One pool of `num_blocks` fixed-size blocks serves both running sequences and cached
//! prefixes. A full block is identified by a chained hash covering every token before
//! it and in it. Blocks nobody references sit in a free queue ordered for eviction
//! (least recently freed first); a cached block stays findable until it is reused.

use std::collections::HashMap;

use crate::tokenizer::Token;

/// Chained hash of one full block.
pub type BlockHash = u64;
/// Index of a block in the pool.
pub type BlockId = u32;

const NIL: u32 = u32::MAX;

/// Hash of the block after `parent` holding `tokens` (chained: covers the whole prefix).
pub fn hash_block(parent: BlockHash, tokens: &[Token]) -> BlockHash {
    let mut h = parent ^ 0x51_7C_C1_B7_27_22_0A_95;
    for &t in tokens {
        h = (h.rotate_left(5) ^ u64::from(t)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

/// Extends `hashes` with the chained hashes of every full block of `tokens` not yet hashed.
pub fn extend_block_hashes(hashes: &mut Vec<BlockHash>, tokens: &[Token], block_size: usize) {
    while (hashes.len() + 1) * block_size <= tokens.len() {
        let i = hashes.len();
        let parent = if i == 0 { 0 } else { hashes[i - 1] };
        hashes.push(hash_block(
            parent,
            &tokens[i * block_size..(i + 1) * block_size],
        ));
    }
}

/// Keys are already well-mixed hashes: they are used as they are.
type HashIndex = HashMap<BlockHash, BlockId, nohash_hasher::BuildNoHashHasher<BlockHash>>;

#[derive(Clone, Debug)]
struct Block {
    hash: Option<BlockHash>,
    /// The hash the engine publishes for this block in KV events.
    wire: u64,
    ref_cnt: u32,
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

/// The block pool: allocation, reference counts, prefix lookup and LRU eviction.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashIndex,
    evictions: u64,
    /// Published hashes of cached blocks evicted since the last [`take_removed`]
    /// (only kept while [`record_removals`] is on).
    removed: Vec<u64>,
    record: bool,
}

impl BlockPool {
    /// A pool of `num_blocks` empty blocks.
    pub fn new(num_blocks: usize) -> Self {
        assert!(num_blocks > 0 && num_blocks < NIL as usize);
        let n = num_blocks as u32;
        let blocks = (0..n)
            .map(|i| Block {
                hash: None,
                wire: 0,
                ref_cnt: 0,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == n { NIL } else { i + 1 },
                in_free_queue: true,
            })
            .collect();
        BlockPool {
            blocks,
            head: 0,
            tail: n - 1,
            num_free: num_blocks,
            cached: HashIndex::default(),
            evictions: 0,
            removed: Vec::new(),
            record: false,
        }
    }

    /// Keeps the published hash of every evicted cached block for [`take_removed`]
    /// (the engine publishes KV events).
    pub fn record_removals(&mut self) {
        self.record = true;
    }

    /// Published hashes of the cached blocks evicted since the last call.
    pub fn take_removed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.removed)
    }

    /// Total blocks.
    pub fn capacity(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks not referenced by any sequence (cached or empty).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks currently findable by hash.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Cached blocks evicted so far to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Fraction of blocks referenced by running sequences, as vLLM's `kv_cache_usage_perc`.
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// How many leading blocks of `hashes` are cached, and their ids. No side effects.
    pub fn lookup(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// Takes a reference on cached blocks found by [`lookup`](Self::lookup).
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            let b = &self.blocks[id as usize];
            if b.ref_cnt == 0 && b.in_free_queue {
                self.unlink(id);
            }
            self.blocks[id as usize].ref_cnt += 1;
        }
    }

    /// Allocates `n` blocks, evicting the least recently freed cached blocks if needed.
    /// Returns `None`, changing nothing, when fewer than `n` blocks are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            let b = &mut self.blocks[id as usize];
            if let Some(h) = b.hash.take()
                && self.cached.get(&h) == Some(&id)
            {
                self.cached.remove(&h);
                self.evictions += 1;
                if self.record {
                    self.removed.push(b.wire);
                }
            }
            b.ref_cnt = 1;
            out.push(id);
        }
        Some(out)
    }

    /// Drops one reference on each block. Blocks reaching zero join the eviction queue in
    /// reverse order, so a sequence's last blocks are evicted before its first ones.
    pub fn free(&mut self, ids: &[BlockId]) {
        for &id in ids.iter().rev() {
            let b = &mut self.blocks[id as usize];
            debug_assert!(b.ref_cnt > 0, "double free of block {id}");
            b.ref_cnt = b.ref_cnt.saturating_sub(1);
            if b.ref_cnt == 0 {
                self.push_tail(id);
            }
        }
    }

    /// Registers a just-filled block under its hash so later requests can reuse it;
    /// `wire` is the hash its KV events carry. A hash already cached by another block
    /// keeps its first block. True when the block became findable.
    pub fn cache_block(&mut self, id: BlockId, hash: BlockHash, wire: u64) -> bool {
        if self.cached.contains_key(&hash) {
            return false;
        }
        let b = &mut self.blocks[id as usize];
        b.hash = Some(hash);
        b.wire = wire;
        self.cached.insert(hash, id);
        true
    }

    /// Forgets every cached prefix (`POST /reset_prefix_cache`). Running sequences keep
    /// their blocks; those blocks simply stop being findable.
    pub fn reset(&mut self) {
        for b in &mut self.blocks {
            b.hash = None;
        }
        self.cached.clear();
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let b = &self.blocks[id as usize];
            debug_assert!(b.in_free_queue);
            (b.prev, b.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let b = &mut self.blocks[id as usize];
        b.prev = NIL;
        b.next = NIL;
        b.in_free_queue = false;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, id: BlockId) {
        let tail = self.tail;
        {
            let b = &mut self.blocks[id as usize];
            b.prev = tail;
            b.next = NIL;
            b.in_free_queue = true;
        }
        if tail == NIL {
            self.head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.tail = id;
        self.num_free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(tokens: &[Token], bs: usize) -> Vec<BlockHash> {
        let mut h = Vec::new();
        extend_block_hashes(&mut h, tokens, bs);
        h
    }

    #[test]
    fn chained_hash_covers_prefix() {
        let a = hashes(&[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let b = hashes(&[9, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(a.len(), 2);
        assert_ne!(a[1], b[1], "second block differs because the first does");
        assert_eq!(
            hashes(&[1, 2, 3, 4, 5, 6, 7], 4).len(),
            1,
            "partial blocks are not hashed"
        );
    }

    #[test]
    fn cached_blocks_are_found_and_reused() {
        let mut pool = BlockPool::new(8);
        let h = hashes(&(0..16).collect::<Vec<_>>(), 4);
        let ids = pool.allocate(4).unwrap();
        for (id, hash) in ids.iter().zip(&h) {
            pool.cache_block(*id, *hash, 0);
        }
        pool.free(&ids);
        assert_eq!(pool.num_free(), 8);
        let hit = pool.lookup(&h);
        assert_eq!(hit, ids);
        pool.touch(&hit);
        assert_eq!(pool.num_free(), 4);
        assert!((pool.usage() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn lru_evicts_oldest_unreferenced_and_never_referenced_blocks() {
        let mut pool = BlockPool::new(4);
        let old = pool.allocate(2).unwrap();
        pool.cache_block(old[0], 11, 0);
        pool.cache_block(old[1], 12, 0);
        let held = pool.allocate(1).unwrap();
        pool.cache_block(held[0], 13, 0);
        pool.free(&old); // old blocks become evictable; `held` stays referenced
        // One never-used block is free first, then the old blocks in reverse order.
        let a = pool.allocate(1).unwrap();
        assert!(!old.contains(&a[0]) && a[0] != held[0]);
        assert_eq!(pool.lookup(&[11, 12]).len(), 2);
        let b = pool.allocate(1).unwrap();
        assert_eq!(
            b[0], old[1],
            "the tail block of a sequence is evicted first"
        );
        assert_eq!(pool.lookup(&[11, 12]).len(), 1);
        assert_eq!(pool.evictions(), 1);
        assert!(pool.allocate(2).is_none(), "only one block left");
        assert_eq!(pool.lookup(&[13]), held, "referenced block never evicted");
    }

    #[test]
    fn evicting_a_cached_block_records_its_published_hash() {
        let mut pool = BlockPool::new(2);
        pool.record_removals();
        let ids = pool.allocate(2).unwrap();
        assert!(pool.cache_block(ids[0], 5, 500));
        assert!(!pool.cache_block(ids[1], 5, 501), "a hash is cached once");
        pool.free(&ids);
        pool.allocate(1).unwrap(); // the uncached block goes first: nothing evicted
        assert!(pool.take_removed().is_empty());
        pool.allocate(1).unwrap();
        assert_eq!(pool.take_removed(), vec![500]);
        assert!(pool.take_removed().is_empty());
    }

    #[test]
    fn reset_forgets_prefixes() {
        let mut pool = BlockPool::new(2);
        let ids = pool.allocate(1).unwrap();
        pool.cache_block(ids[0], 5, 0);
        pool.reset();
        assert!(pool.lookup(&[5]).is_empty());
        assert_eq!(pool.num_cached(), 0);
    }
}
