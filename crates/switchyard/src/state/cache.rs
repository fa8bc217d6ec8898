//! Where the response cache keeps answers (docs/caching.md): [`Memory`] (a bounded
//! LRU, by entries and by bytes, with a TTL read from an injected [`Clock`]) or
//! [`Redis`] (one string per entry, `SET … PX ttl`, so Redis expires it and replicas
//! that share a Redis share entries), behind one [`CacheStore`] trait. And the
//! semantic index ([`SemanticIndex`]): the vectors of the prompts of entries whose
//! requests opted into semantic matching, in memory, in buckets scanned by brute force.
//!
//! Keys are opaque here (the pipeline hashes the request into one); what is stored is
//! the engine's answer as it came, with its content type and how long it took.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use lru::LruCache;

use super::redis::{Op, Pool};
use super::{Clock, StateError};
use crate::metrics::{Metrics, ReasonLabel};

/// One cached answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// When it was stored, in milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// How long the engine took to give it (arrival to last byte), in milliseconds.
    pub latency_ms: u64,
    /// The engine's `Content-Type`.
    pub content_type: String,
    /// The engine's body: JSON, or a whole SSE stream (`data: [DONE]` included).
    pub body: Bytes,
}

/// What an entry costs besides its body (key, bookkeeping), counted against the bound.
const OVERHEAD: usize = 160;

/// The first bytes of an entry in Redis: a format tag.
const MAGIC: &[u8; 4] = b"SYC1";

impl Entry {
    /// Bytes counted against the memory bound.
    pub fn size(&self) -> usize {
        self.body.len() + self.content_type.len() + OVERHEAD
    }

    /// `SYC1`, the created time, the latency, the content type's length and bytes,
    /// then the body.
    fn encode(&self) -> Vec<u8> {
        let ct = self.content_type.as_bytes();
        let mut out = Vec::with_capacity(4 + 8 + 8 + 4 + ct.len() + self.body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.latency_ms.to_le_bytes());
        out.extend_from_slice(&(ct.len() as u32).to_le_bytes());
        out.extend_from_slice(ct);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(raw: Vec<u8>) -> Result<Entry, StateError> {
        let bad = || StateError("a cached entry in Redis is not in the gateway's format".into());
        if raw.len() < 24 || &raw[..4] != MAGIC {
            return Err(bad());
        }
        let num = |at: usize| <[u8; 8]>::try_from(&raw[at..at + 8]).map_err(|_| bad());
        let created_ms = i64::from_le_bytes(num(4)?);
        let latency_ms = u64::from_le_bytes(num(12)?);
        let ct_len =
            u32::from_le_bytes(<[u8; 4]>::try_from(&raw[20..24]).map_err(|_| bad())?) as usize;
        let body_at = 24usize.checked_add(ct_len).ok_or_else(bad)?;
        if raw.len() < body_at {
            return Err(bad());
        }
        let content_type = String::from_utf8(raw[24..body_at].to_vec()).map_err(|_| bad())?;
        let mut raw = raw;
        let body = Bytes::from(raw.split_off(body_at));
        Ok(Entry {
            created_ms,
            latency_ms,
            content_type,
            body,
        })
    }
}

/// Where cached answers are kept.
pub trait CacheStore: Send + Sync {
    /// The live entry under `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StateError>>;

    /// Stores `entry` under `key` for `ttl_ms`. The memory backend has stored it when
    /// this returns (the future is ready); Redis stores it when the future runs.
    fn put(
        &self,
        key: String,
        entry: Entry,
        ttl_ms: u64,
    ) -> BoxFuture<'static, Result<(), StateError>>;

    /// `memory` or `redis`.
    fn backend(&self) -> &'static str;
}

/// The in-memory backend: least recently used entries go first once either bound is
/// passed; an entry past its TTL is dropped when it is next read (or pushed out).
pub struct Memory {
    inner: Mutex<MemoryInner>,
    max_entries: usize,
    max_bytes: usize,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

struct MemoryInner {
    entries: LruCache<String, (Entry, i64)>,
    bytes: usize,
}

impl Memory {
    pub fn new(
        max_entries: usize,
        max_bytes: usize,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Memory {
        Memory {
            inner: Mutex::new(MemoryInner {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
            max_entries: max_entries.max(1),
            max_bytes,
            clock,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn evicted(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.metrics
                .cache_evictions
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n);
        }
    }

    fn gauges(&self, inner: &MemoryInner) {
        self.metrics.cache_entries.set(inner.entries.len() as i64);
        self.metrics.cache_bytes.set(inner.bytes as i64);
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

impl CacheStore for Memory {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StateError>> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let found = match inner.entries.get(key) {
            Some((e, expires)) if *expires > now => Some(e.clone()),
            Some(_) => {
                if let Some((e, _)) = inner.entries.pop(key) {
                    inner.bytes -= e.size();
                }
                self.evicted("expired", 1);
                self.gauges(&inner);
                None
            }
            None => None,
        };
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put(
        &self,
        key: String,
        entry: Entry,
        ttl_ms: u64,
    ) -> BoxFuture<'static, Result<(), StateError>> {
        let size = entry.size();
        if size > self.max_bytes {
            // Larger than the whole cache: pushed out as soon as it is in.
            self.evicted("capacity", 1);
            return Box::pin(std::future::ready(Ok(())));
        }
        let expires = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let mut inner = self.lock();
        if let Some((old, _)) = inner.entries.put(key, (entry, expires)) {
            inner.bytes -= old.size();
        }
        inner.bytes += size;
        let mut pushed_out = 0;
        while inner.entries.len() > self.max_entries || inner.bytes > self.max_bytes {
            match inner.entries.pop_lru() {
                Some((_, (e, _))) => {
                    inner.bytes -= e.size();
                    pushed_out += 1;
                }
                None => break,
            }
        }
        self.evicted("capacity", pushed_out);
        self.gauges(&inner);
        Box::pin(std::future::ready(Ok(())))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// The Redis backend: `{prefix}:cache:{key}` holds the encoded entry, with the TTL
/// set by `SET … PX`. Every call is bounded by the cache's own timeout (besides the
/// pool's), so a slow Redis costs a request at most that.
pub struct Redis {
    pool: Arc<Pool>,
    timeout: std::time::Duration,
}

impl Redis {
    pub fn new(pool: Arc<Pool>, timeout: std::time::Duration) -> Redis {
        Redis { pool, timeout }
    }

    /// The Redis key of a cache key.
    pub fn redis_key(pool: &Pool, key: &str) -> String {
        pool.key(&format!("cache:{key}"))
    }
}

async fn bounded<T>(
    timeout: std::time::Duration,
    what: &str,
    work: impl std::future::Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        StateError(format!(
            "redis {what}: no answer within {} ms",
            timeout.as_millis()
        ))
    })?
}

impl CacheStore for Redis {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StateError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(Self::redis_key(&self.pool, key));
            let raw: Option<Vec<u8>> =
                bounded(self.timeout, "GET", self.pool.query("GET", Op::Cmd(&cmd))).await?;
            raw.map(Entry::decode).transpose()
        })
    }

    fn put(
        &self,
        key: String,
        entry: Entry,
        ttl_ms: u64,
    ) -> BoxFuture<'static, Result<(), StateError>> {
        let pool = self.pool.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(Self::redis_key(&pool, &key))
                .arg(entry.encode())
                .arg("PX")
                .arg(ttl_ms.max(1));
            bounded(timeout, "SET", pool.query::<()>("SET", Op::Cmd(&cmd))).await
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// One indexed prompt: its unit vector and the cache key of its answer.
struct Indexed {
    vector: Vec<f32>,
    key: String,
    expires_ms: i64,
}

/// The semantic index: per bucket (tenant, model, and the request but for its last
/// user message, hashed by the pipeline), the unit vectors of the last user messages
/// of cached answers, newest last. A lookup scans one bucket (brute force: at most
/// `bucket_size` dot products); the least recently used buckets and each bucket's
/// oldest vectors go first once `max_vectors` in all are held. In memory, per replica,
/// whichever backend holds the answers.
pub struct SemanticIndex {
    inner: Mutex<SemanticInner>,
    bucket_size: usize,
    max_vectors: usize,
    clock: Arc<dyn Clock>,
}

struct SemanticInner {
    buckets: LruCache<[u8; 32], VecDeque<Indexed>>,
    vectors: usize,
}

/// Cosine similarity of two unit vectors (0 when their dimensions differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` scaled to unit length (unchanged when it is all zeros).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

impl SemanticIndex {
    pub fn new(bucket_size: usize, max_vectors: usize, clock: Arc<dyn Clock>) -> SemanticIndex {
        SemanticIndex {
            inner: Mutex::new(SemanticInner {
                buckets: LruCache::unbounded(),
                vectors: 0,
            }),
            bucket_size: bucket_size.max(1),
            max_vectors: max_vectors.max(1),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SemanticInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most similar live vector of `bucket` to `vector`: its cache key and the
    /// similarity. Expired vectors met on the way are dropped.
    pub fn nearest(&self, bucket: &[u8; 32], vector: &[f32]) -> Option<(String, f32)> {
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let list = inner.buckets.get_mut(bucket)?;
        let before = list.len();
        list.retain(|i| i.expires_ms > now);
        let dropped = before - list.len();
        let best = list
            .iter()
            .map(|i| (i, cosine(&i.vector, vector)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, s)| (i.key.clone(), s));
        let empty = list.is_empty();
        inner.vectors -= dropped;
        if empty {
            inner.buckets.pop(bucket);
        }
        best
    }

    /// Indexes `vector` as the prompt of the answer under `key` until `expires_ms`.
    pub fn insert(&self, bucket: [u8; 32], vector: Vec<f32>, key: String, expires_ms: i64) {
        let mut inner = self.lock();
        let mut removed = 0;
        let list = inner.buckets.get_or_insert_mut(bucket, VecDeque::new);
        let before = list.len();
        list.retain(|i| i.key != key);
        removed += before - list.len();
        list.push_back(Indexed {
            vector,
            key,
            expires_ms,
        });
        while list.len() > self.bucket_size {
            list.pop_front();
            removed += 1;
        }
        inner.vectors = inner.vectors + 1 - removed;
        while inner.vectors > self.max_vectors {
            let Some((b, mut oldest)) = inner.buckets.pop_lru() else {
                break;
            };
            while inner.vectors > self.max_vectors && oldest.pop_front().is_some() {
                inner.vectors -= 1;
            }
            if !oldest.is_empty() {
                inner.buckets.put(b, oldest);
                // Put back as most recent: the next pass takes another bucket first.
            }
        }
    }

    /// Forgets `key` in `bucket` (its answer is gone from the store).
    pub fn forget(&self, bucket: &[u8; 32], key: &str) {
        let mut inner = self.lock();
        let Some(list) = inner.buckets.peek_mut(bucket) else {
            return;
        };
        let before = list.len();
        list.retain(|i| i.key != key);
        let removed = before - list.len();
        let empty = list.is_empty();
        inner.vectors -= removed;
        if empty {
            inner.buckets.pop(bucket);
        }
    }

    /// Vectors held now.
    pub fn len(&self) -> usize {
        self.lock().vectors
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use super::*;
    use crate::state::testing::ManualClock;

    fn entry(body: &str) -> Entry {
        Entry {
            created_ms: 1,
            latency_ms: 250,
            content_type: "application/json".into(),
            body: Bytes::from(body.to_string()),
        }
    }

    fn get(m: &Memory, key: &str) -> Option<Entry> {
        futures_util::FutureExt::now_or_never(m.get(key))
            .expect("memory answers at once")
            .unwrap()
    }

    fn put(m: &Memory, key: &str, e: Entry, ttl: u64) {
        futures_util::FutureExt::now_or_never(m.put(key.into(), e, ttl))
            .expect("memory stores at once")
            .unwrap();
    }

    #[test]
    fn entries_expire_on_the_injected_clock() {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
        let metrics = Arc::new(Metrics::new());
        let m = Memory::new(10, 1 << 20, clock.clone(), metrics.clone());
        put(&m, "a", entry("{}"), 60_000);
        assert_eq!(get(&m, "a").unwrap().body, "{}");
        clock.advance(59_999);
        assert!(get(&m, "a").is_some(), "alive until its TTL is over");
        clock.advance(1);
        assert!(get(&m, "a").is_none(), "gone at its TTL");
        assert_eq!(m.usage(), (0, 0));
        assert_eq!(
            metrics
                .cache_evictions
                .get_or_create(&ReasonLabel { reason: "expired" })
                .get(),
            1
        );
    }

    #[test]
    fn the_least_recently_used_go_first_by_entries_and_by_bytes() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let metrics = Arc::new(Metrics::new());
        let m = Memory::new(2, 1 << 20, clock.clone(), metrics.clone());
        put(&m, "a", entry("1"), 1000);
        put(&m, "b", entry("2"), 1000);
        assert!(get(&m, "a").is_some()); // b is now the least recently used
        put(&m, "c", entry("3"), 1000);
        assert!(get(&m, "b").is_none());
        assert!(get(&m, "a").is_some() && get(&m, "c").is_some());

        // By bytes: room for two entries of this size, not three.
        let big = "x".repeat(1000);
        let bound = 2 * entry(&big).size() + 10;
        let m = Memory::new(100, bound, clock, metrics.clone());
        put(&m, "a", entry(&big), 1000);
        put(&m, "b", entry(&big), 1000);
        put(&m, "c", entry(&big), 1000);
        assert!(get(&m, "a").is_none());
        assert_eq!(m.usage(), (2, 2 * entry(&big).size()));
        // Replacing an entry counts its bytes once.
        put(&m, "c", entry(&big), 1000);
        assert_eq!(m.usage(), (2, 2 * entry(&big).size()));
        // An entry larger than the whole bound is pushed out at once.
        let huge = "x".repeat(bound);
        put(&m, "h", entry(&huge), 1000);
        assert!(get(&m, "h").is_none());
        assert_eq!(m.usage(), (2, 2 * entry(&big).size()));
        assert_eq!(
            metrics
                .cache_evictions
                .get_or_create(&ReasonLabel { reason: "capacity" })
                .get(),
            3
        );
    }

    #[test]
    fn entries_survive_the_redis_encoding() {
        let e = Entry {
            created_ms: -5,
            latency_ms: u64::MAX,
            content_type: "text/event-stream; charset=utf-8".into(),
            body: Bytes::from_static(b"data: {}\n\ndata: [DONE]\n\n\x00\xff"),
        };
        assert_eq!(Entry::decode(e.encode()).unwrap(), e);
        assert!(Entry::decode(b"SYC1".to_vec()).is_err());
        assert!(Entry::decode(b"nonsense and more nonsense".to_vec()).is_err());
        let mut short = e.encode();
        short[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(short).is_err());
    }

    #[test]
    fn the_semantic_index_finds_the_nearest_live_vector_within_its_bounds() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let idx = SemanticIndex::new(2, 3, clock.clone());
        let (b1, b2) = ([1u8; 32], [2u8; 32]);
        idx.insert(b1, vec![1.0, 0.0], "x".into(), 100);
        idx.insert(b1, vec![0.6, 0.8], "y".into(), 200);
        let (k, s) = idx.nearest(&b1, &[0.0, 1.0]).unwrap();
        assert_eq!(k, "y");
        assert!((s - 0.8).abs() < 1e-6);
        assert!(idx.nearest(&b2, &[0.0, 1.0]).is_none(), "buckets never mix");
        // A bucket keeps its newest `bucket_size`.
        idx.insert(b1, vec![0.0, 1.0], "z".into(), 300);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.nearest(&b1, &[1.0, 0.0]).unwrap().0, "y");
        // Past `max_vectors` in all, the least recently used bucket gives way.
        idx.insert(b2, vec![1.0, 0.0], "w".into(), 300);
        idx.insert(b2, vec![0.0, 1.0], "v".into(), 300);
        assert_eq!(idx.len(), 3);
        // Expired vectors are not found, and are dropped.
        clock.advance(250);
        assert_eq!(idx.nearest(&b1, &[0.6, 0.8]).unwrap().0, "z");
        idx.forget(&b1, "z");
        assert!(idx.nearest(&b1, &[0.6, 0.8]).is_none());
        assert_eq!(idx.len(), 2);
    }
}
