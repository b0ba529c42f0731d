#!/usr/bin/env bash
# The full test suite: installs and starts the storage servers the tests need
# (into .cache/ inside the repo), then runs every test against them (dev profile:
# the release profile's LTO would make every link take minutes).
# Usage: tests/run.sh [extra cargo test arguments], e.g. `tests/run.sh --test it
# store::s3` for one family of the integration binary (tests/it/), without clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p .cache

# The tools of the ops tests (tests/it/ops/: the image, compose, Kubernetes manifests,
# Prometheus rules): podman with runc (crun fails on hybrid cgroups), podman-compose,
# promtool (the prometheus package) from apt, and kubernetes-validate from PyPI in a
# venv. Installed only when missing; without them those tests fail here
# (SPINOCO_TEST_REQUIRE_SERVERS=1).
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have podman || missing+=(podman)
have runc || missing+=(runc)
have podman-compose || missing+=(podman-compose)
have promtool || missing+=(prometheus)
have systemd-analyze || missing+=(systemd)   # tests/it/ops/systemd.rs: verify and security of deploy/systemd
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "== installing ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      echo "warning: apt-get install ${missing[*]} failed; the ops tests will fail" >&2
    fi
  else
    echo "warning: ${missing[*]} missing (installing needs root and apt-get); the ops tests will fail" >&2
  fi
fi
kv=.cache/kubernetes-validate/venv
if [ ! -x "$kv/bin/kubernetes-validate" ]; then
  echo "== installing kubernetes-validate into $kv"
  rm -rf "$kv"
  if ! { python3 -m venv "$kv" && "$kv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate; }; then
    echo "warning: installing kubernetes-validate failed; the ops tests will fail" >&2
  fi
fi

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

if [ $# -eq 0 ]; then
  # clippy.toml forbids rust-s3's own sending methods: every S3 request must go through
  # the shared agent (src/store/client). Only on the full run.
  echo "== clippy"
  cargo clippy --locked --all-targets -- -D warnings
fi

# Every test must run: a missing server or tool fails it (tests/common/skip.rs).
export SPINOCO_TEST_REQUIRE_SERVERS=1
echo "== testing"
# The reliability tests append figure lines here (README "Reliability").
rm -f target/tmp/reliability-tally.txt
cargo test --locked --no-fail-fast "$@"
if [ -s target/tmp/reliability-tally.txt ]; then
  echo "== reliability figures"
  sort target/tmp/reliability-tally.txt
fi
