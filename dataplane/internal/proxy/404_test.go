package proxy

import "testing"

func TestNotFound(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/", "/v2/chat/completions", "/key/generate", "/chat/completions/", "/v1/chat/completions/x"} {
		resp, b := e.do("POST", p, keyGood, `{"model":"gpt-4o"}`)
		envelope(t, resp, b, 404)
	}
	e.assertNoUpstream()
}

func TestMethodNotAllowed(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do("GET", "/v1/chat/completions", keyGood, "")
	envelope(t, resp, b, 405)
	if resp.Header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", resp.Header.Get("Allow"))
	}
	resp, b = e.do("POST", "/v1/models", keyGood, "{}")
	envelope(t, resp, b, 405)
	e.assertNoUpstream()
}
