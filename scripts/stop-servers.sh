#!/usr/bin/env bash
# Stops the servers that scripts/start-servers.sh started: exactly the pids in
# $RUN_DIR/server-*.pid (default .run/), first with SIGTERM (graceful: calls in flight
# finish), then, after 5 s, with SIGKILL.
#
#   scripts/stop-servers.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

shopt -s nullglob
for pidfile in "$RUN_DIR"/server-*.pid; do
  pid="$(cat "$pidfile")"
  # Only signal the process if it is still one of our servers: a pid can be reused.
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && ps -p "$pid" -o command= 2>/dev/null | grep -q greeter-server; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "pid $pid did not stop after SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped greeter-server pid $pid"
  fi
  rm -f "$pidfile"
done
