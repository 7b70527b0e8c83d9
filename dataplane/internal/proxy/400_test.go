package proxy

import (
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

func TestServiceAccountMissingUserByteForByte(t *testing.T) {
	e := newEnv(t)
	e.st.SetSettings(&state.Settings{
		ServiceAccountEnforcedParams: []string{"user"},
		Raw:                          []byte(`{"service_account_settings":{"enforced_params":["user"]}}`),
	})
	resp, b := e.do("POST", "/chat/completions", keySA, `{"model":"llama","messages":[{"role":"user","content":"hi"}]}`)
	const want = `{"error":{"message":"BadRequest please pass param=user in request body. This is a required param for service account","type":"bad_request_error","param":"user","code":"400"}}`
	if resp.StatusCode != 400 || string(b) != want {
		t.Fatalf("status %d\n got %s\nwant %s", resp.StatusCode, b, want)
	}
	e.assertNoUpstream()
	// With user it passes, and a personal key never needed it.
	if resp, b := e.do("POST", "/chat/completions", keySA, `{"model":"llama","user":"u"}`); resp.StatusCode != 200 {
		t.Fatalf("with user: %d %s", resp.StatusCode, b)
	}
	if resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"llama"}`); resp.StatusCode != 200 {
		t.Fatalf("personal key: %d %s", resp.StatusCode, b)
	}
}

func TestDottedEnforcedParams(t *testing.T) {
	e := newEnv(t)
	const key = "sk-enforced-0123456789abcdef"
	e.st.AddKey(key, state.KeyInfo{TokenID: "t", Limits: enforcetest.NoLimits,
		Policy: &state.Policy{EnforcedParams: []string{"user", "metadata.generation_name"}}})
	for body, wantParam := range map[string]string{
		`{"model":"gpt-4o"}`:                                                       "user",
		`{"model":"gpt-4o","user":"u"}`:                                            "metadata.generation_name",
		`{"model":"gpt-4o","user":"u","metadata":{}}`:                              "metadata.generation_name",
		`{"model":"gpt-4o","user":"u","metadata":{"other":{"generation_name":1}}}`: "metadata.generation_name",
		`{"model":"gpt-4o","user":"u","metadata":["generation_name"]}`:             "metadata.generation_name",
		`{"model":"gpt-4o","user":"u","metadata":{"generation_name":"g"}}`:         "",
	} {
		resp, b := e.do("POST", "/chat/completions", key, body)
		if wantParam == "" {
			if resp.StatusCode != 200 {
				t.Errorf("%s: %d %s", body, resp.StatusCode, b)
			}
			continue
		}
		msg, typ, param := envelope(t, resp, b, 400)
		if param == nil || *param != wantParam || typ != "bad_request_error" {
			t.Errorf("%s: param %v type %s", body, param, typ)
		}
		if wantParam == "metadata.generation_name" && !strings.Contains(msg, "param=[metadata][generation_name]") {
			t.Errorf("message %q", msg)
		}
	}
	if n := len(e.llm.requests()); n != 1 {
		t.Fatalf("upstream called %d times, want 1", n)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	for body, wantParam := range map[string]string{
		`{"model":"gpt-4o",`:                    "",
		`not json`:                              "",
		``:                                      "",
		`[{"model":"gpt-4o"}]`:                  "",
		`{"messages":[]}`:                       "model",
		`{"model":null}`:                        "model",
		`{"model":"gpt-4o","model":"llama"}`:    "model",
		`{"model":"nope"}`:                      "model",
		`{"model":"gpt-4o","stream_options":1}`: "stream_options",
		`{"model":"gpt-4o"} trailing`:           "",
	} {
		resp, b := e.do("POST", "/chat/completions", keyGood, body)
		_, typ, param := envelope(t, resp, b, 400)
		if typ != "invalid_request_error" {
			t.Errorf("%s: type %s", body, typ)
		}
		if (param == nil) != (wantParam == "") || (param != nil && *param != wantParam) {
			t.Errorf("%s: param %v, want %q", body, param, wantParam)
		}
	}
	e.assertNoUpstream()
}

func TestUnsupportedContentEncoding(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`, "Content-Encoding", "gzip")
	envelope(t, resp, b, 415)
	e.assertNoUpstream()
}
