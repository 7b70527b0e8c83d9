package enforce_test

import (
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// TestTeamModelAliases: a team key may request a team model alias; every
// check then sees the model it stands for (LiteLLM's team model_aliases),
// and keys outside the team cannot use the alias.
func TestTeamModelAliases(t *testing.T) {
	st := fixture()
	st.AddTeam(&state.Team{TeamID: "talias", Limits: enforcetest.NoLimits,
		ModelAliases: map[string]string{"cheap-model": "gpt-4o-mini", "forbidden": "llama", "dangling": "nope"}})
	st.AddKey("sk-alias", state.KeyInfo{TokenID: "tok-alias", TeamID: "talias", Limits: enforcetest.NoLimits,
		Policy: &state.Policy{Models: []string{"gpt-4o-mini"}}})
	e := &enforce.Enforcer{State: st}
	for _, tt := range []struct {
		key, model, resolved string
		want                 enforce.Outcome
	}{
		{"sk-alias", "cheap-model", "gpt-4o-mini", enforce.OK},
		{"sk-alias", "gpt-4o-mini", "gpt-4o-mini", enforce.OK},
		{"sk-alias", "forbidden", "llama", enforce.ModelForbidden}, // the key may not use llama
		{"sk-alias", "dangling", "nope", enforce.ModelForbidden},
		{"sk-open", "cheap-model", "cheap-model", enforce.ModelUnknown}, // not its team's alias
	} {
		var p enforce.Principal
		if rej := e.Authenticate(tt.key, "/chat/completions", now, &p); rej != nil {
			t.Fatalf("%s: %s", tt.key, rej.Message)
		}
		var b enforce.Body
		if rej := enforce.ParseBody([]byte(`{"model":"`+tt.model+`"}`), &b); rej != nil {
			t.Fatal(rej.Message)
		}
		deps, rej := e.Authorize(&p, &b)
		got := enforce.OK
		if rej != nil {
			got = rej.Outcome
		}
		if got != tt.want || b.Model != tt.resolved {
			t.Errorf("%s %s: %v model %q, want %v %q", tt.key, tt.model, got, b.Model, tt.want, tt.resolved)
		}
		if got == enforce.OK && (len(deps) == 0 || deps[0].ModelName != tt.resolved) {
			t.Errorf("%s %s: deployments %v", tt.key, tt.model, deps)
		}
		if wantAlias := tt.model != tt.resolved; (b.Alias != "") != wantAlias {
			t.Errorf("%s %s: alias %q", tt.key, tt.model, b.Alias)
		}
	}
}
