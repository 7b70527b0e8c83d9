#!/usr/bin/env bash
# Snapshot-scale benchmark (issue 4 "Performance", issue 7 "Scale"): a
# control plane holding N keys (default 1,000,000) and real dataplane
# processes on loopback. It measures
#   (a) proxy 1 with an empty cache: process start → /health/readiness 200
#       (includes the control plane's first snapshot build, also reported
#       on its own from the control plane's log);
#   (b) proxy 2 with an empty cache once the snapshot is built: start → ready;
#   (c) control plane killed, proxy 1 restarted: start → ready from its bbolt
#       cache, with a seeded key answered 200 on GET /v1/models;
#   (d) RSS (VmRSS/VmHWM, anonymous and file-backed) of the proxies and the
#       control plane, proxy cache sizes, control-plane store size, and the
#       control plane's CPU while idle for 61 s (its periodic jobs);
#   (e) a delta's cost: POST /key/block returning → both proxies answer 401,
#       over BLOCKS blocks, at N keys and at SMALL_N keys (must not grow).
# then prints a summary table. Targets (issue 4): (b) and (a) under 10 s,
# (c) under 3 s. Each timing comes with the machine's CPU and I/O pressure
# meanwhile (/proc/pressure): on a shared machine, that tells noise apart.
#
#   deploy/bench/scale.sh                              # 1M keys, embedded store
#   N=100000 deploy/bench/scale.sh                     # fewer keys
#   DB=postgres://postgres@127.0.0.1:5432 deploy/bench/scale.sh
#                                    # Postgres: creates two databases, drops them at the end
#   SEEDED=/var/tmp/tollgate-seeded deploy/bench/scale.sh
#                                    # keep the seeded stores there and copy them on
#                                    # later runs instead of seeding again. With DB=,
#                                    # SEEDED=<anything> keeps template databases
#                                    # tollgate_seeded_{big,small}_<n> and clones them
#                                    # (CREATE DATABASE ... TEMPLATE, file copy: ~10 s
#                                    # for 1M keys instead of ~70 s); drop them when done:
#                                    #   psql $DB/postgres -c 'DROP DATABASE tollgate_seeded_big_1000000'
#   PPROF=1 ...                      # every process gets --pprof-addr (ports 18307-18309)
#   WORK=/path ...                   # where caches, stores and logs go (default: mktemp -d)
#   COMMIT=<sha> ...                 # names the source in the header when run outside a git checkout
#
# Seeding goes through the store API (controlplane/internal/cmd/seed), not
# REST: ~10,000 keys/s embedded. Key i's plaintext is sk-seed-<i>. Needs
# go, curl, and psql for DB=.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
SMALL_N=${SMALL_N:-1000}
BLOCKS=${BLOCKS:-100}

echo "== scale benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "command: N=$N SMALL_N=$SMALL_N BLOCKS=$BLOCKS${DB:+ DB=$DB} deploy/bench/scale.sh"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)"
if git rev-parse --git-dir >/dev/null 2>&1; then
  commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes')"
else
  commit="${COMMIT:-unknown} (not a git checkout)"
fi
echo "go: $(go version | cut -d' ' -f3-), commit $commit"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

mkdir -p bin
go build -o bin/controlplane ./controlplane
go build -o bin/dataplane ./dataplane
go build -o bin/seed ./controlplane/internal/cmd/seed
go build -o bin/scale ./deploy/bench/scale

work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
dbs=()
cleanup() {
  for d in "${dbs[@]}"; do
    psql "$DB/postgres" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true
  done
  [[ -z "${WORK:-}" ]] && rm -rf "$work"
  return 0
}
trap cleanup EXIT

# seed <name> <keys>: prints the store flag for bin/scale.
seed() {
  local name=$1 n=$2
  if [[ -n "${DB:-}" ]]; then
    local db=tollgate_scale_${name}_$$
    local tmpl=tollgate_seeded_${name}_${n}
    local url="$DB/$db?sslmode=disable"
    if [[ -n "${SEEDED:-}" && "$(psql "$DB/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$tmpl'")" == 1 ]]; then
      echo "-- cloning the database seeded earlier with $n keys ($tmpl) into $db" >&2
      psql "$DB/postgres" -qc "CREATE DATABASE $db TEMPLATE $tmpl STRATEGY FILE_COPY" >/dev/null
      dbs+=("$db")
    else
      psql "$DB/postgres" -qc "CREATE DATABASE $db" >/dev/null
      dbs+=("$db")
      echo "-- seeding $n keys into Postgres database $db" >&2
      bin/seed --database-url "$url" -n "$n" >&2
      if [[ -n "${SEEDED:-}" ]]; then
        psql "$DB/postgres" -qc "DROP DATABASE IF EXISTS $tmpl WITH (FORCE)" >/dev/null
        psql "$DB/postgres" -qc "CREATE DATABASE $tmpl TEMPLATE $db STRATEGY FILE_COPY" >/dev/null
        echo "   kept as template database $tmpl (SEEDED)" >&2
      fi
    fi
    echo "   size: $(psql "$DB/$db" -Atc "SELECT 'database ' || pg_size_pretty(pg_database_size(current_database())) || ', keys table+indexes ' || pg_size_pretty(pg_total_relation_size('keys')) || ', changes ' || pg_size_pretty(pg_total_relation_size('changes'))")" >&2
    SEEDED_FLAG=(--database-url "$url")
    return
  fi
  local dir=$work/store-$name
  rm -rf "$dir"
  if [[ -n "${SEEDED:-}" && -f "$SEEDED/$name-$n/tollgate.db" ]]; then
    echo "-- copying the store seeded earlier with $n keys from $SEEDED/$name-$n" >&2
    cp -r "$SEEDED/$name-$n" "$dir"
  else
    echo "-- seeding $n keys into $dir" >&2
    bin/seed --data-dir "$dir" -n "$n" >&2
    if [[ -n "${SEEDED:-}" ]]; then
      mkdir -p "$SEEDED"
      rm -rf "$SEEDED/$name-$n"
      cp -r "$dir" "$SEEDED/$name-$n"
    fi
  fi
  echo "   size: store file $(du -m "$dir/tollgate.db" | cut -f1) MB" >&2
  SEEDED_FLAG=(--data-dir "$dir")
}

# Flags differ only in name between the two stores.
seed big "$N"
big=("${SEEDED_FLAG[@]}")
seed small "$SMALL_N"
small=("-small-${SEEDED_FLAG[0]#--}" "${SEEDED_FLAG[1]}")

# Let the seeding's writes reach the disk first: a Postgres checkpoint or
# the kernel's writeback running under the measurement slows the proxies'
# fsyncs (seen: +2-3 s on a snapshot apply).
if [[ -n "${DB:-}" ]]; then
  psql "$DB/postgres" -qc "CHECKPOINT" >/dev/null 2>&1 || echo "(CHECKPOINT failed; measuring anyway)"
fi
sync

pprof=()
[[ -n "${PPROF:-}" ]] && pprof=(-pprof)
bin/scale -bin bin -work "$work" "${big[@]}" "${small[@]}" -n "$N" -small-n "$SMALL_N" -blocks "$BLOCKS" "${pprof[@]}"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
