package postgres

import (
	"context"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Budgets (store/budgets.go): one row per budget with the struct in doc, no
// change records. BudgetRefs reads the indexes of migration 0012.

var budgetKind = table{kind: "budget"}

func (r *reader) GetBudget(ctx context.Context, id string) (store.Budget, error) {
	return get[store.Budget](ctx, r, budgetKind, "SELECT doc FROM budgets WHERE budget_id = $1", id)
}

func (r *reader) ListBudgets(ctx context.Context) ([]store.Budget, error) {
	rows, err := r.q.Query(ctx, "SELECT doc FROM budgets ORDER BY created_at, created_ns, budget_id")
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return collect[store.Budget](ctx, r, budgetKind, rows)
}

func (r *reader) BudgetRefs(ctx context.Context, id string) (store.BudgetRefs, error) {
	refs := store.BudgetRefs{Keys: []string{}, EndUsers: []string{}, Organizations: []string{}, TeamMembers: []store.TeamMemberRef{}}
	if id == "" {
		return refs, nil
	}
	ids := func(sql string, out *[]string) error {
		rows, err := r.q.Query(ctx, sql, id)
		if err != nil {
			return r.fail(ctx, err)
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				return r.fail(ctx, err)
			}
			*out = append(*out, s)
		}
		if err := rows.Err(); err != nil {
			return r.fail(ctx, err)
		}
		return nil
	}
	if err := ids("SELECT token_id FROM keys WHERE doc ? 'budget_id' AND doc ->> 'budget_id' = $1 ORDER BY token_id", &refs.Keys); err != nil {
		return refs, err
	}
	if err := ids("SELECT end_user_id FROM end_users WHERE budget_id = $1 ORDER BY end_user_id", &refs.EndUsers); err != nil {
		return refs, err
	}
	if err := ids("SELECT organization_id FROM organizations WHERE doc ? 'budget_id' AND doc ->> 'budget_id' = $1 ORDER BY organization_id", &refs.Organizations); err != nil {
		return refs, err
	}
	rows, err := r.q.Query(ctx, `
SELECT t.team_id, m ->> 'user_id'
FROM teams AS t, jsonb_array_elements(t.doc -> 'members') AS m
WHERE t.doc -> 'members' @> jsonb_build_array(jsonb_build_object('budget_id', $1::text))
  AND m ->> 'budget_id' = $1
ORDER BY 1, 2`, id)
	if err != nil {
		return refs, r.fail(ctx, err)
	}
	defer rows.Close()
	for rows.Next() {
		var m store.TeamMemberRef
		if err := rows.Scan(&m.TeamID, &m.UserID); err != nil {
			return refs, r.fail(ctx, err)
		}
		refs.TeamMembers = append(refs.TeamMembers, m)
	}
	if err := rows.Err(); err != nil {
		return refs, r.fail(ctx, err)
	}
	return refs, nil
}

func (t *tx) CreateBudget(ctx context.Context, b store.Budget) error {
	doc, err := marshal("budget", b)
	if err != nil {
		return err
	}
	return t.insert(ctx, "budget_id", `
INSERT INTO budgets (budget_id, created_at, created_ns, doc) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
		b.BudgetID, b.CreatedAt, nanos(b.CreatedAt), doc)
}

func (t *tx) UpdateBudget(ctx context.Context, b store.Budget) error {
	if err := t.check(); err != nil {
		return err
	}
	old, err := t.GetBudget(ctx, b.BudgetID)
	if err != nil {
		return err
	}
	b.CreatedAt, b.CreatedBy = old.CreatedAt, old.CreatedBy
	doc, err := marshal("budget", b)
	if err != nil {
		return err
	}
	if _, err := t.pg.Exec(ctx, "UPDATE budgets SET doc = $2 WHERE budget_id = $1", b.BudgetID, doc); err != nil {
		return t.fail(ctx, err)
	}
	return nil
}

func (t *tx) DeleteBudget(ctx context.Context, id string) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "DELETE FROM budgets WHERE budget_id = $1", id)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}
