package proxy

import "testing"

func TestNotReady(t *testing.T) {
	e := newEnv(t)
	e.st.SetReady(false)
	resp, b := e.do("GET", "/health/readiness", "", "")
	envelope(t, resp, b, 503)
	resp, b = e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`)
	envelope(t, resp, b, 503)
	resp, b = e.do("GET", "/v1/models", keyGood, "")
	envelope(t, resp, b, 503)
	// Liveness does not depend on the state.
	if resp, _ := e.do("GET", "/health/liveliness", "", ""); resp.StatusCode != 200 {
		t.Fatalf("liveliness %d", resp.StatusCode)
	}
	e.assertNoUpstream()
	e.st.SetReady(true)
	if resp, b := e.do("GET", "/health/readiness", "", ""); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}
