"""vLLM's prefix-cache block hash with --prefix-caching-hash-algo sha256_cbor, computed
the way vLLM computes it (vllm/utils/hashing.py, vllm/v1/core/kv_cache_utils.py,
vLLM 0.34), for the simulator's test vector:

    sha256_cbor(x)  = sha256(cbor2.dumps(x, canonical=True))
    NONE_HASH       = sha256_cbor(PYTHONHASHSEED or "vllm-none-hash")
    block hash      = sha256_cbor((parent_full_hash, tuple(token_ids), None))
    published value = int.from_bytes(hash, "big") & (2**64 - 1)

Writes crates/switchyard-sim/tests/fixtures/vllm_hash_vector.json (run it again after
changing it: `contract/.venv/bin/python contract/vllm_hash_vector.py`).
"""

import hashlib
import json
import pathlib

import cbor2


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def chain(seed, blocks):
    parent = sha256_cbor(seed)
    out = {"seed": seed, "none_hash": parent.hex(), "blocks": []}
    for tokens in blocks:
        h = sha256_cbor((parent, tuple(tokens), None))
        out["blocks"].append(
            {
                "token_ids": tokens,
                "hash": h.hex(),
                "wire": int.from_bytes(h, "big") & (2**64 - 1),
            }
        )
        parent = h
    return out


BLOCKS = [
    list(range(16)),
    [100000, 23, 65535, 65536, 4294967295, 0, 1, 2, 255, 256, 24, 23, 1000, 99, 7, 3],
    [9] * 16,
]

vector = [chain("vllm-none-hash", BLOCKS), chain("0", BLOCKS)]
path = pathlib.Path(__file__).resolve().parent.parent / "crates/switchyard-sim/tests/fixtures/vllm_hash_vector.json"
path.write_text(json.dumps(vector, indent=1) + "\n")
print(path)
