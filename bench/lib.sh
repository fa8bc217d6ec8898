# Shared by the benchmark scripts (sourced): background processes stopped on exit, and
# waiting for a URL to answer, the peer routers. Expects LOGS (and VENV) to be set.
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

start() { # start NAME CMD...: runs CMD in the background, logs to $LOGS/NAME.log
  local name=$1; shift
  "$@" > "$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

wait_ready() { # wait_ready URL: until GET URL answers, 120 s at most
  for _ in $(seq 1 600); do
    curl -fs -o /dev/null -m 1 "$1" && return 0
    sleep 0.2
  done
  echo "not ready: $1" >&2; exit 1
}

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
to_us() { awk '{v=$1; if (v ~ /ms$/) {sub(/ms/,"",v); v*=1000} else if (v ~ /us$/) {sub(/us/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1e6}; print v}'; }

prepare_routers() { # the peers, pinned, in $VENV (installed on first use); our release build in $BIN
  if [ ! -x "$VENV/bin/vllm-router" ] || [ ! -x "$VENV/bin/sglang-router" ]; then
    echo "installing vllm-router 0.1.17 and sglang-router 0.3.2 into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "vllm-router==0.1.17" "sglang-router==0.3.2"
  fi
  cargo build --release -q -p switchyard -p switchyard-bench
  BIN=target/release
}
