package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// saasConfig has a model whose upstream always fails (500) and two that
// work, for model-group fallback.
func saasConfig(t *testing.T, goodURL, badURL, deadURL string) string {
	t.Helper()
	cfg := fmt.Sprintf(`model_list:
  - model_name: dead-model
    litellm_params:
      model: openai/dead-model
      api_base: %[3]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
  - model_name: primary-model
    litellm_params:
      model: openai/primary-model
      api_base: %[2]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
  - model_name: backup-model
    litellm_params:
      model: openai/backup-model
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: chat-model
    litellm_params:
      model: openai/chat-model
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
`, goodURL, badURL, deadURL)
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// detail asserts SaaS LiteLLM's {"detail": ...} error with status and string.
func detail(t *testing.T, r Response, status int, want string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
	}
	m := r.JSON(t)
	if len(m) != 1 || m["detail"] != want {
		t.Fatalf("body %s, want {\"detail\": %q}", r.Body, want)
	}
}

// saasEnv is one deployment for the SaaS tests: a control plane, three
// proxies, and every GET response body (checked for plaintext keys).
type saasEnv struct {
	cp        *ControlPlane
	dps       []*DataPlane
	mu        sync.Mutex
	getBodies [][]byte
	secrets   []string
}

func (e *saasEnv) admin(t *testing.T, method, path string, body any) Response {
	t.Helper()
	r := Do(t, method, e.cp.URL()+path, "", body, "X-Admin-Key", e.cp.MasterKey)
	if method == "GET" {
		e.keep(r)
	}
	return r
}

func (e *saasEnv) team(t *testing.T, dp *DataPlane, method, path, key string, body any) Response {
	t.Helper()
	r := Do(t, method, dp.URL()+path, key, body)
	if method == "GET" {
		e.keep(r)
	}
	return r
}

func (e *saasEnv) keep(r Response) {
	e.mu.Lock()
	e.getBodies = append(e.getBodies, r.Body)
	e.mu.Unlock()
}

// createTeam creates a team and waits until every proxy knows its key.
func (e *saasEnv) createTeam(t *testing.T, body map[string]any) (string, map[string]any) {
	t.Helper()
	m := ok(t, e.admin(t, "POST", "/api/teams/create", body))
	key, _ := m["virtual_key"].(string)
	if !strings.HasPrefix(key, "sk-") {
		t.Fatalf("virtual_key %q", key)
	}
	e.secrets = append(e.secrets, key)
	for _, dp := range e.dps {
		e.waitTeam(t, dp, key, func(r Response) bool { return r.Status == 200 })
	}
	return key, m
}

// waitTeam polls GET /api/teams/verify on dp until cond holds (1s).
func (e *saasEnv) waitTeam(t *testing.T, dp *DataPlane, key string, cond func(Response) bool) Response {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		r := e.team(t, dp, "GET", "/api/teams/verify", key, nil)
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy %s: not within 1s: %d %s", dp.ID, r.Status, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitEveryProxy polls fn on every proxy until it holds, at most 1s after
// the change.
func (e *saasEnv) waitEveryProxy(t *testing.T, what string, fn func(dp *DataPlane) (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for _, dp := range e.dps {
		for {
			okNow, got := fn(dp)
			if okNow {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: proxy %s not within 1s: %s", what, dp.ID, got)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestSaaS(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		good := NewUpstream(t)
		var badHits atomic.Int64
		bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			badHits.Add(1)
			http.Error(w, `{"error":{"message":"upstream overloaded"}}`, http.StatusInternalServerError)
		}))
		t.Cleanup(bad.Close)
		// Nothing listens there: a connection error.
		dead := "http://" + FreeAddr(t)
		o.Config = saasConfig(t, good.URL, bad.URL, dead)
		cp := StartControlPlane(t, o)
		env := []string{"UPSTREAM_API_KEY=" + upstreamSecret}
		e := &saasEnv{cp: cp}
		for range 3 {
			e.dps = append(e.dps, ProxyFor(t, cp, env...))
		}
		dps := e.dps

		t.Run("health without auth on both planes", func(t *testing.T) {
			for _, u := range []string{cp.URL(), dps[0].URL()} {
				r := Do(t, "GET", u+"/health", "", nil)
				if r.Status != 200 || strings.TrimSpace(string(r.Body)) != `{"status":"healthy"}` {
					t.Fatalf("%s/health: %d %s", u, r.Status, r.Body)
				}
			}
		})

		t.Run("admin key errors", func(t *testing.T) {
			detail(t, Do(t, "POST", cp.URL()+"/api/organizations/create", "", map[string]any{"organization_id": "x", "name": "x"}),
				401, "Missing X-Admin-Key header. Admin authentication required.")
			detail(t, Do(t, "GET", cp.URL()+"/api/model-groups", "", nil, "X-Admin-Key", "sk-wrong"), 401, "Invalid admin API key")
			detail(t, Do(t, "POST", cp.URL()+"/api/teams/create", "", map[string]any{"team_id": "x"}, "X-Admin-Key", "sk-wrong"),
				401, "Invalid admin API key")
		})

		// The seed's setup: an organization, model groups, a team with
		// access_groups and credits.
		ok(t, e.admin(t, "POST", "/api/organizations/create", map[string]any{
			"organization_id": "org_acme", "name": "ACME Corp", "metadata": map[string]any{"tier": "gold"}}))
		org := ok(t, e.admin(t, "GET", "/api/organizations/org_acme", nil))
		if org["name"] != "ACME Corp" {
			t.Fatalf("organization %v", org)
		}
		ok(t, e.admin(t, "POST", "/api/model-groups/create", map[string]any{
			"group_name": "ResumeAgent", "display_name": "Resume Agent", "description": "resume parsing",
			"models": []map[string]any{{"model_name": "backup-model", "priority": 1}, {"model_name": "primary-model", "priority": 0}}}))
		ok(t, e.admin(t, "POST", "/api/model-groups/create", map[string]any{
			"group_name": "ChatAgent", "models": []map[string]any{{"model_name": "chat-model", "priority": 0}}}))
		ok(t, e.admin(t, "POST", "/api/model-groups/create", map[string]any{
			"group_name": "DeadFirst", "models": []map[string]any{{"model_name": "dead-model", "priority": 0}, {"model_name": "chat-model", "priority": 5}}}))
		ok(t, e.admin(t, "POST", "/api/model-groups/create", map[string]any{
			"group_name": "Premium", "models": []map[string]any{{"model_name": "gpt-4o-mini", "priority": 0}}}))
		g := ok(t, e.admin(t, "GET", "/api/model-groups/ResumeAgent", nil))
		if ms := g["models"].([]any); ms[0].(map[string]any)["model_name"] != "primary-model" {
			t.Fatalf("group models not in priority order: %v", g)
		}

		keyA, created := e.createTeam(t, map[string]any{
			"organization_id": "org_acme", "team_id": "acme-eng", "team_alias": "ACME Engineering",
			"access_groups": []string{"ResumeAgent", "ChatAgent"}, "credits_allocated": 3,
			"metadata": map[string]any{"department": "Engineering"}})
		if created["team_id"] != "acme-eng" || created["organization_id"] != "org_acme" || created["status"] != "active" ||
			created["credits_allocated"] != 3.0 || created["credits_remaining"] != 3.0 ||
			fmt.Sprint(created["model_groups"]) != "[ResumeAgent ChatAgent]" {
			t.Fatalf("create team response %v", created)
		}
		ok(t, e.admin(t, "PUT", "/api/teams/acme-eng/model-groups", map[string]any{"model_groups": []string{"ResumeAgent", "ChatAgent", "DeadFirst"}}))
		if m := ok(t, e.admin(t, "GET", "/api/teams/acme-eng", nil)); fmt.Sprint(m["model_groups"]) != "[ResumeAgent ChatAgent DeadFirst]" {
			t.Fatalf("create team response %v", created)
		}
		keyB, _ := e.createTeam(t, map[string]any{
			"organization_id": "org_acme", "team_id": "other-team", "model_groups": []string{"ChatAgent"}, "credits_allocated": 5})

		t.Run("the seed's create-team example", func(t *testing.T) {
			ok(t, e.admin(t, "POST", "/api/model-groups/create", map[string]any{
				"group_name": "gpt-models", "models": []map[string]any{{"model_name": "gpt-4o-mini", "priority": 0}}}))
			key, m := e.createTeam(t, map[string]any{
				"organization_id": "org_acme", "team_id": "acme-prod", "team_alias": "ACME Production",
				"access_groups": []string{"gpt-models"}, "credits_allocated": 1000})
			if m["team_id"] != "acme-prod" || m["team_alias"] != "ACME Production" || m["status"] != "active" ||
				m["credits_allocated"] != 1000.0 || m["credits_remaining"] != 1000.0 ||
				fmt.Sprint(m["access_groups"]) != "[gpt-models]" || fmt.Sprint(m["model_groups"]) != "[gpt-models]" {
				t.Fatalf("create team %v", m)
			}
			b := ok(t, e.team(t, dps[2], "GET", "/api/credits/balance?team_id=acme-prod", key, nil))
			if b["credits_remaining"] != 1000.0 || b["credits_allocated"] != 1000.0 || b["credits_used"] != 0.0 {
				t.Fatalf("balance %v", b)
			}
			if r := Do(t, "POST", dps[0].URL()+"/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 200 {
				t.Fatalf("chat: %d %s", r.Status, r.Body)
			}
		})

		t.Run("team key errors", func(t *testing.T) {
			for _, c := range []struct{ name, auth string }{
				{"missing header", ""}, {"bad format", "Basic abc"}, {"not a key", "Bearer nope"}, {"unknown key", "Bearer sk-unknown-0123456789abcdef"},
			} {
				var hdr []string
				if c.auth != "" {
					hdr = []string{"Authorization", c.auth}
				}
				r := Do(t, "POST", dps[0].URL()+"/api/jobs/create", "", map[string]any{"team_id": "acme-eng", "job_type": "x"}, hdr...)
				detail(t, r, 401, "Invalid or missing API key")
			}
			detail(t, e.team(t, dps[1], "GET", "/api/teams/verify", "", nil), 401, "Invalid or missing API key")
		})

		t.Run("team views from the proxy", func(t *testing.T) {
			v := ok(t, e.team(t, dps[0], "GET", "/api/teams/verify", keyA, nil))
			if v["team_id"] != "acme-eng" || v["status"] != "active" {
				t.Fatalf("verify %v", v)
			}
			tm := ok(t, e.team(t, dps[1], "GET", "/api/teams/acme-eng", keyA, nil))
			if tm["status"] != "active" || tm["credits_remaining"] != 3.0 || !strings.HasPrefix(tm["virtual_key"].(string), "sk-...") {
				t.Fatalf("team %v", tm)
			}
			ok(t, e.admin(t, "GET", "/api/teams/acme-eng", nil))
			// The admin key on a proxy too (checked by the control plane).
			ar := Do(t, "GET", dps[1].URL()+"/api/teams/acme-eng", "", nil, "X-Admin-Key", cp.MasterKey)
			e.keep(ar)
			if m := ok(t, ar); m["status"] != "active" || m["credits_remaining"] != 3.0 {
				t.Fatalf("admin GET team on a proxy: %v", m)
			}
			detail(t, Do(t, "GET", dps[1].URL()+"/api/teams/acme-eng", "", nil, "X-Admin-Key", "sk-wrong"), 401, "Invalid admin API key")
			b := ok(t, e.team(t, dps[2], "GET", "/api/credits/teams/acme-eng/balance", keyA, nil))
			b2 := ok(t, e.team(t, dps[2], "GET", "/api/credits/balance?team_id=acme-eng", keyA, nil))
			if b["credits_remaining"] != 3.0 || b2["credits_remaining"] != 3.0 {
				t.Fatalf("balance %v %v", b, b2)
			}
			c := ok(t, e.team(t, dps[0], "POST", "/api/credits/teams/acme-eng/check", keyA, map[string]any{"credits_needed": 2}))
			if c["has_credits"] != true {
				t.Fatalf("check %v", c)
			}
		})

		var jobID string
		t.Run("job lifecycle over three proxies with fallback, credit applied once", func(t *testing.T) {
			j := ok(t, e.team(t, dps[0], "POST", "/api/jobs/create", keyA, map[string]any{
				"team_id": "acme-eng", "user_id": "u1", "job_type": "resume_analysis", "metadata": map[string]any{"doc": 1}}))
			jobID, _ = j["job_id"].(string)
			if len(jobID) != 36 || j["status"] != "pending" || j["created_at"] == nil {
				t.Fatalf("job %v", j)
			}
			before := badHits.Load()
			c1 := ok(t, e.team(t, dps[1], "POST", "/api/jobs/"+jobID+"/llm-call", keyA, map[string]any{
				"model_group": "ResumeAgent", "messages": []map[string]any{{"role": "user", "content": "parse"}},
				"purpose": "parse", "temperature": 0.3, "max_tokens": 100}))
			if badHits.Load() == before {
				t.Fatal("the first model of the group was not tried")
			}
			resp := c1["response"].(map[string]any)
			md := c1["metadata"].(map[string]any)
			if resp["content"] != "Hello from upstream" || resp["finish_reason"] != "stop" || md["tokens_used"] != 15.0 ||
				md["model_group"] != "ResumeAgent" || md["latency_ms"] == nil || c1["call_id"] == "" {
				t.Fatalf("llm-call %v", c1)
			}
			if strings.Contains(string(mustJSON(c1)), "model\"") && strings.Contains(string(mustJSON(c1)), "backup-model") {
				t.Fatalf("llm-call exposes the model: %v", c1)
			}
			if last := good.Last(t); last.Body["model"] != "backup-model" {
				t.Fatalf("fallback went to %v", last.Body["model"])
			}
			// Streaming variant through a third proxy.
			r := e.team(t, dps[2], "POST", "/api/jobs/"+jobID+"/llm-call-stream", keyA, map[string]any{
				"model_group": "ChatAgent", "messages": []map[string]any{{"role": "user", "content": "hi"}}})
			if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("stream: %d %s", r.Status, r.Body)
			}
			if d := SSEData(r.Body); len(d) < 4 || d[len(d)-1] != "[DONE]" || !strings.Contains(d[0], `"model":"ChatAgent"`) {
				t.Fatalf("stream data %v", d)
			}
			if strings.Contains(string(r.Body), "chat-model") || r.Header.Get("X-Litellm-Model-Id") != "" {
				t.Fatalf("stream exposes the model: %v %s", r.Header, r.Body)
			}
			// Completed on another proxy: counts every call made before.
			done := ok(t, e.team(t, dps[0], "POST", "/api/jobs/"+jobID+"/complete", keyA, map[string]any{
				"status": "completed", "metadata": map[string]any{"result": "ok"}}))
			costs := done["costs"].(map[string]any)
			if done["status"] != "completed" || costs["total_calls"] != 2.0 || costs["successful_calls"] != 2.0 ||
				costs["failed_calls"] != 0.0 || costs["credit_applied"] != true || costs["credits_remaining"] != 2.0 ||
				costs["total_attempts"] != 3.0 || costs["total_tokens"] != 30.0 || len(done["calls"].([]any)) != 2 {
				t.Fatalf("complete %s", mustJSON(done))
			}
			// Again, on every proxy at once: nothing changes.
			var wg sync.WaitGroup
			for _, dp := range dps {
				wg.Go(func() {
					r := Do(t, "POST", dp.URL()+"/api/jobs/"+jobID+"/complete", keyA, map[string]any{"status": "completed"})
					var m map[string]any
					_ = json.Unmarshal(r.Body, &m)
					c, _ := m["costs"].(map[string]any)
					if r.Status != 200 || c["credits_remaining"] != 2.0 || c["credit_applied"] != true {
						t.Errorf("repeated complete on %s: %d %s", dp.ID, r.Status, r.Body)
					}
				})
			}
			wg.Wait()
			e.waitEveryProxy(t, "balance after the credit", func(dp *DataPlane) (bool, string) {
				r := e.team(t, dp, "GET", "/api/credits/teams/acme-eng/balance", keyA, nil)
				return r.Status == 200 && r.JSON(t)["credits_remaining"] == 2.0, string(r.Body)
			})
			txs := ok(t, e.team(t, dps[2], "GET", "/api/credits/teams/acme-eng/transactions", keyA, nil))
			list := txs["transactions"].([]any)
			if len(list) != 2 {
				t.Fatalf("transactions %s", mustJSON(txs))
			}
			ded, alloc := list[0].(map[string]any), list[1].(map[string]any)
			if ded["transaction_type"] != "deduction" || ded["balance_after"] != 2.0 || ded["job_id"] != jobID ||
				alloc["transaction_type"] != "allocation" || alloc["balance_after"] != 3.0 {
				t.Fatalf("transactions %s", mustJSON(txs))
			}
			got := ok(t, e.team(t, dps[1], "GET", "/api/jobs/"+jobID, keyA, nil))
			if got["status"] != "completed" || got["credit_applied"] != true {
				t.Fatalf("job %v", got)
			}
			jobs := ok(t, e.team(t, dps[2], "GET", "/api/teams/acme-eng/jobs", keyA, nil))
			if jobs["total"] != 1.0 {
				t.Fatalf("jobs %v", jobs)
			}
		})

		t.Run("fallback on a connection error", func(t *testing.T) {
			j := ok(t, e.team(t, dps[1], "POST", "/api/jobs/create", keyA, map[string]any{"job_type": "x"}))
			id := j["job_id"].(string)
			e.waitEveryProxy(t, "DeadFirst assigned", func(dp *DataPlane) (bool, string) {
				r := e.team(t, dp, "GET", "/api/teams/verify", keyA, nil)
				return strings.Contains(string(r.Body), "DeadFirst"), string(r.Body)
			})
			c := ok(t, e.team(t, dps[2], "POST", "/api/jobs/"+id+"/llm-call", keyA, map[string]any{
				"model_group": "DeadFirst", "messages": []map[string]any{{"role": "user", "content": "hi"}}}))
			if c["response"].(map[string]any)["content"] != "Hello from upstream" {
				t.Fatalf("llm-call %v", c)
			}
			got := ok(t, e.team(t, dps[0], "GET", "/api/jobs/"+id, keyA, nil))
			calls := got["calls"].([]any)
			if len(calls) != 1 || calls[0].(map[string]any)["attempts"] != 2.0 || calls[0].(map[string]any)["error"] != nil {
				t.Fatalf("job %s", mustJSON(got))
			}
			ok(t, e.team(t, dps[0], "POST", "/api/jobs/"+id+"/complete", keyA, map[string]any{"status": "failed"}))
		})

		t.Run("failed job costs nothing", func(t *testing.T) {
			j := ok(t, e.team(t, dps[1], "POST", "/api/jobs/create", keyA, map[string]any{"team_id": "acme-eng", "job_type": "x"}))
			id := j["job_id"].(string)
			ok(t, e.team(t, dps[2], "POST", "/api/jobs/"+id+"/llm-call", keyA, map[string]any{
				"model_group": "ChatAgent", "messages": []map[string]any{{"role": "user", "content": "hi"}}}))
			done := ok(t, e.team(t, dps[0], "POST", "/api/jobs/"+id+"/complete", keyA, map[string]any{"status": "failed", "error_message": "bad input"}))
			if c := done["costs"].(map[string]any); c["credit_applied"] != false || c["credits_remaining"] != 2.0 {
				t.Fatalf("failed job %s", mustJSON(done))
			}
		})

		t.Run("model access", func(t *testing.T) {
			j := ok(t, e.team(t, dps[0], "POST", "/api/jobs/create", keyA, map[string]any{"job_type": "x"}))
			detail(t, e.team(t, dps[0], "POST", "/api/jobs/"+j["job_id"].(string)+"/llm-call", keyA, map[string]any{
				"model_group": "Premium", "messages": []map[string]any{{"role": "user", "content": "hi"}}}),
				403, "Team does not have access to the requested model")
			// The team key on /chat/completions: its groups' models only.
			if r := Do(t, "POST", dps[1].URL()+"/chat/completions", keyA, chat("chat-model", "")); r.Status != 200 {
				t.Fatalf("chat with a group model: %d %s", r.Status, r.Body)
			}
			if r := Do(t, "POST", dps[1].URL()+"/chat/completions", keyA, chat("gpt-4o-mini", "")); r.Status == 200 {
				t.Fatalf("chat with a model outside the groups admitted")
			}
			// A group as the model: its models in priority order, with
			// fallback (primary-model fails, backup-model answers).
			before := badHits.Load()
			r := Do(t, "POST", dps[2].URL()+"/v1/chat/completions", keyA, chat("ResumeAgent", ""))
			if r.Status != 200 || badHits.Load() == before || good.Last(t).Body["model"] != "backup-model" {
				t.Fatalf("chat with a model group: %d %s", r.Status, r.Body)
			}
			r = Do(t, "POST", dps[0].URL()+"/chat/completions", keyA, chat("ChatAgent", `,"stream":true`))
			if r.Status != 200 || !strings.Contains(string(r.Body), "[DONE]") {
				t.Fatalf("streamed chat with a model group: %d %s", r.Status, r.Body)
			}
			if r := Do(t, "POST", dps[0].URL()+"/chat/completions", keyA, chat("Premium", "")); r.Status == 200 {
				t.Fatalf("chat with a group the team does not have admitted")
			}
		})

		t.Run("cross-team access refused", func(t *testing.T) {
			for _, c := range []struct{ method, path string }{
				{"GET", "/api/teams/acme-eng"}, {"GET", "/api/credits/teams/acme-eng/balance"},
				{"GET", "/api/credits/balance?team_id=acme-eng"}, {"GET", "/api/credits/teams/acme-eng/transactions"},
				{"GET", "/api/teams/acme-eng/jobs"}, {"GET", "/api/jobs/" + jobID},
				{"POST", "/api/jobs/" + jobID + "/complete"}, {"POST", "/api/jobs/" + jobID + "/llm-call"},
			} {
				r := e.team(t, dps[0], c.method, c.path, keyB, map[string]any{"status": "failed",
					"model_group": "ChatAgent", "messages": []map[string]any{{"role": "user", "content": "x"}}})
				if r.Status != 403 || strings.Contains(string(r.Body), "acme") || strings.Contains(string(r.Body), "credits") {
					t.Fatalf("%s %s with another team's key: %d %s", c.method, c.path, r.Status, r.Body)
				}
			}
			r := e.team(t, dps[0], "POST", "/api/jobs/create", keyB, map[string]any{"team_id": "acme-eng", "job_type": "x"})
			if r.Status != 403 {
				t.Fatalf("job for another team: %d %s", r.Status, r.Body)
			}
			if j := ok(t, e.team(t, dps[0], "GET", "/api/jobs/"+jobID, keyA, nil)); j["status"] != "completed" {
				t.Fatalf("another team's complete changed the job: %v", j)
			}
		})

		refused := func(key string, want bool) func(dp *DataPlane) (bool, string) {
			return func(dp *DataPlane) (bool, string) {
				r := e.team(t, dp, "POST", "/api/jobs/create", key, map[string]any{"job_type": "x"})
				c := Do(t, "POST", dp.URL()+"/chat/completions", key, chat("chat-model", ""))
				if want {
					return r.Status == 403 && r.JSON(t)["detail"] == "Team suspended or insufficient credits" && c.Status == 403,
						fmt.Sprintf("%d %s / %d %s", r.Status, r.Body, c.Status, c.Body)
				}
				return r.Status == 200 && c.Status == 200, fmt.Sprintf("%d %s / %d %s", r.Status, r.Body, c.Status, c.Body)
			}
		}

		t.Run("suspend, pause and resume on every proxy", func(t *testing.T) {
			for i, action := range []string{"suspend", "pause", "suspend"} {
				method := "PUT"
				if i == 2 {
					method = "POST" // the dashboard's form
				}
				s := ok(t, e.admin(t, method, "/api/teams/acme-eng/"+action, nil))
				e.waitEveryProxy(t, action, refused(keyA, true))
				v := ok(t, e.team(t, dps[2], "GET", "/api/teams/acme-eng", keyA, nil))
				if v["status"] != s["status"] {
					t.Fatalf("status after %s: %v", action, v)
				}
				ok(t, e.admin(t, method, "/api/teams/acme-eng/resume", nil))
				e.waitEveryProxy(t, "resume after "+action, refused(keyA, false))
			}
		})

		t.Run("zero credits on every proxy, then credits added", func(t *testing.T) {
			keyC, _ := e.createTeam(t, map[string]any{"organization_id": "org_acme", "team_id": "one-credit",
				"model_groups": []string{"ChatAgent"}, "credits_allocated": 1})
			// Three jobs completed at once on three proxies with one credit
			// left: exactly one takes it.
			var ids []string
			for i := range 3 {
				j := ok(t, e.team(t, dps[i], "POST", "/api/jobs/create", keyC, map[string]any{"job_type": "x"}))
				ids = append(ids, j["job_id"].(string))
			}
			var applied atomic.Int64
			var wg sync.WaitGroup
			for i, id := range ids {
				wg.Go(func() {
					r := Do(t, "POST", dps[(i+1)%3].URL()+"/api/jobs/"+id+"/complete", keyC, map[string]any{"status": "completed"})
					var m map[string]any
					_ = json.Unmarshal(r.Body, &m)
					if c, _ := m["costs"].(map[string]any); r.Status != 200 {
						t.Errorf("complete: %d %s", r.Status, r.Body)
					} else if c["credit_applied"] == true {
						applied.Add(1)
					}
				})
			}
			wg.Wait()
			if applied.Load() != 1 {
				t.Fatalf("%d credits applied from one", applied.Load())
			}
			e.waitEveryProxy(t, "zero credits", refused(keyC, true))
			add := ok(t, e.admin(t, "POST", "/api/credits/teams/one-credit/add", map[string]any{"credits_amount": 2, "reason": "top-up"}))
			if add["credits_remaining"] != 2.0 {
				t.Fatalf("add %v", add)
			}
			// The LiteLLM-side budget follows the credits: 3 allocated × $0.10.
			ti := Do(t, "GET", cp.URL()+"/team/info?team_id=one-credit", cp.MasterKey, nil)
			e.keep(ti)
			if ti.Status != 200 || !strings.Contains(string(ti.Body), `"max_budget":0.3`) {
				t.Fatalf("team info: %d %s", ti.Status, ti.Body)
			}
			e.waitEveryProxy(t, "credits added", refused(keyC, false))
		})

		t.Run("no plaintext key on any GET", func(t *testing.T) {
			ok(t, e.admin(t, "GET", "/api/organizations/org_acme/teams", nil))
			ok(t, e.admin(t, "GET", "/api/organizations/org_acme/usage?period="+time.Now().UTC().Format("2006-01"), nil))
			if r := e.admin(t, "GET", "/api/model-groups", nil); r.Status != 200 || !strings.HasPrefix(string(r.Body), "[") {
				t.Fatalf("model groups: %d %s", r.Status, r.Body)
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			for _, b := range e.getBodies {
				for _, s := range append(e.secrets, cp.MasterKey, cp.SyncToken) {
					if strings.Contains(string(b), s) {
						t.Fatalf("a GET returned a plaintext key: %s", b)
					}
				}
			}
			if len(e.getBodies) < 20 {
				t.Fatalf("only %d GETs checked", len(e.getBodies))
			}
		})
	})
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// TestSaaSCreditsNotBudget (issue 17): a SaaS team with credits left is
// never refused on llm-call for budget reasons, even when its calls cost
// more than its LiteLLM-side budget (credits_allocated × --credit-usd, here
// one call's worth per credit); it is refused with SaaS LiteLLM's detail
// once its credits are gone. A job spread over three proxies.
func TestSaaSCreditsNotBudget(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		good := NewUpstream(t)
		o.Config = saasConfig(t, good.URL, good.URL, "http://"+FreeAddr(t))
		o.Env = append(o.Env, "TOLLGATE_CREDIT_USD=0.00002") // 20 micro-USD: one backup-model call
		cp := StartControlPlane(t, o)
		e := &saasEnv{cp: cp}
		for range 3 {
			e.dps = append(e.dps, ProxyFor(t, cp, "UPSTREAM_API_KEY="+upstreamSecret))
		}
		ok(t, e.admin(t, "POST", "/api/organizations/create", map[string]any{"organization_id": "org_c", "name": "C"}))
		ok(t, e.admin(t, "POST", "/api/model-groups/create", map[string]any{
			"group_name": "Priced", "models": []map[string]any{{"model_name": "backup-model", "priority": 0}}}))
		key, _ := e.createTeam(t, map[string]any{"organization_id": "org_c", "team_id": "credits-2",
			"model_groups": []string{"Priced"}, "credits_allocated": 2})
		call := func(dp *DataPlane, job string) Response {
			return e.team(t, dp, "POST", "/api/jobs/"+job+"/llm-call", key, map[string]any{
				"model_group": "Priced", "messages": []map[string]any{{"role": "user", "content": "hi"}}})
		}
		job := func(dp *DataPlane) string {
			return ok(t, e.team(t, dp, "POST", "/api/jobs/create", key, map[string]any{"job_type": "x"}))["job_id"].(string)
		}
		// Job 1: six calls over three proxies, 120 micro-USD against a
		// budget of 40, each sent as the previous one answered.
		j1 := job(e.dps[0])
		for i := range 6 {
			if r := call(e.dps[i%3], j1); r.Status != 200 {
				t.Fatalf("call %d of job 1 with 2 credits left: %d %s", i, r.Status, r.Body)
			}
		}
		ok(t, e.team(t, e.dps[1], "POST", "/api/jobs/"+j1+"/complete", key, map[string]any{"status": "completed"}))
		// Job 2 with the last credit; job 3 created while it remains.
		j2, j3 := job(e.dps[1]), job(e.dps[2])
		for i := range 3 {
			if r := call(e.dps[i%3], j2); r.Status != 200 {
				t.Fatalf("call %d of job 2 with 1 credit left: %d %s", i, r.Status, r.Body)
			}
		}
		c := ok(t, e.team(t, e.dps[2], "POST", "/api/jobs/"+j2+"/complete", key, map[string]any{"status": "completed"}))
		if costs := c["costs"].(map[string]any); costs["credits_remaining"] != 0.0 {
			t.Fatalf("after two jobs: %v", costs)
		}
		e.waitEveryProxy(t, "credits gone", func(dp *DataPlane) (bool, string) {
			r := call(dp, j3)
			var m map[string]any
			_ = json.Unmarshal(r.Body, &m)
			return r.Status == 403 && m["detail"] == "Team suspended or insufficient credits", string(r.Body)
		})
	})
}
