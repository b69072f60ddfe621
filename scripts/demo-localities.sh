#!/usr/bin/env bash
# Localities and failover with real servers: 5 greeter-servers in three zones (a: 2,
# b: 2, c: 1), and one client whose policy is a tree: priority 0 is a weighted target
# over zones a and b, 3:1; priority 1 is zone c (so 3:1:0). While calls go on, each
# with a deadline of 1 s, the script SIGKILLs zone a's servers, then zone b's, then
# restarts them all; it prints each phase's split by zone and the calls that failed.
#
#   scripts/demo-localities.sh
#
# What to see: 75/25/0 with all up; 0/100/0 with zone a down (the weighted target
# gives its share to zone b); 0/0/100 with both down (priority 0 failed: priority 1
# takes over); 75/25/0 again once they are back; and 0 failed calls throughout.
#
# Environment: BASE_PORT (default 50081), CONCURRENCY (8), PHASE (seconds per
# phase, 4), PROFILE (release; debug skips the optimised build if tests were just run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

base="${BASE_PORT:-50081}"
concurrency="${CONCURRENCY:-8}"
phase="${PHASE:-4}"
for value in "$base" "$concurrency" "$phase"; do
  if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
    echo "BASE_PORT, CONCURRENCY and PHASE are whole numbers above 0, not '$value'" >&2
    exit 2
  fi
done

echo "== Building greeter-server and greeter-client (cargo build, $PROFILE profile) =="
if [[ "$PROFILE" == release ]]; then
  cargo build --release -p greeter-server -p greeter-client
else
  cargo build -p greeter-server -p greeter-client
fi

# Its own run directory, so that its cleanup stops only what it started.
export RUN_DIR="$RUN_DIR/demo-localities"
mkdir -p "$RUN_DIR"
trap 'stop_started; "$ROOT/scripts/stop-servers.sh" >/dev/null' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Ports: zone a base, base+1; zone b base+2, base+3; zone c base+4.
a="$base"
b=$((base + 2))
c=$((base + 4))
echo
echo "== 5 servers: zone a on $a-$((a + 1)), zone b on $b-$((b + 1)), zone c on $c =="
"$ROOT/scripts/start-servers.sh" 5 "$base" | grep -v '^started' || true
servers="127.0.0.1:$a@zone-a,127.0.0.1:$((a + 1))@zone-a,127.0.0.1:$b@zone-b,127.0.0.1:$((b + 1))@zone-b,127.0.0.1:$c@zone-c#1"
tree='{"priority_experimental": {"children": {
  "p0": {"config": [{"weighted_target_experimental": {"targets": {
    "zone-a": {"weight": 3, "childPolicy": [{"round_robin": {}}]},
    "zone-b": {"weight": 1, "childPolicy": [{"round_robin": {}}]}}}}]},
  "p1": {"config": [{"round_robin": {}}]}},
  "priorities": ["p0", "p1"]}}'
echo "   --servers $servers"
echo "   --policy  $(tr -s ' \n' ' ' <<<"$tree")"

# One client for the whole run; its live view prints a line a second: calls so far,
# failed so far, and each server's calls in that second.
live="$RUN_DIR/client.log"
start_bg "$live" "$BIN_DIR/greeter-client" --servers "$servers" --policy "$tree" \
  --duration 300s --timeout 1s --concurrency "$concurrency" --seed 7 --live

# wait_second N: until the client has printed its line for second N.
wait_second() {
  local want="$1"
  for _ in $(seq 600); do
    if grep -q "^t=${want}s " "$live" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the client printed no line for t=${want}s:" >&2
  tail -5 "$live" >&2
  exit 1
}

# The last second the client has printed.
now() {
  sed -n 's/^t=\([0-9]*\)s .*/\1/p' "$live" | tail -1
}

# kill_zone PORT...: SIGKILL the servers on these ports (the ones start-servers.sh
# started, by their pid files).
kill_zone() {
  local port
  for port in "$@"; do
    kill -KILL "$(cat "$RUN_DIR/server-$port.pid")"
    rm -f "$RUN_DIR/server-$port.pid"
  done
}

# The phases: their names, first and last seconds.
names=()
firsts=()
lasts=()
mark() {
  names+=("$1")
  firsts+=("$2")
  lasts+=("$3")
}

wait_second 1
start=$(( $(now) + 1 ))
wait_second $((start + phase - 1))
mark "all up" "$start" $((start + phase - 1))

echo
echo "== SIGKILL zone a ($a, $((a + 1))) =="
kill_zone "$a" $((a + 1))
start=$(( $(now) + 2 )) # One second for the change to be seen.
wait_second $((start + phase - 1))
mark "zone a down" "$start" $((start + phase - 1))

echo "== SIGKILL zone b ($b, $((b + 1))): priority 0 has nothing left =="
kill_zone "$b" $((b + 1))
start=$(( $(now) + 2 ))
wait_second $((start + phase - 1))
mark "zones a, b down" "$start" $((start + phase - 1))

echo "== Restart zones a and b on their ports =="
for port in "$a" $((a + 1)) "$b" $((b + 1)); do
  "$ROOT/scripts/start-servers.sh" 1 "$port" | grep -v '^started' || true
done
# Back in the rotation once the client sees all five READY (reconnects back off).
for _ in $(seq 600); do
  if tail -1 "$live" | grep -q "$(printf '%s' "127.0.0.1:$a@zone-a [0-9]*/s READY")" &&
    (( $(tail -1 "$live" | grep -o ' READY' | wc -l) == 5 )); then
    break
  fi
  sleep 0.1
done
start=$(( $(now) + 2 ))
wait_second $((start + phase - 1))
mark "all back" "$start" $((start + phase - 1))
stop_started

echo
echo "== Where the calls went, phase by phase (each call's deadline: 1 s) =="
printf '%-17s %8s %8s %8s %9s %8s\n' phase zone-a zone-b zone-c calls failed
for i in "${!names[@]}"; do
  awk -v first="${firsts[$i]}" -v last="${lasts[$i]}" -v name="${names[$i]}" '
    /^t=[0-9]+s / {
      t = substr($1, 3) + 0
      split($3, f, "=")
      if (t == first - 1) failed_before = f[2] + 0
      if (t < first || t > last) next
      failed_after = f[2] + 0
      n = split($0, parts, " [|] ")
      for (i = 2; i <= n; i++) {
        split(parts[i], words, " ")
        zone = words[1]; sub(/^[^@]*@/, "", zone); sub(/#.*/, "", zone)
        rate = words[2]; sub(/\/s$/, "", rate)
        calls[zone] += rate; total += rate
      }
    }
    END {
      all = total ? total : 1
      printf "%-17s %7.1f%% %7.1f%% %7.1f%% %9d %8d\n", name,
        100 * calls["zone-a"] / all, 100 * calls["zone-b"] / all,
        100 * calls["zone-c"] / all, total, failed_after - failed_before
    }' "$live"
done
failed=$(sed -n 's/^t=[0-9]*s ok=[0-9]* failed=\([0-9]*\) .*/\1/p' "$live" | tail -1)
echo
echo "failed calls in the whole run: $failed"
if [[ "$failed" != 0 ]]; then
  echo "calls failed while failing over:" >&2
  grep -v '^t=' "$live" | tail -5 >&2
  exit 1
fi
