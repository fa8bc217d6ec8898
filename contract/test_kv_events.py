"""The simulator's KV-cache events read as a vLLM consumer reads them: pyzmq sockets, and
msgspec structs declared as vLLM 0.34 declares them (vllm/distributed/kv_events.py),
decoded strictly. Nothing here shares code with the simulator.

Environment: SIM_URL (HTTP), SIM_MODEL, SIM_KV_ENDPOINT (PUB), SIM_KV_REPLAY (ROUTER), SIM_TOPIC,
SIM_BLOCK_SIZE, and PYTHONHASHSEED as the simulator saw it (unset: "vllm-none-hash").

Checks:
- live messages have exactly [topic, seq (8 bytes, big-endian), payload], seq from 0;
- every payload decodes as vLLM's KVEventBatch;
- BlockStored hashes are vLLM's sha256_cbor chain over the event's own token_ids, and
  the first block's tokens are the prompt's tokens (/tokenize);
- BlockRemoved only names blocks stored before; AllBlocksCleared after a cache reset;
- replay from seq 0 returns the same payloads, then the end marker.
"""

import hashlib
import json
import os
import sys
import time
import urllib.request
from typing import Any

import cbor2
import msgspec
import zmq


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent, forbid_unknown_fields=True):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(KVCacheEvent, forbid_unknown_fields=True):
    block_hashes: list[bytes | int]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent, forbid_unknown_fields=True):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


URL = os.environ["SIM_URL"]
MODEL = os.environ["SIM_MODEL"]
TOPIC = os.environ["SIM_TOPIC"].encode()
BS = int(os.environ["SIM_BLOCK_SIZE"])
DECODE = msgspec.msgpack.Decoder(KVEventBatch)
MASK = 2**64 - 1


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


NONE_HASH = sha256_cbor(os.environ.get("PYTHONHASHSEED", "vllm-none-hash"))


def post(path, body):
    req = urllib.request.Request(
        URL + path, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def prompt(i):
    return f"tenant {i} system prompt: " + " ".join(f"rule{i}x{j}" for j in range(120))


ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(os.environ["SIM_KV_ENDPOINT"])

# A SUB socket misses what is sent before its subscription reaches the publisher, so
# requests are sent until a first message arrives; replay from 0 then has everything.
# Each try sends a prompt not seen before: a repeated one hits the prefix cache, stores
# no block and publishes nothing, so the loop would wait for an event that never comes.
live = []
for attempt in range(100):
    p = prompt(0) if attempt == 0 else prompt(100 + attempt)
    post("/v1/completions", {"model": MODEL, "prompt": p, "max_tokens": 1})
    if sub.poll(200):
        break
else:
    sys.exit("no live KV event arrived")

# Fill the cache past its capacity (evictions), then reset it.
for i in range(1, 8):
    post("/v1/completions", {"model": MODEL, "prompt": prompt(i), "max_tokens": 2})
post("/reset_prefix_cache", {})

deadline = time.monotonic() + 60
cleared = False
while not cleared and time.monotonic() < deadline:
    if not sub.poll(1000):
        continue
    frames = sub.recv_multipart()
    assert len(frames) == 3, f"live message has {len(frames)} frames"
    topic, seq, payload = frames
    assert topic == TOPIC, topic
    assert len(seq) == 8, seq
    batch = DECODE.decode(payload)
    live.append((int.from_bytes(seq, "big"), payload))
    cleared = any(isinstance(e, AllBlocksCleared) for e in batch.events)
assert cleared, "no AllBlocksCleared after POST /reset_prefix_cache"
seqs = [s for s, _ in live]
assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gaps in live seqs: {seqs}"

# Replay from 0: every message, in order, then the end marker.
dealer = ctx.socket(zmq.DEALER)
dealer.connect(os.environ["SIM_KV_REPLAY"])
dealer.send_multipart([b"", (0).to_bytes(8, "big")])
replayed = []
while True:
    assert dealer.poll(10000), "replay stalled"
    frames = dealer.recv_multipart()
    assert len(frames) == 4 and frames[0] == b"", frames[:2]
    _, topic, seq, payload = frames
    if seq == (-1).to_bytes(8, "big", signed=True):
        assert topic == b"" and payload == b"", "end marker carries no topic or payload"
        break
    assert topic == TOPIC
    replayed.append((int.from_bytes(seq, "big"), payload))
assert [s for s, _ in replayed] == list(range(len(replayed))), "replay starts at 0, no gaps"
assert replayed[seqs[0] : seqs[0] + len(live)] == live, "replay equals what was sent live"

# Walk every event in order: hashes, tokens, removals.
first_prompt = post("/tokenize", {"prompt": prompt(0)})["tokens"]
full = {}  # wire hash -> full digest, for children's parents
cached = set()
stored = removed = 0
first = True
for _, payload in replayed:
    batch = DECODE.decode(payload)
    assert isinstance(batch.ts, float) and batch.ts > 1.6e9, batch.ts
    assert batch.data_parallel_rank == 0
    for e in batch.events:
        if isinstance(e, BlockStored):
            assert e.block_size == BS and e.medium == "GPU" and e.lora_id is None
            assert len(e.token_ids) == BS * len(e.block_hashes)
            if first:
                n = len(e.token_ids)
                assert e.parent_block_hash is None
                assert e.token_ids == first_prompt[:n], "stored tokens are the prompt's"
                first = False
            parent = NONE_HASH if e.parent_block_hash is None else full[e.parent_block_hash]
            for k, wire in enumerate(e.block_hashes):
                h = sha256_cbor((parent, tuple(e.token_ids[k * BS : (k + 1) * BS]), None))
                assert wire == int.from_bytes(h, "big") & MASK, "vLLM's sha256_cbor"
                full[wire] = h
                cached.add(wire)
                parent = h
            stored += len(e.block_hashes)
        elif isinstance(e, BlockRemoved):
            assert len(e.block_hashes) == 1
            assert e.block_hashes[0] in cached, "only a cached block is removed"
            cached.discard(e.block_hashes[0])
            removed += 1
        else:
            cached.clear()
assert stored > 0 and removed > 0, (stored, removed)
print(f"ok: {len(replayed)} batches, {stored} blocks stored, {removed} removed")
