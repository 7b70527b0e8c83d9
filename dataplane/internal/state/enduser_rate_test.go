package state

import (
	"testing"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// An end user's rate limits (from its budget) arrive as optional fields:
// absent means none, and 0 is a limit of 0, not "none".
func TestEndUserRateLimits(t *testing.T) {
	s := New()
	zero, two := int64(0), int64(2)
	limited := &syncv1.Entity{Kind: KindEndUser, Id: "free", Value: &syncv1.Entity_EndUser{EndUser: &syncv1.EndUser{
		EndUserId: "free", MaxBudget: -1, RpmLimit: &zero, TpmLimit: &two}}}
	install(t, s, 1, limited, endUserEnt("plain", 0, -1, false))
	u, ok := s.EndUser("free")
	if !ok || !u.HasRPM || u.RPM != 0 || !u.HasTPM || u.TPM != 2 {
		t.Fatalf("free = %+v, %v", u, ok)
	}
	if u, ok := s.EndUser("plain"); !ok || u.HasRPM || u.HasTPM {
		t.Fatalf("plain = %+v, %v", u, ok)
	}
}
