//! What each engine really caches, from its own KV-cache events (vLLM's
//! `--kv-events-config`), for the `precise_prefix` policy.
//!
//! - [`wire`]: the msgpack payload, decoded.
//! - [`subscriber`]: one ZeroMQ subscription per worker, with gap detection and replay.
//! - [`tokenize`]: the request's token ids as the engine will see them.
//! - [`KvState`]: the gateway-wide index. Keys are the gateway's own chained hash of
//!   token blocks ([`token_block_hash`]), fed by `BlockStored.token_ids`, so the engine's
//!   hash function never has to be reproduced; values are the workers (one per
//!   data-parallel rank) holding the block. Engine hashes are mapped to these keys per
//!   worker, for removals, by each worker's subscriber.

pub mod check;
pub mod subscriber;
pub mod tokenize;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::PrefixIndex;
use crate::config::Config;
use crate::fleet::{Worker, WorkerId};
use crate::metrics::Metrics;
use tokenize::Tokenizer;

/// A tokenizer and a chat template, as `--kv-tokenizer` and `--kv-chat-template` name
/// them.
type TokenizerSpec = (String, String);

/// Chain start of token-block hashes (the parent of a sequence's first block).
pub const ROOT: u64 = 0x6A09_E667_F3BC_C908;

/// Chained hash of one block of token ids: covers every token before it through
/// `parent`. The gateway's own function, the same for events and requests.
pub fn token_block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = parent ^ 0x9E37_79B9_7F4A_7C15;
    for &t in tokens {
        h = (h.rotate_left(5) ^ u64::from(t)).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

/// The chained hashes of every full block of `tokens`.
pub fn token_blocks(tokens: &[u32], block_size: usize) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    let mut parent = ROOT;
    tokens
        .chunks_exact(block_size)
        .map(|b| {
            parent = token_block_hash(parent, b);
            parent
        })
        .collect()
}

/// Whether a worker's event stream can be trusted right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Connected and in sequence: the index holds what the engine holds.
    Live,
    /// Not connected, or catching up: route this worker approximately.
    Down,
}

/// One worker's subscription, as the admin API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: Stream,
    /// Blocks its engine holds according to its events.
    pub blocks: usize,
    /// The sequence number expected next.
    pub next_seq: Option<u64>,
}

/// The gateway-wide index of engine caches, and the state of each worker's stream.
pub struct KvState {
    /// Token-block hash → workers holding the block.
    pub index: PrefixIndex,
    /// Tokens per block, as the engines' events report it (0: none seen yet).
    block_size: AtomicUsize,
    /// The block size assumed before any event says otherwise.
    default_block_size: usize,
    streams: RwLock<HashMap<WorkerId, StreamInfo>>,
    /// The running subscriptions, by worker.
    subscriptions: Mutex<HashMap<WorkerId, tokio::task::JoinHandle<()>>>,
    /// Tokenizers by (tokenizer, chat template), each loaded once, on first use; models
    /// naming the same pair share one.
    tokenizers: Mutex<HashMap<TokenizerSpec, Option<Arc<Tokenizer>>>>,
    pub metrics: Arc<Metrics>,
}

impl KvState {
    /// An index of at most about `--kv-index-max-blocks` blocks (beyond, the least
    /// recently stored are dropped by upkeep), assuming `--kv-block-size` tokens per
    /// block until events say.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        KvState {
            index: PrefixIndex::new(cfg.kv_index_max_blocks),
            block_size: AtomicUsize::new(0),
            default_block_size: cfg.kv_block_size.max(1),
            streams: RwLock::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            tokenizers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The tokenizer `tokenizer` with the chat template `template` (as `--kv-tokenizer`
    /// and `--kv-chat-template` name them), loaded on first use; `None`, logged once,
    /// when it cannot be.
    pub fn tokenizer(&self, tokenizer: &str, template: &str) -> Option<Arc<Tokenizer>> {
        let key = (tokenizer.to_string(), template.to_string());
        let mut all = self.tokenizers.lock().expect("tokenizers lock");
        all.entry(key)
            .or_insert_with(|| match Tokenizer::load(tokenizer, template) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    tracing::error!(error = %e, tokenizer, template, "a precise_prefix tokenizer cannot be loaded: its models are routed approximately");
                    None
                }
            })
            .clone()
    }

    /// The token blocks of an OpenAI request body by `t` (empty when it cannot be
    /// tokenised).
    pub fn token_blocks_of(&self, t: &Tokenizer, body: &[u8]) -> Vec<u64> {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Vec::new();
        };
        match t.request_tokens(&v) {
            Some(ids) => token_blocks(&ids, self.block_size()),
            None => Vec::new(),
        }
    }

    /// Subscribes to `worker`'s events if its engine publishes them and no subscription
    /// runs yet (needs a tokio runtime; without one, nothing happens).
    pub fn subscribe(self: &Arc<Self>, worker: &Arc<Worker>) {
        let Some(ep) = worker.kv_events.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut subs = self.subscriptions.lock().expect("subscriptions lock");
        if subs.get(&worker.id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let task = subscriber::run(self.clone(), worker.id.clone(), ep);
        subs.insert(worker.id.clone(), rt.spawn(task));
    }

    /// Tokens per block: the engines' (from their events) or the configured default.
    pub fn block_size(&self) -> usize {
        match self.block_size.load(Ordering::Relaxed) {
            0 => self.default_block_size,
            n => n,
        }
    }

    pub(crate) fn saw_block_size(&self, n: usize) {
        if n > 0 && self.block_size.swap(n, Ordering::Relaxed) != n {
            tracing::info!(block_size = n, "engines' KV block size");
        }
    }

    /// The stream state of `worker` (a worker without a subscription is `Down`).
    pub fn stream(&self, worker: &WorkerId) -> Stream {
        self.info(worker).map_or(Stream::Down, |i| i.stream)
    }

    /// `worker`'s subscription, if it has one.
    pub fn info(&self, worker: &WorkerId) -> Option<StreamInfo> {
        self.streams
            .read()
            .expect("streams lock")
            .get(worker)
            .copied()
    }

    pub(crate) fn set_stream(&self, worker: &WorkerId, s: Stream) {
        let mut streams = self.streams.write().expect("streams lock");
        let info = streams.entry(worker.clone()).or_insert(StreamInfo {
            stream: Stream::Down,
            blocks: 0,
            next_seq: None,
        });
        if info.stream != s {
            info.stream = s;
            tracing::info!(worker = %worker, stream = ?s, "KV event stream");
        }
    }

    /// Records what `worker`'s events say it holds.
    pub(crate) fn report(&self, worker: &WorkerId, blocks: usize, next_seq: Option<u64>) {
        let mut streams = self.streams.write().expect("streams lock");
        let info = streams.entry(worker.clone()).or_insert(StreamInfo {
            stream: Stream::Down,
            blocks: 0,
            next_seq: None,
        });
        info.blocks = blocks;
        info.next_seq = next_seq;
    }

    /// Workers whose stream is live.
    pub fn live_streams(&self) -> usize {
        self.streams
            .read()
            .expect("streams lock")
            .values()
            .filter(|s| s.stream == Stream::Live)
            .count()
    }

    /// Ends every subscription (the gateway is shutting down).
    pub fn stop_all(&self) {
        for (_, task) in self
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .drain()
        {
            task.abort();
        }
    }

    /// `worker` left the fleet: its subscription ends, its stream and entries are
    /// forgotten.
    pub fn forget(&self, worker: &WorkerId) {
        if let Some(task) = self
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .remove(worker)
        {
            task.abort();
        }
        self.streams.write().expect("streams lock").remove(worker);
        self.index.forget(worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_blocks_chain_and_skip_the_partial_tail() {
        let a = token_blocks(&[1, 2, 3, 4, 5], 2);
        let b = token_blocks(&[9, 2, 3, 4], 2);
        assert_eq!(a.len(), 2);
        assert_ne!(a[1], b[1], "the second block's hash covers the first");
        assert_eq!(a[0], token_block_hash(ROOT, &[1, 2]));
        assert_eq!(a[1], token_block_hash(a[0], &[3, 4]));
        assert!(token_blocks(&[1, 2, 3], 0).is_empty());
    }
}
