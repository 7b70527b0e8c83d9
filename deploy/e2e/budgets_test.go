package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// list decodes a JSON array answer.
func list(t *testing.T, r Response) []map[string]any {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	var out []map[string]any
	if err := json.Unmarshal(r.Body, &out); err != nil {
		t.Fatalf("not a JSON array: %s", r.Body)
	}
	return out
}

// TestBudgetsAPI: /budget/new|update|info|list|delete answer LiteLLM's
// shapes (budget rows, bare lists), budget_id links keys, end users,
// organizations and team members and copies the budget's limits into
// them, organizations always get a budget (litellm_budget_table on every
// /organization/list entry), a budget update reaches every linked object,
// a budget in use is not deleted, and bad input changes nothing.
func TestBudgetsAPI(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey

		// new: generated and chosen ids; LiteLLM's row with nulls for unset limits.
		gen := ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": nil, "tpm_limit": 2}))
		if id, _ := gen["budget_id"].(string); id == "" || gen["tpm_limit"] != 2.0 || gen["max_budget"] != nil || gen["created_by"] != "master_key" {
			t.Fatalf("/budget/new = %v", gen)
		}
		tier := ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "tier", "max_budget": 10, "rpm_limit": 50, "budget_duration": "30d"}))
		if tier["budget_id"] != "tier" || tier["max_budget"] != 10.0 || tier["rpm_limit"] != 50.0 || tier["budget_duration"] != "30d" || tier["budget_reset_at"] == nil {
			t.Fatalf("/budget/new tier = %v", tier)
		}
		if e := envelope(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "tier"}), 400); e["message"] != "Budget with id 'tier' already exists." {
			t.Fatalf("duplicate: %v", e)
		}
		envelope(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "neg", "max_budget": -1}), 400)
		envelope(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "dur", "budget_duration": "soon"}), 400)
		envelope(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "mmb", "model_max_budget": map[string]any{"gpt-4": map[string]any{"max_budget": 1}}}), 400)
		envelope(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"rpm_limit": 1}), 400)
		envelope(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"budget_id": "nope", "rpm_limit": 1}), 404)
		envelope(t, Do(t, "POST", u+"/budget/info", mk, map[string]any{"budgets": []string{}}), 400)

		// info: the budgets that exist; list: every budget, oldest first.
		info := list(t, Do(t, "POST", u+"/budget/info", mk, map[string]any{"budgets": []string{"tier", "nope", "tier"}}))
		if len(info) != 1 || info[0]["budget_id"] != "tier" {
			t.Fatalf("/budget/info = %v", info)
		}
		all := list(t, Do(t, "GET", u+"/budget/list", mk, nil))
		if len(all) != 2 || all[0]["budget_id"] != gen["budget_id"] || all[1]["budget_id"] != "tier" {
			t.Fatalf("/budget/list = %v", all)
		}
		for _, b := range []string{"neg", "dur", "mmb"} {
			if strings.Contains(string(Do(t, "GET", u+"/budget/list", mk, nil).Body), `"`+b+`"`) {
				t.Fatalf("refused /budget/new %s created a budget", b)
			}
		}

		// Keys: linked keys get the budget's limits; their own limits with
		// budget_id are a 400; an unknown budget is a 400.
		k := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"budget_id": "tier"}))
		if k["budget_id"] != "tier" || k["max_budget"] != 10.0 || k["rpm_limit"] != 50.0 || k["budget_duration"] != "30d" {
			t.Fatalf("/key/generate with budget_id = %v", k)
		}
		tok := k["token_id"].(string)
		envelope(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"budget_id": "nope"}), 400)
		envelope(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"budget_id": "tier", "max_budget": 1}), 400)
		envelope(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": tok, "rpm_limit": 1}), 400)

		// Organizations: a budget is created from the org's limits; list and
		// info carry litellm_budget_table.
		org := ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_alias": "acme", "models": []string{"gpt-4"}, "max_budget": 7}))
		orgID := org["organization_id"].(string)
		orgBudget, _ := org["budget_id"].(string)
		if tb, _ := org["litellm_budget_table"].(map[string]any); orgBudget == "" || tb == nil || tb["max_budget"] != 7.0 || tb["budget_id"] != orgBudget {
			t.Fatalf("/organization/new = %v", org)
		}
		ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_alias": "plain"}))
		linked := ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_alias": "tiered", "budget_id": "tier"}))
		if linked["budget_id"] != "tier" || linked["rpm_limit"] != 50.0 {
			t.Fatalf("/organization/new with budget_id = %v", linked)
		}
		for _, o := range list(t, Do(t, "GET", u+"/organization/list", mk, nil)) {
			if tb, _ := o["litellm_budget_table"].(map[string]any); tb == nil {
				t.Fatalf("/organization/list entry without litellm_budget_table: %v", o)
			}
		}
		if b := list(t, Do(t, "POST", u+"/budget/info", mk, map[string]any{"budgets": []string{orgBudget}})); len(b) != 1 || b[0]["max_budget"] != 7.0 {
			t.Fatalf("org budget row = %v", b)
		}
		// /organization/update's limits change the org's budget.
		ok(t, Do(t, "POST", u+"/organization/update", mk, map[string]any{"organization_id": orgID, "max_budget": 8}))
		if b := list(t, Do(t, "POST", u+"/budget/info", mk, map[string]any{"budgets": []string{orgBudget}})); b[0]["max_budget"] != 8.0 {
			t.Fatalf("org budget row after /organization/update = %v", b)
		}

		// End users: max_budget from the budget; litellm_budget_table on info;
		// a budget with limits end users do not enforce is refused.
		ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "eu", "max_budget": 3}))
		eu := ok(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "cust", "budget_id": "eu"}))
		if eu["budget_id"] != "eu" || eu["max_budget"] != 3.0 {
			t.Fatalf("/end_user/new with budget_id = %v", eu)
		}
		ci := ok(t, Do(t, "GET", u+"/customer/info?end_user_id=cust", mk, nil))
		if tb, _ := ci["litellm_budget_table"].(map[string]any); tb == nil || tb["max_budget"] != 3.0 {
			t.Fatalf("/customer/info = %v", ci)
		}
		// rpm_limit and tpm_limit apply to end users; a budget period does not.
		eu2 := ok(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "cust2", "budget_id": gen["budget_id"]}))
		if tb, _ := eu2["litellm_budget_table"].(map[string]any); tb == nil || tb["tpm_limit"] != 2.0 {
			t.Fatalf("/end_user/new on a tpm budget = %v", eu2)
		}
		ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "monthly", "max_budget": 1, "budget_duration": "30d"}))
		e := envelope(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "cust3", "budget_id": "monthly"}), 400)
		if !strings.Contains(e["message"].(string), "budget_duration") {
			t.Fatalf("end user on a periodic budget: %v", e)
		}
		envelope(t, Do(t, "GET", u+"/customer/info?end_user_id=cust3", mk, nil), 404)
		envelope(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"budget_id": "eu", "budget_duration": "1d"}), 400)
		envelope(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "cust4", "budget_id": "eu", "max_budget": 1}), 400)

		// Team members: max_budget_in_team from the budget (and nothing more).
		ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_id": "member", "auto_create_key": false}))
		team := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_alias": "t", "members_with_roles": []map[string]any{{"user_id": "member", "role": "user"}}}))
		m := ok(t, Do(t, "POST", u+"/team/member_update", mk, map[string]any{"team_id": team["team_id"], "user_id": "member", "budget_id": "eu"}))
		if m["budget_id"] != "eu" || m["max_budget_in_team"] != 3.0 {
			t.Fatalf("/team/member_update with budget_id = %v", m)
		}
		envelope(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"budget_id": "eu", "rpm_limit": 5}), 400)
		envelope(t, Do(t, "POST", u+"/team/member_update", mk, map[string]any{"team_id": team["team_id"], "user_id": "member", "max_budget_in_team": 9}), 400)

		// One update reaches every linked object.
		ok(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"budget_id": "eu", "max_budget": 4}))
		if ci := ok(t, Do(t, "GET", u+"/customer/info?end_user_id=cust", mk, nil)); ci["max_budget"] != 4.0 {
			t.Fatalf("end user after /budget/update = %v", ci)
		}
		ti := ok(t, Do(t, "GET", u+"/team/info?team_id="+team["team_id"].(string), mk, nil))
		if ms := ti["team_info"].(map[string]any)["members_with_roles"].([]any); ms[0].(map[string]any)["max_budget_in_team"] != 4.0 {
			t.Fatalf("member after /budget/update = %v", ms)
		}
		up := ok(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"budget_id": "tier", "rpm_limit": 60, "max_budget": 11}))
		if up["rpm_limit"] != 60.0 || up["max_budget"] != 11.0 || up["budget_duration"] != "30d" || up["updated_by"] != "master_key" {
			t.Fatalf("/budget/update = %v", up)
		}
		ki := ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))["info"].(map[string]any)
		if tb, _ := ki["litellm_budget_table"].(map[string]any); ki["rpm_limit"] != 60.0 || ki["max_budget"] != 11.0 || ki["budget_id"] != "tier" || tb == nil || tb["rpm_limit"] != 60.0 {
			t.Fatalf("key after /budget/update = %v", ki)
		}
		if oi := ok(t, Do(t, "GET", u+"/organization/info?organization_id="+linked["organization_id"].(string), mk, nil)); oi["rpm_limit"] != 60.0 {
			t.Fatalf("org after /budget/update = %v", oi)
		}

		// Delete: refused while in use, then the deleted row.
		e = envelope(t, Do(t, "POST", u+"/budget/delete", mk, map[string]any{"id": "tier"}), 400)
		if !strings.Contains(e["message"].(string), "1 key(s), 1 organization(s)") {
			t.Fatalf("delete in use: %v", e)
		}
		ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": tok, "budget_id": ""}))
		ki = ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))["info"].(map[string]any)
		if ki["budget_id"] != "" || ki["rpm_limit"] != 60.0 || ki["litellm_budget_table"] != nil {
			t.Fatalf("unlinked key keeps the limits it had: %v", ki)
		}
		ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": tok, "rpm_limit": 1})) // its own again
		envelope(t, Do(t, "POST", u+"/budget/delete", mk, map[string]any{"id": "nope"}), 404)
		del := ok(t, Do(t, "POST", u+"/budget/delete", mk, map[string]any{"id": "monthly"}))
		if del["budget_id"] != "monthly" {
			t.Fatalf("/budget/delete = %v", del)
		}
		if b := list(t, Do(t, "POST", u+"/budget/info", mk, map[string]any{"budgets": []string{"monthly"}})); len(b) != 0 {
			t.Fatalf("deleted budget still there: %v", b)
		}
		if r := Do(t, "GET", u+"/audit?object_type=budget&page_size=100", mk, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"action":"deleted"`) {
			t.Fatalf("no budget audit rows: %d %s", r.Status, r.Body)
		}
	})
}

// TestBudgetsEnforced: the proxy enforces a budget's max_budget on a linked
// key, end user and organization (each counting its own spend), and a
// /budget/update reaches the proxy: raising the budget lets the key through
// again.
func TestBudgetsEnforced(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		two := money.ToUSD(2 * costPerCall)
		ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "small", "max_budget": two}))

		// A key on the budget.
		k := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"budget_id": "small"}))
		key, tok := k["key"].(string), k["token_id"].(string)
		waitRefusal(t, dp, key, chat("gpt-4o-mini", ""), "Budget has been exceeded! Current cost: ")
		if info := ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil)); info["info"].(map[string]any)["spend"] != two {
			t.Fatalf("key spend %v, want the budget", info["info"].(map[string]any)["spend"])
		}
		// A second key on the same budget has its own spend (LiteLLM: the
		// budget row holds limits, spend lives on the key).
		k2 := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"budget_id": "small"}))["key"].(string)
		waitStatus(t, dp, k2, chat("gpt-4o-mini", ""), 200)
		// Raising the budget reaches the proxy through the linked key.
		ok(t, Do(t, "POST", u+"/budget/update", mk, map[string]any{"budget_id": "small", "max_budget": 1}))
		waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)

		// An end user on a budget.
		ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "eu", "max_budget": two}))
		ok(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "cust", "budget_id": "eu"}))
		free := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))["key"].(string)
		waitRefusal(t, dp, free, chat("gpt-4o-mini", `,"user":"cust"`), "ExceededBudget: End User=cust over budget. Spend=")

		// An end user on a budget with tpm_limit 2 (LiteLLM's
		// test_enduser_tpm_limits): once a request's tokens are counted,
		// the end user is rate limited, whichever key calls.
		ok(t, Do(t, "POST", u+"/budget/new", mk, map[string]any{"budget_id": "free-tier", "tpm_limit": 2}))
		ok(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "tiny", "budget_id": "free-tier"}))
		waitStatus(t, dp, free, chat("gpt-4o-mini", `,"user":"tiny"`), 429)
		passed := 0
		for range 10 {
			r := Do(t, "POST", dp.URL()+"/v1/chat/completions", free, chat("gpt-4o-mini", `,"user":"tiny"`))
			if r.Status == 200 {
				passed++
			} else if e := envelope(t, r, 429); e["type"] != "rate_limit_error" || !strings.Contains(e["message"].(string), "end_user tiny") {
				t.Fatalf("end-user tpm refusal %s", r.Body)
			}
		}
		if passed >= 5 {
			t.Fatalf("%d of 10 requests passed with tpm_limit 2", passed)
		}
		// Another end user with the same key is not limited by it.
		waitStatus(t, dp, free, chat("gpt-4o-mini", `,"user":"someone-else"`), 200)

		// An organization whose budget came from /organization/new.
		org := ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_alias": "acme", "max_budget": two}))
		ok3 := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"organization_id": org["organization_id"]}))["key"].(string)
		waitRefusal(t, dp, ok3, chat("gpt-4o-mini", ""), "Budget has been exceeded! Organization="+org["organization_id"].(string))
		// Raising it through /organization/update (which changes its budget).
		ok(t, Do(t, "POST", u+"/organization/update", mk, map[string]any{"organization_id": org["organization_id"], "max_budget": 1}))
		waitStatus(t, dp, ok3, chat("gpt-4o-mini", ""), 200)
	})
}
