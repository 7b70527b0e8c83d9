package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider/anthropic"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
)

const benchKeys = 1_000_000

// benchState builds the state the decision benchmarks read: nKeys keys in
// team "team-a" (models: access group "gpt"), in an organization, plus a
// few models, and returns the key secrets. To benchmark another state.Reader
// (the real snapshot-backed state), replace this constructor.
var benchState = func(tb testing.TB, nKeys int) (state.Reader, func(i int) string) {
	st := enforcetest.New()
	for _, m := range []string{"gpt-4o", "gpt-4o-mini", "o3", "text-embedding-3-small"} {
		st.AddModel(&state.Model{ID: "dep-" + m, ModelName: m, UpstreamModel: "openai/" + m,
			APIBase: "http://127.0.0.1:9/v1", APIKey: "os.environ/OPENAI_API_KEY", AccessGroups: []string{"gpt"}})
	}
	// The other providers, for the per-route cases.
	st.AddModel(&state.Model{ID: "dep-claude", ModelName: "claude-sonnet", UpstreamModel: "anthropic/claude-sonnet-4-5",
		APIKey: "os.environ/ANTHROPIC_API_KEY", AccessGroups: []string{"gpt"}})
	st.AddModel(&state.Model{ID: "dep-azure", ModelName: "azure-gpt", UpstreamModel: "azure/prod-gpt4o",
		APIBase: "https://x.openai.azure.com", APIVersion: "2024-10-21", APIKey: "os.environ/AZURE_API_KEY", AccessGroups: []string{"gpt"}})
	st.AddOrg(&state.Org{OrganizationID: "org-a", Limits: enforcetest.NoLimits})
	st.AddTeam(&state.Team{TeamID: "team-a", OrganizationID: "org-a", Models: []string{"gpt"}, Limits: enforcetest.NoLimits})
	st.AddUser(&state.User{UserID: "user-a", Limits: enforcetest.NoLimits})
	limits := enforcetest.NoLimits
	limits.MaxBudget = 100_000_000
	secret := st.AddBulkKeys(nKeys, state.KeyInfo{
		UserID: "user-a", TeamID: "team-a", Limits: limits, Spend: 1_234_567,
		Policy: &state.Policy{Models: []string{"gpt-4o", "gpt-4o-mini", "claude-sonnet", "azure-gpt"}},
	})
	return st, secret
}

var (
	benchOnce   sync.Once
	benchReader state.Reader
	benchSecret func(int) string
)

func sharedBenchState(tb testing.TB) (state.Reader, func(int) string) {
	benchOnce.Do(func() { benchReader, benchSecret = benchState(tb, benchKeys) })
	return benchReader, benchSecret
}

// A typical chat request: a system and a user message, a few parameters.
const benchBody = `{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly and cite sources when you can."},{"role":"user","content":"What is the capital of France? Please also tell me something interesting about its history, in two sentences."}],"temperature":0.2,"max_tokens":256,"user":"end-user-42","metadata":{"generation_name":"faq"}}`

// BenchmarkDecision measures the whole decision from raw request bytes and
// headers to "call upstream X with body B": key extraction, SHA-256, key
// lookup, team/user/org, route, model (key ∩ team ∩ org with access groups),
// enforced params, budgets, deployment choice, credential, body plan.
func BenchmarkDecision(b *testing.B) {
	benchDecision(b, sharedBenchState)
}

var (
	realOnce   sync.Once
	realReader state.Reader
)

// BenchmarkDecisionRealState is BenchmarkDecision on the proxy's real,
// snapshot-built state (pointer-free key table) with 1M keys, the state the
// proxy serves from in production.
func BenchmarkDecisionRealState(b *testing.B) {
	benchDecision(b, func(tb testing.TB) (state.Reader, func(int) string) {
		realOnce.Do(func() {
			st := state.New()
			bld := st.NewSnapshot(1)
			if err := statetest.Snapshot(benchKeys, bld.Add); err != nil {
				tb.Fatal(err)
			}
			st.Install(bld)
			realReader = st
		})
		// Keys 6j may use gpt-4o-mini and carry no rpm/tpm limit (see
		// statetest.Key), so the gate case never refuses.
		return realReader, func(i int) string { return statetest.Secret((i % (benchKeys / 6)) * 6) }
	})
}

// NewBenchGate, when set (by the external test package, which may import
// the limits package), adds the "+gate" variants to the decision
// benchmarks: the decision followed by the rate-limit and budget gate's
// Admit and its done.
var NewBenchGate func() Gate

func benchDecision(b *testing.B, mk func(testing.TB) (state.Reader, func(int) string)) {
	type benchCase struct {
		name, body string
		gate       bool
		route      enforce.Route
	}
	cases := []benchCase{
		{"chat", benchBody, false, enforce.RouteChat},
		{"stream", strings.Replace(benchBody, `"temperature"`, `"stream":true,"temperature"`, 1), false, enforce.RouteChat},
		// The other routes and providers (BenchmarkDecision per route):
		// same work but for the provider's plan; chat->anthropic includes
		// the request translation, side by side with chat (passthrough).
		{"responses", benchResponsesBody, false, enforce.RouteResponses},
		{"messages", benchMessagesBody, false, enforce.RouteMessages},
		{"azure-chat", strings.Replace(benchBody, `"gpt-4o-mini"`, `"azure-gpt"`, 1), false, enforce.RouteChat},
		{"chat->anthropic", strings.Replace(benchBody, `"gpt-4o-mini"`, `"claude-sonnet"`, 1), false, enforce.RouteChat},
		{"chat->anthropic/stream", strings.Replace(strings.Replace(benchBody, `"gpt-4o-mini"`, `"claude-sonnet"`, 1), `"temperature"`, `"stream":true,"temperature"`, 1), false, enforce.RouteChat},
	}
	if NewBenchGate != nil {
		cases = append(cases, benchCase{"chat+gate", benchBody, true, enforce.RouteChat},
			benchCase{"messages+gate", benchMessagesBody, true, enforce.RouteMessages})
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			st, secret := mk(b)
			var gate Gate
			if bc.gate {
				gate = NewBenchGate()
			}
			h := New(Options{State: st, Getenv: func(string) string { return "sk-upstream" },
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Gate: gate}).(*handler)
			hdr := http.Header{}
			body := []byte(bc.body)
			reqs := make([]*http.Request, 1024)
			for i := range reqs {
				r := httptest.NewRequest("POST", "/v1"+bc.route.Path(), nil)
				r.Header.Set("Authorization", "Bearer "+secret((i*7919)%benchKeys))
				reqs[i] = r
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r := reqs[i&1023]
				c := newCall(bc.route, r.URL.Path, time.Time{})
				c.pl.Header = r.Header
				if rej := h.authenticate(c, presentedKey(r)); rej != nil {
					b.Fatal(rej.Message)
				}
				if rej := h.decide(c, body); rej != nil {
					if rej.Outcome == enforce.ModelForbidden || rej.Outcome == enforce.ModelUnknown {
						b.Skip("this state has no deployment for the case: " + rej.Message)
					}
					b.Fatal(rej.Message)
				}
				if h.gate != nil {
					c.adm = Admission{Route: c.route, Principal: &c.principal, Body: &c.body, Deployment: c.dep, Header: hdr}
					done, rej := h.gate.Admit(r.Context(), &c.adm)
					if rej != nil {
						b.Fatal(rej.Message)
					}
					done(Outcome{Status: 200, UsageKnown: true, Usage: Usage{PromptTokens: 40, CompletionTokens: 2, TotalTokens: 42}})
				}
				c.release()
			}
		})
	}
}

// The Responses and Messages counterparts of benchBody.
const (
	benchResponsesBody = `{"model":"gpt-4o-mini","instructions":"You are a helpful assistant. Answer briefly and cite sources when you can.","input":[{"role":"user","content":"What is the capital of France? Please also tell me something interesting about its history, in two sentences."}],"temperature":0.2,"max_output_tokens":256,"user":"end-user-42","metadata":{"generation_name":"faq"}}`
	benchMessagesBody  = `{"model":"claude-sonnet","system":"You are a helpful assistant. Answer briefly and cite sources when you can.","messages":[{"role":"user","content":"What is the capital of France? Please also tell me something interesting about its history, in two sentences."}],"temperature":0.2,"max_tokens":256,"metadata":{"user_id":"end-user-42"}}`
)

func BenchmarkParseBody(b *testing.B) {
	raw := []byte(benchBody)
	var body enforce.Body
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if rej := enforce.ParseBody(raw, &body); rej != nil {
			b.Fatal(rej.Message)
		}
	}
}

// BenchmarkServeHTTP is the whole handler in process, upstream included as
// a canned in-memory transport: what the proxy adds beyond the network.
func BenchmarkServeHTTP(b *testing.B) {
	st, secret := sharedBenchState(b)
	resp := `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."}}],"usage":{"prompt_tokens":40,"completion_tokens":2,"total_tokens":42}}`
	h := New(Options{State: st, Transport: cannedTransport(resp),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(benchBody))
		r.Header.Set("Authorization", "Bearer "+secret((i*7919)%benchKeys))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

type cannedTransport string

func (c cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	return &http.Response{
		StatusCode:    200,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(strings.NewReader(string(c))),
		ContentLength: int64(len(c)),
		Request:       r,
	}, nil
}

// benchAnthropicStream is a Messages stream of ten events (the text split
// in five deltas).
var benchAnthropicStream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n" +
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
	strings.Repeat("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Paris is the capital\"}}\n\n", 5) +
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n" +
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"

const benchStreamEvents = 10

// BenchmarkStreamEvents is the per-event cost of a streamed answer, side by
// side: passthrough (a /messages stream relayed unchanged, usage read from
// message_start and message_delta) and translate (the same stream turned
// into chat completion chunks for an OpenAI client). ns/event is the figure.
func BenchmarkStreamEvents(b *testing.B) {
	in := []byte(benchAnthropicStream)
	buf := make([]byte, 32<<10)
	run := func(b *testing.B, wrap func(io.ReadCloser, *call) io.ReadCloser) {
		b.ReportAllocs()
		c := &call{}
		c.pl.Wire = provider.WireAnthropic
		for b.Loop() {
			c.usage, c.usageKnown = Usage{}, false
			r := wrap(io.NopCloser(bytes.NewReader(in)), c)
			for {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
			r.Close()
			if !c.usageKnown || c.usage.CompletionTokens != 15 {
				b.Fatalf("usage %+v", c.usage)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchStreamEvents, "ns/event")
	}
	b.Run("passthrough", func(b *testing.B) {
		run(b, func(src io.ReadCloser, c *call) io.ReadCloser { return newSSEFilter(src, c) })
	})
	b.Run("translate", func(b *testing.B) {
		run(b, func(src io.ReadCloser, c *call) io.ReadCloser {
			return anthropic.NewStreamTranslator(src, &c.usage, &c.usageKnown, true)
		})
	})
}
