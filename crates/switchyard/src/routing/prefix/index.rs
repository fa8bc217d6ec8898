//! The prefix index: which workers were recently sent which prompt blocks. Keys are
//! chained block hashes (a block's hash covers the whole prefix up to it), values a set
//! of worker slots and a last-use tick. Matching a request costs O(blocks × slot words +
//! workers), not O(blocks × workers). Memory is bounded: sweeps trim it to
//! `max_entries` (least recently used first), and no new entries are added while it is
//! over twice that. Workers are numbered by slots, reused after a worker leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use crate::fleet::WorkerId;

const SHARDS: usize = 32;

/// A set of worker slots: 64 inline, more on the heap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSet {
    lo: u64,
    hi: Option<Box<[u64]>>,
}

impl SlotSet {
    pub fn set(&mut self, slot: u16) {
        let s = slot as usize;
        if s < 64 {
            self.lo |= 1 << s;
            return;
        }
        let word = s / 64 - 1;
        let hi = self
            .hi
            .get_or_insert_with(|| vec![0; word + 1].into_boxed_slice());
        if hi.len() <= word {
            let mut v = hi.to_vec();
            v.resize(word + 1, 0);
            *hi = v.into_boxed_slice();
        }
        hi[word] |= 1 << (s % 64);
    }

    pub fn clear(&mut self, slot: u16) {
        let s = slot as usize;
        if s < 64 {
            self.lo &= !(1 << s);
        } else if let Some(hi) = &mut self.hi
            && let Some(w) = hi.get_mut(s / 64 - 1)
        {
            *w &= !(1 << (s % 64));
        }
    }

    pub fn contains(&self, slot: u16) -> bool {
        let s = slot as usize;
        if s < 64 {
            self.lo & (1 << s) != 0
        } else {
            self.hi
                .as_ref()
                .and_then(|hi| hi.get(s / 64 - 1))
                .is_some_and(|w| w & (1 << (s % 64)) != 0)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lo == 0 && self.hi.as_ref().is_none_or(|hi| hi.iter().all(|w| *w == 0))
    }

    fn word(&self, i: usize) -> u64 {
        if i == 0 {
            self.lo
        } else {
            self.hi
                .as_ref()
                .and_then(|h| h.get(i - 1))
                .copied()
                .unwrap_or(0)
        }
    }

    fn words(&self) -> usize {
        1 + self.hi.as_ref().map_or(0, |h| h.len())
    }
}

#[derive(Debug)]
struct Entry {
    slots: SlotSet,
    last: u32,
}

/// Keys are already well-mixed hashes: they are used as they are.
type Shard = HashMap<u64, Entry, nohash_hasher::BuildNoHashHasher<u64>>;

/// The index.
pub struct PrefixIndex {
    shards: Vec<Mutex<Shard>>,
    len: AtomicUsize,
    tick: AtomicU32,
    max_entries: usize,
    slots: RwLock<Slots>,
}

#[derive(Default)]
struct Slots {
    of: HashMap<WorkerId, u16>,
    /// Slots given back, reused first.
    free: Vec<u16>,
    /// The next slot never used.
    next: u16,
}

impl PrefixIndex {
    pub fn new(max_entries: usize) -> Self {
        PrefixIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
            tick: AtomicU32::new(0),
            max_entries: max_entries.max(1),
            slots: RwLock::new(Slots::default()),
        }
    }

    /// The slot numbering `worker` in this index, assigned on first use.
    pub fn slot(&self, worker: &WorkerId) -> u16 {
        if let Some(s) = self.slots.read().expect("slots lock").of.get(worker) {
            return *s;
        }
        let mut slots = self.slots.write().expect("slots lock");
        if let Some(s) = slots.of.get(worker) {
            return *s;
        }
        let slot = match slots.free.pop() {
            Some(s) => s,
            None => {
                slots.next += 1;
                slots.next - 1
            }
        };
        slots.of.insert(worker.clone(), slot);
        slot
    }

    /// The slot of `worker` if it has one.
    pub fn existing_slot(&self, worker: &WorkerId) -> Option<u16> {
        self.slots
            .read()
            .expect("slots lock")
            .of
            .get(worker)
            .copied()
    }

    /// Forgets `worker` everywhere and frees its slot. The slot is reused only once its
    /// entries are cleared, so no other worker inherits them.
    pub fn forget(&self, worker: &WorkerId) {
        let slot = self.slots.write().expect("slots lock").of.remove(worker);
        if let Some(slot) = slot {
            self.remove_slot(slot);
            self.slots.write().expect("slots lock").free.push(slot);
        }
    }

    /// Forgets everything `worker` holds, keeping its slot (its engine restarted or
    /// cleared its cache).
    pub fn clear(&self, worker: &WorkerId) {
        if let Some(slot) = self.existing_slot(worker) {
            self.remove_slot(slot);
        }
    }

    /// Forgets that `slot` holds the block `h`.
    pub fn remove(&self, h: u64, slot: u16) {
        let mut shard = self.shard(h).lock().expect("prefix shard");
        if let Some(e) = shard.get_mut(&h) {
            e.slots.clear(slot);
            if e.slots.is_empty() {
                shard.remove(&h);
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Records that `worker` was sent a prompt with these blocks.
    pub fn record(&self, blocks: &[u64], worker: &WorkerId) {
        if !blocks.is_empty() {
            self.insert(blocks, self.slot(worker));
        }
    }

    fn shard(&self, h: u64) -> &Mutex<Shard> {
        &self.shards[(h >> 59) as usize % SHARDS]
    }

    /// The bound upkeep trims the index to.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For each of `slots`, how many leading `blocks` it holds.
    pub fn match_lengths(&self, blocks: &[u64], slots: &[u16]) -> Vec<usize> {
        let mut matched = vec![blocks.len(); slots.len()];
        let mut alive = SlotSet::default();
        for &s in slots {
            alive.set(s);
        }
        for (i, h) in blocks.iter().enumerate() {
            let shard = self.shard(*h).lock().expect("prefix shard");
            let next = match shard.get(h) {
                Some(e) => intersect(&alive, &e.slots),
                None => SlotSet::default(),
            };
            drop(shard);
            if next != alive {
                for (k, &s) in slots.iter().enumerate() {
                    if matched[k] == blocks.len() && alive.contains(s) && !next.contains(s) {
                        matched[k] = i;
                    }
                }
                alive = next;
            }
            if alive.is_empty() {
                break;
            }
        }
        matched
    }

    /// Records that `slot` was sent a prompt with these blocks.
    pub fn insert(&self, blocks: &[u64], slot: u16) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let full = self.len() >= 2 * self.max_entries;
        for h in blocks {
            let mut shard = self.shard(*h).lock().expect("prefix shard");
            match shard.get_mut(h) {
                Some(e) => {
                    e.slots.set(slot);
                    e.last = tick;
                }
                None if full => break,
                None => {
                    let mut slots = SlotSet::default();
                    slots.set(slot);
                    shard.insert(*h, Entry { slots, last: tick });
                    self.len.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Forgets a worker slot everywhere.
    fn remove_slot(&self, slot: u16) {
        for shard in &self.shards {
            let mut shard = shard.lock().expect("prefix shard");
            let before = shard.len();
            shard.retain(|_, e| {
                e.slots.clear(slot);
                !e.slots.is_empty()
            });
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Trims the index to 90 % of its bound, least recently used entries first, when it
    /// is over the bound. Returns how many entries were dropped.
    pub fn evict(&self) -> usize {
        let len = self.len();
        if len <= self.max_entries {
            return 0;
        }
        let target_drop = len - self.max_entries * 9 / 10;
        let mut ticks: Vec<u32> = Vec::with_capacity(len);
        for shard in &self.shards {
            ticks.extend(shard.lock().expect("prefix shard").values().map(|e| e.last));
        }
        let k = target_drop.min(ticks.len() - 1);
        let (_, cutoff, _) = ticks.select_nth_unstable(k);
        let cutoff = *cutoff;
        let mut dropped = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().expect("prefix shard");
            let before = shard.len();
            shard.retain(|_, e| e.last > cutoff);
            dropped += before - shard.len();
        }
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }
}

fn intersect(a: &SlotSet, b: &SlotSet) -> SlotSet {
    let n = a.words().max(b.words());
    let lo = a.word(0) & b.word(0);
    let hi = (n > 1).then(|| {
        (1..n)
            .map(|i| a.word(i) & b.word(i))
            .collect::<Vec<_>>()
            .into_boxed_slice()
    });
    SlotSet { lo, hi }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sets_beyond_64() {
        let mut s = SlotSet::default();
        s.set(3);
        s.set(70);
        s.set(200);
        assert!(s.contains(3) && s.contains(70) && s.contains(200) && !s.contains(71));
        s.clear(70);
        assert!(!s.contains(70));
        s.clear(3);
        s.clear(200);
        assert!(s.is_empty());
    }

    #[test]
    fn match_lengths_per_slot() {
        let idx = PrefixIndex::new(1000);
        idx.insert(&[1, 2, 3, 4], 0);
        idx.insert(&[1, 2, 9], 1);
        idx.insert(&[1, 2, 3], 100);
        assert_eq!(
            idx.match_lengths(&[1, 2, 3, 4, 5], &[0, 1, 2, 100]),
            vec![4, 2, 0, 3]
        );
        assert_eq!(idx.match_lengths(&[7], &[0, 1]), vec![0, 0]);
        assert_eq!(idx.match_lengths(&[1, 2], &[0]), vec![2]);
    }

    #[test]
    fn eviction_keeps_the_bound_and_recent_entries() {
        let idx = PrefixIndex::new(100);
        for i in 0..150u64 {
            idx.insert(&[i * 1_000_003], 0);
        }
        assert_eq!(idx.len(), 150);
        let dropped = idx.evict();
        assert!(idx.len() <= 100, "{}", idx.len());
        assert!(dropped >= 50);
        assert_eq!(
            idx.match_lengths(&[149 * 1_000_003], &[0]),
            vec![1],
            "newest kept"
        );
        assert_eq!(idx.match_lengths(&[0], &[0]), vec![0], "oldest dropped");
    }

    #[test]
    fn inserts_stop_at_twice_the_bound() {
        let idx = PrefixIndex::new(10);
        for i in 0..100u64 {
            idx.insert(&[i + 1], 0);
        }
        assert_eq!(idx.len(), 20);
    }

    #[test]
    fn slots_are_never_shared_while_a_worker_is_forgotten() {
        let idx = PrefixIndex::new(100);
        let id = |port: u16| WorkerId {
            url: format!("http://h:{port}"),
            dp_rank: None,
            role: crate::fleet::WorkerRole::Regular,
        };
        let (a, b) = (idx.slot(&id(1)), idx.slot(&id(2)));
        assert_ne!(a, b);
        idx.record(&[1, 2], &id(1));
        idx.forget(&id(1));
        // A new worker never gets a slot another worker still holds.
        let c = idx.slot(&id(3));
        assert_ne!(c, b);
        assert_eq!(
            idx.match_lengths(&[1, 2], &[c]),
            vec![0],
            "no inherited entries"
        );
        assert_eq!(idx.existing_slot(&id(1)), None);
    }

    #[test]
    fn removing_a_slot_forgets_it() {
        let idx = PrefixIndex::new(100);
        idx.insert(&[1, 2], 0);
        idx.insert(&[1], 1);
        idx.remove_slot(0);
        assert_eq!(idx.match_lengths(&[1, 2], &[0, 1]), vec![0, 1]);
        assert_eq!(idx.len(), 1);
    }
}
