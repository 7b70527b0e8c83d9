package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 1024 })
	big := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("x", 2000) + `"}]}`
	resp, b := e.do("POST", "/chat/completions", keyGood, big)
	envelope(t, resp, b, 413)

	// Chunked, without Content-Length: the limit holds while reading.
	req, _ := http.NewRequest("POST", e.srv.URL+"/chat/completions", io.MultiReader(strings.NewReader(big)))
	req.ContentLength = -1
	req.Header.Set("Authorization", "Bearer "+keyGood)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(r2.Body)
	r2.Body.Close()
	envelope(t, r2, b, 413)
	e.assertNoUpstream()

	// Just under the limit passes.
	if resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

func TestBodyNotReadForUnauthenticatedCaller(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 1024 })
	big := strings.Repeat("x", 4096)
	resp, b := e.do("POST", "/chat/completions", "sk-unknown-0123456789", big)
	envelope(t, resp, b, 401)
}
