#!/usr/bin/env bash
# A short comparison whose point is the plots (docs/bench.md): Switchyard's
# cache_aware and round_robin in front of 4 simulated engines, and the engines
# behind no router (switchyard-bench sends to them in turn), on shared-prefix.
# Writes bench/results/<date>-plots.{md,json} and its three SVGs:
# -ttft-cdf.svg, -throughput.svg, -hit-rate.svg. About 3 minutes after the build.
#
# BIN=dir uses the binaries in dir instead of building target/release.
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
. bench/lib.sh
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p switchyard -p switchyard-bench
  BIN=target/release
fi
ENGINE_PORT=18600
ROUTER_PORT=18700
if busy=$(ss -Hltnp "sport >= :18600 and sport <= :18899" | grep .); then
  echo "ports 18600-18899 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
SCALE=4
start sim "$BIN/switchyard-sim" --engines 4 --port $ENGINE_PORT --time-scale $SCALE --num-gpu-blocks 4000 \
  --max-model-len 16384 --log-level warn
URLS=(); for i in 0 1 2 3; do URLS+=("http://127.0.0.1:$((ENGINE_PORT + i))"); done
for u in "${URLS[@]}"; do wait_ready "$u/health"; done
TARGETS=(); ENGINE_ARGS=(); PIDARGS=()
p=$ROUTER_PORT
for pol in cache_aware round_robin; do
  start "plots-$pol" "$BIN/switchyard" serve --worker-urls "${URLS[@]}" --policy $pol --port $p \
    --prometheus-port $((p + 50)) --admin-port $((p + 80)) --log-level warn --database-url sqlite::memory:
  TARGETS+=(--target "switchyard-$pol=http://127.0.0.1:$p")
  PIDARGS+=(--pid "switchyard-$pol=$(eval echo \$PID_plots_$pol)")
  wait_ready "http://127.0.0.1:$p/v1/models"
  p=$((p + 1))
done
TARGETS+=(--target "no-router=$(IFS=,; echo "${URLS[*]}")")
for u in "${URLS[@]}"; do ENGINE_ARGS+=(--engine "$u"); done
sleep 2 # the gateways' first health checks
REPORT=$OUT/$DATE-plots
"$BIN/switchyard-bench" "${TARGETS[@]}" "${ENGINE_ARGS[@]}" "${PIDARGS[@]}" --quiet \
  --workload shared-prefix --groups 32 --prompts-per-group 16 --system-len 2048 --question-len 128 \
  --output-len 64 --rate 16 --duration 40 --request-timeout 60 --out "$REPORT" > /dev/null
{
  echo
  echo "4 simulated engines (switchyard-sim --engines 4 --time-scale $SCALE --num-gpu-blocks 4000 --max-model-len 16384),"
  echo "prefix caches reset before every target; one run per target. \`no-router\`: switchyard-bench sends the"
  echo "requests to the 4 engines in turn. Command: bench/plots.sh ($(git rev-parse --short HEAD))."
} >> "$REPORT.md"
cat "$REPORT.md"
