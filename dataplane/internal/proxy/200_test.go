package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

func TestChatNonStream(t *testing.T) {
	e := newEnv(t)
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"user":"end-1"}`
	resp, b := e.do("POST", "/v1/chat/completions", keyGood, body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	if !strings.Contains(string(b), `"model":"gpt-4o-2024"`) {
		t.Fatalf("response not passed through: %s", b)
	}
	up := e.llm.last(t)
	if up.Path != "/v1/chat/completions" || up.Method != "POST" {
		t.Fatalf("upstream got %s %s", up.Method, up.Path)
	}
	if got := up.Header.Get("Authorization"); got != "Bearer "+upstreamSK {
		t.Fatalf("upstream Authorization %q", got)
	}
	want := `{"model":"gpt-4o-2024","messages":[{"role":"user","content":"hi"}],"user":"end-1"}`
	if string(up.Body) != want {
		t.Fatalf("upstream body\n got %s\nwant %s", up.Body, want)
	}
	// Upstream headers that belong to Tollgate's account stay here.
	if resp.Header.Get("Set-Cookie") != "" || resp.Header.Get("Openai-Organization") != "" || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "" {
		t.Fatalf("leaked upstream headers: %v", resp.Header)
	}
	if resp.Header.Get("Llm_provider-X-Ratelimit-Remaining-Requests") != "99" || resp.Header.Get("Llm_provider-X-Request-Id") != "req-upstream" {
		t.Fatalf("headers not passed: %v", resp.Header)
	}
	u := e.usage()
	if len(u) != 1 {
		t.Fatalf("%d outcomes", len(u))
	}
	o := u[0]
	if o.TokenID != "tok-good" || o.UserID != "u-good" || o.Model != "gpt-4o" || o.DeploymentID != "dep-gpt" ||
		o.EndUser != "end-1" || o.Status != 200 || o.Streamed || !o.UsageKnown || o.Aborted ||
		o.Usage != (Usage{PromptTokens: 3, CompletionTokens: 5, TotalTokens: 8}) || o.Route != enforce.RouteChat {
		t.Fatalf("outcome %+v", o)
	}
}

func TestBodyForwardedByteForByteWhenNothingChanges(t *testing.T) {
	e := newEnv(t)
	e.st.AddModel(&state.Model{ID: "same", ModelName: "same-name", UpstreamModel: "openai/same-name", APIBase: e.up.URL})
	body := "{ \"model\" : \"same-name\",\n \"messages\":[{\"role\":\"user\",\"content\":\"caf\\u00e9 <&>\"}], \"temperature\": 0.5e0 }"
	resp, b := e.do("POST", "/chat/completions", keyGood, body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	up := e.llm.last(t)
	if string(up.Body) != body {
		t.Fatalf("body changed:\n got %q\nwant %q", up.Body, body)
	}
	if up.Path != "/v1/chat/completions" {
		t.Fatalf("api_base without /v1: upstream path %s", up.Path)
	}
	if up.Header.Get("Authorization") != "" {
		t.Fatalf("empty credential must send no Authorization, got %q", up.Header.Get("Authorization"))
	}
}

func TestProviderPrefixStripped(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do("POST", "/completions", keyTeam, `{"model":"llama","prompt":"x"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	up := e.llm.last(t)
	if up.Path != "/v1/completions" || string(up.Body) != `{"model":"meta-llama/Llama-3","prompt":"x"}` {
		t.Fatalf("upstream %s %s", up.Path, up.Body)
	}
}

func TestEmbeddings(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do("POST", "/embeddings", keyGood, `{"model":"embed","input":"x","stream":true}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	up := e.llm.last(t)
	if up.Path != "/v1/embeddings" || up.Header.Get("Authorization") != "Bearer literal-cred" {
		t.Fatalf("upstream %s %v", up.Path, up.Header)
	}
	// No stream_options on a route that does not stream.
	if strings.Contains(string(up.Body), "stream_options") {
		t.Fatalf("body %s", up.Body)
	}
	if u := e.usage(); len(u) != 1 || u[0].Usage != (Usage{PromptTokens: 4, TotalTokens: 4}) {
		t.Fatalf("usage %+v", u)
	}
}

func TestClientCredentialsNeverReachUpstream(t *testing.T) {
	e := newEnv(t)
	body := `{"model":"gpt-4o","messages":[],"api_base":"http://evil.example","base_url":"http://evil.example","api_key":"sk-attacker"}`
	resp, b := e.do("POST", "/chat/completions", keyGood, body,
		"Api-Key", keyGood, "X-Api-Key", keyGood, "Cookie", "session="+keyGood,
		"OpenAI-Organization", "org-attacker", "Proxy-Authorization", "Basic "+keyGood,
		"X-Request-Id", "rid-1")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	up := e.llm.last(t)
	for k, vs := range up.Header {
		for _, v := range vs {
			assertNoKeyMaterial(t, "upstream header "+k, []byte(v), keyGood)
		}
	}
	assertNoKeyMaterial(t, "upstream body", up.Body, keyGood)
	if up.Header.Get("Openai-Organization") != "" || up.Header.Get("Cookie") != "" {
		t.Fatalf("client headers forwarded: %v", up.Header)
	}
	if up.Header.Get("X-Request-Id") != "rid-1" {
		t.Fatalf("X-Request-Id not forwarded")
	}
	// api_base / api_key in the body changed neither the destination nor the
	// credential (the request reached the configured upstream).
	if up.Header.Get("Authorization") != "Bearer "+upstreamSK {
		t.Fatalf("credential %q", up.Header.Get("Authorization"))
	}
}

func TestAlternativeKeyHeaders(t *testing.T) {
	e := newEnv(t)
	for _, h := range []string{"Api-Key", "X-Api-Key"} {
		resp, b := e.do("POST", "/chat/completions", "", `{"model":"gpt-4o"}`, h, keyGood)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d: %s", h, resp.StatusCode, b)
		}
	}
}

// sseEvents reads a response body as SSE data payloads.
func sseEvents(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

func TestStreamHidesUsageChunkTollgateAskedFor(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do("POST", "/v1/chat/completions", keyGood, `{"model":"gpt-4o","stream":true,"messages":[]}`)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	up := e.llm.last(t)
	if string(up.Body) != `{"model":"gpt-4o-2024","stream":true,"messages":[],"stream_options":{"include_usage":true}}` {
		t.Fatalf("upstream body %s", up.Body)
	}
	evs := sseEvents(t, strings.NewReader(string(b)))
	var text strings.Builder
	for _, ev := range evs {
		if ev == "[DONE]" {
			continue
		}
		if strings.Contains(ev, `"choices":[]`) {
			t.Fatalf("usage chunk reached a client that did not ask: %s", ev)
		}
		var c struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatalf("bad event %q: %v", ev, err)
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Delta.Content)
		}
	}
	if text.String() != "Hello!" || evs[len(evs)-1] != "[DONE]" || len(evs) != 5 {
		t.Fatalf("events %q", evs)
	}
	u := e.usage()
	if len(u) != 1 || !u[0].Streamed || !u[0].UsageKnown || u[0].Usage != (Usage{PromptTokens: 7, CompletionTokens: 3, TotalTokens: 10}) {
		t.Fatalf("usage %+v", u)
	}
}

func TestStreamKeepsUsageChunkClientAskedFor(t *testing.T) {
	e := newEnv(t)
	body := `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}`
	resp, b := e.do("POST", "/v1/chat/completions", keyGood, body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if up := e.llm.last(t); string(up.Body) != strings.Replace(body, "gpt-4o", "gpt-4o-2024", 1) {
		t.Fatalf("upstream body %s", up.Body)
	}
	evs := sseEvents(t, strings.NewReader(string(b)))
	if len(evs) != 6 || !strings.Contains(evs[4], `"usage":{"prompt_tokens":7`) {
		t.Fatalf("events %q", evs)
	}
	if u := e.usage(); len(u) != 1 || u[0].Usage.TotalTokens != 10 {
		t.Fatalf("usage %+v", u)
	}
}

func TestStreamOptionsRewrite(t *testing.T) {
	tests := map[string]string{
		`{"model":"gpt-4o","stream":true,"stream_options":{}}`:                       `{"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"gpt-4o","stream":true,"stream_options":{ }}`:                      `{"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true }}`,
		`{"model":"gpt-4o","stream":true,"stream_options":null}`:                     `{"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false}}`:  `{"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true}}`,
		`{"stream_options":{"x":1},"stream":true,"model":"gpt-4o"}`:                  `{"stream_options":{"include_usage":true,"x":1},"stream":true,"model":"gpt-4o-2024"}`,
		`{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`:   `{"model":"gpt-4o-2024","stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"gpt-4o","stream":false,"stream_options":{"include_usage":false}}`: `{"model":"gpt-4o-2024","stream":false,"stream_options":{"include_usage":false}}`,
		"{\"model\":\"gpt-4o\",\"stream\":true}\n":                                   "{\"model\":\"gpt-4o-2024\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
	}
	e := newEnv(t)
	h := New(Options{State: e.st}).(*handler)
	for in, want := range tests {
		c := &call{route: enforce.RouteChat, path: "/chat/completions"}
		if rej := h.authenticate(c, keyGood); rej != nil {
			t.Fatal(rej.Message)
		}
		if rej := h.decide(c, []byte(in)); rej != nil {
			t.Fatalf("%s: %s", in, rej.Message)
		}
		got, _ := io.ReadAll(newSegReader(c.segs, c.nseg))
		if string(got) != want || int64(len(got)) != c.length {
			t.Errorf("%s\n got %s (%d/%d)\nwant %s", in, got, len(got), c.length, want)
		}
		// What the transport gets: the same bytes, again from GetBody, from
		// a reader it knows is in memory (so the headers and the body go
		// out in one write).
		body, getBody := c.upstreamBody()
		again, _ := getBody()
		for _, r := range []io.ReadCloser{body, again} {
			if got, _ := io.ReadAll(r); string(got) != want {
				t.Errorf("%s: the transport's body is %s", in, got)
			}
			if _, ok := r.(io.WriterTo); !ok { // io.NopCloser of a bytes.Reader
				t.Errorf("%s: the transport's body is a %T, not an in-memory reader", in, r)
			}
		}
		if !json.Valid(got) {
			t.Errorf("invalid JSON %s", got)
		}
	}
}

// TestStreamChunksArriveInOrderAsSent holds the upstream after each chunk
// until the client has seen it: buffering anywhere would deadlock.
func TestStreamChunksArriveInOrderAsSent(t *testing.T) {
	e := newEnv(t)
	seen := make(chan int)
	e.llm.serve = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 5; i++ {
			io.WriteString(w, `data: {"choices":[{"delta":{"content":"`+string(rune('a'+i))+`"}}]}`+"\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-seen:
			case <-time.After(5 * time.Second):
				return
			}
		}
		io.WriteString(w, `data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}}`+"\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	}
	req, _ := http.NewRequest("POST", e.srv.URL+"/chat/completions", strings.NewReader(`{"model":"gpt-4o","stream":true}`))
	req.Header.Set("Authorization", "Bearer "+keyGood)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var got []string
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			got = append(got, d)
			if len(got) <= 5 {
				seen <- len(got)
			}
		}
	}
	if len(got) != 6 || got[5] != "[DONE]" {
		t.Fatalf("events %q", got)
	}
	for i := 0; i < 5; i++ {
		if !strings.Contains(got[i], `"content":"`+string(rune('a'+i))+`"`) {
			t.Fatalf("event %d = %s", i, got[i])
		}
	}
	if u := e.usage(); len(u) != 1 || u[0].Usage.TotalTokens != 6 {
		t.Fatalf("usage %+v", u)
	}
}

func TestModelsListFiltered(t *testing.T) {
	e := newEnv(t)
	e.st.AddKey("sk-premium-0123456789abcdef", state.KeyInfo{TokenID: "p", Policy: &state.Policy{Models: []string{"premium", "embed"}}})
	for key, want := range map[string][]string{
		keyGood:                       {"embed", "gpt-4o", "llama"},
		keyTeam:                       {"llama"},
		"sk-premium-0123456789abcdef": {"embed", "gpt-4o"},
	} {
		for _, path := range []string{"/models", "/v1/models"} {
			resp, b := e.do("GET", path, key, "")
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			var list struct {
				Object string `json:"object"`
				Data   []struct {
					ID      string `json:"id"`
					Object  string `json:"object"`
					Created int64  `json:"created"`
					OwnedBy string `json:"owned_by"`
				} `json:"data"`
			}
			if err := json.Unmarshal(b, &list); err != nil || list.Object != "list" {
				t.Fatalf("bad list %s", b)
			}
			var ids []string
			for _, d := range list.Data {
				if d.Object != "model" || d.OwnedBy != "tollgate" {
					t.Fatalf("bad entry %s", b)
				}
				ids = append(ids, d.ID)
			}
			if strings.Join(ids, ",") != strings.Join(want, ",") {
				t.Errorf("%s %s: %v, want %v", key[:7], path, ids, want)
			}
		}
	}
	e.assertNoUpstream()
}

func TestHealth(t *testing.T) {
	e := newEnv(t)
	resp, b := e.do("GET", "/health/liveliness", "", "")
	if resp.StatusCode != 200 || string(b) != `"I'm alive!"` {
		t.Fatalf("liveliness %d %s", resp.StatusCode, b)
	}
	resp, b = e.do("GET", "/health/readiness", "", "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"status":"healthy"`) {
		t.Fatalf("readiness %d %s", resp.StatusCode, b)
	}
}

func TestRoundRobinAcrossDeployments(t *testing.T) {
	e := newEnv(t)
	e.st.AddModel(&state.Model{ID: "dep-gpt-2", ModelName: "gpt-4o", UpstreamModel: "openai/gpt-4o-other", APIBase: e.up.URL})
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
	}
	for _, u := range e.usage() {
		seen[u.DeploymentID]++
	}
	if seen["dep-gpt"] != 5 || seen["dep-gpt-2"] != 5 {
		t.Fatalf("deployments %v", seen)
	}
}

func TestUpstreamErrorStatusPassedThrough(t *testing.T) {
	e := newEnv(t)
	e.llm.serve = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(429)
		io.WriteString(w, `{"error":{"message":"slow down","type":"rate_limit"}}`)
	}
	resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`)
	if resp.StatusCode != 429 || string(b) != `{"error":{"message":"slow down","type":"rate_limit"}}` {
		t.Fatalf("status %d %s", resp.StatusCode, b)
	}
	if u := e.usage(); len(u) != 1 || u[0].Status != 429 || u[0].UsageKnown {
		t.Fatalf("usage %+v", u)
	}
	if !strings.Contains(metricsText(t, e), `tollgate_proxy_requests_total{outcome="upstream_4xx",route="/chat/completions"} 1`) {
		t.Fatal("metric missing")
	}
}

func metricsText(t *testing.T, e *env) string {
	t.Helper()
	resp, b := e.do("GET", "/metrics", "", "")
	if resp.StatusCode != 200 {
		t.Fatalf("metrics %d", resp.StatusCode)
	}
	return string(b)
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`)
	e.do("POST", "/chat/completions", "sk-unknown-123456", `{"model":"gpt-4o"}`)
	m := metricsText(t, e)
	for _, want := range []string{
		`tollgate_proxy_requests_total{outcome="ok",route="/chat/completions"} 1`,
		`tollgate_proxy_requests_total{outcome="invalid_key",route="/chat/completions"} 1`,
		`tollgate_proxy_decision_seconds_count 1`,
		`tollgate_proxy_upstream_seconds_count{route="/chat/completions"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("missing %s", want)
		}
	}
	assertNoKeyMaterial(t, "metrics", []byte(m), keyGood, "sk-unknown-123456")
}

func TestNewTwiceOnOneRegistry(t *testing.T) {
	e := newEnv(t)
	_ = New(Options{State: e.st, Registry: e.reg})
}

// A body larger than joinMax made of several segments is not copied: the
// transport reads the segments in order.
func TestLargePlannedBodyNotJoined(t *testing.T) {
	big := bytes.Repeat([]byte("x"), joinMax)
	c := &call{}
	c.addSeg(big[:10])
	c.addSeg([]byte("-model-"))
	c.addSeg(big[10:])
	body, getBody := c.upstreamBody()
	if _, ok := body.(*segReader); !ok {
		t.Fatalf("a %d-byte body of 3 segments went to the transport as a %T", c.length, body)
	}
	for _, r := range []io.ReadCloser{body, must(getBody())} {
		got, _ := io.ReadAll(r)
		if int64(len(got)) != c.length || string(got[10:17]) != "-model-" {
			t.Fatalf("segments read back as %d bytes", len(got))
		}
	}
	var empty call
	if b, _ := empty.upstreamBody(); b != http.NoBody {
		t.Fatalf("no segments: %T, want http.NoBody", b)
	}
}

func must(r io.ReadCloser, err error) io.ReadCloser {
	if err != nil {
		panic(err)
	}
	return r
}
