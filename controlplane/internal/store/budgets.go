package store

import (
	"context"
	"time"
)

// Budgets (LiteLLM's budget table, LiteLLM_BudgetTable).
//
// A budget is a named set of limits that keys, end users, organizations and
// team memberships link to by BudgetID. It holds limits only: spend stays on
// the linked object (LiteLLM counts spend on the key, customer, org or
// membership, never on the budget row), so two keys linked to one budget
// each get the budget's max_budget.
//
// Budgets live only on the control plane and are never synced (their writes
// record no Change). The management API copies a budget's limits into every
// object linked to it, in the transaction that links it or changes the
// budget, so the proxies enforce a linked object's limits from the object
// itself, exactly like limits set on it directly.

// Budget is one row of the budget table.
type Budget struct {
	BudgetID string `json:"budget_id"`
	// Limits: max_budget, soft_budget, budget_duration, budget_reset_at,
	// rpm_limit, tpm_limit, max_parallel_requests.
	Limits
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	CreatedBy string    `json:"created_by,omitempty"`
	UpdatedBy string    `json:"updated_by,omitempty"`
}

// TeamMemberRef names a team membership.
type TeamMemberRef struct {
	TeamID string `json:"team_id"`
	UserID string `json:"user_id"`
}

// BudgetRefs lists the objects linked to a budget, each list sorted by id
// (memberships by team then user).
type BudgetRefs struct {
	Keys          []string        // token ids
	EndUsers      []string        // end user ids
	Organizations []string        // organization ids
	TeamMembers   []TeamMemberRef // memberships
}

// Empty reports whether nothing links to the budget.
func (r BudgetRefs) Empty() bool {
	return len(r.Keys) == 0 && len(r.EndUsers) == 0 && len(r.Organizations) == 0 && len(r.TeamMembers) == 0
}

// BudgetReader reads budgets (part of Reader).
type BudgetReader interface {
	// GetBudget returns ErrNotFound for an unknown id.
	GetBudget(ctx context.Context, budgetID string) (Budget, error)
	// ListBudgets returns every budget in creation order (ties by id):
	// budgets are tiers, few by nature, and LiteLLM's /budget/list has no
	// paging.
	ListBudgets(ctx context.Context) ([]Budget, error)
	// BudgetRefs returns the keys, end users, organizations and team
	// memberships whose budget_id is budgetID (empty lists when none).
	BudgetRefs(ctx context.Context, budgetID string) (BudgetRefs, error)
}

// BudgetWriter writes budgets (part of Tx). None of these writes records a
// Change: budgets are not synced.
type BudgetWriter interface {
	// CreateBudget fails with a *ConflictError (Field "budget_id") when the
	// id is taken.
	CreateBudget(ctx context.Context, b Budget) error
	// UpdateBudget replaces the budget with the same BudgetID (ErrNotFound
	// if none), keeping its CreatedAt and CreatedBy.
	UpdateBudget(ctx context.Context, b Budget) error
	// DeleteBudget deletes the budget (ErrNotFound if none). It does not
	// look at references: callers refuse to delete a budget in use.
	DeleteBudget(ctx context.Context, budgetID string) error
}
