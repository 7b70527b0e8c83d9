#!/usr/bin/env bash
# The deployment topology as processes on this machine: one control plane (Postgres when DB is
# set, else the embedded store) and N proxies on consecutive ports. For demos and for the
# acceptance and benchmark suites. Ctrl-C (or SIGTERM) stops everything; proxies get SIGTERM
# first so they drain and ship their spend outbox.
#
#   ./deploy/local/run.sh                                   # embedded store, 3 proxies on :4000-4002
#   DB=postgres://postgres@127.0.0.1:5432/tollgate N=5 ./deploy/local/run.sh --config cfg.yaml
#
# Environment (all optional):
#   DB                 Postgres URL (empty: embedded store under $DATA)
#   N                  number of proxies (default 3)
#   PROXY_PORT         first proxy port (default 4000); proxy i listens on PROXY_PORT+i
#   HTTP_ADDR          control plane REST (default 127.0.0.1:8080)
#   GRPC_ADDR          control plane gRPC (default 127.0.0.1:50051)
#   DATA               state directory (default ./tollgate-data/local, git-ignored); proxy caches in $DATA/proxy-<i>
#   TOLLGATE_MASTER_KEY, TOLLGATE_SYNC_TOKEN   generated and printed when unset
#   TOLLGATE_BIN       where binaries are built (default ./bin); NO_BUILD=1 uses them as they are
#   LOG_DIR            per-process logs (default $DATA/logs); LOG_LEVEL (default info)
# Arguments are passed to the control plane (e.g. --config path/to/litellm-config.yaml).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-3}
PROXY_PORT=${PROXY_PORT:-4000}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
GRPC_ADDR=${GRPC_ADDR:-127.0.0.1:50051}
DATA=${DATA:-./tollgate-data/local}
LOG_DIR=${LOG_DIR:-$DATA/logs}
LOG_LEVEL=${LOG_LEVEL:-info}
bin=${TOLLGATE_BIN:-./bin}

case $N in ''|*[!0-9]*) echo "N must be a number" >&2; exit 2;; esac
mkdir -p "$bin" "$DATA" "$LOG_DIR"
if [ -z "${NO_BUILD:-}" ]; then
  go build -o "$bin/controlplane" ./controlplane
  go build -o "$bin/dataplane" ./dataplane
fi

gen() { printf 'sk-%s' "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
export TOLLGATE_MASTER_KEY=${TOLLGATE_MASTER_KEY:-$(gen)}
export TOLLGATE_SYNC_TOKEN=${TOLLGATE_SYNC_TOKEN:-$(gen)}

pids=()
cp_pid=
stop() {
  trap - EXIT INT TERM
  # Proxies first (they ship their spend outbox to the control plane on SIGTERM), then the
  # control plane.
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$cp_pid" ]; then kill -TERM "$cp_pid" 2>/dev/null || true; wait "$cp_pid" 2>/dev/null || true; fi
  echo "stopped; logs in $LOG_DIR" >&2
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

store="embedded store in $DATA/controlplane"
cp_args=(--http-addr "$HTTP_ADDR" --grpc-addr "$GRPC_ADDR" --log-level "$LOG_LEVEL")
if [ -n "${DB:-}" ]; then
  cp_args+=(--database-url "$DB")
  store="Postgres ($(printf '%s' "${DB%%\?*}" | sed -E 's#//[^@/]*@#//***@#'))"
else
  cp_args+=(--data-dir "$DATA/controlplane")
fi
# Unset, so a DB from the caller's environment only applies through $DB.
env -u TOLLGATE_DATABASE_URL "$bin/controlplane" "${cp_args[@]}" "$@" >"$LOG_DIR/controlplane.log" 2>&1 &
cp_pid=$!

for _ in $(seq 300); do
  curl -fsS "http://$HTTP_ADDR/health" >/dev/null 2>&1 && break
  if ! kill -0 "$cp_pid" 2>/dev/null; then
    echo "control plane failed to start:" >&2; tail -20 "$LOG_DIR/controlplane.log" >&2; exit 1
  fi
  sleep 0.1
done
curl -fsS "http://$HTTP_ADDR/health" >/dev/null || { echo "control plane not healthy" >&2; exit 1; }

urls=()
for ((i = 0; i < N; i++)); do
  port=$((PROXY_PORT + i))
  mkdir -p "$DATA/proxy-$i"
  "$bin/dataplane" --listen "127.0.0.1:$port" --control-plane "$GRPC_ADDR" \
    --cache "$DATA/proxy-$i/proxy.db" --id "local-proxy-$i" --log-level "$LOG_LEVEL" \
    >"$LOG_DIR/proxy-$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done

# Wait until every proxy holds a snapshot.
for ((i = 0; i < N; i++)); do
  ok=
  for _ in $(seq 300); do
    if curl -fsS "${urls[$i]}/health/readiness" >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "${pids[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    echo "proxy $i (${urls[$i]}) is not ready:" >&2; tail -20 "$LOG_DIR/proxy-$i.log" >&2; exit 1
  fi
done

cat <<MSG

Tollgate (local topology) is running: 1 control plane on the $store, $N proxies.
  management API  http://$HTTP_ADDR   (REST, LiteLLM paths)   gRPC $GRPC_ADDR
$(for ((i = 0; i < N; i++)); do printf '  proxy %-9s %s\n' "$i" "${urls[$i]}"; done)
  master key      $TOLLGATE_MASTER_KEY
  sync token      $TOLLGATE_SYNC_TOKEN
  logs            $LOG_DIR
PROXY_URLS=${urls[*]}

Try:
  curl -s http://$HTTP_ADDR/key/generate -H "Authorization: Bearer $TOLLGATE_MASTER_KEY" \\
       -H 'Content-Type: application/json' -d '{"duration": "1d"}'
  curl -s ${urls[0]}/v1/models -H "Authorization: Bearer <the key>"

Ctrl-C stops everything.
MSG
# Stay up until interrupted or until a process dies.
while :; do
  for p in "$cp_pid" "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then echo "process $p exited; stopping" >&2; exit 1; fi
  done
  sleep 1
done
