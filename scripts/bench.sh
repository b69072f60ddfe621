#!/usr/bin/env bash
# Measures our balancer against the alternatives, in one run, and regenerates
# docs/BENCHMARKS.md (the block between the bench markers) and docs/bench.svg.
#
#   scripts/bench.sh                       # 5 full runs: about 12 minutes after the build
#   scripts/bench.sh --baseline docs/bench.json   # and say what moved since the saved figures
#   QUICK=1 scripts/bench.sh               # a short run (1 run, 0.5 s a subject): for trying it out
#
# It starts, on 127.0.0.1 only, and stops again:
#   - 3 greeter-servers (every subject calls these),
#   - lb-proxy (one thread, its default, and one per core) and nginx (grpc_pass), each
#     balancing over those 3,
#   - the article's Python server (grpcio, 10 threads),
#   - 3 more servers, one 20 ms slow, for the heterogeneous-fleet run,
#   - 1 greeter-server process on 1,000 ports, for the scale run;
# and runs the Python grpcio client (round_robin) from a venv in .run/bench/venv, Node's
# grpc-js (round_robin) from .run/bench/node, and nghttp2's h2load against the servers
# and proxies. What it needs it installs: the venv with grpcio (from PyPI), grpc-js
# (from npm), nginx and h2load (Debian's nginx and nghttp2-client, with apt-get, when
# run as root or with sudo). What cannot be had is skipped and the report says so.
#
# With 2 cores or more, the client (lb-bench, and the Python, Node and h2load clients
# it starts) runs on core 0 and every server and proxy on the others (taskset), so
# that the client's own cost does not move with what the servers do; the report
# states the layout. The figures are saved as JSON in docs/bench.json: the baseline
# for the next run.
#
# Environment:
#   BENCH_PORT=50070   first of the ports used (about 20 from there, and 1,000 from
#                      BENCH_PORT+1000 for the scale run)
#   RUNS=5             full runs (each target is judged in each)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${BENCH_PORT:-50070}"
work="$RUN_DIR/bench"
mkdir -p "$work"
skipped=()

baseline=()
while (($#)); do
  case "$1" in
    --baseline)
      [[ -n "${2:-}" ]] || { echo "bench.sh: --baseline needs a FILE (a saved bench.json)" >&2; exit 2; }
      [[ -r "$2" ]] || { echo "bench.sh: --baseline $2: cannot read it" >&2; exit 2; }
      baseline=(--baseline "$2")
      shift 2
      ;;
    *) echo "bench.sh: unknown argument \`$1\` (only --baseline FILE)" >&2; exit 2 ;;
  esac
done
runs="${RUNS:-5}"
case "$runs" in
  '' | *[!0-9]* | 0) echo "bench.sh: RUNS must be a number of runs from 1, not \`$runs\`" >&2; exit 2 ;;
esac

# Client on core 0, servers and proxies on the rest, where there are two cores or more.
cores="$(nproc 2>/dev/null || echo 1)"
server_pin=()
client_pin=()
layout=""
if ((cores >= 2)) && command -v taskset >/dev/null; then
  server_cpus="1-$((cores - 1))"
  [[ $cores == 2 ]] && server_cpus=1
  server_pin=(taskset -c "$server_cpus")
  client_pin=(taskset -c 0)
  layout="client (lb-bench, and the grpcio, grpc-js and h2load clients) on core 0; every server and proxy on core(s) $server_cpus (taskset)"
else
  skipped+=("pinning: fewer than 2 cores, or no taskset; everything shares the cores")
fi

policy_made=""
cleanup() {
  stop_started
  # Ours only if we made it (an interrupted apt-get must not leave it behind).
  if [[ -n "$policy_made" ]]; then ${sudo:-} rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME LOG COMMAND...: start_bg on the servers' cores, and say so.
start() {
  local name="$1" log="$2"
  shift 2
  start_bg "$log" "${server_pin[@]}" "$@"
  echo "started $name (pid ${STARTED_PIDS[-1]}, log $log)"
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

echo "== Building (release)"
cargo build --release -p greeter-server -p lb-proxy -p lb-bench
BIN_DIR="$TARGET_DIR/release" # measured optimised, whatever PROFILE says

echo "== Python: venv with grpcio in $work/venv"
python_client=""
python_server=""
if [[ ! -x "$work/venv/bin/python" ]]; then
  python3 -m venv "$work/venv" || true
fi
if [[ -x "$work/venv/bin/python" ]] &&
  "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools &&
  "$work/venv/bin/python" scripts/python/gen_stubs.py "$work/py"; then
  export PYTHONPATH="$work/py"
  python_client="$work/venv/bin/python scripts/python/bench_client.py"
else
  skipped+=("grpcio client and the Python server: no Python venv with grpcio could be made")
fi

echo "== Node: @grpc/grpc-js in $work/node"
node_client=""
if command -v node >/dev/null && command -v npm >/dev/null; then
  mkdir -p "$work/node"
  if (cd "$work/node" && npm install --silent --no-audit --no-fund --no-save \
    @grpc/grpc-js @grpc/proto-loader >/dev/null 2>&1); then
    export NODE_PATH="$work/node/node_modules"
    node_client="node scripts/node/bench_client.js"
  else
    skipped+=("grpc-js client: npm install @grpc/grpc-js @grpc/proto-loader failed")
  fi
else
  skipped+=("grpc-js client: node and npm are not installed")
fi

echo "== nginx and h2load"
nginx_bin="$(command -v nginx || true)"
if [[ -z "$nginx_bin" && -x /usr/sbin/nginx ]]; then nginx_bin=/usr/sbin/nginx; fi
h2load_bin="$(command -v h2load || true)"
if [[ -z "$nginx_bin" || -z "$h2load_bin" ]] && command -v apt-get >/dev/null; then
  sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo -n"
  # Debian starts a freshly installed nginx on port 80 of every interface; a
  # policy-rc.d that says "no" keeps it from starting (we start our own, on loopback).
  if [[ ! -e /usr/sbin/policy-rc.d ]] &&
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null 2>&1; then
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy_made=1
  fi
  if $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx nghttp2-client >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx nghttp2-client >/dev/null 2>&1; }; then
    nginx_bin=/usr/sbin/nginx
    h2load_bin="$(command -v h2load || true)"
  fi
  if [[ -n "$policy_made" ]]; then
    $sudo rm -f /usr/sbin/policy-rc.d
    policy_made=""
  fi
fi
if [[ -z "$nginx_bin" ]]; then
  skipped+=("nginx: not installed, and apt-get could not install it")
fi
if [[ -z "$h2load_bin" ]]; then
  skipped+=("h2load: not installed (Debian's nghttp2-client), and apt-get could not install it")
fi

echo "== Starting the servers"
servers=()
for i in 1 2 3; do
  port=$((base + i))
  start "greeter-server :$port" "$work/server-$port.log" \
    env RUST_LOG=info "$BIN_DIR"/greeter-server --port "$port"
  servers+=("127.0.0.1:$port")
done
hetero=()
for i in 1 2 3; do
  port=$((base + 20 + i))
  latency=0ms
  [[ $i == 3 ]] && latency=20ms
  start "greeter-server :$port (latency $latency)" "$work/server-$port.log" \
    env RUST_LOG=info "$BIN_DIR"/greeter-server --port "$port" --latency "$latency"
  hetero+=("127.0.0.1:$port")
done
for i in 1 2 3; do
  wait_for_log "$work/server-$((base + i)).log" "serving example.MyService"
  wait_for_log "$work/server-$((base + 20 + i)).log" "serving example.MyService"
done
server_list="$(IFS=,; echo "${servers[*]}")"
hetero_list="$(IFS=,; echo "${hetero[*]}")"

# 1,000 listeners and as many connections: more file descriptors than the usual 1,024.
scale_args=()
scale_first=$((base + 1000))
scale_last=$((scale_first + 999))
if ulimit -n 8192 2>/dev/null; then
  start "greeter-server :$scale_first-$scale_last" "$work/scale.log" \
    env RUST_LOG=info "$BIN_DIR"/greeter-server --port "$scale_first-$scale_last"
  wait_for_log "$work/scale.log" "serving example.MyService" 1000
  scale_args=(--scale "127.0.0.1:$scale_first-$scale_last")
else
  skipped+=("the scale run: cannot raise the open-file limit to 8,192 (ulimit -n)")
fi

proxy_port=$((base + 10))
start "lb-proxy :$proxy_port" "$work/lb-proxy.log" \
  env RUST_LOG=info "$BIN_DIR"/lb-proxy --listen "127.0.0.1:$proxy_port" \
  --backends "$server_list" --policy round_robin
# The same with one worker thread per core, to show what its default of one thread
# is measured against.
proxy_mt_port=$((base + 13))
start "lb-proxy --threads 0 :$proxy_mt_port" "$work/lb-proxy-threads.log" \
  env RUST_LOG=info "$BIN_DIR"/lb-proxy --listen "127.0.0.1:$proxy_mt_port" \
  --backends "$server_list" --policy round_robin --threads 0
wait_for_log "$work/lb-proxy.log" "lb-proxy listening"
wait_for_log "$work/lb-proxy-threads.log" "lb-proxy listening"
extra=(--proxy "127.0.0.1:$proxy_port" --also "lb-proxy --threads 0=127.0.0.1:$proxy_mt_port")
if [[ -n "$node_client" ]]; then extra+=(--node-client "$node_client"); fi
if [[ -n "$h2load_bin" ]]; then extra+=(--h2load "$h2load_bin"); fi

if [[ -n "$nginx_bin" ]]; then
  nginx_port=$((base + 11))
  mkdir -p "$work/nginx/logs"
  {
    echo "worker_processes auto;"
    echo "error_log $work/nginx/logs/error.log warn;"
    echo "pid $work/nginx/nginx.pid;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    # By default nginx closes a client connection after 1,000 calls (GOAWAY): not
    # what is measured here.
    echo "  keepalive_requests 100000000;"
    echo "  keepalive_timeout 300s;"
    # Every temporary path under $work: the defaults may not be writable by us.
    for kind in client_body proxy fastcgi uwsgi scgi; do
      echo "  ${kind}_temp_path $work/nginx/$kind;"
    done
    echo "  upstream greeters {"
    for s in "${servers[@]}"; do echo "    server $s;"; done
    echo "    keepalive 64;"
    echo "    keepalive_requests 100000000;"
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$nginx_port;"
    echo "    http2 on;"
    echo "    location / { grpc_pass grpc://greeters; }"
    echo "  }"
    echo "}"
  } >"$work/nginx/nginx.conf"
  # nginx before 1.25 takes "listen ... http2" instead of the "http2 on" directive.
  if ! "$nginx_bin" -t -p "$work/nginx" -c "$work/nginx/nginx.conf" >/dev/null 2>&1; then
    sed -i -e "s|listen 127.0.0.1:$nginx_port;|listen 127.0.0.1:$nginx_port http2;|" \
      -e '/http2 on;/d' "$work/nginx/nginx.conf"
  fi
  start "nginx :$nginx_port" "$work/nginx/nginx.log" \
    "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g "daemon off;"
  for _ in $(seq 100); do port_open "$nginx_port" && break; sleep 0.1; done
  if port_open "$nginx_port"; then
    extra+=(--nginx "127.0.0.1:$nginx_port")
  else
    skipped+=("nginx: it did not start (see $work/nginx/nginx.log and logs/error.log)")
  fi
fi

if [[ -n "$python_client" ]]; then
  python_port=$((base + 12))
  start "the article's Python server :$python_port" "$work/python-server.log" \
    "$work/venv/bin/python" scripts/python/server.py "$python_port"
  wait_for_log "$work/python-server.log" "serving on"
  extra+=(--python-server "127.0.0.1:$python_port" --python-client "$python_client")
fi

timing=(--runs "$runs" --repeats 1)
if [[ -n "${QUICK:-}" ]]; then
  timing=(--runs 1 --repeats 1 --duration 500ms --warmup 200ms)
fi
skip_args=()
for why in "${skipped[@]}"; do skip_args+=(--skipped "$why"); done

echo "== Measuring"
"${client_pin[@]}" "$BIN_DIR"/lb-bench --servers "$server_list" --hetero "$hetero_list" \
  "${extra[@]}" "${scale_args[@]}" "${timing[@]}" "${skip_args[@]}" "${baseline[@]}" \
  --layout "$layout" --out docs/BENCHMARKS.md --svg docs/bench.svg --json "$work/bench.json"
cp "$work/bench.json" docs/bench.json
echo "== Done: docs/BENCHMARKS.md and docs/bench.svg updated; figures in docs/bench.json"
echo "   (the baseline for the next run: scripts/bench.sh --baseline docs/bench.json)"
