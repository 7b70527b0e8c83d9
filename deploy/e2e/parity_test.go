package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// The tests in this file pin LiteLLM's documented management behaviour
// that scripts written against LiteLLM rely on (issue #19), on both stores.
// Where Tollgate differs on purpose (hashes never returned; another user's
// object is 404, not 403) the README's "Deliberate differences from
// LiteLLM" lists it and these tests assert Tollgate's answer.

// TestParityKeyReadsItself: any active key reads its own /key/info (with or
// without ?key=), its team's /team/info and /model/info, as LiteLLM's docs
// show apps doing to display a key's remaining budget. Writes stay refused.
func TestParityKeyReadsItself(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		team := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_alias": "apps"}))["team_id"].(string)
		ownerless := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"models": []string{"gpt-4"}, "max_budget": 5}))
		teamKey := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"team_id": team}))
		sa := ok(t, Do(t, "POST", u+"/key/service-account/generate", mk, map[string]any{"team_id": team}))
		other := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))

		for name, g := range map[string]map[string]any{"ownerless": ownerless, "team": teamKey, "service-account": sa} {
			key := g["key"].(string)
			for _, path := range []string{"/key/info", "/key/info?key=" + key, "/key/info?key=" + g["token_id"].(string)} {
				info := ok(t, Do(t, "GET", u+path, key, nil))
				if info["key"] != g["token_id"] || info["info"].(map[string]any)["token_id"] != g["token_id"] {
					t.Fatalf("%s %s: %v", name, path, info)
				}
			}
			ok(t, Do(t, "GET", u+"/model/info", key, nil))
			// Another key is invisible (LiteLLM 403; Tollgate 404, never a
			// hint that it exists).
			envelope(t, Do(t, "GET", u+"/key/info?key="+other["key"].(string), key, nil), 404)
			// Writes and other reads are not for keys without a user.
			envelope(t, Do(t, "POST", u+"/key/update", key, map[string]any{"key": g["token_id"], "max_budget": 100}), 401)
			envelope(t, Do(t, "GET", u+"/key/list", key, nil), 401)
			envelope(t, Do(t, "POST", u+"/key/generate", key, map[string]any{}), 401)
		}
		if ownerless["max_budget"] != 5.0 {
			t.Fatalf("max_budget %v", ownerless["max_budget"])
		}
		for _, g := range []map[string]any{teamKey, sa} {
			ti := ok(t, Do(t, "GET", u+"/team/info?team_id="+team, g["key"].(string), nil))
			if ti["team_id"] != team {
				t.Fatalf("team/info %v", ti)
			}
			// It sees itself among the team's keys, not the others.
			ks := ti["keys"].([]any)
			if len(ks) != 1 || ks[0].(map[string]any)["token_id"] != g["token_id"] {
				t.Fatalf("team/info keys for %v: %v", g["token_id"], ks)
			}
		}
		// A key outside the team may not read it.
		envelope(t, Do(t, "GET", u+"/team/info?team_id="+team, ownerless["key"].(string), nil), 404)
		// A blocked key reads nothing.
		ok(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": other["token_id"]}))
		envelope(t, Do(t, "GET", u+"/key/info", other["key"].(string), nil), 401)

		// A user's key in a team its user is not a member of reads the team.
		ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_id": "viewer-1", "user_role": "internal_user_viewer", "auto_create_key": false}))
		vk := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "viewer-1", "team_id": team}))["key"].(string)
		ok(t, Do(t, "GET", u+"/team/info?team_id="+team, vk, nil))
		ok(t, Do(t, "GET", u+"/key/info", vk, nil))
	})
}

// TestParityImplicitUsers: LiteLLM creates the users that /key/generate,
// /user/update and team membership calls name.
func TestParityImplicitUsers(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey

		// /key/generate with an unknown user_id creates the internal user.
		g := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "customer-42"}))
		if g["user_id"] != "customer-42" || g["updated_at"] == nil {
			t.Fatalf("generate: %v", g)
		}
		ui := ok(t, Do(t, "GET", u+"/user/info?user_id=customer-42", mk, nil))
		if ui["user_info"].(map[string]any)["user_role"] != "internal_user" || len(ui["keys"].([]any)) != 1 {
			t.Fatalf("implicit user: %v", ui)
		}
		// The implicit creation is audited like any other.
		if a := ok(t, Do(t, "GET", u+"/audit?object_type=user&object_id=customer-42", mk, nil)); a["total"] != 1.0 {
			t.Fatalf("audit of the implicit user: %v", a)
		}
		// Its key is now a management credential of that user.
		ok(t, Do(t, "GET", u+"/user/info?user_id=customer-42", g["key"].(string), nil))

		// /user/update upserts.
		up := ok(t, Do(t, "POST", u+"/user/update", mk, map[string]any{"user_id": "litellm-proxy-budget", "spend": 0, "max_budget": 10}))
		if up["user_id"] != "litellm-proxy-budget" || up["max_budget"] != 10.0 {
			t.Fatalf("upsert: %v", up)
		}
		ok(t, Do(t, "GET", u+"/user/info?user_id=litellm-proxy-budget", mk, nil))

		// /user/new with team_id: a member, and its key is the team's.
		team := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_alias": "t"}))["team_id"].(string)
		nu := ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_id": "joiner", "team_id": team}))
		ki := ok(t, Do(t, "GET", u+"/key/info", nu["key"].(string), nil))
		if ki["info"].(map[string]any)["team_id"] != team {
			t.Fatalf("user/new team_id: key %v", ki)
		}
		ui = ok(t, Do(t, "GET", u+"/user/info?user_id=joiner", mk, nil))
		teams := ui["teams"].([]any)
		if len(teams) != 1 || teams[0].(map[string]any)["team_id"] != team {
			t.Fatalf("user/info teams: %v", teams)
		}
		ms := teams[0].(map[string]any)["team_memberships"].([]any)
		if len(ms) != 1 || ms[0].(map[string]any)["user_id"] != "joiner" {
			t.Fatalf("team_memberships: %v", ms)
		}

		// Members given by email: found, or created.
		existing := ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_email": "ann@example.com", "auto_create_key": false}))["user_id"].(string)
		ok(t, Do(t, "POST", u+"/team/member_add", mk, map[string]any{"team_id": team, "member": []map[string]any{{"role": "user", "user_email": "ann@example.com"}, {"role": "user", "user_email": "new@example.com"}}}))
		ti := ok(t, Do(t, "GET", u+"/team/info?team_id="+team, mk, nil))["team_info"].(map[string]any)
		emails := map[string]string{}
		for _, m := range ti["members_with_roles"].([]any) {
			m := m.(map[string]any)
			emails[m["user_email"].(string)] = m["user_id"].(string)
		}
		if emails["ann@example.com"] != existing || emails["new@example.com"] == "" {
			t.Fatalf("members by email: %v", ti["members_with_roles"])
		}
		ui = ok(t, Do(t, "GET", u+"/user/info?user_id="+existing, mk, nil))
		if len(ui["teams"].([]any)) != 1 {
			t.Fatalf("ann's teams: %v", ui["teams"])
		}
		// members_with_roles in /team/new by email; member_delete by email.
		nt := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"members_with_roles": []map[string]any{{"role": "user", "user_email": "ann@example.com"}}}))
		found := false
		for _, m := range nt["members_with_roles"].([]any) {
			found = found || m.(map[string]any)["user_email"] == "ann@example.com"
		}
		if !found {
			t.Fatalf("team/new by email: %v", nt["members_with_roles"])
		}
		after := ok(t, Do(t, "POST", u+"/team/member_delete", mk, map[string]any{"team_id": nt["team_id"], "user_email": "ann@example.com"}))
		for _, m := range after["members_with_roles"].([]any) {
			if m.(map[string]any)["user_id"] == existing {
				t.Fatalf("member_delete by email left %v", after["members_with_roles"])
			}
		}
		envelope(t, Do(t, "POST", u+"/team/member_delete", mk, map[string]any{"team_id": nt["team_id"], "user_email": "nobody@example.com"}), 404)
	})
}

// TestParityTeams: /team/new makes its creator a team admin, /team/update
// answers {"team_id", "data"}, metadata {} replaces metadata, model_aliases
// are kept.
func TestParityTeams(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_id": "boss", "auto_create_key": false}))
		nt := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_alias": "a", "members_with_roles": []map[string]any{{"role": "admin", "user_id": "boss"}},
			"model_aliases": map[string]string{"cheap-model": "gpt-3.5-turbo"}, "metadata": map[string]any{"x": 1}}))
		ids := []string{}
		for _, m := range nt["members_with_roles"].([]any) {
			m := m.(map[string]any)
			ids = append(ids, fmt.Sprint(m["user_id"], "/", m["role"]))
		}
		if !slices.Equal(ids, []string{"boss/admin", "default_user_id/admin"}) {
			t.Fatalf("members: %v", ids)
		}
		if nt["model_aliases"].(map[string]any)["cheap-model"] != "gpt-3.5-turbo" {
			t.Fatalf("model_aliases: %v", nt["model_aliases"])
		}
		up := ok(t, Do(t, "POST", u+"/team/update", mk, map[string]any{"team_id": nt["team_id"], "team_alias": "b", "metadata": map[string]any{}}))
		data, _ := up["data"].(map[string]any)
		if up["team_id"] != nt["team_id"] || data == nil || data["team_alias"] != "b" || data["team_id"] != nt["team_id"] {
			t.Fatalf("team/update: %v", up)
		}
		if md, _ := data["metadata"].(map[string]any); len(md) != 0 {
			t.Fatalf("metadata {} kept the old one: %v", data["metadata"])
		}
		if data["model_aliases"].(map[string]any)["cheap-model"] != "gpt-3.5-turbo" {
			t.Fatalf("model_aliases lost: %v", data)
		}
		// A user (key) that creates a team becomes its admin: org admins.
		ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_id": "o1", "organization_alias": "o1"}))
		ok(t, Do(t, "POST", u+"/organization/member_add", mk, map[string]any{"organization_id": "o1", "member": map[string]any{"user_id": "boss", "role": "org_admin"}}))
		bk := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "boss"}))["key"].(string)
		bt := ok(t, Do(t, "POST", u+"/team/new", bk, map[string]any{"organization_id": "o1"}))
		if ms := bt["members_with_roles"].([]any); len(ms) != 1 || ms[0].(map[string]any)["user_id"] != "boss" || ms[0].(map[string]any)["role"] != "admin" {
			t.Fatalf("org admin's team: %v", ms)
		}

		// /key/update with metadata {} replaces the metadata.
		k := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"metadata": map[string]any{"a": "b"}}))
		ku := ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": k["key"], "metadata": map[string]any{}}))
		if md, _ := ku["metadata"].(map[string]any); len(md) != 0 {
			t.Fatalf("key metadata {} kept: %v", ku["metadata"])
		}
	})
}

// TestParityOrganizations: LiteLLM's DELETE /organization/delete, PATCH
// /organization/member_update and DELETE /organization/member_delete.
func TestParityOrganizations(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_id": "o1", "organization_alias": "o1"}))
		ok(t, Do(t, "POST", u+"/organization/member_add", mk, map[string]any{"organization_id": "o1", "member": []map[string]any{{"user_id": "m1"}, {"user_email": "m2@example.com"}}}))
		mu := ok(t, Do(t, "PATCH", u+"/organization/member_update", mk, map[string]any{"organization_id": "o1", "user_id": "m1", "role": "org_admin"}))
		if mu["user_id"] != "m1" || mu["user_role"] != "org_admin" {
			t.Fatalf("member_update: %v", mu)
		}
		md := ok(t, Do(t, "DELETE", u+"/organization/member_delete", mk, map[string]any{"organization_id": "o1", "user_email": "m2@example.com"}))
		if ms := md["members"].([]any); len(ms) != 1 || ms[0].(map[string]any)["user_id"] != "m1" {
			t.Fatalf("member_delete: %v", md)
		}
		envelope(t, Do(t, "DELETE", u+"/organization/member_delete", mk, map[string]any{"organization_id": "o1", "user_id": "nobody"}), 404)
		// Non-admins may not (403), as for every organization write.
		mk1 := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "m1"}))["key"].(string)
		envelope(t, Do(t, "PATCH", u+"/organization/member_update", mk1, map[string]any{"organization_id": "o1", "user_id": "m1", "role": "internal_user"}), 403)
		r := Do(t, "POST", u+"/organization/list", mk, nil)
		if r.Status != 200 || r.Body[0] != '[' {
			t.Fatalf("POST /organization/list: %d %s", r.Status, r.Body)
		}
		ok(t, Do(t, "DELETE", u+"/organization/delete", mk, map[string]any{"organization_ids": []string{"o1"}}))
		envelope(t, Do(t, "GET", u+"/organization/info?organization_id=o1", mk, nil), 404)
	})
}

// TestParitySpendLogsByResponseID: LiteLLM keys spend logs by the upstream
// response's id, so /spend/logs?request_id=<the completion's id> finds the
// call; /spend/logs answers a JSON list with numeric token counts.
func TestParitySpendLogsByResponseID(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		key := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))["key"].(string)
		resp := waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200).JSON(t)
		id := resp["id"].(string) // the fake upstream's chatcmpl-1
		waitStatus(t, dp, key, chat("gpt-4o-mini", `,"stream":true`), 200)
		for _, c := range []struct {
			id                 string
			prompt, completion float64
		}{{id, 10, 5}, {"c1", 10, 5}} {
			rows := waitSpendLogs(t, u, mk, c.id)
			row := rows[0].(map[string]any)
			if row["request_id"] != c.id || row["prompt_tokens"] != c.prompt || row["completion_tokens"] != c.completion || row["total_tokens"] != c.prompt+c.completion {
				t.Fatalf("spend log for %s: %v", c.id, row)
			}
		}
		// The paged form keeps its envelope, with the same numbers.
		p := ok(t, Do(t, "GET", u+"/spend/logs/paged?request_id="+id, mk, nil))
		if p["total"] != 1.0 || p["spend_logs"].([]any)[0].(map[string]any)["prompt_tokens"] != 10.0 {
			t.Fatalf("paged: %v", p)
		}
		// No match is an empty list, not an error.
		r := Do(t, "GET", u+"/spend/logs?request_id=chatcmpl-none", mk, nil)
		if r.Status != 200 || strings.TrimSpace(string(r.Body)) != "[]" {
			t.Fatalf("no match: %d %s", r.Status, r.Body)
		}
	})
}

// waitSpendLogs polls /spend/logs?request_id= until it lists a row (spend
// reaches the control plane asynchronously).
func waitSpendLogs(t *testing.T, u, mk, requestID string) []any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := Do(t, "GET", u+"/spend/logs?request_id="+requestID, mk, nil)
		if r.Status != 200 {
			t.Fatalf("/spend/logs: %d %s", r.Status, r.Body)
		}
		var rows []any
		if err := json.Unmarshal(r.Body, &rows); err != nil {
			t.Fatalf("/spend/logs is not a JSON list: %s", r.Body)
		}
		if len(rows) > 0 {
			return rows
		}
		if time.Now().After(deadline) {
			t.Fatalf("no spend log with request_id %s", requestID)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestParityMasterKeyOnProxy: the master key works on the proxies' LLM
// routes (LiteLLM's docs make the first call with it); the proxies only
// ever hold its hash. Its calls are attributed to litellm-proxy-budget,
// whose budget applies to them.
func TestParityMasterKeyOnProxy(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		// litellm_settings.max_budget creates the proxy-budget user at start,
		// as LiteLLM does.
		up := NewUpstream(t)
		o.Config = writeConfig(t, up.URL)
		f, err := os.OpenFile(o.Config, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("litellm_settings:\n  max_budget: 100\n  budget_duration: 30d\n"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		d := &deployment{cp: StartControlPlane(t, o), up: up, env: []string{"UPSTREAM_API_KEY=" + upstreamSecret}}
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		pb := ok(t, Do(t, "GET", u+"/user/info?user_id=litellm-proxy-budget", mk, nil))["user_info"].(map[string]any)
		if pb["max_budget"] != 100.0 || pb["budget_duration"] != "30d" || pb["spend"] != 0.0 {
			t.Fatalf("proxy-budget user: %v", pb)
		}
		ok(t, Do(t, "POST", u+"/user/update", mk, map[string]any{"user_id": "litellm-proxy-budget", "spend": 0}))
		resp := waitStatus(t, dp, mk, chat("gpt-4o-mini", ""), 200).JSON(t)
		if resp["id"] == nil {
			t.Fatalf("response %v", resp)
		}
		if r := Do(t, "GET", dp.URL()+"/v1/models", mk, nil); r.Status != 200 {
			t.Fatalf("/v1/models: %d %s", r.Status, r.Body)
		}
		rows := waitSpendLogs(t, u, mk, resp["id"].(string))
		if row := rows[0].(map[string]any); row["api_key"] != "master_key" || row["user"] != "litellm-proxy-budget" {
			t.Fatalf("spend log %v", row)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			ui := ok(t, Do(t, "GET", u+"/user/info?user_id=litellm-proxy-budget", mk, nil))
			if ui["user_info"].(map[string]any)["spend"].(float64) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("litellm-proxy-budget spend did not grow: %v", ui["user_info"])
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Only the master key itself matches.
		if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", mk+"x", chat("gpt-4o-mini", "")); r.Status != 401 {
			t.Fatalf("wrong master key: %d %s", r.Status, r.Body)
		}
		// The proxy-budget user's budget caps master-key calls.
		ok(t, Do(t, "POST", u+"/user/update", mk, map[string]any{"user_id": "litellm-proxy-budget", "max_budget": 0}))
		waitStatus(t, dp, mk, chat("gpt-4o-mini", ""), 429)
	})
}

// TestParityTeamModelAlias: a team's model_aliases let its keys call a model
// by the alias; the upstream gets the real model.
func TestParityTeamModelAlias(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		team := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"model_aliases": map[string]string{"cheap-model": "gpt-4o-mini"}}))["team_id"].(string)
		key := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"team_id": team, "models": []string{"gpt-4o-mini"}}))["key"].(string)
		resp := waitStatus(t, dp, key, chat("cheap-model", ""), 200).JSON(t)
		if m := d.up.Last(t).Body["model"]; m == "cheap-model" || m == nil {
			t.Fatalf("upstream got model %v", m)
		}
		if row := waitSpendLogs(t, u, mk, resp["id"].(string))[0].(map[string]any); row["model"] != "gpt-4o-mini" {
			t.Fatalf("spend log model %v", row["model"])
		}
		// A key outside the team cannot use the alias.
		other := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))["key"].(string)
		waitStatus(t, dp, other, chat("gpt-4o-mini", ""), 200)
		if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", other, chat("cheap-model", "")); r.Status != 400 {
			t.Fatalf("alias outside its team: %d %s", r.Status, r.Body)
		}
	})
}

// TestParityImplicitUsersConcurrently: LiteLLM's own tests create ten teams
// naming the same new user at once; every call succeeds and the user is
// created once.
func TestParityImplicitUsersConcurrently(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		const n = 10
		statuses := make(chan string, 3*n)
		for i := range n {
			go func() {
				r := Do(t, "POST", u+"/team/new", mk, map[string]any{"members_with_roles": []map[string]any{{"role": "user", "user_id": "same-new-user"}}})
				statuses <- fmt.Sprint("team/new ", r.Status, " ", string(r.Body[:min(len(r.Body), 200)]))
			}()
			go func() {
				r := Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "same-key-user"})
				statuses <- fmt.Sprint("key/generate ", r.Status, " ", string(r.Body[:min(len(r.Body), 200)]))
			}()
			go func() {
				r := Do(t, "POST", u+"/user/update", mk, map[string]any{"user_id": fmt.Sprint("upsert-", i%2)})
				statuses <- fmt.Sprint("user/update ", r.Status, " ", string(r.Body[:min(len(r.Body), 200)]))
			}()
		}
		for range 3 * n {
			if s := <-statuses; !strings.Contains(s, " 200 ") {
				t.Error(s)
			}
		}
		ui := ok(t, Do(t, "GET", u+"/user/info?user_id=same-new-user", mk, nil))
		if len(ui["teams"].([]any)) != n {
			t.Fatalf("teams of the implicit user: %d", len(ui["teams"].([]any)))
		}
	})
}
