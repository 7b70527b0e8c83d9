package e2e

import (
	"math"
	"strings"
	"testing"
	"time"
)

// customerSpend reads an end user's spend (nano-USD) from /customer/info.
func customerSpend(t *testing.T, u, mk, id string) int64 {
	t.Helper()
	c := ok(t, Do(t, "GET", u+"/customer/info?end_user_id="+id, mk, nil))
	f, _ := c["spend"].(float64)
	return int64(math.Round(f * 1e9))
}

// waitRefusal sends body until the proxy's decision refuses it: 429 with a
// message starting with prefix (admitted calls, other refusals and the
// gate's refusals while cost is in flight or unsynced are passed over).
func waitRefusal(t *testing.T, dp *DataPlane, key, body, prefix string) Response {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, body)
		if r.Status == 429 && strings.Contains(string(r.Body), `"message":"`+prefix) && !strings.Contains(string(r.Body), "in flight") {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy %s: %d %s, want 429 %q", dp.ID, r.Status, r.Body, prefix)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEndUserBudgets: end users created through /customer/new (and
// /end_user/new) are enforced by the proxy on the body's "user": a budget
// of two calls is refused once spent while another end user is not; a
// blocked end user is refused and works again when unblocked;
// general_settings.max_end_user_budget applies to end users without a
// budget, including ones never seen; refused requests spend nothing.
func TestEndUserBudgets(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		key := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))["key"].(string)
		as := func(user string) string { return chat("gpt-4o-mini", `,"user":"`+user+`"`) }

		// Bad input changes nothing.
		envelope(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"alias": "no id"}), 400)
		envelope(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"user_id": "neg", "max_budget": -1}), 400)
		envelope(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"user_id": "bid", "budget_id": "b1"}), 400)
		envelope(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"user_id": "bid", "budget_duration": "1d"}), 400)
		envelope(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"user_id": "bid", "rpm_limit": 5}), 400)
		envelope(t, Do(t, "GET", u+"/customer/info?end_user_id=bid", mk, nil), 404)
		envelope(t, Do(t, "GET", u+"/customer/info?end_user_id=neg", mk, nil), 404)

		capped := ok(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"user_id": "capped", "alias": "Capped Inc", "max_budget": 2 * costPerCall / 1e9}))
		if capped["user_id"] != "capped" || capped["alias"] != "Capped Inc" || capped["max_budget"] != 2*costPerCall/1e9 {
			t.Fatalf("/customer/new = %v", capped)
		}
		envelope(t, Do(t, "POST", u+"/customer/new", mk, map[string]any{"user_id": "capped"}), 400)
		ok(t, Do(t, "POST", u+"/end_user/new", mk, map[string]any{"user_id": "free"}))

		// Spent through the proxy until the synced spend reaches the budget:
		// the gate reserves an estimate per request (refusing while one is
		// in flight or unsynced), then the decision refuses for good.
		r := waitRefusal(t, dp, key, as("capped"), "ExceededBudget: End User=capped over budget. Spend=")
		if e := envelope(t, r, 429); e["type"] != "budget_exceeded" || !strings.HasSuffix(e["message"].(string), ", Budget=0.000009") {
			t.Fatalf("refusal %s", r.Body)
		}
		spent := customerSpend(t, u, mk, "capped")
		if spent < 2*costPerCall {
			t.Fatalf("capped spent %d, refused below its budget", spent)
		}
		// Refused requests consume nothing.
		for range 3 {
			if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, as("capped")); r.Status != 429 {
				t.Fatalf("capped admitted again: %d %s", r.Status, r.Body)
			}
		}
		// Another end user, and the same key without "user", still work.
		waitStatus(t, dp, key, as("free"), 200)
		waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)

		// Raising the budget lets it through again.
		ok(t, Do(t, "POST", u+"/customer/update", mk, map[string]any{"user_id": "capped", "max_budget": 1}))
		waitStatus(t, dp, key, as("capped"), 200)

		// Blocked: refused whatever its spend; unblocked: served again.
		ok(t, Do(t, "POST", u+"/customer/block", mk, map[string]any{"user_ids": []string{"free"}}))
		r = waitStatus(t, dp, key, as("free"), 403)
		if e := envelope(t, r, 403); e["message"] != "User blocked from making LLM API Calls. User=free" {
			t.Fatalf("blocked refusal %s", r.Body)
		}
		ok(t, Do(t, "POST", u+"/customer/unblock", mk, map[string]any{"user_ids": []string{"free"}}))
		waitStatus(t, dp, key, as("free"), 200)
		// An end user blocked before its first request.
		ok(t, Do(t, "POST", u+"/end_user/block", mk, map[string]any{"user_ids": []string{"banned"}}))
		waitStatus(t, dp, key, as("banned"), 403)

		// max_end_user_budget: 0 refuses every end user without a budget of
		// its own, even one never seen; those with one keep theirs.
		ok(t, Do(t, "POST", u+"/config/update", mk, map[string]any{"general_settings": map[string]any{"max_end_user_budget": 0}}))
		waitStatus(t, dp, key, as("free"), 429) // the setting reached the proxy
		r = Do(t, "POST", dp.URL()+"/v1/chat/completions", key, as("stranger"))
		if e := envelope(t, r, 429); e["message"] != "ExceededBudget: End User=stranger over budget. Spend=0, Budget=0" {
			t.Fatalf("default budget refusal %s", r.Body)
		}
		waitStatus(t, dp, key, as("capped"), 200)

		// Listing and deleting.
		r = Do(t, "GET", u+"/customer/list", mk, nil)
		if r.Status != 200 || !strings.HasPrefix(strings.TrimSpace(string(r.Body)), "[") || !strings.Contains(string(r.Body), `"user_id":"banned"`) {
			t.Fatalf("/customer/list %d %s", r.Status, r.Body)
		}
		envelope(t, Do(t, "POST", u+"/customer/delete", mk, map[string]any{"user_ids": []string{"banned", "nobody"}}), 404)
		ok(t, Do(t, "GET", u+"/customer/info?end_user_id=banned", mk, nil))
		ok(t, Do(t, "POST", u+"/customer/delete", mk, map[string]any{"user_ids": []string{"banned"}}))
		envelope(t, Do(t, "GET", u+"/customer/info?end_user_id=banned", mk, nil), 404)
		// Deleted, so the default budget (0) applies to it now.
		waitStatus(t, dp, key, as("banned"), 429)
		if r := Do(t, "GET", u+"/audit?page_size=100", mk, nil); r.Status != 200 || !strings.Contains(string(r.Body), `"object_type":"end_user"`) {
			t.Fatalf("no end_user audit rows: %d %s", r.Status, r.Body)
		}

		// A proxy started now gets the end users in its snapshot: "capped"
		// (within its raised budget) blocked, "free" over the default.
		ok(t, Do(t, "POST", u+"/customer/block", mk, map[string]any{"user_ids": []string{"capped"}}))
		waitStatus(t, dp, key, as("capped"), 403)
		// (Once free's spend from its admitted calls has been applied: the
		// refusal below names it.)
		for deadline := time.Now().Add(5 * time.Second); customerSpend(t, u, mk, "free") == 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("free's spend never reached the control plane")
			}
		}
		dp2 := d.proxy(t)
		waitStatus(t, dp2, key, as("capped"), 403)
		if r := Do(t, "POST", dp2.URL()+"/v1/chat/completions", key, as("free")); r.Status != 429 ||
			!strings.Contains(string(r.Body), "ExceededBudget: End User=free over budget. Spend=0.0000") {
			t.Fatalf("free on a new proxy: %d %s", r.Status, r.Body)
		}
	})
}

// TestModelBudgetPerKey: a key's model_max_budget refuses the model once the
// key's spend on it reaches the limit, and the key keeps working on other
// models.
func TestModelBudgetPerKey(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		k := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{
			"model_max_budget": map[string]any{"gpt-4o-mini": map[string]any{"budget_limit": 2 * costPerCall / 1e9, "time_period": "1d"}},
		}))
		key, tokenID := k["key"].(string), k["token_id"].(string)
		r := waitRefusal(t, dp, key, chat("gpt-4o-mini", ""), "LiteLLM Virtual Key: "+tokenID+", exceeded budget for model=gpt-4o-mini. Current cost: ")
		e := envelope(t, r, 429)
		msg, _ := e["message"].(string)
		if e["type"] != "budget_exceeded" || !strings.HasPrefix(msg, "LiteLLM Virtual Key: "+tokenID+", exceeded budget for model=gpt-4o-mini. Current cost: ") ||
			!strings.HasSuffix(msg, ", Max budget: 0.000009") {
			t.Fatalf("refusal %s", r.Body)
		}
		// Reserved in the gate as well as checked: exactly the budget was
		// spent (two calls), however fast they came.
		if info := ok(t, Do(t, "GET", u+"/key/info?key="+tokenID, mk, nil)); info["info"].(map[string]any)["spend"] != 2*costPerCall/1e9 {
			t.Fatalf("key spend %v, want two calls", info["info"].(map[string]any)["spend"])
		}
		// Other models are not limited by it.
		waitStatus(t, dp, key, chat("gpt-4", ""), 200)
		start := time.Now()
		for time.Since(start) < 300*time.Millisecond {
			if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 429 {
				t.Fatalf("admitted after its model budget: %d %s", r.Status, r.Body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
