#!/usr/bin/env bash
# What one call costs the client, in instructions (valgrind's callgrind), for each
# client variant of bench/examples/call_cost.rs: N calls, then 2N, and the difference
# divided by N, so that start-up (the runtime, connecting) is taken out.
#
#   scripts/call-cost.sh                      # direct and balancer, concurrency 16 and 1
#   VARIANTS="direct bare" CONCURRENCY="16" CALLS=4000 scripts/call-cost.sh
#
# Instructions, unlike seconds, do not move with the rest of the machine: two runs of
# the same binary agree within about 1 %. Needs valgrind (on every machine here).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANTS="${VARIANTS:-direct balancer}"
CONCURRENCY="${CONCURRENCY:-16 1}"
CALLS="${CALLS:-2000}"
OUT="${OUT:-.run/call-cost}"

if ! command -v valgrind >/dev/null; then
  echo "call-cost: valgrind is needed (Debian: apt-get install valgrind)" >&2
  exit 1
fi
case "$CALLS" in
  '' | *[!0-9]*) echo "call-cost: CALLS must be a number of calls, not \`$CALLS\`" >&2; exit 2 ;;
esac

cargo build --release --quiet -p greeter-server --bin greeter-server
cargo build --release --quiet -p lb-bench --example call_cost
mkdir -p "$OUT"

target/release/greeter-server --port 0 >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
# The server prints its real address once it listens.
addr=""
for _ in $(seq 1 100); do
  addr="$(grep -o '127\.0\.0\.1:[0-9]*' "$OUT/server.log" | head -1 || true)"
  [ -n "$addr" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "call-cost: greeter-server exited: $(cat "$OUT/server.log")" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "call-cost: greeter-server printed no address in 10 s ($OUT/server.log)" >&2
  exit 1
fi

# Instructions of one run of the example.
count() {
  local variant=$1 concurrency=$2 calls=$3 file="$OUT/cg.$1.$2.$3"
  valgrind --tool=callgrind --callgrind-out-file="$file" \
    target/release/examples/call_cost "$addr" "$variant" "$concurrency" "$calls" \
    2>"$file.log" >/dev/null
  sed -n 's/^==[0-9]*== Collected : \([0-9]*\).*/\1/p' "$file.log"
}

printf '%-12s %12s %18s\n' variant concurrency "instructions/call"
for concurrency in $CONCURRENCY; do
  for variant in $VARIANTS; do
    one=$(count "$variant" "$concurrency" "$CALLS")
    two=$(count "$variant" "$concurrency" $((CALLS * 2)))
    printf '%-12s %12s %18s\n' "$variant" "$concurrency" $(((two - one) / CALLS))
  done
done
echo "callgrind files in $OUT (callgrind_annotate one against another shows where)"
