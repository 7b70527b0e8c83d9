package limits

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

const testKey = "sk-limits-test-key-0001"

// TestThroughProxy runs the gate in the real proxy: headers on admitted
// responses and refusals, and the parallel slot released on success,
// upstream failure and client disconnect.
func TestThroughProxy(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Request-Id") == "slow" {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
	}))
	defer up.Close()
	st := enforcetest.New()
	st.AddModel(&state.Model{ID: "d1", ModelName: "m", UpstreamModel: "openai/m", APIBase: up.URL})
	st.AddModel(&state.Model{ID: "d2", ModelName: "down", UpstreamModel: "openai/down", APIBase: "http://127.0.0.1:1"})
	lim := enforcetest.NoLimits
	lim.MaxParallelRequests, lim.RPMLimit = 1, 100
	st.AddKey(testKey, state.KeyInfo{TokenID: "tok", Limits: lim, Policy: &state.Policy{}})
	l := newLimiter()
	h := proxy.New(proxy.Options{State: st, Gate: l, Now: func() time.Time { return fixedNow },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv := httptest.NewServer(h)
	defer srv.Close()

	do := func(ctx context.Context, model, reqID string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("X-Request-Id", reqID)
		return http.DefaultClient.Do(req)
	}
	slots := func() int64 { return used(l, "key", "tok", metricPar, "") }
	waitFree := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Second); slots() != 0; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: parallel slot not released", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	resp, err := do(context.Background(), "m", "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Ratelimit-Limit-Requests") != "100" || resp.Header.Get("X-Ratelimit-Remaining-Requests") != "99" {
		t.Fatalf("admitted: %d %v", resp.StatusCode, resp.Header)
	}
	waitFree("success")

	resp, err = do(context.Background(), "down", "")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("unreachable upstream: %d", resp.StatusCode)
	}
	waitFree("upstream failure")

	// A slow request holds the slot; a second one is refused; the client
	// of the first gives up; the slot comes back.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		r, err := do(ctx, "m", "slow")
		if err == nil {
			r.Body.Close()
		}
		errc <- err
	}()
	for deadline := time.Now().Add(2 * time.Second); slots() != 1; {
		if time.Now().After(deadline) {
			t.Fatal("slow request never admitted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err = do(context.Background(), "m", "")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(string(body), `"type":"rate_limit_error"`) {
		t.Fatalf("second parallel request: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	cancel()
	<-errc
	waitFree("client disconnect")
	close(release)
	if got := used(l, "key", "tok", metricRPM, ""); got != 3 {
		t.Fatalf("rpm used %d, want 3 (the refused request consumed nothing)", got)
	}
}
