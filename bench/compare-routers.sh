#!/usr/bin/env bash
# Switchyard's policies against vllm-router, sglang-router and a direct connection, on
# simulated engines, in one run. Writes bench/results/<date>[-overhead].md.
#
#   bench/compare-routers.sh            # routing quality: shared-prefix and multi-turn
#   bench/compare-routers.sh overhead   # instant engines: max throughput, added latency (needs wrk)
#
# BASELINE_BIN=/path/to/an/older/switchyard adds that build's cache_aware and
# round_robin as targets `baseline-<policy>`, measured in the same run: how a change is
# checked for a regression on a machine whose absolute speed drifts.
#
# ONLY=a,b measures only the targets named (e.g. ONLY=switchyard-cache_aware,direct).
#
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-quality}
VENV=bench/.venv
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)

. bench/lib.sh
prepare_routers

ENGINE_PORT=18600
ROUTER_PORT=18700
# A process left on these ports would answer for a target that failed to start.
if busy=$(ss -Hltnp "sport >= :18600 and sport <= :18899" | grep .); then
  echo "ports 18600-18899 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
engines() { for i in $(seq 0 $(($1 - 1))); do echo "http://127.0.0.1:$((ENGINE_PORT + i))"; done; }

routers() { # routers N_ENGINES: start every router in front of the engines
  local urls; urls=$(engines "$1" | tr '\n' ' ')
  local p=$ROUTER_PORT
  for pol in cache_aware round_robin power_of_two consistent_hash; do
    want "switchyard-$pol" || continue
    start "switchyard-$pol" $BIN/switchyard serve --worker-urls $urls --policy $pol --port $p --prometheus-port $((p + 50)) --admin-port $((p + 80)) --log-level warn --database-url sqlite::memory:
    TARGETS+=("switchyard-$pol=http://127.0.0.1:$p"); PIDOF[switchyard-$pol]=$(eval echo \$PID_switchyard_$pol); p=$((p + 1))
  done
  if [ -n "${BASELINE_BIN:-}" ]; then
    for pol in cache_aware round_robin; do
      want "baseline-$pol" || continue
      start "baseline-$pol" "$BASELINE_BIN" serve --worker-urls $urls --policy $pol --port $p --prometheus-port $((p + 50)) --admin-port $((p + 80)) --log-level warn
      TARGETS+=("baseline-$pol=http://127.0.0.1:$p"); PIDOF[baseline-$pol]=$(eval echo \$PID_baseline_$pol); p=$((p + 1))
    done
  fi
  # vllm-router's consistent_hash: its session affinity (X-Session-ID, which the
  # multi-turn workload sends).
  for pol in round_robin cache_aware consistent_hash; do
    if want "vllm-router-$pol"; then
      start "vllm-router-$pol" "$VENV/bin/vllm-router" --worker-urls $urls --policy $pol --host 127.0.0.1 --port $p --prometheus-port $((p + 50)) --log-level error
      TARGETS+=("vllm-router-$pol=http://127.0.0.1:$p"); PIDOF[vllm-router-$pol]=$(eval echo \$PID_vllm_router_$pol); p=$((p + 1))
    fi
    if [ "$pol" != consistent_hash ] && want "sglang-router-$pol"; then
      start "sglang-router-$pol" "$VENV/bin/sglang-router" launch --worker-urls $urls --policy $pol --host 127.0.0.1 --port $p --prometheus-port $((p + 50)) --log-level error
      TARGETS+=("sglang-router-$pol=http://127.0.0.1:$p"); PIDOF[sglang-router-$pol]=$(eval echo \$PID_sglang_router_$pol); p=$((p + 1))
    fi
  done
  want direct && TARGETS+=("direct=http://127.0.0.1:$ENGINE_PORT")
  PIDARGS=(); for name in "${!PIDOF[@]}"; do PIDARGS+=("--pid" "$name=${PIDOF[$name]}"); done
  for t in "${TARGETS[@]}"; do wait_ready "${t#*=}/v1/models"; done
  sleep 2 # let the routers finish their first health checks
}

if [ "$MODE" = overhead ]; then
  if ! { want direct && want vllm-router-round_robin; }; then
    echo "overhead mode measures against direct and vllm-router-round_robin: ONLY must name both" >&2; exit 1
  fi
  command -v wrk >/dev/null || { echo "overhead mode needs wrk (apt-get install wrk)" >&2; exit 1; }
  [ -x /usr/bin/time ] || { echo "overhead mode needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
  start sim $BIN/switchyard-sim --instant --engines 2 --port $ENGINE_PORT --log-level warn
  wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
  TARGETS=(); PIDARGS=(); declare -A PIDOF
  routers 2
  REPORT=$OUT/$DATE-overhead.md
  {
    echo "## Overhead: instant engines ($(date -u +%Y-%m-%d))"
    echo
    echo "2 instant simulated engines; non-streaming chat completions (bench/chat-load.lua)."
    echo "Throughput: wrk -t2 -c64 -d8s. Latency: wrk -t1 -c1 -d5s (sequential, keep-alive)."
    echo "Each target measured 3 times in rotated order; the median is shown. Nothing pinned."
    echo "CPU columns: CPU time (user + system) each process spent during the throughput run,"
    echo "per completed request (router, the engine process, wrk); they share the 2 cores."
    [ -n "${BASELINE_BIN:-}" ] && echo "baseline-*: $BASELINE_BIN ($("$BASELINE_BIN" --version))."
    echo
  } > "$REPORT"
  declare -A RPS LAT RCPU ECPU WCPU
  ticks() { if [ -n "${1:-}" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
  per_req() { echo "$1 * 1000000 / $(getconf CLK_TCK) / $2" | bc -l; } # per_req TICKS REQUESTS -> µs
  for rep in 0 1 2; do
    n=${#TARGETS[@]}
    for k in $(seq 0 $((n - 1))); do
      t=${TARGETS[$(((k + rep) % n))]}; name=${t%%=*}; url=${t#*=}
      pid=${PIDOF[$name]:-}; r0=$(ticks "$pid"); e0=$(ticks "$PID_sim")
      out=$(/usr/bin/time -f '%U %S' -o "$LOGS/wrk-time" wrk -t2 -c64 -d8s -s bench/chat-load.lua "$url/v1/chat/completions")
      r1=$(ticks "$pid"); e1=$(ticks "$PID_sim")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      nreq=$(echo "$out" | awk '/requests in/ {print $1}')
      [ -n "$pid" ] && RCPU[$name]="${RCPU[$name]:-} $(per_req $((r1 - r0)) "$nreq")"
      ECPU[$name]="${ECPU[$name]:-} $(per_req $((e1 - e0)) "$nreq")"
      WCPU[$name]="${WCPU[$name]:-} $(awk -v n="$nreq" '{print ($1 + $2) * 1e6 / n}' "$LOGS/wrk-time")"
      lat=$(wrk -t1 -c1 -d5s --latency -s bench/chat-load.lua "$url/v1/chat/completions" | awk '$1=="50%" {print $2}')
      RPS[$name]="${RPS[$name]:-} $rps"; LAT[$name]="${LAT[$name]:-} $lat"
      echo "rep $rep $name: $rps req/s, p50 $lat, router CPU $(echo "${RCPU[$name]:-}" | awk '{printf "%.1f", $NF}') µs/req" | tee -a "$LOGS/$DATE-reps.txt"
    done
  done
  direct_lat=$(for v in ${LAT[direct]}; do echo "$v" | to_us; done | median)
  base=$(echo "${RPS[vllm-router-round_robin]}" | median)
  base_cpu=$(echo "${RCPU[vllm-router-round_robin]}" | median)
  {
    echo "| target | req/s (median) | vs vllm-router round_robin | p50 latency (µs) | added over direct (µs) | router CPU µs/req | engine CPU µs/req | wrk CPU µs/req | router CPU vs vllm-router round_robin |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
      name=${t%%=*}
      r=$(echo "${RPS[$name]}" | median)
      l=$(for v in ${LAT[$name]}; do echo "$v" | to_us; done | median)
      rc=$(echo "${RCPU[$name]:-}" | median); ec=$(echo "${ECPU[$name]}" | median); wc=$(echo "${WCPU[$name]}" | median)
      if [ -n "$rc" ]; then rcs=$(printf "%.1f" "$rc"); rel=$(printf "%.2f×" "$(echo "$base_cpu / $rc" | bc -l)"); else rcs="—"; rel="—"; fi
      printf "| %s | %.0f | %.2f× | %.0f | %.0f | %s | %.1f | %.1f | %s |\n" "$name" "$r" "$(echo "$r / $base" | bc -l)" "$l" "$(echo "$l - $direct_lat" | bc -l)" "$rcs" "$ec" "$wc" "$rel"
    done
    echo
    echo "Every rep:"
    echo
    echo '```'
    cat "$LOGS/$DATE-reps.txt"
    echo '```'
  } >> "$REPORT"
  cat "$REPORT"
  exit 0
fi

# Routing quality: 4 engines whose caches cannot hold every prefix (4000 blocks of 16
# tokens each), run 4x faster than real time; every target warmed up, then measured
# REPS (3) times in rotated order.
SCALE=4
REPS=${REPS:-3}
start sim $BIN/switchyard-sim --engines 4 --port $ENGINE_PORT --time-scale $SCALE --num-gpu-blocks 4000 --max-model-len 16384 --enable-prompt-tokens-details --sim-timing --log-level warn
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
TARGETS=(); PIDARGS=(); declare -A PIDOF
routers 4
ENGINE_ARGS=(); for e in $(engines 4); do ENGINE_ARGS+=(--engine "$e"); done
TARGET_ARGS=(); for t in "${TARGETS[@]}"; do TARGET_ARGS+=(--target "$t"); done
REPORT=$OUT/$DATE.md
{
  echo "## Routing quality ($(date -u +%Y-%m-%d))"
  echo
  echo "4 simulated engines (switchyard-sim --engines 4 --time-scale $SCALE --num-gpu-blocks 4000 --max-model-len 16384),"
  echo "prefix caches reset before every target. Latencies are client-side real time: the engines' time, $SCALE× faster than simulated,"
  echo "plus each router's own overhead, which is real time and must not be scaled (\`bench/compare-routers.sh overhead\` measures it alone)."
  echo "Every target warmed up in a discarded 10 s run, then measured $REPS times in rotated order; medians shown."
  echo "\`direct\` sends everything to one engine."
  echo
} > "$REPORT"
# Warm-up: each router's first connections and health checks, in a discarded short run.
$BIN/switchyard-bench "${TARGET_ARGS[@]}" "${ENGINE_ARGS[@]}" --quiet --seed 1 \
  --workload shared-prefix --groups 16 --prompts-per-group 4 --system-len 2048 --question-len 128 --output-len 64 \
  --rate 20 --duration 10 --request-timeout 60 > "$LOGS/$DATE-warmup.md"
$BIN/switchyard-bench "${TARGET_ARGS[@]}" "${ENGINE_ARGS[@]}" "${PIDARGS[@]}" --quiet --repetitions "$REPS" \
  --workload shared-prefix --groups 64 --prompts-per-group 16 --system-len 2048 --question-len 128 --output-len 256 \
  --rate 40 --duration 120 --request-timeout 120 --out "$OUT/$DATE-shared-prefix" >> "$REPORT"
$BIN/switchyard-bench "${TARGET_ARGS[@]}" "${ENGINE_ARGS[@]}" "${PIDARGS[@]}" --quiet --repetitions "$REPS" \
  --workload multi-turn --conversations 64 --turns 8 --system-len 2048 --turn-len 128 --output-len 256 --think-time 0.5 \
  --rate 8 --duration 120 --request-timeout 120 --out "$OUT/$DATE-multi-turn" >> "$REPORT"
cat "$REPORT"
