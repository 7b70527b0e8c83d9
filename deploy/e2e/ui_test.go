package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chromiumPath is Debian's Chromium (deploy/test.sh installs it);
// TOLLGATE_CHROMIUM overrides.
func chromiumPath() string {
	if p := os.Getenv("TOLLGATE_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// artifactsDir is where browser tests save screenshots: $TOLLGATE_ARTIFACTS,
// else deploy/e2e/artifacts (gitignored).
func artifactsDir(t *testing.T, name string) string {
	base := os.Getenv("TOLLGATE_ARTIFACTS")
	if base == "" {
		base = filepath.Join(RepoRoot(), "deploy", "e2e", "artifacts")
	}
	dir := filepath.Join(base, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestUIBrowser drives the admin UI (/ui) in headless Chromium with
// playwright-core (deploy/e2e/ui/ui.mjs): admin sign-in by keyboard, a team
// and a service-account key created in the page, the secret copied from the
// clipboard and used through a real proxy, the request found in the spend
// view, the key blocked in the page and refused by the proxy (401), then an
// internal user who sees only its own keys and no admin actions, a key
// created with the keyboard alone, and a proxy_admin_viewer who reads
// everything and has no write actions; on the embedded store and on
// Postgres. Screenshots go to artifactsDir. Under
// CI=true a missing node or Chromium is a failure.
func TestUIBrowser(t *testing.T) {
	t.Parallel()
	need := func(what string, err error) {
		if err == nil {
			return
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true (deploy/test.sh installs it): %v", what, err)
		}
		t.Skipf("%s not available: %v", what, err)
	}
	_, err := exec.LookPath("node")
	need("node", err)
	chromium := chromiumPath()
	_, err = os.Stat(chromium)
	need("chromium", err)
	dir := filepath.Join(RepoRoot(), "deploy", "e2e", "ui")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci: %v\n%s", err, out)
		}
	}

	backends(t, func(t *testing.T, o CPOptions) { uiFlow(t, dir, chromium, o) })
}

// uiFlow runs ui.mjs against a fresh deployment on o's store.
func uiFlow(t *testing.T, dir, chromium string, o CPOptions) {
	d := newDeployment(t, o)
	dp := d.proxy(t)
	// A second proxy that stops: the proxies page must show it stale.
	gone := d.proxy(t)
	gone.Stop()
	u, mk := d.cp.URL(), d.cp.MasterKey

	// The internal user (and a stranger whose key it must not see) are
	// made over REST, as an operator's script would.
	userKey := ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id":"ui-user","user_role":"internal_user","auto_create_key":true,"key_alias":"ui-user-login"}`))["key"].(string)
	ok(t, Do(t, "POST", u+"/key/generate", mk, `{"user_id":"ui-user","key_alias":"mine-key"}`))
	ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id":"ui-other","user_role":"internal_user","auto_create_key":false}`))
	ok(t, Do(t, "POST", u+"/key/generate", mk, `{"user_id":"ui-other","key_alias":"other-key"}`))
	viewerKey := ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id":"ui-viewer","user_role":"proxy_admin_viewer","auto_create_key":true}`))["key"].(string)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "node", "ui.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CP_URL="+u, "PROXY_URL="+dp.URL(), "MASTER_KEY="+mk, "USER_KEY="+userKey, "VIEWER_KEY="+viewerKey, "GONE_PROXY="+gone.ID,
		"CHROMIUM="+chromium, "ARTIFACTS="+artifactsDir(t, filepath.Join("ui", filepath.Base(t.Name()))))
	out, err := cmd.CombinedOutput()
	t.Logf("node ui.mjs (%s):\n%s", time.Since(start).Round(time.Millisecond), redact(string(out), mk, userKey, viewerKey))
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "ok") {
		t.Fatalf("browser flow failed: %v", err)
	}

	// The page's block reached the store: the key is blocked for REST too.
	keys := ok(t, Do(t, "GET", u+"/key/list?key_alias=ui-sa&return_full_object=true", mk, nil))["keys_full"].([]any)
	if len(keys) != 1 || keys[0].(map[string]any)["blocked"] != true {
		t.Fatalf("ui-sa after the browser flow: %v", keys)
	}
}

// redact keeps key material out of test logs.
func redact(s string, secrets ...string) string {
	for _, k := range secrets {
		if k != "" {
			s = strings.ReplaceAll(s, k, "[redacted]")
		}
	}
	return s
}
