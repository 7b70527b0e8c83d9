package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

var tracing atomic.Bool

// Tracing reports whether SetupTracing installed an exporter. Hot paths
// check it before doing any span work.
func Tracing() bool { return tracing.Load() }

// Tracer returns the named tracer of the global provider.
func Tracer(name string) trace.Tracer { return otel.Tracer(name) }

// Propagator is the W3C trace-context (and baggage) propagator.
var Propagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// TracingEndpoint returns the OTLP endpoint to use: flag when set, else
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT
// ("" = tracing off).
func TracingEndpoint(flag string) string {
	if flag != "" {
		return flag
	}
	if v := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"); v != "" {
		return v
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
}

// TracesURL turns an endpoint into the OTLP/HTTP traces URL: a bare
// host:port means http://host:port, and a URL without a path gets the
// standard /v1/traces.
func TracesURL(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") {
		endpoint = "http://" + endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("--otlp-endpoint: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--otlp-endpoint: %q is not an http(s) URL or host:port", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

// SetupTracing exports spans of service to endpoint (see TracingEndpoint)
// over OTLP/HTTP (protobuf) and installs the W3C propagator. With an empty
// endpoint it does nothing and Tracing stays false. The returned shutdown
// flushes buffered spans (for at most 5 s) and turns tracing off; call it
// once, at exit.
func SetupTracing(ctx context.Context, endpoint, service, version string, log *slog.Logger) (shutdown func(), err error) {
	otel.SetTextMapPropagator(Propagator)
	if endpoint == "" {
		return func() {}, nil
	}
	u, err := TracesURL(endpoint)
	if err != nil {
		return nil, err
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u), otlptracehttp.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", service),
		attribute.String("service.version", version),
	))
	if err != nil {
		res = resource.NewSchemaless(attribute.String("service.name", service))
	}
	// The sampler comes from OTEL_TRACES_SAMPLER / _ARG when set, else
	// parent-based always-on.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("opentelemetry", "err", err)
	}))
	tracing.Store(true)
	if pu, err := url.Parse(u); err == nil {
		log.Info("tracing on", "otlp_traces_url", pu.Redacted())
	}
	return func() {
		tracing.Store(false)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx)
	}, nil
}

// UseTracerProvider installs tp globally with the W3C propagator and turns
// Tracing on (tests use it with an in-memory recorder). The returned func
// turns tracing off again.
func UseTracerProvider(tp trace.TracerProvider) (restore func()) {
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(Propagator)
	tracing.Store(true)
	return func() { tracing.Store(false) }
}
