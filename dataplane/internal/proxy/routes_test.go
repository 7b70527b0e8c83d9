package proxy

import (
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

const (
	keyChatOnly = "sk-chatonly-0123456789abcdefg"
	keyOther    = "sk-other-0123456789abcdefghi"
)

// providerEnv is newEnv with deployments of the other providers on the same
// fake upstream, which answers each provider's wire format (from the
// providers' API references) with known usage.
func providerEnv(t *testing.T, mod ...func(*Options)) *env {
	e := newEnv(t, mod...)
	e.st.AddModel(&state.Model{ID: "dep-claude", ModelName: "claude", UpstreamModel: "anthropic/claude-sonnet-4-5",
		APIBase: e.up.URL, APIKey: "os.environ/UPSTREAM_KEY", InputCost: 3_000_000, OutputCost: 15_000_000,
		CacheCreationCost: 3_750_000, CacheReadCost: 300_000})
	e.st.AddModel(&state.Model{ID: "dep-azure", ModelName: "az", UpstreamModel: "azure/my-gpt4o",
		APIBase: e.up.URL, APIVersion: "2024-10-21", APIKey: "os.environ/UPSTREAM_KEY"})
	e.st.AddModel(&state.Model{ID: "dep-img", ModelName: "dalle", UpstreamModel: "openai/dall-e-3",
		APIBase: e.up.URL + "/v1", ImageCost: 40_000_000_000})
	e.st.AddModel(&state.Model{ID: "dep-whisper", ModelName: "whisper", UpstreamModel: "openai/whisper-1",
		APIBase: e.up.URL + "/v1", SecondCost: 100_000_000})
	e.st.AddModel(&state.Model{ID: "dep-tts", ModelName: "tts", UpstreamModel: "openai/tts-1",
		APIBase: e.up.URL + "/v1", CharacterCost: 15_000_000})
	e.st.AddKey(keyChatOnly, state.KeyInfo{TokenID: "tok-chatonly", Limits: enforcetest.NoLimits,
		Policy: &state.Policy{AllowedRoutes: []string{"/v1/chat/completions"}}})
	e.st.AddKey(keyOther, state.KeyInfo{TokenID: "tok-other", Limits: enforcetest.NoLimits})
	e.llm.serve = serveProviders
	return e
}

func serveProviders(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	_ = json.Unmarshal(body, &req)
	sse := func(events ...string) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, ev := range events {
			io.WriteString(w, ev+"\n\n")
			w.(http.Flusher).Flush()
		}
	}
	p := r.URL.Path
	switch {
	case p == "/v1/responses" && !req.Stream:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"resp_abc123","object":"response","status":"completed","model":"`+req.Model+`","output":[{"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"Hi","annotations":[]}]}],"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":3},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":14}}`)
	case p == "/v1/responses":
		sse(`event: response.created`+"\n"+`data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_str1","object":"response","status":"in_progress","output":[],"usage":null}}`,
			`event: response.output_text.delta`+"\n"+`data: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi"}`,
			`event: response.completed`+"\n"+`data: {"type":"response.completed","sequence_number":2,"response":{"id":"resp_str1","object":"response","status":"completed","output":[],"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":0},"output_tokens":6,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":18}}}`)
	case strings.HasPrefix(p, "/v1/responses/"):
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"`+strings.TrimPrefix(p, "/v1/responses/")+`","object":"response","status":"completed","usage":{"input_tokens":10,"output_tokens":4,"total_tokens":14}}`)
	case p == "/v1/messages" && !req.Stream:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"msg_01","type":"message","role":"assistant","model":"`+req.Model+`","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":100,"cache_creation_input_tokens":1000,"cache_read_input_tokens":2000,"output_tokens":50}}`)
	case p == "/v1/messages":
		sse(`event: message_start`+"\n"+`data: {"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","content":[],"model":"`+req.Model+`","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":1}}}`,
			`event: content_block_start`+"\n"+`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
			`event: ping`+"\n"+`data: {"type": "ping"}`,
			`event: content_block_delta`+"\n"+`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}`,
			`event: content_block_stop`+"\n"+`data: {"type":"content_block_stop","index":0}`,
			`event: message_delta`+"\n"+`data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}`,
			`event: message_stop`+"\n"+`data: {"type":"message_stop"}`)
	case p == "/v1/messages/count_tokens":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"input_tokens":42}`)
	case strings.HasPrefix(p, "/openai/deployments/my-gpt4o/"), strings.HasSuffix(p, "/chat/completions"):
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"chatcmpl-az","object":"chat.completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}`)
	case p == "/v1/audio/transcriptions":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"text":"hello","usage":{"type":"duration","seconds":12.5}}`)
	case p == "/v1/audio/speech":
		w.Header().Set("Content-Type", "audio/mpeg")
		io.WriteString(w, "ID3-fake-mp3")
	case p == "/v1/images/generations":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"created":1,"data":[{"url":"https://x/1.png"},{"url":"https://x/2.png"}]}`)
	default:
		http.Error(w, `{"error":{"message":"unexpected path `+p+`"}}`, 404)
	}
}

func TestResponsesRoute(t *testing.T) {
	e := providerEnv(t)
	resp, body := e.do("POST", "/v1/responses", keyGood, `{"model":"gpt-4o","input":"hi"}`)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"resp_abc123"`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	up := e.llm.last(t)
	if up.Path != "/v1/responses" || up.Header.Get("Authorization") != "Bearer "+upstreamSK || !strings.Contains(string(up.Body), `"model":"gpt-4o-2024"`) {
		t.Fatalf("upstream got %s %v %s", up.Path, up.Header, up.Body)
	}
	u := e.usage()
	if len(u) != 1 || !u[0].UsageKnown || u[0].Usage.PromptTokens != 10 || u[0].Usage.CompletionTokens != 4 || u[0].Usage.CacheReadTokens != 3 {
		t.Fatalf("usage %+v", u)
	}

	// The stored response is reachable by the key that created it.
	resp, body = e.do("GET", "/v1/responses/resp_abc123?include=x", keyGood, "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), "resp_abc123") {
		t.Fatalf("GET: %d %s", resp.StatusCode, body)
	}
	if up := e.llm.last(t); up.Method != "GET" || up.Path != "/v1/responses/resp_abc123" || up.RawQuery != "include=x" || up.Header.Get("Authorization") != "Bearer "+upstreamSK {
		t.Fatalf("GET upstream %+v", up)
	}
	n := len(e.llm.requests())
	resp, body = e.do("GET", "/v1/responses/resp_abc123", keyOther, "")
	envelope(t, resp, body, 404)
	resp, body = e.do("GET", "/v1/responses/resp_unknown", keyGood, "")
	envelope(t, resp, body, 404)
	if len(e.llm.requests()) != n {
		t.Fatal("a refused retrieval reached the upstream")
	}
	for _, p := range []string{"/v1/responses/resp_abc123/../../chat/completions", "/v1/responses/resp_abc123/x", "/v1/responses/resp%2e/cancel"} {
		resp, body = e.do("GET", p, keyGood, "")
		envelope(t, resp, body, 404)
	}
	if len(e.llm.requests()) != n {
		t.Fatal("an odd item path reached the upstream")
	}
	resp, _ = e.do("DELETE", "/responses/resp_abc123", keyGood, "")
	if resp.StatusCode != 200 || e.llm.last(t).Method != "DELETE" {
		t.Fatalf("DELETE %d", resp.StatusCode)
	}
	resp, body = e.do("GET", "/v1/responses/resp_abc123", keyGood, "")
	envelope(t, resp, body, 404)
}

func TestResponsesStream(t *testing.T) {
	e := providerEnv(t)
	resp, body := e.do("POST", "/responses", keyGood, `{"model":"gpt-4o","input":"hi","stream":true}`)
	if resp.StatusCode != 200 || strings.Count(string(body), "event: ") != 3 || !strings.Contains(string(body), `"total_tokens":18`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if strings.Contains(string(e.llm.last(t).Body), "stream_options") {
		t.Fatal("stream_options sent to the Responses API")
	}
	u := e.usage()
	if len(u) != 1 || !u[0].Streamed || !u[0].UsageKnown || u[0].Usage.PromptTokens != 12 || u[0].Usage.CompletionTokens != 6 {
		t.Fatalf("usage %+v", u)
	}
	resp, _ = e.do("GET", "/v1/responses/resp_str1", keyGood, "")
	if resp.StatusCode != 200 {
		t.Fatalf("streamed response id not remembered: %d", resp.StatusCode)
	}
}

func TestMessagesNative(t *testing.T) {
	e := providerEnv(t)
	req := `{"model":"claude","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	resp, body := e.do("POST", "/v1/messages", "", req, "X-Api-Key", keyGood, "Anthropic-Version", "2023-06-01", "Anthropic-Beta", "prompt-caching-2024-07-31")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"msg_01"`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	up := e.llm.last(t)
	if up.Path != "/v1/messages" || up.Header.Get("X-Api-Key") != upstreamSK || up.Header.Get("Authorization") != "" ||
		up.Header.Get("Anthropic-Version") != "2023-06-01" || up.Header.Get("Anthropic-Beta") != "prompt-caching-2024-07-31" ||
		!strings.Contains(string(up.Body), `"model":"claude-sonnet-4-5"`) {
		t.Fatalf("upstream got %s %v %s", up.Path, up.Header, up.Body)
	}
	u := e.usage()
	want := Usage{PromptTokens: 3100, CompletionTokens: 50, TotalTokens: 3150, CacheCreationTokens: 1000, CacheReadTokens: 2000}
	if len(u) != 1 || !u[0].UsageKnown || u[0].Usage != want {
		t.Fatalf("usage %+v", u)
	}
	// 100×3 + 1000×3.75 + 2000×0.3 + 50×15 = 5400 micro-USD... in pico: 5.4e9.
	dep := e.st.Deployments("claude")[0]
	if c := Cost(dep, u[0].Usage); c != Cost(&state.Model{InputCost: 1}, Usage{PromptTokens: 5_400_000_000}) {
		t.Fatalf("cost %d", c)
	}

	// Streamed: events pass unchanged; usage from message_start + message_delta.
	resp, body = e.do("POST", "/messages", keyGood, strings.Replace(req, `"max_tokens"`, `"stream":true,"max_tokens"`, 1))
	if resp.StatusCode != 200 || strings.Count(string(body), "event: ") != 7 || !strings.Contains(string(body), `"output_tokens":15`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if e.llm.last(t).Header.Get("Anthropic-Version") != "2023-06-01" {
		t.Fatal("no default anthropic-version")
	}
	u = e.usage()
	want = Usage{PromptTokens: 35, CompletionTokens: 15, TotalTokens: 50, CacheReadTokens: 10}
	if len(u) != 2 || !u[1].Streamed || u[1].Usage != want {
		t.Fatalf("stream usage %+v", u)
	}

	resp, body = e.do("POST", "/v1/messages/count_tokens", "", `{"model":"claude","messages":[{"role":"user","content":"hi"}]}`, "X-Api-Key", keyGood)
	if resp.StatusCode != 200 || string(body) != `{"input_tokens":42}` || e.llm.last(t).Path != "/v1/messages/count_tokens" {
		t.Fatalf("count_tokens %d %s", resp.StatusCode, body)
	}
	if u = e.usage(); len(u) != 3 || !u[2].UsageKnown || u[2].Usage != (Usage{}) {
		t.Fatalf("count_tokens billed %+v", u)
	}
}

// anthropicError decodes Anthropic's error shape.
func anthropicError(t *testing.T, resp *http.Response, body []byte, status int, typ string) string {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	var e struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Type != "error" || e.Error.Type != typ || e.Error.Message == "" {
		t.Fatalf("not Anthropic's error shape (%s): %s", typ, body)
	}
	return e.Error.Message
}

func TestMessagesErrors(t *testing.T) {
	e := providerEnv(t)
	req := `{"model":"claude","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`
	resp, body := e.do("POST", "/v1/messages", "", req)
	anthropicError(t, resp, body, 401, "authentication_error")
	resp, body = e.do("POST", "/v1/messages", "", req, "X-Api-Key", "sk-unknown-0123456789abcdef")
	anthropicError(t, resp, body, 401, "authentication_error")
	resp, body = e.do("POST", "/v1/messages", keyChatOnly, req)
	anthropicError(t, resp, body, 401, "authentication_error")
	resp, body = e.do("POST", "/v1/messages", keyTeam, req)
	anthropicError(t, resp, body, 401, "authentication_error") // team may not use claude
	resp, body = e.do("POST", "/v1/messages", keyGood, `{"model":"gpt-4o","max_tokens":1,"messages":[]}`)
	anthropicError(t, resp, body, 400, "invalid_request_error") // not an Anthropic deployment
	resp, body = e.do("POST", "/v1/messages", keyGood, `{"model":`)
	anthropicError(t, resp, body, 400, "invalid_request_error")
	e.assertNoUpstream()
	// Bearer works too.
	resp, body = e.do("POST", "/v1/messages", keyGood, req)
	if resp.StatusCode != 200 {
		t.Fatalf("bearer: %d %s", resp.StatusCode, body)
	}
}

func TestAllowedRoutesOnNewRoutes(t *testing.T) {
	e := providerEnv(t)
	for _, tc := range []struct{ path, body string }{
		{"/v1/responses", `{"model":"gpt-4o","input":"x"}`},
		{"/v1/images/generations", `{"model":"dalle","prompt":"x"}`},
		{"/v1/moderations", `{"model":"gpt-4o","input":"x"}`},
		{"/v1/audio/speech", `{"model":"gpt-4o","input":"x","voice":"alloy"}`},
	} {
		resp, body := e.do("POST", tc.path, keyChatOnly, tc.body)
		envelope(t, resp, body, 401)
	}
	e.assertNoUpstream()
	resp, body := e.do("POST", "/v1/chat/completions", keyChatOnly, `{"model":"llama","messages":[]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestAzureDeployment(t *testing.T) {
	e := providerEnv(t)
	resp, body := e.do("POST", "/v1/chat/completions", keyGood, `{"model":"az","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	up := e.llm.last(t)
	if up.Path != "/openai/deployments/my-gpt4o/chat/completions" || up.RawQuery != "api-version=2024-10-21" ||
		up.Header.Get("Api-Key") != upstreamSK || up.Header.Get("Authorization") != "" {
		t.Fatalf("azure got %s?%s %v", up.Path, up.RawQuery, up.Header)
	}
	if u := e.usage(); len(u) != 1 || u[0].Usage.TotalTokens != 9 {
		t.Fatalf("usage %+v", u)
	}
	resp, body = e.do("POST", "/v1/moderations", keyGood, `{"model":"az","input":"x"}`)
	envelope(t, resp, body, 400) // Azure has no moderations deployment route
}

func TestImagesPerUnit(t *testing.T) {
	e := providerEnv(t)
	resp, body := e.do("POST", "/v1/images/generations", keyGood, `{"model":"dalle","prompt":"a cat","n":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if up := e.llm.last(t); up.Path != "/v1/images/generations" || !strings.Contains(string(up.Body), `"model":"dall-e-3"`) {
		t.Fatalf("upstream %s %s", up.Path, up.Body)
	}
	u := e.usage()
	if len(u) != 1 || !u[0].UsageKnown || u[0].UsageEstimated || u[0].Usage.Images != 2 {
		t.Fatalf("usage %+v", u)
	}
	if c, want := Cost(e.st.Deployments("dalle")[0], u[0].Usage), Cost(&state.Model{InputCost: 1}, Usage{PromptTokens: 80_000_000_000}); c != want {
		t.Fatalf("cost %d, want %d ($0.08)", c, want)
	}
}

func TestCostCacheFallsBackToInputPrice(t *testing.T) {
	d := &state.Model{InputCost: 2, OutputCost: 10}
	u := Usage{PromptTokens: 100, CacheReadTokens: 40, CacheCreationTokens: 10, CompletionTokens: 5}
	if Cost(d, u) != Cost(&state.Model{InputCost: 1}, Usage{PromptTokens: 250}) {
		t.Fatal("cached tokens without their own price cost input price")
	}
	d.CacheReadCost = 1
	if Cost(d, u) != Cost(&state.Model{InputCost: 1}, Usage{PromptTokens: 210}) {
		t.Fatal("cache read price")
	}
	if Cost(nil, u) != 0 {
		t.Fatal("nil deployment")
	}
}

func TestChatToAnthropic(t *testing.T) {
	e := providerEnv(t)
	resp, body := e.do("POST", "/v1/chat/completions", keyGood, `{"model":"claude","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"max_tokens":64}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var cc struct {
		Object  string
		Choices []struct {
			Message      struct{ Role, Content string }
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal(body, &cc); err != nil || cc.Object != "chat.completion" || cc.Choices[0].Message.Content != "Hello" ||
		cc.Choices[0].FinishReason != "stop" || cc.Usage.PromptTokens != 3100 || cc.Usage.CompletionTokens != 50 {
		t.Fatalf("translated answer %s", body)
	}
	up := e.llm.last(t)
	if up.Path != "/v1/messages" || up.Header.Get("X-Api-Key") != upstreamSK || up.Header.Get("Authorization") != "" ||
		!strings.Contains(string(up.Body), `"system":[{"type":"text","text":"be brief"}]`) || !strings.Contains(string(up.Body), `"model":"claude-sonnet-4-5"`) {
		t.Fatalf("upstream got %s %v %s", up.Path, up.Header, up.Body)
	}
	if u := e.usage(); len(u) != 1 || u[0].Usage.CacheReadTokens != 2000 || u[0].Usage.PromptTokens != 3100 {
		t.Fatalf("usage %+v", u)
	}

	resp, body = e.do("POST", "/v1/chat/completions", keyGood, `{"model":"claude","messages":[{"role":"user","content":"hi"}],"stream":true}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || !strings.HasSuffix(string(body), "data: [DONE]\n\n") ||
		!strings.Contains(string(body), `"delta":{"content":"Hello"}`) || strings.Contains(string(body), `"usage"`) || strings.Contains(string(body), "event:") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if u := e.usage(); len(u) != 2 || !u[1].Streamed || !u[1].UsageKnown || u[1].Usage.CompletionTokens != 15 || u[1].Usage.PromptTokens != 35 {
		t.Fatalf("stream usage %+v", u)
	}

	// Anthropic's errors reach an OpenAI client in the OpenAI envelope.
	e.llm.serve = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(529)
		io.WriteString(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
	}
	resp, body = e.do("POST", "/v1/chat/completions", keyGood, `{"model":"claude","messages":[{"role":"user","content":"hi"}]}`)
	if msg, typ, _ := envelope(t, resp, body, 529); msg != "Overloaded" || typ != "overloaded_error" {
		t.Fatalf("%s %s", msg, typ)
	}
}

func TestAudioPerUnit(t *testing.T) {
	e := providerEnv(t)
	var buf strings.Builder
	mw := multipart.NewWriter(&buf)
	mw.WriteField("model", "whisper")
	mw.WriteField("language", "en")
	fw, _ := mw.CreateFormFile("file", "a.mp3")
	fw.Write([]byte("\x00\x01binary-audio\r\n--not-a-boundary"))
	mw.Close()
	resp, body := e.do("POST", "/v1/audio/transcriptions", keyGood, buf.String(), "Content-Type", mw.FormDataContentType())
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	up := e.llm.last(t)
	want := strings.Replace(buf.String(), "\r\n\r\nwhisper\r\n", "\r\n\r\nwhisper-1\r\n", 1)
	if up.Path != "/v1/audio/transcriptions" || string(up.Body) != want || up.Header.Get("Content-Type") != mw.FormDataContentType() {
		t.Fatalf("upstream got %s %q", up.Path, up.Body)
	}
	u := e.usage()
	if len(u) != 1 || u[0].Usage.AudioMillis != 12_500 {
		t.Fatalf("usage %+v", u)
	}
	// 12.5 s at $0.0001/s.
	if c := Cost(e.st.Deployments("whisper")[0], u[0].Usage); c != Cost(&state.Model{InputCost: 1}, Usage{PromptTokens: 1_250_000_000}) {
		t.Fatalf("cost %d", c)
	}

	// A form without a model, and a model the key may not use, are refused.
	resp, body = e.do("POST", "/v1/audio/transcriptions", keyGood, "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc\r\n--x--\r\n", "Content-Type", "multipart/form-data; boundary=x")
	envelope(t, resp, body, 400)
	resp, body = e.do("POST", "/v1/audio/transcriptions", keyTeam, buf.String(), "Content-Type", mw.FormDataContentType())
	envelope(t, resp, body, 401)

	resp, body = e.do("POST", "/v1/audio/speech", keyGood, `{"model":"tts","input":"héllo","voice":"alloy"}`)
	if resp.StatusCode != 200 || string(body) != "ID3-fake-mp3" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if u := e.usage(); len(u) != 2 || u[1].Usage.Characters != 5 || u[1].UsageEstimated {
		t.Fatalf("speech usage %+v", u)
	}
}

// A model name served by deployments of different providers: each route
// goes to a deployment whose provider serves it; chat round-robins over
// both (one translated).
func TestMixedProviderModel(t *testing.T) {
	e := providerEnv(t)
	e.st.AddModel(&state.Model{ID: "mix-openai", ModelName: "mixed", UpstreamModel: "openai/gpt-4o", APIBase: e.up.URL + "/v1"})
	e.st.AddModel(&state.Model{ID: "mix-claude", ModelName: "mixed", UpstreamModel: "anthropic/claude-sonnet-4-5", APIBase: e.up.URL})
	for i := 0; i < 4; i++ {
		resp, body := e.do("POST", "/v1/messages", keyGood, `{"model":"mixed","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`)
		if resp.StatusCode != 200 || e.llm.last(t).Path != "/v1/messages" {
			t.Fatalf("messages %d: %d %s", i, resp.StatusCode, body)
		}
		resp, body = e.do("POST", "/v1/responses", keyGood, `{"model":"mixed","input":"hi"}`)
		if resp.StatusCode != 200 || e.llm.last(t).Path != "/v1/responses" {
			t.Fatalf("responses %d: %d %s", i, resp.StatusCode, body)
		}
	}
	paths := map[string]int{}
	for i := 0; i < 4; i++ {
		resp, body := e.do("POST", "/v1/chat/completions", keyGood, `{"model":"mixed","messages":[{"role":"user","content":"hi"}]}`)
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"chat.completion"`) {
			t.Fatalf("chat %d: %d %s", i, resp.StatusCode, body)
		}
		paths[e.llm.last(t).Path]++
	}
	if paths["/v1/messages"] != 2 || paths["/v1/chat/completions"] != 2 {
		t.Fatalf("chat spread %v", paths)
	}
	resp, body := e.do("POST", "/v1/messages", keyGood, `{"model":"gpt-4o","max_tokens":8,"messages":[]}`)
	if msg := anthropicError(t, resp, body, 400, "invalid_request_error"); !strings.Contains(msg, "does not support /messages") {
		t.Fatal(msg)
	}
}

// A follow-up Responses request stays on the deployment that holds the
// previous response; rerank reaches <api_base>/rerank.
func TestResponsesAffinityAndRerank(t *testing.T) {
	e := providerEnv(t)
	other := httptest.NewServer(e.llm)
	defer other.Close()
	e.st.AddModel(&state.Model{ID: "dep-gpt-2", ModelName: "gpt-4o", UpstreamModel: "openai/gpt-4o-2024", APIBase: other.URL + "/v1"})
	resp, body := e.do("POST", "/v1/responses", keyGood, `{"model":"gpt-4o","input":"hi"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	dep := resp.Header.Get("X-Litellm-Model-Id")
	for i := 0; i < 4; i++ {
		resp, _ := e.do("POST", "/v1/responses", keyGood, `{"model":"gpt-4o","input":"more","previous_response_id":"resp_abc123"}`)
		if got := resp.Header.Get("X-Litellm-Model-Id"); resp.StatusCode != 200 || got != dep {
			t.Fatalf("follow-up %d went to %q, want %q", i, got, dep)
		}
	}
	e.llm.serve = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"results":[{"index":0,"relevance_score":0.9}]}`)
	}
	resp, body = e.do("POST", "/v1/rerank", keyGood, `{"model":"llama","query":"q","documents":["a","b"]}`)
	if resp.StatusCode != 200 || e.llm.last(t).Path != "/v1/rerank" {
		t.Fatalf("rerank %d %s %s", resp.StatusCode, body, e.llm.last(t).Path)
	}
	if u := e.usage(); u[len(u)-1].Usage.Queries != 1 || !u[len(u)-1].UsageKnown {
		t.Fatalf("rerank usage %+v", u[len(u)-1])
	}
}

func TestMessagesEndUser(t *testing.T) {
	e := providerEnv(t)
	e.st.AddEndUser(&state.EndUser{EndUserID: "blocked-customer", MaxBudget: -1, Blocked: true})
	resp, body := e.do("POST", "/v1/messages", keyGood, `{"model":"claude","max_tokens":8,"metadata":{"user_id":"blocked-customer"},"messages":[{"role":"user","content":"hi"}]}`)
	anthropicError(t, resp, body, 403, "permission_error")
	e.assertNoUpstream()
	resp, body = e.do("POST", "/v1/messages", keyGood, `{"model":"claude","max_tokens":8,"metadata":{"user_id":"alice"},"messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if u := e.usage(); len(u) != 1 || u[0].EndUser != "alice" {
		t.Fatalf("end user %+v", u)
	}
}
