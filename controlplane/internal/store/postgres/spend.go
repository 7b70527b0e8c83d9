package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// ApplySpend applies a batch in the caller's transaction. Round trips per
// batch: the high-water mark (2), one read and one write per touched kind,
// the end users (1) and the logs (COPY), whatever the number of records.
// Entity rows are locked in id order, so concurrent batches queue instead
// of deadlocking; a racing writer of the same row surfaces as a
// serialization failure, and ReadWriteTx runs the batch again.
func (t *tx) ApplySpend(ctx context.Context, b store.SpendBatch) (store.SpendResult, error) {
	if err := t.check(); err != nil {
		return store.SpendResult{}, err
	}
	if err := b.Validate(); err != nil {
		return store.SpendResult{}, err
	}
	if len(b.Records) == 0 {
		return store.SpendResult{}, nil
	}
	if _, err := t.pg.Exec(ctx, `
INSERT INTO spend_sources (proxy_id, outbox_id, last_seq) VALUES ($1, $2, 0)
ON CONFLICT DO NOTHING`, b.ProxyID, b.OutboxID); err != nil {
		return store.SpendResult{}, t.fail(ctx, err)
	}
	var hw int64
	if err := t.pg.QueryRow(ctx, `
SELECT last_seq FROM spend_sources WHERE proxy_id = $1 AND outbox_id = $2 FOR UPDATE`,
		b.ProxyID, b.OutboxID).Scan(&hw); err != nil {
		return store.SpendResult{}, t.fail(ctx, err)
	}
	recs := b.Above(uint64(hw))
	if len(recs) == 0 {
		return store.SpendResult{}, nil
	}
	tot := store.Totals(recs)

	if err := spendDocs(ctx, t, keysTable, store.KindKey, tot.Keys,
		func(k *store.Key) string { tot.AddToKey(k); return k.TokenID }); err != nil {
		return store.SpendResult{}, err
	}
	if err := spendDocs(ctx, t, teamsTable, store.KindTeam, tot.Teams,
		func(tm *store.Team) string { tot.AddToTeam(tm); return tm.TeamID }); err != nil {
		return store.SpendResult{}, err
	}
	if err := spendDocs(ctx, t, usersTable, store.KindUser, tot.Users,
		func(u *store.User) string { tot.AddToUser(u); return u.UserID }); err != nil {
		return store.SpendResult{}, err
	}
	if err := spendDocs(ctx, t, orgsTable, store.KindOrganization, tot.Orgs,
		func(o *store.Organization) string { tot.AddToOrg(o); return o.OrganizationID }); err != nil {
		return store.SpendResult{}, err
	}
	if len(tot.EndUsers) > 0 {
		ids := store.SortedIDs(tot.EndUsers)
		costs := make([]int64, len(ids))
		for i, id := range ids {
			costs[i] = tot.EndUsers[id]
		}
		now := time.Now()
		// RETURNING the post-image: every end user gets a change record, so
		// proxies see the spend their budget checks need.
		rows, err := t.pg.Query(ctx, `
INSERT INTO end_users (end_user_id, spend, created_at, updated_at)
SELECT u.id, u.cost, $3, $3 FROM unnest($1::text[], $2::bigint[]) AS u(id, cost)
ON CONFLICT (end_user_id) DO UPDATE SET spend = end_users.spend + excluded.spend, updated_at = excluded.updated_at
RETURNING `+endUserColumns, ids, costs, now)
		if err != nil {
			return store.SpendResult{}, t.fail(ctx, err)
		}
		eus, err := scanEndUsers(rows)
		if err != nil {
			return store.SpendResult{}, t.fail(ctx, err)
		}
		for i := range eus {
			if err := t.recordEndUser(&eus[i]); err != nil {
				return store.SpendResult{}, err
			}
			tot.After = append(tot.After, store.ObjectSpend{Kind: store.KindEndUser, ID: eus[i].EndUserID, Spend: eus[i].Spend})
		}
	}

	rows := make([][]any, len(recs))
	for i := range recs {
		r := &recs[i]
		rows[i] = []any{b.ProxyID, b.OutboxID, int64(r.Seq), r.RequestID, nullIfEmpty(r.TokenID), nullIfEmpty(r.TeamID),
			nullIfEmpty(r.UserID), nullIfEmpty(r.OrganizationID), nullIfEmpty(r.EndUser), r.Model, r.DeploymentID,
			r.PromptTokens, r.CompletionTokens, r.Cost, r.Streamed, r.Estimated, int32(r.Status), r.Route,
			r.StartTime.UnixNano(), r.EndTime.UnixNano()}
	}
	if _, err := t.pg.CopyFrom(ctx, pgx.Identifier{"spend_logs"}, spendLogColumns, pgx.CopyFromRows(rows)); err != nil {
		return store.SpendResult{}, t.fail(ctx, err)
	}
	if _, err := t.pg.Exec(ctx, `
UPDATE spend_sources SET last_seq = $3 WHERE proxy_id = $1 AND outbox_id = $2`,
		b.ProxyID, b.OutboxID, int64(recs[len(recs)-1].Seq)); err != nil {
		return store.SpendResult{}, t.fail(ctx, err)
	}
	return store.SpendResult{Applied: len(recs), SoftBudgetCrossings: tot.Crossings, Spends: tot.After}, nil
}

var spendLogColumns = []string{"proxy_id", "outbox_id", "seq", "request_id", "token_id", "team_id", "user_id",
	"organization_id", "end_user", "model", "deployment_id", "prompt_tokens", "completion_tokens", "cost",
	"streamed", "estimated", "status", "route", "start_ns", "end_ns"}

// spendDocs locks the docs of the ids in totals (those that still exist),
// lets add change each, writes them back in one statement and records a
// change per entity.
func spendDocs[T any](ctx context.Context, t *tx, tb table, kind string, totals map[string]int64, add func(*T) string) error {
	if len(totals) == 0 {
		return nil
	}
	ids := store.SortedIDs(totals)
	items, err := lockDocs[T](ctx, t, "SELECT doc FROM "+tb.name+" WHERE "+tb.id+" = ANY($1) ORDER BY "+tb.id+" FOR UPDATE", ids)
	if err != nil {
		return err
	}
	if len(items) == 0 {
		return nil
	}
	outIDs, docs := make([]string, len(items)), make([]string, len(items))
	for i := range items {
		id := add(&items[i])
		doc, err := json.Marshal(&items[i])
		if err != nil {
			return fmt.Errorf("postgres: encode %s: %w", kind, err)
		}
		outIDs[i], docs[i] = id, string(doc)
	}
	if _, err := t.pg.Exec(ctx, "UPDATE "+tb.name+" SET doc = u.doc::jsonb FROM unnest($1::text[], $2::text[]) AS u(id, doc) WHERE "+
		tb.name+"."+tb.id+" = u.id", outIDs, docs); err != nil {
		return t.fail(ctx, err)
	}
	for i := range outIDs {
		t.record(kind, outIDs[i], store.OpPut, []byte(docs[i]))
	}
	return nil
}

// PutEndUser creates or replaces an end user, keeping its created_at.
func (t *tx) PutEndUser(ctx context.Context, e store.EndUser) error {
	if err := t.check(); err != nil {
		return err
	}
	if e.EndUserID == "" {
		return errors.New("postgres: end user without end_user_id")
	}
	now := time.Now()
	created := e.CreatedAt
	if created.IsZero() {
		created = now
	}
	updated := e.UpdatedAt
	if updated.IsZero() {
		updated = now
	}
	rows, err := t.pg.Query(ctx, `
INSERT INTO end_users (end_user_id, spend, alias, max_budget, blocked, created_at, updated_at, budget_id, rpm_limit, tpm_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (end_user_id) DO UPDATE SET spend = excluded.spend, alias = excluded.alias,
    max_budget = excluded.max_budget, blocked = excluded.blocked, updated_at = excluded.updated_at,
    budget_id = excluded.budget_id, rpm_limit = excluded.rpm_limit, tpm_limit = excluded.tpm_limit
RETURNING `+endUserColumns,
		e.EndUserID, e.Spend, e.Alias, e.MaxBudget, e.Blocked, created, updated, nullIfEmpty(e.BudgetID), e.RPMLimit, e.TPMLimit)
	if err != nil {
		return t.fail(ctx, err)
	}
	eus, err := scanEndUsers(rows)
	if err != nil {
		return t.fail(ctx, err)
	}
	for i := range eus {
		if err := t.recordEndUser(&eus[i]); err != nil {
			return err
		}
	}
	return nil
}

const endUserColumns = "end_user_id, spend, alias, max_budget, blocked, created_at, updated_at, coalesce(budget_id, ''), rpm_limit, tpm_limit"

// scanEndUsers reads rows of endUserColumns and closes them.
func scanEndUsers(rows pgx.Rows) ([]store.EndUser, error) {
	defer rows.Close()
	var out []store.EndUser
	for rows.Next() {
		var e store.EndUser
		if err := rows.Scan(&e.EndUserID, &e.Spend, &e.Alias, &e.MaxBudget, &e.Blocked, &e.CreatedAt, &e.UpdatedAt, &e.BudgetID, &e.RPMLimit, &e.TPMLimit); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (t *tx) recordEndUser(e *store.EndUser) error {
	doc, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("postgres: encode end user: %w", err)
	}
	t.record(store.KindEndUser, e.EndUserID, store.OpPut, doc)
	return nil
}

// DeleteEndUser deletes an end user and records a tombstone.
func (t *tx) DeleteEndUser(ctx context.Context, id string) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "DELETE FROM end_users WHERE end_user_id = $1", id)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindEndUser, id, store.OpDelete, nil)
	return nil
}

// ListEndUsers pages through the end users in id order.
func (r *reader) ListEndUsers(ctx context.Context, p store.Page) ([]store.EndUser, int, error) {
	p = p.Normalize()
	var total int
	if err := r.q.QueryRow(ctx, "SELECT count(*) FROM end_users").Scan(&total); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	if total == 0 || p.Offset() >= total {
		return []store.EndUser{}, total, nil
	}
	rows, err := r.q.Query(ctx, "SELECT "+endUserColumns+" FROM end_users ORDER BY end_user_id LIMIT $1 OFFSET $2", p.Size, p.Offset())
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	out, err := scanEndUsers(rows)
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	if out == nil {
		out = []store.EndUser{}
	}
	return out, total, nil
}

// EachEndUser walks the end users in id order, a batch per query, calling
// fn with no rows open (fn may read through r).
func (r *reader) EachEndUser(ctx context.Context, fn func(store.EndUser) error) error {
	after := ""
	for {
		rows, err := r.q.Query(ctx, "SELECT "+endUserColumns+" FROM end_users WHERE end_user_id > $1 ORDER BY end_user_id LIMIT 1000", after)
		if err != nil {
			return r.fail(ctx, err)
		}
		batch, err := scanEndUsers(rows)
		if err != nil {
			return r.fail(ctx, err)
		}
		for _, e := range batch {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(batch) < 1000 {
			return nil
		}
		after = batch[len(batch)-1].EndUserID
	}
}

// GetEndUser reads an end user.
func (r *reader) GetEndUser(ctx context.Context, id string) (store.EndUser, error) {
	var e store.EndUser
	err := r.q.QueryRow(ctx, "SELECT "+endUserColumns+" FROM end_users WHERE end_user_id = $1", id).
		Scan(&e.EndUserID, &e.Spend, &e.Alias, &e.MaxBudget, &e.Blocked, &e.CreatedAt, &e.UpdatedAt, &e.BudgetID, &e.RPMLimit, &e.TPMLimit)
	if err != nil {
		return store.EndUser{}, r.fail(ctx, err)
	}
	return e, nil
}

// SpendHighWater reads the high-water mark of an outbox.
func (r *reader) SpendHighWater(ctx context.Context, proxyID, outboxID string) (uint64, error) {
	var hw int64
	err := r.q.QueryRow(ctx, "SELECT last_seq FROM spend_sources WHERE proxy_id = $1 AND outbox_id = $2", proxyID, outboxID).Scan(&hw)
	if err == pgx.ErrNoRows {
		return 0, nil
	}
	if err != nil {
		return 0, r.fail(ctx, err)
	}
	return uint64(hw), nil
}

// ListSpendLogs returns spend logs newest first.
// spendWhere is the WHERE clause of f (its page aside).
func spendWhere(f store.SpendLogFilter) where {
	var w where
	w.eq("token_id", f.TokenID)
	w.eq("request_id", f.RequestID)
	w.eq("user_id", f.UserID)
	w.eq("team_id", f.TeamID)
	w.eq("end_user", f.EndUser)
	if !f.Since.IsZero() {
		w.add("start_ns >= ?", unixNano(f.Since))
	}
	if !f.Until.IsZero() {
		w.add("start_ns < ?", unixNano(f.Until))
	}
	return w
}

// nsPerDay divides start_ns into UTC days (unix time has no leap seconds).
const nsPerDay = int64(24 * time.Hour)

// SpendReport sums the logs f matches per UTC day and group in one query.
func (r *reader) SpendReport(ctx context.Context, f store.SpendLogFilter, by store.SpendGroup) ([]store.SpendDay, error) {
	if !by.Valid() {
		return nil, fmt.Errorf("postgres: unknown spend group %q", by)
	}
	w := spendWhere(f)
	// by is one of the constant column names checked above, never input.
	col := "coalesce(" + string(by) + ", '')"
	// Integer division, floored for times before 1970 too (numeric
	// division rounds the nanosecond before midnight into the next day).
	rows, err := r.q.Query(ctx, fmt.Sprintf(`SELECT CASE WHEN start_ns >= 0 THEN start_ns / %[1]d ELSE -((-start_ns + %[1]d - 1) / %[1]d) END AS day, %[2]s AS grp,
sum(cost)::bigint, count(*), sum(prompt_tokens + completion_tokens)::bigint
FROM spend_logs%[3]s GROUP BY 1, 2 ORDER BY 1, 2`, nsPerDay, col, w.sql()), w.args...)
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	defer rows.Close()
	out := []store.SpendDay{}
	for rows.Next() {
		var d store.SpendDay
		var day int64
		if err := rows.Scan(&day, &d.Group, &d.Cost, &d.Requests, &d.Tokens); err != nil {
			return nil, r.fail(ctx, err)
		}
		d.Day = time.Unix(day*int64(24*time.Hour/time.Second), 0).UTC()
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, r.fail(ctx, err)
	}
	store.SortSpendDays(out) // Go's string order, as the embedded store
	return out, nil
}

func (r *reader) ListSpendLogs(ctx context.Context, f store.SpendLogFilter) ([]store.SpendLog, int, error) {
	w := spendWhere(f)
	p := f.Page.Normalize()
	var total int
	if err := r.q.QueryRow(ctx, "SELECT count(*) FROM spend_logs"+w.sql(), w.args...).Scan(&total); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	out := []store.SpendLog{}
	if total == 0 || p.Offset() >= total {
		return out, total, nil
	}
	n := len(w.args)
	args := append(w.args, p.Size, p.Offset())
	rows, err := r.q.Query(ctx, `SELECT proxy_id, outbox_id, seq, request_id, coalesce(token_id, ''), coalesce(team_id, ''),
coalesce(user_id, ''), coalesce(organization_id, ''), coalesce(end_user, ''), model, deployment_id, prompt_tokens,
completion_tokens, cost, streamed, estimated, status, route, start_ns, end_ns
FROM spend_logs`+w.sql()+fmt.Sprintf(" ORDER BY start_ns DESC, id DESC LIMIT $%d OFFSET $%d", n+1, n+2), args...)
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	defer rows.Close()
	for rows.Next() {
		var l store.SpendLog
		var seq, start, end int64
		var st int32
		if err := rows.Scan(&l.ProxyID, &l.OutboxID, &seq, &l.RequestID, &l.TokenID, &l.TeamID, &l.UserID,
			&l.OrganizationID, &l.EndUser, &l.Model, &l.DeploymentID, &l.PromptTokens, &l.CompletionTokens, &l.Cost,
			&l.Streamed, &l.Estimated, &st, &l.Route, &start, &end); err != nil {
			return nil, 0, r.fail(ctx, err)
		}
		l.Seq, l.Status = uint64(seq), int(st)
		l.StartTime, l.EndTime = time.Unix(0, start).UTC(), time.Unix(0, end).UTC()
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	return out, total, nil
}

// unixNano is t in unix nanoseconds, clamped to int64 (UnixNano overflows
// outside the years 1678..2262, and a filter may name any date).
func unixNano(t time.Time) int64 {
	switch {
	case t.After(maxNanoTime):
		return math.MaxInt64
	case t.Before(minNanoTime):
		return math.MinInt64
	}
	return t.UnixNano()
}

var (
	maxNanoTime = time.Unix(0, math.MaxInt64)
	minNanoTime = time.Unix(0, math.MinInt64)
)
