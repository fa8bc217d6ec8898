#!/usr/bin/env bash
# Responses API benchmarks. Writes bench/results/<date>-responses-<mode>.{md,...}.
#
#   bench/responses.sh overhead   # POST /v1/responses (store: true) vs the same request as a
#                                 # chat completion, instant engines, SQLite then PostgreSQL (needs wrk)
#   bench/responses.sh chain      # 20-turn chains: previous_response_id vs chat completions
#                                 # resending the history; hit rate, engines per chain, turn latency
#
# PostgreSQL: a database of its own on 127.0.0.1:5432 (user postgres), dropped at the end.
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-overhead}
OUT=bench/results
LOGS=$OUT/logs
mkdir -p "$OUT" "$LOGS"
DATE=$(date -u +%Y-%m-%d-%H%M)
BIN=target/release
REPS=${REPS:-3}

. bench/lib.sh

ENGINE_PORT=18900
GW_PORT=18950
if busy=$(ss -Hltnp "sport >= :18900 and sport <= :19099" | grep .); then
  echo "ports 18900-19099 are in use; stop these first:" >&2; echo "$busy" >&2; exit 1
fi
TMP=$(mktemp -d)
PGDB=bench_responses_$$
PSQL="psql -q -h 127.0.0.1 -U postgres -d test"
$PSQL -c "CREATE DATABASE $PGDB" >/dev/null
finish() { cleanup; $PSQL -c "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" >/dev/null || true; rm -rf "$TMP"; }
trap finish EXIT INT TERM
gateway() { # gateway NAME DATABASE_URL POLICY ENGINES: a gateway (PID in PID_<NAME>)
  start "$1" $BIN/switchyard serve --worker-urls "$4" --policy "$3" --database-url "$2" \
    --port $GW_PORT --prometheus-port $((GW_PORT + 50)) --admin-port $((GW_PORT + 80)) --log-level warn
  wait_ready "http://127.0.0.1:$GW_PORT/readiness"
  sleep 1
}
stop_last() { local p=${PIDS[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'PIDS[-1]'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

if [ "$MODE" = overhead ]; then
  command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
  cargo build --release -q -p switchyard
  start sim $BIN/switchyard-sim --instant --engines 2 --port $ENGINE_PORT --log-level warn
  wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
  ENGINES="http://127.0.0.1:$ENGINE_PORT,http://127.0.0.1:$((ENGINE_PORT + 1))"
  REPORT=$OUT/$DATE-responses-overhead.md
  REPS_LOG=$LOGS/$DATE-responses-overhead-reps.txt
  declare -A RPS P50 P99 CPU
  for backend in sqlite postgres; do
    case $backend in
      sqlite) url="sqlite://$TMP/bench.db" ;;
      postgres) url="postgres://postgres@127.0.0.1:5432/$PGDB" ;;
    esac
    gateway gw "$url" round_robin "$ENGINES"
    for rep in $(seq 0 $((REPS - 1))); do
      for kind in $( [ $((rep % 2)) = 0 ] && echo "chat responses" || echo "responses chat"); do
        path=$( [ "$kind" = responses ] && echo /v1/responses || echo /v1/chat/completions)
        t0=$(ticks "$PID_gw")
        out=$(PATH_KIND=$kind wrk -t2 -c64 -d8s -s bench/responses-load.lua "http://127.0.0.1:$GW_PORT$path")
        t1=$(ticks "$PID_gw")
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        nreq=$(echo "$out" | awk '/requests in/ {print $1}')
        errs=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
        cpu=$(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $nreq" | bc -l)
        lat=$(PATH_KIND=$kind wrk -t1 -c1 -d5s --latency -s bench/responses-load.lua "http://127.0.0.1:$GW_PORT$path")
        p50=$(echo "$lat" | awk '$1=="50%" {print $2}' | to_us)
        p99=$(echo "$lat" | awk '$1=="99%" {print $2}' | to_us)
        key=$backend-$kind
        RPS[$key]="${RPS[$key]:-} $rps"; P50[$key]="${P50[$key]:-} $p50"; P99[$key]="${P99[$key]:-} $p99"; CPU[$key]="${CPU[$key]:-} $cpu"
        printf "%s rep %s %s: %s req/s (non-2xx: %s), p50 %s us, p99 %s us, gateway CPU %.1f us/req\n" \
          "$backend" "$rep" "$kind" "$rps" "${errs:-0}" "$p50" "$p99" "$cpu" | tee -a "$REPS_LOG"
      done
    done
    stop_last
  done
  {
    echo "## Responses API overhead ($(date -u +%Y-%m-%d))"
    echo
    echo "2 instant simulated engines; one gateway (round_robin) per backend: SQLite (a file)"
    echo "and PostgreSQL 15 (127.0.0.1). The same short request sent as \`POST /v1/responses\`"
    echo "(store: true: the response row, its input and output items, one transaction) and as a"
    echo "chat completion, alternating (bench/responses-load.lua). Throughput: wrk -t2 -c64 -d8s;"
    echo "latency: wrk -t1 -c1 -d5s. $REPS reps; medians. Gateway CPU: its user + system time per"
    echo "request during the throughput run."
    echo
    echo "| backend | request | req/s | p50 (us) | p99 (us) | added p50 (us) | added p99 (us) | gateway CPU us/req |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for backend in sqlite postgres; do
      c50=$(echo "${P50[$backend-chat]}" | median); c99=$(echo "${P99[$backend-chat]}" | median)
      for kind in chat responses; do
        key=$backend-$kind
        r=$(echo "${RPS[$key]}" | median); l=$(echo "${P50[$key]}" | median); h=$(echo "${P99[$key]}" | median)
        c=$(echo "${CPU[$key]}" | median)
        if [ "$kind" = chat ]; then a50="-"; a99="-"; else
          a50=$(printf "%.0f" "$(echo "$l - $c50" | bc -l)"); a99=$(printf "%.0f" "$(echo "$h - $c99" | bc -l)"); fi
        printf "| %s | %s | %.0f | %.0f | %.0f | %s | %s | %.1f |\n" "$backend" "$kind" "$r" "$l" "$h" "$a50" "$a99" "$c"
      done
    done
    echo
    echo "Every rep:"
    echo
    echo '```'
    cat "$REPS_LOG"
    echo '```'
  } > "$REPORT"
  cat "$REPORT"
  exit 0
fi

# chain: simulated engines with a prefix cache (not instant), 4 of them.
cargo build --release -q -p switchyard -p switchyard-bench
start sim $BIN/switchyard-sim --engines 4 --port $ENGINE_PORT --time-scale 20 --log-level warn
wait_ready "http://127.0.0.1:$ENGINE_PORT/health"
ENGINE_LIST=()
for i in 0 1 2 3; do ENGINE_LIST+=("http://127.0.0.1:$((ENGINE_PORT + i))"); done
ENGINES=$(IFS=,; echo "${ENGINE_LIST[*]}")
ENGINE_ARGS=()
for e in "${ENGINE_LIST[@]}"; do ENGINE_ARGS+=(--engine "$e"); done
REPORT=$OUT/$DATE-responses-chain.md
CONVERSATIONS=${CONVERSATIONS:-16}
TURNS=${TURNS:-20}
{
  echo "## 20-turn chains ($(date -u +%Y-%m-%d))"
  echo
  echo "4 simulated engines (prefix cache on, 20x real time); one gateway per policy,"
  echo "SQLite file. $CONVERSATIONS conversations one after another, $TURNS turns each: a"
  echo "1024-token briefing in turn 1, 64 tokens per later turn, 32 output tokens."
  echo "\`responses\`: each turn chained with previous_response_id (the gateway rebuilds the"
  echo "context); \`chat\`: the client resends the whole history as a chat completion."
  echo "$REPS reps per row (seeds 0..$((REPS - 1))); every rep below, the table per rep."
  echo
} > "$REPORT"
for policy in cache_aware consistent_hash; do
  rm -f "$TMP"/chain.db*
  gateway gw "sqlite://$TMP/chain.db" $policy "$ENGINES"
  for rep in $(seq 0 $((REPS - 1))); do
    for mode in responses chat; do
      echo "### $policy, $mode, rep $rep" >> "$REPORT"
      echo >> "$REPORT"
      $BIN/switchyard-bench chain --target "http://127.0.0.1:$GW_PORT" "${ENGINE_ARGS[@]}" \
        --mode $mode --conversations "$CONVERSATIONS" --turns "$TURNS" --seed "$rep" \
        --out "$OUT/$DATE-responses-chain-$policy-$mode-$rep" >> "$REPORT"
    done
  done
  stop_last
done
cat "$REPORT"
