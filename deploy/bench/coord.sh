#!/usr/bin/env bash
# Coordination load: 3 control-plane replicas on one Postgres (DB=postgres://...,
# required; a fresh database is best: migrations run at start) and 1,000
# simulated proxies (deploy/bench/coordload, one process) spread over them,
# each reporting its lease use every 200 ms and asking for more as a real
# proxy does. Prints the membership-change and grant latencies, rpm accuracy
# with one limit spread over every proxy, Postgres transactions/s at two
# request rates, and each replica's CPU time and resident memory.
#   PROXIES=1000 LIMIT=2000 RATE=50 RATE2=200 PHASE=20s DB=postgres://... deploy/bench/coord.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -n "${DB:-}" ]] || { echo "DB=postgres://... is required" >&2; exit 2; }
mkdir -p bin
go build -o bin/controlplane ./controlplane
go build -o bin/coordload ./deploy/bench/coordload
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
MK=sk-bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
TOK=sk-sync-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
addrs=()
for i in 0 1 2; do
  http=127.0.0.1:$((18190 + 2 * i)) grpc=127.0.0.1:$((18191 + 2 * i))
  TOLLGATE_MASTER_KEY=$MK bin/controlplane --database-url "$DB" --http-addr "$http" --grpc-addr "$grpc" --sync-token "$TOK" --log-level warn &
  pids+=($!)
  addrs+=("$grpc")
  for _ in $(seq 100); do curl -sf "http://$http/health" >/dev/null && break; sleep 0.1; done
done
cpu() { # CPU seconds and RSS (MiB) of each replica
  for p in "${pids[@]}"; do
    read -r ut st < <(awk '{print $14, $15}' "/proc/$p/stat")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status")
    echo "$p $(( (ut + st) )) $rss"
  done
}
tck=$(getconf CLK_TCK)
cpu >"$tmp/before"
t0=$(date +%s.%N)
bin/coordload -cp "$(IFS=,; echo "${addrs[*]}")" -sync-token "$TOK" -db "$DB" \
  -proxies "${PROXIES:-1000}" -limit "${LIMIT:-2000}" -rate "${RATE:-50}" -rate2 "${RATE2:-200}" -phase "${PHASE:-20s}"
t1=$(date +%s.%N)
cpu >"$tmp/after"
echo "per replica over the run ($(echo "$t1 - $t0" | bc) s):"
join "$tmp/before" "$tmp/after" | while read -r pid b0 r0 b1 r1; do
  echo "  pid $pid: CPU $(echo "scale=2; ($b1 - $b0) / $tck" | bc) s, RSS $((r1 / 1024)) MiB"
done
