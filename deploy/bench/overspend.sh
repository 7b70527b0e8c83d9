#!/usr/bin/env bash
# Budget overspend table: a control plane (embedded store, or Postgres when
# DB=postgres://... is set), 1 and then 3 proxies, and a fake upstream; for
# 1, 8 and 64 concurrent clients (instant and 20 ms upstream) a fresh key
# with a budget of 40 calls is hammered until it refuses. Prints the
# README's table (admitted calls, overspend in calls, usable share).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOLLGATE_OVERSPEND_TABLE=1 TOLLGATE_OVERSPEND_DB="${DB:-}" \
  go test -count=1 -timeout 20m -run '^TestBudgetOverspendTable$' -v ./deploy/e2e/ | grep -E '^\||^(ok|FAIL|---)'
