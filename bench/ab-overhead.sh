#!/usr/bin/env bash
# A/B of this build's gateway against another build (BASELINE_BIN), one policy, in
# front of the same instant engines, alternating wrk runs: a narrower regression check
# than compare-routers.sh (no other routers), with more reps.
#
#   BASELINE_BIN=/path/to/old/switchyard [POLICY=cache_aware] [REPS=5] bench/ab-overhead.sh
#
# The two take turns going first (odd reps: new first; even reps: base first), so
# neither gains from its place in the run, and each rep's paired difference (new minus
# base, CPU per request) is printed with their median. NEW_BIN: a prebuilt binary for
# "new" instead of building this tree (with NEW_BIN=a copy of BASELINE_BIN, the run is
# an A/A: it measures the noise floor).
#
# NEW_ARGS: extra flags for this build's gateway only. OTLP_SINK=1: this build exports
# its traces (--otlp-traces-endpoint) to bench/otlp-sink.py, which discards them.
# CARGO_TARGET_DIR is honoured. Prints one line per run (req/s and the gateway's CPU per
# request) and the medians. Loopback only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASELINE_BIN:?set BASELINE_BIN to the switchyard binary of the other build}"
POLICY=${POLICY:-cache_aware}
REPS=${REPS:-5}
LOGS=bench/results/logs
mkdir -p "$LOGS"
. bench/lib.sh
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -n "${NEW_BIN:-}" ] || cargo build --release -q -p switchyard
B=${CARGO_TARGET_DIR:-target}/release
NEW=${NEW_BIN:-$B/switchyard}
# A baseline built into this target dir can leave cargo thinking the new binary is
# fresh: refuse to compare a build with itself (unless it is asked for: NEW_BIN).
if [ -z "${NEW_BIN:-}" ] && cmp -s "$B/switchyard" "$BASELINE_BIN"; then
  echo "$B/switchyard is the baseline binary itself: touch crates/switchyard/src/main.rs and rerun" >&2
  exit 1
fi
U=http://127.0.0.1:18900,http://127.0.0.1:18901
start ab-sim $B/switchyard-sim --instant --engines 2 --port 18900 --log-level warn
wait_ready http://127.0.0.1:18900/health
read -r -a EXTRA <<< "${NEW_ARGS:-}"
if [ "${OTLP_SINK:-0}" = 1 ]; then
  start ab-otlp python3 bench/otlp-sink.py 18960
  EXTRA+=(--otlp-traces-endpoint http://127.0.0.1:18960)
fi
start ab-new "$NEW" serve --worker-urls $U --policy "$POLICY" --port 18950 --prometheus-port 19000 --admin-port 19030 --log-level warn "${EXTRA[@]}"
start ab-base "$BASELINE_BIN" serve --worker-urls $U --policy "$POLICY" --port 18951 --prometheus-port 19001 --admin-port 19031 --log-level warn
wait_ready http://127.0.0.1:18950/v1/models
wait_ready http://127.0.0.1:18951/v1/models
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "policy $POLICY; new: $NEW ${EXTRA[*]}; base: $BASELINE_BIN; wrk -t2 -c64 -d8s -s bench/chat-load.lua"
declare -A RPS CPU RUN
DIFFS=""
for rep in $(seq 1 "$REPS"); do
  order="new base"; [ $((rep % 2)) = 0 ] && order="base new"
  for t in $order; do
    if [ $t = new ]; then port=18950; pid=$PID_ab_new; else port=18951; pid=$PID_ab_base; fi
    t0=$(ticks "$pid")
    out=$(wrk -t2 -c64 -d8s -s bench/chat-load.lua "http://127.0.0.1:$port/v1/chat/completions")
    t1=$(ticks "$pid")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}'); n=$(echo "$out" | awk '/requests in/ {print $1}')
    hz=$(getconf CLK_TCK)
    cpu=$(echo "($t1 - $t0) * 1000000 / $hz / $n" | bc -l)
    printf "rep %s %s: %s req/s, CPU %.1f us/req\n" "$rep" "$t" "$rps" "$cpu"
    RPS[$t]+="$rps "; CPU[$t]+="$cpu "; RUN[$t]=$cpu
  done
  DIFFS+="$(echo "${RUN[new]} - ${RUN[base]}" | bc -l) "
  printf "rep %s new - base: %+.1f us/req\n" "$rep" "$(echo "${RUN[new]} - ${RUN[base]}" | bc -l)"
done
for t in new base; do
  printf "median %s: %s req/s, CPU %.1f us/req\n" "$t" "$(echo "${RPS[$t]}" | median)" "$(echo "${CPU[$t]}" | median)"
done
printf "median paired difference, new - base: %+.1f us/req\n" "$(echo "$DIFFS" | median)"
if [ "${OTLP_SINK:-0}" = 1 ]; then
  sleep 6 # one batch delay: the last spans reach the sink
  echo "otlp sink: $(curl -fs http://127.0.0.1:18960/count)"
fi
