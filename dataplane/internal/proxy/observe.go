package proxy

import (
	"context"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
)

// requestID settles the request's id: the client's x-request-id when it is
// a sane token (telemetry.SaneRequestID), else a new one. It is returned in
// the response's x-request-id and set on the request, whose x-request-id is
// forwarded upstream (forwardedHeaders).
func requestID(w http.ResponseWriter, r *http.Request) string {
	v := r.Header["X-Request-Id"]
	if len(v) == 1 && telemetry.SaneRequestID(v[0]) {
		w.Header()["X-Request-Id"] = v // shared, never mutated
		return v[0]
	}
	id := telemetry.NewRequestID()
	v = []string{id}
	r.Header["X-Request-Id"] = v
	w.Header()["X-Request-Id"] = v
	return id
}

// tracerName names the proxy's spans' instrumentation scope. The tracer is
// looked up per traced request (not cached), so a provider installed later
// is always the one used.
const tracerName = "github.com/tollgate-gw/tollgate/dataplane/internal/proxy"

// tracedWriter records what a traced request's span reports. Only requests
// served while tracing is on go through it.
type tracedWriter struct {
	http.ResponseWriter
	status  int
	outcome int // -1: not decided
	model   string
}

func (t *tracedWriter) WriteHeader(code int) {
	if t.status == 0 {
		t.status = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *tracedWriter) Write(b []byte) (int, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	return t.ResponseWriter.Write(b)
}

// Flush keeps streams streaming (ReverseProxy flushes through Unwrap too).
func (t *tracedWriter) Flush() { _ = http.NewResponseController(t.ResponseWriter).Flush() }

func (t *tracedWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// noteOutcome tells a traced request's span how the request ended.
func noteOutcome(w http.ResponseWriter, outcome int, model string) {
	if t, ok := w.(*tracedWriter); ok {
		t.outcome = outcome
		if model != "" {
			t.model = strings.Clone(model)
		}
	}
}

// serveTraced serves a request inside a server span whose parent is the
// client's W3C traceparent (if any); forward injects the span's context
// into the upstream request. Attributes are the route, the model, the
// status, the outcome (the rejection reason) and the request id: never key
// material.
func (h *handler) serveTraced(w http.ResponseWriter, r *http.Request, route enforce.Route, rid string) {
	ctx := telemetry.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := telemetry.Tracer(tracerName).Start(ctx, r.Method+" "+routeLabel(route), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("http.request.method", r.Method),
			attribute.String("http.route", routeLabel(route)),
			attribute.String("tollgate.request_id", rid),
		))
	tw := &tracedWriter{ResponseWriter: w, outcome: -1}
	defer func() {
		if tw.status == 0 {
			tw.status = 499 // nothing written: the client left
		}
		span.SetAttributes(attribute.Int("http.response.status_code", tw.status))
		if tw.outcome >= 0 {
			span.SetAttributes(attribute.String("tollgate.outcome", outcomeName(tw.outcome)))
		}
		if tw.model != "" {
			span.SetAttributes(attribute.String("tollgate.model", tw.model))
		}
		if tw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(tw.status))
		}
		span.End()
	}()
	h.serveRoute(tw, r.WithContext(ctx), route, rid)
}

// injectTrace puts the request span's context into the upstream headers.
func injectTrace(ctx context.Context, hdr http.Header) {
	telemetry.Propagator.Inject(ctx, propagation.HeaderCarrier(hdr))
}
