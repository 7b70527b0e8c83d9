package reqtext

import (
	"net/http/httptest"
	"testing"
)

func TestSane(t *testing.T) {
	for target, want := range map[string]bool{
		"/api/teams/t-1?team_id=abc":                   true,
		"/api/teams/caf%C3%A9":                         true,
		"/api/jobs/a%00b":                              false,
		"/api/teams/x%01y":                             false,
		"/api/credits/balance?t=%ff":                   false,
		"/api/credits/balance?t=%00":                   false,
		"/api/credits/balance?t=%zz":                   false,
		"/api/teams/" + string(make([]byte, 0)) + "ok": true,
	} {
		if got := Sane(httptest.NewRequest("GET", target, nil)); got != want {
			t.Errorf("Sane(%q) = %v, want %v", target, got, want)
		}
	}
}
