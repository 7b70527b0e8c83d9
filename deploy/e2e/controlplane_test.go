package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// backends runs fn once against the embedded store and once against Postgres.
func backends(t *testing.T, fn func(t *testing.T, o CPOptions)) {
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		fn(t, CPOptions{})
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		fn(t, CPOptions{DatabaseURL: PostgresURL(t)})
	})
}

// envelope asserts the LiteLLM error envelope with the given status.
func envelope(t *testing.T, r Response, status int) map[string]any {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
	}
	m := r.JSON(t)
	e, ok := m["error"].(map[string]any)
	if !ok || len(m) != 1 {
		t.Fatalf("not an error envelope: %s", r.Body)
	}
	if _, ok := e["message"].(string); !ok {
		t.Fatalf("envelope without message: %s", r.Body)
	}
	if _, ok := e["type"].(string); !ok {
		t.Fatalf("envelope without type: %s", r.Body)
	}
	if e["code"] != fmt.Sprint(status) {
		t.Fatalf("envelope code %v, want %q: %s", e["code"], fmt.Sprint(status), r.Body)
	}
	return e
}

func keyCount(t *testing.T, cp *ControlPlane) float64 {
	t.Helper()
	r := Do(t, "GET", cp.URL()+"/key/list", cp.MasterKey, nil)
	if r.Status != 200 {
		t.Fatalf("key/list: %d %s", r.Status, r.Body)
	}
	return r.JSON(t)["total_count"].(float64)
}

func ok(t *testing.T, r Response) map[string]any {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	return r.JSON(t)
}

func TestHealthAndAuth(t *testing.T) {
	t.Parallel()
	cp := StartControlPlane(t, CPOptions{})
	r := Do(t, "GET", cp.URL()+"/health", "", nil)
	if r.Status != 200 || strings.TrimSpace(string(r.Body)) != `{"status":"healthy"}` {
		t.Fatalf("health: %d %s", r.Status, r.Body)
	}
	envelope(t, Do(t, "GET", cp.URL()+"/key/list", "", nil), 401)
	envelope(t, Do(t, "GET", cp.URL()+"/key/list", "sk-wrong", nil), 401)
	envelope(t, Do(t, "GET", cp.URL()+"/key/list", cp.MasterKey+"x", nil), 401)
	envelope(t, Do(t, "GET", cp.URL()+"/key/list", strings.ToUpper(cp.MasterKey), nil), 401)
	if r := Do(t, "GET", cp.URL()+"/key/list", "", nil, "X-Admin-Key", cp.MasterKey); r.Status != 200 {
		t.Fatalf("X-Admin-Key: %d %s", r.Status, r.Body)
	}
	envelope(t, Do(t, "GET", cp.URL()+"/no/such/route", cp.MasterKey, nil), 404)
	if r := Do(t, "GET", cp.URL()+"/openapi.json", "", nil); r.Status != 200 || !bytes.Contains(r.Body, []byte("/key/generate")) {
		t.Fatalf("openapi: %d", r.Status)
	}
}

func TestMasterKeyRequired(t *testing.T) {
	t.Parallel()
	bin := Binary(t, "controlplane")
	cmd := exec.Command(bin, "--data-dir", t.TempDir(), "--http-addr", FreeAddr(t), "--grpc-addr", FreeAddr(t))
	cmd.Env = append(os.Environ(), "TOLLGATE_MASTER_KEY=")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "master key") {
		t.Fatalf("expected refusal naming the master key, got err=%v out=%s", err, out)
	}
}

func TestKeyLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		var plaintexts []string

		// The LiteLLM docs' first example.
		g := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"models": ["gpt-3.5-turbo", "gpt-4"], "metadata": {"user": "ishaan@berri.ai"}}`))
		key := g["key"].(string)
		plaintexts = append(plaintexts, key)
		if !strings.HasPrefix(key, "sk-") || len(key) < 3+22 {
			t.Fatalf("key %q", key)
		}
		if g["expires"] != nil {
			t.Fatalf("expires should be null: %v", g["expires"])
		}
		if g["key_name"] != "sk-..."+key[len(key)-4:] {
			t.Fatalf("key_name %v", g["key_name"])
		}
		if g["token_id"] == "" || g["token_id"] == nil {
			t.Fatal("no token_id")
		}
		if md := g["metadata"].(map[string]any); md["user"] != "ishaan@berri.ai" {
			t.Fatalf("metadata %v", md)
		}

		// Duration, budgets and limits.
		g2 := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"duration": "20m", "key_alias": "alias-1", "max_budget": 10, "soft_budget": 5, "budget_duration": "30d", "rpm_limit": 100, "tpm_limit": 1000, "max_parallel_requests": 4, "model_max_budget": {"gpt-4": {"budget_limit": 1.5, "time_period": "1d"}}, "model_rpm_limit": {"gpt-4": 5}, "tags": ["a"], "enforced_params": ["user"], "allowed_routes": ["/chat/completions"]}`))
		plaintexts = append(plaintexts, g2["key"].(string))
		exp, err := time.Parse(time.RFC3339Nano, g2["expires"].(string))
		if err != nil || exp.Before(time.Now().Add(19*time.Minute)) || exp.After(time.Now().Add(21*time.Minute)) {
			t.Fatalf("expires %v (%v)", g2["expires"], err)
		}
		if g2["max_budget"] != 10.0 || g2["rpm_limit"] != 100.0 || g2["budget_reset_at"] == nil {
			t.Fatalf("limits not echoed: %s", Do(t, "GET", u+"/key/info?key="+g2["key"].(string), mk, nil).Body)
		}

		// A caller-chosen key.
		own := "sk-my-own-key-" + RandomKey()[3:]
		g3 := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"key": own}))
		plaintexts = append(plaintexts, own)
		if g3["key"] != own {
			t.Fatalf("chosen key not used: %v", g3["key"])
		}

		// Bad input: a 4xx in the envelope and nothing stored.
		before := keyCount(t, cp)
		bad := []struct {
			body   string
			status int
		}{
			{`{"key": "` + own + `"}`, 400},
			{`{"key": "not-sk-prefixed"}`, 400},
			{`{"key_alias": "alias-1"}`, 400},
			{`{"max_budget": -1}`, 400},
			{`{"max_budget": "NaN"}`, 400},
			{`{"max_budget": "Infinity"}`, 400},
			{`{"soft_budget": -0.5}`, 400},
			{`{"rpm_limit": -5}`, 400},
			{`{"tpm_limit": -1}`, 400},
			{`{"max_parallel_requests": -1}`, 400},
			{`{"model_rpm_limit": {"gpt-4": -1}}`, 400},
			{`{"model_max_budget": {"gpt-4": {"budget_limit": -2}}}`, 400},
			{`{"team_id": "no-such-team"}`, 400},
			{`{"organization_id": "no-such-org"}`, 400},
			{`{"duration": "10x"}`, 400},
			{`{"duration": "-5d"}`, 400},
			{`{"budget_duration": "soon"}`, 400},
			{`{"models": "gpt-4"}`, 400},
			{`{`, 400},
			{`[1,2]`, 400},
			{`{"metadata": "x"}`, 400},
			{`{"auto_rotate": true}`, 400},
		}
		for _, b := range bad {
			envelope(t, Do(t, "POST", u+"/key/generate", mk, b.body), b.status)
		}
		huge := `{"metadata": {"x": "` + strings.Repeat("a", 2<<20) + `"}}`
		envelope(t, Do(t, "POST", u+"/key/generate", mk, huge), 413)
		if after := keyCount(t, cp); after != before {
			t.Fatalf("bad input changed state: %v keys → %v", before, after)
		}

		// Info by plaintext and by token id; never the plaintext or the hash.
		info := ok(t, Do(t, "GET", u+"/key/info?key="+g2["key"].(string)+"&unknown_param=1", mk, nil))
		inf := info["info"].(map[string]any)
		if inf["key_alias"] != "alias-1" || inf["token_id"] != g2["token_id"] {
			t.Fatalf("info: %v", info)
		}
		ok(t, Do(t, "GET", u+"/key/info?key="+g2["token_id"].(string), mk, nil))
		envelope(t, Do(t, "GET", u+"/key/info?key=sk-unknown-key-123", mk, nil), 404)

		// List: pagination and filters.
		l := ok(t, Do(t, "GET", u+"/key/list?page=1&size=2", mk, nil))
		if len(l["keys"].([]any)) != 2 || l["total_count"] != 3.0 || l["total_pages"] != 2.0 {
			t.Fatalf("list page 1: %v", l)
		}
		l2 := ok(t, Do(t, "GET", u+"/key/list?page=2&size=2", mk, nil))
		if len(l2["keys"].([]any)) != 1 {
			t.Fatalf("list page 2: %v", l2)
		}
		la := ok(t, Do(t, "GET", u+"/key/list?key_alias=alias-1&return_full_object=true", mk, nil))
		if la["total_count"] != 1.0 {
			t.Fatalf("alias filter: %v", la)
		}

		// Update.
		up := ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": g["key"], "max_budget": 3.5, "models": []string{"gpt-4"}}))
		if up["max_budget"] != 3.5 || len(up["models"].([]any)) != 1 {
			t.Fatalf("update: %v", up)
		}
		envelope(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": "sk-nope-nope", "max_budget": 1}), 404)
		envelope(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": g["key"], "max_budget": -1}), 400)

		// Block and unblock.
		if b := ok(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": g["key"]})); b["blocked"] != true {
			t.Fatalf("block: %v", b)
		}
		if b := ok(t, Do(t, "POST", u+"/key/unblock", mk, map[string]any{"key": g["key"]})); b["blocked"] != false {
			t.Fatalf("unblock: %v", b)
		}
		envelope(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": mk}), 403)

		// Regenerate: new secret, same record, old secret gone.
		rg := ok(t, Do(t, "POST", u+"/key/regenerate", mk, map[string]any{"key": g2["key"]}))
		newKey := rg["key"].(string)
		plaintexts = append(plaintexts, newKey)
		if newKey == g2["key"] || rg["token_id"] != g2["token_id"] || rg["key_alias"] != "alias-1" || rg["max_budget"] != 10.0 {
			t.Fatalf("regenerate: %v", rg)
		}
		envelope(t, Do(t, "GET", u+"/key/info?key="+g2["key"].(string), mk, nil), 404)
		ok(t, Do(t, "GET", u+"/key/info?key="+newKey, mk, nil))
		rg2 := ok(t, Do(t, "POST", u+"/key/"+newKey+"/regenerate", mk, `{}`))
		plaintexts = append(plaintexts, rg2["key"].(string))
		envelope(t, Do(t, "GET", u+"/key/info?key="+newKey, mk, nil), 404)

		// Delete by key and by alias.
		d := ok(t, Do(t, "POST", u+"/key/delete", mk, map[string]any{"keys": []any{g["key"]}}))
		if len(d["deleted_keys"].([]any)) != 1 {
			t.Fatalf("delete: %v", d)
		}
		envelope(t, Do(t, "GET", u+"/key/info?key="+g["key"].(string), mk, nil), 404)
		ok(t, Do(t, "POST", u+"/key/delete", mk, map[string]any{"key_aliases": []string{"alias-1"}}))
		envelope(t, Do(t, "GET", u+"/key/info?key="+rg2["key"].(string), mk, nil), 404)
		envelope(t, Do(t, "POST", u+"/key/delete", mk, map[string]any{"keys": []string{"sk-never-existed"}}), 404)

		// Restart keeps everything; the store never holds a plaintext key.
		cp.Stop()
		cp2 := StartControlPlane(t, cp.Options())
		ok(t, Do(t, "GET", cp2.URL()+"/key/info?key="+own, mk, nil))
		if n := keyCount(t, cp2); n != 1 {
			t.Fatalf("after restart %v keys, want 1", n)
		}
		cp2.Stop()
		assertNoPlaintext(t, cp, plaintexts)
	})
}

// assertNoPlaintext searches the whole store (the bbolt file or a pg_dump)
// for any of the plaintext keys.
func assertNoPlaintext(t *testing.T, cp *ControlPlane, plaintexts []string) {
	t.Helper()
	var dump []byte
	if cp.DatabaseURL != "" {
		out, err := exec.Command("pg_dump", "--data-only", cp.DatabaseURL).Output()
		if err != nil {
			t.Fatalf("pg_dump: %v", err)
		}
		dump = out
	} else {
		err := filepath.Walk(cp.DataDir, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			dump = append(dump, b...)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(dump) == 0 {
		t.Fatal("empty dump")
	}
	for _, k := range plaintexts {
		if bytes.Contains(dump, []byte(k)) || bytes.Contains(dump, []byte(k[3:])) {
			t.Fatalf("the store holds a plaintext key")
		}
	}
}

func TestServiceAccountsTeamsUsersOrgs(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey

		org := ok(t, Do(t, "POST", u+"/organization/new", mk, `{"organization_alias": "acme"}`))
		orgID := org["organization_id"].(string)
		envelope(t, Do(t, "POST", u+"/organization/new", mk, `{}`), 400)
		team := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_id": "my-unique-team", "team_alias": "Unique", "organization_id": orgID, "max_budget": 100}))
		if team["team_id"] != "my-unique-team" || team["organization_id"] != orgID {
			t.Fatalf("team: %v", team)
		}
		envelope(t, Do(t, "POST", u+"/team/new", mk, `{"team_id": "my-unique-team"}`), 400)
		envelope(t, Do(t, "POST", u+"/team/new", mk, `{"organization_id": "nope"}`), 400)

		// The LiteLLM docs' service-account example.
		sa := ok(t, Do(t, "POST", u+"/key/service-account/generate", mk, `{"team_id": "my-unique-team"}`))
		if sa["team_id"] != "my-unique-team" || (sa["user_id"] != nil && sa["user_id"] != "") || sa["service_account"] != true {
			t.Fatalf("service account key: %v", sa)
		}
		if sa["organization_id"] != orgID {
			t.Fatalf("service account key did not inherit the team's org: %v", sa)
		}
		before := keyCount(t, cp)
		envelope(t, Do(t, "POST", u+"/key/service-account/generate", mk, `{}`), 400)
		envelope(t, Do(t, "POST", u+"/key/service-account/generate", mk, `{"team_id": "ghost"}`), 400)
		if keyCount(t, cp) != before {
			t.Fatal("refused service-account call stored a key")
		}

		// Users with personal and team keys.
		usr := ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id": "u1", "user_role": "internal_user", "max_budget": 5}`))
		if !strings.HasPrefix(usr["key"].(string), "sk-") {
			t.Fatalf("user/new should auto-create a key: %v", usr)
		}
		envelope(t, Do(t, "POST", u+"/user/new", mk, `{"user_id": "u2", "user_role": "superuser"}`), 400)
		ok(t, Do(t, "POST", u+"/team/member_add", mk, `{"team_id": "my-unique-team", "member": {"user_id": "u1", "role": "admin"}}`))
		envelope(t, Do(t, "POST", u+"/team/member_add", mk, `{"team_id": "my-unique-team", "member": {"user_id": "u1", "role": "admin"}}`), 400)
		envelope(t, Do(t, "POST", u+"/team/member_add", mk, `{"team_id": "my-unique-team", "member": {"user_id": "u3", "role": "owner"}}`), 400)
		mu := ok(t, Do(t, "POST", u+"/team/member_update", mk, `{"team_id": "my-unique-team", "user_id": "u1", "role": "user", "max_budget_in_team": 2}`))
		if mu["role"] != "user" || mu["max_budget_in_team"] != 2.0 {
			t.Fatalf("member_update: %v", mu)
		}
		tk := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"user_id": "u1", "team_id": "my-unique-team"}`))
		ti := ok(t, Do(t, "GET", u+"/team/info?team_id=my-unique-team", mk, nil))
		// u1 and default_user_id, the master key's stand-in that /team/new
		// made the team's admin (LiteLLM's behaviour).
		if len(ti["keys"].([]any)) != 2 || len(ti["team_info"].(map[string]any)["members_with_roles"].([]any)) != 2 {
			t.Fatalf("team/info: %s", Do(t, "GET", u+"/team/info?team_id=my-unique-team", mk, nil).Body)
		}
		ui := ok(t, Do(t, "GET", u+"/user/info?user_id=u1", mk, nil))
		if len(ui["keys"].([]any)) != 2 || len(ui["teams"].([]any)) != 1 {
			t.Fatalf("user/info: %v", ui)
		}
		tl := Do(t, "GET", u+"/team/list", mk, nil)
		if tl.Status != 200 || !bytes.HasPrefix(bytes.TrimSpace(tl.Body), []byte("[")) {
			t.Fatalf("team/list should be a JSON list: %d %s", tl.Status, tl.Body)
		}
		ul := ok(t, Do(t, "GET", u+"/user/list?page=1&page_size=10", mk, nil))
		if ul["total"] != 1.0 {
			t.Fatalf("user/list: %v", ul)
		}
		oi := ok(t, Do(t, "GET", u+"/organization/info?organization_id="+orgID, mk, nil))
		if len(oi["teams"].([]any)) != 1 {
			t.Fatalf("organization/info: %v", oi)
		}

		// Deleting the user deletes its keys, never the team's service account.
		ok(t, Do(t, "POST", u+"/user/delete", mk, `{"user_ids": ["u1"]}`))
		envelope(t, Do(t, "GET", u+"/key/info?key="+usr["key"].(string), mk, nil), 404)
		envelope(t, Do(t, "GET", u+"/key/info?key="+tk["key"].(string), mk, nil), 404)
		ok(t, Do(t, "GET", u+"/key/info?key="+sa["key"].(string), mk, nil))
		ti = ok(t, Do(t, "GET", u+"/team/info?team_id=my-unique-team", mk, nil))
		if n := len(ti["team_info"].(map[string]any)["members_with_roles"].([]any)); n != 1 { // default_user_id stays
			t.Fatalf("deleted user still a member: %v", ti)
		}
		envelope(t, Do(t, "POST", u+"/user/delete", mk, `{"user_ids": ["u1"]}`), 404)

		// Block a team; delete it with its keys.
		if b := ok(t, Do(t, "POST", u+"/team/block", mk, `{"team_id": "my-unique-team"}`)); b["blocked"] != true {
			t.Fatalf("team/block: %v", b)
		}
		ok(t, Do(t, "POST", u+"/team/delete", mk, `{"team_ids": ["my-unique-team"]}`))
		envelope(t, Do(t, "GET", u+"/key/info?key="+sa["key"].(string), mk, nil), 404)
		envelope(t, Do(t, "GET", u+"/team/info?team_id=my-unique-team", mk, nil), 404)
	})
}

func TestModelsAndSettings(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		m := ok(t, Do(t, "POST", u+"/model/new", mk, `{"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-upstream-literal-secret", "input_cost_per_token": 0.0000025, "output_cost_per_token": 0.00001}, "model_info": {"access_groups": ["beta"]}}`))
		lp := m["litellm_params"].(map[string]any)
		if lp["api_key"] == "sk-upstream-literal-secret" {
			t.Fatal("model API returned a literal upstream credential")
		}
		if lp["input_cost_per_token"] != 0.0000025 {
			t.Fatalf("price: %v", lp)
		}
		ok(t, Do(t, "POST", u+"/model/new", mk, `{"model_name": "gpt-4o-mini", "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "os.environ/OPENAI_API_KEY"}}`))
		info := ok(t, Do(t, "GET", u+"/model/info", mk, nil))
		if len(info["data"].([]any)) != 2 {
			t.Fatalf("model/info: %v", info)
		}
		if !bytes.Contains(Do(t, "GET", u+"/model/info", mk, nil).Body, []byte("os.environ/OPENAI_API_KEY")) {
			t.Fatal("credential references should be shown")
		}
		envelope(t, Do(t, "POST", u+"/model/new", mk, `{"model_name": "x"}`), 400)
		envelope(t, Do(t, "POST", u+"/model/new", mk, `{"model_name": "x", "litellm_params": {"model": "m", "input_cost_per_token": -1}}`), 400)
		envelope(t, Do(t, "POST", u+"/model/new", mk, `{"model_name": "x", "litellm_params": {"model": "m", "api_base": "file:///etc/passwd"}}`), 400)
		id := m["model_info"].(map[string]any)["id"].(string)
		ok(t, Do(t, "POST", u+"/model/delete", mk, map[string]any{"id": id}))
		envelope(t, Do(t, "POST", u+"/model/delete", mk, map[string]any{"id": id}), 404)

		s := ok(t, Do(t, "POST", u+"/config/update", mk, `{"general_settings": {"service_account_settings": {"enforced_params": ["user"]}}}`))
		if !bytes.Contains(Do(t, "GET", u+"/settings", mk, nil).Body, []byte("enforced_params")) {
			t.Fatalf("settings: %v", s)
		}
		envelope(t, Do(t, "POST", u+"/config/update", mk, `{"general_settings": {"master_key": "sk-x"}}`), 400)
	})
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(good, []byte(`model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: http://127.0.0.1:9/v1
      api_key: os.environ/OPENAI_API_KEY
    model_info:
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001

general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  service_account_settings:
    enforced_params: ["user"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	mk := RandomKey()
	cp := StartControlPlane(t, CPOptions{Config: good, MasterKey: mk, MasterKeyFromConfig: true, Env: []string{"LITELLM_MASTER_KEY=" + mk}})
	info := ok(t, Do(t, "GET", cp.URL()+"/model/info", mk, nil))
	if len(info["data"].([]any)) != 1 {
		t.Fatalf("config models: %v", info)
	}
	st := Do(t, "GET", cp.URL()+"/settings", mk, nil)
	if !bytes.Contains(st.Body, []byte(`"user"`)) || bytes.Contains(st.Body, []byte("master_key")) {
		t.Fatalf("settings from config: %s", st.Body)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("model_list:\n  - model_name: x\n    litellm_params:\n      api_base: http://x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary(t, "controlplane"), "--config", bad, "--data-dir", t.TempDir(), "--master-key", RandomKey(), "--http-addr", FreeAddr(t), "--grpc-addr", FreeAddr(t))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.yaml:") {
		t.Fatalf("invalid config should exit naming the line: err=%v\n%s", err, out)
	}
}
