#!/usr/bin/env bash
# Budget overspend table: a control plane (embedded store, or Postgres when
# DB=postgres://... is set), 1 and then 3 proxies, and a fake upstream; for
# 1, 8, 24 and 64 concurrent clients (instant and 20 ms upstream) a fresh key
# with a budget of 30 calls ($1.00 at $0.033 a call) is hammered twice: by
# clients that stop at their first refusal (as most scripts do) and by
# clients that honour Retry-After (retry a budget_held after it, stop at
# budget_exceeded); and a fresh key with rpm_limit 60 gets 180 requests
# within one minute. Prints the README's tables (admitted calls and
# overspend in calls for both kinds of client, usable share with clients
# stopping at first refusal and with clients honouring Retry-After; rpm
# admitted / limit) and keeps the output in
# deploy/bench/results/money-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=deploy/bench/results/money-$(date -u +%Y-%m-%dT%H%M%SZ).txt
{
  echo "# deploy/bench/overspend.sh $(date -u +%FT%TZ) $(go version) $(nproc) cores store=$([[ -n "${DB:-}" ]] && echo postgres || echo embedded)"
  TOLLGATE_OVERSPEND_TABLE=1 TOLLGATE_OVERSPEND_DB="${DB:-}" \
    go test -count=1 -timeout 20m -run '^TestBudgetOverspendTable$' -v ./deploy/e2e/ | grep -E '^\||^$|^(ok|FAIL|---)|limits_test'
} | tee "$out"
