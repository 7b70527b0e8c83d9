package proxy

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
)

func TestRequestIDEchoedForwardedAndGenerated(t *testing.T) {
	e := newEnv(t)
	body := `{"model":"gpt-4o","messages":[]}`
	resp, b := e.do("POST", "/v1/chat/completions", keyGood, body, "X-Request-Id", "client-id-1")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "client-id-1" {
		t.Fatalf("response x-request-id %q", got)
	}
	if got := e.llm.last(t).Header.Get("X-Request-Id"); got != "client-id-1" {
		t.Fatalf("upstream x-request-id %q", got)
	}
	// Not a sane token (a key, spaces, too long): replaced by a fresh id.
	for _, bad := range []string{keyGood, "a b", strings.Repeat("x", 200)} {
		resp, _ = e.do("POST", "/v1/chat/completions", keyGood, body, "X-Request-Id", bad)
		got := resp.Header.Get("X-Request-Id")
		if got == bad || len(got) != 32 {
			t.Fatalf("x-request-id %q kept or not generated: %q", bad, got)
		}
		if up := e.llm.last(t).Header.Get("X-Request-Id"); up != got {
			t.Fatalf("upstream got %q, client %q", up, got)
		}
	}
	// Rejections carry one too.
	resp, _ = e.do("POST", "/v1/chat/completions", "sk-unknown-0123456789abcdef", body)
	if resp.StatusCode != 401 || len(resp.Header.Get("X-Request-Id")) != 32 {
		t.Fatalf("rejection: %d %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
}

func TestDebugLogHasRequestIDAndDisplayKeyOnly(t *testing.T) {
	var buf lockedBuffer
	lg, err := telemetry.NewLogger(&buf, "json", "debug")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *Options) { o.Logger = lg })
	resp, b := e.do("POST", "/v1/chat/completions", keyGood, `{"model":"gpt-4o","messages":[]}`, "X-Request-Id", "rid-log-1")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	// The line is written after the response (the handler's deferred
	// bookkeeping): wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), `"msg":"proxy request"`) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	out := buf.String()
	if !strings.Contains(out, `"request_id":"rid-log-1"`) || !strings.Contains(out, `"key":"sk-...ghij"`) {
		t.Fatalf("log line lacks request id or display key:\n%s", out)
	}
	assertNoKeyMaterial(t, "log", []byte(out), keyGood)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTracingSpanPerRequestAndTraceparentUpstream(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	defer telemetry.UseTracerProvider(tp)()

	e := newEnv(t)
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	resp, b := e.do("POST", "/v1/chat/completions", keyGood, `{"model":"gpt-4o","messages":[]}`, "Traceparent", parent)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	e.do("POST", "/v1/chat/completions", "sk-unknown-0123456789abcdef", `{"model":"gpt-4o"}`)

	// Spans end after the response is written: wait for both.
	var spans []sdktrace.ReadOnlySpan
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if spans = rec.Ended(); len(spans) >= 2 {
			break
		}
	}
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	ok, rej := spans[0], spans[1]
	if ok.Parent().TraceID() != [16]byte{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c} {
		ok, rej = rej, ok
	}
	if ok.Parent().TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("span not a child of the client's traceparent: %v", ok.Parent())
	}
	attrs := map[attribute.Key]string{}
	for _, a := range ok.Attributes() {
		attrs[a.Key] = a.Value.Emit()
	}
	if attrs["http.route"] != "/chat/completions" || attrs["tollgate.model"] != "gpt-4o" ||
		attrs["http.response.status_code"] != "200" || attrs["tollgate.outcome"] != "ok" {
		t.Fatalf("attributes %v", attrs)
	}
	up := e.llm.last(t).Header.Get("Traceparent")
	want := "00-0af7651916cd43dd8448eb211c80319c-" + ok.SpanContext().SpanID().String() + "-01"
	if up != want {
		t.Fatalf("upstream traceparent %q, want %q", up, want)
	}
	rattrs := map[attribute.Key]string{}
	for _, a := range rej.Attributes() {
		rattrs[a.Key] = a.Value.Emit()
	}
	if rattrs["http.response.status_code"] != "401" || rattrs["tollgate.outcome"] == "" {
		t.Fatalf("rejection attributes %v", rattrs)
	}
	for _, s := range spans {
		for _, a := range s.Attributes() {
			assertNoKeyMaterial(t, "span attribute", []byte(a.Value.Emit()), keyGood, "sk-unknown-0123456789abcdef")
		}
	}
}

// BenchmarkServeHTTPTraced is BenchmarkServeHTTP with tracing on (spans
// recorded by a sampler-on provider whose processor drops them): the cost of
// a span per request, its attributes and the traceparent injection.
func BenchmarkServeHTTPTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(tracetest.NewNoopExporter())))
	defer tp.Shutdown(context.Background())
	defer telemetry.UseTracerProvider(tp)()
	BenchmarkServeHTTP(b)
}
