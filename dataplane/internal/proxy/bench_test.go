package proxy

import (
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
	st.AddOrg(&state.Org{OrganizationID: "org-a", Limits: enforcetest.NoLimits})
	st.AddTeam(&state.Team{TeamID: "team-a", OrganizationID: "org-a", Models: []string{"gpt"}, Limits: enforcetest.NoLimits})
	st.AddUser(&state.User{UserID: "user-a", Limits: enforcetest.NoLimits})
	limits := enforcetest.NoLimits
	limits.MaxBudget = 100_000_000
	secret := st.AddBulkKeys(nKeys, state.KeyInfo{
		UserID: "user-a", TeamID: "team-a", Limits: limits, Spend: 1_234_567,
		Policy: &state.Policy{Models: []string{"gpt-4o", "gpt-4o-mini"}},
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
	}
	cases := []benchCase{
		{"chat", benchBody, false},
		{"stream", strings.Replace(benchBody, `"temperature"`, `"stream":true,"temperature"`, 1), false},
	}
	if NewBenchGate != nil {
		cases = append(cases, benchCase{"chat+gate", benchBody, true})
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
				r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
				r.Header.Set("Authorization", "Bearer "+secret((i*7919)%benchKeys))
				reqs[i] = r
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r := reqs[i&1023]
				c := newCall(enforce.RouteChat, r.URL.Path, time.Time{})
				if rej := h.authenticate(c, presentedKey(r)); rej != nil {
					b.Fatal(rej.Message)
				}
				if rej := h.decide(c, body); rej != nil {
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
