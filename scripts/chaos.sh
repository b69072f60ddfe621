#!/usr/bin/env bash
# Chaos under load: starts 3 greeter-servers and runs the client for a while with a live
# view (a table redrawn every second in a terminal, one line per second otherwise),
# while it kills one server, restarts it, flips another to NOT_SERVING and back, and
# restarts the third slower. Watch the shares move, and the failed count stay at 0.
# Always stops every process it started, on success, failure or Ctrl-C.
#
#   scripts/chaos.sh
#
# Environment: BASE_PORT (default 50061), POLICY (least_request), STEP (seconds
# between events, default 5), CONCURRENCY (16), PROFILE (release; debug to skip the
# optimised build).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${BASE_PORT:-50061}"
policy="${POLICY:-least_request}"
step="${STEP:-5}"
concurrency="${CONCURRENCY:-16}"
export RUN_DIR="$RUN_DIR/chaos"

if [[ "$PROFILE" == release ]]; then
  cargo build --release -p greeter-server -p greeter-client
else
  cargo build -p greeter-server -p greeter-client
fi

client_pid=""
cleanup() {
  [[ -n "$client_pid" ]] && kill "$client_pid" 2>/dev/null || true
  "$ROOT/scripts/stop-servers.sh" >/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/scripts/start-servers.sh" 3 "$base"
servers="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
pid_of() { cat "$RUN_DIR/server-$1.pid"; }

# Starts (again) the server on port $1 with extra flags, recording its pid.
start_one() {
  local port=$1
  shift
  RUST_LOG=info "$BIN_DIR/greeter-server" --port "$port" "$@" >>"$RUN_DIR/server-$port.log" 2>&1 &
  echo $! >"$RUN_DIR/server-$port.pid"
}

event() { echo ">>> $(date +%T) $*"; }

duration=$((step * 7))
echo "== $policy under load for ${duration}s, an event every ${step}s =="
"$BIN_DIR/greeter-client" --servers "$servers" --policy "$policy" \
  --concurrency "$concurrency" --duration "${duration}s" --live --outlier-detection &
client_pid=$!

sleep "$step"
event "kill -9 the server on $((base + 1))"
kill -KILL "$(pid_of $((base + 1)))"
sleep "$step"
event "restart it"
start_one $((base + 1))
sleep "$step"
event "the server on $((base + 2)) says NOT_SERVING (SIGUSR1)"
kill -USR1 "$(pid_of $((base + 2)))"
sleep "$step"
event "and SERVING again (SIGUSR2)"
kill -USR2 "$(pid_of $((base + 2)))"
sleep "$step"
event "restart the server on $base gracefully, 30 ms slower"
kill -TERM "$(pid_of "$base")"
while kill -0 "$(pid_of "$base")" 2>/dev/null; do sleep 0.1; done
start_one "$base" --latency 30ms

status=0
wait "$client_pid" || status=$?
client_pid=""
echo "== client exited with $status (0: every call succeeded) =="
exit "$status"
