//! One subscription per worker to its engine's KV events: a ZeroMQ SUB socket on the
//! engine's `endpoint` (reconnecting by itself), and a DEALER on its `replay_endpoint`
//! to fetch what a gap lost.
//!
//! Sequence numbers drive correctness:
//! - the next expected number: applied;
//! - a jump forward (messages lost): the missing ones are replayed, then applied; if the
//!   engine no longer buffers them (or has no replay endpoint), the worker's entries are
//!   cleared, since removals may have been lost with them;
//! - a number at or below one already seen: the engine restarted (numbering begins
//!   again at 0 with an empty cache): the worker's entries are cleared.
//!
//! While the connection is down or catching up, the worker's stream is `Down` and the
//! policy routes it approximately.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use zeromq::{Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use super::wire::{self, Batch, Event};
use super::{KvState, ROOT, Stream, token_block_hash};
use crate::config::kv::KvEndpoints;
use crate::fleet::{Registry, WorkerId};
use crate::metrics::Metrics;

/// The end marker's sequence number in a replay.
const END_SEQ: u64 = u64::MAX;

/// How long a replay may take before it counts as failed.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

/// One worker's view of its engine's cache: engine block hash → gateway block hash.
pub struct Source {
    worker: WorkerId,
    map: HashMap<u64, u64, nohash_hasher::BuildNoHashHasher<u64>>,
    /// The sequence number expected next (`None`: nothing seen yet).
    next_seq: Option<u64>,
    max_blocks: usize,
}

/// What a message did to the sequence.
#[derive(Debug, PartialEq, Eq)]
pub enum Order {
    /// The expected one (or the first).
    InSequence,
    /// Messages `from..seq` are missing.
    Gap { from: u64 },
    /// The engine restarted.
    Restart,
}

impl Source {
    pub fn new(worker: WorkerId, max_blocks: usize) -> Self {
        Source {
            worker,
            map: HashMap::default(),
            next_seq: None,
            max_blocks: max_blocks.max(1),
        }
    }

    /// Where `seq` falls relative to what was seen.
    pub fn order(&self, seq: u64) -> Order {
        match self.next_seq {
            None => Order::InSequence,
            Some(n) if seq == n => Order::InSequence,
            Some(n) if seq > n => Order::Gap { from: n },
            Some(_) => Order::Restart,
        }
    }

    /// Blocks this worker holds according to its events.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets everything the worker held (restart, reset, lost events).
    pub fn clear(&mut self, state: &KvState) {
        self.map.clear();
        state.index.clear(&self.worker);
        state.report(&self.worker, 0, self.next_seq);
    }

    /// Applies message `seq`'s batch to the index.
    pub fn apply(&mut self, state: &KvState, metrics: &Metrics, seq: u64, batch: &Batch) {
        self.next_seq = Some(seq + 1);
        let slot = state.index.slot(&self.worker);
        for e in &batch.events {
            metrics.kv_event(match e {
                Event::Stored { .. } => "stored",
                Event::Removed { .. } => "removed",
                Event::Cleared => "cleared",
                Event::Unknown => "unknown",
            });
            match e {
                Event::Stored {
                    hashes,
                    parent,
                    tokens,
                    block_size,
                } => {
                    state.saw_block_size(*block_size);
                    let mut p = match parent {
                        None => ROOT,
                        Some(h) => match self.map.get(h) {
                            Some(g) => *g,
                            None => {
                                // Its parent was never seen (stored before the
                                // subscription, or evicted): the chain cannot be placed.
                                metrics.kv_skipped("unknown_parent");
                                continue;
                            }
                        },
                    };
                    let mut keys = Vec::with_capacity(hashes.len());
                    for (i, h) in hashes.iter().enumerate() {
                        p = token_block_hash(p, &tokens[i * block_size..(i + 1) * block_size]);
                        self.map.insert(*h, p);
                        keys.push(p);
                    }
                    state.index.insert(&keys, slot);
                }
                Event::Removed { hashes } => {
                    for h in hashes {
                        if let Some(g) = self.map.remove(h) {
                            state.index.remove(g, slot);
                        }
                    }
                }
                Event::Cleared => self.clear(state),
                Event::Unknown => {}
            }
        }
        if self.map.len() > self.max_blocks {
            // More than any engine holds: events were lost somewhere; start over.
            metrics.kv_reset("overflow");
            self.clear(state);
        }
        state.report(&self.worker, self.map.len(), self.next_seq);
    }

    /// Handles one live message: orders it, replays a gap, clears on a restart, applies.
    /// Returns whether the stream is in sequence afterwards.
    pub async fn receive(
        &mut self,
        state: &KvState,
        metrics: &Metrics,
        replay: Option<&str>,
        frames: &[Bytes],
    ) -> bool {
        let Some((seq, payload)) = live_frames(frames) else {
            metrics.kv_skipped("frames");
            return true;
        };
        let batch = match wire::decode(payload) {
            Ok(b) => b,
            Err(e) => {
                metrics.kv_skipped("payload");
                tracing::debug!(worker = %self.worker, error = %e, "malformed KV event payload");
                // Its number still counts: what it held is lost, as in a gap.
                self.next_seq = Some(seq + 1);
                return true;
            }
        };
        match self.order(seq) {
            Order::InSequence => {}
            Order::Restart => {
                metrics.kv_reset("restart");
                self.clear(state);
            }
            Order::Gap { from } => {
                let recovered = match replay {
                    Some(ep) => self.replay(state, metrics, ep, from, seq).await,
                    None => false,
                };
                metrics.kv_replay(if recovered { "recovered" } else { "lost" });
                if !recovered {
                    metrics.kv_reset("gap");
                    self.clear(state);
                }
            }
        }
        metrics.kv_lag(batch.ts);
        self.apply(state, metrics, seq, &batch);
        true
    }

    /// Fetches messages `from..until` from the engine's replay socket and applies them.
    /// False when they cannot all be had.
    pub async fn replay(
        &mut self,
        state: &KvState,
        metrics: &Metrics,
        endpoint: &str,
        from: u64,
        until: u64,
    ) -> bool {
        let got = match tokio::time::timeout(REPLAY_TIMEOUT, fetch_replay(endpoint, from)).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::warn!(worker = %self.worker, error = %e, "KV event replay failed");
                return false;
            }
            Err(_) => {
                tracing::warn!(worker = %self.worker, "KV event replay timed out");
                return false;
            }
        };
        // The buffer must still start at `from`, and hold everything up to `until`.
        let wanted: Vec<_> = got.into_iter().filter(|(s, _)| *s < until).collect();
        if wanted.first().map(|(s, _)| *s) != Some(from) || wanted.len() as u64 != until - from {
            return false;
        }
        for (seq, payload) in wanted {
            match wire::decode(&payload) {
                Ok(batch) => self.apply(state, metrics, seq, &batch),
                Err(_) => {
                    metrics.kv_skipped("payload");
                    return false;
                }
            }
        }
        true
    }
}

/// `[topic, seq (8 bytes), payload]` of a live message.
fn live_frames(frames: &[Bytes]) -> Option<(u64, &[u8])> {
    match frames {
        [_topic, seq, payload] => {
            Some((u64::from_be_bytes(seq.as_ref().try_into().ok()?), payload))
        }
        _ => None,
    }
}

/// Asks `endpoint` for every buffered message from `from` on, up to the end marker.
async fn fetch_replay(endpoint: &str, from: u64) -> anyhow::Result<Vec<(u64, Bytes)>> {
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(endpoint).await?;
    let mut req = ZmqMessage::from(Bytes::new());
    req.push_back(Bytes::copy_from_slice(&from.to_be_bytes()));
    dealer.send(req).await?;
    let mut out = Vec::new();
    loop {
        let frames = dealer.recv().await?.into_vec();
        // [empty, topic, seq, payload] (vLLM ≥ 0.26) or [empty, seq, payload] (older).
        let (seq, payload) = match frames.as_slice() {
            [_, _, seq, payload] | [_, seq, payload] => (seq, payload),
            _ => anyhow::bail!("a replay message of {} frames", frames.len()),
        };
        let seq = u64::from_be_bytes(
            seq.as_ref()
                .try_into()
                .map_err(|_| anyhow::anyhow!("a replay sequence number of {} bytes", seq.len()))?,
        );
        if seq == END_SEQ {
            return Ok(out);
        }
        out.push((seq, payload.clone()));
    }
}

/// Follows `worker`'s events until the task is aborted.
pub async fn run(state: Arc<KvState>, worker: WorkerId, ep: KvEndpoints) {
    let metrics = state.metrics.clone();
    let max_blocks = state.index.max_entries();
    let mut src = Source::new(worker.clone(), max_blocks);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut sub = zeromq::SubSocket::new();
        let mut monitor = sub.monitor();
        let connected = async {
            sub.connect(&ep.live).await?;
            sub.subscribe("").await
        }
        .await;
        if let Err(e) = connected {
            state.set_stream(&worker, Stream::Down);
            tracing::debug!(worker = %worker, endpoint = %ep.live, error = %e, "KV events: cannot connect");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(100);
        // What happened before this connection: as much as the engine still buffers.
        catch_up(&mut src, &state, &metrics, ep.replay.as_deref()).await;
        state.set_stream(&worker, Stream::Live);
        loop {
            tokio::select! {
                msg = sub.recv() => match msg {
                    Ok(m) => {
                        let frames = m.into_vec();
                        src.receive(&state, &metrics, ep.replay.as_deref(), &frames).await;
                    }
                    Err(e) => {
                        tracing::debug!(worker = %worker, error = %e, "KV events: receive failed");
                        break;
                    }
                },
                ev = monitor.next() => match ev {
                    Some(SocketEvent::Disconnected(_)) => {
                        state.set_stream(&worker, Stream::Down);
                    }
                    Some(SocketEvent::Connected(..)) => {
                        // Reconnected by the socket: fetch what was missed meanwhile.
                        catch_up(&mut src, &state, &metrics, ep.replay.as_deref()).await;
                        state.set_stream(&worker, Stream::Live);
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        state.set_stream(&worker, Stream::Down);
        tokio::time::sleep(backoff).await;
    }
}

/// Replays from the next expected message (from 0 on a first connection). Without a
/// replay endpoint, or when the engine no longer buffers that far back, what was missed
/// is unknown: a reconnection then clears the worker's entries.
async fn catch_up(src: &mut Source, state: &KvState, metrics: &Metrics, replay: Option<&str>) {
    let from = src.next_seq.unwrap_or(0);
    let first = src.next_seq.is_none();
    let got = match replay {
        Some(ep) => tokio::time::timeout(REPLAY_TIMEOUT, fetch_replay(ep, from))
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let Some(got) = got else {
        if !first {
            metrics.kv_replay("lost");
            metrics.kv_reset("reconnect");
            src.clear(state);
        }
        return;
    };
    if !first && got.first().is_some_and(|(s, _)| *s != from) {
        metrics.kv_replay("lost");
        metrics.kv_reset("reconnect");
        src.clear(state);
    } else if !first {
        metrics.kv_replay("recovered");
    }
    if got.is_empty() {
        // Nothing buffered from `from` on: the next message is numbered `from`.
        src.next_seq = Some(from);
    }
    for (seq, payload) in got {
        if src.order(seq) == Order::Restart {
            continue;
        }
        match wire::decode(&payload) {
            Ok(batch) => src.apply(state, metrics, seq, &batch),
            Err(_) => metrics.kv_skipped("payload"),
        }
    }
}

/// vLLM's centralised mode: engines connect their PUB sockets to one SUB socket the
/// gateway binds (`--kv-events-bind`). A message's topic names its engine: the worker
/// whose URL's `host:port` is one of the topic's `@`-separated parts (vLLM's
/// `kv@HOST:PORT@MODEL` convention); its batch's `data_parallel_rank` names the rank.
pub async fn bind(endpoint: &str) -> anyhow::Result<zeromq::SubSocket> {
    let mut sub = zeromq::SubSocket::new();
    sub.bind(endpoint).await?;
    sub.subscribe("").await?;
    Ok(sub)
}

/// The worker a bound socket's message comes from.
fn worker_of(registry: &Registry, topic: &[u8], rank: Option<i64>) -> Option<WorkerId> {
    let topic = std::str::from_utf8(topic).ok()?;
    let parts: Vec<&str> = topic.split('@').collect();
    registry
        .all()
        .into_iter()
        .find(|w| {
            let authority = w.id.url.split_once("://").map_or(&*w.id.url, |(_, r)| r);
            let authority = authority.split('/').next().unwrap_or_default();
            parts.contains(&authority)
                && match (w.id.dp_rank, rank) {
                    (None, _) => true,
                    (Some(r), Some(b)) => i64::from(r) == b,
                    (Some(_), None) => false,
                }
        })
        .map(|w| w.id.clone())
}

/// Follows the engines that connect to `sub` until the task is aborted. Without a
/// connection per engine there is no disconnection to see: a worker's stream turns
/// live with its first message, and gaps are replayed from its replay endpoint if it
/// has one.
pub async fn run_bound(state: Arc<KvState>, registry: Arc<Registry>, mut sub: zeromq::SubSocket) {
    let metrics = state.metrics.clone();
    let max_blocks = state.index.max_entries();
    let mut sources: HashMap<WorkerId, Source> = HashMap::new();
    loop {
        let frames = match sub.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "KV events (bound socket): receive failed");
                return;
            }
        };
        let Some(topic) = frames.first() else {
            metrics.kv_skipped("frames");
            continue;
        };
        // The rank is in the payload: peek at it before ordering the message.
        let rank = live_frames(&frames).and_then(|(_, p)| wire::decode(p).ok()?.dp_rank);
        let Some(worker) = worker_of(&registry, topic, rank) else {
            metrics.kv_skipped("unknown_engine");
            continue;
        };
        sources.retain(|w, _| state.info(w).is_some() || *w == worker);
        let replay = registry
            .all()
            .into_iter()
            .find(|w| w.id == worker)
            .and_then(|w| w.kv_events.as_ref().and_then(|k| k.replay.clone()));
        let src = sources
            .entry(worker.clone())
            .or_insert_with(|| Source::new(worker.clone(), max_blocks));
        src.receive(&state, &metrics, replay.as_deref(), &frames)
            .await;
        state.set_stream(&worker, Stream::Live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fleet::WorkerRole;
    use crate::routing::kv::token_blocks;

    fn worker(port: u16) -> WorkerId {
        WorkerId {
            url: format!("http://127.0.0.1:{port}"),
            dp_rank: None,
            role: WorkerRole::Regular,
        }
    }

    fn state() -> KvState {
        KvState::new(
            &Config {
                kv_block_size: 2,
                ..Config::default()
            },
            Arc::new(Metrics::new()),
        )
    }

    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            ts: 0.0,
            events,
            dp_rank: Some(0),
        }
    }

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> Event {
        Event::Stored {
            hashes: hashes.to_vec(),
            parent,
            tokens: tokens.to_vec(),
            block_size: 2,
        }
    }

    /// Leading blocks of `tokens` that `w` holds in the index.
    fn held(s: &KvState, w: &WorkerId, tokens: &[u32]) -> usize {
        let slot = s.index.slot(w);
        s.index.match_lengths(&token_blocks(tokens, 2), &[slot])[0]
    }

    #[test]
    fn stores_chain_through_parents_and_removals_and_clears_undo_them() {
        let (s, m, w) = (state(), Metrics::new(), worker(1));
        let mut src = Source::new(w.clone(), 1000);
        // Blocks [1,2] [3,4] stored, then [5,6] as their child in a later event.
        src.apply(
            &s,
            &m,
            0,
            &batch(vec![stored(&[10, 11], None, &[1, 2, 3, 4])]),
        );
        src.apply(&s, &m, 1, &batch(vec![stored(&[12], Some(11), &[5, 6])]));
        assert_eq!(held(&s, &w, &[1, 2, 3, 4, 5, 6, 7]), 3);
        assert_eq!(held(&s, &w, &[1, 2, 9, 9]), 1, "a different second block");
        // The middle block is evicted: the prefix match stops before it.
        src.apply(&s, &m, 2, &batch(vec![Event::Removed { hashes: vec![11] }]));
        assert_eq!(held(&s, &w, &[1, 2, 3, 4, 5, 6]), 1);
        assert_eq!(src.len(), 2);
        // A child of an unknown parent cannot be placed.
        src.apply(&s, &m, 3, &batch(vec![stored(&[13], Some(99), &[7, 8])]));
        assert_eq!(src.len(), 2);
        assert_eq!(
            m.kv_skipped
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "unknown_parent"
                })
                .get(),
            1
        );
        src.apply(&s, &m, 4, &batch(vec![Event::Cleared]));
        assert_eq!(held(&s, &w, &[1, 2]), 0);
        assert!(src.is_empty() && s.index.is_empty());
    }

    #[test]
    fn two_workers_holding_one_block_are_both_found_and_removed_separately() {
        let (s, m) = (state(), Metrics::new());
        let (a, b) = (worker(1), worker(2));
        let mut sa = Source::new(a.clone(), 1000);
        let mut sb = Source::new(b.clone(), 1000);
        // Engines hash differently: the gateway's own key is the same.
        sa.apply(&s, &m, 0, &batch(vec![stored(&[100], None, &[1, 2])]));
        sb.apply(&s, &m, 0, &batch(vec![stored(&[777], None, &[1, 2])]));
        assert_eq!(s.index.len(), 1);
        assert_eq!((held(&s, &a, &[1, 2]), held(&s, &b, &[1, 2])), (1, 1));
        sa.apply(
            &s,
            &m,
            1,
            &batch(vec![Event::Removed { hashes: vec![100] }]),
        );
        assert_eq!((held(&s, &a, &[1, 2]), held(&s, &b, &[1, 2])), (0, 1));
    }

    #[test]
    fn sequence_numbers_tell_gaps_from_restarts() {
        let mut src = Source::new(worker(1), 10);
        assert_eq!(
            src.order(7),
            Order::InSequence,
            "the first message is taken as it is"
        );
        src.next_seq = Some(5);
        assert_eq!(src.order(5), Order::InSequence);
        assert_eq!(src.order(9), Order::Gap { from: 5 });
        assert_eq!(src.order(0), Order::Restart);
        assert_eq!(src.order(4), Order::Restart);
    }

    fn frames(seq: u64, payload: Vec<u8>) -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"t"),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload.into(),
        ]
    }

    fn payload(events: &[rmpv::Value]) -> Vec<u8> {
        let v = rmpv::Value::Array(vec![
            1.0.into(),
            rmpv::Value::Array(events.to_vec()),
            0.into(),
        ]);
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    fn stored_value(hash: u64, tokens: [u32; 2]) -> rmpv::Value {
        rmpv::Value::Map(vec![
            ("type".into(), "BlockStored".into()),
            ("block_hashes".into(), rmpv::Value::Array(vec![hash.into()])),
            ("parent_block_hash".into(), rmpv::Value::Nil),
            (
                "token_ids".into(),
                rmpv::Value::Array(tokens.iter().map(|t| (*t).into()).collect()),
            ),
            ("block_size".into(), 2.into()),
        ])
    }

    #[tokio::test]
    async fn a_restart_clears_and_malformed_messages_are_counted_and_skipped() {
        let (s, m, w) = (state(), Metrics::new(), worker(1));
        let mut src = Source::new(w.clone(), 1000);
        assert!(
            src.receive(
                &s,
                &m,
                None,
                &frames(0, payload(&[stored_value(1, [1, 2])]))
            )
            .await
        );
        assert!(
            src.receive(
                &s,
                &m,
                None,
                &frames(1, payload(&[stored_value(2, [3, 4])]))
            )
            .await
        );
        assert_eq!(src.len(), 2);
        // Wrong frame counts and short sequence numbers, then garbage payloads.
        let skipped = |r| {
            m.kv_skipped
                .get_or_create(&crate::metrics::ReasonLabel { reason: r })
                .get()
        };
        src.receive(&s, &m, None, &[Bytes::from_static(b"t")]).await;
        src.receive(
            &s,
            &m,
            None,
            &[Bytes::new(), Bytes::from_static(b"123"), Bytes::new()],
        )
        .await;
        assert_eq!(skipped("frames"), 2);
        src.receive(&s, &m, None, &frames(2, vec![0xc1, 0x00]))
            .await;
        assert_eq!(skipped("payload"), 1);
        assert_eq!(src.len(), 2, "nothing applied from garbage");
        // The engine restarted: numbering from 0, and what it held before is gone.
        src.receive(
            &s,
            &m,
            None,
            &frames(0, payload(&[stored_value(3, [5, 6])])),
        )
        .await;
        assert_eq!(
            m.kv_resets
                .get_or_create(&crate::metrics::ReasonLabel { reason: "restart" })
                .get(),
            1
        );
        assert_eq!((held(&s, &w, &[1, 2]), held(&s, &w, &[5, 6])), (0, 1));
        // A gap without a replay endpoint: unknown losses, so the entries go.
        src.receive(
            &s,
            &m,
            None,
            &frames(5, payload(&[stored_value(4, [7, 8])])),
        )
        .await;
        assert_eq!(
            m.kv_resets
                .get_or_create(&crate::metrics::ReasonLabel { reason: "gap" })
                .get(),
            1
        );
        assert_eq!((held(&s, &w, &[5, 6]), held(&s, &w, &[7, 8])), (0, 1));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes, and valid payloads with bytes flipped or cut, never panic
        /// the decoder or the index.
        #[test]
        fn no_payload_panics(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..400,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (s, m) = (state(), Metrics::new());
            let mut src = Source::new(worker(1), 64);
            let mut valid = payload(&[stored_value(1, [1, 2]), stored_value(2, [3, 4])]);
            for (i, b) in flips {
                if !valid.is_empty() {
                    let n = valid.len();
                    valid[i % n] = b;
                }
            }
            valid.truncate(cut.max(1));
            rt.block_on(async {
                src.receive(&s, &m, None, &frames(0, junk)).await;
                src.receive(&s, &m, None, &frames(1, valid)).await;
            });
        }
    }
}
