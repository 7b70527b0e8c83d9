#!/usr/bin/env bash
# Propagation benchmark: a control plane (embedded store, or Postgres when
# DB=postgres://... is set) and three proxies on loopback; 200 key blocks,
# each timed from the REST call returning to the key being refused on all
# three proxies. With DB set and REPLICAS=2, a second control plane runs on
# the same database: the proxies sync from the second replica while the
# revocations are made through the first.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-200}
mkdir -p bin
go build -o bin/controlplane ./controlplane
go build -o bin/dataplane ./dataplane
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
MK=sk-bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
TOK=sk-sync-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
store=(--data-dir "$tmp/cp")
[[ -n "${DB:-}" ]] && store=(--database-url "$DB")
TOLLGATE_MASTER_KEY=$MK bin/controlplane "${store[@]}" --http-addr 127.0.0.1:18090 --grpc-addr 127.0.0.1:18091 --sync-token "$TOK" --log-level warn &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:18090/health >/dev/null && break; sleep 0.1; done
SYNC=127.0.0.1:18091
if [[ "${REPLICAS:-1}" == 2 ]]; then
  [[ -n "${DB:-}" ]] || { echo "REPLICAS=2 needs DB=postgres://..." >&2; exit 2; }
  TOLLGATE_MASTER_KEY=$MK bin/controlplane "${store[@]}" --http-addr 127.0.0.1:18092 --grpc-addr 127.0.0.1:18093 --sync-token "$TOK" --log-level warn &
  pids+=($!)
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18092/health >/dev/null && break; sleep 0.1; done
  SYNC=127.0.0.1:18093
  echo "proxies sync from the second replica (:18093); revocations go through the first (:18090)"
fi
urls=()
for i in 1 2 3; do
  bin/dataplane --listen 127.0.0.1:1810$i --control-plane "$SYNC" --sync-token "$TOK" --cache "$tmp/p$i.db" --id "bench-$i" --log-level warn &
  pids+=($!)
  urls+=("http://127.0.0.1:1810$i")
done
for u in "${urls[@]}"; do
  for _ in $(seq 100); do curl -sf "$u/health/readiness" >/dev/null && break; sleep 0.1; done
done
go run ./deploy/bench/propagation -cp http://127.0.0.1:18090 -master-key "$MK" -proxies "$(IFS=,; echo "${urls[*]}")" -n "$N"
