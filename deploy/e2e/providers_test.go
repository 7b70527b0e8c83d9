package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// providerMock is a fake of three providers on one server, with the wire
// formats of their published API references: OpenAI's Responses API,
// Anthropic's Messages API and Azure OpenAI's deployment URLs. Each route
// checks what a real provider would (path, credential header, version
// header) and answers with known usage; anything else is refused with the
// provider's error shape and counted as a violation.
type providerMock struct {
	*httptest.Server
	mu         sync.Mutex
	violations []string
	paths      []string
}

func newProviderMock(t *testing.T) *providerMock {
	m := &providerMock{}
	m.Server = httptest.NewServer(http.HandlerFunc(m.serve))
	t.Cleanup(m.Close)
	return m
}

func (m *providerMock) violate(w http.ResponseWriter, status int, msg string) {
	m.mu.Lock()
	m.violations = append(m.violations, msg)
	m.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"type":"error","error":{"type":"invalid_request_error","message":%q}}`, msg)
}

func (m *providerMock) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	m.mu.Lock()
	m.paths = append(m.paths, r.Method+" "+r.URL.Path)
	m.mu.Unlock()
	model, _ := body["model"].(string)
	stream := body["stream"] == true
	sse := func(events ...string) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range events {
			io.WriteString(w, ev+"\n\n")
			w.(http.Flusher).Flush()
		}
	}
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/v1/responses"), strings.HasPrefix(p, "/v1/images/"), strings.HasPrefix(p, "/v1/audio/"), p == "/v1/moderations":
		if r.Header.Get("Authorization") != "Bearer "+upstreamSecret {
			m.violate(w, 401, "openai: no bearer credential")
			return
		}
	case strings.HasPrefix(p, "/v1/messages"):
		if r.Header.Get("X-Api-Key") != upstreamSecret || r.Header.Get("Authorization") != "" {
			m.violate(w, 401, "anthropic: x-api-key is not the upstream credential")
			return
		}
		if r.Header.Get("Anthropic-Version") == "" {
			m.violate(w, 400, "anthropic: anthropic-version header is required")
			return
		}
		if p == "/v1/messages" && (model != "claude-sonnet-4-5-20250929" || body["max_tokens"] == nil) {
			m.violate(w, 400, "anthropic: model or max_tokens wrong: "+string(raw))
			return
		}
	case strings.HasPrefix(p, "/openai/"):
		if r.Header.Get("Api-Key") != upstreamSecret || r.Header.Get("Authorization") != "" || r.URL.Query().Get("api-version") != "2024-10-21" {
			m.violate(w, 401, "azure: api-key or api-version wrong")
			return
		}
	}
	switch {
	case p == "/v1/responses" && !stream:
		if model != "gpt-4o-mini" {
			m.violate(w, 400, "responses: model "+model)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"resp_e2e1","object":"response","created_at":1741476542,"status":"completed","model":"gpt-4o-mini","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there","annotations":[]}]}],"parallel_tool_calls":true,"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":14}}`)
	case p == "/v1/responses":
		resp := func(status, usage string) string {
			return `{"id":"resp_e2e2","object":"response","created_at":1741476542,"status":"` + status + `","model":"gpt-4o-mini","output":[],"usage":` + usage + `}`
		}
		sse(`event: response.created`+"\n"+`data: {"type":"response.created","sequence_number":0,"response":`+resp("in_progress", "null")+`}`,
			`event: response.output_text.delta`+"\n"+`data: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi there"}`,
			`event: response.completed`+"\n"+`data: {"type":"response.completed","sequence_number":2,"response":`+resp("completed", `{"input_tokens":12,"input_tokens_details":{"cached_tokens":0},"output_tokens":6,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":18}`)+`}`)
	case strings.HasPrefix(p, "/v1/responses/"):
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"`+strings.TrimPrefix(p, "/v1/responses/")+`","object":"response","created_at":1741476542,"status":"completed","model":"gpt-4o-mini","output":[],"usage":null}`)
	case p == "/v1/messages" && !stream:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"msg_e2e1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello from Claude"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":100,"cache_creation_input_tokens":1000,"cache_read_input_tokens":2000,"output_tokens":50}}`)
	case p == "/v1/messages":
		sse(`event: message_start`+"\n"+`data: {"type":"message_start","message":{"id":"msg_e2e2","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":1}}}`,
			`event: content_block_start`+"\n"+`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
			`event: ping`+"\n"+`data: {"type": "ping"}`,
			`event: content_block_delta`+"\n"+`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}`,
			`event: content_block_delta`+"\n"+`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" streamed"}}`,
			`event: content_block_stop`+"\n"+`data: {"type":"content_block_stop","index":0}`,
			`event: message_delta`+"\n"+`data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}`,
			`event: message_stop`+"\n"+`data: {"type":"message_stop"}`)
	case p == "/v1/messages/count_tokens":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"input_tokens":42}`)
	case p == "/openai/deployments/prod-gpt4o/chat/completions":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"chatcmpl-az","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from Azure"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}`)
	case p == "/v1/images/generations":
		if model != "dall-e-3" {
			m.violate(w, 400, "images: model "+model)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"created":1713833628,"data":[{"url":"https://example.invalid/1.png"},{"url":"https://example.invalid/2.png"}]}`)
	case p == "/v1/audio/transcriptions":
		// multipart/form-data, as OpenAI's reference shows it: model and file.
		r.Body = io.NopCloser(strings.NewReader(string(raw)))
		if err := r.ParseMultipartForm(1 << 20); err != nil || r.FormValue("model") != "whisper-1" || r.MultipartForm.File["file"] == nil {
			m.violate(w, 400, fmt.Sprintf("transcriptions: bad multipart (%v): %q", err, raw))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"text":"hello world","usage":{"type":"duration","seconds":12.5}}`)
	case p == "/v1/audio/speech":
		if model != "tts-1" {
			m.violate(w, 400, "speech: model "+model)
			return
		}
		w.Header().Set("Content-Type", "audio/mpeg")
		io.WriteString(w, "ID3-fake-mp3-bytes")
	case p == "/v1/moderations":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"modr-1","model":"omni-moderation-latest","results":[{"flagged":false,"categories":{},"category_scores":{}}]}`)
	default:
		m.violate(w, 404, "unexpected "+r.Method+" "+p)
	}
}

func (m *providerMock) check(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.violations) > 0 {
		t.Fatalf("the mock providers saw wrong requests: %v (all: %v)", m.violations, m.paths)
	}
}

func writeProvidersConfig(t *testing.T, up string) string {
	cfg := fmt.Sprintf(`model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
      cache_read_input_token_cost: 0.0000005
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4-5-20250929
      api_base: %[1]s
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
      cache_creation_input_token_cost: 0.00000375
      cache_read_input_token_cost: 0.0000003
  - model_name: azure-gpt
    litellm_params:
      model: azure/prod-gpt4o
      api_base: %[1]s
      api_version: "2024-10-21"
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000001
  - model_name: dalle
    litellm_params:
      model: openai/dall-e-3
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      output_cost_per_image: 0.04
  - model_name: whisper
    litellm_params:
      model: openai/whisper-1
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_second: 0.0001
  - model_name: tts
    litellm_params:
      model: openai/tts-1
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
    model_info:
      input_cost_per_character: 0.000015
  - model_name: moderation
    litellm_params:
      model: openai/omni-moderation-latest
      api_base: %[1]s/v1
      api_key: os.environ/UPSTREAM_API_KEY
`, up)
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// nodeModules installs deploy/e2e/node's pinned packages (npm ci from the
// lock file) unless they are there. Without node it skips, or fails under
// CI=true.
func nodeModules(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(RepoRoot(), "deploy", "e2e", "node")
	if _, err := exec.LookPath("node"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node is required under CI=true")
		}
		t.Skip("node not installed")
	}
	npmMu.Lock()
	defer npmMu.Unlock()
	for _, pkg := range []string{"openai", "@anthropic-ai/sdk"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("npm ci: %v\n%s", err, out)
			}
			break
		}
	}
	return dir
}

var npmMu sync.Mutex

// usdNanos reads a spend in USD as nano-USD.
func usdNanos(v any) int64 {
	f, _ := v.(float64)
	return int64(math.Round(f * 1e9))
}

// waitKeySpend waits until a key's synced spend is want micro-USD (every
// figure these tests bill is a whole number of micro-USD; compared exactly
// in nano-USD).
func waitKeySpend(t *testing.T, cp *ControlPlane, key string, wantMicros int64) {
	t.Helper()
	want := wantMicros * 1000
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := usdNanos(ok(t, Do(t, "GET", cp.URL()+"/key/info?key="+key, cp.MasterKey, nil))["info"].(map[string]any)["spend"])
		if got > want {
			t.Fatalf("key spend %d nano-USD, more than %d", got, want)
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key spend %d nano-USD, want %d", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestProviderRoutesWithSDKs drives /v1/responses, /v1/messages and an
// Azure deployment with the official OpenAI and Anthropic Node SDKs (pinned
// in deploy/e2e/node) against mock providers that check what they receive,
// then checks the exact spend of each route.
func TestProviderRoutesWithSDKs(t *testing.T) {
	t.Parallel()
	dir := nodeModules(t)
	up := newProviderMock(t)
	cp := StartControlPlane(t, CPOptions{Config: writeProvidersConfig(t, up.URL)})
	dp := ProxyFor(t, cp, "UPSTREAM_API_KEY="+upstreamSecret)
	u, mk := cp.URL(), cp.MasterKey
	gen := func(body string) string { return ok(t, Do(t, "POST", u+"/key/generate", mk, body))["key"].(string) }
	keyResp := gen(`{"models":["gpt-4o-mini"]}`)
	keyMsg := gen(`{"models":["claude-sonnet"]}`)
	keyAz := gen(`{"models":["azure-gpt"]}`)
	keyChatOnly := gen(`{"allowed_routes":["/v1/chat/completions"]}`)
	keyChatClaude := gen(`{"models":["claude-sonnet"]}`)
	keyUnits := gen(`{"models":["dalle","whisper","tts","moderation"]}`)
	waitStatus(t, dp, keyAz, chat("azure-gpt", ""), 200)

	cmd := exec.Command("node", "providers.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PROXY_URL="+dp.URL(), "KEY_RESP="+keyResp, "KEY_MSG="+keyMsg, "KEY_AZ="+keyAz, "KEY_CHAT_ONLY="+keyChatOnly, "KEY_CHAT_CLAUDE="+keyChatClaude, "KEY_UNITS="+keyUnits)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("node providers.mjs: %v\n%s", err, out)
	}
	up.check(t)

	// Responses: (10-4)×1 + 4×0.5 + 4×2 = 16, streamed 12×1 + 6×2 = 24.
	waitKeySpend(t, cp, keyResp, 16+24)
	// Messages: 100×3 + 1000×3.75 + 2000×0.3 + 50×15 = 5400, streamed
	// 25×3 + 10×0.3 + 15×15 = 303; count_tokens costs nothing.
	waitKeySpend(t, cp, keyMsg, 5400+303)
	// Chat translated to Messages bills the same usage.
	waitKeySpend(t, cp, keyChatClaude, 5400+303)
	// Per unit: 2 images × $0.04, 12.5 s × $0.0001, 11 characters ×
	// $0.000015, moderation free.
	waitKeySpend(t, cp, keyUnits, 80_000+1250+165)
	// Azure: the waitStatus call and the SDK's, 7×1 + 2×1 each.
	waitKeySpend(t, cp, keyAz, 2*9)
}

// TestProviderRoutesRefuse: rpm, budgets and enforced params refuse on the
// new routes before any upstream call, in each route's error shape.
func TestProviderRoutesRefuse(t *testing.T) {
	t.Parallel()
	up := newProviderMock(t)
	cp := StartControlPlane(t, CPOptions{Config: writeProvidersConfig(t, up.URL)})
	dp := ProxyFor(t, cp, "UPSTREAM_API_KEY="+upstreamSecret)
	u, mk := cp.URL(), cp.MasterKey
	gen := func(body string) string { return ok(t, Do(t, "POST", u+"/key/generate", mk, body))["key"].(string) }
	msg := `{"model":"claude-sonnet","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`
	resp := `{"model":"gpt-4o-mini","input":"hi"}`
	anthropicErr := func(r Response, status int, typ string) {
		t.Helper()
		var e struct {
			Type  string `json:"type"`
			Error struct{ Type, Message string }
		}
		if r.Status != status || json.Unmarshal(r.Body, &e) != nil || e.Type != "error" || e.Error.Type != typ || e.Error.Message == "" {
			t.Fatalf("want %d %s in Anthropic's shape, got %d %s", status, typ, r.Status, r.Body)
		}
	}
	waitOK := func(path, key, body string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			r := Do(t, "POST", dp.URL()+path, key, body)
			if r.Status == 200 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d %s", path, r.Status, r.Body)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// rpm: the second call in the minute is a 429.
	rpm := gen(`{"rpm_limit":1}`)
	waitOK("/v1/messages", rpm, msg)
	anthropicErr(Do(t, "POST", dp.URL()+"/v1/messages", rpm, msg), 429, "rate_limit_error")
	rpm2 := gen(`{"rpm_limit":1}`)
	waitOK("/v1/responses", rpm2, resp)
	envelope(t, Do(t, "POST", dp.URL()+"/v1/responses", rpm2, resp), 429)

	for _, tc := range []struct{ path, body string }{
		{"/v1/images/generations", `{"model":"dalle","prompt":"a cat"}`},
		{"/v1/audio/speech", `{"model":"tts","input":"hi","voice":"alloy"}`},
		{"/v1/moderations", `{"model":"moderation","input":"hi"}`},
		{"/v1/messages/count_tokens", `{"model":"claude-sonnet","messages":[{"role":"user","content":"hi"}]}`},
	} {
		k := gen(`{"rpm_limit":1}`)
		waitOK(tc.path, k, tc.body)
		r := Do(t, "POST", dp.URL()+tc.path, k, tc.body)
		if strings.HasPrefix(tc.path, "/v1/messages") {
			anthropicErr(r, 429, "rate_limit_error")
		} else {
			envelope(t, r, 429)
		}
		ek := gen(`{"enforced_params":["metadata.tag"]}`)
		deadline := time.Now().Add(5 * time.Second)
		for {
			r := Do(t, "POST", dp.URL()+tc.path, ek, tc.body)
			if r.Status == 400 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s enforced params: %d %s", tc.path, r.Status, r.Body)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// enforced_params: JSON paths in these bodies too.
	ep := gen(`{"enforced_params":["metadata.user_id"]}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := Do(t, "POST", dp.URL()+"/v1/messages", ep, msg)
		if r.Status == 400 {
			anthropicErr(r, 400, "invalid_request_error")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("enforced params: %d %s", r.Status, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitOK("/v1/messages", ep, strings.Replace(msg, `"max_tokens"`, `"metadata":{"user_id":"u1"},"max_tokens"`, 1))
	envelope(t, Do(t, "POST", dp.URL()+"/v1/responses", ep, resp), 400)

	// Budgets: once the spend is synced past max_budget, refused.
	for _, tc := range []struct{ path, body string }{{"/v1/messages", msg}, {"/v1/responses", resp}} {
		k := gen(`{"max_budget":0.00001}`)
		waitOK(tc.path, k, tc.body)
		deadline := time.Now().Add(15 * time.Second)
		for {
			r := Do(t, "POST", dp.URL()+tc.path, k, tc.body)
			if r.Status == 429 {
				if tc.path == "/v1/messages" {
					anthropicErr(r, 429, "rate_limit_error")
				} else if envelope(t, r, 429)["type"] != "budget_exceeded" {
					t.Fatalf("budget: %s", r.Body)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s over budget: %d %s", tc.path, r.Status, r.Body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	up.check(t)
}

// TestModelAPIUnitPrices: cache and per-unit prices set through /model/new
// are shown by /model/info and bill requests exactly.
func TestModelAPIUnitPrices(t *testing.T) {
	t.Parallel()
	up := newProviderMock(t)
	cp := StartControlPlane(t, CPOptions{})
	dp := ProxyFor(t, cp, "UPSTREAM_API_KEY="+upstreamSecret)
	u, mk := cp.URL(), cp.MasterKey
	ok(t, Do(t, "POST", u+"/model/new", mk, `{"model_name":"claude-api","litellm_params":{"model":"anthropic/claude-sonnet-4-5-20250929","api_base":"`+up.URL+`","api_key":"os.environ/UPSTREAM_API_KEY"},
		"model_info":{"input_cost_per_token":0.000003,"output_cost_per_token":0.000015,"cache_creation_input_token_cost":0.00000375,"cache_read_input_token_cost":0.0000003}}`))
	envelope(t, Do(t, "POST", u+"/model/new", mk, `{"model_name":"x","litellm_params":{"model":"openai/x"},"model_info":{"input_cost_per_image":-1}}`), 400)
	info := ok(t, Do(t, "GET", u+"/model/info", mk, nil))["data"].([]any)[0].(map[string]any)["model_info"].(map[string]any)
	if info["cache_read_input_token_cost"] != 0.0000003 || info["cache_creation_input_token_cost"] != 0.00000375 {
		t.Fatalf("model_info %v", info)
	}
	lp := ok(t, Do(t, "POST", u+"/model/new", mk, `{"model_name":"dalle-api","litellm_params":{"model":"openai/dall-e-3","api_base":"`+up.URL+`/v1","api_key":"os.environ/UPSTREAM_API_KEY","output_cost_per_image":0.04}}`))["litellm_params"].(map[string]any)
	if lp["output_cost_per_image"] != 0.04 {
		t.Fatalf("litellm_params %v", lp)
	}
	key := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"models":["claude-api"]}`))["key"].(string)
	imgKey := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"models":["dalle-api"]}`))["key"].(string)
	msg := `{"model":"claude-api","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := Do(t, "POST", dp.URL()+"/v1/messages", "", msg, "X-Api-Key", key)
		if r.Status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages: %d %s", r.Status, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		r := Do(t, "POST", dp.URL()+"/v1/images/generations", imgKey, `{"model":"dalle-api","prompt":"a cat","n":2}`)
		if r.Status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("images: %d %s", r.Status, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	up.check(t)
	waitKeySpend(t, cp, key, 5400)
	waitKeySpend(t, cp, imgKey, 80_000)
}
