package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// rotationAt is the keys.rotation_at column of k: its next rotation when
// auto_rotate is on, else NULL (outside the partial index).
func rotationAt(k *store.Key) *time.Time {
	if !k.AutoRotate || k.KeyRotationAt == nil {
		return nil
	}
	return k.KeyRotationAt
}

// eventDoc is the immutable part of an event, kept in events.doc; the
// delivery state lives in columns.
type eventDoc struct {
	ID        string          `json:"event_id"`
	Type      string          `json:"type"`
	Payload   json.RawMessage `json:"data,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
}

const eventCols = "doc, attempts, next_attempt_at, delivered_at, last_error"

func scanEvents(rows pgx.Rows) ([]store.Event, error) {
	defer rows.Close()
	out := []store.Event{}
	for rows.Next() {
		var (
			doc       []byte
			e         store.Event
			next      time.Time
			delivered *time.Time
		)
		if err := rows.Scan(&doc, &e.Attempts, &next, &delivered, &e.LastError); err != nil {
			return nil, err
		}
		var d eventDoc
		if err := json.Unmarshal(doc, &d); err != nil {
			return nil, fmt.Errorf("postgres: decode event: %w", err)
		}
		e.ID, e.Type, e.Payload, e.CreatedAt = d.ID, d.Type, d.Payload, d.CreatedAt
		e.NextAttemptAt = next.UTC()
		if delivered != nil {
			t := delivered.UTC()
			e.DeliveredAt = &t
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (r *reader) ListEvents(ctx context.Context, f store.EventFilter) ([]store.Event, int, error) {
	p := f.Page.Normalize()
	var w where
	w.eq("type", f.Type)
	if f.PendingOnly {
		w.conds = append(w.conds, "delivered_at IS NULL")
	}
	var total int
	if err := r.q.QueryRow(ctx, "SELECT count(*) FROM events"+w.sql(), w.args...).Scan(&total); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	if total == 0 || p.Offset() >= total {
		return []store.Event{}, total, nil
	}
	n := len(w.args)
	args := append(w.args, p.Size, p.Offset())
	rows, err := r.q.Query(ctx, "SELECT "+eventCols+" FROM events"+w.sql()+" ORDER BY seq LIMIT $"+
		strconv.Itoa(n+1)+" OFFSET $"+strconv.Itoa(n+2), args...)
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	list, err := scanEvents(rows)
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	return list, total, nil
}

func (r *reader) KeysDueForRotation(ctx context.Context, now time.Time, limit int) ([]store.Key, error) {
	if limit <= 0 {
		limit = store.MaxPageSize
	}
	rows, err := r.q.Query(ctx, `SELECT doc FROM keys WHERE rotation_at IS NOT NULL AND rotation_at <= $1
ORDER BY rotation_at, token_id LIMIT $2`, now, limit)
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	defer rows.Close()
	out := []store.Key{}
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, r.fail(ctx, err)
		}
		var k store.Key
		if err := store.DecodeJSON(doc, &k); err != nil {
			return nil, fmt.Errorf("postgres: decode key: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, r.fail(ctx, err)
	}
	return out, nil
}

func (r *reader) BudgetResetsDue(ctx context.Context, until time.Time, limit int) ([]store.BudgetReset, error) {
	if limit <= 0 {
		limit = store.MaxPageSize
	}
	// Each branch walks its partial index; the union is small (due soon).
	rows, err := r.q.Query(ctx, `
(SELECT 'key' AS kind, token_id AS id, budget_reset_at FROM keys WHERE budget_reset_at < $1 ORDER BY budget_reset_at LIMIT $2)
UNION ALL
(SELECT 'team', team_id, budget_reset_at FROM teams WHERE budget_reset_at < $1 ORDER BY budget_reset_at LIMIT $2)
UNION ALL
(SELECT 'user', user_id, budget_reset_at FROM users WHERE budget_reset_at < $1 ORDER BY budget_reset_at LIMIT $2)
UNION ALL
(SELECT 'organization', organization_id, budget_reset_at FROM organizations WHERE budget_reset_at < $1 ORDER BY budget_reset_at LIMIT $2)
ORDER BY 3, 1, 2
LIMIT $2`, until, limit)
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.BudgetReset, error) {
		var b store.BudgetReset
		err := row.Scan(&b.Kind, &b.ID, &b.At)
		return b, err
	})
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return out, nil
}

func (t *tx) EnqueueEvent(ctx context.Context, e store.Event) error {
	if err := t.check(); err != nil {
		return err
	}
	if e.ID == "" || e.Type == "" {
		return fmt.Errorf("postgres: event without event_id or type")
	}
	if e.NextAttemptAt.IsZero() {
		e.NextAttemptAt = e.CreatedAt
	}
	doc, err := marshal("event", eventDoc{ID: e.ID, Type: e.Type, Payload: e.Payload, CreatedAt: e.CreatedAt})
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
INSERT INTO events (id, type, created_at, next_attempt_at, delivered_at, attempts, last_error, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING`, e.ID, e.Type, e.CreatedAt, e.NextAttemptAt, e.DeliveredAt, e.Attempts, e.LastError, doc)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: "event_id"}
	}
	return nil
}

func (t *tx) ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]store.Event, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return []store.Event{}, nil
	}
	rows, err := t.pg.Query(ctx, `
WITH due AS (
    SELECT id FROM events
    WHERE delivered_at IS NULL AND next_attempt_at <= $1
    ORDER BY next_attempt_at, seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE events e SET attempts = e.attempts + 1, next_attempt_at = $3
FROM due WHERE e.id = due.id
RETURNING e.seq, e.doc, e.attempts, e.next_attempt_at, e.delivered_at, e.last_error`, now, limit, now.Add(lease))
	if err != nil {
		return nil, t.fail(ctx, err)
	}
	type claimed struct {
		seq int64
		e   store.Event
	}
	var list []claimed
	defer rows.Close()
	for rows.Next() {
		var (
			c         claimed
			doc       []byte
			next      time.Time
			delivered *time.Time
		)
		if err := rows.Scan(&c.seq, &doc, &c.e.Attempts, &next, &delivered, &c.e.LastError); err != nil {
			return nil, t.fail(ctx, err)
		}
		var d eventDoc
		if err := json.Unmarshal(doc, &d); err != nil {
			return nil, fmt.Errorf("postgres: decode event: %w", err)
		}
		c.e.ID, c.e.Type, c.e.Payload, c.e.CreatedAt = d.ID, d.Type, d.Payload, d.CreatedAt
		c.e.NextAttemptAt = next.UTC()
		list = append(list, c)
	}
	if err := rows.Err(); err != nil {
		return nil, t.fail(ctx, err)
	}
	// RETURNING does not keep the CTE's order; every claimed row had
	// next_attempt_at ≤ now before the update, and the previous due time is
	// gone, so enqueue order is the stable order to return.
	out := make([]store.Event, len(list))
	slices.SortFunc(list, func(a, b claimed) int { return cmp.Compare(a.seq, b.seq) })
	for i := range list {
		out[i] = list[i].e
	}
	return out, nil
}

func (t *tx) MarkEventDelivered(ctx context.Context, id string, at time.Time) error {
	if err := t.check(); err != nil {
		return err
	}
	var found bool
	err := t.pg.QueryRow(ctx, `
WITH u AS (UPDATE events SET delivered_at = $2, last_error = '' WHERE id = $1 AND delivered_at IS NULL RETURNING 1)
SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)`, id, at).Scan(&found)
	if err != nil {
		return t.fail(ctx, err)
	}
	if !found {
		return store.ErrNotFound
	}
	return nil
}

func (t *tx) MarkEventFailed(ctx context.Context, id string, next time.Time, lastError string) error {
	if err := t.check(); err != nil {
		return err
	}
	var found bool
	err := t.pg.QueryRow(ctx, `
WITH u AS (UPDATE events SET next_attempt_at = $2, last_error = $3 WHERE id = $1 AND delivered_at IS NULL RETURNING 1)
SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)`, id, next, lastError).Scan(&found)
	if err != nil {
		return t.fail(ctx, err)
	}
	if !found {
		return store.ErrNotFound
	}
	return nil
}

func (t *tx) PurgeEvents(ctx context.Context, deliveredBefore time.Time, limit int) (int, error) {
	if err := t.check(); err != nil {
		return 0, err
	}
	if limit <= 0 {
		return 0, nil
	}
	tag, err := t.pg.Exec(ctx, `
DELETE FROM events WHERE id IN (
    SELECT id FROM events WHERE delivered_at IS NOT NULL AND delivered_at < $1 ORDER BY delivered_at LIMIT $2)`,
		deliveredBefore, limit)
	if err != nil {
		return 0, t.fail(ctx, err)
	}
	return int(tag.RowsAffected()), nil
}
