package telemetry

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// NewLogger returns a logger writing format ("text" or "json") at level
// ("debug", "info", "warn", "error") to w. Records logged with a context
// carry its request id and, while tracing, its trace id.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch strings.ToLower(format) {
	case "", "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format: %q is not text or json", format)
	}
	return slog.New(ContextHandler{h}), nil
}

// ContextHandler adds the context's request id and trace id to each record.
type ContextHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h ContextHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx != nil {
		if id := RequestIDFrom(ctx); id != "" {
			r.AddAttrs(slog.String("request_id", id))
		}
		if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
			r.AddAttrs(slog.String("trace_id", sc.TraceID().String()))
		}
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h ContextHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return ContextHandler{h.Handler.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (h ContextHandler) WithGroup(name string) slog.Handler {
	return ContextHandler{h.Handler.WithGroup(name)}
}

type requestIDKey struct{}

// WithRequestID returns ctx carrying the request id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestIDFrom returns the context's request id ("" when none).
func RequestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// MaxRequestIDLen bounds an accepted client request id.
const MaxRequestIDLen = 128

// RequestID returns the client's request id when it is sane, else a new
// one. Sane: 1 to 128 characters of [A-Za-z0-9._:@/+=-], not starting with
// "sk-" (a confused client must not get a key into logs and upstream
// headers through it).
func RequestID(client string) string {
	if SaneRequestID(client) {
		return client
	}
	return NewRequestID()
}

// SaneRequestID reports whether a client-supplied id may be used as is.
func SaneRequestID(s string) bool {
	if len(s) == 0 || len(s) > MaxRequestIDLen || strings.HasPrefix(s, "sk-") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '_' || c == '.' || c == ':' || c == '@' || c == '/' || c == '+' || c == '=':
		default:
			return false
		}
	}
	return true
}

// NewRequestID returns 128 random bits as 32 hex characters. (math/rand/v2's
// per-thread generator: unique enough for correlation, and cheap on the
// proxy's request path; request ids are not secrets.)
func NewRequestID() string {
	var b [16]byte
	a, c := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i] = byte(a >> (8 * i))
		b[8+i] = byte(c >> (8 * i))
	}
	var out [32]byte
	hex.Encode(out[:], b[:])
	return string(out[:])
}
