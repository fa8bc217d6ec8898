#!/usr/bin/env bash
# /route benchmark: multi-turn conversations with topic changes through POST /route
# (switchyard-bench --workload sessions). Writes bench/results/<date>-route-sessions.md
# and the raw JSON of every run next to it.
#
#   bench/route-sessions.sh
#
# Four gateway setups in turn, each in front of the same 2 instant simulated engines:
# keywords or embedding classifier × sessions in memory or in Redis (127.0.0.1:6379,
# database 11, keys under a prefix of this run, deleted at the end). REPS runs (seeds
# 1..REPS) per setup and topic-change rate; medians reported. Everything listens on
# 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
BIN=target/release
REPS=${REPS:-3}
RATES=${RATES:-"0.1 0.3"}
CONVERSATIONS=${CONVERSATIONS:-300}
TURNS=${TURNS:-8}
REDIS_URL=redis://127.0.0.1:6379/11
PREFIX=bench-route-$DATE

. bench/lib.sh
cleanup_redis() { redis-cli -n 11 --scan --pattern "$PREFIX*" | xargs -r redis-cli -n 11 del >/dev/null; }
trap 'cleanup; cleanup_redis' EXIT INT TERM

ENGINE_PORT=18900
GW_PORT=18950
if busy=$(ss -Hltnp "sport >= :18900 and sport <= :19099" | grep .); then
  echo "ports 18900-19099 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
cargo build --release -q -p switchyard -p switchyard-bench
start sim $BIN/switchyard-sim --instant --engines 2 --port $ENGINE_PORT --log-level warn
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
ENGINES="http://127.0.0.1:$ENGINE_PORT,http://127.0.0.1:$((ENGINE_PORT + 1))"

REPORT=$OUT/$DATE-route-sessions.md
RAW=$OUT/$DATE-route-sessions-raw
mkdir -p "$RAW"
{
  echo "## /route sessions ($(date -u +%Y-%m-%d))"
  echo
  echo "2 instant simulated engines; the gateway (consistent_hash) with the default use cases."
  echo "switchyard-bench --workload sessions: $CONVERSATIONS conversations of $TURNS turns over 50 users,"
  echo "8 at once, 16 output tokens, follow-ups on the same subject 30 % of the time with one of its words."
  echo "Medians of $REPS runs (seeds 1..$REPS). Routing time is the gateway's own \`routing_time\`."
  echo
  echo "| classifier | sessions | topic change rate | bypass % (follow-ups) | changes caught % | routed right % | needless re-routes % | routing p50 bypass (ms) | p99 bypass | p50 full (ms) | p99 full |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$REPORT"

for classifier in keywords embedding; do
  for store in memory redis; do
    args=(serve --worker-urls "$ENGINES" --policy consistent_hash --port $GW_PORT
      --prometheus-port $((GW_PORT + 50)) --admin-port $((GW_PORT + 80)) --log-level warn)
    [ "$classifier" = embedding ] && args+=(--config bench/configs/route-embedding.yaml)
    [ "$store" = redis ] && args+=(--redis-url "$REDIS_URL" --redis-key-prefix "$PREFIX-$classifier")
    start gw $BIN/switchyard "${args[@]}"
    wait_ready "http://127.0.0.1:$GW_PORT/use-cases"
    for rate in $RATES; do
      for seed in $(seq 1 "$REPS"); do
        name=$classifier-$store-${rate/./p}-$seed  # no dot: --out adds the extension
        $BIN/switchyard-bench --workload sessions --target "gw=http://127.0.0.1:$GW_PORT" \
          --conversations "$CONVERSATIONS" --turns "$TURNS" --users 50 --concurrency 8 \
          --topic-change-rate "$rate" --output-len 16 --seed "$seed" --duration 120 \
          --out "$RAW/$name" --quiet > /dev/null
        echo "$name: $(jq -c '.targets.gw | {follow_up_bypass_rate_percent, changes_caught_percent, needless_reroutes_percent, b: .routing_ms_bypass.p50, f: .routing_ms_full.p50}' "$RAW/$name.json")"
      done
      med() { for s in $(seq 1 "$REPS"); do jq "$1" "$RAW/$classifier-$store-${rate/./p}-$s.json"; done | median; }
      printf "| %s | %s | %s | %.1f | %.1f | %.1f | %.1f | %.3f | %.3f | %.3f | %.3f |\n" "$classifier" "$store" "$rate" \
        "$(med .targets.gw.follow_up_bypass_rate_percent)" "$(med .targets.gw.changes_caught_percent)" \
        "$(med .targets.gw.changes_routed_right_percent)" "$(med .targets.gw.needless_reroutes_percent)" \
        "$(med .targets.gw.routing_ms_bypass.p50)" "$(med .targets.gw.routing_ms_bypass.p99)" \
        "$(med .targets.gw.routing_ms_full.p50)" "$(med .targets.gw.routing_ms_full.p99)" >> "$REPORT"
    done
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
  done
done
echo >> "$REPORT"
echo "Raw results: $RAW/" >> "$REPORT"
cat "$REPORT"
