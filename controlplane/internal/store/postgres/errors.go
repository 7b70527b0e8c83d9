package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Every driver error passes through classify before it leaves the package.

// SQLSTATE codes this package acts on.
const (
	codeUniqueViolation      = "23505"
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeQueryCanceled        = "57014"
)

// conflictFields maps unique constraints (named explicitly in the
// migrations) to the ConflictError field a caller sees.
var conflictFields = map[string]string{
	"keys_pkey":          "token_id",
	"keys_key_hash_key":  "key",
	"keys_key_alias_key": "key_alias",
	"teams_pkey":         "team_id",
	"users_pkey":         "user_id",
	"organizations_pkey": "organization_id",
	"models_pkey":        "id",
	"audit_pkey":         "id",

	"model_groups_pkey":        "group_name",
	"jobs_pkey":                "job_id",
	"job_calls_pkey":           "call_id",
	"credit_transactions_pkey": "transaction_id",
}

// retryError marks an error after which the whole transaction callback must
// run again: a serialization failure, a deadlock, or a unique violation
// against a row committed after the transaction's snapshot (a retry sees the
// row and reports a clean conflict).
type retryError struct {
	err   error // classified, what the caller gets if retries run out
	cause error // the driver error
}

func (e *retryError) Error() string {
	return "postgres: transaction must be retried: " + e.cause.Error()
}
func (e *retryError) Unwrap() error { return e.cause }

// classify turns a driver error into the store's vocabulary:
//
//   - pgx.ErrNoRows becomes store.ErrNotFound;
//   - a cancelled or expired ctx returns ctx.Err() itself;
//   - unique_violation becomes a *store.ConflictError naming the field;
//   - serialization failures and deadlocks become a *retryError;
//   - connection failures, server shutdown and resource exhaustion wrap
//     store.ErrUnavailable;
//   - anything else is wrapped with a "postgres:" prefix.
func classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var re *retryError
	if errors.As(err, &re) {
		return err
	}
	if isStoreError(err) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		pgconn.Timeout(err) || sqlState(err) == codeQueryCanceled) {
		return ctx.Err()
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == codeUniqueViolation:
			return &store.ConflictError{Field: conflictField(pgErr.ConstraintName)}
		case pgErr.Code == codeSerializationFailure || pgErr.Code == codeDeadlockDetected:
			return &retryError{err: fmt.Errorf("%w: too much contention: %w", store.ErrUnavailable, err), cause: err}
		case unavailableCode(pgErr.Code):
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		var ce *pgconn.ConnectError
		if errors.As(err, &ce) {
			// Authentication and unknown database: the server is up but
			// refuses us; still nothing a caller fixes by changing input.
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		}
		return fmt.Errorf("postgres: %w", err)
	}
	if connectionError(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return fmt.Errorf("postgres: %w", err)
}

func isStoreError(err error) bool {
	return errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrUnavailable)
}

// unavailableCode reports SQLSTATEs meaning "the server cannot serve us
// right now": class 08 (connection exception), 53 (insufficient resources,
// e.g. too_many_connections), 57P01-57P05 (shutdown, crash recovery, idle
// session timeout), and 57014 when no ctx of ours was cancelled
// (statement_timeout).
func unavailableCode(code string) bool {
	return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53") ||
		strings.HasPrefix(code, "57P") || code == codeQueryCanceled
}

func connectionError(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}

// conflictField names the field of a unique constraint; unknown constraints
// (a future migration nobody mapped) fall back to the constraint's name.
func conflictField(constraint string) string {
	if f, ok := conflictFields[constraint]; ok {
		return f
	}
	return constraint
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// retryable reports whether err asks for the transaction callback to run
// again.
func retryable(err error) bool {
	var re *retryError
	return errors.As(err, &re)
}
