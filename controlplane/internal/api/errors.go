package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// apiError builds a gRPC status carrying ErrorInfo, so gRPC clients and the
// REST envelope see the same type, param and HTTP status.
func apiError(c codes.Code, httpStatus int, typ, param, msg string) error {
	st := status.New(c, msg)
	if d, err := st.WithDetails(&adminv1.ErrorInfo{Type: typ, Param: param, HttpStatus: int32(httpStatus)}); err == nil {
		st = d
	}
	return st.Err()
}

func badRequest(param, msg string) error {
	return apiError(codes.InvalidArgument, 400, "bad_request_error", param, msg)
}

func notFound(param, msg string) error {
	return apiError(codes.NotFound, 404, "not_found_error", param, msg)
}

func unauthorized(msg string) error {
	return apiError(codes.Unauthenticated, 401, "auth_error", "", msg)
}

func forbidden(msg string) error {
	return apiError(codes.PermissionDenied, 403, "auth_error", "", msg)
}

func internalError() error {
	return apiError(codes.Internal, 500, "internal_error", "", "internal error")
}

func unavailable() error {
	return apiError(codes.Unavailable, 503, "service_unavailable", "", "the store is unavailable, try again")
}

// storeError maps store sentinels to API errors; unknown errors are logged
// with their cause and answered generically.
func storeError(ctx context.Context, err error, what string) error {
	var ce *store.ConflictError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return badRequest(ce.Field, ce.Field+" already exists")
	case errors.Is(err, store.ErrNotFound):
		return notFound("", what+" not found")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return apiError(codes.DeadlineExceeded, 504, "timeout_error", "", "request timed out")
	case errors.Is(err, store.ErrUnavailable):
		slog.ErrorContext(ctx, "store unavailable", "err", err)
		return unavailable()
	}
	if _, ok := status.FromError(err); ok {
		return err // already an API error (returned from inside a transaction)
	}
	slog.ErrorContext(ctx, "store error", "err", err)
	return internalError()
}

// Envelope is the error body on every REST path.
type Envelope struct {
	Error EnvelopeError `json:"error"`
}

// EnvelopeError is the inside of Envelope; code is the HTTP status as a string.
type EnvelopeError struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   string `json:"param"`
	Code    string `json:"code"`
}

// WriteError writes the error envelope.
func WriteError(w http.ResponseWriter, httpStatus int, typ, param, msg string) {
	b, _ := json.Marshal(Envelope{Error: EnvelopeError{Message: msg, Type: typ, Param: param, Code: strconv.Itoa(httpStatus)}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(b)
}

// gatewayError renders any error reaching the REST gateway as the envelope.
func gatewayError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	st := status.Convert(err)
	httpStatus := runtime.HTTPStatusFromCode(st.Code())
	typ := typeForStatus(httpStatus)
	param := ""
	for _, d := range st.Details() {
		if info, ok := d.(*adminv1.ErrorInfo); ok {
			if info.HttpStatus != 0 {
				httpStatus = int(info.HttpStatus)
			}
			if info.Type != "" {
				typ = info.Type
			}
			param = info.Param
		}
	}
	msg := st.Message()
	if st.Code() == codes.InvalidArgument && len(st.Details()) == 0 {
		// Body or query decoding failed inside the gateway.
		msg = "invalid request: " + msg
	}
	if httpStatus >= 500 && st.Code() == codes.Unknown {
		slog.ErrorContext(ctx, "unclassified error", "err", err)
		msg = "internal error"
	}
	if st.Code() == codes.Canceled {
		httpStatus = 499
	}
	WriteError(w, httpStatus, typ, param, msg)
}

func routingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	switch httpStatus {
	case http.StatusNotFound:
		// Never echo the path: it may hold a key.
		WriteError(w, 404, "not_found_error", "", "no such route")
	case http.StatusMethodNotAllowed:
		WriteError(w, 405, "method_not_allowed", "", "method "+r.Method+" not allowed on this route")
	default:
		WriteError(w, httpStatus, typeForStatus(httpStatus), "", http.StatusText(httpStatus))
	}
}

func typeForStatus(s int) string {
	switch {
	case s == 400:
		return "bad_request_error"
	case s == 401 || s == 403:
		return "auth_error"
	case s == 404:
		return "not_found_error"
	case s == 413:
		return "request_too_large"
	case s == 429:
		return "rate_limit_error"
	case s >= 500:
		return "internal_error"
	default:
		return "invalid_request_error"
	}
}
