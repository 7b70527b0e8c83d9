// Package telemetry is the observability plumbing both binaries share:
// structured logging (log/slog, text or JSON) with a request id carried in
// the context, request-id hygiene, and OpenTelemetry tracing (OTLP over
// HTTP, off unless an endpoint is configured).
//
// # Architecture
//
// Logs: NewLogger wraps a slog text or JSON handler in a handler that adds
// the context's request id (WithRequestID) and, while tracing, the trace id
// to every record logged with a context (slog.InfoContext and friends).
//
// Request ids: RequestID accepts a client's x-request-id only when it is a
// short token of safe characters and does not look like a key (sk-...);
// otherwise a fresh random id is generated. The id is echoed to the client,
// forwarded upstream and logged, so it must never be able to carry a secret.
//
// Traces: SetupTracing installs a global TracerProvider with a batching
// OTLP/HTTP exporter and the W3C trace-context propagator. Until it is
// called with an endpoint, Tracing() is false and callers skip span work
// entirely (the proxy's hot path checks one atomic bool).
//
// # Thread safety
//
// Everything here is safe for concurrent use.
//
// # Failure modes
//
// An unreachable collector never blocks requests: the batch exporter drops
// spans when its queue is full and logs export errors through otel's error
// handler (routed to slog at warn level).
package telemetry
