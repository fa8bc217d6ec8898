#!/usr/bin/env bash
# The response cache (docs/caching.md): what a hit costs against an engine round trip,
# and throughput on a workload with 30 % repeats. One simulated engine at real speed
# (the default step model, 16 output tokens: a round trip of tens of milliseconds), and
# three gateways of this build in front of it:
#   off    — no cache;
#   memory — --response-cache memory;
#   redis  — --response-cache redis (127.0.0.1:6379, DB 10, a key prefix of its own,
#            removed on exit).
# Measures, per rep (order rotated):
#   1. hit latency: one deterministic body, warmed once, then wrk -t1 -c4 (all hits);
#      p50 and p99, memory and redis;
#   2. engine round trip: the same body with `Cache-Control: no-cache` through the
#      memory gateway (the cache phase runs and bypasses), and through `off`;
#   3. throughput, wrk -t2 -c64, 30 % of requests repeating one of 100 prompts, the
#      rest new: req/s, p50, p99 and the hit share read from each gateway's metrics.
#
#   [REPS=3] [DURATION=10s] bench/cache.sh
#
# Bounded: 3 reps × (2 + 2 + 3 runs) × DURATION ≈ 4 min at the defaults. Loopback only;
# every process started here is stopped on exit. Needs wrk and redis-server on :6379.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-10s}
LOGS=bench/results/logs
mkdir -p "$LOGS"
. bench/lib.sh
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
redis-cli -n 10 ping >/dev/null || { echo "needs redis at 127.0.0.1:6379" >&2; exit 1; }
cargo build --release -q -p switchyard
B=target/release
PREFIX=switchyard-cache-bench-$$
FILES=$(mktemp -d /tmp/cache-bench-files-XXXX)
trap 'cleanup; rm -rf "$FILES"; redis-cli -n 10 --scan --pattern "$PREFIX*" | xargs -r redis-cli -n 10 del > /dev/null' EXIT INT TERM
start cb-sim $B/switchyard-sim --engines 1 --port 18980 --max-num-seqs 256 --log-level warn
wait_ready http://127.0.0.1:18980/health
common=(serve --worker-urls http://127.0.0.1:18980 --policy round_robin --log-level warn --database-url sqlite::memory:)
start cb-off $B/switchyard "${common[@]}" --files-dir "$FILES/off" --port 18990 --prometheus-port 19050 --admin-port 19060
start cb-memory $B/switchyard "${common[@]}" --files-dir "$FILES/memory" --response-cache memory --port 18991 --prometheus-port 19051 --admin-port 19061
start cb-redis $B/switchyard "${common[@]}" --files-dir "$FILES/redis" --response-cache redis --redis-url redis://127.0.0.1:6379/10 --redis-key-prefix "$PREFIX" --port 18992 --prometheus-port 19052 --admin-port 19062
for p in 18990 18991 18992; do wait_ready "http://127.0.0.1:$p/health"; done
port_of() { case $1 in off) echo 18990;; memory) echo 18991;; redis) echo 18992;; esac; }
metrics_of() { case $1 in off) echo 19050;; memory) echo 19051;; redis) echo 19052;; esac; }
url() { echo "http://127.0.0.1:$(port_of "$1")/v1/chat/completions"; }
metric() { # metric GATEWAY NAME: sum of the samples of NAME
  curl -fs "http://127.0.0.1:$(metrics_of "$1")/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}
run() { # run NAME CONNECTIONS THREADS [ENV...]: wrk's output
  local target=$1 c=$2 t=$3; shift 3
  env "$@" wrk -t"$t" -c"$c" -d"$DURATION" --latency -s bench/cache-load.lua "$(url "$target")"
}
warm() { # warm GATEWAY [ENV...]: one second of the same requests, not measured
  local target=$1; shift
  env "$@" wrk -t1 -c1 -d1s -s bench/cache-load.lua "$(url "$target")" > /dev/null
}
rps() { awk '/Requests\/sec/ {print $2}'; }
pct() { awk -v p="$1" '$1 == p {print $2}' | to_us; }
declare -A P50 P99 RPS TP50 TP99 HIT
echo "1 simulated engine (real-time step model, 16 tokens); wrk -s bench/cache-load.lua; $REPS reps, rotated order"
order=(memory redis)
for rep in $(seq 1 "$REPS"); do
  # 1. Hit latency (one warm-up second, then all hits).
  for t in "${order[@]}"; do
    warm "$t"
    out=$(run "$t" 4 1)
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    P50[hit-$t]+="$(echo "$out" | pct 50%) "; P99[hit-$t]+="$(echo "$out" | pct 99%) "
    printf "rep %s hit %-7s: p50 %s us, p99 %s us, %s req/s, non-2xx %s\n" "$rep" "$t" \
      "$(echo "$out" | pct 50%)" "$(echo "$out" | pct 99%)" "$(echo "$out" | rps)" "${non2xx:-0}"
  done
  # 2. Engine round trip.
  for t in off memory; do
    out=$(run "$t" 4 1 NO_CACHE=1)
    P50[engine-$t]+="$(echo "$out" | pct 50%) "; P99[engine-$t]+="$(echo "$out" | pct 99%) "
    printf "rep %s engine via %-6s: p50 %s us, p99 %s us\n" "$rep" "$t" "$(echo "$out" | pct 50%)" "$(echo "$out" | pct 99%)"
  done
  # 3. Throughput with 30 % repeats.
  for t in off "${order[@]}"; do
    h0=$(metric "$t" switchyard_response_cache_hits_total); m0=$(metric "$t" switchyard_response_cache_misses_total)
    out=$(run "$t" 64 2 REPEAT=0.3)
    h1=$(metric "$t" switchyard_response_cache_hits_total); m1=$(metric "$t" switchyard_response_cache_misses_total)
    hit=$(echo "$h0 $h1 $m0 $m1" | awk '{d = ($2 - $1) + ($4 - $3); print (d > 0 ? 100 * ($2 - $1) / d : 0)}')
    RPS[$t]+="$(echo "$out" | rps) "; TP50[$t]+="$(echo "$out" | pct 50%) "; TP99[$t]+="$(echo "$out" | pct 99%) "; HIT[$t]+="$hit "
    printf "rep %s 30%% repeats %-7s: %s req/s, p50 %s us, p99 %s us, hits %.1f %%\n" "$rep" "$t" \
      "$(echo "$out" | rps)" "$(echo "$out" | pct 50%)" "$(echo "$out" | pct 99%)" "$hit"
  done
  order=("${order[@]:1}" "${order[0]}")
done
echo
echo "| path | p50 µs (median) | p99 µs (median) |"
echo "|---|---:|---:|"
for k in hit-memory hit-redis engine-memory engine-off; do
  echo "| $k | $(echo "${P50[$k]}" | median) | $(echo "${P99[$k]}" | median) |"
done
echo
echo "| gateway, 30 % repeats | req/s (median) | p50 µs | p99 µs | hits % |"
echo "|---|---:|---:|---:|---:|"
for t in off memory redis; do
  echo "| $t | $(echo "${RPS[$t]}" | median) | $(echo "${TP50[$t]}" | median) | $(echo "${TP99[$t]}" | median) | $(echo "${HIT[$t]}" | median) |"
done
