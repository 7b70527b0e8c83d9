package store

import (
	"context"
	"fmt"
	"time"
)

// MaxSessionIDLen bounds a revoked session id.
const MaxSessionIDLen = 128

// RevokedSession is a signed-out admin UI session: every control-plane
// replica refuses it until Expires (when it would have expired anyway).
type RevokedSession struct {
	ID      string
	Expires time.Time
}

// SessionRevocations is the admin UI's sign-out list, shared by every
// replica on the store (part of Store). Revocations are not entities: they
// get no revision and are not synced to data planes.
type SessionRevocations interface {
	// RevokeSession records id as signed out until expires. An id that is
	// empty or longer than MaxSessionIDLen bytes is an error (nothing is
	// stored). Revoking an id again keeps the later expiry.
	RevokeSession(ctx context.Context, id string, expires time.Time) error
	// RevokedSessions returns the revocations unexpired at now that were
	// recorded since cursor (0: all of them), and the cursor for the next
	// call. A revocation recorded before a call returns is returned by that
	// call or the next one; one may be returned more than once.
	RevokedSessions(ctx context.Context, cursor int64, now time.Time) ([]RevokedSession, int64, error)
	// PruneRevokedSessions deletes the revocations expired at now and
	// returns how many.
	PruneRevokedSessions(ctx context.Context, now time.Time) (int, error)
}

// CheckSessionID is the id check both backends apply.
func CheckSessionID(id string) error {
	if id == "" || len(id) > MaxSessionIDLen {
		return fmt.Errorf("store: a session id is 1 to %d bytes", MaxSessionIDLen)
	}
	return nil
}
