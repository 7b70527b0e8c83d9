#!/usr/bin/env bash
# Measures /key/generate throughput (16 clients) and /key/info latency over
# REST against Postgres, with pgbench's simple-update TPS beside it as the
# ceiling of this machine's Postgres.
#
#   deploy/bench/keygen.sh            # uses postgres://postgres@127.0.0.1:5432
#   DB=postgres://... deploy/bench/keygen.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${DB:-postgres://postgres@127.0.0.1:5432}
DBNAME=tollgate_bench_$$
C=${C:-16}
DUR=${DUR:-20s}
psql "$BASE/postgres" -qc "CREATE DATABASE $DBNAME" >/dev/null
PGB=tollgate_pgbench_$$
psql "$BASE/postgres" -qc "CREATE DATABASE $PGB" >/dev/null
cleanup() {
  [[ -n "${CP:-}" ]] && kill "$CP" 2>/dev/null && wait "$CP" 2>/dev/null || true
  psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS $DBNAME WITH (FORCE)" >/dev/null || true
  psql "$BASE/postgres" -qc "DROP DATABASE IF EXISTS $PGB WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT

echo "== pgbench simple-update (the ceiling): pgbench -c $C -j 2 -T 10 -N"
pgbench -q -i -s 10 "$BASE/$PGB" >/dev/null 2>&1
pgbench -c "$C" -j 2 -T 10 -N "$BASE/$PGB" 2>/dev/null | grep -E "^tps|latency average"

mkdir -p bin
go build -o bin/controlplane ./controlplane
MK=sk-bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
ADDR=127.0.0.1:18080
TOLLGATE_MASTER_KEY=$MK bin/controlplane --database-url "$BASE/$DBNAME?sslmode=disable" --http-addr $ADDR --grpc-addr 127.0.0.1:18051 --sync-token sk-bench-sync --log-level warn &
CP=$!
for _ in $(seq 100); do curl -sf http://$ADDR/health >/dev/null && break; sleep 0.1; done
go build -o bin/keyload ./deploy/bench/keyload
echo "== tollgate: $C clients on POST /key/generate as fast as they go, 4 clients on GET /key/info, $DUR"
bin/keyload -url http://$ADDR -master-key "$MK" -c "$C" -info 4 -d "$DUR"
echo "== tollgate: $C clients on POST /key/generate held at 500 keys/s, GET /key/info at 200 req/s, $DUR"
bin/keyload -url http://$ADDR -master-key "$MK" -c "$C" -info 4 -d "$DUR" -rate 500 -info-rate 200
