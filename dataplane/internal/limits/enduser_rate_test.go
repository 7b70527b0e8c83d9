package limits

import (
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// An end user's rpm_limit (from its budget) is counted per end user, across
// keys, and a refusal for it consumes nothing of the key's limits.
func TestEndUserRateLimit(t *testing.T) {
	l := newLimiter()
	eu := &state.EndUser{EndUserID: "cust", RPM: 2, HasRPM: true}
	for i, tok := range []string{"tok-1", "tok-2"} {
		f := newFixture(t, smallBody)
		f.p.Key.TokenID = tok
		f.p.RateEndUser = eu
		done, rej, _ := f.admit(l)
		if rej != nil {
			t.Fatalf("call %d refused: %s", i, rej.Message)
		}
		done(proxy.Outcome{})
	}
	f := newFixture(t, smallBody)
	f.p.Key.Limits.RPMLimit = 100
	f.p.RateEndUser = eu
	_, rej, h := f.admit(l)
	if rej == nil || rej.Status != 429 || !strings.Contains(rej.Message, "end_user cust") || h.Get("Retry-After") == "" && rej.Header.Get("Retry-After") == "" {
		t.Fatalf("third call for the end user: %+v", rej)
	}
	if n := used(l, "key", "tok-1", metricRPM, ""); n != 0 {
		t.Fatalf("the refused call took %d of the key's rpm", n)
	}
	// Without the end user the key is not limited by it.
	f.p.RateEndUser = nil
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatalf("call without the end user refused: %s", rej.Message)
	}
}
