#!/usr/bin/env bash
# Tenancy's cost on the data plane: three gateways of this build in front of the same
# two instant engines, one run, rotated order per rep:
#   off    — no key configured (everyone is `default`, no limits);
#   memory — a static key of a tenant with rpm/tpm/concurrency/budget limits, limits of
#            the key's tenant and the whole gateway, all in memory;
#   redis  — the same, the limits in Redis (127.0.0.1:6379, DB 10, a prefix of its own);
#   off-redis — no key, but --redis-url like `redis` (the gateway's other shared state,
#            workflows and sessions, also moves to Redis): `redis` less this is the cost
#            of the limits in Redis.
# Limits are far above the load, so every request is checked and charged but none is
# refused.
#
#   [REPS=3] [DURATION=8s] bench/tenancy-overhead.sh
#
# Prints one line per run (req/s, p50 latency, the gateway's CPU per request) and the
# medians. Loopback only; every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-8s}
LOGS=bench/results/logs
mkdir -p "$LOGS"
. bench/lib.sh
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p switchyard
B=target/release
U=http://127.0.0.1:18900,http://127.0.0.1:18901
KEY=sk-bench-static-key-0123456789abcdef
CONF=$(mktemp /tmp/tenancy-bench-XXXX.yaml)
PREFIX=switchyard-bench-$$
cat > "$CONF" <<YAML
api_keys:
  - key: $KEY
    tenant: bench
tenants:
  - id: bench
    limits: {rpm: 100000000, tpm: 100000000000, max_concurrent: 100000, token_budget: 1000000000000000, budget_period: month}
global_limits: {rpm: 100000000, tpm: 100000000000, max_concurrent: 100000}
YAML
FILES=$(mktemp -d /tmp/tenancy-bench-files-XXXX)
trap 'cleanup; rm -rf "$CONF" "$FILES"; redis-cli -n 10 --scan --pattern "$PREFIX*" | xargs -r redis-cli -n 10 del > /dev/null' EXIT INT TERM
start tb-sim $B/switchyard-sim --instant --engines 2 --port 18900 --log-level warn
wait_ready http://127.0.0.1:18900/health
# Each gateway its own in-memory database (not ./switchyard.db, shared by all three).
common=(serve --worker-urls $U --policy round_robin --log-level warn --database-url sqlite::memory:)
start tb-off $B/switchyard "${common[@]}" --files-dir "$FILES/off" --port 18960 --prometheus-port 19010 --admin-port 19040
start tb-memory $B/switchyard "${common[@]}" --files-dir "$FILES/memory" --config "$CONF" --port 18961 --prometheus-port 19011 --admin-port 19041
start tb-offredis $B/switchyard "${common[@]}" --files-dir "$FILES/offredis" --redis-url redis://127.0.0.1:6379/10 --redis-key-prefix "$PREFIX-off" --port 18963 --prometheus-port 19013 --admin-port 19043
start tb-redis $B/switchyard "${common[@]}" --files-dir "$FILES/redis" --config "$CONF" --redis-url redis://127.0.0.1:6379/10 --redis-key-prefix "$PREFIX" --port 18962 --prometheus-port 19012 --admin-port 19042
for p in 18960 18961 18962 18963; do wait_ready "http://127.0.0.1:$p/health"; done
# The keyed gateways refuse a request without the key.
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' -d '{"model":"switchyard/sim-8b","messages":[{"role":"user","content":"hi"}]}' http://127.0.0.1:18961/v1/chat/completions)
[ "$code" = 401 ] || { echo "memory gateway answered $code without a key" >&2; exit 1; }
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A RPS P50 CPU
order=(off memory redis off-redis)
echo "2 instant engines; wrk -t2 -c64 -d$DURATION --latency -s bench/chat-load.lua; $REPS reps, rotated order"
for rep in $(seq 1 "$REPS"); do
  for t in "${order[@]}"; do
    case $t in off) port=18960; pid=$PID_tb_off;; memory) port=18961; pid=$PID_tb_memory;; redis) port=18962; pid=$PID_tb_redis;; off-redis) port=18963; pid=$PID_tb_offredis;; esac
    t0=$(ticks "$pid")
    out=$(wrk -t2 -c64 -d"$DURATION" --latency -s bench/chat-load.lua -H "Authorization: Bearer $KEY" "http://127.0.0.1:$port/v1/chat/completions")
    t1=$(ticks "$pid")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}'); n=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}'); non2xx=${non2xx:-0}
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}' | to_us)
    cpu=$(echo "($t1 - $t0) * 1000000 / $hz / $n" | bc -l)
    printf "rep %s %-9s: %s req/s, p50 %s us, CPU %.1f us/req, non-2xx %s\n" "$rep" "$t" "$rps" "$p50" "$cpu" "$non2xx"
    RPS[$t]+="$rps "; P50[$t]+="$p50 "; CPU[$t]+="$(printf %.1f "$cpu") "
  done
  order=("${order[@]:1}" "${order[0]}")
done
echo
echo "| gateway | req/s (median) | p50 µs (median) | CPU µs/req (median) |"
echo "|---|---:|---:|---:|"
for t in off memory off-redis redis; do
  echo "| $t | $(echo "${RPS[$t]}" | median) | $(echo "${P50[$t]}" | median) | $(echo "${CPU[$t]}" | median) |"
done
