#!/usr/bin/env bash
# Precise prefix routing on a workload shaped like llm-d's precise-scheduling benchmark:
# many tenants with long system prompts, KV-cache demand of about 80 % of the fleet's
# capacity, one engine restarted mid-run, and every router run as two replicas that
# share the engines (the client sends requests to the replicas in turn). Writes
# bench/results/<date>-precise-prefix.md (the report), <date>-precise-prefix-runs.{md,json}
# (every run) and <date>-precise-prefix-kv-metrics.txt.
#
#   bench/precise-prefix.sh
#
# Targets: switchyard precise_prefix (the engines' KV events), switchyard cache_aware,
# switchyard round_robin, sglang-router cache_aware, vllm-router kv_aware (its own
# KV-event policy, on the same event sockets) and vllm-router cache_aware. ONLY=a,b
# measures only the targets named. Each is
# warmed up once (a short discarded run), then measured REPS times in rotated order;
# the median is reported. Engine caches are reset before every run.
#
# Sizes (environment): TENANTS (64) system prompts of SYSTEM (2048) tokens, QUESTION
# (128) tokens per question, OUTPUT (64) tokens per answer; ENGINES (4) engines of
# BLOCKS (2600) 16-token blocks each; RATE (24) requests/s (real time) for DURATION (60) s;
# SCALE (0.5): simulated seconds per real second; RESTART_AT (30): seconds into each run at which
# engine 0 restarts (its cache lost without events).
#
# Everything listens on 127.0.0.1 only, except the simulated engines' KV-event sockets:
# they bind as vLLM's `tcp://*:PORT` does (a concrete host would make vLLM's PUB socket
# connect instead); they are reached over loopback. Every process started here is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
TENANTS=${TENANTS:-64}
SYSTEM=${SYSTEM:-2048}
QUESTION=${QUESTION:-128}
OUTPUT=${OUTPUT:-64}
ENGINES=${ENGINES:-4}
BLOCKS=${BLOCKS:-2600}
RATE=${RATE:-24}
DURATION=${DURATION:-60}
SCALE=${SCALE:-0.5}
RESTART_AT=${RESTART_AT:-30}
REPS=${REPS:-3}
PER_TENANT=${PER_TENANT:-$(((RATE * DURATION + TENANTS - 1) / TENANTS + 1))}
ONLY=${ONLY:-}

. bench/lib.sh
prepare_routers

ENGINE_PORT=18600
ROUTER_PORT=18700
KV_PORT=19557
REPLAY_PORT=19657
if busy=$(ss -Hltnp "( sport >= :18600 and sport <= :18899 ) or ( sport >= :19557 and sport <= :19699 )" | grep .); then
  echo "ports 18600-18899 and 19557-19699 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi

# The engines publish KV events as vLLM does; engine i on KV_PORT + i and REPLAY_PORT + i.
start sim $BIN/switchyard-sim --engines "$ENGINES" --port $ENGINE_PORT --time-scale "$SCALE" \
  --num-gpu-blocks "$BLOCKS" --max-model-len 16384 --enable-prompt-tokens-details --sim-timing \
  --enable-scale-out --prefix-caching-hash-algo sha256_cbor --log-level warn \
  --kv-events-config "{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:$KV_PORT\",\"replay_endpoint\":\"tcp://*:$REPLAY_PORT\",\"buffer_steps\":10000}"
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
URLS=(); KV_ARGS=(); VLLM_KV_ARGS=()
for i in $(seq 0 $((ENGINES - 1))); do
  u="http://127.0.0.1:$((ENGINE_PORT + i))"; URLS+=("$u")
  KV_ARGS+=(--kv-events-endpoint "$u=tcp://127.0.0.1:$((KV_PORT + i))" --kv-events-replay-endpoint "$u=tcp://127.0.0.1:$((REPLAY_PORT + i))")
  VLLM_KV_ARGS+=(--kv-event-source "$u=tcp://127.0.0.1:$((KV_PORT + i))" --kv-event-replay-source "$u=tcp://127.0.0.1:$((REPLAY_PORT + i))")
done

TARGETS=(); PIDARGS=()
p=$ROUTER_PORT
replicas() { # replicas NAME CMD...: two copies of a router, CMD with PORT and PROM for their ports
  local name=$1; shift; local urls=() first=""
  for r in 0 1; do
    local cmd=("${@//PORT/$p}"); cmd=("${cmd[@]//PROM/$((p + 50))}"); cmd=("${cmd[@]//ADMIN/$((p + 80))}")
    start "$name-$r" "${cmd[@]}"
    [ -z "$first" ] && first=$(eval echo "\$PID_${name//-/_}_$r")
    urls+=("http://127.0.0.1:$p"); p=$((p + 1))
  done
  TARGETS+=("$name=$(IFS=,; echo "${urls[*]}")"); PIDARGS+=(--pid "$name=$first")
}
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
SW=(serve --worker-urls "${URLS[@]}" --port PORT --prometheus-port PROM --admin-port ADMIN --log-level warn --database-url sqlite::memory:)
want switchyard-precise_prefix && replicas switchyard-precise_prefix $BIN/switchyard "${SW[@]}" --policy precise_prefix "${KV_ARGS[@]}"
want switchyard-cache_aware && replicas switchyard-cache_aware $BIN/switchyard "${SW[@]}" --policy cache_aware
want switchyard-round_robin && replicas switchyard-round_robin $BIN/switchyard "${SW[@]}" --policy round_robin
want sglang-router-cache_aware && replicas sglang-router-cache_aware "$VENV/bin/sglang-router" launch --worker-urls "${URLS[@]}" --policy cache_aware --host 127.0.0.1 --port PORT --prometheus-port PROM --log-level error
want vllm-router-kv_aware && replicas vllm-router-kv_aware "$VENV/bin/vllm-router" --worker-urls "${URLS[@]}" --policy kv_aware "${VLLM_KV_ARGS[@]}" --kv-event-model switchyard/sim-8b --host 127.0.0.1 --port PORT --prometheus-port PROM --log-level error
want vllm-router-cache_aware && replicas vllm-router-cache_aware "$VENV/bin/vllm-router" --worker-urls "${URLS[@]}" --policy cache_aware --host 127.0.0.1 --port PORT --prometheus-port PROM --log-level error
for t in "${TARGETS[@]}"; do IFS=, read -ra us <<< "${t#*=}"; for u in "${us[@]}"; do wait_ready "$u/v1/models"; done; done
sleep 2 # let the routers finish their first health checks and the subscriptions connect

ENGINE_ARGS=(); for u in "${URLS[@]}"; do ENGINE_ARGS+=(--engine "$u"); done
TARGET_ARGS=(); for t in "${TARGETS[@]}"; do TARGET_ARGS+=(--target "$t"); done
WORKLOAD=(--workload shared-prefix --groups "$TENANTS" --prompts-per-group "$PER_TENANT" --system-len "$SYSTEM"
  --question-len "$QUESTION" --output-len "$OUTPUT" --rate "$RATE" --request-timeout 120)
REPORT=$OUT/$DATE-precise-prefix.md
{
  echo "## Precise prefix routing, llm-d-shaped workload ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD))"
  echo
  echo "$ENGINES simulated engines (switchyard-sim --engines $ENGINES --time-scale $SCALE --num-gpu-blocks $BLOCKS, KV events on);"
  echo "$TENANTS tenants, each a $SYSTEM-token system prompt with $QUESTION-token questions and $OUTPUT-token answers,"
  echo "$RATE requests/s (Poisson) for $DURATION s; the tenants' prefixes alone need $((TENANTS * SYSTEM / 16)) of the fleet's $((ENGINES * BLOCKS)) blocks"
  echo "($(((TENANTS * SYSTEM / 16) * 100 / (ENGINES * BLOCKS))) %). Engine 0 restarts $RESTART_AT s into every run (cache lost, no events)."
  echo "Every router runs as two replicas; the client sends requests to them in turn."
  echo "Each target is warmed up with a discarded 15 s run (no restart), then measured $REPS times in rotated order (median shown)."
  echo "Engine caches are reset before every run. CPU s and peak RSS are one replica's."
  echo
} > "$REPORT"
# Warm-up: each router's first requests, connections and (for precise_prefix) event streams.
$BIN/switchyard-bench "${TARGET_ARGS[@]}" "${ENGINE_ARGS[@]}" --quiet "${WORKLOAD[@]}" \
  --duration 15 --seed 1 > "$LOGS/$DATE-precise-prefix-warmup.md"
$BIN/switchyard-bench "${TARGET_ARGS[@]}" "${ENGINE_ARGS[@]}" "${PIDARGS[@]}" --quiet "${WORKLOAD[@]}" \
  --duration "$DURATION" --repetitions "$REPS" --restart-engine "${URLS[0]}@$RESTART_AT" \
  --out "$OUT/$DATE-precise-prefix-runs" >> "$REPORT"
# What the precise replicas saw of the engines' events (restarts detected, replays,
# fallbacks, blocks matched), kept with the raw results.
if want switchyard-precise_prefix; then
  for port in $((ROUTER_PORT + 50)) $((ROUTER_PORT + 51)); do
    echo "# 127.0.0.1:$port"; curl -fs "http://127.0.0.1:$port/metrics" | grep '^switchyard_kv_' || true
  done > "$OUT/$DATE-precise-prefix-kv-metrics.txt"
fi
cat "$REPORT"
