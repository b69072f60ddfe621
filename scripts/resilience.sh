#!/usr/bin/env bash
# A hung server under load, and who notices. Against 3 greeter-servers, each client
# sends 16 calls at a time with 2 s deadlines for 20 s; 3 s in, one server is stopped
# (SIGSTOP: connected, never answering) for 10 s, then continued. Clients: greeter-client
# with round_robin (with and without outlier detection), peak_ewma and least_request,
# grpcio's round_robin, and grpc-js's round_robin (if node and npm are here). Prints a
# table: calls failed, calls answered per second while one server was stopped (and
# before), calls the stopped server was sent from 3 s after the stop, and how soon after
# SIGCONT it answered again; docs/04-failures.md shows one run.
#
#   scripts/resilience.sh        # about 3 minutes; RESILIENCE_PORT (default 50260)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${RESILIENCE_PORT:-50260}"
work="$RUN_DIR/resilience"
mkdir -p "$work"
# A server still stopped would never act on the SIGTERM of stop_started: continue
# every process first.
cont_all() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
}
trap 'cont_all; stop_started' EXIT
trap 'exit 130' INT TERM

echo "== Building"
build=(cargo build -q -p greeter-server -p greeter-client)
[[ "$PROFILE" == release ]] && build+=(--release)
"${build[@]}"

echo "== Python: grpcio in $work/venv"
[[ -x "$work/venv/bin/python" ]] || python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools
"$work/venv/bin/python" scripts/python/gen_stubs.py "$work/py"

node_ok=no
if command -v node >/dev/null && command -v npm >/dev/null; then
  echo "== Node: @grpc/grpc-js in $work/node"
  mkdir -p "$work/node"
  if (cd "$work/node" && npm install --silent --no-audit --no-fund --no-save \
    @grpc/grpc-js @grpc/proto-loader >/dev/null 2>&1); then
    node_ok=yes
  else
    echo "   npm install failed: grpc-js is left out"
  fi
fi

list="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
hung="127.0.0.1:$((base + 1))"
results="$work/results.txt"
: >"$results"

# scenario NAME COMMAND...: 3 fresh servers, COMMAND as the client (its stdout, with a
# line "t=Ns ..." a second, to a log), the middle server stopped at t=3 s and continued
# at t=13 s.
scenario() {
  local name="$1" log="$work/$(echo "$1" | tr -c 'a-z0-9' _).log"
  shift
  echo "== $name"
  local first=${#STARTED_PIDS[@]} port pids=()
  for port in $base $((base + 1)) $((base + 2)); do
    start_bg "$work/server-$port.log" "$BIN_DIR/greeter-server" --port "$port"
    pids+=("${STARTED_PIDS[-1]}")
  done
  "$BIN_DIR/greeter-client" health --servers "$list" --wait 10s >/dev/null
  start_bg "$log" "$@"
  local client="${STARTED_PIDS[-1]}"
  wait_for_log "$log" "t=3s "
  kill -STOP "${pids[1]}"
  wait_for_log "$log" "t=13s "
  kill -CONT "${pids[1]}"
  wait "$client" || true # greeter-client exits 1 when a call failed
  for port in "${pids[@]}"; do kill -TERM "$port" 2>/dev/null || true; done
  for port in "${pids[@]}"; do wait "$port" 2>/dev/null || true; done
  STARTED_PIDS=("${STARTED_PIDS[@]:0:first}")
  "$work/venv/bin/python" - "$name" "$log" "$hung" >>"$results" <<'PY'
import json, re, sys
name, log, hung = sys.argv[1:]
lines, failed = {}, None
for line in open(log):
    m = re.match(r"t=(\d+)s ok=(\d+) failed=(\d+)", line)
    if m:
        rates = dict(re.findall(r"\| (\S+) (\d+)/s", line))
        lines[int(m[1])] = (int(m[2]), int(m[3]), int(rates.get(hung, 0)))
    elif line.startswith("{") and '"failed"' in line:
        failed = json.loads(line)["failed"]
if failed is None:  # greeter-client's JSON report spans lines
    text = open(log).read()
    report = json.loads(text[text.index("\n{") + 1:])
    failed = sum(e["count"] for e in report["errors"])
# Calls answered per second before the stop (t 1-3 s) and while stopped (6-13 s).
before = (lines[3][0] - lines[1][0]) / 2
during = (lines[13][0] - lines[6][0]) / 7
# Where calls went is visible only to greeter-client (the others count answers, and a
# stopped server answers nothing).
sent = sum(lines[t][2] for t in range(6, 14) if t in lines)
sent = str(sent) if name.startswith("greeter-client") else "(not visible)"
back = next((t - 13 for t in sorted(lines) if t > 13 and lines[t][2] > 0), None)
back = f"within {back} s" if back is not None else "not in the run"
print(f"| {name} | {failed} | {during:.0f} (before: {before:.0f}) | {sent} | {back} |")
PY
  tail -1 "$results"
}

gc=("$BIN_DIR/greeter-client" --servers "$list" --concurrency 16 --timeout 2s --duration 20s --live --json)
scenario "greeter-client, round_robin + outlier detection" "${gc[@]}" --policy round_robin --outlier-detection
scenario "greeter-client, round_robin" "${gc[@]}" --policy round_robin
scenario "greeter-client, peak_ewma" "${gc[@]}" --policy peak_ewma
scenario "greeter-client, least_request" "${gc[@]}" --policy least_request
scenario "greeter-client, round_robin, --no-liveness" "${gc[@]}" --policy round_robin --no-liveness
scenario "grpcio (Python), round_robin" env PYTHONPATH="$work/py" "$work/venv/bin/python" \
  scripts/python/live_client.py "ipv4:$list" 16 2 20
if [[ "$node_ok" == yes ]]; then
  scenario "grpc-js (Node), round_robin" env NODE_PATH="$work/node/node_modules" node \
    scripts/node/live_client.js "ipv4:$list" 16 2 20
fi

echo
echo "| client | calls failed | calls/s answered while stopped | calls sent to the stopped server, 2-10 s after the stop | serving again after SIGCONT |"
echo "|---|---|---|---|---|"
cat "$results"
