#!/usr/bin/env bash
# The playground: builds greeter-server and greeter-client, and starts
# `greeter-client playground`: 3 greeter-servers on 127.0.0.1, a balancer with steady
# load, and a page at http://127.0.0.1:8080/ to watch and drive them. Ctrl-C stops it
# and every server it started.
#
#   scripts/playground.sh                                  # 3 servers, round_robin
#   scripts/playground.sh --fleet 5 --policy least_request # any `playground` flag
#   scripts/playground.sh --listen 127.0.0.1:9000          # another port
#
# Environment: PROFILE (release; debug skips the optimised build if tests were just
# run), CARGO_TARGET_DIR (wherever cargo builds; the binaries are looked for there).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

echo "== Building greeter-server and greeter-client (cargo build, $PROFILE profile) =="
if [[ "$PROFILE" == release ]]; then
  cargo build --release -p greeter-server -p greeter-client
else
  cargo build -p greeter-server -p greeter-client
fi

# The greeter-server just built, unless the flags name another.
server_bin=(--server-bin "$BIN_DIR/greeter-server")
for arg in "$@"; do
  case "$arg" in --server-bin | --server-bin=*) server_bin=() ;; esac
done
# exec: Ctrl-C goes straight to the playground, which stops its servers itself.
exec "$BIN_DIR/greeter-client" playground "${server_bin[@]}" "$@"
