package enforce_test

import (
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// The hot-path benchmarks of issue 7 (deploy/bench/hotpaths.sh): the
// header-only checks (key hashing, lookup, key/team/user/org checks) and the
// body checks with and without enforced params. The whole decision, with the
// body plan, is BenchmarkDecision in package proxy.

const benchBody = `{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly and cite sources when you can."},{"role":"user","content":"What is the capital of France? Please also tell me something interesting about its history, in two sentences."}],"temperature":0.2,"max_tokens":256,"user":"end-user-42","metadata":{"generation_name":"faq"}}`

const benchKeys = 100_000

func benchFixture(b *testing.B, policy *state.Policy) (*enforce.Enforcer, func(int) string) {
	b.Helper()
	st := enforcetest.New()
	st.AddModel(&state.Model{ID: "dep-mini", ModelName: "gpt-4o-mini", UpstreamModel: "openai/gpt-4o-mini", AccessGroups: []string{"gpt"}})
	st.AddOrg(&state.Org{OrganizationID: "org-a", Limits: enforcetest.NoLimits})
	st.AddTeam(&state.Team{TeamID: "team-a", OrganizationID: "org-a", Models: []string{"gpt"}, Limits: enforcetest.NoLimits})
	st.AddUser(&state.User{UserID: "user-a", Limits: enforcetest.NoLimits})
	limits := enforcetest.NoLimits
	limits.MaxBudget = 100_000_000
	secret := st.AddBulkKeys(benchKeys, state.KeyInfo{UserID: "user-a", TeamID: "team-a", Limits: limits, Spend: 1_234_567, Policy: policy})
	return &enforce.Enforcer{State: st}, secret
}

// BenchmarkAuthenticate: SHA-256 of the presented key, the lookup among
// 100k keys, and the key, team, user and organization checks.
func BenchmarkAuthenticate(b *testing.B) {
	e, secret := benchFixture(b, nil)
	ks := make([]string, 1024)
	for i := range ks {
		ks[i] = secret((i * 7919) % benchKeys)
	}
	var p enforce.Principal
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p = enforce.Principal{}
		if rej := e.Authenticate(ks[i&1023], "/v1/chat/completions", now*1000, &p); rej != nil {
			b.Fatal(rej.Message)
		}
	}
}

// BenchmarkBodyChecks: parsing the body and authorizing it (model access,
// budgets, enforced params) for a key without and with enforced params.
func BenchmarkBodyChecks(b *testing.B) {
	for _, bc := range []struct {
		name   string
		policy *state.Policy
	}{
		{"plain", nil},
		{"enforced_params", &state.Policy{EnforcedParams: []string{"user", "metadata.generation_name"}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e, secret := benchFixture(b, bc.policy)
			var p enforce.Principal
			if rej := e.Authenticate(secret(1), "/v1/chat/completions", now*1000, &p); rej != nil {
				b.Fatal(rej.Message)
			}
			raw := []byte(benchBody)
			var body enforce.Body
			b.ReportAllocs()
			for b.Loop() {
				if rej := enforce.ParseBody(raw, &body); rej != nil {
					b.Fatal(rej.Message)
				}
				if _, rej := e.Authorize(&p, &body); rej != nil {
					b.Fatal(rej.Message)
				}
			}
		})
	}
}
