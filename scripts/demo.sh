#!/usr/bin/env bash
# The whole tutorial in one command: builds the two programs, starts 3 greeter-servers (the
# third one 20 ms slower), sends the same load with each of the article's policies,
# prints a table per policy, compares every policy side by side, and always stops its
# servers, on success, failure or Ctrl-C.
#
#   scripts/demo.sh
#
# Environment: BASE_PORT (default 50051), REQUESTS (300), CONCURRENCY (8),
# PROFILE (release; debug skips the optimised build if tests were just run),
# CARGO_TARGET_DIR (wherever cargo builds; the binaries are looked for there),
# TLS=1 (the same over mutual TLS, with throwaway certificates made for the run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${BASE_PORT:-50051}"
requests="${REQUESTS:-300}"
concurrency="${CONCURRENCY:-8}"

echo "== Building greeter-server and greeter-client (cargo build, $PROFILE profile) =="
if [[ "$PROFILE" == release ]]; then
  cargo build --release -p greeter-server -p greeter-client
else
  cargo build -p greeter-server -p greeter-client
fi

# Its own run directory, so that its cleanup stops only the servers it started.
export RUN_DIR="$RUN_DIR/demo"
trap '"$ROOT/scripts/stop-servers.sh"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "${TLS:-0}" == 1 ]]; then
  echo
  echo "== TLS=1: a throwaway CA and certificates; every connection is mutual TLS =="
  export TLS CERT_DIR="$RUN_DIR/certs"
  "$ROOT/scripts/gen-certs.sh" "$CERT_DIR"
  source "$ROOT/scripts/common.sh" # again, for the TLS flags with this CERT_DIR
fi

echo "(binaries in $BIN_DIR)"

echo
echo "== Starting 3 servers; the third adds 20 ms to every call =="
SLOW_LAST=20ms "$ROOT/scripts/start-servers.sh" 3 "$base"
servers="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"

explain() {
  case "$1" in
    pick_first) echo "pick_first: no balancing. Every call goes to the first server." ;;
    round_robin) echo "round_robin (轮询): in turn. Exactly a third each, the slow server too." ;;
    random) echo "random (随机): about a third each; the exact split changes from run to run." ;;
    least_connections) echo "least_connections (最少连接): the slow server keeps its calls longer, so it gets fewer." ;;
  esac
}

for policy in pick_first round_robin random least_connections; do
  echo
  echo "== $(explain "$policy")"
  echo "\$ greeter-client --servers $servers --policy $policy --requests $requests --concurrency $concurrency ${TLS_CLIENT_ARGS[*]:-}"
  "$BIN_DIR/greeter-client" --servers "$servers" --policy "$policy" \
    --requests "$requests" --concurrency "$concurrency" ${TLS_CLIENT_ARGS[@]+"${TLS_CLIENT_ARGS[@]}"}
done

echo
echo "== Every policy on the same calls, side by side (Jain = fairness: 1.000 is an even split) =="
echo "\$ greeter-client compare --servers $servers --requests $requests --concurrency $concurrency --keys 100 ${TLS_CLIENT_ARGS[*]:-}"
"$BIN_DIR/greeter-client" compare --servers "$servers" \
  --requests "$requests" --concurrency "$concurrency" --keys 100 ${TLS_CLIENT_ARGS[@]+"${TLS_CLIENT_ARGS[@]}"}

echo
echo "== Done. Stopping the servers. =="
