#!/usr/bin/env bash
# Fuzzes what grpc-lb-rs reads from users and from the network, each target for a
# bounded time (libFuzzer, through cargo-fuzz, on a nightly toolchain):
#
#   targets         --servers targets, endpoint lists and endpoints files
#   service_config  --policy names and gRPC service-config JSON
#   proxy_request   any path, headers and body sent through lb-proxy to a real server
#
#   scripts/fuzz.sh                   # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh proxy_request
#
# Local only (not in CI): it needs a nightly toolchain and builds everything again with
# coverage instrumentation. Installs cargo-fuzz if it is missing. A crash stops the run
# with exit 1 and leaves its input in fuzz/artifacts/TARGET/; once fixed, it becomes a
# regression test (the first one found: a request without a path, now
# lb-proxy/tests/proxy.rs::a_request_without_a_path_is_refused_and_breaks_nothing).
# Corpora grow in fuzz/corpus/ (ignored by git), seeded from fuzz/seeds/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

seconds="${FUZZ_SECONDS:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2
  exit 2
fi
all=(targets service_config proxy_request)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
for target in "${targets[@]}"; do
  if [[ ! " ${all[*]} " =~ " $target " ]]; then
    echo "unknown fuzz target '$target'; the targets are: ${all[*]}" >&2
    exit 2
  fi
done
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for target in "${targets[@]}"; do
  echo "== $target: ${seconds} s"
  mkdir -p "corpus/$target"
  seeds=()
  [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
  log="corpus/$target.log"
  # -rss_limit_mb: the proxy target keeps a server and a runtime; the others are small.
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" ${seeds[@]+"${seeds[@]}"} -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=60 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  if ((status != 0)); then
    tail -40 "$log" >&2
    echo "$target: the fuzzer stopped with exit code $status (a crash or hang leaves" \
      "its input in fuzz/artifacts/$target/; whole log: fuzz/$log)" >&2
    exit 1
  fi
done
echo "fuzz: every target ran ${seconds} s without a crash"
