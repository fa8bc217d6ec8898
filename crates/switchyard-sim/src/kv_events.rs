//! KV-cache events published the way vLLM publishes them (`--kv-events-config`), so
//! that a router built for vLLM's events runs against the simulator unchanged.
//!
//! - Live: a ZeroMQ PUB socket sends `[topic, seq (u64, big-endian), payload]`, one
//!   message per engine step that changed the cache; `seq` counts from 0 per publisher.
//! - Payload: msgpack of the positional array `[ts, events, data_parallel_rank]`; each
//!   event is a map tagged `"type"`: `BlockStored`, `BlockRemoved`, `AllBlocksCleared`.
//! - Replay: a ROUTER socket answers `[identity, "", start_seq]` with every buffered
//!   message from `start_seq` on, as `[identity, "", topic, seq, payload]`, then the end
//!   marker `[identity, "", "", -1 (all ones), ""]` (vLLM ≥ 0.26).
//! - Difference from vLLM: a hash is cached once, so a block filled with content another
//!   block already holds is neither stored nor, later, removed in events (vLLM keeps both
//!   copies and publishes both).
//! - Block hashes: the simulator's own 64-bit chain by default, or vLLM's `sha256_cbor`
//!   (`--prefix-caching-hash-algo sha256_cbor`), published as the digest's low 64 bits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::tokenizer::Token;

/// How block hashes are computed (vLLM's `--prefix-caching-hash-algo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum HashAlgo {
    /// The simulator's own 64-bit chained hash (cheap; the published value is the hash).
    #[default]
    #[value(name = "builtin")]
    #[serde(rename = "builtin")]
    Builtin,
    /// vLLM's: sha256 over canonical CBOR of `(parent, token_ids, None)`; the published
    /// value is the digest's last 8 bytes read big-endian.
    #[value(name = "sha256_cbor")]
    #[serde(rename = "sha256_cbor")]
    Sha256Cbor,
}

/// A full 32-byte vLLM block hash.
pub type FullHash = [u8; 32];

/// vLLM's `NONE_HASH` for `sha256_cbor`, the parent of a sequence's first block: the
/// hash of the `PYTHONHASHSEED` string when that variable is set, of `"vllm-none-hash"`
/// otherwise.
pub fn none_hash() -> FullHash {
    let seed = std::env::var("PYTHONHASHSEED").unwrap_or_else(|_| "vllm-none-hash".into());
    none_hash_for(&seed)
}

/// `NONE_HASH` for a given seed string.
pub fn none_hash_for(seed: &str) -> FullHash {
    sha256_cbor(&ciborium::Value::Text(seed.to_string()))
}

fn sha256_cbor(value: &ciborium::Value) -> FullHash {
    let mut buf = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut buf).expect("CBOR into a Vec cannot fail");
    Sha256::digest(&buf).into()
}

/// vLLM's `hash_block_tokens` with `sha256_cbor`: the hash of the block after `parent`
/// holding `tokens`, with no extra keys (no LoRA, multimodal or cache salt).
pub fn vllm_block_hash(parent: &FullHash, tokens: &[Token]) -> FullHash {
    use ciborium::Value;
    sha256_cbor(&Value::Array(vec![
        Value::Bytes(parent.to_vec()),
        Value::Array(tokens.iter().map(|&t| Value::Integer(t.into())).collect()),
        Value::Null,
    ]))
}

/// The 64-bit value a KV event carries for a full hash.
pub fn wire_hash(h: &FullHash) -> u64 {
    u64::from_be_bytes(h[24..].try_into().expect("8 bytes"))
}

/// One change to an engine's prefix cache.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum KvEvent {
    /// Consecutive blocks of one sequence became findable. The last two fields are the
    /// ones vLLM 0.34 adds for a model with one full-attention KV group.
    BlockStored {
        block_hashes: Vec<u64>,
        parent_block_hash: Option<u64>,
        token_ids: Vec<Token>,
        block_size: usize,
        lora_id: Option<u64>,
        medium: Option<&'static str>,
        lora_name: Option<String>,
        group_idx: u32,
        kv_cache_spec_kind: &'static str,
    },
    /// A cached block was reused for other data (vLLM sends one event per block).
    BlockRemoved {
        block_hashes: Vec<u64>,
        medium: Option<&'static str>,
        group_idx: u32,
    },
    /// The whole prefix cache was reset.
    AllBlocksCleared {},
}

impl KvEvent {
    /// A `BlockStored` for blocks in GPU memory without LoRA.
    pub fn stored(hashes: Vec<u64>, parent: Option<u64>, tokens: Vec<Token>, bs: usize) -> Self {
        KvEvent::BlockStored {
            block_hashes: hashes,
            parent_block_hash: parent,
            token_ids: tokens,
            block_size: bs,
            lora_id: None,
            medium: Some("GPU"),
            lora_name: None,
            group_idx: 0,
            kv_cache_spec_kind: "full_attention",
        }
    }

    /// A `BlockRemoved` for one block in GPU memory.
    pub fn removed(hash: u64) -> Self {
        KvEvent::BlockRemoved {
            block_hashes: vec![hash],
            medium: Some("GPU"),
            group_idx: 0,
        }
    }
}

/// msgpack of one batch: `[ts, events, data_parallel_rank]`.
pub fn encode_batch(ts: f64, events: &[KvEvent], dp_rank: u32) -> Vec<u8> {
    rmp_serde::to_vec_named(&(ts, events, dp_rank)).expect("events serialize")
}

/// `--kv-events-config`, as vLLM's `KVEventsConfig` (unknown keys are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvEventsConfig {
    pub enable_kv_cache_events: bool,
    /// `zmq`, or `null` (events computed, nothing sent).
    pub publisher: String,
    /// Where the PUB socket binds (`tcp://*:5557`) or, with a concrete host, connects
    /// (a router that binds one SUB socket for every engine).
    pub endpoint: String,
    /// Where the replay ROUTER socket binds; none: no replay.
    pub replay_endpoint: Option<String>,
    /// Steps of messages kept for replay.
    pub buffer_steps: usize,
    /// Messages queued between the engine and the publisher before new ones are dropped.
    pub max_queue_size: usize,
    /// First frame of every live message.
    pub topic: String,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        KvEventsConfig {
            enable_kv_cache_events: false,
            publisher: "null".into(),
            endpoint: "tcp://*:5557".into(),
            replay_endpoint: None,
            buffer_steps: 10_000,
            max_queue_size: 100_000,
            topic: String::new(),
        }
    }
}

impl std::str::FromStr for KvEventsConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let cfg: KvEventsConfig =
            serde_json::from_str(s).map_err(|e| format!("--kv-events-config: {e}"))?;
        if !matches!(cfg.publisher.as_str(), "zmq" | "null") {
            return Err(format!(
                "--kv-events-config: publisher {:?} is not `zmq` or `null`",
                cfg.publisher
            ));
        }
        for ep in std::iter::once(&cfg.endpoint).chain(&cfg.replay_endpoint) {
            if !ep.starts_with("tcp://") {
                return Err(format!(
                    "--kv-events-config: endpoint {ep:?}: only tcp:// is supported"
                ));
            }
            offset_port(ep, 0)?;
        }
        if cfg.buffer_steps == 0 || cfg.max_queue_size == 0 {
            return Err(
                "--kv-events-config: buffer_steps and max_queue_size must be positive".into(),
            );
        }
        Ok(cfg)
    }
}

impl KvEventsConfig {
    /// True when events are published over ZeroMQ.
    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher == "zmq"
    }
}

/// `endpoint` with its port raised by `offset` (vLLM offsets a data-parallel rank's
/// ports by its rank; the simulator also by engine index). Port 0 stays 0 (any free
/// port). `*` becomes `0.0.0.0`.
pub fn offset_port(endpoint: &str, offset: usize) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{endpoint:?} is not tcp://HOST:PORT"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{endpoint:?}: bad port"))?;
    let port = if port == 0 {
        0
    } else {
        u16::try_from(usize::from(port) + offset)
            .map_err(|_| format!("{endpoint:?} + {offset} runs past port 65535"))?
    };
    let host = if host == "*" { "0.0.0.0" } else { host };
    Ok(format!("tcp://{host}:{port}"))
}

/// What the engine hands its publisher, in order.
enum Outgoing {
    /// One step's events and when the step ended (seconds since the Unix epoch).
    Batch(f64, Vec<KvEvent>),
    /// The engine restarted: numbering starts again from 0 and the buffer is emptied.
    Restart,
    /// Number the next `n` messages and keep them for replay, but do not send them: a
    /// subscriber sees a gap, as after a lost connection.
    Drop(u64),
}

/// The engine's end of a publisher: where its steps' events go.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Outgoing>,
}

impl EventSink {
    /// Hands a step's events over; drops them (as vLLM does) when the queue is full.
    pub fn publish(&self, events: Vec<KvEvent>) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if self.tx.try_send(Outgoing::Batch(ts, events)).is_err() {
            tracing::warn!("KV event queue full: a batch was dropped");
        }
    }

    /// An engine restart as a router sees it: the next message is numbered 0 again and
    /// nothing from before can be replayed.
    pub async fn restart(&self) {
        let _ = self.tx.send(Outgoing::Restart).await;
    }

    /// Withholds the next `n` live messages (they stay replayable).
    pub async fn drop_next(&self, n: u64) {
        let _ = self.tx.send(Outgoing::Drop(n)).await;
    }
}

/// Messages kept for replay, oldest first.
type ReplayBuffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// A running publisher of one engine (one data-parallel rank).
pub struct Publisher {
    /// The PUB socket's endpoint (bound or connected to).
    pub endpoint: String,
    /// The replay socket's bound endpoint.
    pub replay_endpoint: Option<String>,
}

impl Publisher {
    /// Binds (or connects) the sockets for the engine at `offset` and starts publishing
    /// what the returned sink receives.
    pub async fn start(
        cfg: &KvEventsConfig,
        offset: usize,
        dp_rank: u32,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Publisher, EventSink)> {
        let endpoint = offset_port(&cfg.endpoint, offset).map_err(anyhow::Error::msg)?;
        let mut publ = zeromq::PubSocket::new();
        let bound = endpoint.contains("0.0.0.0") || cfg.endpoint.contains('*');
        let endpoint = if bound || endpoint.ends_with(":0") {
            publ.bind(&endpoint).await?.to_string()
        } else {
            publ.connect(&endpoint).await?;
            endpoint
        };
        let buffer: ReplayBuffer = Arc::default();
        let replay_endpoint = match &cfg.replay_endpoint {
            Some(ep) => {
                let ep = offset_port(ep, offset).map_err(anyhow::Error::msg)?;
                let mut router = zeromq::RouterSocket::new();
                let bound = router.bind(&ep).await?.to_string();
                tokio::spawn(serve_replay(
                    router,
                    buffer.clone(),
                    Bytes::from(cfg.topic.clone().into_bytes()),
                    shutdown.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(cfg.max_queue_size);
        tokio::spawn(publish(
            publ,
            rx,
            Bytes::from(cfg.topic.clone().into_bytes()),
            buffer,
            cfg.buffer_steps,
            dp_rank,
            shutdown,
        ));
        Ok((
            Publisher {
                endpoint,
                replay_endpoint,
            },
            EventSink { tx },
        ))
    }
}

async fn publish(
    mut socket: zeromq::PubSocket,
    mut rx: mpsc::Receiver<Outgoing>,
    topic: Bytes,
    buffer: ReplayBuffer,
    buffer_steps: usize,
    dp_rank: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seq: u64 = 0;
    let mut withhold = 0;
    loop {
        let out = tokio::select! {
            out = rx.recv() => match out { Some(out) => out, None => return },
            _ = shutdown.changed() => return,
        };
        let (ts, events) = match out {
            Outgoing::Batch(ts, events) => (ts, events),
            Outgoing::Restart => {
                seq = 0;
                buffer.lock().expect("replay buffer").clear();
                continue;
            }
            Outgoing::Drop(n) => {
                withhold = n;
                continue;
            }
        };
        let payload = Bytes::from(encode_batch(ts, &events, dp_rank));
        {
            let mut buf = buffer.lock().expect("replay buffer");
            if buf.len() == buffer_steps {
                buf.pop_front();
            }
            buf.push_back((seq, payload.clone()));
        }
        let mut msg = ZmqMessage::from(topic.clone());
        msg.push_back(Bytes::copy_from_slice(&seq.to_be_bytes()));
        msg.push_back(payload);
        seq += 1;
        if withhold > 0 {
            withhold -= 1;
            continue;
        }
        // A PUB socket drops messages for slow or absent subscribers; so does this.
        let _ = socket.send(msg).await;
    }
}

/// The end marker's sequence number: -1 as a signed 64-bit integer.
pub const END_SEQ: u64 = u64::MAX;

async fn serve_replay(
    mut socket: zeromq::RouterSocket,
    buffer: ReplayBuffer,
    topic: Bytes,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            msg = socket.recv() => match msg { Ok(m) => m, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let frames = msg.into_vec();
        // [identity, "", start_seq]; anything else is ignored.
        let (Some(identity), Some(start)) = (frames.first(), frames.last()) else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else {
            continue;
        };
        let start = u64::from_be_bytes(start);
        let items: Vec<(u64, Bytes)> = buffer
            .lock()
            .expect("replay buffer")
            .iter()
            .filter(|(s, _)| *s >= start)
            .cloned()
            .collect();
        let reply = |topic: Bytes, seq: u64, payload: Bytes| {
            let mut m = ZmqMessage::from(identity.clone());
            m.push_back(Bytes::new());
            m.push_back(topic);
            m.push_back(Bytes::copy_from_slice(&seq.to_be_bytes()));
            m.push_back(payload);
            m
        };
        for (seq, payload) in items {
            if socket
                .send(reply(topic.clone(), seq, payload))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = socket
            .send(reply(Bytes::new(), END_SEQ, Bytes::new()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector contract/vllm_hash_vector.py computes with cbor2 and hashlib as vLLM
    /// does (committed as tests/fixtures/vllm_hash_vector.json).
    #[test]
    fn block_hashes_match_vllms_sha256_cbor() {
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/vllm_hash_vector.json")).unwrap();
        let hex = |h: &FullHash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        for chain in vector.as_array().unwrap() {
            let mut parent = none_hash_for(chain["seed"].as_str().unwrap());
            assert_eq!(hex(&parent), chain["none_hash"]);
            for block in chain["blocks"].as_array().unwrap() {
                let tokens: Vec<Token> =
                    serde_json::from_value(block["token_ids"].clone()).unwrap();
                let h = vllm_block_hash(&parent, &tokens);
                assert_eq!(hex(&h), block["hash"]);
                assert_eq!(wire_hash(&h), block["wire"].as_u64().unwrap());
                parent = h;
            }
        }
    }

    #[test]
    fn ports_are_offset_and_wildcards_bound_on_every_address() {
        assert_eq!(
            offset_port("tcp://*:5557", 3).unwrap(),
            "tcp://0.0.0.0:5560"
        );
        assert_eq!(
            offset_port("tcp://10.0.0.1:5557", 0).unwrap(),
            "tcp://10.0.0.1:5557"
        );
        assert_eq!(
            offset_port("tcp://127.0.0.1:0", 5).unwrap(),
            "tcp://127.0.0.1:0"
        );
        assert!(offset_port("tcp://*:65535", 1).is_err());
        assert!(offset_port("ipc:///tmp/x", 0).is_err());
    }

    #[test]
    fn the_config_is_vllms_json_and_bad_values_are_named() {
        let c: KvEventsConfig = r#"{"enable_kv_cache_events":true,"publisher":"zmq",
            "endpoint":"tcp://*:5557","replay_endpoint":"tcp://*:5558",
            "topic":"kv@h:1@m","buffer_steps":10000,"hwm":100000}"#
            .parse()
            .unwrap();
        assert!(c.publishes());
        assert_eq!(c.replay_endpoint.as_deref(), Some("tcp://*:5558"));
        let e = r#"{"publisher":"kafka"}"#.parse::<KvEventsConfig>().unwrap_err();
        assert!(e.contains("kafka"), "{e}");
        let e = r#"{"endpoint":"ipc:///x"}"#.parse::<KvEventsConfig>().unwrap_err();
        assert!(e.contains("tcp://"), "{e}");
    }
}
