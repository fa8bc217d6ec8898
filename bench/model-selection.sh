#!/usr/bin/env bash
# Model selection benchmarks. Writes bench/results/<date>-model-selection.md.
#
#   bench/model-selection.sh overhead   # model "auto" (keyword classification) vs a named model (needs wrk)
#   bench/model-selection.sh accuracy   # keywords and embedding classifiers on bench/datasets/intents.jsonl
#
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-overhead}
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
BIN=target/release

. bench/lib.sh

ENGINE_PORT=18900
GW_PORT=18950
if busy=$(ss -Hltnp "sport >= :18900 and sport <= :19099" | grep .); then
  echo "ports 18900-19099 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
ENGINES="http://127.0.0.1:$ENGINE_PORT,http://127.0.0.1:$((ENGINE_PORT + 1))"
gateway() { # gateway NAME CONFIG BIN: a gateway with CONFIG in front of the engines (PID in PID_<NAME>)
  start "$1" "$3" serve --config "$2" --worker-urls "$ENGINES" --policy round_robin \
    --port $GW_PORT --prometheus-port $((GW_PORT + 50)) --admin-port $((GW_PORT + 80)) --log-level warn
  wait_ready "http://127.0.0.1:$GW_PORT/v1/models"
  sleep 2
}
stop_last() { local p=${PIDS[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'PIDS[-1]'; }

if [ "$MODE" = overhead ]; then
  command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
  cargo build --release -q -p switchyard
  start sim $BIN/switchyard-sim --instant --engines 2 --port $ENGINE_PORT \
    --served-model-name coder reasoner general --log-level warn
  wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
  gateway gw bench/configs/intent-keywords.yaml $BIN/switchyard
  URL=http://127.0.0.1:$GW_PORT/v1/chat/completions
  REPORT=$OUT/$DATE-model-selection-overhead.md
  declare -A RPS LAT CPU
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  REPS=${REPS:-5}
  for rep in $(seq 0 $((REPS - 1))); do
    for model in $( [ $((rep % 2)) = 0 ] && echo "coder auto" || echo "auto coder"); do
      t0=$(ticks "$PID_gw")
      out=$(MODEL=$model wrk -t2 -c64 -d8s -s bench/auto-load.lua "$URL")
      t1=$(ticks "$PID_gw")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      nreq=$(echo "$out" | awk '/requests in/ {print $1}')
      cpu=$(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $nreq" | bc -l)
      lat=$(MODEL=$model wrk -t1 -c1 -d5s --latency -s bench/auto-load.lua "$URL" | awk '$1=="50%" {print $2}')
      RPS[$model]="${RPS[$model]:-} $rps"; LAT[$model]="${LAT[$model]:-} $lat"; CPU[$model]="${CPU[$model]:-} $cpu"
      printf "rep %s model=%s: %s req/s, p50 %s, gateway CPU %.1f µs/req\n" "$rep" "$model" "$rps" "$lat" "$cpu" | tee -a "$LOGS/$DATE-model-selection-reps.txt"
    done
  done
  named=$(echo "${RPS[coder]}" | median); auto=$(echo "${RPS[auto]}" | median)
  {
    echo "## Model selection overhead ($(date -u +%Y-%m-%d))"
    echo
    echo "2 instant simulated engines serving coder, reasoner and general; the gateway with"
    echo "bench/configs/intent-keywords.yaml, round_robin. Non-streaming chat completions whose"
    echo "prompt differs per request (bench/auto-load.lua: no classification-cache hits), to"
    echo "\`model: coder\` (named) or \`model: auto\` (classified: code → coder)."
    echo "Throughput: wrk -t2 -c64 -d8s; latency: wrk -t1 -c1 -d5s. $REPS reps in alternating order, median shown."
    echo "Gateway CPU: user + system time of the gateway process during the throughput run, per request."
    echo
    echo "| model | req/s (median) | vs named | p50 latency (µs) | gateway CPU µs/req |"
    echo "|---|---:|---:|---:|---:|"
    for m in coder auto; do
      r=$(echo "${RPS[$m]}" | median)
      l=$(for v in ${LAT[$m]}; do echo "$v" | to_us; done | median)
      c=$(echo "${CPU[$m]}" | median)
      printf "| %s | %.0f | %.3f | %.0f | %.1f |\n" "$m" "$r" "$(echo "$r / $named" | bc -l)" "$l" "$c"
    done
    echo
    echo "Every rep:"
    echo
    echo '```'
    cat "$LOGS/$DATE-model-selection-reps.txt"
    echo '```'
  } > "$REPORT"
  cat "$REPORT"
  exit 0
fi

# accuracy
cargo build --release -q -p switchyard --features local-embeddings
cargo build --release -q -p switchyard-bench
scripts/fetch-minilm.sh > /dev/null
start sim $BIN/switchyard-sim --instant --engines 2 --port $ENGINE_PORT \
  --served-model-name coder reasoner general --log-level warn
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
REPORT=$OUT/$DATE-model-selection-accuracy.md
{
  echo "## Classifier accuracy ($(date -u +%Y-%m-%d))"
  echo
  echo "bench/datasets/intents.jsonl: $(wc -l < bench/datasets/intents.jsonl) labelled prompts (bench/datasets/README.md)."
  echo "Each prompt sent to POST /router/classify one at a time (switchyard-bench classify)."
  echo
} > "$REPORT"
for c in keywords embedding; do
  gateway "gw-$c" "bench/configs/intent-$c.yaml" $BIN/switchyard
  { echo "### $c (bench/configs/intent-$c.yaml)"; echo; } >> "$REPORT"
  $BIN/switchyard-bench classify --dataset bench/datasets/intents.jsonl \
    --target "http://127.0.0.1:$GW_PORT" --out "$OUT/$DATE-classify-$c" >> "$REPORT"
  stop_last
done
cat "$REPORT"
