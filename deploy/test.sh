#!/usr/bin/env bash
# The test command (README "Run the tests"): vet, generated-code drift, buf
# lint, and every test with the race detector against the local Postgres
# (TOLLGATE_TEST_DATABASE_URL overrides; a throwaway cluster is started from
# the installed binaries when no server answers).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== go vet"
go vet ./...

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null | grep -v '^gen/' || find . -name '*.go' -not -path './gen/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== buf lint and generated-code drift"
go tool buf lint
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r gen "$tmp/gen.before"
cp -r controlplane/internal/openapi/spec "$tmp/spec.before"
go tool buf generate
if ! diff -r "$tmp/gen.before" gen >/dev/null || ! diff -r "$tmp/spec.before" controlplane/internal/openapi/spec >/dev/null; then
  echo "gen/ drifted from proto/: run 'go tool buf generate' and commit the result"
  diff -r "$tmp/gen.before" gen | head -40 || true
  exit 1
fi

echo "== browser for the admin UI test (deploy/e2e/ui_test.go)"
# TestUIBrowser drives /ui in Debian's Chromium (headless, through
# playwright-core pinned in deploy/e2e/ui); under CI=true it fails without it.
if [ -z "${TOLLGATE_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "chromium is missing and cannot be installed (not root, no sudo): TestUIBrowser will fail under CI=true"
  fi
fi

echo "== go test -race"
go test -race -count=1 -timeout 25m ./... 2>&1 | tee "$tmp/test.log"
status=${PIPESTATUS[0]}
passed=$(grep -c '^ok ' "$tmp/test.log" || true)
failed=$(grep -c '^FAIL' "$tmp/test.log" || true)
echo "packages: $passed passed, $failed failed"
exit "$status"
