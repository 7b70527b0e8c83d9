#!/usr/bin/env bash
# Budget overspend table: a control plane (embedded store, or Postgres when
# DB=postgres://... is set), 1 and then 3 proxies, and a fake upstream; for
# 1, 8 and 64 concurrent clients (instant and 20 ms upstream) a fresh key
# with a budget of 40 calls is hammered until it refuses, and a fresh key
# with rpm_limit 60 gets 180 requests within one minute. Prints the README's
# tables (admitted calls, overspend in calls, usable share; rpm admitted /
# limit) and keeps the output in deploy/bench/results/money-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=deploy/bench/results/money-$(date -u +%Y-%m-%dT%H%M%SZ).txt
{
  echo "# deploy/bench/overspend.sh $(date -u +%FT%TZ) $(go version) $(nproc) cores store=$([[ -n "${DB:-}" ]] && echo postgres || echo embedded)"
  TOLLGATE_OVERSPEND_TABLE=1 TOLLGATE_OVERSPEND_DB="${DB:-}" \
    go test -count=1 -timeout 20m -run '^TestBudgetOverspendTable$' -v ./deploy/e2e/ | grep -E '^\||^$|^(ok|FAIL|---)|limits_test'
} | tee "$out"
