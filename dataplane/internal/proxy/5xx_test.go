package proxy

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

func TestUpstreamDown502(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	e.st.AddModel(&state.Model{ID: "dead", ModelName: "dead", UpstreamModel: "openai/x", APIBase: dead})
	resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"dead"}`)
	msg, typ, _ := envelope(t, resp, b, 502)
	if typ != "upstream_error" || strings.Contains(msg, "127.0.0.1") {
		t.Fatalf("%s %s", typ, msg)
	}
	u := e.usage()
	if len(u) != 1 || u[0].Status != 502 || u[0].UsageKnown {
		t.Fatalf("usage %+v", u)
	}
	if !strings.Contains(metricsText(t, e), `outcome="upstream_unreachable",route="/chat/completions"} 1`) {
		t.Fatal("metric")
	}
}

func TestUpstreamTimeout504(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UpstreamTimeout = 100 * time.Millisecond })
	e.llm.serve = func(w http.ResponseWriter, r *http.Request, body []byte) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
	start := time.Now()
	resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"gpt-4o"}`)
	_, typ, _ := envelope(t, resp, b, 504)
	if typ != "timeout_error" || time.Since(start) > 3*time.Second {
		t.Fatalf("%s after %v", typ, time.Since(start))
	}
	if u := e.usage(); len(u) != 1 || u[0].Status != 504 {
		t.Fatalf("usage %+v", u)
	}
}

func TestStreamBrokenMidwayIsAborted(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.UpstreamTimeout = 200 * time.Millisecond })
	e.llm.serve = func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
	req, _ := http.NewRequest("POST", e.srv.URL+"/chat/completions", strings.NewReader(`{"model":"gpt-4o","stream":true}`))
	req.Header.Set("Authorization", "Bearer "+keyGood)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = readAll(resp)
	if err == nil {
		t.Fatal("a broken stream must not look complete")
	}
	u := e.usage()
	if len(u) != 1 || !u[0].Aborted || u[0].Status != 200 {
		t.Fatalf("usage %+v", u)
	}
	// No usage came: the outcome carries an estimate from the request and
	// the streamed bytes, marked as such, for the spend record to bill.
	chunk := int64(len("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"))
	if u[0].UsageKnown || !u[0].UsageEstimated || u[0].Usage.CompletionTokens != chunk/4 || u[0].Usage.PromptTokens < 1 {
		t.Fatalf("estimated usage %+v, want %d completion tokens from %d streamed bytes", u[0], chunk/4, chunk)
	}
	if !strings.Contains(metricsText(t, e), `outcome="upstream_timeout",route="/chat/completions"} 1`) {
		t.Fatal("metric")
	}
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var out []byte
	buf := make([]byte, 1024)
	for {
		n, err := resp.Body.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
	}
}

func TestMisconfiguredDeployment(t *testing.T) {
	e := newEnv(t)
	e.st.AddModel(&state.Model{ID: "nobase", ModelName: "nobase", UpstreamModel: "hosted_vllm/x"})
	resp, b := e.do("POST", "/chat/completions", keyGood, `{"model":"nobase"}`)
	envelope(t, resp, b, 500)
	e.assertNoUpstream()
	if !strings.Contains(metricsText(t, e), `outcome="misconfigured",route="/chat/completions"} 1`) {
		t.Fatal("metric")
	}
}
