#!/usr/bin/env bash
# Hot-path microbenchmarks (issue 7), with -benchmem: the request path's
# pieces in the order a request meets them.
#
#   deploy/bench/hotpaths.sh                  # -count 3, about 3 minutes
#   COUNT=5 BENCHTIME=3s deploy/bench/hotpaths.sh
#
#   enforce  BenchmarkAuthenticate       SHA-256 of the presented key, lookup among 100k keys,
#                                        key/team/user/org checks (map-backed test state)
#   state    BenchmarkLookupKey          lookup in the real pointer-free table, random key of 1M
#            BenchmarkLookupKeyHot       the same, 1k hot keys
#   enforce  BenchmarkBodyChecks         body parse + authorize (model access, budgets), a key
#                                        without and with enforced_params
#   proxy    BenchmarkDecision           the whole decision, raw request -> planned upstream call,
#                                        1M keys (map-backed), chat, stream, chat+gate (rate-limit
#                                        and budget gate: Admit + done)
#            BenchmarkDecisionRealState  the same on the real snapshot-built 1M-key state
#   limits   BenchmarkAdmit              the rate-limit / budget check alone
#   spend    BenchmarkRecord             a request's spend record: price, id, queue (sustained,
#                                        so bounded by the group commits running beside it)
#            BenchmarkOutbox             outbox append + fsynced group commit throughput
#
# Output goes to the terminal and to deploy/bench/results/hotpaths-<UTC date-time>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-3}
BENCHTIME=${BENCHTIME:-1s}
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p deploy/bench/results
out=deploy/bench/results/hotpaths-$stamp.txt
{
  echo "== hot-path benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: COUNT=$COUNT BENCHTIME=$BENCHTIME deploy/bench/hotpaths.sh"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)"
  echo "go: $(go version | cut -d' ' -f3-), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
run() {
  local pkg=$1 pattern=$2
  go test -run '^$' -bench "$pattern" -benchmem -count "$COUNT" -benchtime "$BENCHTIME" "$pkg" 2>&1 |
    grep -E '^(Benchmark|ok|FAIL|---)' | tee -a "$out"
}
run ./dataplane/internal/enforce/ '^(BenchmarkAuthenticate|BenchmarkBodyChecks)$'
run ./dataplane/internal/state/ '^(BenchmarkLookupKey|BenchmarkLookupKeyHot)$'
run ./dataplane/internal/proxy/ '^(BenchmarkDecision|BenchmarkDecisionRealState)$'
run ./dataplane/internal/limits/ '^BenchmarkAdmit$'
run ./dataplane/internal/spend/ '^(BenchmarkRecord|BenchmarkOutbox)$'
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
echo "raw output: $out"
