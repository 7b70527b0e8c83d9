package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

const (
	keyGood    = "sk-good-0123456789abcdefghij"
	keyTeam    = "sk-team-0123456789abcdefghij"
	keySA      = "sk-sa-0123456789abcdefghijkl"
	upstreamSK = "sk-upstream-secret"
)

var testNow = time.Unix(1_700_000_000, 0)

// recorded is one request the fake LLM received.
type recorded struct {
	Method, Path, RawQuery string
	Header                 http.Header
	Body                   []byte
}

// fakeLLM is the fake upstream: OpenAI-shaped answers, and every request
// recorded.
type fakeLLM struct {
	mu   sync.Mutex
	reqs []recorded
	// serve, when set, replaces the default answers.
	serve func(w http.ResponseWriter, r *http.Request, body []byte)
}

func (f *fakeLLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
	serve := f.serve
	f.mu.Unlock()
	if serve != nil {
		serve(w, r, body)
		return
	}
	var req struct {
		Model         string `json:"model"`
		Stream        bool   `json:"stream"`
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, `{"error":{"message":"bad json upstream"}}`, 400)
		return
	}
	w.Header().Set("Set-Cookie", "__cf_bm=secret")
	w.Header().Set("Openai-Organization", "tollgate-prod-org")
	w.Header().Set("X-Ratelimit-Remaining-Requests", "99")
	w.Header().Set("X-Request-Id", "req-upstream")
	if strings.HasSuffix(r.URL.Path, "/embeddings") {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"`+req.Model+`","usage":{"prompt_tokens":4,"total_tokens":4}}`)
		return
	}
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"`+req.Model+`","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": {\"prompt_tokens\": 999}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":null}`)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	for i, part := range []string{"Hel", "lo", "!"} {
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"`+part+`"}}],"usage":null}`+"\n\n")
		if i == 0 {
			// A chunk split mid-event exercises reassembly.
			io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choi`)
			fl.Flush()
			io.WriteString(w, `ces":[{"index":0,"delta":{}}],"usage":null}`+"\n\n")
		}
		fl.Flush()
	}
	if req.StreamOptions.IncludeUsage {
		io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`+"\n\n")
	}
	io.WriteString(w, "data: [DONE]\n\n")
}

func (f *fakeLLM) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func (f *fakeLLM) last(t *testing.T) recorded {
	t.Helper()
	r := f.requests()
	if len(r) == 0 {
		t.Fatal("upstream was not called")
	}
	return r[len(r)-1]
}

type env struct {
	t   *testing.T
	st  *enforcetest.State
	llm *fakeLLM
	up  *httptest.Server
	srv *httptest.Server
	reg *prometheus.Registry

	mu       sync.Mutex
	outcomes []Outcome
}

// newEnv starts a fake LLM and a proxy in front of it, with a small fixture:
//
//	gpt-4o     -> openai/gpt-4o-2024 at <up>/v1, key from os.environ/UPSTREAM_KEY; group "premium"
//	llama      -> hosted_vllm/meta-llama/Llama-3 at <up> (no /v1), no key; group "open"
//	embed      -> openai/text-embedding-3-small at <up>/v1, literal key
//	keyGood    personal key, every model
//	keyTeam    team t1 (models: group "open")
//	keySA      service account of team t1
func newEnv(t *testing.T, mod ...func(*Options)) *env {
	t.Helper()
	e := &env{t: t, st: enforcetest.New(), llm: &fakeLLM{}, reg: prometheus.NewRegistry()}
	e.up = httptest.NewServer(e.llm)
	t.Cleanup(e.up.Close)
	e.st.AddModel(&state.Model{ID: "dep-gpt", ModelName: "gpt-4o", UpstreamModel: "openai/gpt-4o-2024",
		APIBase: e.up.URL + "/v1", APIKey: "os.environ/UPSTREAM_KEY", AccessGroups: []string{"premium"}})
	e.st.AddModel(&state.Model{ID: "dep-llama", ModelName: "llama", UpstreamModel: "hosted_vllm/meta-llama/Llama-3",
		APIBase: e.up.URL, AccessGroups: []string{"open"}})
	e.st.AddModel(&state.Model{ID: "dep-embed", ModelName: "embed", UpstreamModel: "openai/text-embedding-3-small",
		APIBase: e.up.URL + "/v1/", APIKey: "literal-cred"})
	e.st.AddTeam(&state.Team{TeamID: "t1", Models: []string{"open"}, Limits: enforcetest.NoLimits})
	e.st.AddKey(keyGood, state.KeyInfo{TokenID: "tok-good", UserID: "u-good", Limits: enforcetest.NoLimits})
	e.st.AddKey(keyTeam, state.KeyInfo{TokenID: "tok-team", TeamID: "t1", Limits: enforcetest.NoLimits})
	e.st.AddKey(keySA, state.KeyInfo{TokenID: "tok-sa", TeamID: "t1", ServiceAccount: true, Limits: enforcetest.NoLimits})
	o := Options{
		State:    e.st,
		Registry: e.reg,
		Now:      func() time.Time { return testNow },
		Getenv: func(name string) string {
			if name == "UPSTREAM_KEY" {
				return upstreamSK
			}
			return ""
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnUsage: func(o Outcome) {
			e.mu.Lock()
			e.outcomes = append(e.outcomes, o)
			e.mu.Unlock()
		},
	}
	for _, m := range mod {
		m(&o)
	}
	e.srv = httptest.NewServer(New(o))
	t.Cleanup(e.srv.Close)
	return e
}

// do sends a request with the key as a bearer token ("" for none) and extra
// header pairs.
func (e *env) do(method, path, key, body string, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, b
}

// usage returns the outcomes reported so far. The hook runs after the
// response has been sent, so it waits briefly for a pending one.
func (e *env) usage() []Outcome {
	deadline := time.Now().Add(2 * time.Second)
	for {
		e.mu.Lock()
		out := append([]Outcome(nil), e.outcomes...)
		e.mu.Unlock()
		if len(out) >= len(e.llm.requests()) || time.Now().After(deadline) {
			return out
		}
		time.Sleep(time.Millisecond)
	}
}

// envelope decodes an error envelope and checks its status code field.
func envelope(t *testing.T, resp *http.Response, body []byte, status int) (msg, typ string, param *string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	var env struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    string  `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("not an envelope: %s", body)
	}
	if env.Error.Code != strconv.Itoa(status) {
		t.Fatalf("code %q, want %d", env.Error.Code, status)
	}
	return env.Error.Message, env.Error.Type, env.Error.Param
}

// assertNoUpstream checks that a refused request reached nothing: not the
// upstream, not the usage hook.
func (e *env) assertNoUpstream() {
	e.t.Helper()
	if n := len(e.llm.requests()); n != 0 {
		e.t.Fatalf("upstream called %d times", n)
	}
	if n := len(e.usage()); n != 0 {
		e.t.Fatalf("usage reported %d times", n)
	}
}

// assertNoKeyMaterial fails when the client key appears in b.
func assertNoKeyMaterial(t *testing.T, what string, b []byte, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if bytes.Contains(b, []byte(k)) || bytes.Contains(b, []byte(k[3:])) {
			t.Fatalf("%s contains key material: %s", what, b)
		}
	}
}
