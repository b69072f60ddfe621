#!/usr/bin/env bash
# Writes a throwaway CA and certificates for trying TLS and mutual TLS on this machine:
#
#   scripts/gen-certs.sh [DIR=certs]
#
#   DIR/ca.pem                    the demo CA (its key is never written)
#   DIR/server.pem, server.key    for localhost, 127.0.0.1 and ::1
#   DIR/client.pem, client.key    a client certificate, for mutual TLS
#
# Made by greeter-certs (rcgen), so no openssl is needed. New keys on every run; for
# loopback experiments only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

dir="${1:-certs}"
if [[ ! -x "$BIN_DIR/greeter-certs" ]]; then
  if [[ "$PROFILE" == release ]]; then
    (cd "$ROOT" && cargo build --release -q -p greeter-server --bin greeter-certs)
  else
    (cd "$ROOT" && cargo build -q -p greeter-server --bin greeter-certs)
  fi
fi
"$BIN_DIR/greeter-certs" --out "$dir"
