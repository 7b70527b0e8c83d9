package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// limitKey creates a key with the given limits and waits until every proxy
// knows it, without consuming any counter (an unknown model is refused
// before the rate limits).
func limitKey(t *testing.T, d *deployment, body map[string]any, dps ...*DataPlane) string {
	t.Helper()
	k := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, body))
	key := k["key"].(string)
	for _, dp := range dps {
		waitStatus(t, dp, key, chat("no-such-model", ""), 400)
	}
	return key
}

// inWindow waits until at least need seconds remain in the current minute
// (rpm windows are wall-clock minutes).
func inWindow(need int) {
	if s := time.Now().Second(); s > 60-need {
		time.Sleep(time.Duration(61-s) * time.Second)
	}
}

func TestRateLimitsAcrossProxies(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) { rateLimitsAcrossProxies(t, o) })
}

func rateLimitsAcrossProxies(t *testing.T, o CPOptions) {
	d := newDeployment(t, o)
	dps := []*DataPlane{d.proxy(t), d.proxy(t), d.proxy(t)}

	t.Run("rpm even load", func(t *testing.T) {
		key := limitKey(t, d, map[string]any{"rpm_limit": 30}, dps...)
		inWindow(20)
		var admitted, refused atomic.Int64
		var first429 atomic.Pointer[Response]
		var firstOK atomic.Pointer[Response]
		var wg sync.WaitGroup
		for w := range 9 {
			wg.Go(func() {
				for i := range 10 {
					dp := dps[(w+i)%3]
					r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
					switch r.Status {
					case 200:
						admitted.Add(1)
						firstOK.CompareAndSwap(nil, &r)
					case 429:
						refused.Add(1)
						first429.CompareAndSwap(nil, &r)
					default:
						t.Errorf("status %d: %s", r.Status, r.Body)
					}
				}
			})
		}
		wg.Wait()
		n := admitted.Load()
		t.Logf("rpm_limit 30, 90 requests over 3 proxies: %d admitted, %d refused", n, refused.Load())
		if n < 29 || n > 36 { // 0.95x .. 1.2x
			t.Fatalf("admitted %d, want 0.95-1.2 x 30", n)
		}
		r := first429.Load()
		e := envelope(t, *r, 429)
		if e["type"] != "rate_limit_error" {
			t.Fatalf("429 body %s", r.Body)
		}
		if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
			t.Fatalf("Retry-After %q", r.Header.Get("Retry-After"))
		}
		if r.Header.Get("X-Ratelimit-Limit-Requests") != "30" || r.Header.Get("X-Ratelimit-Remaining-Requests") != "0" {
			t.Fatalf("429 headers %v", r.Header)
		}
		okr := firstOK.Load()
		if okr.Header.Get("X-Ratelimit-Limit-Requests") != "30" || okr.Header.Get("X-Ratelimit-Remaining-Requests") == "" {
			t.Fatalf("admitted response headers %v", okr.Header)
		}
	})

	t.Run("rpm all load on one proxy", func(t *testing.T) {
		// The other proxies' unused shares are reclaimed through leases.
		key := limitKey(t, d, map[string]any{"rpm_limit": 30}, dps...)
		inWindow(20)
		n := 0
		for range 150 {
			r := Do(t, "POST", dps[0].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
			if r.Status == 200 {
				n++
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("rpm_limit 30, 150 requests through one of 3 proxies: %d admitted", n)
		if n < 29 || n > 36 {
			t.Fatalf("admitted %d, want 0.95-1.2 x 30", n)
		}
	})

	t.Run("rejected request consumes nothing", func(t *testing.T) {
		// A key with rpm 3 whose requests are refused by its parallel
		// limit: the refusals must not use up its requests.
		key := limitKey(t, d, map[string]any{"rpm_limit": 3, "max_parallel_requests": 1}, dps...)
		inWindow(25)
		// Long enough for the 9 refusals below: a refusal by a limit in
		// use on another proxy waits up to --rate-limit-wait (1 s) for
		// the control plane's answer and the settle time of idle shares.
		slow := chat("gpt-4o-mini", `,"metadata":{"upstream_delay_ms":12000}`)
		done := make(chan Response, 1)
		go func() { done <- Do(t, "POST", dps[0].URL()+"/v1/chat/completions", key, slow) }()
		time.Sleep(300 * time.Millisecond)
		for range 3 {
			for _, dp := range dps {
				r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
				if r.Status != 429 || r.Header.Get("Retry-After") == "" {
					t.Fatalf("parallel request admitted or without Retry-After: %d %v", r.Status, r.Header)
				}
			}
		}
		if r := <-done; r.Status != 200 {
			t.Fatalf("slow request: %d %s", r.Status, r.Body)
		}
		// 9 refusals later the key still has 2 of its 3 requests. With
		// one parallel slot and 3 requests shared by 3 proxies, the slot
		// and the requests move (leases) to the proxies that ask, once
		// the others' use has been still for a moment: retry briefly.
		n := 0
		deadline := time.Now().Add(5 * time.Second)
		for i := 0; n < 2 && time.Now().Before(deadline); i++ {
			r := Do(t, "POST", dps[i%3].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
			if r.Status == 200 {
				n++
				continue
			}
			if r.Status != 429 {
				t.Fatalf("after refusals: %d %s", r.Status, r.Body)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n != 2 {
			t.Fatalf("after 9 refusals only %d more admitted, want 2 (rpm 3, one used)", n)
		}
		time.Sleep(time.Second) // let every lease settle, then nothing is left
		for i := range 9 {
			if r := Do(t, "POST", dps[i%3].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 429 {
				t.Fatalf("a 4th request in the minute: %d %s", r.Status, r.Body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("max_parallel_requests with a slow upstream", func(t *testing.T) {
		key := limitKey(t, d, map[string]any{"max_parallel_requests": 3}, dps...)
		slow := chat("gpt-4o-mini", `,"metadata":{"upstream_delay_ms":1000}`)
		var admitted, refused atomic.Int64
		var wg sync.WaitGroup
		for i := range 12 {
			wg.Go(func() {
				r := Do(t, "POST", dps[i%3].URL()+"/v1/chat/completions", key, slow)
				switch r.Status {
				case 200:
					admitted.Add(1)
				case 429:
					refused.Add(1)
					if r.Header.Get("Retry-After") == "" {
						t.Errorf("429 without Retry-After")
					}
				default:
					t.Errorf("status %d", r.Status)
				}
			})
		}
		wg.Wait()
		t.Logf("max_parallel_requests 3, 12 concurrent slow requests over 3 proxies: %d admitted", admitted.Load())
		if admitted.Load() != 3 {
			t.Fatalf("admitted %d concurrently, want 3", admitted.Load())
		}
		// Every slot came back: with nothing in flight, a request is
		// admitted on any proxy (issue 17: one was refused while the
		// control plane had not yet reclaimed the idle proxy's share).
		for i := range 3 {
			if r := Do(t, "POST", dps[i].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 200 {
				t.Fatalf("after the slow requests: %d %s", r.Status, r.Body)
			}
		}
		// And at once on each of the three proxies together.
		var together sync.WaitGroup
		for i := range 3 {
			together.Go(func() {
				if r := Do(t, "POST", dps[i].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 200 {
					t.Errorf("three at once after the slow requests, proxy %d: %d %s", i, r.Status, r.Body)
				}
			})
		}
		together.Wait()
	})

	t.Run("degraded without the control plane", func(t *testing.T) {
		if g := proxyGauge(t, dps[0], "tollgate_limits_degraded"); g != 0 {
			t.Fatalf("tollgate_limits_degraded %v while connected", g)
		}
		key := limitKey(t, d, map[string]any{"rpm_limit": 6}, dps...)
		inWindow(15)
		d.cp.Kill()
		for _, dp := range dps {
			deadline := time.Now().Add(10 * time.Second)
			for proxyGauge(t, dp, "tollgate_limits_degraded") != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("proxy %s not degraded without its control plane", dp.ID)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		// Each proxy keeps enforcing its share (2 of 6).
		n := 0
		for i := range 30 {
			if r := Do(t, "POST", dps[i%3].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status == 200 {
				n++
			}
		}
		t.Logf("rpm_limit 6, control plane down, 30 requests over 3 proxies: %d admitted", n)
		if n != 6 {
			t.Fatalf("admitted %d with the control plane down, want the 6 held in shares", n)
		}
	})
}

// TestBudgetHammeredAcrossProxies: 24 concurrent clients over 3 proxies
// against a budget of 30 calls (the issue's $1.00 at $0.033 a request).
// Each proxy holds at most its share of the remaining budget in flight or
// unsynced, so together they overshoot by at most about one request per
// proxy; a request refused only because the rest is held waits, so clients
// that stop at their first refusal still use all of it (they are refused
// as budget_exceeded only once it is spent).
func TestBudgetHammeredAcrossProxies(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dps := []*DataPlane{d.proxy(t), d.proxy(t), d.proxy(t)}
		for _, mode := range []hammerMode{stopAtFirstRefusal, honourRetryAfter} {
			for _, delay := range []int{0, 20} {
				t.Run(fmt.Sprintf("%s upstream %dms", mode, delay), func(t *testing.T) {
					const budget = 30 * costPerCall
					h := hammerBudget(t, d, dps, 24, budget, delay, mode)
					t.Logf("%s, upstream %d ms: max_budget %d nano-USD (%d calls), 24 clients over 3 proxies: %d admitted, spend %d nano-USD (overspend %d), refusals: %d budget_exceeded, %d held",
						mode, delay, budget, budget/costPerCall, h.admitted, h.spend, h.spend-budget, h.exceeded, h.held)
					checkBudgetBound(t, h, budget, 24, len(dps), mode.minUsable())
				})
			}
		}
	})
}

// TestBudgetSequentialClientLikeLiteLLM is the first case: max_budget
// 1.5 calls on one proxy (0.05 at 0.033 a call). One client sending request
// after request gets the second admitted (spend 1 call < 1.5), as under
// LiteLLM, and the third refused as budget_exceeded (spent), never as held.
func TestBudgetSequentialClientLikeLiteLLM(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dps := []*DataPlane{d.proxy(t), d.proxy(t), d.proxy(t)}
		for i, dp := range dps {
			t.Run(fmt.Sprintf("via proxy %d of 3", i), func(t *testing.T) {
				key := limitKey(t, d, map[string]any{"max_budget": money.ToUSD(costPerCall * 3 / 2)}, dps...)
				for n := 1; n <= 2; n++ {
					if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 200 {
						t.Fatalf("request %d (spend %d of 1.5 calls): %d %s", n, n-1, r.Status, r.Body)
					}
				}
				r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
				if e := envelope(t, r, 429); e["type"] != "budget_exceeded" || !strings.Contains(e["message"].(string), "Budget has been exceeded") {
					t.Fatalf("third request (spend 2 of 1.5 calls): %s", r.Body)
				}
			})
		}
	})
}

// checkBudgetBound checks exact spend, usability and the published bound.
func checkBudgetBound(t *testing.T, h hammerResult, budget int64, clients, proxies int, minUsable float64) {
	t.Helper()
	n, spend := h.admitted, h.spend
	if spend != n*costPerCall {
		t.Fatalf("spend %d, want %d for %d admitted calls", spend, n*costPerCall, n)
	}
	if float64(spend) < float64(budget)*minUsable {
		t.Fatalf("only %d of %d usable (want %.0f%%)", spend, budget, 100*minUsable)
	}
	// The published bound (DESIGN.md): at most one in-flight request per
	// concurrent client over the budget. By construction it is tighter:
	// about one request per proxy (each may admit one while it holds less
	// than its share) plus what is applied in the milliseconds one proxy
	// sees the spend before another; checked here as twice the proxies.
	bound := int64(min(clients, 2*proxies)) * costPerCall
	if over := spend - budget; over > bound {
		t.Fatalf("spend %d: %d over the budget, bound %d", spend, over, bound)
	}
}

// TestBudgetOverspendTable measures budget overspend, usable budget (clients
// stopping at their first refusal; clients honouring Retry-After) and rpm
// accuracy at 1, 8, 24 and 64 concurrent clients with 1 and 3 proxies (deploy/bench/overspend.sh
// runs it with TOLLGATE_OVERSPEND_TABLE=1 and prints the README's tables).
func TestBudgetOverspendTable(t *testing.T) {
	if os.Getenv("TOLLGATE_OVERSPEND_TABLE") == "" {
		t.Skip("a measurement: set TOLLGATE_OVERSPEND_TABLE=1 (deploy/bench/overspend.sh)")
	}
	const budget = 30 * costPerCall // $1.00 at $0.033 a request
	rows := []string{"| proxies | clients | budget (calls) | admitted calls (first refusal / Retry-After) | overspend, calls (first refusal / Retry-After) | usable, stopping at first refusal | usable, honouring Retry-After |", "|---|---|---|---|---|---|---|"}
	rpmRows := []string{"| proxies | clients | rpm_limit | requests sent in the minute | admitted | admitted / limit |", "|---|---|---|---|---|---|"}
	for _, proxies := range []int{1, 3} {
		d := newDeployment(t, CPOptions{DatabaseURL: os.Getenv("TOLLGATE_OVERSPEND_DB")})
		var dps []*DataPlane
		for range proxies {
			dps = append(dps, d.proxy(t))
		}
		for _, clients := range []int{1, 8, 24, 64} {
			for _, delay := range []int{0, 20} {
				first := hammerBudget(t, d, dps, clients, budget, delay, stopAtFirstRefusal)
				retry := hammerBudget(t, d, dps, clients, budget, delay, honourRetryAfter)
				t.Run(fmt.Sprintf("%d proxies %d clients %d ms", proxies, clients, delay), func(t *testing.T) {
					checkBudgetBound(t, first, budget, clients, proxies, stopAtFirstRefusal.minUsable())
					checkBudgetBound(t, retry, budget, clients, proxies, honourRetryAfter.minUsable())
				})
				usable := func(h hammerResult) float64 { return 100 * float64(min(h.spend, budget)) / float64(budget) }
				rows = append(rows, fmt.Sprintf("| %d | %d (upstream %d ms) | %d | %d / %d | %d / %d | %.1f%% | %.1f%% |", proxies, clients, delay,
					budget/costPerCall, first.admitted, retry.admitted, (first.spend-budget)/costPerCall, (retry.spend-budget)/costPerCall,
					usable(first), usable(retry)))
			}
			const rpm = 60
			n, sent := hammerRPM(t, d, dps, clients, rpm)
			t.Run(fmt.Sprintf("%d proxies %d clients rpm", proxies, clients), func(t *testing.T) {
				if ratio := float64(n) / rpm; ratio < 0.95 || ratio > 1.2 {
					t.Fatalf("admitted %d with rpm_limit %d (%.2f×), want 0.95–1.2×", n, rpm, ratio)
				}
			})
			rpmRows = append(rpmRows, fmt.Sprintf("| %d | %d | %d | %d | %d | %.2f× |", proxies, clients, rpm, sent, n, float64(n)/rpm))
		}
	}
	fmt.Println(strings.Join(rows, "\n"))
	fmt.Println()
	fmt.Println(strings.Join(rpmRows, "\n"))
}

// hammerRPM sends up to 3×limit requests from clients concurrent clients,
// round robin over dps, with a fresh key whose rpm_limit is limit, inside
// one wall-clock minute, and returns how many were admitted and sent.
// Clients stop sending 1.5 s before the minute ends: a refused request may
// wait (--rate-limit-wait, 1 s) for room lent by another proxy, and one
// still waiting when the minute turns is decided again in the next
// minute's fresh window and admitted there.
func hammerRPM(t *testing.T, d *deployment, dps []*DataPlane, clients int, limit int64) (admittedN, sentN int64) {
	key := limitKey(t, d, map[string]any{"rpm_limit": limit}, dps...)
	inWindow(15)
	end := time.Now().Truncate(time.Minute).Add(time.Minute - 1500*time.Millisecond)
	var sent, admitted atomic.Int64
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := 0; time.Now().Before(end) && sent.Add(1) <= 3*limit; i++ {
				dp := dps[(c+i)%len(dps)]
				r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
				switch r.Status {
				case 200:
					admitted.Add(1)
				case 429:
				default:
					t.Errorf("status %d: %s", r.Status, r.Body)
					return
				}
			}
		})
	}
	wg.Wait()
	return admitted.Load(), min(sent.Load(), 3*limit)
}

// hammerMode is how a hammering client treats a refusal.
type hammerMode int

const (
	// stopAtFirstRefusal: like most scripts, the client stops at its
	// first 429 of any kind.
	stopAtFirstRefusal hammerMode = iota
	// honourRetryAfter: a 429 with Retry-After (budget_held) is retried
	// after it; one without (budget_exceeded) stops the client.
	honourRetryAfter
)

func (m hammerMode) String() string {
	if m == honourRetryAfter {
		return "clients honouring Retry-After"
	}
	return "clients stopping at first refusal"
}

// minUsable is the share of the budget the issue requires be admitted.
func (m hammerMode) minUsable() float64 {
	if m == honourRetryAfter {
		return 0.99
	}
	return 0.97
}

type hammerResult struct {
	admitted, spend int64
	exceeded, held  int64 // refusals by type
}

// hammerBudget runs clients concurrent clients, round robin over dps,
// against a fresh key with max_budget budget (nano-USD) until the budget
// refuses them (as mode says), and returns the admitted calls, the settled
// spend and the refusals.
func hammerBudget(t *testing.T, d *deployment, dps []*DataPlane, clients int, budget int64, delayMS int, mode hammerMode) hammerResult {
	key := limitKey(t, d, map[string]any{"max_budget": money.ToUSD(budget)}, dps...)
	body := chat("gpt-4o-mini", fmt.Sprintf(`,"metadata":{"upstream_delay_ms":%d}`, delayMS))
	var admitted, exceeded, held atomic.Int64
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			dp := dps[c%len(dps)]
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
				r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, body)
				switch r.Status {
				case 200:
					admitted.Add(1)
				case 429:
					ra := r.Header.Get("Retry-After")
					if strings.Contains(string(r.Body), `"budget_exceeded"`) {
						exceeded.Add(1)
						if ra != "" {
							t.Errorf("budget_exceeded with Retry-After %q", ra)
						}
					} else {
						held.Add(1)
					}
					if mode == stopAtFirstRefusal || ra == "" {
						return
					}
					s, _ := strconv.Atoi(ra)
					time.Sleep(time.Duration(s) * time.Second)
				default:
					t.Errorf("status %d: %s", r.Status, r.Body)
					return
				}
			}
			t.Errorf("client %d still admitted after 30 s", c)
		})
	}
	wg.Wait()
	// Wait for the spend to settle, then compare.
	var spend int64
	for deadline := time.Now().Add(10 * time.Second); ; {
		k := ok(t, Do(t, "GET", d.cp.URL()+"/key/info?key="+key, d.cp.MasterKey, nil))
		f, _ := k["info"].(map[string]any)["spend"].(float64)
		spend, _ = money.FromUSD(f)
		if spend == admitted.Load()*costPerCall || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return hammerResult{admitted: admitted.Load(), spend: spend, exceeded: exceeded.Load(), held: held.Load()}
}

// TestBudgetDurationResetsOnTime: a key with a 3 s (then 10 s) budget_duration spends
// its budget, is refused as budget_exceeded on every proxy, and works again on every proxy
// within a second of budget_reset_at, which the control plane advances by
// the duration.
func TestBudgetDurationResetsOnTime(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dps := []*DataPlane{d.proxy(t), d.proxy(t)}
		for _, period := range []time.Duration{3 * time.Second, 10 * time.Second} {
			t.Run(period.String(), func(t *testing.T) { budgetDurationResetsOnTime(t, d, dps, period) })
		}
	})
}

func budgetDurationResetsOnTime(t *testing.T, d *deployment, dps []*DataPlane, period time.Duration) {
	g := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey,
		map[string]any{"max_budget": money.ToUSD(2 * costPerCall), "budget_duration": fmt.Sprintf("%ds", int(period.Seconds()))}))
	key, tok := g["key"].(string), g["token_id"].(string)
	resetAt := func() time.Time {
		info := ok(t, Do(t, "GET", d.cp.URL()+"/key/info?key="+tok, d.cp.MasterKey, nil))["info"].(map[string]any)
		ts, _ := info["budget_reset_at"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			t.Fatalf("budget_reset_at %q: %v", ts, err)
		}
		return at
	}
	first := resetAt()
	if d := time.Until(first); d <= 0 || d > period+time.Second {
		t.Fatalf("budget_reset_at %s is not within the %s duration", first, period)
	}
	if time.Until(first) < period*2/5 { // leave room to spend the budget
		time.Sleep(time.Until(first) + 200*time.Millisecond)
		first = resetAt()
	}
	waitStatus(t, dps[0], key, chat("gpt-4o-mini", ""), 200)
	waitStatus(t, dps[1], key, chat("gpt-4o-mini", ""), 200)
	for _, dp := range dps {
		r := waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 429)
		if time.Now().Before(first) && !strings.Contains(string(r.Body), `"budget_exceeded"`) {
			t.Fatalf("refusal at the limit on %s: %s", dp.ID, r.Body)
		}
	}
	if time.Now().After(first) {
		t.Skip("the machine was too slow to spend the budget within its period")
	}
	time.Sleep(time.Until(first))
	for _, dp := range dps {
		start := time.Now()
		r := waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
		if late := time.Since(first); late > time.Second {
			t.Fatalf("proxy %s admitted again %s after budget_reset_at (waited %s): %s", dp.ID, late, time.Since(start), r.Body)
		}
	}
	// The control plane reset the stored spend and advanced the reset.
	deadline := time.Now().Add(5 * time.Second)
	for {
		next := resetAt()
		if next.Sub(first) >= period-time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("budget_reset_at still %s after %s", next, first)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTeamMemberBudget: a member's max_budget_in_team (set through
// /team/member_update) stops that member's key in the team on every proxy
// once spent; another member's key in the same team keeps working.
func TestTeamMemberBudget(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d := newDeployment(t, o)
		dps := []*DataPlane{d.proxy(t), d.proxy(t)}
		u, mk := d.cp.URL(), d.cp.MasterKey
		ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id":"capped","user_role":"internal_user","auto_create_key":false}`))
		ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id":"free","user_role":"internal_user","auto_create_key":false}`))
		ok(t, Do(t, "POST", u+"/team/new", mk, `{"team_id":"tm-budget","members_with_roles":[{"user_id":"capped","role":"user"},{"user_id":"free","role":"user"}]}`))
		ok(t, Do(t, "POST", u+"/team/member_update", mk, map[string]any{"team_id": "tm-budget", "user_id": "capped", "max_budget_in_team": float64(2*costPerCall) / 1e9}))
		capped := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"team_id":"tm-budget","user_id":"capped"}`))["key"].(string)
		free := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"team_id":"tm-budget","user_id":"free"}`))["key"].(string)
		waitStatus(t, dps[0], capped, chat("gpt-4o-mini", ""), 200)
		waitStatus(t, dps[1], capped, chat("gpt-4o-mini", ""), 200)
		for _, dp := range dps {
			r := waitStatus(t, dp, capped, chat("gpt-4o-mini", ""), 429)
			if !strings.Contains(string(r.Body), "User=capped in Team=tm-budget") || !strings.Contains(string(r.Body), "budget_exceeded") {
				t.Fatalf("member refusal: %s", r.Body)
			}
		}
		for _, dp := range dps {
			waitStatus(t, dp, free, chat("gpt-4o-mini", ""), 200)
		}
	})
}
