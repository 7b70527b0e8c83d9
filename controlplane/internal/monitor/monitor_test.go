package monitor

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
)

func TestHTTPRouteTemplateRequestIDAndNoKeyInLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	lg, _ := telemetry.NewLogger(&logs, "json", "debug")
	m := New(reg, lg)
	gw := runtime.NewServeMux(runtime.WithMiddlewares(m.GatewayMiddleware()))
	var seen string
	if err := gw.HandlePath("POST", "/key/{key}/regenerate", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
		seen = telemetry.RequestIDFrom(r.Context())
		w.WriteHeader(http.StatusCreated)
	}); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.Handle("/", gw)
	h := m.HTTP(mux)

	const key = "sk-secret-0123456789abcdef"
	w := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "/key/"+key+"/regenerate?key="+key, nil)
	r.Header.Set("X-Request-Id", "rid-1")
	h.ServeHTTP(w, r)
	if w.Code != 201 || w.Header().Get("X-Request-Id") != "rid-1" || seen != "rid-1" {
		t.Fatalf("status %d, header %q, handler saw %q", w.Code, w.Header().Get("X-Request-Id"), seen)
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/health", nil))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/no/such/"+key, nil))

	want := `
# HELP tollgate_cp_http_requests_total REST requests by method, route template (or "unmatched") and status code.
# TYPE tollgate_cp_http_requests_total counter
tollgate_cp_http_requests_total{code="200",method="GET",route="GET /health"} 1
tollgate_cp_http_requests_total{code="201",method="POST",route="/key/{key=*}/regenerate"} 1
tollgate_cp_http_requests_total{code="404",method="GET",route="unmatched"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tollgate_cp_http_requests_total"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), key) || !strings.Contains(logs.String(), `"request_id":"rid-1"`) {
		t.Fatalf("log:\n%s", logs.String())
	}
}

func TestUnaryInterceptor(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	lg, _ := telemetry.NewLogger(&logs, "json", "debug")
	m := New(reg, lg)
	ic := m.UnaryInterceptor()
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-request-id", "sk-looks-like-a-key-0123"))
	var seen string
	_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/tollgate.admin.v1.KeyService/GenerateKey"}, func(ctx context.Context, req any) (any, error) {
		seen = telemetry.RequestIDFrom(ctx)
		return nil, status.Error(codes.PermissionDenied, "no")
	})
	if status.Code(err) != codes.PermissionDenied || len(seen) != 32 {
		t.Fatalf("err %v, request id %q (a key-like id must be replaced)", err, seen)
	}
	want := `
# HELP tollgate_cp_grpc_requests_total gRPC management calls by full method and status code.
# TYPE tollgate_cp_grpc_requests_total counter
tollgate_cp_grpc_requests_total{code="PermissionDenied",method="/tollgate.admin.v1.KeyService/GenerateKey"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "tollgate_cp_grpc_requests_total"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "sk-looks") {
		t.Fatal("key-like request id logged")
	}
}

func TestRedactPath(t *testing.T) {
	if got := RedactPath("/key/sk-abc/regenerate"); got != "/key/[redacted]/regenerate" {
		t.Fatal(got)
	}
}

func TestSpansForManagementCalls(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	defer telemetry.UseTracerProvider(tp)()
	m := New(prometheus.NewRegistry(), slog.New(slog.DiscardHandler))

	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", parent))
	m.UnaryInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/tollgate.admin.v1.KeyService/GetKeyInfo"},
		func(ctx context.Context, req any) (any, error) { return nil, nil })

	gw := runtime.NewServeMux(runtime.WithMiddlewares(m.GatewayMiddleware()))
	gw.HandlePath("POST", "/key/generate", func(w http.ResponseWriter, r *http.Request, _ map[string]string) {})
	r := httptest.NewRequest("POST", "/key/generate", nil)
	r.Header.Set("Traceparent", parent)
	m.HTTP(gw).ServeHTTP(httptest.NewRecorder(), r)

	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	if spans[0].Name() != "/tollgate.admin.v1.KeyService/GetKeyInfo" || spans[1].Name() != "POST /key/generate" {
		t.Fatalf("span names %q, %q", spans[0].Name(), spans[1].Name())
	}
	for _, s := range spans {
		if s.Parent().TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
			t.Fatalf("%s: not a child of the caller's traceparent", s.Name())
		}
	}
}
