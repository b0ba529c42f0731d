#!/usr/bin/env bash
# Azurite (Microsoft's Azure Storage emulator, npm `azurite`), blob service only,
# in memory, on a free port of 127.0.0.1. Installs into <cache-dir>/azurite once.
# Prints only `export ...` lines and SERVER_PID=<pid>; everything else goes to stderr.
# The tests create their container themselves (AzureStore::ensure_container).
# Usage: tests/servers/azurite.sh <cache-dir>
set -euo pipefail
cache=${1:?usage: azurite.sh <cache-dir>}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
dir="$cache/azurite"
# Pinned for repeatable runs; 3.37.0 asks for node >= 22 but runs on node 20.
version=3.37.0
bin="$dir/node_modules/.bin/azurite-blob"

if [ ! -x "$bin" ] || ! grep -q "\"version\": \"$version\"" "$dir/node_modules/azurite/package.json" 2>/dev/null; then
  echo "installing azurite@$version into $dir" >&2
  mkdir -p "$dir"
  # From another directory: `npm install` run inside the prefix installs nothing.
  (cd "$cache" && npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "azurite@$version") >&2
fi

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
log="$dir/azurite-$port.log"
"$bin" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
  --skipApiVersionCheck --loose --disableTelemetry >"$log" 2>&1 </dev/null &
pid=$!
disown "$pid" 2>/dev/null || true

# Any HTTP answer means it is listening.
for _ in $(seq 1 100); do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "azurite exited; log follows" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -s -o /dev/null "http://127.0.0.1:$port/" || { echo "azurite did not answer on $port" >&2; kill "$pid"; exit 1; }

echo "azurite blob service on 127.0.0.1:$port (pid $pid, log $log)" >&2
endpoint="http://127.0.0.1:$port/devstoreaccount1"
# Azurite's published dev account key (its README): not a secret.
key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
echo "export SPINOCO_TEST_AZURITE_BLOB=$endpoint"
# For tests that start an Azurite of their own (OAuth over https).
echo "export SPINOCO_TEST_AZURITE_BIN=$bin"
echo "export SPINOCO_TEST_AZURITE_DSN='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$key;BlobEndpoint=$endpoint;'"
echo "SERVER_PID=$pid"
