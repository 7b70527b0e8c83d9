package postgres

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// ReadWriteTx runs fn in a REPEATABLE READ transaction and commits it when
// fn returns nil, together with the change rows of everything fn wrote.
// Conflicting concurrent transactions make Postgres abort one of them with a
// serialization failure; that attempt is rolled back and fn runs again, up
// to the configured number of attempts (doc.go explains the choice).
func (s *Store) ReadWriteTx(ctx context.Context, fn func(ctx context.Context, tx store.Tx) error) error {
	for attempt := 1; ; attempt++ {
		wrote, err := s.attempt(ctx, fn)
		if err == nil {
			if wrote {
				s.committed()
			}
			return nil
		}
		var re *retryError
		if !errors.As(err, &re) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt >= s.opts.maxAttempts {
			return re.err
		}
		if !sleep(ctx, backoff(attempt)) {
			return ctx.Err()
		}
	}
}

// backoff is a jittered exponential delay: 1ms, 2ms, 4ms ... capped at 64ms.
func backoff(attempt int) time.Duration {
	d := time.Millisecond << min(attempt-1, 6)
	return d/2 + rand.N(d/2+1)
}

// attempt runs fn once. It reports whether the committed transaction wrote
// anything; a *retryError asks for another attempt.
func (s *Store) attempt(ctx context.Context, fn func(ctx context.Context, tx store.Tx) error) (wrote bool, err error) {
	pgtx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		err = classify(ctx, err)
		if pgconn.SafeToRetry(err) && ctx.Err() == nil {
			// Nothing reached the server (typically a pooled connection the
			// server closed): trying again on another connection is safe.
			return false, &retryError{err: err, cause: err}
		}
		return false, err
	}
	t := &tx{pg: pgtx, index: make(map[changeKey]int)}
	t.reader = reader{q: pgtx, fail: t.fail}
	defer func() {
		t.done = true
		// Always, so that a panicking fn does not leak the connection; after
		// a commit it does nothing. A rollback error changes nothing for the
		// caller: the transaction did not commit either way.
		pgtx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	}()

	ferr := fn(ctx, t)
	t.done = true
	if t.retry != nil {
		// fn saw a serialization failure, deadlock or racing unique
		// violation (and may have returned it, or swallowed it): whatever
		// it decided was decided on an aborted transaction.
		return false, t.retry
	}
	if ferr != nil {
		return false, ferr
	}
	if t.aborted != nil {
		// fn swallowed an error that aborted the transaction; committing
		// would only roll back.
		return false, t.aborted
	}
	if len(t.changes) > 0 {
		if err := t.insertChanges(ctx, s.opts.notifyInTx); err != nil {
			return false, err
		}
	}
	if err := pgtx.Commit(ctx); err != nil {
		// An error on COMMIT itself may leave the outcome unknown (the
		// connection dropped after sending it); classify wraps those as
		// ErrUnavailable and we never retry them.
		return false, classify(ctx, err)
	}
	return len(t.changes) > 0, nil
}

// committed wakes the sequencer after a commit that wrote change rows: the
// local one directly, the others through a NOTIFY sent outside the writer's
// transaction (see doc.go, "Revisions").
func (s *Store) committed() {
	poke(s.seqWake)
	if !s.leader.Load() && !s.opts.notifyInTx {
		poke(s.notifyWake)
	}
}

// changeKey identifies an entity in a transaction's change set.
type changeKey struct{ kind, id string }

// tx implements store.Tx.
type tx struct {
	reader
	pg      pgx.Tx
	changes []store.Change
	index   map[changeKey]int // position of each entity in changes
	// retry is set by the first error that requires running fn again.
	retry error
	// aborted is set by the first error Postgres reported: the transaction
	// refuses every further statement.
	aborted error
	done    bool
}

var _ store.Tx = (*tx)(nil)

// fail classifies err and records what it means for the transaction.
func (t *tx) fail(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	c := classify(ctx, err)
	if errors.Is(err, pgx.ErrNoRows) {
		return c // not a statement failure
	}
	if t.aborted == nil {
		t.aborted = c
	}
	if t.retry == nil {
		if retryable(c) {
			t.retry = c
		} else if sqlState(err) == codeUniqueViolation {
			// Every write that can collide checks first (ON CONFLICT or a
			// NOT EXISTS guard), so a unique violation here means the
			// colliding row was committed after our snapshot. A retry sees
			// it and reports the conflict without aborting the transaction.
			t.retry = &retryError{err: c, cause: err}
		}
	}
	return c
}

// record adds a change; a later write of the same entity replaces the
// earlier one, so the change set holds each entity once, in its final state.
func (t *tx) record(kind, id, op string, data []byte) {
	c := store.Change{Kind: kind, ID: id, Op: op}
	if op == store.OpPut {
		c.Data = json.RawMessage(data)
	}
	k := changeKey{kind, id}
	if i, ok := t.index[k]; ok {
		t.changes[i] = c
		return
	}
	t.index[k] = len(t.changes)
	t.changes = append(t.changes, c)
}

// insertChanges writes the change set in one statement. The rows get the
// transaction's id (tx_id default) and no revision: the sequencer numbers
// them after commit.
func (t *tx) insertChanges(ctx context.Context, notify bool) error {
	n := len(t.changes)
	kinds, ids, ops, data := make([]string, n), make([]string, n), make([]string, n), make([]*string, n)
	for i, c := range t.changes {
		kinds[i], ids[i], ops[i] = c.Kind, c.ID, c.Op
		if c.Data != nil {
			d := string(c.Data)
			data[i] = &d
		}
	}
	sql := `INSERT INTO changes (kind, entity_id, op, data)
SELECT u.kind, u.entity_id, u.op, u.data::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u(kind, entity_id, op, data, ord)
ORDER BY u.ord`
	if notify {
		sql = "WITH ins AS (" + sql + ") SELECT pg_notify('" + channelChanges + "', '')"
	}
	_, err := t.pg.Exec(ctx, sql, kinds, ids, ops, data)
	return t.fail(ctx, err)
}

var errTxDone = errors.New("postgres: transaction used after its callback returned")

// check guards every method against use after the callback returned.
func (t *tx) check() error {
	if t.done {
		return errTxDone
	}
	return nil
}

func marshal(kind string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("postgres: encode %s: %w", kind, err)
	}
	return b, nil
}

// nullIfEmpty stores optional references as NULL, so that partial indexes
// skip them and uniqueness ignores them.
func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// ---- keys

func (t *tx) CreateKey(ctx context.Context, k store.Key) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindKey, k)
	if err != nil {
		return err
	}
	// ON CONFLICT DO NOTHING instead of catching unique_violation: a failed
	// statement would abort the whole transaction, and the callback may
	// want to go on after a conflict (as it can with the embedded store).
	tag, err := t.pg.Exec(ctx, `
INSERT INTO keys (token_id, key_hash, key_alias, user_id, team_id, organization_id, service_account, created_at, created_ns, doc, rotation_at, budget_reset_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING`,
		k.TokenID, k.KeyHash, nullIfEmpty(k.KeyAlias), nullIfEmpty(k.UserID), nullIfEmpty(k.TeamID),
		nullIfEmpty(k.OrganizationID), k.ServiceAccount, k.CreatedAt, nanos(k.CreatedAt), doc, rotationAt(&k), k.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return t.keyConflict(ctx, k)
	}
	t.record(store.KindKey, k.TokenID, store.OpPut, doc)
	return nil
}

// keyConflict finds which unique field of k is taken. Under REPEATABLE READ
// the row that made ON CONFLICT skip is visible to us (were it not,
// Postgres would have raised a serialization failure instead).
func (t *tx) keyConflict(ctx context.Context, k store.Key) error {
	var hash, alias, id bool
	err := t.pg.QueryRow(ctx, `
SELECT coalesce(bool_or(key_hash = $2), false),
       coalesce(bool_or(key_alias = $3), false),
       coalesce(bool_or(token_id = $1), false)
FROM keys
WHERE token_id = $1 OR key_hash = $2 OR key_alias = $3`,
		k.TokenID, k.KeyHash, nullIfEmpty(k.KeyAlias)).Scan(&hash, &alias, &id)
	if err != nil {
		return t.fail(ctx, err)
	}
	switch {
	case hash:
		return &store.ConflictError{Field: "key"}
	case alias:
		return &store.ConflictError{Field: "key_alias"}
	default:
		return &store.ConflictError{Field: "token_id"}
	}
}

func (t *tx) UpdateKey(ctx context.Context, k store.Key) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindKey, k)
	if err != nil {
		return err
	}
	// One round trip: find a collision on the new hash or alias, and update
	// only when there is none, so a conflict does not abort the transaction.
	var (
		exists  bool
		field   *string
		updated bool
	)
	err = t.pg.QueryRow(ctx, `
WITH conflict AS (
    SELECT CASE WHEN key_hash = $2 THEN 'key' ELSE 'key_alias' END AS field
    FROM keys
    WHERE token_id <> $1 AND (key_hash = $2 OR key_alias = $3)
    ORDER BY key_hash = $2 DESC
    LIMIT 1
), updated AS (
    UPDATE keys
    SET key_hash = $2, key_alias = $3, user_id = $4, team_id = $5, organization_id = $6,
        service_account = $7, created_at = $8, created_ns = $9, doc = $10, rotation_at = $11, budget_reset_at = $12
    WHERE token_id = $1 AND NOT EXISTS (SELECT 1 FROM conflict)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM keys WHERE token_id = $1),
       (SELECT field FROM conflict),
       EXISTS (SELECT 1 FROM updated)`,
		k.TokenID, k.KeyHash, nullIfEmpty(k.KeyAlias), nullIfEmpty(k.UserID), nullIfEmpty(k.TeamID),
		nullIfEmpty(k.OrganizationID), k.ServiceAccount, k.CreatedAt, nanos(k.CreatedAt), doc, rotationAt(&k), k.BudgetResetAt).
		Scan(&exists, &field, &updated)
	if err != nil {
		return t.fail(ctx, err)
	}
	switch {
	case !exists:
		return store.ErrNotFound
	case field != nil:
		return &store.ConflictError{Field: *field}
	case !updated:
		return store.ErrNotFound
	}
	t.record(store.KindKey, k.TokenID, store.OpPut, doc)
	return nil
}

func (t *tx) DeleteKey(ctx context.Context, tokenID string) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "DELETE FROM keys WHERE token_id = $1", tokenID)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindKey, tokenID, store.OpDelete, nil)
	return nil
}

// deleteKeysWhere deletes the keys matching cond (a constant with $1) and
// records a tombstone for each.
func (t *tx) deleteKeysWhere(ctx context.Context, cond string, arg any) error {
	rows, err := t.pg.Query(ctx, "DELETE FROM keys WHERE "+cond+" RETURNING token_id", arg)
	if err != nil {
		return t.fail(ctx, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return t.fail(ctx, err)
	}
	for _, id := range ids {
		t.record(store.KindKey, id, store.OpDelete, nil)
	}
	return nil
}

// ---- teams

func (t *tx) CreateTeam(ctx context.Context, tm store.Team) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindTeam, tm)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
INSERT INTO teams (team_id, organization_id, created_at, created_ns, doc, budget_reset_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING`,
		tm.TeamID, nullIfEmpty(tm.OrganizationID), tm.CreatedAt, nanos(tm.CreatedAt), doc, tm.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: "team_id"}
	}
	if err := t.insertMembers(ctx, tm); err != nil {
		return err
	}
	t.record(store.KindTeam, tm.TeamID, store.OpPut, doc)
	return nil
}

func (t *tx) UpdateTeam(ctx context.Context, tm store.Team) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindTeam, tm)
	if err != nil {
		return err
	}
	if err := t.writeTeam(ctx, tm, doc); err != nil {
		return err
	}
	t.record(store.KindTeam, tm.TeamID, store.OpPut, doc)
	return nil
}

// writeTeam replaces a stored team and its team_members rows.
func (t *tx) writeTeam(ctx context.Context, tm store.Team, doc []byte) error {
	tag, err := t.pg.Exec(ctx, `
UPDATE teams SET organization_id = $2, created_at = $3, created_ns = $4, doc = $5, budget_reset_at = $6
WHERE team_id = $1`,
		tm.TeamID, nullIfEmpty(tm.OrganizationID), tm.CreatedAt, nanos(tm.CreatedAt), doc, tm.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	if _, err := t.pg.Exec(ctx, "DELETE FROM team_members WHERE team_id = $1", tm.TeamID); err != nil {
		return t.fail(ctx, err)
	}
	return t.insertMembers(ctx, tm)
}

// insertMembers mirrors tm.Members into team_members (a duplicated user
// keeps its first role, as Team.Member would find it).
func (t *tx) insertMembers(ctx context.Context, tm store.Team) error {
	if len(tm.Members) == 0 {
		return nil
	}
	users, roles := make([]string, 0, len(tm.Members)), make([]string, 0, len(tm.Members))
	for _, m := range tm.Members {
		users = append(users, m.UserID)
		roles = append(roles, m.Role)
	}
	_, err := t.pg.Exec(ctx, `
INSERT INTO team_members (team_id, user_id, role)
SELECT $1, m.user_id, m.role FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS m(user_id, role, ord)
ORDER BY m.ord
ON CONFLICT DO NOTHING`, tm.TeamID, users, roles)
	return t.fail(ctx, err)
}

func (t *tx) DeleteTeam(ctx context.Context, teamID string) error {
	if err := t.check(); err != nil {
		return err
	}
	// team_members rows go with the team (ON DELETE CASCADE).
	tag, err := t.pg.Exec(ctx, "DELETE FROM teams WHERE team_id = $1", teamID)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindTeam, teamID, store.OpDelete, nil)
	// Every key of the team, service-account keys included.
	return t.deleteKeysWhere(ctx, "team_id = $1", teamID)
}

// ---- users

func (t *tx) CreateUser(ctx context.Context, u store.User) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindUser, u)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
INSERT INTO users (user_id, user_role, created_at, created_ns, doc, budget_reset_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING`, u.UserID, u.UserRole, u.CreatedAt, nanos(u.CreatedAt), doc, u.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: "user_id"}
	}
	t.record(store.KindUser, u.UserID, store.OpPut, doc)
	return nil
}

func (t *tx) UpdateUser(ctx context.Context, u store.User) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindUser, u)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
UPDATE users SET user_role = $2, created_at = $3, created_ns = $4, doc = $5, budget_reset_at = $6
WHERE user_id = $1`, u.UserID, u.UserRole, u.CreatedAt, nanos(u.CreatedAt), doc, u.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindUser, u.UserID, store.OpPut, doc)
	return nil
}

// DeleteUser deletes the user, its keys (never service-account keys) and its
// team and organization memberships, recording every entity it changes.
func (t *tx) DeleteUser(ctx context.Context, userID string) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "DELETE FROM users WHERE user_id = $1", userID)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindUser, userID, store.OpDelete, nil)
	if err := t.deleteKeysWhere(ctx, "user_id = $1 AND NOT service_account", userID); err != nil {
		return err
	}

	// Teams: found through team_members, rewritten in Go so the stored doc
	// stays exactly what encoding/json writes for a Team.
	teams, err := lockDocs[store.Team](ctx, t, `
SELECT t.doc FROM teams t
WHERE t.team_id IN (SELECT team_id FROM team_members WHERE user_id = $1)
ORDER BY t.team_id
FOR UPDATE OF t`, userID)
	if err != nil {
		return err
	}
	for _, tm := range teams {
		tm.Members = removeTeamMember(tm.Members, userID)
		doc, err := marshal(store.KindTeam, tm)
		if err != nil {
			return err
		}
		if err := t.writeTeam(ctx, tm, doc); err != nil {
			return err
		}
		t.record(store.KindTeam, tm.TeamID, store.OpPut, doc)
	}

	// Organizations: members live only in the doc; the GIN index on
	// doc->'members' answers the containment query.
	probe, err := json.Marshal([]map[string]string{{"user_id": userID}})
	if err != nil {
		return err
	}
	orgs, err := lockDocs[store.Organization](ctx, t, `
SELECT doc FROM organizations WHERE doc -> 'members' @> $1::jsonb
ORDER BY organization_id
FOR UPDATE`, string(probe))
	if err != nil {
		return err
	}
	for _, o := range orgs {
		o.Members = removeOrgMember(o.Members, userID)
		doc, err := marshal(store.KindOrganization, o)
		if err != nil {
			return err
		}
		if _, err := t.pg.Exec(ctx, "UPDATE organizations SET doc = $2 WHERE organization_id = $1", o.OrganizationID, doc); err != nil {
			return t.fail(ctx, err)
		}
		t.record(store.KindOrganization, o.OrganizationID, store.OpPut, doc)
	}
	return nil
}

// lockDocs reads and decodes the docs a query returns.
func lockDocs[T any](ctx context.Context, t *tx, sql string, args ...any) ([]T, error) {
	rows, err := t.pg.Query(ctx, sql, args...)
	if err != nil {
		return nil, t.fail(ctx, err)
	}
	return collect[T](ctx, &t.reader, table{kind: "row"}, rows)
}

func removeTeamMember(ms []store.TeamMember, userID string) []store.TeamMember {
	out := ms[:0:0]
	for _, m := range ms {
		if m.UserID != userID {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func removeOrgMember(ms []store.OrgMember, userID string) []store.OrgMember {
	out := ms[:0:0]
	for _, m := range ms {
		if m.UserID != userID {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// ---- organizations

func (t *tx) CreateOrganization(ctx context.Context, o store.Organization) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindOrganization, o)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
INSERT INTO organizations (organization_id, created_at, created_ns, doc, budget_reset_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING`, o.OrganizationID, o.CreatedAt, nanos(o.CreatedAt), doc, o.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: "organization_id"}
	}
	t.record(store.KindOrganization, o.OrganizationID, store.OpPut, doc)
	return nil
}

func (t *tx) UpdateOrganization(ctx context.Context, o store.Organization) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindOrganization, o)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
UPDATE organizations SET created_at = $2, created_ns = $3, doc = $4, budget_reset_at = $5
WHERE organization_id = $1`, o.OrganizationID, o.CreatedAt, nanos(o.CreatedAt), doc, o.BudgetResetAt)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindOrganization, o.OrganizationID, store.OpPut, doc)
	return nil
}

// DeleteOrganization deletes the organization and clears organization_id on
// its teams and keys, recording each of them.
func (t *tx) DeleteOrganization(ctx context.Context, orgID string) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "DELETE FROM organizations WHERE organization_id = $1", orgID)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindOrganization, orgID, store.OpDelete, nil)
	// The field is omitempty, so removing it from the doc is exactly what
	// encoding/json writes for an empty OrganizationID.
	for _, c := range []struct{ table, id, kind string }{
		{"teams", "team_id", store.KindTeam},
		{"keys", "token_id", store.KindKey},
	} {
		rows, err := t.pg.Query(ctx, "UPDATE "+c.table+
			" SET organization_id = NULL, doc = doc - 'organization_id' WHERE organization_id = $1 RETURNING "+c.id+", doc", orgID)
		if err != nil {
			return t.fail(ctx, err)
		}
		type row struct {
			ID  string
			Doc []byte
		}
		updated, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		if err != nil {
			return t.fail(ctx, err)
		}
		for _, r := range updated {
			t.record(c.kind, r.ID, store.OpPut, r.Doc)
		}
	}
	return nil
}

// ---- models

func (t *tx) CreateModel(ctx context.Context, m store.Model) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindModel, m)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
INSERT INTO models (id, model_name, created_at, doc) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING`, m.ID, m.ModelName, m.CreatedAt, doc)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: "id"}
	}
	t.record(store.KindModel, m.ID, store.OpPut, doc)
	return nil
}

func (t *tx) UpdateModel(ctx context.Context, m store.Model) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindModel, m)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "UPDATE models SET model_name = $2, created_at = $3, doc = $4 WHERE id = $1",
		m.ID, m.ModelName, m.CreatedAt, doc)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindModel, m.ID, store.OpPut, doc)
	return nil
}

func (t *tx) DeleteModel(ctx context.Context, id string) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "DELETE FROM models WHERE id = $1", id)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	t.record(store.KindModel, id, store.OpDelete, nil)
	return nil
}

// ---- settings and audit

// SettingsID is the entity id of the settings in change records (there is
// one settings object).
const SettingsID = "settings"

func (t *tx) PutSettings(ctx context.Context, st store.Settings) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindSettings, st)
	if err != nil {
		return err
	}
	_, err = t.pg.Exec(ctx, `
INSERT INTO settings (id, doc) VALUES (true, $1)
ON CONFLICT (id) DO UPDATE SET doc = excluded.doc`, doc)
	if err != nil {
		return t.fail(ctx, err)
	}
	t.record(store.KindSettings, SettingsID, store.OpPut, doc)
	return nil
}

func (t *tx) AppendAudit(ctx context.Context, e store.AuditEntry) error {
	if err := t.check(); err != nil {
		return err
	}
	if e.ID == "" {
		var b [16]byte
		if _, err := cryptoRand(b[:]); err != nil {
			return err
		}
		e.ID = hex.EncodeToString(b[:])
	}
	doc, err := marshal("audit", e)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, `
INSERT INTO audit (id, object_type, object_id, caller, created_at, created_ns, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING`, e.ID, e.ObjectType, e.ObjectID, e.Caller, e.CreatedAt, nanos(e.CreatedAt), doc)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: "id"}
	}
	// No change record: audit rows are not synced to data planes.
	return nil
}

var cryptoRand = crand.Read
