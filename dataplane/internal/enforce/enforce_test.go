package enforce_test

import (
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

const now = int64(1_700_000_000)

func fixture() *enforcetest.State {
	st := enforcetest.New()
	st.AddModel(&state.Model{ID: "d1", ModelName: "gpt-4o", UpstreamModel: "openai/gpt-4o", AccessGroups: []string{"premium"}})
	st.AddModel(&state.Model{ID: "d2", ModelName: "gpt-4o-mini", UpstreamModel: "openai/gpt-4o-mini", AccessGroups: []string{"cheap"}})
	st.AddModel(&state.Model{ID: "d3", ModelName: "llama", UpstreamModel: "hosted_vllm/llama", APIBase: "http://vllm"})
	st.AddTeam(&state.Team{TeamID: "t1", Models: []string{"cheap", "llama"}, Limits: enforcetest.NoLimits})
	st.AddTeam(&state.Team{TeamID: "tblocked", Blocked: true, Limits: enforcetest.NoLimits})
	st.AddTeam(&state.Team{TeamID: "torg", OrganizationID: "o1", Limits: enforcetest.NoLimits})
	st.AddTeam(&state.Team{TeamID: "tbroke", Limits: state.Limits{MaxBudget: 10}, Spend: 10})
	st.AddUser(&state.User{UserID: "u1", Models: []string{"gpt-4o"}, Limits: enforcetest.NoLimits})
	st.AddUser(&state.User{UserID: "ublocked", Blocked: true, Limits: enforcetest.NoLimits})
	st.AddOrg(&state.Org{OrganizationID: "o1", Models: []string{"gpt-4o-mini"}, Limits: enforcetest.NoLimits})
	st.AddOrg(&state.Org{OrganizationID: "oblocked", Blocked: true, Limits: enforcetest.NoLimits})
	key := func(secret string, k state.KeyInfo) {
		if k.Limits == (state.Limits{}) {
			k.Limits = enforcetest.NoLimits
		}
		k.TokenID = "tok-" + secret
		st.AddKey(secret, k)
	}
	key("sk-open", state.KeyInfo{})
	key("sk-blocked", state.KeyInfo{Blocked: true})
	key("sk-expired", state.KeyInfo{ExpiresUnix: now})
	key("sk-future", state.KeyInfo{ExpiresUnix: now + 1})
	key("sk-team", state.KeyInfo{TeamID: "t1"})
	key("sk-teamblocked", state.KeyInfo{TeamID: "tblocked"})
	key("sk-teamgone", state.KeyInfo{TeamID: "nope"})
	key("sk-teamorg", state.KeyInfo{TeamID: "torg"})
	key("sk-user", state.KeyInfo{UserID: "u1"})
	key("sk-userblocked", state.KeyInfo{UserID: "ublocked"})
	key("sk-userunknown", state.KeyInfo{UserID: "whoever"})
	key("sk-orgblocked", state.KeyInfo{OrganizationID: "oblocked"})
	key("sk-keymodels", state.KeyInfo{Policy: &state.Policy{Models: []string{"premium"}}})
	key("sk-wild", state.KeyInfo{Policy: &state.Policy{Models: []string{"gpt-*"}}})
	key("sk-allproxy", state.KeyInfo{Policy: &state.Policy{Models: []string{"all-proxy-models"}}})
	key("sk-routes", state.KeyInfo{Policy: &state.Policy{AllowedRoutes: []string{"/v1/embeddings"}}})
	key("sk-llmroutes", state.KeyInfo{Policy: &state.Policy{AllowedRoutes: []string{"llm_api_routes"}}})
	key("sk-broke", state.KeyInfo{Limits: state.Limits{MaxBudget: 5_000_000_000}, Spend: 5_000_000_000})
	key("sk-zero", state.KeyInfo{Limits: state.Limits{MaxBudget: 0, RPMLimit: -1}})
	key("sk-teambroke", state.KeyInfo{TeamID: "tbroke"})
	return st
}

func TestAuthenticate(t *testing.T) {
	e := &enforce.Enforcer{State: fixture()}
	tests := []struct {
		key, path string
		want      enforce.Outcome
	}{
		{"", "/chat/completions", enforce.MissingKey},
		{"nope", "/chat/completions", enforce.MalformedKey},
		{"sk-", "/chat/completions", enforce.MalformedKey},
		{"sk-with space", "/chat/completions", enforce.MalformedKey},
		{"sk-unknown", "/chat/completions", enforce.InvalidKey},
		{"sk-open", "/chat/completions", enforce.OK},
		{"sk-blocked", "/chat/completions", enforce.KeyBlocked},
		{"sk-expired", "/chat/completions", enforce.KeyExpired},
		{"sk-future", "/chat/completions", enforce.OK},
		{"sk-team", "/chat/completions", enforce.OK},
		{"sk-teamblocked", "/chat/completions", enforce.TeamBlocked},
		{"sk-teamgone", "/chat/completions", enforce.TeamBlocked},
		{"sk-userblocked", "/chat/completions", enforce.UserBlocked},
		{"sk-userunknown", "/chat/completions", enforce.OK},
		{"sk-orgblocked", "/chat/completions", enforce.OrgBlocked},
		{"sk-routes", "/chat/completions", enforce.RouteForbidden},
		{"sk-routes", "/embeddings", enforce.OK},
		{"sk-routes", "/v1/embeddings", enforce.OK},
		{"sk-llmroutes", "/v1/models", enforce.OK},
	}
	for _, tt := range tests {
		var p enforce.Principal
		rej := e.Authenticate(tt.key, tt.path, now*1000, &p)
		got := enforce.OK
		if rej != nil {
			got = rej.Outcome
			if rej.Status != 401 {
				t.Errorf("%s %s: status %d", tt.key, tt.path, rej.Status)
			}
		}
		if got != tt.want {
			t.Errorf("%s %s: %v, want %v", tt.key, tt.path, got, tt.want)
		}
	}
}

func TestAuthorize(t *testing.T) {
	st := fixture()
	e := &enforce.Enforcer{State: st}
	tests := []struct {
		key, model string
		want       enforce.Outcome
		typ        string
	}{
		{"sk-open", "gpt-4o", enforce.OK, ""},
		{"sk-open", "nope", enforce.ModelUnknown, enforce.TypeInvalid},
		{"sk-team", "gpt-4o-mini", enforce.OK, ""}, // via access group "cheap"
		{"sk-team", "llama", enforce.OK, ""},
		{"sk-team", "gpt-4o", enforce.ModelForbidden, enforce.TypeTeamModel},
		{"sk-keymodels", "gpt-4o", enforce.OK, ""},
		{"sk-keymodels", "llama", enforce.ModelForbidden, enforce.TypeKeyModel},
		{"sk-keymodels", "nope", enforce.ModelForbidden, enforce.TypeKeyModel}, // no hint that it does not exist
		{"sk-wild", "gpt-4o-mini", enforce.OK, ""},
		{"sk-wild", "llama", enforce.ModelForbidden, enforce.TypeKeyModel},
		{"sk-allproxy", "llama", enforce.OK, ""},
		{"sk-user", "gpt-4o", enforce.OK, ""},
		{"sk-user", "llama", enforce.ModelForbidden, enforce.TypeUserModel},
		{"sk-teamorg", "gpt-4o-mini", enforce.OK, ""},
		{"sk-teamorg", "gpt-4o", enforce.ModelForbidden, enforce.TypeOrgModel},
		{"sk-broke", "gpt-4o", enforce.BudgetExceeded, enforce.TypeBudget},
		{"sk-zero", "gpt-4o", enforce.BudgetExceeded, enforce.TypeBudget},
		{"sk-teambroke", "gpt-4o", enforce.BudgetExceeded, enforce.TypeBudget},
	}
	for _, tt := range tests {
		var p enforce.Principal
		if rej := e.Authenticate(tt.key, "/chat/completions", now*1000, &p); rej != nil {
			t.Fatalf("%s: %s", tt.key, rej.Message)
		}
		var b enforce.Body
		if rej := enforce.ParseBody([]byte(`{"model":"`+tt.model+`"}`), &b); rej != nil {
			t.Fatal(rej.Message)
		}
		deps, rej := e.Authorize(&p, &b)
		got, typ := enforce.OK, ""
		if rej != nil {
			got, typ = rej.Outcome, rej.Type
		} else if len(deps) == 0 {
			t.Errorf("%s %s: no deployments", tt.key, tt.model)
		}
		if got != tt.want || typ != tt.typ {
			t.Errorf("%s %s: %v %q, want %v %q", tt.key, tt.model, got, typ, tt.want, tt.typ)
		}
	}
}

func TestBudgetMessage(t *testing.T) {
	e := &enforce.Enforcer{State: fixture()}
	var p enforce.Principal
	e.Authenticate("sk-broke", "/chat/completions", now*1000, &p)
	var b enforce.Body
	enforce.ParseBody([]byte(`{"model":"gpt-4o"}`), &b)
	_, rej := e.Authorize(&p, &b)
	want := `{"error":{"message":"Budget has been exceeded! Current cost: 5, Max budget: 5 (ExceededTokenBudget: Current spend for token: 5; Max Budget for Token: 5)","type":"budget_exceeded","param":null,"code":"429"}}`
	if string(rej.Envelope()) != want {
		t.Fatalf("got  %s\nwant %s", rej.Envelope(), want)
	}
}

func TestEnforcedParams(t *testing.T) {
	st := fixture()
	st.SetSettings(&state.Settings{
		ServiceAccountEnforcedParams: []string{"user"},
		Raw:                          []byte(`{"enforced_params":["metadata.generation_name"],"service_account_settings":{"enforced_params":["user"]}}`),
	})
	st.AddKey("sk-sa", state.KeyInfo{ServiceAccount: true, Limits: enforcetest.NoLimits})
	st.AddKey("sk-keyparams", state.KeyInfo{Limits: enforcetest.NoLimits, Policy: &state.Policy{EnforcedParams: []string{"tags"}}})
	e := &enforce.Enforcer{State: st}
	tests := []struct {
		key, body, param, message string
	}{
		{"sk-sa", `{"model":"gpt-4o","metadata":{"generation_name":"g"}}`, "user",
			"BadRequest please pass param=user in request body. This is a required param for service account"},
		{"sk-sa", `{"model":"gpt-4o","user":"u","metadata":{"generation_name":"g"}}`, "", ""},
		{"sk-open", `{"model":"gpt-4o"}`, "metadata.generation_name",
			"BadRequest please pass param=[metadata][generation_name] in request body. This is a required param"},
		{"sk-open", `{"model":"gpt-4o","metadata":{}}`, "metadata.generation_name", ""},
		{"sk-open", `{"model":"gpt-4o","metadata":"generation_name"}`, "metadata.generation_name", ""},
		{"sk-open", `{"model":"gpt-4o","metadata":{"generation_name":null}}`, "", ""},
		{"sk-keyparams", `{"model":"gpt-4o","metadata":{"generation_name":1}}`, "tags",
			"BadRequest please pass param=tags in request body. This is a required param"},
	}
	for _, tt := range tests {
		var p enforce.Principal
		if rej := e.Authenticate(tt.key, "/chat/completions", now*1000, &p); rej != nil {
			t.Fatal(rej.Message)
		}
		var b enforce.Body
		if rej := enforce.ParseBody([]byte(tt.body), &b); rej != nil {
			t.Fatal(rej.Message)
		}
		_, rej := e.Authorize(&p, &b)
		if tt.param == "" {
			if rej != nil {
				t.Errorf("%s %s: rejected %s", tt.key, tt.body, rej.Message)
			}
			continue
		}
		if rej == nil || rej.Param != tt.param || rej.Status != 400 || rej.Type != enforce.TypeBadRequest {
			t.Errorf("%s %s: got %+v, want param %q", tt.key, tt.body, rej, tt.param)
			continue
		}
		if tt.message != "" && rej.Message != tt.message {
			t.Errorf("%s %s: message %q", tt.key, tt.body, rej.Message)
		}
	}
}

func TestEnforceUserParam(t *testing.T) {
	st := fixture()
	st.SetSettings(&state.Settings{Raw: []byte(`{"enforce_user_param":true}`)})
	e := &enforce.Enforcer{State: st}
	for body, ok := range map[string]bool{
		`{"model":"gpt-4o"}`:             false,
		`{"model":"gpt-4o","user":null}`: false,
		`{"model":"gpt-4o","user":"u"}`:  true,
	} {
		var p enforce.Principal
		e.Authenticate("sk-open", "/chat/completions", now*1000, &p)
		var b enforce.Body
		enforce.ParseBody([]byte(body), &b)
		_, rej := e.Authorize(&p, &b)
		if (rej == nil) != ok {
			t.Errorf("%s: %+v", body, rej)
		}
	}
}

func TestServiceAccountEnvelopeByteForByte(t *testing.T) {
	st := fixture()
	st.SetSettings(&state.Settings{ServiceAccountEnforcedParams: []string{"user"}})
	st.AddKey("sk-sa", state.KeyInfo{ServiceAccount: true, TeamID: "t1", Limits: enforcetest.NoLimits})
	e := &enforce.Enforcer{State: st}
	var p enforce.Principal
	e.Authenticate("sk-sa", "/chat/completions", now*1000, &p)
	var b enforce.Body
	enforce.ParseBody([]byte(`{"model":"llama","messages":[]}`), &b)
	_, rej := e.Authorize(&p, &b)
	const want = `{"error":{"message":"BadRequest please pass param=user in request body. This is a required param for service account","type":"bad_request_error","param":"user","code":"400"}}`
	if rej == nil || string(rej.Envelope()) != want {
		t.Fatalf("got %s", rej.Envelope())
	}
}

// A team member at its max_budget_in_team (or, without one, the team's
// team_member_budget) is refused on the team's keys; other members are not.
func TestTeamMemberBudget(t *testing.T) {
	st := fixture()
	st.AddTeam(&state.Team{TeamID: "tmembers", Limits: enforcetest.NoLimits, TeamMemberBudget: 20_000, Members: []state.TeamMember{
		{UserID: "capped", Role: "user", MaxBudgetInTeam: 10_000, Spend: 10_000},
		{UserID: "default", Role: "user", MaxBudgetInTeam: -1, Spend: 20_000},
		{UserID: "fine", Role: "user", MaxBudgetInTeam: -1, Spend: 19_000},
	}})
	e := &enforce.Enforcer{State: st}
	for user, want := range map[string]string{
		"capped":  "Budget has been exceeded! User=capped in Team=tmembers Current cost: 0.00001, Max budget: 0.00001",
		"default": "Budget has been exceeded! User=default in Team=tmembers Current cost: 0.00002, Max budget: 0.00002",
		"fine":    "",
	} {
		st.AddKey("sk-member-"+user, state.KeyInfo{UserID: user, TeamID: "tmembers", Limits: enforcetest.NoLimits})
		var p enforce.Principal
		if rej := e.Authenticate("sk-member-"+user, "/chat/completions", now*1000, &p); rej != nil {
			t.Fatal(rej.Message)
		}
		var b enforce.Body
		enforce.ParseBody([]byte(`{"model":"gpt-4o"}`), &b)
		_, rej := e.Authorize(&p, &b)
		switch {
		case want == "" && rej != nil && rej.Type == "budget_exceeded":
			t.Fatalf("%s refused: %s", user, rej.Message)
		case want != "" && (rej == nil || rej.Message != want || rej.Status != 429):
			t.Fatalf("%s: got %+v, want 429 %q", user, rej, want)
		}
	}
}

// authorizeBody authenticates secret and authorizes body.
func authorizeBody(t *testing.T, e *enforce.Enforcer, secret, body string) *enforce.Rejection {
	t.Helper()
	var p enforce.Principal
	if rej := e.Authenticate(secret, "/chat/completions", now*1000, &p); rej != nil {
		t.Fatal(rej.Message)
	}
	var b enforce.Body
	if rej := enforce.ParseBody([]byte(body), &b); rej != nil {
		t.Fatal(rej.Message)
	}
	_, rej := e.Authorize(&p, &b)
	return rej
}

func TestEndUserBudget(t *testing.T) {
	st := fixture()
	st.AddEndUser(&state.EndUser{EndUserID: "broke", Spend: 10_000, MaxBudget: 10_000})
	st.AddEndUser(&state.EndUser{EndUserID: "fine", Spend: 9_000, MaxBudget: 10_000})
	st.AddEndUser(&state.EndUser{EndUserID: "blocked", MaxBudget: -1, Blocked: true})
	st.AddEndUser(&state.EndUser{EndUserID: "nobudget", Spend: 50_000, MaxBudget: -1})
	e := &enforce.Enforcer{State: st}
	type want struct {
		status  int
		message string
	}
	check := func(name, body string, w want) {
		t.Helper()
		rej := authorizeBody(t, e, "sk-open", body)
		switch {
		case w.status == 0 && rej != nil:
			t.Errorf("%s: refused %d %s", name, rej.Status, rej.Message)
		case w.status != 0 && (rej == nil || rej.Status != w.status || rej.Message != w.message):
			t.Errorf("%s: got %+v, want %d %q", name, rej, w.status, w.message)
		}
	}
	over := want{429, "ExceededBudget: End User=broke over budget. Spend=0.00001, Budget=0.00001"}
	check("at its budget", `{"model":"gpt-4o","user":"broke"}`, over)
	check("below its budget", `{"model":"gpt-4o","user":"fine"}`, want{})
	check("blocked", `{"model":"gpt-4o","user":"blocked"}`, want{403, "User blocked from making LLM API Calls. User=blocked"})
	check("no user", `{"model":"gpt-4o"}`, want{})
	check("user not a string", `{"model":"gpt-4o","user":7}`, want{})
	check("never seen, no default", `{"model":"gpt-4o","user":"stranger"}`, want{})
	check("no budget, no default", `{"model":"gpt-4o","user":"nobudget"}`, want{})

	// max_end_user_budget applies to end users without their own budget,
	// and to those never seen (spend 0): a default of 0 refuses them all.
	st.SetSettings(&state.Settings{Raw: []byte(`{"max_end_user_budget":0.00004}`), MaxEndUserBudget: 40_000, HasMaxEndUserBudget: true})
	check("own budget wins", `{"model":"gpt-4o","user":"fine"}`, want{})
	check("default applies", `{"model":"gpt-4o","user":"nobudget"}`,
		want{429, "ExceededBudget: End User=nobudget over budget. Spend=0.00005, Budget=0.00004"})
	check("never seen, under the default", `{"model":"gpt-4o","user":"stranger"}`, want{})
	st.SetSettings(&state.Settings{Raw: []byte(`{"max_end_user_budget":0}`), MaxEndUserBudget: 0, HasMaxEndUserBudget: true})
	check("never seen, default 0", `{"model":"gpt-4o","user":"stranger"}`,
		want{429, "ExceededBudget: End User=stranger over budget. Spend=0, Budget=0"})

	// The key's own budget is checked first (DESIGN.md's order).
	rej := authorizeBody(t, e, "sk-broke", `{"model":"gpt-4o","user":"broke"}`)
	if rej == nil || !strings.HasPrefix(rej.Message, "Budget has been exceeded! Current cost") {
		t.Fatalf("key over budget and end user over budget: %+v", rej)
	}
}

func TestModelBudget(t *testing.T) {
	st := fixture()
	pol := &state.Policy{ModelMaxBudget: map[string]state.ModelBudget{"gpt-4o-mini": {BudgetLimit: 10_000, TimePeriod: "1d"}}}
	st.AddKey("sk-modelbudget", state.KeyInfo{TokenID: "tok-mb", Limits: enforcetest.NoLimits, Policy: pol})
	resetPassed := enforcetest.NoLimits
	resetPassed.BudgetResetAtUnix = now - 1
	st.AddKey("sk-modelbudget-reset", state.KeyInfo{TokenID: "tok-mbr", Limits: resetPassed, Policy: pol})
	st.SetKeyModelSpend("tok-mb", "gpt-4o-mini", 10_000)
	st.SetKeyModelSpend("tok-mb", "gpt-4o", 1_000_000) // no budget on it
	st.SetKeyModelSpend("tok-mbr", "gpt-4o-mini", 10_000)
	e := &enforce.Enforcer{State: st}
	rej := authorizeBody(t, e, "sk-modelbudget", `{"model":"gpt-4o-mini"}`)
	want := "LiteLLM Virtual Key: tok-mb, exceeded budget for model=gpt-4o-mini. Current cost: 0.00001, Max budget: 0.00001"
	if rej == nil || rej.Status != 429 || rej.Type != "budget_exceeded" || rej.Message != want {
		t.Fatalf("over its model budget: %+v, want 429 %q", rej, want)
	}
	if rej := authorizeBody(t, e, "sk-modelbudget", `{"model":"gpt-4o"}`); rej != nil {
		t.Fatalf("another model refused: %s", rej.Message)
	}
	st.SetKeyModelSpend("tok-mb", "gpt-4o-mini", 9_000)
	if rej := authorizeBody(t, e, "sk-modelbudget", `{"model":"gpt-4o-mini"}`); rej != nil {
		t.Fatalf("below its model budget refused: %s", rej.Message)
	}
	// The per-model spend resets with the key's budget period.
	if rej := authorizeBody(t, e, "sk-modelbudget-reset", `{"model":"gpt-4o-mini"}`); rej != nil {
		t.Fatalf("after budget_reset_at refused: %s", rej.Message)
	}
}

// Issue 17: a SaaS team with credits left is never refused for its budget
// (credits_allocated × the credit rate); out of credits it is refused as
// suspended, not as over budget.
func TestSaaSTeamWithCreditsIsNotRefusedForBudget(t *testing.T) {
	st := enforcetest.New()
	st.AddModel(&state.Model{ID: "d1", ModelName: "gpt-4o", UpstreamModel: "openai/gpt-4o"})
	lim := enforcetest.NoLimits
	lim.MaxBudget = 100_000 // one credit at $0.10
	team := &state.Team{TeamID: "saas", Limits: lim, Spend: 250_000,
		SaaS: &state.TeamSaaS{Status: "active", CreditsAllocated: 1, CreditsRemaining: 1}}
	st.AddTeam(team)
	st.AddKey("sk-saas-team-key-0000000000", state.KeyInfo{TokenID: "k", TeamID: "saas", Limits: enforcetest.NoLimits})
	e := &enforce.Enforcer{State: st}
	var p enforce.Principal
	if rej := e.Authenticate("sk-saas-team-key-0000000000", "/chat/completions", now*1000, &p); rej != nil {
		t.Fatal(rej.Message)
	}
	var b enforce.Body
	enforce.ParseBody([]byte(`{"model":"gpt-4o"}`), &b)
	if _, rej := e.Authorize(&p, &b); rej != nil {
		t.Fatalf("SaaS team with a credit left, spend over its derived budget: %s", rej.Message)
	}
	out := *team
	out.SaaS = &state.TeamSaaS{Status: "active", CreditsAllocated: 1, CreditsUsed: 1}
	st.AddTeam(&out)
	if rej := e.Authenticate("sk-saas-team-key-0000000000", "/chat/completions", now*1000, &p); rej == nil || rej.Outcome == enforce.BudgetExceeded {
		t.Fatalf("SaaS team without credits: %+v", rej)
	}
}
