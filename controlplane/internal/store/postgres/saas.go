package postgres

import (
	"context"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// The SaaS entities (store/saas.go): one row per object with the struct in
// doc, no change records.

var (
	modelGroupKind = table{kind: "model_group"}
	jobKind        = table{kind: "job"}
	jobCallKind    = table{kind: "job_call"}
	creditTxKind   = table{kind: "credit_transaction"}
)

func (r *reader) GetModelGroup(ctx context.Context, name string) (store.ModelGroup, error) {
	return get[store.ModelGroup](ctx, r, modelGroupKind, "SELECT doc FROM model_groups WHERE group_name = $1", name)
}

func (r *reader) ListModelGroups(ctx context.Context) ([]store.ModelGroup, error) {
	rows, err := r.q.Query(ctx, "SELECT doc FROM model_groups ORDER BY group_name")
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return collect[store.ModelGroup](ctx, r, modelGroupKind, rows)
}

func (r *reader) GetJob(ctx context.Context, jobID string) (store.Job, error) {
	return get[store.Job](ctx, r, jobKind, "SELECT doc FROM jobs WHERE job_id = $1", jobID)
}

func (r *reader) ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, int, error) {
	p := f.Page.Normalize()
	var total int
	if err := r.q.QueryRow(ctx, "SELECT count(*) FROM jobs WHERE team_id = $1", f.TeamID).Scan(&total); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	rows, err := r.q.Query(ctx, "SELECT doc FROM jobs WHERE team_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3",
		f.TeamID, p.Size, p.Offset())
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	jobs, err := collect[store.Job](ctx, r, jobKind, rows)
	return jobs, total, err
}

func (r *reader) ListJobCalls(ctx context.Context, jobID string) ([]store.JobCall, error) {
	rows, err := r.q.Query(ctx, "SELECT doc FROM job_calls WHERE job_id = $1 ORDER BY seq", jobID)
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return collect[store.JobCall](ctx, r, jobCallKind, rows)
}

func (r *reader) ListCreditTransactions(ctx context.Context, teamID string, pg store.Page) ([]store.CreditTransaction, int, error) {
	p := pg.Normalize()
	var total int
	if err := r.q.QueryRow(ctx, "SELECT count(*) FROM credit_transactions WHERE team_id = $1", teamID).Scan(&total); err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	rows, err := r.q.Query(ctx, "SELECT doc FROM credit_transactions WHERE team_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3",
		teamID, p.Size, p.Offset())
	if err != nil {
		return nil, 0, r.fail(ctx, err)
	}
	out, err := collect[store.CreditTransaction](ctx, r, creditTxKind, rows)
	return out, total, err
}

// insert runs an INSERT ... ON CONFLICT DO NOTHING and reports a taken
// primary key as a *ConflictError naming field.
func (t *tx) insert(ctx context.Context, field, sql string, args ...any) error {
	if err := t.check(); err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, sql, args...)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return &store.ConflictError{Field: field}
	}
	return nil
}

func (t *tx) CreateModelGroup(ctx context.Context, g store.ModelGroup) error {
	doc, err := marshal("model_group", g)
	if err != nil {
		return err
	}
	return t.insert(ctx, "group_name", `
INSERT INTO model_groups (group_name, created_at, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		g.Name, g.CreatedAt, doc)
}

func (t *tx) CreateJob(ctx context.Context, j store.Job) error {
	doc, err := marshal("job", j)
	if err != nil {
		return err
	}
	return t.insert(ctx, "job_id", `
INSERT INTO jobs (job_id, team_id, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, j.JobID, j.TeamID, doc)
}

func (t *tx) UpdateJob(ctx context.Context, j store.Job) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal("job", j)
	if err != nil {
		return err
	}
	tag, err := t.pg.Exec(ctx, "UPDATE jobs SET team_id = $2, doc = $3 WHERE job_id = $1", j.JobID, j.TeamID, doc)
	if err != nil {
		return t.fail(ctx, err)
	}
	if tag.RowsAffected() == 0 {
		return store.ErrNotFound
	}
	return nil
}

func (t *tx) AddJobCall(ctx context.Context, c store.JobCall) error {
	doc, err := marshal("job_call", c)
	if err != nil {
		return err
	}
	return t.insert(ctx, "call_id", `
INSERT INTO job_calls (call_id, job_id, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, c.CallID, c.JobID, doc)
}

func (t *tx) AddCreditTransaction(ctx context.Context, c store.CreditTransaction) error {
	doc, err := marshal("credit_transaction", c)
	if err != nil {
		return err
	}
	return t.insert(ctx, "transaction_id", `
INSERT INTO credit_transactions (transaction_id, team_id, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		c.TransactionID, c.TeamID, doc)
}
