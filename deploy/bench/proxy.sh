#!/usr/bin/env bash
# Side-by-side proxy benchmark (issue 7): Tollgate next to a bare
# httputil.ReverseProxy, on loopback, real processes only.
#
#   deploy/bench/proxy.sh                    # defaults: 100,000 keys, 5 rounds, ~5 minutes
#   KEYS=1000000 ROUNDS=5 DURATION=10s deploy/bench/proxy.sh
#   DELAY=20ms deploy/bench/proxy.sh         # the mock upstream waits 20 ms per answer
#   RATES=50,200,500 deploy/bench/proxy.sh   # the open-loop constant rates (req/s)
#   MODES=json deploy/bench/proxy.sh         # skip SSE streaming
#   PROXIES=3 deploy/bench/proxy.sh          # Tollgate targets round robin over 3 proxies (CPU summed)
#   BIN=/path deploy/bench/proxy.sh          # use binaries built there (controlplane, dataplane,
#                                            # seed, mockupstream, bareproxy, proxybench); no build
#
# It builds controlplane, dataplane, the seeding tool (controlplane/internal/cmd/seed)
# and deploy/bench/{mockupstream,bareproxy,proxybench}, then bin/proxybench:
#   - seeds an embedded control-plane store with KEYS keys (default 100,000) and one model
#     (gpt-4o-mini, api_base = the mock upstream) through the store API (~10k keys/s);
#   - starts the mock upstream (fixed 581-byte chat completion with usage, or an SSE stream of
#     8 chunks + usage; DELAY before each answer), the control plane, one Tollgate proxy
#     (--pprof-addr) and bin/bareproxy (same upstream Transport settings as Tollgate);
#   - creates two keys over REST: a plain one, and one with max_budget, rpm/tpm limits (too high
#     to refuse) and enforced_params ["user", "metadata.generation_name"] (the bodies carry them);
#   - for each mode (json, stream) and each of ROUNDS rounds, drives four targets in an order
#     rotated every round: direct to the upstream, the bare proxy, Tollgate with the plain key,
#     Tollgate with the limited key. Load is vegeta (library) over keep-alive connections:
#       throughput phase: WORKERS workers (default 16) as fast as they go for DURATION (4s);
#                         CPU per request of the proxy process = utime+stime from
#                         /proc/<pid>/stat ÷ requests, sampled before the load and again once
#                         the proxy and the control plane are idle after it (so the spend
#                         shipping a request causes is charged to it; "during load" is shown
#                         too), and the same for the upstream and the control plane;
#       rate phases:      for each of RATES (default 50,200,500 req/s), open loop: requests leave
#                         on a fixed schedule whatever the answers (vegeta's constant pacer; more
#                         connections are opened when all are busy), for LAT_DURATION (4s) and at
#                         least LAT_REQUESTS (400) requests; CPU per request as above, and the p50
#                         each target adds over the bare proxy in the same round (the median round
#                         and the worst round are reported: issue 20 asks < 25 µs in every round);
#       interleaved phases: (INTERLEAVE=true) for each Tollgate key, it and the bare proxy at once,
#                         each at RATE on its own schedule, offset by half a period (which goes first
#                         alternates by round), so that both meet the same machine; latency only.
#                         Rounds one target at a time carry the machine's drift between them (the bare
#                         proxy's own p50 moved by 170 µs from round to round on a shared host); these
#                         do not. (Both keys in one phase do not work: the key that followed the other
#                         found its process awake and was ~100 µs faster in every round);
#   - takes CPU profiles of the Tollgate proxy (PROFILE=6s each): saturated with the limited key
#     (JSON), saturated with the plain key (SSE), and at the constant RATE (200; limited key, JSON).
# CPU is each process's time on a CPU summed over its threads (/proc/<pid>/task/*/schedstat, ns),
# so that a low rate's few requests are not counted in 10 ms ticks.
# Prints markdown tables (ratios to the bare proxy, the issue-20 goals met or missed) and each
# profile's top 15 (flat and cumulative); everything also goes to
# deploy/bench/results/proxy-<UTC date-time>.txt, the profiles next to it (.pprof, -stream.pprof, -rate.pprof).
# Ports PORT..PORT+5 (default 18400). All processes are stopped and the temporary directory
# removed at exit, Ctrl-C included. Numbers on a shared 2-core machine are noisy: the load
# average is printed at start and end; the load generator, upstream and proxy share the cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS=${KEYS:-100000}
ROUNDS=${ROUNDS:-5}
WORKERS=${WORKERS:-16}
DURATION=${DURATION:-4s}
RATE=${RATE:-200}
LAT_DURATION=${LAT_DURATION:-4s}
RATES=${RATES:-50,200,500}
LAT_REQUESTS=${LAT_REQUESTS:-400}
INTERLEAVE=${INTERLEAVE:-true}
DELAY=${DELAY:-0s}
MODES=${MODES:-json,stream}
PROFILE=${PROFILE:-6s}
PORT=${PORT:-18400}
PROXIES=${PROXIES:-1}

stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p deploy/bench/results
out=deploy/bench/results/proxy-$stamp.txt
prof=deploy/bench/results/proxy-$stamp
work=$(mktemp -d)
driver=
cleanup() {
  if [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    wait "$driver" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
  echo "== proxy benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: KEYS=$KEYS ROUNDS=$ROUNDS WORKERS=$WORKERS DURATION=$DURATION RATE=$RATE LAT_DURATION=$LAT_DURATION RATES=$RATES LAT_REQUESTS=$LAT_REQUESTS INTERLEAVE=$INTERLEAVE DELAY=$DELAY MODES=$MODES PROFILE=$PROFILE PROXIES=$PROXIES deploy/bench/proxy.sh"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr)"
  echo "go: $(go version | cut -d' ' -f3-), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"

if [[ -z "${BIN:-}" ]]; then
  BIN=bin
  mkdir -p bin
  go build -o bin/controlplane ./controlplane
  go build -o bin/dataplane ./dataplane
  go build -o bin/seed ./controlplane/internal/cmd/seed
  go build -o bin/mockupstream ./deploy/bench/mockupstream
  go build -o bin/bareproxy ./deploy/bench/bareproxy
  go build -o bin/proxybench ./deploy/bench/proxybench
fi

"$BIN/proxybench" -bin "$BIN" -work "$work" -keys "$KEYS" -port "$PORT" -rounds "$ROUNDS" -workers "$WORKERS" \
  -duration "$DURATION" -rate "$RATE" -rates "$RATES" -lat-duration "$LAT_DURATION" -lat-requests "$LAT_REQUESTS" -interleave="$INTERLEAVE" -delay "$DELAY" -modes "$MODES" \
  -profile "$PROFILE" -profile-out "$prof" -proxies "$PROXIES" > >(tee -a "$out") 2>&1 &
driver=$!
wait "$driver"
driver=

for f in "$prof.pprof" "$prof-stream.pprof" "$prof-rate.pprof"; do
  [[ -s "$f" ]] || continue
  {
    echo
    echo "### CPU profile $f: top 15 by flat time, then by cumulative time"
    echo '```'
    go tool pprof -top -nodecount=15 "$BIN/dataplane" "$f" 2>&1 | grep -v '^Build ID'
    echo
    go tool pprof -top -cum -nodecount=15 "$BIN/dataplane" "$f" 2>&1 | sed -n '/flat%/,$p'
    echo
    echo "Tollgate's own frames, bbolt and ReverseProxy, by cumulative time:"
    go tool pprof -top -cum -nodecount=400 "$BIN/dataplane" "$f" 2>/dev/null |
      grep -E 'tollgate-gw/tollgate/dataplane|bbolt\.\(\*DB\)\.Update$|bbolt\.fdatasync$|httputil\.\(\*ReverseProxy\)\.ServeHTTP$|runtime\.gcBgMarkWorker$' |
      grep -v 'main\.run\|\.func[0-9]' | head -20 || true
    echo '```'
  } | tee -a "$out"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out"
echo "raw output: $out; CPU profiles: $prof*.pprof"
