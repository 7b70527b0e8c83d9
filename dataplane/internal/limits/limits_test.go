package limits

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

var noLimits = state.Limits{MaxBudget: -1, SoftBudget: -1, RPMLimit: -1, TPMLimit: -1, MaxParallelRequests: -1}

// fixedNow is the middle of a minute, so a test never crosses a window.
var fixedNow = time.Unix(1_800_000_030, 0)

func newLimiter() *Limiter {
	return New(Options{Now: func() time.Time { return fixedNow }})
}

type fixture struct {
	p    enforce.Principal
	body enforce.Body
	dep  state.Model
}

func newFixture(t testing.TB, body string) *fixture {
	f := &fixture{}
	f.p.Key = state.KeyInfo{TokenID: "tok-1", TeamID: "team-1", UserID: "user-1", Limits: noLimits, Policy: &state.Policy{}}
	f.p.Team = &state.Team{TeamID: "team-1", Limits: noLimits}
	f.p.User = &state.User{UserID: "user-1", Limits: noLimits}
	f.p.NowUnix = fixedNow.Unix()
	if rej := enforce.ParseBody([]byte(body), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	f.dep = state.Model{ID: "dep", ModelName: "m"}
	return f
}

func (f *fixture) admit(l *Limiter) (func(proxy.Outcome), *enforce.Rejection, http.Header) {
	h := http.Header{}
	done, rej := l.Admit(context.Background(), &proxy.Admission{Route: enforce.RouteChat, Principal: &f.p, Body: &f.body, Deployment: &f.dep, Header: h})
	return done, rej, h
}

const smallBody = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`

func used(l *Limiter, kind, id string, metric uint8, model string) int64 {
	l.mu.RLock()
	c, ok := l.counters[scopeKey{kind, id, metric, model}]
	l.mu.RUnlock()
	if !ok {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

func TestRPMExactAndHeaders(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.RPMLimit = 5
	for i := range 5 {
		done, rej, h := f.admit(l)
		if rej != nil {
			t.Fatalf("request %d refused: %s", i, rej.Message)
		}
		if got := h.Get("X-Ratelimit-Limit-Requests"); got != "5" {
			t.Fatalf("limit header %q", got)
		}
		if got, want := h.Get("X-Ratelimit-Remaining-Requests"), []string{"4", "3", "2", "1", "0"}[i]; got != want {
			t.Fatalf("request %d remaining %q, want %s", i, got, want)
		}
		done(proxy.Outcome{Status: 200})
	}
	_, rej, _ := f.admit(l)
	if rej == nil {
		t.Fatal("6th request admitted")
	}
	if rej.Status != 429 || rej.Type != "rate_limit_error" || rej.Outcome != enforce.RateLimited {
		t.Fatalf("rejection %+v", rej)
	}
	if rej.Header.Get("Retry-After") != "30" || rej.Header.Get("X-Ratelimit-Remaining-Requests") != "0" {
		t.Fatalf("headers %v", rej.Header)
	}
	if got := used(l, "key", "tok-1", metricRPM, ""); got != 5 {
		t.Fatalf("used %d after a rejection, want 5", got)
	}
}

func TestRejectedConsumesNothing(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.RPMLimit = 100
	f.p.Key.Limits.TPMLimit = 10_000
	f.p.Key.Limits.MaxParallelRequests = 10
	f.p.User.Limits.RPMLimit = 2 // the last check refuses
	for range 2 {
		if _, rej, _ := f.admit(l); rej != nil {
			t.Fatal(rej.Message)
		}
	}
	tpm := used(l, "key", "tok-1", metricTPM, "")
	for range 5 {
		if _, rej, _ := f.admit(l); rej == nil {
			t.Fatal("admitted over the user's rpm")
		}
	}
	if got := used(l, "key", "tok-1", metricRPM, ""); got != 2 {
		t.Fatalf("key rpm used %d, want 2", got)
	}
	if got := used(l, "key", "tok-1", metricTPM, ""); got != tpm {
		t.Fatalf("key tpm used %d, want %d", got, tpm)
	}
	if got := used(l, "key", "tok-1", metricPar, ""); got != 2 {
		t.Fatalf("key parallel %d, want 2 (the two admitted, not released)", got)
	}
	// A budget refusal also gives the counters back.
	f.p.User.Limits.RPMLimit = -1
	f.p.Key.Limits.MaxBudget = 100
	f.p.Key.Spend = 99
	f.dep.InputCost = 10_000 // 10 nano-USD per token: a big estimate
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("first request under budget refused: %s", rej.Message)
	}
	if _, rej, _ := f.admit(l); rej == nil || rej.Type != enforce.TypeBudgetHeld || rej.Outcome != enforce.Held {
		t.Fatalf("second request while the first's reservation is in flight: %+v", rej)
	}
	if got := used(l, "key", "tok-1", metricRPM, ""); got != 3 {
		t.Fatalf("key rpm used %d, want 3", got)
	}
}

func TestParallelReleasedOnEveryPath(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Team.Limits.MaxParallelRequests = 2
	for _, o := range []proxy.Outcome{
		{Status: 200, UsageKnown: true, Usage: proxy.Usage{TotalTokens: 10}},
		{Status: 499, Aborted: true}, // client disconnect
		{Status: 502},                // upstream unreachable
		{Status: 500},
		{Status: 200, Streamed: true, Aborted: true},
	} {
		d1, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatal(rej.Message)
		}
		d2, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatal(rej.Message)
		}
		_, rej, _ = f.admit(l)
		if rej == nil || rej.Header.Get("Retry-After") != "1" {
			t.Fatalf("third parallel request: %+v", rej)
		}
		d1(o)
		d2(o)
		if got := used(l, "team", "team-1", metricPar, ""); got != 0 {
			t.Fatalf("outcome %+v: %d slots still held", o, got)
		}
	}
}

func TestTPMSettledWithUsage(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.TPMLimit = 1000
	est := int64(len(smallBody)/4 + 1)
	done, rej, h := f.admit(l)
	if rej != nil {
		t.Fatal(rej.Message)
	}
	if h.Get("X-Ratelimit-Limit-Tokens") != "1000" {
		t.Fatalf("headers %v", h)
	}
	if got := used(l, "key", "tok-1", metricTPM, ""); got != est {
		t.Fatalf("reserved %d, want %d", got, est)
	}
	done(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{PromptTokens: 300, CompletionTokens: 200, TotalTokens: 500}})
	if got := used(l, "key", "tok-1", metricTPM, ""); got != 500 {
		t.Fatalf("settled %d, want 500", got)
	}
	done2, _, _ := f.admit(l)
	done2(proxy.Outcome{Status: 502}) // no usage, failed: nothing counted
	if got := used(l, "key", "tok-1", metricTPM, ""); got != 500 {
		t.Fatalf("after a failed request %d, want 500", got)
	}
	d, _, _ := f.admit(l)
	d(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{TotalTokens: 600}})
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted with 1100 of 1000 tokens used")
	}
}

func TestPerModelLimits(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Policy = &state.Policy{ModelRPMLimit: map[string]int64{"m": 1}, ModelTPMLimit: map[string]int64{"other": 1}}
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatal(rej.Message)
	}
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("per-model rpm not enforced")
	}
}

func TestSharesAndLeases(t *testing.T) {
	// No wait: this test counts what the shares admit at once (the wait
	// for a grant is TestRateLimitWaitsForGrant).
	l := New(Options{Now: func() time.Time { return fixedNow }, RateWait: -1})
	l.SetConnected(true)
	f := newFixture(t, smallBody)
	f.p.Key.Limits.RPMLimit = 31
	l.Apply(&syncv1.LeaseGrant{Proxies: 3, Index: 0}) // 11 of 31
	n := 0
	for range 20 {
		if _, rej, _ := f.admit(l); rej == nil {
			n++
		}
	}
	if n != 11 {
		t.Fatalf("admitted %d with a share of 11", n)
	}
	r := l.Uses()
	if r == nil || len(r.Uses) != 1 || r.Uses[0].Want <= 0 || r.Uses[0].Used != 11 || r.Uses[0].Scope != "key:tok-1:rpm" {
		t.Fatalf("uses %v", r)
	}
	w := fixedNow.Unix() - fixedNow.Unix()%60
	l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: "key:tok-1:rpm", WindowUnix: w, Allowance: 14}}})
	n = 0
	for range 20 {
		if _, rej, _ := f.admit(l); rej == nil {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("admitted %d more after a grant of 3", n)
	}
	if l.Uses() == nil {
		t.Fatal("the exhausted allowance was not reported")
	}
}

func TestBudgetResetPassedCountsZero(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 100
	f.p.Key.Spend = 500
	f.p.Key.Limits.BudgetResetAtUnix = fixedNow.Unix() - 1
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("refused after budget_reset_at: %s", rej.Message)
	}
	f.p.Key.Limits.BudgetResetAtUnix = fixedNow.Unix() + 10
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted over budget before budget_reset_at")
	}
}

func BenchmarkAdmit(b *testing.B) {
	for _, bc := range []struct {
		name string
		set  func(f *fixture)
	}{
		{"none", func(*fixture) {}},
		{"budget", func(f *fixture) { f.p.Key.Limits.MaxBudget = 1 << 40 }},
		{"rpm+tpm+parallel+budget", func(f *fixture) {
			f.p.Key.Limits = state.Limits{MaxBudget: 1 << 40, RPMLimit: 1 << 40, TPMLimit: 1 << 50, MaxParallelRequests: 1 << 40, SoftBudget: -1}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := newLimiter()
			f := newFixture(b, smallBody)
			bc.set(f)
			h := http.Header{}
			a := &proxy.Admission{Route: enforce.RouteChat, Principal: &f.p, Body: &f.body, Deployment: &f.dep, Header: h}
			b.ReportAllocs()
			for b.Loop() {
				done, rej := l.Admit(context.Background(), a)
				if rej != nil {
					b.Fatal(rej.Message)
				}
				done(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{TotalTokens: 10}})
			}
		})
	}
}

func TestBudgetCountsSettledUnsyncedCost(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 100
	f.dep.OutputCost = 1_000 // 1 nano-USD per completion token
	// max_tokens 1: the estimate is 1 nano-USD; each call really costs 30.
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 30, TotalTokens: 30}}
	n := 0
	for range 10 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			break
		}
		n++
		done(usage)
	}
	if n != 4 { // 0, 30, 60, 90 are below 100; 120 is not
		t.Fatalf("admitted %d sequential requests before the spend synced, want 4", n)
	}
	// Part of it synced: 60 of the 120 arrives; the rest is still counted.
	f.p.Key.Spend = 60
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted at 60 synced + 60 pending of 100")
	}
	// A reset (budget_reset_at passed) starts a new period.
	f.p.Key.Limits.BudgetResetAtUnix = fixedNow.Unix()
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("refused after the reset: %s", rej.Message)
	}
}

// With three proxies, one proxy holds at most a third of the remaining
// budget in flight; together they cannot admit more than remains.
func TestBudgetShareAmongProxies(t *testing.T) {
	l := newLimiter()
	l.Apply(&syncv1.LeaseGrant{Proxies: 3, Index: 0})
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 300
	f.dep.OutputCost = 10_000 // 10 nano-USD per completion token
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	var dones []func(proxy.Outcome)
	for range 20 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			if !strings.Contains(rej.Message, "held by requests in flight") {
				t.Fatalf("refusal does not say why: %s", rej.Message)
			}
			break
		}
		dones = append(dones, done)
	}
	if len(dones) != 10 { // estimates 10 each: 0..90 held are below the share of 100
		t.Fatalf("admitted %d concurrent requests with a share of 100 and estimates of 10, want 10", len(dones))
	}
	for _, d := range dones {
		d(proxy.Outcome{Status: 500}) // failed upstream: nothing billed, reservations released
	}
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("refused after the reservations were released: %s", rej.Message)
	}
}

// A max_tokens whose cost is beyond int64 (tokens × price computed in 128
// bits, the estimate capped) cannot overflow the reservations into
// admitting: with one request in flight, a huge one is refused.
func TestBudgetHugeEstimateDoesNotOverflow(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 1 << 52
	f.dep.OutputCost = 1 << 40
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	done, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatalf("first request refused: %s", rej.Message)
	}
	defer done(proxy.Outcome{Status: 500})
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":9000000000000000000,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	for range 3 {
		if d, rej, _ := f.admit(l); rej == nil {
			d(proxy.Outcome{Status: 500})
			t.Fatal("a request estimated beyond int64 was admitted next to one in flight")
		}
	}
}

// The cost of finished requests stays counted until the control plane acks
// their records AND the synced spend reaches the figure the ack names:
// spend from other proxies arriving first does not release it.
func TestBudgetAckedCostHeldUntilSynced(t *testing.T) {
	now := fixedNow
	l := New(Options{Now: func() time.Time { return now }})
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 100
	f.dep.OutputCost = 1_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 40, TotalTokens: 40}}
	for range 2 { // 80 pending
		done, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatal(rej.Message)
		}
		done(usage)
	}
	// Another proxy's 30 is synced: 30 + 80 ≥ 100.
	f.p.Key.Spend = 30
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted with 30 synced (another proxy's) + 80 of ours unsynced")
	}
	// Our records are applied: the transaction left the key at 110.
	l.Acked([]*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 80}}, []*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 110}}, false)
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted after the ack but before the synced spend holds it")
	}
	// Synced: 110 ≥ 100 refuses on the synced spend alone; at a raised
	// budget nothing of ours is counted twice once the other proxies have
	// had the moment they need to see the same spend.
	f.p.Key.Spend = 110
	f.p.Key.Limits.MaxBudget = 111
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("stopped counting our cost the instant the synced spend held it")
	}
	now = now.Add(150 * time.Millisecond)
	done, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatalf("refused at 110 synced of 111 with nothing unsynced: %s", rej.Message)
	}
	done(proxy.Outcome{Status: 500})
}

// An end user with a budget is reserved like the key: settled but unsynced
// cost counts, and the refusal names the end user. Without EndUserID (no
// budget applies) nothing is reserved for it.
func TestEndUserBudgetReserved(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.EndUserID, f.p.EndUserBudget = "cust-1", 100
	f.dep.OutputCost = 1_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[],"user":"cust-1"}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 30, TotalTokens: 30}}
	n := 0
	var last *enforce.Rejection
	for range 10 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			last = rej
			break
		}
		n++
		done(usage)
	}
	if n != 4 {
		t.Fatalf("admitted %d sequential requests before the spend synced, want 4", n)
	}
	// Not acked yet (the costs may already be in the synced spend): held,
	// naming the end user, not exceeded.
	if last == nil || last.Status != 429 || last.Type != enforce.TypeBudgetHeld || !strings.Contains(last.Message, "end user cust-1") {
		t.Fatalf("refusal %+v", last)
	}
	// Another end user (or none) is not held by cust-1's reservations.
	f.p.EndUserID, f.p.EndUserBudget = "", -1
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("refused without an end-user budget: %s", rej.Message)
	}
	f.p.EndUserID, f.p.EndUserBudget = "cust-2", 100
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("cust-2 refused: %s", rej.Message)
	}
}

// A key's model_max_budget is reserved per (key, model): settled unsynced
// cost on the model counts, other models are not held by it.
func TestModelBudgetReserved(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.ModelBudget, f.p.HasModelBudget = 100, true
	f.dep.OutputCost = 1_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 30, TotalTokens: 30}}
	n := 0
	var last *enforce.Rejection
	for range 10 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			last = rej
			break
		}
		n++
		done(usage)
	}
	if n != 4 {
		t.Fatalf("admitted %d sequential requests before the spend synced, want 4", n)
	}
	if last == nil || last.Status != 429 || last.Type != enforce.TypeBudgetHeld || !strings.Contains(last.Message, "key model tok-1/m") {
		t.Fatalf("refusal %+v", last)
	}
	// The same key on a model without a budget is not held.
	f.p.HasModelBudget = false
	if rej := enforce.ParseBody([]byte(`{"model":"other","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("another model refused: %s", rej.Message)
	}
}

// A 2xx without usage counts what the spend record bills (the proxy's
// estimate), and a drained outbox leaves nothing counted: a cost the
// records never carried (a price changed, an append failed) cannot pile up.
func TestBudgetPendingDroppedWhenOutboxDrained(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 100
	f.dep.OutputCost = 1_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	for range 4 { // 4 × 30 estimated
		done, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatal(rej.Message)
		}
		done(proxy.Outcome{Status: 200, UsageEstimated: true, Usage: proxy.Usage{CompletionTokens: 30}})
	}
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted with 120 estimated and unsynced against a budget of 100")
	}
	l.Acked(nil, nil, true) // every record acked, none carried these costs
	done, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatalf("still counting after the outbox drained: %s", rej.Message)
	}
	done(proxy.Outcome{Status: 500})
}

// A team member's budget (max_budget_in_team, else team_member_budget) is
// reserved like the key's: the member's settled but unsynced cost counts.
func TestTeamMemberBudgetReserved(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.p.Team = &state.Team{TeamID: "team-1", Limits: noLimits, TeamMemberBudget: 100,
		Members: []state.TeamMember{{UserID: "user-1", Role: "user", MaxBudgetInTeam: -1}}}
	// What the decision resolves for the gate (enforce: team_member_budget).
	f.p.MemberBudget, f.p.HasMemberBudget = 100, true
	f.dep.OutputCost = 1_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":1,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 30, TotalTokens: 30}}
	n := 0
	var last *enforce.Rejection
	for range 10 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			last = rej
			break
		}
		n++
		done(usage)
	}
	if n != 4 || last == nil || last.Type != enforce.TypeBudgetHeld || !strings.Contains(last.Message, "team member team-1/user-1") {
		t.Fatalf("admitted %d, refusal %+v; want 4 and the member named", n, last)
	}
	// The ack and the synced member spend release it.
	l.Acked([]*syncv1.ObjectSpend{{Kind: "team_member", Id: "team-1/user-1", Spend: 120}}, []*syncv1.ObjectSpend{{Kind: "team_member", Id: "team-1/user-1", Spend: 120}}, false)
	f.p.Team.TeamMemberBudget = 1000
	f.p.Team.Members[0].Spend = 120
	f.p.MemberBudget, f.p.MemberSpend = 1000, 120
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("refused with 120 of 1000 spent: %s", rej.Message)
	}
}

// The number of proxies survives a restart without the control plane.
func TestMembersFileKeepsTheProxyCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.proxies")
	l := New(Options{Now: func() time.Time { return fixedNow }, MembersFile: path})
	if got := l.implicit(300); got != 300 {
		t.Fatalf("alone: share %d, want 300", got)
	}
	l.Apply(&syncv1.LeaseGrant{Proxies: 3, Index: 2})
	restarted := New(Options{Now: func() time.Time { return fixedNow }, MembersFile: path})
	if got := restarted.implicit(300); got != 100 {
		t.Fatalf("after a restart: share %d of 300, want 100 (3 proxies)", got)
	}
}

// Regression (merge of end-user rate limits): every scope limited at once,
// key, team and user (parallel, rpm, tpm each), the end user (rpm, tpm) and
// the key's model (rpm, tpm), takes 13 counters; the admission holds them
// all and gives every one back.
func TestEveryScopeLimitedAtOnce(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	all := func(lim *state.Limits) {
		lim.MaxParallelRequests, lim.RPMLimit, lim.TPMLimit = 10, 10, 100_000
	}
	all(&f.p.Key.Limits)
	all(&f.p.Team.Limits)
	all(&f.p.User.Limits)
	f.p.RateEndUser = &state.EndUser{EndUserID: "eu", RPM: 10, TPM: 100_000, HasRPM: true, HasTPM: true}
	f.p.Key.Policy = &state.Policy{ModelRPMLimit: map[string]int64{"m": 10}, ModelTPMLimit: map[string]int64{"m": 100_000}}
	done, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatal(rej.Message)
	}
	if got := used(l, "key", "tok-1", metricPar, ""); got != 1 {
		t.Fatalf("key parallel in use %d, want 1", got)
	}
	done(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{PromptTokens: 1, CompletionTokens: 1, TotalTokens: 2}})
	for _, s := range []struct{ kind, id string }{{"key", "tok-1"}, {"team", "team-1"}, {"user", "user-1"}} {
		if got := used(l, s.kind, s.id, metricPar, ""); got != 0 {
			t.Fatalf("%s parallel in use %d after the request ended", s.kind, got)
		}
	}
}

// The spend shipper lingers between batches; the gate asks it to hurry
// once this proxy's finished, unshipped spend holds half its share of a
// budget, and when a request is held for budget. Far from a budget (or
// without one) it never asks.
func TestSpendUrgentNearTheShare(t *testing.T) {
	urgent := func(l *Limiter) bool {
		select {
		case <-l.SpendUrgent():
			return true
		default:
			return false
		}
	}
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 10, TotalTokens: 10}}

	l := newLimiter()
	f := newFixture(t, `{"model":"m","max_tokens":1,"messages":[]}`)
	f.dep.OutputCost = 1_000 // 1 nano-USD per completion token: 10 a call
	for range 20 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatal(rej.Message)
		}
		done(usage)
	}
	if urgent(l) {
		t.Fatal("no budget anywhere, yet the gate asked the shipper to hurry")
	}

	f.p.Key.Limits.MaxBudget = 1_000_000 // far away
	for range 20 {
		done, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatal(rej.Message)
		}
		done(usage)
	}
	if urgent(l) {
		t.Fatal("200 of a 1,000,000 budget unshipped, yet the gate asked the shipper to hurry")
	}

	l = newLimiter()
	f.p.Key.Limits.MaxBudget = 100
	n := 0
	for ; n < 10 && !urgent(l); n++ {
		done, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatalf("refused after %d calls: %s", n, rej.Message)
		}
		done(usage)
	}
	// Each call leaves 10 pending: the gate asks once what this proxy
	// holds (pending plus the new reservation) reaches half the share of 100.
	if n < 5 || n > 7 {
		t.Fatalf("the gate asked to hurry after %d calls of 10 against a budget of 100, want it at about half", n)
	}

	// Held for budget (the share is taken by unsynced spend): hurry.
	l = newLimiter()
	l.budgetWait = -1 // refuse at once instead of waiting
	f.p.Key.Limits.MaxBudget = 25
	f.dep.OutputCost = 1_000
	for i := 0; ; i++ {
		done, rej, _ := f.admit(l)
		for urgent(l) { // drain what admissions signalled
		}
		if rej != nil {
			break
		}
		if i > 10 {
			t.Fatal("never refused")
		}
		done(usage)
	}
	if _, rej, _ := f.admit(l); rej == nil {
		t.Fatal("admitted beyond the budget")
	}
	if !urgent(l) {
		t.Fatal("a request held for budget did not ask the shipper to hurry")
	}
}
