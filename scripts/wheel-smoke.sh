#!/usr/bin/env bash
# CI check of the pip wheel (pyproject.toml): build it with a pinned maturin from PyPI
# in a fresh virtual environment, install it into another fresh one, and run what it
# installed: `switchyard --version`, `switchyard-sim --help` and `--version`, and one
# chat completion through `switchyard demo`.
#
# The build uses the `wheel-smoke` profile (Cargo.toml: release without optimisation,
# for CI time) in its own target directory, target/wheel-smoke (WHEEL_TARGET_DIR), so
# that it never replaces the release binaries the benchmarks use. A release wheel is
# built with the release profile: docs/install.md. WHEEL_PROFILE=dev with
# WHEEL_TARGET_DIR=$PWD/target reuses a developer's debug build (a quick local check).
set -euo pipefail
cd "$(dirname "$0")/.."
MATURIN_VERSION=1.16.0
TARGET_DIR=${WHEEL_TARGET_DIR:-$PWD/target/wheel-smoke}
PROFILE=${WHEEL_PROFILE:-wheel-smoke}
WORK=$(mktemp -d)
DEMO_PID=
cleanup() {
  if [ -n "$DEMO_PID" ]; then
    kill "$DEMO_PID" 2>/dev/null || true
    wait "$DEMO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "wheel-smoke: $*" >&2; exit 1; }
t0=$(date +%s)

# Build.
python3 -m venv "$WORK/build"
"$WORK/build/bin/pip" install -q --disable-pip-version-check "maturin==$MATURIN_VERSION"
CARGO_TARGET_DIR=$TARGET_DIR "$WORK/build/bin/maturin" build --quiet \
  --profile "$PROFILE" --compatibility linux --out "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/switchyard_gateway-*.whl)
t1=$(date +%s)

# Install into a clean environment, from the file only.
python3 -m venv "$WORK/run"
"$WORK/run/bin/pip" install -q --disable-pip-version-check --no-index "$WHEEL"
BIN=$WORK/run/bin
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$VERSION" ] || fail "no version in Cargo.toml's [workspace.package]"
[ "$("$BIN/switchyard" --version)" = "switchyard $VERSION" ] \
  || fail "switchyard --version says '$("$BIN/switchyard" --version)', not 'switchyard $VERSION'"
[ "$("$BIN/switchyard-sim" --version)" = "switchyard-sim $VERSION" ] \
  || fail "switchyard-sim --version says '$("$BIN/switchyard-sim" --version)'"
"$BIN/switchyard-sim" --help | grep -q -- '--engines' || fail "switchyard-sim --help lists no --engines"

# The demo on free loopback ports, run from the scratch directory (it writes nothing
# elsewhere), one chat completion through it.
read -r PORT METRICS ADMIN < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')
(cd "$WORK" && exec "$BIN/switchyard" demo --host 127.0.0.1 --port "$PORT" \
  --prometheus-port "$METRICS" --admin-port "$ADMIN" --log-level warn) > "$WORK/demo.log" 2>&1 &
DEMO_PID=$!
URL=http://127.0.0.1:$PORT
ready=
for _ in $(seq 1 240); do # 120 s at most
  if curl -sf -o /dev/null "$URL/health"; then ready=1; break; fi
  kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.log" >&2; fail "switchyard demo exited"; }
  sleep 0.5
done
[ -n "$ready" ] || { cat "$WORK/demo.log" >&2; fail "switchyard demo did not answer $URL/health in 120 s"; }
STATUS=$(curl -s -o "$WORK/reply.json" -w '%{http_code}' --max-time 60 "$URL/v1/chat/completions" \
  -H 'Content-Type: application/json' \
  -d '{"model": "switchyard/sim-8b", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8}')
[ "$STATUS" = 200 ] || { cat "$WORK/reply.json" >&2; fail "the demo answered $STATUS"; }
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["choices"] and r["choices"][0]["message"]["content"], r
' "$WORK/reply.json" || fail "the demo's answer has no choices: $(cat "$WORK/reply.json")"
t2=$(date +%s)
echo "wheel-smoke: $(basename "$WHEEL") ok (build $((t1 - t0)) s, install and checks $((t2 - t1)) s)"
