#!/usr/bin/env bash
# Starts N greeter-servers in the background on BASE_PORT, BASE_PORT+1, ... and waits
# until each answers its health check with SERVING.
#
#   scripts/start-servers.sh [N=3] [BASE_PORT=50051]
#
# Each server's pid and log go to $RUN_DIR/server-PORT.pid and .log (default .run/);
# scripts/stop-servers.sh stops exactly those processes. Environment:
#   SLOW_LAST=20ms   give the last server this much added latency per call
#   CAPACITIES=4,4,1 machines of different sizes: server i works on at most the i-th
#                    number of calls at once (--capacity), the rest queue
#   SERVER_ARGS="--error-rate 0.1"   extra flags for every server
#   PROFILE=debug    use target/debug instead of target/release (build first)
#   TLS=1            serve mutual TLS with the certificates in CERT_DIR (see gen-certs.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

count="${1:-3}"
base="${2:-50051}"
if ! [[ "$count" =~ ^[1-9][0-9]*$ && "$base" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [N] [BASE_PORT]   (whole numbers, e.g. $0 3 50051)" >&2
  exit 2
fi
if (( base + count - 1 > 65535 )); then
  echo "ports $base..$((base + count - 1)) go past 65535" >&2
  exit 2
fi
for binary in greeter-server greeter-client; do
  if [[ ! -x "$BIN_DIR/$binary" ]]; then
    build="cargo build"
    [[ "$PROFILE" == release ]] && build="cargo build --release"
    echo "$BIN_DIR/$binary not found: run '$build' first" >&2
    exit 1
  fi
done
mkdir -p "$RUN_DIR"

capacities=()
if [[ -n "${CAPACITIES:-}" ]]; then
  IFS=, read -r -a capacities <<<"$CAPACITIES"
  if ((${#capacities[@]} != count)); then
    echo "CAPACITIES=$CAPACITIES has ${#capacities[@]} numbers for $count servers: give one per server" >&2
    exit 2
  fi
  for capacity in "${capacities[@]}"; do
    if ! [[ "$capacity" =~ ^[1-9][0-9]*$ ]]; then
      echo "CAPACITIES=$CAPACITIES: '$capacity' is not a whole number of calls, 1 or more" >&2
      exit 2
    fi
  done
fi

servers=()
for ((i = 0; i < count; i++)); do
  port=$((base + i))
  pidfile="$RUN_DIR/server-$port.pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "a server started earlier is still running on port $port (pid $(cat "$pidfile")):" >&2
    echo "run scripts/stop-servers.sh first" >&2
    exit 1
  fi
  args=(--port "$port")
  if [[ -n "${SLOW_LAST:-}" && $i -eq $((count - 1)) ]]; then
    args+=(--latency "$SLOW_LAST")
  fi
  if ((${#capacities[@]})); then
    args+=(--capacity "${capacities[$i]}")
  fi
  # shellcheck disable=SC2206 # SERVER_ARGS is meant to split into flags.
  args+=(${SERVER_ARGS:-} ${TLS_SERVER_ARGS[@]+"${TLS_SERVER_ARGS[@]}"})
  # RUST_LOG=info: the "serving" line below is how we know the port is ours.
  RUST_LOG=info "$BIN_DIR/greeter-server" "${args[@]}" >"$RUN_DIR/server-$port.log" 2>&1 &
  echo $! >"$pidfile"
  servers+=("127.0.0.1:$port")
  echo "started greeter-server ${args[*]} (pid $!, log $RUN_DIR/server-$port.log)"
done

# First make sure each server is ours: it either logs that it is serving (its port is
# bound) or exits (say, the port was busy). A health check alone could be answered by
# some other process that already holds the port.
failed=0
for ((i = 0; i < count; i++)); do
  port=$((base + i))
  pid="$(cat "$RUN_DIR/server-$port.pid")"
  for _ in $(seq 100); do
    grep -q "serving example.MyService" "$RUN_DIR/server-$port.log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "serving example.MyService" "$RUN_DIR/server-$port.log"; then
    echo "greeter-server on port $port did not start:" >&2
    sed 's/^/    /' "$RUN_DIR/server-$port.log" >&2
    failed=1
  fi
done
if ((failed)); then
  "$(dirname "${BASH_SOURCE[0]}")/stop-servers.sh"
  exit 1
fi

# Then wait until every one answers grpc.health.v1.Health with SERVING.
list="$(IFS=,; echo "${servers[*]}")"
if ! "$BIN_DIR/greeter-client" health --servers "$list" ${TLS_CLIENT_ARGS[@]+"${TLS_CLIENT_ARGS[@]}"} --wait 10s; then
  "$(dirname "${BASH_SOURCE[0]}")/stop-servers.sh"
  exit 1
fi
