package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-gw/tollgate/deploy/observability"
)

// scrape GETs url and parses it with the Prometheus text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	r := Do(t, "GET", url, "", nil)
	if r.Status != 200 {
		t.Fatalf("GET %s: %d", url, r.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("%s does not parse: %v", url, err)
	}
	return fams
}

func counterValue(fams map[string]*dto.MetricFamily, name string) float64 {
	var v float64
	if f := fams[name]; f != nil {
		for _, m := range f.Metric {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

// TestMetricsScrapedAndParsed drives traffic through a proxy and the
// control plane, scrapes both /metrics, parses them with the Prometheus text
// parser and requires every documented (non-sparse) series of each plane
// with its documented type and labels, and no key material in any label.
func TestMetricsScrapedAndParsed(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{})
	dp := d.proxy(t)
	mk := d.cp.MasterKey
	gen := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", mk, `{"rpm_limit":1000}`))
	key := gen["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	waitStatus(t, dp, key, chat("gpt-4o-mini", `,"stream":true`), 200)
	Do(t, "POST", dp.URL()+"/v1/chat/completions", RandomKey(), chat("gpt-4o-mini", ""))
	Do(t, "GET", d.cp.URL()+"/key/info?key="+key, mk, nil)
	Do(t, "GET", d.cp.URL()+"/nothing/here", mk, nil)
	// A gRPC management call (the health service goes through the same
	// interceptor chain).
	conn, err := grpc.NewClient(d.cp.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var hdr metadata.MD
	if _, err := healthpb.NewHealthClient(conn).Check(metadata.AppendToOutgoingContext(ctx, "x-request-id", "grpc-rid-1"), &healthpb.HealthCheckRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-request-id"); len(got) != 1 || got[0] != "grpc-rid-1" {
		t.Fatalf("gRPC x-request-id header %v", got)
	}

	// Spend reaches the control plane within ~100 ms (the shipper's linger).
	var cp map[string]*dto.MetricFamily
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		cp = scrape(t, d.cp.URL()+"/metrics")
		if counterValue(cp, "tollgate_cp_spend_batches_applied_total") > 0 || time.Now().After(deadline) {
			break
		}
	}
	px := scrape(t, dp.URL()+"/metrics")

	sum := sha256.Sum256([]byte(key))
	secrets := []string{key, key[3:], hex.EncodeToString(sum[:]), gen["token_id"].(string)}
	for plane, fams := range map[string]map[string]*dto.MetricFamily{"proxy": px, "controlplane": cp} {
		for _, s := range observability.Documented {
			if s.Plane != plane {
				continue
			}
			f := fams[s.Name]
			if f == nil {
				if !s.Sparse {
					t.Errorf("%s /metrics lacks %s", plane, s.Name)
				}
				continue
			}
			if got := strings.ToLower(f.GetType().String()); got != s.Type {
				t.Errorf("%s is a %s, documented as a %s", s.Name, got, s.Type)
			}
			for _, m := range f.Metric {
				var names []string
				for _, lp := range m.Label {
					names = append(names, lp.GetName())
				}
				if strings.Join(names, ",") != strings.Join(sortedCopy(s.Labels), ",") {
					t.Errorf("%s labels %v, documented %v", s.Name, names, s.Labels)
					break
				}
			}
		}
		for name, f := range fams {
			if strings.HasPrefix(name, "tollgate_") {
				if _, ok := observability.Lookup(name); !ok {
					t.Errorf("%s /metrics exposes undocumented %s", plane, name)
				}
			}
			for _, m := range f.Metric {
				for _, lp := range m.Label {
					for _, sec := range secrets {
						if strings.Contains(lp.GetValue(), sec) {
							t.Fatalf("%s label %s holds key material", name, lp.GetName())
						}
					}
				}
			}
		}
	}
	if v := counterValue(px, "tollgate_proxy_model_requests_total"); v < 2 {
		t.Errorf("per-model requests %v, want ≥ 2", v)
	}
	if v := counterValue(px, "tollgate_sync_connected"); v != 1 {
		t.Errorf("tollgate_sync_connected %v", v)
	}
	if v := counterValue(cp, "tollgate_cp_sync_streams"); v != 1 {
		t.Errorf("tollgate_cp_sync_streams %v", v)
	}
	if v := counterValue(cp, "tollgate_cp_spend_batches_applied_total"); v < 1 {
		t.Errorf("no spend batch applied")
	}
	routes := map[string]bool{}
	for _, m := range cp["tollgate_cp_http_requests_total"].GetMetric() {
		for _, lp := range m.Label {
			if lp.GetName() == "route" {
				routes[lp.GetValue()] = true
			}
		}
	}
	for _, want := range []string{"/key/generate", "/key/info", "unmatched"} {
		if !routes[want] {
			t.Errorf("REST route %q not counted (have %v)", want, routes)
		}
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// otlpReceiver is an in-process OTLP/HTTP trace receiver.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	svc   map[string]string // span id (hex) -> service.name
}

func newOTLPReceiver(t *testing.T) (*otlpReceiver, string) {
	rc := &otlpReceiver{svc: map[string]string{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &req); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.ResourceSpans {
			svc := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					rc.spans = append(rc.spans, s)
					rc.svc[hex.EncodeToString(s.SpanId)] = svc
				}
			}
		}
		rc.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Write(out)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return rc, "http://" + ln.Addr().String()
}

func (rc *otlpReceiver) find(pred func(svc string, s *tracepb.Span) bool) *tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, s := range rc.spans {
		if pred(rc.svc[hex.EncodeToString(s.SpanId)], s) {
			return s
		}
	}
	return nil
}

func (rc *otlpReceiver) all() []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]*tracepb.Span(nil), rc.spans...)
}

func spanAttr(s *tracepb.Span, key string) string {
	for _, a := range s.Attributes {
		if a.Key == key {
			v := a.GetValue()
			if v.GetStringValue() != "" {
				return v.GetStringValue()
			}
			return fmt.Sprint(v.GetIntValue())
		}
	}
	return ""
}

// TestTracingExportsSpansAndForwardsTraceparent runs both planes with an
// OTLP endpoint pointing at an in-process receiver: a proxied request and a
// management call each export a span, the proxy's span is the child of the
// client's traceparent, and the upstream receives a traceparent naming the
// proxy's span. No span attribute holds key material.
func TestTracingExportsSpansAndForwardsTraceparent(t *testing.T) {
	t.Parallel()
	rc, endpoint := newOTLPReceiver(t)
	env := []string{"TOLLGATE_OTLP_ENDPOINT=" + endpoint, "OTEL_BSP_SCHEDULE_DELAY=100"}
	d := newDeployment(t, CPOptions{Env: env})
	d.env = append(d.env, env...)
	dp := d.proxy(t)
	gen := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{}`, "X-Request-Id", "mgmt-rid-1"))
	key := gen["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)

	const clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""),
		"Traceparent", "00-"+clientTrace+"-00f067aa0ba902b7-01", "X-Request-Id", "traced-rid-1")
	if r.Status != 200 {
		t.Fatalf("chat: %d %s", r.Status, r.Body)
	}
	up := d.up.Last(t)
	tp := up.Header.Get("Traceparent")
	if !strings.HasPrefix(tp, "00-"+clientTrace+"-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Fatalf("upstream traceparent %q: want the client's trace with the proxy's span as parent", tp)
	}
	if up.Header.Get("X-Request-Id") != "traced-rid-1" {
		t.Fatalf("upstream x-request-id %q", up.Header.Get("X-Request-Id"))
	}
	proxySpanID := strings.Split(tp, "-")[2]

	var proxySpan, mgmtSpan *tracepb.Span
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		proxySpan = rc.find(func(svc string, s *tracepb.Span) bool {
			return svc == "tollgate-dataplane" && hex.EncodeToString(s.SpanId) == proxySpanID
		})
		mgmtSpan = rc.find(func(svc string, s *tracepb.Span) bool {
			return svc == "tollgate-controlplane" && spanAttr(s, "tollgate.request_id") == "mgmt-rid-1"
		})
		if proxySpan != nil && mgmtSpan != nil {
			break
		}
	}
	if proxySpan == nil {
		t.Fatalf("no proxy span %s exported (got %d spans)", proxySpanID, len(rc.all()))
	}
	if hex.EncodeToString(proxySpan.TraceId) != clientTrace || hex.EncodeToString(proxySpan.ParentSpanId) != "00f067aa0ba902b7" {
		t.Fatalf("proxy span not a child of the client's span")
	}
	for k, want := range map[string]string{"http.route": "/chat/completions", "tollgate.model": "gpt-4o-mini",
		"http.response.status_code": "200", "tollgate.outcome": "ok", "tollgate.request_id": "traced-rid-1"} {
		if got := spanAttr(proxySpan, k); got != want {
			t.Errorf("proxy span %s = %q, want %q", k, got, want)
		}
	}
	if mgmtSpan == nil {
		t.Fatal("no control-plane span for POST /key/generate")
	}
	if got := spanAttr(mgmtSpan, "http.route"); got != "/key/generate" {
		t.Errorf("management span route %q", got)
	}
	for _, s := range rc.all() {
		for _, a := range s.Attributes {
			v := a.GetValue().GetStringValue()
			if strings.Contains(v, key) || strings.Contains(v, d.cp.MasterKey) || strings.Contains(s.Name, "sk-") {
				t.Fatalf("span %s attribute %s holds key material", s.Name, a.Key)
			}
		}
	}
}

// TestSecretsAbsentFromJSONLogsWithRequestIDs runs both planes with
// --log-format json at debug level: every line they print is one JSON
// object, the lines about a management call and a proxied request carry
// their request ids, keys appear only in display form, and no secret is
// printed.
func TestSecretsAbsentFromJSONLogsWithRequestIDs(t *testing.T) {
	t.Parallel()
	env := []string{"TOLLGATE_LOG_FORMAT=json", "TOLLGATE_LOG_LEVEL=debug"}
	d := newDeployment(t, CPOptions{Env: env})
	d.env = append(d.env, env...)
	dp := d.proxy(t)
	mk := d.cp.MasterKey
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", mk, `{}`, "X-Request-Id", "cp-rid-42"))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""), "X-Request-Id", "dp-rid-42")
	if r.Status != 200 || r.Header.Get("X-Request-Id") != "dp-rid-42" {
		t.Fatalf("chat: %d, x-request-id %q", r.Status, r.Header.Get("X-Request-Id"))
	}
	// A key sent as a request id is not echoed, logged or forwarded.
	r = Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""), "X-Request-Id", key)
	if got := r.Header.Get("X-Request-Id"); got == key || got == "" {
		t.Fatalf("x-request-id %q", got)
	}
	Do(t, "GET", d.cp.URL()+"/key/info?key="+key, mk, nil, "X-Request-Id", mk)
	time.Sleep(300 * time.Millisecond) // the proxy logs after answering
	dp.Stop()
	d.cp.Stop()
	display := "sk-..." + key[len(key)-4:]
	for _, c := range []struct {
		p      *Process
		rid    string
		needle string
	}{{d.cp.Process, "cp-rid-42", `"route":"/key/generate"`}, {dp.Process, "dp-rid-42", `"key":"` + display + `"`}} {
		found := false
		for _, line := range strings.Split(strings.TrimSpace(c.p.Output()), "\n") {
			if !strings.HasPrefix(line, "{") || !strings.HasSuffix(line, "}") {
				t.Fatalf("%s: not a JSON line: %s", c.p.Name, line)
			}
			if strings.Contains(line, `"request_id":"`+c.rid+`"`) && strings.Contains(line, c.needle) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no line with request id %s and %s", c.p.Name, c.rid, c.needle)
		}
		for _, s := range []string{mk, d.cp.SyncToken, upstreamSecret, key} {
			if strings.Contains(c.p.Output(), s) {
				t.Errorf("%s log contains a secret (%s...)", c.p.Name, s[:6])
			}
		}
	}
}
