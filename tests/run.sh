#!/usr/bin/env bash
# The full test suite: installs and starts the storage servers the tests need
# (into .cache/ inside the repo), then runs every test against them (dev profile:
# the release profile's LTO would re-link every test binary for minutes).
# Usage: tests/run.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p .cache

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Each tests/servers/NAME.sh installs its server if needed, starts it on 127.0.0.1,
# and prints `export VAR=value` lines plus `SERVER_PID=<pid>`.
for script in tests/servers/*.sh; do
  [ -e "$script" ] || continue
  name=$(basename "$script" .sh)
  echo "== starting $name test server"
  out=$(bash "$script" "$root/.cache")
  eval "$out"
  pids+=("${SERVER_PID:-}")
  unset SERVER_PID
done

export SPINOCO_TEST_REQUIRE_SERVERS=1
echo "== testing"
# The reliability tests append figure lines here (README "Reliability").
rm -f target/tmp/reliability-tally.txt
cargo test --locked --no-fail-fast "$@"
if [ -s target/tmp/reliability-tally.txt ]; then
  echo "== reliability figures"
  sort target/tmp/reliability-tally.txt
fi
