package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// countingGate records whether anything got as far as the rate-limit seam.
type countingGate struct{ n int }

func (g *countingGate) Admit(context.Context, *Admission) (func(Outcome), *enforce.Rejection) {
	g.n++
	return nil, nil
}

func TestUnauthorized(t *testing.T) {
	gate := &countingGate{}
	e := newEnv(t, func(o *Options) { o.Gate = gate })
	add := func(secret string, k state.KeyInfo) {
		if k.Limits == (state.Limits{}) {
			k.Limits = enforcetest.NoLimits
		}
		e.st.AddKey(secret, k)
	}
	e.st.AddTeam(&state.Team{TeamID: "tb", Blocked: true, Limits: enforcetest.NoLimits})
	e.st.AddUser(&state.User{UserID: "ub", Blocked: true, Limits: enforcetest.NoLimits})
	e.st.AddOrg(&state.Org{OrganizationID: "ob", Blocked: true, Limits: enforcetest.NoLimits})
	e.st.AddOrg(&state.Org{OrganizationID: "o-small", Models: []string{"llama"}, Limits: enforcetest.NoLimits})
	e.st.AddTeam(&state.Team{TeamID: "t-in-o", OrganizationID: "o-small", Limits: enforcetest.NoLimits})
	const (
		kBlocked   = "sk-blocked-0123456789abcdef"
		kExpired   = "sk-expired-0123456789abcdef"
		kTeamBlk   = "sk-teamblocked-0123456789abcdef"
		kTeamGone  = "sk-teamgone-0123456789abcdef"
		kUserBlk   = "sk-userblocked-0123456789abcdef"
		kOrgBlk    = "sk-orgblocked-0123456789abcdef"
		kKeyModels = "sk-keymodels-0123456789abcdef"
		kOrgModels = "sk-orgmodels-0123456789abcdef"
		kRoutes    = "sk-routes-0123456789abcdef"
		kUnknown   = "sk-unknown-0123456789abcdef"
	)
	add(kBlocked, state.KeyInfo{Blocked: true})
	add(kExpired, state.KeyInfo{ExpiresUnix: testNow.Unix()})
	add(kTeamBlk, state.KeyInfo{TeamID: "tb"})
	add(kTeamGone, state.KeyInfo{TeamID: "deleted"})
	add(kUserBlk, state.KeyInfo{UserID: "ub"})
	add(kOrgBlk, state.KeyInfo{OrganizationID: "ob"})
	add(kKeyModels, state.KeyInfo{Policy: &state.Policy{Models: []string{"premium"}}})
	add(kOrgModels, state.KeyInfo{TeamID: "t-in-o"})
	add(kRoutes, state.KeyInfo{Policy: &state.Policy{AllowedRoutes: []string{"/embeddings"}}})

	tests := []struct {
		name, auth, model, typ string
		header                 []string
	}{
		{name: "missing", auth: "", typ: "auth_error"},
		{name: "not bearer", auth: "Basic " + keyGood, typ: "auth_error"},
		{name: "no sk- prefix", auth: "Bearer abc123", typ: "auth_error"},
		{name: "unknown", auth: "Bearer " + kUnknown, typ: "auth_error"},
		{name: "unknown x-api-key", header: []string{"X-Api-Key", kUnknown}, typ: "auth_error"},
		{name: "blocked", auth: "Bearer " + kBlocked, typ: "auth_error"},
		{name: "expired", auth: "Bearer " + kExpired, typ: "expired_key"},
		{name: "team blocked", auth: "Bearer " + kTeamBlk, typ: "auth_error"},
		{name: "team deleted", auth: "Bearer " + kTeamGone, typ: "auth_error"},
		{name: "user blocked", auth: "Bearer " + kUserBlk, typ: "auth_error"},
		{name: "org blocked", auth: "Bearer " + kOrgBlk, typ: "auth_error"},
		{name: "route", auth: "Bearer " + kRoutes, typ: "auth_error"},
		{name: "key model", auth: "Bearer " + kKeyModels, model: "llama", typ: "key_model_access_denied"},
		{name: "key model unknown", auth: "Bearer " + kKeyModels, model: "no-such-model", typ: "key_model_access_denied"},
		{name: "team model", auth: "Bearer " + keyTeam, model: "gpt-4o", typ: "team_model_access_denied"},
		{name: "org model", auth: "Bearer " + kOrgModels, model: "gpt-4o", typ: "org_model_access_denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			model := tt.model
			if model == "" {
				model = "gpt-4o"
			}
			hdr := tt.header
			if tt.auth != "" {
				hdr = append(hdr, "Authorization", tt.auth)
			}
			resp, b := e.do("POST", "/chat/completions", "", `{"model":"`+model+`"}`, hdr...)
			_, typ, _ := envelope(t, resp, b, 401)
			if typ != tt.typ {
				t.Fatalf("type %s, want %s: %s", typ, tt.typ, b)
			}
			assertNoKeyMaterial(t, "error body", b, keyGood, kUnknown, kBlocked, kExpired, kKeyModels)
		})
	}
	e.assertNoUpstream()
	if gate.n != 0 {
		t.Fatalf("gate consulted %d times for refused requests", gate.n)
	}
	// The same rejections on /models, where no body is involved.
	resp, b := e.do("GET", "/v1/models", kBlocked, "")
	envelope(t, resp, b, 401)
}

func TestUnknownAndBlockedKeysLookAlike(t *testing.T) {
	e := newEnv(t)
	e.st.AddKey("sk-exists-0123456789abcdef", state.KeyInfo{Blocked: true})
	_, unknown := e.do("POST", "/chat/completions", "sk-nothere-0123456789abcdef", `{"model":"gpt-4o"}`)
	if !strings.Contains(string(unknown), "Invalid proxy server token passed.") {
		t.Fatalf("%s", unknown)
	}
	// A malformed key says malformed; an unknown well-formed one never says
	// whether it exists or what it was.
	_, malformed := e.do("POST", "/chat/completions", "", `{"model":"gpt-4o"}`, "Authorization", "Bearer not-a-key")
	assertNoKeyMaterial(t, "malformed", malformed, "sk-not-a-key")
	if strings.Contains(string(malformed), "not-a-key") {
		t.Fatalf("echoed: %s", malformed)
	}
}

func TestExpiryFollowsClock(t *testing.T) {
	now := testNow
	e := newEnv(t, func(o *Options) { o.Now = func() time.Time { return now } })
	e.st.AddKey("sk-soon-0123456789abcdef", state.KeyInfo{ExpiresUnix: testNow.Unix() + 60, Limits: enforcetest.NoLimits})
	if resp, b := e.do("POST", "/chat/completions", "sk-soon-0123456789abcdef", `{"model":"gpt-4o"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	now = testNow.Add(time.Minute)
	resp, b := e.do("POST", "/chat/completions", "sk-soon-0123456789abcdef", `{"model":"gpt-4o"}`)
	envelope(t, resp, b, 401)
}
