package e2e

import (
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// costPerCall is the fake upstream's usage (10 prompt, 5 completion tokens)
// at gpt-4o-mini's configured prices (0.15 and 0.6 USD per million tokens):
// 1.5 + 3 = 4.5 micro-USD, exactly 4500 nano-USD (no rounding).
const costPerCall = 4500 // nano-USD

// spendWorld is an org ⊃ team ⊃ member user with one key.
type spendWorld struct {
	d                     *deployment
	key, tokenID          string
	userID, teamID, orgID string
	u, mk                 string
}

func newSpendWorld(t *testing.T, d *deployment) *spendWorld {
	t.Helper()
	u, mk := d.cp.URL(), d.cp.MasterKey
	w := &spendWorld{d: d, u: u, mk: mk, userID: "spender-" + RandomKey()[3:9]}
	org := ok(t, Do(t, "POST", u+"/organization/new", mk, map[string]any{"organization_alias": "billing"}))
	w.orgID = org["organization_id"].(string)
	team := ok(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_alias": "payers", "organization_id": w.orgID}))
	w.teamID = team["team_id"].(string)
	ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_id": w.userID}))
	ok(t, Do(t, "POST", u+"/team/member_add", mk, map[string]any{"team_id": w.teamID, "member": map[string]any{"user_id": w.userID, "role": "user"}}))
	k := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": w.userID, "team_id": w.teamID}))
	w.key, w.tokenID = k["key"].(string), k["token_id"].(string)
	return w
}

// traffic sends n chat calls through each proxy concurrently, every other
// one streamed, and returns how many succeeded.
func (w *spendWorld) traffic(t *testing.T, n int, dps ...*DataPlane) int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	okCalls := 0
	for _, dp := range dps {
		for i := range n {
			wg.Go(func() {
				extra := ""
				if i%2 == 1 {
					extra = `,"stream":true`
				}
				r := Do(t, "POST", dp.URL()+"/v1/chat/completions", w.key, chat("gpt-4o-mini", extra+`,"user":"customer-1"`))
				if r.Status != 200 {
					t.Errorf("proxy %s: %d %s", dp.ID, r.Status, r.Body)
					return
				}
				if i%2 == 1 && !strings.Contains(string(r.Body), "[DONE]") {
					t.Errorf("stream incomplete: %s", r.Body)
				}
				mu.Lock()
				okCalls++
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return okCalls
}

// spend reads the spend (nano-USD) of the key, team, team member, user and
// organization from the info endpoints.
func (w *spendWorld) spend(t *testing.T) [5]int64 {
	t.Helper()
	nano := func(v any) int64 {
		f, _ := v.(float64)
		return int64(math.Round(f * 1e9))
	}
	k := ok(t, Do(t, "GET", w.u+"/key/info?key="+w.key, w.mk, nil))
	tm := ok(t, Do(t, "GET", w.u+"/team/info?team_id="+w.teamID, w.mk, nil))
	us := ok(t, Do(t, "GET", w.u+"/user/info?user_id="+w.userID, w.mk, nil))
	og := ok(t, Do(t, "GET", w.u+"/organization/info?organization_id="+w.orgID, w.mk, nil))
	ti := tm["team_info"].(map[string]any)
	var member int64 = -1
	for _, m := range ti["members_with_roles"].([]any) {
		if mm := m.(map[string]any); mm["user_id"] == w.userID {
			member = nano(mm["spend"])
		}
	}
	return [5]int64{nano(k["info"].(map[string]any)["spend"]), nano(ti["spend"]), member,
		nano(us["user_info"].(map[string]any)["spend"]), nano(og["spend"])}
}

// waitSpend polls until every scope shows want nano-USD, and fails if one
// goes past it (counted twice).
func (w *spendWorld) waitSpend(t *testing.T, want int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := w.spend(t)
		done := true
		for _, g := range got {
			if g > want {
				t.Fatalf("spend [key team member user org] = %v nano-USD, more than the %d admitted: counted twice", got, want)
			}
			done = done && g == want
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spend [key team member user org] = %v nano-USD, want %d everywhere", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// upstreamCost is what every call the upstream answered costs: the exact
// spend the control plane must end with.
func (w *spendWorld) upstreamCost() int64 { return int64(len(w.d.up.Requests())) * costPerCall }

// proxyGauge reads a gauge from a proxy's /metrics.
func proxyGauge(t *testing.T, dp *DataPlane, name string) float64 {
	t.Helper()
	r := Do(t, "GET", dp.URL()+"/metrics", "", nil)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(string(r.Body))
	if m == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestSpendEndToEnd(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		w := newSpendWorld(t, d)
		dp1, dp2 := d.proxy(t), d.proxy(t)
		waitStatus(t, dp1, w.key, chat("gpt-4o-mini", ""), 200)
		waitStatus(t, dp2, w.key, chat("gpt-4o-mini", ""), 200)

		// Mixed streaming and non-streaming traffic through two proxies.
		w.traffic(t, 20, dp1, dp2)
		w.waitSpend(t, w.upstreamCost())
		calls := len(d.up.Requests())

		// One spend log per call, with the key's token id, never its secret.
		logs := ok(t, Do(t, "GET", w.u+"/spend/logs/paged?api_key="+w.key+"&page_size=100", w.mk, nil))
		if int(logs["total"].(float64)) != calls {
			t.Fatalf("/spend/logs total %v, want %d", logs["total"], calls)
		}
		streamed, withUser := 0, 0
		for _, l := range logs["spend_logs"].([]any) {
			row := l.(map[string]any)
			if row["api_key"] != w.tokenID || row["user"] != w.userID || row["team_id"] != w.teamID ||
				(row["end_user"] != "customer-1" && row["end_user"] != "") || row["model"] != "gpt-4o-mini" || math.Abs(row["spend"].(float64)-costPerCall/1e9) > 1e-12 {
				t.Fatalf("spend log row %v", row)
			}
			if row["end_user"] == "customer-1" {
				withUser++
			}
			if row["stream"] == true {
				streamed++
			}
		}
		if streamed != 20 || withUser != 40 {
			t.Errorf("%d streamed rows, %d with the end user; want 20 and 40", streamed, withUser)
		}
		raw := Do(t, "GET", w.u+"/spend/logs?api_key="+w.tokenID+"&user_id="+w.userID, w.mk, nil)
		if strings.Contains(string(raw.Body), w.key) || strings.Contains(string(raw.Body), `"hi"`) {
			t.Fatal("a spend log holds the plaintext key or the prompt")
		}
		for _, q := range []string{"team_id=" + w.teamID, "user_id=" + w.userID, "start_date=2000-01-01", "end_date=2999-01-01"} {
			if n := ok(t, Do(t, "GET", w.u+"/spend/logs/paged?"+q, w.mk, nil))["total"].(float64); int(n) != calls {
				t.Errorf("/spend/logs?%s total %v, want %d", q, n, calls)
			}
		}
		if n := ok(t, Do(t, "GET", w.u+"/spend/logs/paged?end_date=2000-01-01", w.mk, nil))["total"]; n != nil && n.(float64) != 0 {
			t.Errorf("/spend/logs before 2000: %v rows", n)
		}
		envelope(t, Do(t, "GET", w.u+"/spend/logs?start_date=yesterday", w.mk, nil), 400)

		// SIGTERM: the proxy ships its outbox before it exits and never
		// comes back.
		dp3 := d.proxy(t)
		waitStatus(t, dp3, w.key, chat("gpt-4o-mini", ""), 200)
		w.traffic(t, 30, dp3)
		if err := dp3.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := dp3.Wait(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(dp3.Output(), "spend outbox shipped") {
			t.Fatalf("proxy exited without confirming its spend was shipped:\n%s", dp3.Output())
		}
		if got, want := w.spend(t), w.upstreamCost(); got[0] != want {
			t.Fatalf("after SIGTERM the key's spend is %d, want %d: the stopped proxy lost spend", got[0], want)
		}

		// SIGKILL: with the control plane down, spend stays in the outbox;
		// the proxy is killed, then restarted, and ships it.
		d.cp.Stop()
		w.traffic(t, 10, dp1)
		deadline := time.Now().Add(5 * time.Second)
		for proxyGauge(t, dp1, "tollgate_spend_outbox_queued") != 0 || proxyGauge(t, dp1, "tollgate_spend_outbox_unacked") < 10 {
			if time.Now().After(deadline) {
				t.Fatal("spend never committed to the outbox")
			}
			time.Sleep(10 * time.Millisecond)
		}
		dp1.Kill()
		d.cp = StartControlPlane(t, d.cp.Options())
		w.u = d.cp.URL()
		StartDataPlane(t, dp1.Options())
		w.waitSpend(t, w.upstreamCost())

		// An end user's spend: every traffic call named "customer-1"
		// (40 + 30 + 10 calls).
		cust := ok(t, Do(t, "GET", w.u+"/customer/info?end_user_id=customer-1", w.mk, nil))
		if got := cust["spend"].(float64); math.Abs(got-80*costPerCall/1e9) > 1e-9 {
			t.Errorf("/customer/info spend %v USD, want %v", got, 80*costPerCall/1e9)
		}
		envelope(t, Do(t, "GET", w.u+"/customer/info?end_user_id=nobody", w.mk, nil), 404)

		// A key at its max_budget is refused with 429 budget_exceeded once
		// its synced spend reaches the budget.
		k2 := ok(t, Do(t, "POST", w.u+"/key/generate", w.mk, map[string]any{"max_budget": 2 * costPerCall / 1e9}))["key"].(string)
		waitStatus(t, dp2, k2, chat("gpt-4o-mini", ""), 200)
		r := waitStatus(t, dp2, k2, chat("gpt-4o-mini", ""), 429)
		e := envelope(t, r, 429)
		if e["type"] != "budget_exceeded" {
			t.Fatalf("budget refusal %s", r.Body)
		}

	})
}
