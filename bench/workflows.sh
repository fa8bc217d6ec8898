#!/usr/bin/env bash
# Workflow-aware routing against the other policies on multi-agent workflows
# (switchyard-bench --workload workflows), one gateway per policy in front of the same
# engines, in one run. Writes bench/results/<date>-workflows.md (+ JSON).
#
#   bench/workflows.sh                                   # 4 agents, 1 workflow/s
#   AGENTS=8 RATE=3 NAME=workflows-heavy bench/workflows.sh   # bigger bursts, busier engines
#   REPLICAS=2 NAME=workflows-replicas bench/workflows.sh     # two gateways per policy
#
# With REPLICAS=2 every policy runs as two gateway replicas sharing the local Redis
# (127.0.0.1:6379, database 15, keys under a prefix of this run, removed on exit), and the
# client sends requests to them in turn, as a load balancer without affinity would.
#
# 4 simulated engines whose prefix caches cannot hold every workflow's briefing at once
# (1500 blocks of 16 tokens each, 32 workflows × 4096-token briefings), 4× faster than
# real time; caches reset before every target; REPS repetitions in rotated order.
# Loopback only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
BIN=target/release
REPS=${REPS:-3}
AGENTS=${AGENTS:-4}
RATE=${RATE:-1}
NAME=${NAME:-workflows}
REPLICAS=${REPLICAS:-1}
REDIS_URL=redis://127.0.0.1:6379/15
REDIS_PREFIX=switchyard-bench-$DATE-$$
if [ "$REPLICAS" -gt 1 ]; then
  redis-cli -u "$REDIS_URL" ping > /dev/null || { echo "REPLICAS>1 needs Redis at $REDIS_URL" >&2; exit 1; }
  clear_keys() { redis-cli -u "$REDIS_URL" --scan --pattern "$REDIS_PREFIX*" | xargs -r redis-cli -u "$REDIS_URL" del > /dev/null; }
  trap 'cleanup; clear_keys' EXIT INT TERM
fi
SCALE=4
. bench/lib.sh

ENGINE_PORT=18900
GW_PORT=18950
if busy=$(ss -Hltnp "sport >= :18900 and sport <= :19099" | grep .); then
  echo "ports 18900-19099 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
cargo build --release -q -p switchyard -p switchyard-bench
start sim $BIN/switchyard-sim --engines 4 --port $ENGINE_PORT --time-scale $SCALE \
  --num-gpu-blocks 1500 --max-model-len 16384 --log-level warn
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
URLS=""; ENGINE_ARGS=()
for i in 0 1 2 3; do
  URLS="$URLS,http://127.0.0.1:$((ENGINE_PORT + i))"; ENGINE_ARGS+=(--engine "http://127.0.0.1:$((ENGINE_PORT + i))")
done
URLS=${URLS#,}
TARGET_ARGS=(); PID_ARGS=(); k=0
for policy in workflow_aware cache_aware consistent_hash round_robin; do
  replicas=""
  for r in $(seq 1 "$REPLICAS"); do
    port=$((GW_PORT + k))
    shared=()
    [ "$REPLICAS" -gt 1 ] && shared=(--redis-url "$REDIS_URL" --redis-key-prefix "$REDIS_PREFIX-$policy")
    start "gw-$policy-$r" $BIN/switchyard serve --worker-urls "$URLS" --policy $policy --port $port \
      --prometheus-port $((port + 50)) --admin-port $((port + 80)) --log-level warn "${shared[@]}"
    wait_ready "http://127.0.0.1:$port/v1/models"
    replicas="$replicas,http://127.0.0.1:$port"
    k=$((k + 1))
  done
  TARGET_ARGS+=(--target "$policy=${replicas#,}")
  # CPU and memory are reported for a target of one process only.
  if [ "$REPLICAS" -eq 1 ]; then eval "pid=\$PID_gw_${policy}_1"; PID_ARGS+=(--pid "$policy=$pid"); fi
done
sleep 2
REPORT=$OUT/$DATE-$NAME.md
{
  echo "## Workflow-aware routing ($(date -u +%Y-%m-%d))"
  echo
  echo "4 simulated engines (--time-scale $SCALE --num-gpu-blocks 1500 --max-model-len 16384): each"
  echo "engine's cache holds about 5 of the 32 workflows' 4096-token briefings. Each workflow: $AGENTS agents,"
  echo "2 rounds of ($AGENTS turns one after another, then the $AGENTS agents at once), 64-token questions and"
  echo "answers; workflows start at $RATE per second (Poisson). Latencies are client-side real time;"
  echo "multiply by $SCALE for simulated time. $REPS repetitions, targets rotated; caches reset before each."
  [ "$REPLICAS" -gt 1 ] && echo "Each policy runs as $REPLICAS gateway replicas sharing Redis; requests go to them in turn."
  echo
} > "$REPORT"
$BIN/switchyard-bench "${TARGET_ARGS[@]}" "${ENGINE_ARGS[@]}" "${PID_ARGS[@]}" --quiet \
  --workload workflows --workflows 32 --agents "$AGENTS" --rounds 2 --context-len 4096 --question-len 64 \
  --output-len 64 --rate "$RATE" --duration 120 --request-timeout 120 --repetitions "$REPS" \
  --out "$OUT/$DATE-$NAME" >> "$REPORT"
cat "$REPORT"
