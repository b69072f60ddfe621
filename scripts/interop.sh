#!/usr/bin/env bash
# Interoperability with the article's Python gRPC stack (grpcio), both directions:
#
#   1. the article's client.py calls greeter-server, and calls through lb-proxy;
#   2. greeter-client balances over three of the article's Python servers (round robin:
#      exactly a third each);
#   3. grpcio's own client-side balancing (an ipv4:a,b,c target, round_robin) spreads
#      its calls over three greeter-servers (counted by x-served-by: each gets some);
#   4. /metrics of greeter-server, lb-proxy and greeter-client parse with the Prometheus
#      client's strict OpenMetrics parser and have a series per endpoint;
#   5. greeter-server's ORCA load reports (--orca) are read by grpcio (the out-of-band
#      stream) and by Node's grpc-js (the stream and the per-call trailer);
#   6. all of it but 4 and 5 again over mutual TLS, with certificates from
#      scripts/gen-certs.sh.
#
#   scripts/interop.sh        # builds, makes .run/interop/venv with grpcio and
#                             # .run/interop/node with grpc-js, runs, cleans up
#
# Everything listens on 127.0.0.1, ports INTEROP_PORT (default 50150) to +65. Exit code
# 0 when every check passed, 1 otherwise. Uses the release binaries (PROFILE=debug for
# the debug ones).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${INTEROP_PORT:-50150}"
work="$RUN_DIR/interop"
mkdir -p "$work"
failed=0
trap stop_started EXIT
trap 'exit 130' INT TERM

check() {
  local what="$1" ok="$2" detail="$3"
  if [[ "$ok" == yes ]]; then
    echo "ok    $what: $detail"
  else
    echo "FAIL  $what: $detail" >&2
    failed=1
  fi
}

echo "== Building"
build=(cargo build -q -p greeter-server -p greeter-client -p lb-proxy)
[[ "$PROFILE" == release ]] && build+=(--release)
"${build[@]}"

echo "== Python: grpcio in $work/venv"
[[ -x "$work/venv/bin/python" ]] || python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools \
  prometheus-client
"$work/venv/bin/python" scripts/python/gen_stubs.py "$work/py"
export PYTHONPATH="$work/py"
py="$work/venv/bin/python"

echo "== Node: @grpc/grpc-js in $work/node (reads the ORCA trailer)"
node_path="" node_error=""
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  node_error="node and npm are not installed"
elif ! (mkdir -p "$work/node" && cd "$work/node" && npm install --silent --no-audit --no-fund \
  --no-save @grpc/grpc-js @grpc/proto-loader >/dev/null 2>&1); then
  node_error="npm install @grpc/grpc-js @grpc/proto-loader failed in $work/node"
else
  node_path="$work/node/node_modules"
fi

echo "== Certificates for the TLS round: $work/certs"
"$ROOT/scripts/gen-certs.sh" "$work/certs" >/dev/null

# One round of every check, in plaintext or over mutual TLS (every connection, in both
# directions, with the certificates from gen-certs.sh).
round() {
  local mode="$1" base="$2" i port label=""
  local server_tls=() client_tls=() proxy_tls=() py_tls=() metrics=()
  if [[ "$mode" == tls ]]; then
    local c="$work/certs"
    label=" [mutual TLS]"
    server_tls=(--tls-cert "$c/server.pem" --tls-key "$c/server.key" --ca "$c/ca.pem")
    client_tls=(--ca "$c/ca.pem" --tls-cert "$c/client.pem" --tls-key "$c/client.key")
    proxy_tls=(${server_tls[@]+"${server_tls[@]}"} --backend-ca "$c/ca.pem" --backend-tls-cert "$c/client.pem"
      --backend-tls-key "$c/client.key")
    py_tls=(--tls "$c")
  fi
  # The plaintext round also serves /metrics from every one of our programs.
  [[ "$mode" == plain ]] && metrics=(--metrics)
  echo "== Starting 3 greeter-servers, 3 Python servers and lb-proxy on 127.0.0.1$label"
  local ours=() theirs=()
  for i in 1 2 3; do
    port=$((base + i))
    start_bg "$work/greeter-$port.log" env RUST_LOG=info "$BIN_DIR/greeter-server" --port "$port" \
      ${server_tls[@]+"${server_tls[@]}"} ${metrics[@]+"${metrics[@]}" "127.0.0.1:$((base + 60 + i))"}
    ours+=("127.0.0.1:$port")
    port=$((base + 10 + i))
    start_bg "$work/python-$port.log" "$py" scripts/python/server.py "$port" ${py_tls[@]+"${py_tls[@]}"}
    theirs+=("127.0.0.1:$port")
  done
  for i in 1 2 3; do
    wait_for_log "$work/greeter-$((base + i)).log" "serving example.MyService"
    wait_for_log "$work/python-$((base + 10 + i)).log" "serving on"
  done
  local ours_list theirs_list proxy="127.0.0.1:$((base + 20))"
  ours_list="$(IFS=,; echo "${ours[*]}")"
  theirs_list="$(IFS=,; echo "${theirs[*]}")"
  start_bg "$work/lb-proxy-$mode.log" env RUST_LOG=info "$BIN_DIR/lb-proxy" --listen "$proxy" \
    --backends "$ours_list" --policy round_robin ${proxy_tls[@]+"${proxy_tls[@]}"} \
    ${metrics[@]+"${metrics[@]}" "127.0.0.1:$((base + 64))"}
  wait_for_log "$work/lb-proxy-$mode.log" "lb-proxy listening"

  echo "== Checks$label"
  local reply report shares counts spread
  reply="$("$py" scripts/python/client.py "${ours[0]}" ${py_tls[@]+"${py_tls[@]}"} 2>&1 || true)"
  check "the article's client -> greeter-server$label" \
    "$([[ "$reply" == "Hello, World!" ]] && echo yes || echo no)" "$reply"

  reply="$("$py" scripts/python/client.py "$proxy" ${py_tls[@]+"${py_tls[@]}"} 2>&1 || true)"
  check "the article's client -> lb-proxy -> greeter-servers$label" \
    "$([[ "$reply" == "Hello, World!" ]] && echo yes || echo no)" "$reply"

  report="$("$BIN_DIR/greeter-client" --servers "$theirs_list" --policy round_robin \
    --requests 30 --concurrency 1 --name interop --json ${client_tls[@]+"${client_tls[@]}"} \
    2>"$work/greeter-client-$mode.log" || true)"
  shares="$(printf '%s' "$report" | "$py" -c '
import json, sys
try:
    report = json.load(sys.stdin)
except ValueError:
    print("no report"); sys.exit()
calls = sorted(b["calls"] for b in report["backends"])
ok = report["failed"] == 0 and report["replies_ok"] and calls == [10, 10, 10]
print(("yes " if ok else "no ") + " ".join("%s=%s" % (b["address"], b["calls"]) for b in report["backends"]))
')"
  check "greeter-client round_robin over 3 Python servers$label" "${shares%% *}" "${shares#* }"

  # grpcio's round robin starts on the servers it has connected to first, so the split
  # of 60 calls is near, not exactly, 20 each: every server must get at least 10.
  counts="$("$py" scripts/python/spread.py "ipv4:$ours_list" 60 round_robin ${py_tls[@]+"${py_tls[@]}"} 2>&1 || true)"
  spread="$(printf '%s' "$counts" | "$py" -c '
import json, sys
try:
    counts = json.load(sys.stdin)
except ValueError:
    print("no"); sys.exit()
values = sorted(counts.values())
print("yes" if len(values) == 3 and values[0] >= 10 and sum(values) == 60 else "no")
')"
  check "grpcio round_robin (ipv4:a,b,c) over 3 greeter-servers$label" "$spread" "$counts"

  if [[ "$mode" == plain ]]; then
    metrics_checks "$base" "$ours_list"
    orca_check "$base"
  fi
  stop_started
  STARTED_PIDS=()
}

# /metrics of greeter-server, lb-proxy and greeter-client (scraped while it runs), read
# with the Prometheus client's strict OpenMetrics parser; every endpoint has series.
metrics_checks() {
  local base="$1" ours_list="$2"
  # One call through the proxy first, so that every program has counted something.
  "$py" scripts/python/client.py "127.0.0.1:$((base + 20))" >/dev/null 2>&1 || true
  metrics_check "greeter-server /metrics (strict OpenMetrics parser)" \
    "127.0.0.1:$((base + 61))" grpc_server_call_started_total "127.0.0.1:$((base + 1))"
  metrics_check "lb-proxy /metrics: a series per backend" \
    "127.0.0.1:$((base + 64))" grpc_client_attempt_started_total "$ours_list"
  start_bg "$work/client-metrics.log" env RUST_LOG=info "$BIN_DIR/greeter-client" \
    --servers "$ours_list" --duration 5s --concurrency 2 --metrics "127.0.0.1:$((base + 65))"
  # Its balancer reports once its servers are READY (the log says so for each).
  wait_for_log "$work/client-metrics.log" "-> READY" 3
  metrics_check "greeter-client /metrics while it runs: a series per server" \
    "127.0.0.1:$((base + 65))" grpc_client_attempt_started_total "$ours_list"
}

# orca_check BASE: a greeter-server with --orca --capacity 2, its load reports read by
# two clients no one here wrote, each with the xDS protos: grpcio reads the out-of-band
# stream (its core keeps the endpoint-load-metrics-bin trailer to itself), grpc-js reads
# the stream and every answer's trailer.
orca_check() {
  local addr="127.0.0.1:$(($1 + 25))" out verdict
  start_bg "$work/greeter-orca.log" env RUST_LOG=info "$BIN_DIR/greeter-server" \
    --port "${addr##*:}" --orca --capacity 2 --latency 2ms
  wait_for_log "$work/greeter-orca.log" "serving example.MyService"
  out="$("$py" scripts/python/orca_check.py "$addr" 2>&1 || true)"
  verdict="$(printf '%s' "$out" | "$py" -c '
import json, sys
try:
    r = json.load(sys.stdin)
except ValueError:
    print("no"); sys.exit()
print("yes" if r["oob"].get("named_metrics", {}).get("capacity") == 2.0 else "no")
')"
  check "grpcio reads greeter-server's ORCA reports (OpenRcaService)" "$verdict" "$out"

  if [[ -z "$node_path" ]]; then
    check "grpc-js reads greeter-server's ORCA reports (OpenRcaService and the trailer)" no \
      "no grpc-js: node and npm are needed ($node_error)"
    return
  fi
  out="$(NODE_PATH="$node_path" node scripts/node/orca_check.js "$addr" 2>&1 || true)"
  verdict="$(printf '%s' "$out" | "$py" -c '
import json, sys
try:
    r = json.load(sys.stdin)
except ValueError:
    print("no"); sys.exit()
oob, trailer = r["oob"], r["trailer"] or {}
ok = (oob.get("named_metrics", {}).get("capacity") == 2
      and trailer.get("named_metrics", {}).get("capacity") == 2
      and trailer.get("rps_fractional", 0) > 0)
print("yes" if ok else "no")
')"
  check "grpc-js reads greeter-server's ORCA reports (OpenRcaService and the trailer)" "$verdict" "$out"
}

# metrics_check WHAT ADDR METRIC EXPECTED: METRIC at http://ADDR/metrics has series for
# exactly the endpoints EXPECTED (a,b,c).
metrics_check() {
  local out ok=yes
  out="$("$py" scripts/python/check_metrics.py "http://$2/metrics" "$3" "$4" 2>&1)" || ok=no
  check "$1" "$ok" "$out"
}

round plain "$base"
round tls "$((base + 30))"

if ((failed)); then
  echo "interop: some checks failed (logs in $work)" >&2
  exit 1
fi
echo "interop: every check passed"
