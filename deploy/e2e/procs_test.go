package e2e

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// gomaxprocs is the proxy's scheduler width from its /metrics.
func gomaxprocs(t *testing.T, dp *DataPlane) float64 {
	t.Helper()
	return counterValue(scrape(t, dp.URL()+"/metrics"), "go_sched_gomaxprocs_threads")
}

// TestProxyNarrowsWhenQuietAndWidensUnderLoad runs a real proxy: once it is
// quiet for two seconds it runs on one P (--adaptive-procs, package procs),
// a burst of concurrent requests widens it back to every core, and a proxy
// whose operator set GOMAXPROCS keeps it.
func TestProxyNarrowsWhenQuietAndWidensUnderLoad(t *testing.T) {
	t.Parallel()
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set in the environment the proxies inherit: the governor is off by design")
	}
	d := newDeployment(t, CPOptions{})
	dp := d.proxy(t)
	full := gomaxprocs(t, dp)
	if full < 2 {
		t.Skipf("the proxy starts with GOMAXPROCS %v: nothing to narrow on this machine", full)
	}
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)

	waitWidth := func(want float64, within time.Duration, load func()) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			got := gomaxprocs(t, dp)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("proxy GOMAXPROCS %v after %s, want %v", got, within, want)
			}
			if load != nil {
				load()
			} else {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	waitWidth(1, 15*time.Second, nil)

	// A burst: 32 clients as fast as they go, until the proxy widens.
	body := chat("gpt-4o-mini", "")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var failed sync.Map
	burst := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					req, _ := http.NewRequest("POST", dp.URL()+"/v1/chat/completions", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+key)
					req.Header.Set("Content-Type", "application/json")
					resp, err := client.Do(req)
					if err != nil {
						failed.Store(err.Error(), true)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						failed.Store(resp.Status, true)
					}
				}
			}()
		}
		wg.Wait()
	}
	waitWidth(full, 30*time.Second, burst)
	failed.Range(func(k, _ any) bool { t.Errorf("a request of the burst: %v", k); return true })

	// Quiet again: narrow again.
	waitWidth(1, 15*time.Second, nil)

	// The operator's GOMAXPROCS wins: no governor, no change.
	pinned := ProxyFor(t, d.cp, append(append([]string{}, d.env...), "GOMAXPROCS=2")...)
	waitStatus(t, pinned, key, chat("gpt-4o-mini", ""), 200)
	time.Sleep(3 * time.Second)
	if got := gomaxprocs(t, pinned); got != 2 {
		t.Fatalf("proxy started with GOMAXPROCS=2 runs on %v Ps", got)
	}
	if fams := scrape(t, pinned.URL()+"/metrics"); fams["tollgate_proxy_gomaxprocs_changes_total"] != nil {
		t.Fatal("the governor runs although GOMAXPROCS is set")
	}
}
