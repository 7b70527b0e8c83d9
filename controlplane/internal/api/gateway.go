package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// MaxBodyBytes bounds every management request body.
const MaxBodyBytes = 1 << 20

// forwardedHeaders reach the services as gRPC metadata under their own names.
var forwardedHeaders = map[string]bool{
	"Authorization":      true,
	"X-Admin-Key":        true,
	"Litellm-Changed-By": true,
}

func headerMatcher(h string) (string, bool) {
	if forwardedHeaders[textproto.CanonicalMIMEHeaderKey(h)] {
		return strings.ToLower(h), true
	}
	return "", false
}

// Gateway returns the REST handler serving every management service
// in-process (no network hop) at LiteLLM's paths. opts are applied after
// the defaults (run.go adds the monitor's route middleware).
func (s *Server) Gateway(ctx context.Context, opts ...runtime.ServeMuxOption) (http.Handler, error) {
	mux := runtime.NewServeMux(append([]runtime.ServeMuxOption{
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &gatewayJSON{JSONPb: &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}}),
		runtime.WithIncomingHeaderMatcher(headerMatcher),
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithErrorHandler(gatewayError),
		runtime.WithRoutingErrorHandler(routingError),
		runtime.WithDisablePathLengthFallback(),
	}, opts...)...)
	for _, reg := range []func() error{
		func() error { return adminv1.RegisterKeyServiceHandlerServer(ctx, mux, &keyService{s: s}) },
		func() error { return adminv1.RegisterTeamServiceHandlerServer(ctx, mux, &teamService{s: s}) },
		func() error { return adminv1.RegisterUserServiceHandlerServer(ctx, mux, &userService{s: s}) },
		func() error { return adminv1.RegisterOrganizationServiceHandlerServer(ctx, mux, &orgService{s: s}) },
		func() error { return adminv1.RegisterModelServiceHandlerServer(ctx, mux, &modelService{s: s}) },
		func() error { return adminv1.RegisterSettingsServiceHandlerServer(ctx, mux, &settingsService{s: s}) },
		func() error { return adminv1.RegisterAuditServiceHandlerServer(ctx, mux, &auditService{s: s}) },
		func() error { return adminv1.RegisterSpendServiceHandlerServer(ctx, mux, &spendService{s: s}) },
		func() error { return adminv1.RegisterProxyServiceHandlerServer(ctx, mux, &proxyService{s: s}) },
		func() error { return adminv1.RegisterCustomerServiceHandlerServer(ctx, mux, &customerService{s: s}) },
		func() error { return adminv1.RegisterBudgetServiceHandlerServer(ctx, mux, &budgetService{s: s}) },
	} {
		if err := reg(); err != nil {
			return nil, err
		}
	}
	return LimitBody(mux), nil
}

// LimitBody reads at most MaxBodyBytes of a request body and answers 413 in
// the envelope beyond that.
func LimitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			if r.ContentLength > MaxBodyBytes {
				WriteError(w, http.StatusRequestEntityTooLarge, "request_too_large", "", "request body is larger than 1 MiB")
				return
			}
			b, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
			if err != nil {
				WriteError(w, http.StatusBadRequest, "bad_request_error", "", "could not read the request body")
				return
			}
			if len(b) > MaxBodyBytes {
				WriteError(w, http.StatusRequestEntityTooLarge, "request_too_large", "", "request body is larger than 1 MiB")
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		next.ServeHTTP(w, r)
	})
}

// gatewayJSON is the gateway's JSON marshaler: protojson, except that spend
// log token counts are JSON numbers as in LiteLLM (protojson writes int64
// as strings, and scripts add them up).
type gatewayJSON struct {
	*runtime.JSONPb
}

func (m *gatewayJSON) Marshal(v any) ([]byte, error) {
	switch x := v.(type) {
	case []*adminv1.SpendLog:
		return m.spendLogs(x)
	case *adminv1.ListSpendLogsResponse:
		b, err := m.JSONPb.Marshal(x)
		if err != nil {
			return nil, err
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(b, &obj); err != nil {
			return nil, err
		}
		if obj["spend_logs"], err = m.spendLogs(x.GetSpendLogs()); err != nil {
			return nil, err
		}
		return json.Marshal(obj)
	}
	return m.JSONPb.Marshal(v)
}

// tokenFields are the SpendLog int64 fields written as numbers.
var tokenFields = [...]string{"prompt_tokens", "completion_tokens", "total_tokens"}

func (m *gatewayJSON) spendLogs(ls []*adminv1.SpendLog) ([]byte, error) {
	out := make([]json.RawMessage, 0, len(ls))
	for _, l := range ls {
		b, err := m.JSONPb.Marshal(l)
		if err != nil {
			return nil, err
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(b, &obj); err != nil {
			return nil, err
		}
		for _, f := range tokenFields {
			if raw := obj[f]; len(raw) > 2 && raw[0] == '"' {
				obj[f] = raw[1 : len(raw)-1] // a decimal integer, quoted by protojson
			}
		}
		if b, err = json.Marshal(obj); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return json.Marshal(out)
}
