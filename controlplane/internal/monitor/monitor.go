// Package monitor instruments the control plane's management calls: every
// REST request and gRPC management call gets a request id (the caller's
// x-request-id when it is a sane token, else a new one; returned in the
// x-request-id response header or metadata and carried in the context, so
// every log line about the call names it), a span when tracing is on (the
// caller's W3C traceparent is its parent), Prometheus counts and latencies
// by bounded labels (HTTP route template or gRPC method, status), and a
// debug access log line without query strings or key-like path segments.
//
// # Architecture
//
// HTTP is one middleware around the whole mux (Monitor.HTTP). Which REST
// route served the request is only known inside grpc-gateway's mux, so
// Monitor.GatewayMiddleware (installed with runtime.WithMiddlewares) writes
// the route template into a holder the outer middleware put in the
// context. gRPC is a unary interceptor; the sync stream is observed by
// package syncserver's own metrics, not here.
//
// # Thread safety
//
// A Monitor is safe for concurrent use.
package monitor

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
)

const tracerName = "github.com/tollgate-gw/tollgate/controlplane/internal/monitor"

// Monitor holds the management-call metrics.
type Monitor struct {
	log      *slog.Logger
	httpReqs *prometheus.CounterVec
	httpDur  *prometheus.HistogramVec
	grpcReqs *prometheus.CounterVec
	grpcDur  *prometheus.HistogramVec
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// New registers the metrics on reg.
func New(reg prometheus.Registerer, log *slog.Logger) *Monitor {
	m := &Monitor{
		log: log,
		httpReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cp_http_requests_total",
			Help: "REST requests by method, route template (or \"unmatched\") and status code.",
		}, []string{"method", "route", "code"}),
		httpDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_cp_http_request_seconds",
			Help:    "REST request latency by route template.",
			Buckets: latencyBuckets,
		}, []string{"route"}),
		grpcReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cp_grpc_requests_total",
			Help: "gRPC management calls by full method and status code.",
		}, []string{"method", "code"}),
		grpcDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_cp_grpc_request_seconds",
			Help:    "gRPC management call latency by full method.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
	}
	reg.MustRegister(m.httpReqs, m.httpDur, m.grpcReqs, m.grpcDur)
	return m
}

type routeKey struct{}

// routeHolder is filled by the gateway middleware.
type routeHolder struct{ route string }

// GatewayMiddleware records the matched REST route template.
func (m *Monitor) GatewayMiddleware() runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if h, ok := r.Context().Value(routeKey{}).(*routeHolder); ok {
				if p, ok := runtime.HTTPPattern(r.Context()); ok {
					h.route = p.String()
				}
			}
			next(w, r, params)
		}
	}
}

var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// HTTP wraps the control plane's HTTP handler.
func (m *Monitor) HTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := telemetry.RequestID(r.Header.Get("X-Request-Id"))
		w.Header().Set("X-Request-Id", rid)
		ctx := telemetry.WithRequestID(r.Context(), rid)
		holder := &routeHolder{}
		ctx = context.WithValue(ctx, routeKey{}, holder)
		var span trace.Span
		if telemetry.Tracing() {
			ctx = telemetry.Propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
			ctx, span = telemetry.Tracer(tracerName).Start(ctx, "HTTP "+r.Method, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("tollgate.request_id", rid)))
		}
		rw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		r = r.WithContext(ctx)
		next.ServeHTTP(rw, r)

		route := holder.route
		if route == "" {
			route = r.Pattern // set by http.ServeMux on this request
			if route == "/" || route == "" {
				route = "unmatched"
			}
		}
		method := r.Method
		if !knownMethods[method] {
			method = "other"
		}
		d := time.Since(start)
		m.httpReqs.WithLabelValues(method, route, strconv.Itoa(rw.status)).Inc()
		m.httpDur.WithLabelValues(route).Observe(d.Seconds())
		if span != nil {
			span.SetName(method + " " + route)
			span.SetAttributes(attribute.String("http.route", route), attribute.Int("http.response.status_code", rw.status))
			if rw.status >= 500 {
				span.SetStatus(otelcodes.Error, http.StatusText(rw.status))
			}
			span.End()
		}
		m.log.DebugContext(ctx, "http", "method", r.Method, "path", RedactPath(r.URL.Path), "route", route, "status", rw.status, "dur", d)
	})
}

// UnaryInterceptor observes gRPC management calls.
func (m *Monitor) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		md, _ := metadata.FromIncomingContext(ctx)
		var client string
		if v := md.Get("x-request-id"); len(v) > 0 {
			client = v[0]
		}
		rid := telemetry.RequestID(client)
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-request-id", rid))
		ctx = telemetry.WithRequestID(ctx, rid)
		var span trace.Span
		if telemetry.Tracing() {
			ctx = telemetry.Propagator.Extract(ctx, metadataCarrier(md))
			ctx, span = telemetry.Tracer(tracerName).Start(ctx, info.FullMethod, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attribute.String("rpc.system", "grpc"), attribute.String("rpc.method", info.FullMethod),
					attribute.String("tollgate.request_id", rid)))
		}
		resp, err := handler(ctx, req)
		code := status.Code(err)
		d := time.Since(start)
		m.grpcReqs.WithLabelValues(info.FullMethod, code.String()).Inc()
		m.grpcDur.WithLabelValues(info.FullMethod).Observe(d.Seconds())
		if span != nil {
			span.SetAttributes(attribute.String("rpc.grpc.status_code", code.String()))
			if err != nil {
				span.SetStatus(otelcodes.Error, code.String())
			}
			span.End()
		}
		m.log.DebugContext(ctx, "grpc", "method", info.FullMethod, "code", code.String(), "dur", d)
		return resp, err
	}
}

// metadataCarrier reads W3C headers from incoming gRPC metadata.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(k string) string {
	if v := metadata.MD(c).Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (c metadataCarrier) Set(k, v string) { metadata.MD(c).Set(k, v) }
func (c metadataCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// RedactPath replaces every path segment that could be a key.
func RedactPath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if strings.HasPrefix(s, "sk-") || len(s) > 40 {
			parts[i] = "[redacted]"
		}
	}
	return strings.Join(parts, "/")
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
