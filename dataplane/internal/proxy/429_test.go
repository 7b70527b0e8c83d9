package proxy

import (
	"context"
	"net/http"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
)

type refusingGate struct{}

func (refusingGate) Admit(context.Context, *Admission) (func(Outcome), *enforce.Rejection) {
	r := enforce.New(enforce.RateLimited, 429, enforce.TypeRateLimit, "Rate limit reached", "")
	r.Header = http.Header{"Retry-After": {"7"}}
	return nil, r
}

type settlingGate struct{ settled []Outcome }

func (g *settlingGate) Admit(_ context.Context, a *Admission) (func(Outcome), *enforce.Rejection) {
	if a.Deployment == nil || a.Principal.Key.TokenID == "" || a.Body.Model == "" {
		panic("incomplete admission")
	}
	return func(o Outcome) { g.settled = append(g.settled, o) }, nil
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
	g := &settlingGate{}
	e := newEnv(t, func(o *Options) { o.Gate = g })
	if resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	e.usage()
	if len(g.settled) != 1 || g.settled[0].Usage.TotalTokens != 8 {
		t.Fatalf("settled %+v", g.settled)
	}
}
