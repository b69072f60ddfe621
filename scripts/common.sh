# Shared settings for the scripts; sourced, not run.
#   PROFILE   cargo profile whose binaries to use: release (default) or debug
#   RUN_DIR   where pid and log files go (default: .run in the repository)
#   TLS       1: mutual TLS everywhere, with the certificates in CERT_DIR
#   CERT_DIR  the demo certificates (default: $RUN_DIR/certs)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-release}"
# Where cargo puts what it builds: ./target, unless CARGO_TARGET_DIR (or a
# build.target-dir in a cargo config) says otherwise. cargo metadata knows.
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
TARGET_DIR="${TARGET_DIR:-$ROOT/target}"
case "$PROFILE" in
  release) BIN_DIR="$TARGET_DIR/release" ;;
  debug | dev) BIN_DIR="$TARGET_DIR/debug" ;;
  *) echo "PROFILE must be release or debug, not '$PROFILE'" >&2; exit 2 ;;
esac
RUN_DIR="${RUN_DIR:-$ROOT/.run}"

# TLS=1: servers serve mutual TLS with the demo certificates in CERT_DIR (written by
# scripts/gen-certs.sh), and clients trust that CA and show their own certificate.
CERT_DIR="${CERT_DIR:-$RUN_DIR/certs}"
TLS_SERVER_ARGS=()
TLS_CLIENT_ARGS=()
case "${TLS:-0}" in
  1)
    TLS_SERVER_ARGS=(--tls-cert "$CERT_DIR/server.pem" --tls-key "$CERT_DIR/server.key" --ca "$CERT_DIR/ca.pem")
    TLS_CLIENT_ARGS=(--ca "$CERT_DIR/ca.pem" --tls-cert "$CERT_DIR/client.pem" --tls-key "$CERT_DIR/client.key")
    ;;
  0) ;;
  *) echo "TLS must be 0 or 1, not '$TLS'" >&2; exit 2 ;;
esac

# Processes a script starts in the background (start_bg), stopped by stop_started,
# which scripts set as (part of) their EXIT trap. Only these pids are ever signalled.
STARTED_PIDS=()

# start_bg LOG COMMAND...: runs COMMAND in the background, its output to LOG.
start_bg() {
  local log="$1"
  shift
  "$@" >"$log" 2>&1 &
  STARTED_PIDS+=("$!")
}

# stop_started: SIGTERM to every process start_bg started, then waits for each.
stop_started() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STARTED_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# wait_for_log LOG TEXT [COUNT]: until LOG has COUNT lines with TEXT (default 1), for
# 30 s at most; then prints the end of the log and exits 1.
wait_for_log() {
  local log="$1" text="$2" count="${3:-1}"
  for _ in $(seq 300); do
    if [[ -f "$log" ]] && (($(grep -c -- "$text" "$log" || true) >= count)); then
      return 0
    fi
    sleep 0.1
  done
  echo "not ready after 30 s: $log" >&2
  tail -20 "$log" | sed 's/^/    /' >&2
  exit 1
}
