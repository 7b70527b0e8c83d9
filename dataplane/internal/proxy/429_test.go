package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

type refusingGate struct{}

func (refusingGate) Admit(context.Context, *Admission) (func(Outcome), *enforce.Rejection) {
	r := enforce.New(enforce.RateLimited, 429, enforce.TypeRateLimit, "Rate limit reached", "")
	r.Header = http.Header{"Retry-After": {"7"}}
	return nil, r
}

type settlingGate struct{ settled chan Outcome }

func (g *settlingGate) Admit(_ context.Context, a *Admission) (func(Outcome), *enforce.Rejection) {
	if a.Deployment == nil || a.Principal.Key.TokenID == "" || a.Body.Model == "" {
		panic("incomplete admission")
	}
	return func(o Outcome) { g.settled <- o }, nil
}

func TestGateRefusal(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Gate = refusingGate{} })
	resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`)
	envelope(t, resp, b, 429)
	if resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("headers %v", resp.Header)
	}
	e.assertNoUpstream()
}

func TestGateSettles(t *testing.T) {
	g := &settlingGate{settled: make(chan Outcome, 4)}
	e := newEnv(t, func(o *Options) { o.Gate = g })
	if resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	e.usage()
	select {
	case o := <-g.settled:
		if o.Usage.TotalTokens != 8 {
			t.Fatalf("settled %+v", o)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the gate was never settled")
	}
	select {
	case o := <-g.settled:
		t.Fatalf("settled twice: %+v", o)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestBudgetExceeded(t *testing.T) {
	e := newEnv(t)
	e.st.AddTeam(&state.Team{TeamID: "broke", Limits: state.Limits{MaxBudget: 1_000_000_000, RPMLimit: -1}, Spend: 2_500_000_000})
	e.st.AddKey("sk-broketeam-0123456789abcdef", state.KeyInfo{TokenID: "bt", TeamID: "broke", Limits: enforcetest.NoLimits})
	e.st.AddKey("sk-brokekey-0123456789abcdef", state.KeyInfo{TokenID: "bk", Limits: state.Limits{MaxBudget: 100_000, RPMLimit: -1}, Spend: 100_000})
	e.st.AddKey("sk-richkey-0123456789abcdef", state.KeyInfo{TokenID: "rk", Limits: state.Limits{MaxBudget: 100_000, RPMLimit: -1}, Spend: 99_000})
	resp, b := e.do("POST", "/chat/completions", "sk-brokekey-0123456789abcdef", `{"model":"gpt-4o"}`)
	msg, typ, _ := envelope(t, resp, b, 429)
	if typ != "budget_exceeded" || msg != "Budget has been exceeded! Current cost: 0.0001, Max budget: 0.0001 (ExceededTokenBudget: Current spend for token: 0.0001; Max Budget for Token: 0.0001)" {
		t.Fatalf("%s %s", typ, msg)
	}
	resp, b = e.do("POST", "/chat/completions", "sk-broketeam-0123456789abcdef", `{"model":"gpt-4o"}`)
	msg, typ, _ = envelope(t, resp, b, 429)
	if typ != "budget_exceeded" || !strings.Contains(msg, "Team=broke Current cost: 2.5, Max budget: 1") {
		t.Fatalf("%s %s", typ, msg)
	}
	e.assertNoUpstream()
	if resp, b := e.do("POST", "/chat/completions", "sk-richkey-0123456789abcdef", `{"model":"gpt-4o"}`); resp.StatusCode != 200 {
		t.Fatalf("under budget: %d %s", resp.StatusCode, b)
	}
}

// refreshingGate waits like limits.Limiter: it changes the state, then asks
// the proxy to decide the request again (Admission.Refresh).
type refreshingGate struct {
	change func()
	seen   chan int64
}

func (g *refreshingGate) Admit(_ context.Context, a *Admission) (func(Outcome), *enforce.Rejection) {
	g.change()
	if rej := a.Refresh.Refresh(); rej != nil {
		return nil, rej
	}
	g.seen <- a.Principal.Key.Spend
	return func(Outcome) {}, nil
}

// A waiting gate re-reads the state through Refresh: the key's synced
// spend as it is now, and a refusal the decision now makes (the budget is
// spent) ends the wait with the decision's own rejection.
func TestGateRefreshDecidesAgain(t *testing.T) {
	const key = "sk-refresh-0123456789abcdef"
	g := &refreshingGate{seen: make(chan int64, 1)}
	e := newEnv(t, func(o *Options) { o.Gate = g })
	setSpend := func(spend int64) func() {
		return func() {
			e.st.AddKey(key, state.KeyInfo{TokenID: "rf", Limits: state.Limits{MaxBudget: 100, RPMLimit: -1}, Spend: spend})
		}
	}
	setSpend(10)()
	g.change = setSpend(60)
	if resp, b := e.do("POST", "/chat/completions", key, `{"model":"gpt-4o"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if s := <-g.seen; s != 60 {
		t.Fatalf("refreshed spend %d, want 60", s)
	}
	g.change = setSpend(100)
	resp, b := e.do("POST", "/chat/completions", key, `{"model":"gpt-4o"}`)
	if _, typ, _ := envelope(t, resp, b, 429); typ != "budget_exceeded" {
		t.Fatalf("after the spend reached the budget: %s", typ)
	}
}
