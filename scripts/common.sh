# Shared settings for the scripts; sourced, not run.
#   PROFILE   cargo profile whose binaries to use: release (default) or debug
#   RUN_DIR   where pid and log files go (default: .run in the repository)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-release}"
case "$PROFILE" in
  release) BIN_DIR="$ROOT/target/release" ;;
  debug | dev) BIN_DIR="$ROOT/target/debug" ;;
  *) echo "PROFILE must be release or debug, not '$PROFILE'" >&2; exit 2 ;;
esac
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
