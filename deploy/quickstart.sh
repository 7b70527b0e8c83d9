#!/usr/bin/env bash
# Quick start: a control plane on its embedded store plus one proxy, on
# loopback. Uses TOLLGATE_MASTER_KEY / TOLLGATE_SYNC_TOKEN from the
# environment, or generates and prints them. Ctrl-C stops both.
#
#   ./deploy/quickstart.sh [--config path/to/litellm-config.yaml]
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${TOLLGATE_BIN:-./bin}
mkdir -p "$bin"
go build -o "$bin/controlplane" ./controlplane
go build -o "$bin/dataplane" ./dataplane

gen() { printf 'sk-%s' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
export TOLLGATE_MASTER_KEY=${TOLLGATE_MASTER_KEY:-$(gen)}
export TOLLGATE_SYNC_TOKEN=${TOLLGATE_SYNC_TOKEN:-$(gen)}
data=${TOLLGATE_DATA_DIR:-./tollgate-data}

"$bin/controlplane" --data-dir "$data" "$@" &
cp_pid=$!
trap 'kill $cp_pid ${dp_pid:-} 2>/dev/null; wait' EXIT INT TERM
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:8080/health >/dev/null 2>&1 && break
  kill -0 $cp_pid 2>/dev/null || { echo "control plane failed to start" >&2; exit 1; }
  sleep 0.1
done
"$bin/dataplane" --cache "$data/proxy.db" &
dp_pid=$!

cat <<MSG

Tollgate is running.
  management API  http://127.0.0.1:8080   (REST, LiteLLM paths)   gRPC 127.0.0.1:50051
  proxy           http://127.0.0.1:4000   (OpenAI-compatible)
  master key      $TOLLGATE_MASTER_KEY
  sync token      $TOLLGATE_SYNC_TOKEN

Try:
  curl -s http://127.0.0.1:8080/key/generate -H "Authorization: Bearer $TOLLGATE_MASTER_KEY" \\
       -H 'Content-Type: application/json' -d '{"models": ["gpt-4o-mini"], "duration": "30d"}'

MSG
wait
