#!/usr/bin/env bash
# S3 test server: s3s-fs (crates.io), an S3 server over a folder that checks SigV4
# signatures (a wrong secret gets 403 SignatureDoesNotMatch).
# Usage: tests/servers/s3.sh <cache-dir>
# Installs into <cache-dir>/s3s-fs if not there yet (~2.5 min), starts it on a free port
# of 127.0.0.1 with a fresh data folder, creates the test bucket, and prints only shell
# lines: `export SPINOCO_TEST_S3_...=...` and `SERVER_PID=<pid>`.
# 0.14.1 is the newest s3s-fs that builds with the machine's rustc (1.95).
set -euo pipefail
cache=$(mkdir -p "$1" && cd "$1" && pwd)
dir="$cache/s3s-fs"
bin="$dir/bin/s3s-fs"
log() { echo "s3.sh: $*" >&2; }

if [ ! -x "$bin" ]; then
  log "installing s3s-fs 0.14.1 into $dir (takes a few minutes)"
  cargo install s3s-fs --version 0.14.1 --locked --features binary --root "$dir" >&2
fi

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
data="$dir/data-$port"
# Data folders of earlier runs (their servers were stopped by PID) are swept after a day.
find "$dir" -maxdepth 1 -name 'data-*' -type d -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$data"
mkdir -p "$data"
access_key="spinoco-test-ak"
secret_key="spinoco-test-secret-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
bucket="spinoco-test"

nohup "$bin" --host 127.0.0.1 --port "$port" --access-key "$access_key" --secret-key "$secret_key" \
  "$data" >"$dir/server-$port.log" 2>&1 </dev/null &
pid=$!
disown "$pid" 2>/dev/null || true

for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then
    log "s3s-fs exited; see $dir/server-$port.log"
    exit 1
  fi
  sleep 0.1
done

# s3s-fs maps a bucket to a folder of its data dir: creating the folder creates the bucket.
mkdir -p "$data/$bucket"

echo "export SPINOCO_TEST_S3_ENDPOINT=http://127.0.0.1:$port"
echo "export SPINOCO_TEST_S3_BUCKET=$bucket"
echo "export SPINOCO_TEST_S3_ACCESS_KEY=$access_key"
echo "export SPINOCO_TEST_S3_SECRET_KEY=$secret_key"
echo "export SPINOCO_TEST_S3_DATA_DIR=$data"
echo "export SPINOCO_TEST_S3_BIN=$bin"
echo "SERVER_PID=$pid"
