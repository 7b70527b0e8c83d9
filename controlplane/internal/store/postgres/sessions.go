package postgres

import (
	"context"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// sessionOverlap is how far before the cursor RevokedSessions looks again:
// a revocation is one short statement, so one whose revoked_at (its
// transaction's start) is earlier than a poll but that commits after it is
// still found by the next poll.
const sessionOverlap = 10 * time.Second

// RevokeSession records a UI sign-out.
func (s *Store) RevokeSession(ctx context.Context, id string, expires time.Time) error {
	if err := store.CheckSessionID(id); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO ui_revoked_sessions (session_id, expires_at) VALUES ($1, $2)
ON CONFLICT (session_id) DO UPDATE SET expires_at = GREATEST(ui_revoked_sessions.expires_at, EXCLUDED.expires_at), revoked_at = now()`,
		id, expires.UTC())
	return classify(ctx, err)
}

// RevokedSessions returns the sign-outs recorded since cursor (the
// database clock, unix microseconds, at the previous call's start, minus
// sessionOverlap).
func (s *Store) RevokedSessions(ctx context.Context, cursor int64, now time.Time) ([]store.RevokedSession, int64, error) {
	var next int64
	if err := s.pool.QueryRow(ctx, `SELECT (extract(epoch FROM statement_timestamp()) * 1000000)::bigint`).Scan(&next); err != nil {
		return nil, cursor, classify(ctx, err)
	}
	since := time.UnixMicro(cursor).Add(-sessionOverlap)
	if cursor == 0 {
		since = time.Unix(0, 0)
	}
	rows, err := s.pool.Query(ctx, `SELECT session_id, expires_at FROM ui_revoked_sessions
WHERE revoked_at >= $1 AND expires_at > $2`, since.UTC(), now.UTC())
	if err != nil {
		return nil, cursor, classify(ctx, err)
	}
	defer rows.Close()
	var out []store.RevokedSession
	for rows.Next() {
		var r store.RevokedSession
		if err := rows.Scan(&r.ID, &r.Expires); err != nil {
			return nil, cursor, classify(ctx, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, cursor, classify(ctx, err)
	}
	return out, next, nil
}

// PruneRevokedSessions deletes the sign-outs of sessions that expired.
func (s *Store) PruneRevokedSessions(ctx context.Context, now time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM ui_revoked_sessions WHERE expires_at <= $1`, now.UTC())
	if err != nil {
		return 0, classify(ctx, err)
	}
	return int(tag.RowsAffected()), nil
}
