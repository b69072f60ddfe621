#!/usr/bin/env bash
# Machines of different sizes: 3 greeter-servers that work on at most 4, 4 and 1 calls
# at once (--capacity; 5 ms a call, the rest queue) and report their load (--orca).
# The same load through round_robin, which gives the small one a third of the calls
# and makes them queue, and through weighted_round_robin with weights from the load
# reports (gRFC A58), which gives it about a ninth; then the same fleet in the
# simulator, and a server joining under slow start. Always stops its servers.
#
#   scripts/demo-weights.sh
#
# Environment: BASE_PORT (default 50071), REQUESTS (6000; with fewer than about
# 2000 the run ends before the reports count), CONCURRENCY (18),
# PROFILE (release; debug skips the optimised build if tests were just run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${BASE_PORT:-50071}"
requests="${REQUESTS:-6000}"
concurrency="${CONCURRENCY:-18}"

echo "== Building greeter-server and greeter-client (cargo build, $PROFILE profile) =="
if [[ "$PROFILE" == release ]]; then
  cargo build --release -p greeter-server -p greeter-client
else
  cargo build -p greeter-server -p greeter-client
fi

# Its own run directory, so that its cleanup stops only the servers it started.
export RUN_DIR="$RUN_DIR/demo-weights"
trap '"$ROOT/scripts/stop-servers.sh"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo
echo "== 3 servers of capacities 4, 4 and 1, reporting their load (ORCA) =="
CAPACITIES=4,4,1 SERVER_ARGS="--orca --latency 5ms" "$ROOT/scripts/start-servers.sh" 3 "$base"
servers="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"

echo
echo "== round_robin against weighted_round_robin on the servers' reports =="
echo "   (a blackout of 1 s instead of gRPC's 10, so that the reports count soon)"
"$BIN_DIR/greeter-client" compare --servers "$servers" --requests "$requests" \
  --concurrency "$concurrency" --seed 7 \
  --policies 'round_robin,{"weighted_round_robin":{"blackoutPeriod":"1s"}}'

echo
echo "== The same fleet in the simulator, its backends reporting their load (--orca) =="
"$BIN_DIR/greeter-client" simulate --orca --backend 5ms,capacity=4 --backend 5ms,capacity=4 \
  --backend 5ms,capacity=1 --concurrency 18 --duration 30s \
  --policies 'round_robin,{"weighted_round_robin":{"blackoutPeriod":"1s"}},least_request'

echo
echo "== In the simulator: a third server joins at 10 s, with and without slow start =="
"$BIN_DIR/greeter-client" simulate --backend 5ms,capacity=4 --backend 5ms,capacity=4 \
  --concurrency 10 --duration 30s --event "10s add 5ms" \
  --policies '{"round_robin":{"slowStartConfig":{"slowStartWindow":"10s"}}},round_robin'
