package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// DataPlane is a running dataplane process.
type DataPlane struct {
	*Process
	Addr, Cache, ID string
	ControlPlane    string
	SyncToken       string
	Env             []string
}

// DPOptions configure StartDataPlane.
type DPOptions struct {
	ControlPlane string // gRPC address
	SyncToken    string
	Cache        string // empty: a new file in a temp dir
	ID           string
	Addr         string
	Env          []string
	// NoWaitReady returns once /health/liveliness answers, without waiting
	// for /health/readiness.
	NoWaitReady bool
}

// StartDataPlane starts a proxy and waits until it is ready (holds a snapshot).
func StartDataPlane(t testing.TB, o DPOptions) *DataPlane {
	t.Helper()
	bin := Binary(t, "dataplane")
	if o.Cache == "" {
		o.Cache = filepath.Join(t.TempDir(), "tollgate-proxy.db")
	}
	if o.ID == "" {
		o.ID = "proxy-" + RandomKey()[3:9]
	}
	fixed := o.Addr
	var dp *DataPlane
	startRetrying(t, fixed == "", func() (*Process, []string) {
		o.Addr = fixed
		if o.Addr == "" {
			o.Addr = FreeAddr(t)
		}
		args := []string{"--listen", o.Addr, "--control-plane", o.ControlPlane, "--sync-token", o.SyncToken, "--cache", o.Cache, "--id", o.ID}
		p := Start(t, "dataplane "+o.ID, bin, args, o.Env)
		dp = &DataPlane{Process: p, Addr: o.Addr, Cache: o.Cache, ID: o.ID, ControlPlane: o.ControlPlane, SyncToken: o.SyncToken, Env: o.Env}
		waits := []string{dp.URL() + "/health/liveliness"}
		if !o.NoWaitReady {
			waits = append(waits, dp.URL()+"/health/readiness")
		}
		return p, waits
	})
	return dp
}

// Options returns options that restart the same proxy (same cache and address).
func (dp *DataPlane) Options() DPOptions {
	return DPOptions{ControlPlane: dp.ControlPlane, SyncToken: dp.SyncToken, Cache: dp.Cache, ID: dp.ID, Addr: dp.Addr, Env: dp.Env}
}

// URL is the proxy's base URL.
func (dp *DataPlane) URL() string { return "http://" + dp.Addr }

// ProxyFor starts a proxy attached to cp.
func ProxyFor(t testing.TB, cp *ControlPlane, env ...string) *DataPlane {
	t.Helper()
	return StartDataPlane(t, DPOptions{ControlPlane: cp.GRPCAddr, SyncToken: cp.SyncToken, Env: env})
}

// Upstream is a fake OpenAI-compatible LLM server that records what it got.
type Upstream struct {
	*httptest.Server
	mu       sync.Mutex
	requests []UpstreamRequest
}

// UpstreamRequest is one request the fake upstream received.
type UpstreamRequest struct {
	Path   string
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

// NewUpstream starts a fake upstream. Chat completions answer with usage
// {prompt_tokens: 10, completion_tokens: 5}, or metadata.upstream_usage
// [prompt, completion] when the body sets it (non-streamed calls), after
// metadata.upstream_delay_ms when the body sets it; with "stream": true they send
// three content chunks, then a usage chunk when stream_options.include_usage
// is set, then [DONE].
func NewUpstream(t testing.TB) *Upstream {
	u := &Upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

// Requests returns what the upstream received so far.
func (u *Upstream) Requests() []UpstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]UpstreamRequest(nil), u.requests...)
}

// Last returns the last request (fails if none).
func (u *Upstream) Last(t testing.TB) UpstreamRequest {
	t.Helper()
	r := u.Requests()
	if len(r) == 0 {
		t.Fatal("upstream received nothing")
	}
	return r[len(r)-1]
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	u.mu.Lock()
	u.requests = append(u.requests, UpstreamRequest{Path: r.URL.Path, Header: r.Header.Clone(), Body: body, Raw: raw})
	u.mu.Unlock()
	model, _ := body["model"].(string)
	// A slow upstream on demand: "metadata": {"upstream_delay_ms": N} (the
	// body reaches the upstream as the client sent it).
	if md, ok := body["metadata"].(map[string]any); ok {
		if ms, ok := md["upstream_delay_ms"].(float64); ok && ms > 0 {
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	}
	prompt, completion := 10, 5
	if md, ok := body["metadata"].(map[string]any); ok {
		if u, ok := md["upstream_usage"].([]any); ok && len(u) == 2 {
			p, _ := u[0].(float64)
			c, _ := u[1].(float64)
			prompt, completion = int(p), int(c)
		}
	}
	switch {
	case strings.HasSuffix(r.URL.Path, "/embeddings"):
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":%q,"usage":{"prompt_tokens":3,"total_tokens":3}}`, model)
	case body["stream"] == true:
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i, word := range []string{"Hello", " from", " upstream"} {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":null}]}\n\n", model, word)
			_ = i
			fl.Flush()
			time.Sleep(5 * time.Millisecond)
		}
		if so, ok := body["stream_options"].(map[string]any); ok && so["include_usage"] == true {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\n", model)
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
		fl.Flush()
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from upstream"},"finish_reason":"stop"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, model, prompt, completion, prompt+completion)
	}
}

// SSEData returns the data: payloads of an SSE body in order.
func SSEData(body []byte) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, s)
		}
	}
	return out
}
