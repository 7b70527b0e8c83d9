package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestSpendExactAtSubMicroPrices: money is nano-USD end to end. 100 calls
// of 9 prompt and 12 completion tokens at gpt-4o-mini's $0.15 / $0.60 per
// million tokens bill exactly $0.000855 (8.55e-6 each; micro-USD amounts
// billed $0.0009), in /key/info and /spend/logs alike, and a max_budget of
// $0.0000001 is kept as such and admits a first call (in micro-USD it was 0
// and refused everything).
func TestSpendExactAtSubMicroPrices(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey

		tiny := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"max_budget": 0.0000001}))
		if tiny["max_budget"] != 0.0000001 {
			t.Fatalf("/key/generate max_budget %v, want 1e-7", tiny["max_budget"])
		}
		if info := ok(t, Do(t, "GET", u+"/key/info?key="+tiny["token_id"].(string), mk, nil)); info["info"].(map[string]any)["max_budget"] != 0.0000001 {
			t.Fatalf("/key/info max_budget %v, want 1e-7", info["info"].(map[string]any)["max_budget"])
		}
		waitStatus(t, dp, tiny["key"].(string), chat("gpt-4o-mini", ""), 200) // the first call is admitted
		// Its spend (4.5e-6 > 1e-7) then refuses the key.
		waitStatus(t, dp, tiny["key"].(string), chat("gpt-4o-mini", ""), 429)

		k := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))
		key, tokenID := k["key"].(string), k["token_id"].(string)
		body := chat("gpt-4o-mini", `,"metadata":{"upstream_usage":[9,12]}`)
		waitStatus(t, dp, key, body, 200)
		for i := 1; i < 100; i++ {
			if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, body); r.Status != 200 {
				t.Fatalf("call %d: %d %s", i, r.Status, r.Body)
			}
		}
		var spend any
		for deadline := time.Now().Add(15 * time.Second); ; {
			spend = ok(t, Do(t, "GET", u+"/key/info?key="+tokenID, mk, nil))["info"].(map[string]any)["spend"]
			if spend == 0.000855 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if spend != 0.000855 {
			t.Fatalf("/key/info spend %v after 100 calls, want exactly 0.000855", spend)
		}
		logs := ok(t, Do(t, "GET", u+"/spend/logs/paged?api_key="+tokenID+"&page_size=100", mk, nil))
		rows := logs["spend_logs"].([]any)
		if int(logs["total"].(float64)) != 100 || len(rows) != 100 {
			t.Fatalf("/spend/logs: total %v, %d rows, want 100", logs["total"], len(rows))
		}
		for _, l := range rows {
			if row := l.(map[string]any); row["spend"] != 0.00000855 || fmt.Sprint(row["prompt_tokens"]) != "9" || fmt.Sprint(row["completion_tokens"]) != "12" {
				t.Fatalf("spend log row %v, want spend 8.55e-06 for 9 + 12 tokens", row)
			}
		}
	})
}
