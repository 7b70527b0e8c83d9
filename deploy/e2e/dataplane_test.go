package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const upstreamSecret = "upstream-secret-123"

// deployment is a control plane with a config pointing at a fake upstream.
type deployment struct {
	cp  *ControlPlane
	up  *Upstream
	env []string // proxy environment (the upstream credential)
}

func writeConfig(t *testing.T, upstreamURL string) string {
	t.Helper()
	cfg := fmt.Sprintf(`model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_token: 0.00000015
      output_cost_per_token: 0.0000006
  - model_name: gpt-4
    litellm_params:
      model: openai/gpt-4
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      access_groups: ["premium"]
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
general_settings:
  service_account_settings:
    enforced_params: ["user"]
`, upstreamURL)
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newDeployment(t *testing.T, o CPOptions) *deployment {
	t.Helper()
	up := NewUpstream(t)
	o.Config = writeConfig(t, up.URL)
	cp := StartControlPlane(t, o)
	return &deployment{cp: cp, up: up, env: []string{"UPSTREAM_API_KEY=" + upstreamSecret}}
}

func (d *deployment) proxy(t *testing.T) *DataPlane {
	t.Helper()
	return ProxyFor(t, d.cp, d.env...)
}

func chat(model string, extra string) string {
	return fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]%s}`, model, extra)
}

// waitStatus polls the proxy until a chat call returns want (the state
// reaches proxies asynchronously, within milliseconds).
func waitStatus(t *testing.T, dp *DataPlane, key, body string, want int) Response {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, body)
		if r.Status == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy %s: status %d, want %d: %s", dp.ID, r.Status, want, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServiceAccountExampleThroughProxy(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey

		team := ok(t, Do(t, "POST", u+"/team/new", mk, `{"team_alias": "engineering"}`))
		sa := ok(t, Do(t, "POST", u+"/key/service-account/generate", mk, map[string]any{"team_id": team["team_id"], "key_alias": "svc"}))
		key := sa["key"].(string)

		// Without "user": the LiteLLM docs' exact 400.
		r := waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 400)
		want := `{"error":{"message":"BadRequest please pass param=user in request body. This is a required param for service account","type":"bad_request_error","param":"user","code":"400"}}`
		if strings.TrimSpace(string(r.Body)) != want {
			t.Fatalf("400 body:\n got %s\nwant %s", r.Body, want)
		}
		n := len(d.up.Requests())

		// With "user" it reaches the upstream with the upstream's credential.
		r = Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", `,"user":"alice","api_base":"http://evil.invalid","api_key":"sk-evil"`))
		if r.Status != 200 {
			t.Fatalf("chat: %d %s", r.Status, r.Body)
		}
		reqs := d.up.Requests()
		if len(reqs) != n+1 {
			t.Fatalf("upstream got %d requests, want %d", len(reqs), n+1)
		}
		last := reqs[len(reqs)-1]
		if got := last.Header.Get("Authorization"); got != "Bearer "+upstreamSecret {
			t.Fatalf("upstream Authorization %q", got)
		}
		if strings.Contains(string(last.Raw), key) || strings.Contains(fmt.Sprint(last.Header), key) {
			t.Fatal("client key forwarded upstream")
		}
		if last.Body["model"] != "gpt-4o-mini" || last.Path != "/v1/chat/completions" {
			t.Fatalf("upstream got model %v path %s", last.Body["model"], last.Path)
		}
		m := r.JSON(t)
		if m["object"] != "chat.completion" {
			t.Fatalf("response %s", r.Body)
		}

		// /v1/models lists what the key may use.
		mr := ok(t, Do(t, "GET", dp.URL()+"/v1/models", key, nil))
		if data, _ := mr["data"].([]any); len(data) != 3 {
			t.Fatalf("models: %v", mr)
		}
	})
}

func TestRevocationReachesEveryProxy(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		proxies := []*DataPlane{d.proxy(t), d.proxy(t), d.proxy(t)}
		u, mk := d.cp.URL(), d.cp.MasterKey
		g := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"models":["gpt-4o-mini"]}`))
		key := g["key"].(string)
		body := chat("gpt-4o-mini", "")
		for _, p := range proxies {
			waitStatus(t, p, key, body, 200)
		}
		// A model the key may not use.
		for _, p := range proxies {
			r := Do(t, "POST", p.URL()+"/v1/chat/completions", key, chat("gpt-4", ""))
			if r.Status != 401 && r.Status != 403 {
				t.Fatalf("forbidden model: %d %s", r.Status, r.Body)
			}
		}

		ok(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": key}))
		for _, p := range proxies {
			waitStatus(t, p, key, body, 401)
		}
		ok(t, Do(t, "POST", u+"/key/unblock", mk, map[string]any{"key": key}))
		for _, p := range proxies {
			waitStatus(t, p, key, body, 200)
		}
		// Update: restrict models.
		ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": key, "models": []string{"gpt-4"}}))
		for _, p := range proxies {
			r := waitStatus(t, p, key, body, 401)
			if strings.Contains(string(r.Body), key) {
				t.Fatal("error echoes the key")
			}
		}
		ok(t, Do(t, "POST", u+"/key/delete", mk, map[string]any{"keys": []string{key}}))
		for _, p := range proxies {
			waitStatus(t, p, key, chat("gpt-4", ""), 401)
		}

		// Regenerate: the old secret stops working, the new one works.
		g = ok(t, Do(t, "POST", u+"/key/generate", mk, `{}`))
		old := g["key"].(string)
		waitStatus(t, proxies[0], old, body, 200)
		rg := ok(t, Do(t, "POST", u+"/key/regenerate", mk, map[string]any{"key": old}))
		nk := rg["key"].(string)
		for _, p := range proxies {
			waitStatus(t, p, old, body, 401)
			waitStatus(t, p, nk, body, 200)
		}

		// Expiry needs no control plane.
		g = ok(t, Do(t, "POST", u+"/key/generate", mk, `{"duration":"2s"}`))
		ek := g["key"].(string)
		waitStatus(t, proxies[1], ek, body, 200)
		d.cp.Kill()
		time.Sleep(2100 * time.Millisecond)
		for _, p := range proxies {
			waitStatus(t, p, ek, body, 401)
			waitStatus(t, p, nk, body, 200)
		}
	})
}

func TestProxiesSurviveControlPlaneOutage(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		p1 := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		key := ok(t, Do(t, "POST", u+"/key/generate", mk, `{}`))["key"].(string)
		body := chat("gpt-4o-mini", "")
		waitStatus(t, p1, key, body, 200)

		cpOpts := d.cp.Options()
		d.cp.Kill()

		// Still serving without the control plane.
		waitStatus(t, p1, key, body, 200)
		// Restarted from its cache: ready and serving with no control plane.
		p1.Stop()
		p1 = StartDataPlane(t, p1.Options())
		waitStatus(t, p1, key, body, 200)
		// Killed (no graceful stop) and restarted: same.
		p1.Kill()
		p1 = StartDataPlane(t, p1.Options())
		waitStatus(t, p1, key, body, 200)

		// A fresh proxy without cache and without control plane is not ready.
		fresh := StartDataPlane(t, DPOptions{ControlPlane: cpOpts.GRPCAddr, SyncToken: cpOpts.SyncToken, Env: d.env, NoWaitReady: true})
		time.Sleep(300 * time.Millisecond)
		if r := Do(t, "GET", fresh.URL()+"/health/readiness", "", nil); r.Status != 503 {
			t.Fatalf("readiness without state: %d %s", r.Status, r.Body)
		}
		envelope(t, Do(t, "POST", fresh.URL()+"/v1/chat/completions", key, body), 503)
		if r := Do(t, "GET", fresh.URL()+"/health/liveliness", "", nil); r.Status != 200 {
			t.Fatalf("liveliness: %d", r.Status)
		}

		// The control plane comes back: the fresh proxy gets a snapshot, and
		// both see new changes.
		cp := StartControlPlane(t, cpOpts)
		WaitHTTP(t, fresh.Process, fresh.URL()+"/health/readiness", 200, 30*time.Second)
		waitStatus(t, fresh, key, body, 200)
		ok(t, Do(t, "POST", cp.URL()+"/key/delete", mk, map[string]any{"keys": []string{key}}))
		waitStatus(t, fresh, key, body, 401)
		waitStatus(t, p1, key, body, 401)
	})
}

func TestStreamingThroughProxy(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	dp := d.proxy(t)
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)

	r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", `,"stream":true`))
	if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s %s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
	data := SSEData(r.Body)
	if len(data) != 4 || data[3] != "[DONE]" || strings.Contains(strings.Join(data, ""), `"usage"`) {
		t.Fatalf("client that did not ask for usage got: %q", data)
	}
	// The proxy asked the upstream for usage anyway.
	last := d.up.Last(t)
	if so, _ := last.Body["stream_options"].(map[string]any); so["include_usage"] != true {
		t.Fatalf("upstream not asked for usage: %s", last.Raw)
	}
	// A client that asks for usage gets it.
	r = Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", `,"stream":true,"stream_options":{"include_usage":true}`))
	data = SSEData(r.Body)
	if len(data) != 5 || !strings.Contains(data[3], `"usage"`) {
		t.Fatalf("client that asked for usage got: %q", data)
	}
}

func TestProxyBadInputs(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	dp := d.proxy(t)
	u, mk := d.cp.URL(), d.cp.MasterKey
	key := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"enforced_params":["metadata.generation_name"]}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", `,"metadata":{"generation_name":"x"}`), 200)
	purl := dp.URL() + "/v1/chat/completions"

	envelope(t, Do(t, "POST", purl, "", chat("gpt-4o-mini", "")), 401)
	envelope(t, Do(t, "POST", purl, "not-a-key", chat("gpt-4o-mini", "")), 401)
	unknown := RandomKey()
	r := Do(t, "POST", purl, unknown, chat("gpt-4o-mini", ""))
	envelope(t, r, 401)
	if strings.Contains(string(r.Body), unknown) {
		t.Fatal("401 echoes the key")
	}
	e := envelope(t, Do(t, "POST", purl, key, chat("gpt-4o-mini", `,"metadata":{}`)), 400)
	if e["param"] != "metadata.generation_name" {
		t.Fatalf("param %v", e["param"])
	}
	envelope(t, Do(t, "POST", purl, key, `{"model":`), 400)
	envelope(t, Do(t, "POST", purl, key, strings.Repeat("x", 11<<20)), 413)
	envelope(t, Do(t, "POST", purl, key, chat("no-such-model", `,"metadata":{"generation_name":"x"}`)), 400)

	// Upstream down: 502.
	d.up.Close()
	envelope(t, Do(t, "POST", purl, key, chat("gpt-4o-mini", `,"metadata":{"generation_name":"x"}`)), 502)
}

func TestWrongSyncTokenRefused(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	bad := "sk-wrong-token-" + RandomKey()[3:]
	dp := StartDataPlane(t, DPOptions{ControlPlane: d.cp.GRPCAddr, SyncToken: bad, NoWaitReady: true})
	time.Sleep(time.Second)
	if r := Do(t, "GET", dp.URL()+"/health/readiness", "", nil); r.Status != 503 {
		t.Fatalf("proxy with a wrong token became ready: %d", r.Status)
	}
	if strings.Contains(d.cp.Output(), bad) || strings.Contains(dp.Output(), bad) {
		t.Fatal("a log prints the sync token")
	}
}

// TestConcurrentProxiesSeeSameOrder checks two control-plane replicas on one
// Postgres serve the same revisions.
func TestTwoControlPlanesOnePostgres(t *testing.T) {
	t.Parallel()
	dbURL := PostgresURL(t)
	d := newDeployment(t, CPOptions{DatabaseURL: dbURL})
	o2 := d.cp.Options()
	o2.HTTPAddr, o2.GRPCAddr = "", ""
	cp2 := StartControlPlane(t, o2)
	p1 := d.proxy(t)
	p2 := StartDataPlane(t, DPOptions{ControlPlane: cp2.GRPCAddr, SyncToken: cp2.SyncToken, Env: d.env})

	var mu sync.Mutex
	var ks []string
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			base := d.cp.URL()
			if i%2 == 1 {
				base = cp2.URL()
			}
			k := ok(t, Do(t, "POST", base+"/key/generate", d.cp.MasterKey, `{}`))["key"].(string)
			mu.Lock()
			ks = append(ks, k)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	for _, k := range ks {
		waitStatus(t, p1, k, chat("gpt-4o-mini", ""), 200)
		waitStatus(t, p2, k, chat("gpt-4o-mini", ""), 200)
	}
	// The calls above spend, and their spend becomes revisions shortly
	// after: the proxies converge on the same revision once it is applied.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m1 := Do(t, "GET", p1.URL()+"/metrics", "", nil)
		m2 := Do(t, "GET", p2.URL()+"/metrics", "", nil)
		rv1, rv2 := metric(string(m1.Body), "tollgate_sync_revision"), metric(string(m2.Body), "tollgate_sync_revision")
		if rv1 == rv2 && rv1 != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revisions differ: %q vs %q", rv1, rv2)
		}
	}
}

func metric(text, name string) string {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

func TestCorruptCacheMovedAside(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{}`))["key"].(string)
	dir := t.TempDir()
	cache := filepath.Join(dir, "proxy.db")
	if err := os.WriteFile(cache, []byte(strings.Repeat("not a bbolt file ", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	// With the control plane up, the proxy moves the file aside and gets a
	// fresh snapshot.
	dp := StartDataPlane(t, DPOptions{ControlPlane: d.cp.GRPCAddr, SyncToken: d.cp.SyncToken, Cache: cache, Env: d.env})
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	aside, _ := filepath.Glob(cache + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("corrupt cache not moved aside: %v", aside)
	}
	// Truncate the (now valid) cache while the control plane is down: the
	// proxy must not serve from it, and must not be ready.
	dp.Stop()
	d.cp.Kill()
	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt grows the file ahead of its pages (a zero, sparse tail): cut a
	// third of what it holds, not of its length.
	used := len(b)
	for used > 0 && b[used-1] == 0 {
		used--
	}
	if err := os.WriteFile(cache, b[:used/3], 0o600); err != nil {
		t.Fatal(err)
	}
	dp = StartDataPlane(t, DPOptions{ControlPlane: d.cp.GRPCAddr, SyncToken: d.cp.SyncToken, Cache: cache, Env: d.env, NoWaitReady: true})
	time.Sleep(300 * time.Millisecond)
	if r := Do(t, "GET", dp.URL()+"/health/readiness", "", nil); r.Status != 503 {
		t.Fatalf("proxy with a truncated cache is ready: %d %s", r.Status, r.Body)
	}
	envelope(t, Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")), 503)
}

func TestProxyMetrics(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	dp := d.proxy(t)
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	Do(t, "POST", dp.URL()+"/v1/chat/completions", RandomKey(), chat("gpt-4o-mini", ""))
	r := Do(t, "GET", dp.URL()+"/metrics", "", nil)
	if r.Status != 200 {
		t.Fatalf("metrics: %d", r.Status)
	}
	text := string(r.Body)
	for _, series := range []string{
		"tollgate_proxy_requests_total", "tollgate_proxy_decision_seconds_bucket",
		"tollgate_sync_connected 1", "tollgate_sync_revision", "tollgate_sync_head_revision",
		"tollgate_sync_state_age_seconds", "tollgate_sync_snapshots_applied_total",
	} {
		if !strings.Contains(text, series) {
			t.Errorf("metrics lack %s", series)
		}
	}
	if strings.Contains(text, key) || strings.Contains(text, key[len(key)-8:]) {
		t.Fatal("metrics contain key material")
	}
}
