package enforce_test

import (
	"crypto/sha256"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// TestMasterKey: the master key is accepted on the LLM routes once its
// hash arrived (and only then), as MasterTokenID attributed to
// litellm-proxy-budget, whose budget and block apply to it.
func TestMasterKey(t *testing.T) {
	const mk = "sk-master-1234"
	h := sha256.Sum256([]byte(mk))
	st := fixture()
	m := &enforce.MasterHash{}
	e := &enforce.Enforcer{State: st, Master: m}
	var p enforce.Principal
	if r := e.Authenticate(mk, "/chat/completions", now, &p); r == nil || r.Outcome != enforce.InvalidKey {
		t.Fatalf("master key before its hash arrived: %+v", r)
	}
	m.Set(h[:])
	if r := e.Authenticate(mk, "/chat/completions", now, &p); r != nil {
		t.Fatalf("master key: %+v", r)
	}
	if p.Key.TokenID != enforce.MasterTokenID || p.Key.UserID != enforce.ProxyBudgetUser || p.User != nil {
		t.Fatalf("principal %+v", p.Key)
	}
	if r := e.Authenticate(mk+"x", "/chat/completions", now, &p); r == nil || r.Outcome != enforce.InvalidKey {
		t.Fatalf("another key: %+v", r)
	}
	// The proxy-budget user, when it exists, carries its limits.
	st.AddUser(&state.User{UserID: enforce.ProxyBudgetUser, Blocked: true, Limits: enforcetest.NoLimits})
	if r := e.Authenticate(mk, "/chat/completions", now, &p); r == nil || r.Outcome != enforce.UserBlocked {
		t.Fatalf("blocked proxy-budget user: %+v", r)
	}
	// A cleared hash (a control plane without one) matches nothing.
	m.Set(nil)
	if r := e.Authenticate(mk, "/chat/completions", now, &p); r == nil || r.Outcome != enforce.InvalidKey {
		t.Fatalf("cleared: %+v", r)
	}
	none := &enforce.Enforcer{State: st}
	if r := none.Authenticate(mk, "/chat/completions", now, &p); r == nil || r.Outcome != enforce.InvalidKey {
		t.Fatalf("no holder: %+v", r)
	}
}
