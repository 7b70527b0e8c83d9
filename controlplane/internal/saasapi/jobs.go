package saasapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/events"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// The job operations behind JobService. Each names the caller's team (the
// proxy authenticated its key) and returns the JSON body the client gets.

const maxShortField = 256

func tooLong(s string) bool { return len(s) > maxShortField }

// CreateJob creates a pending job of teamID.
func (s *Service) CreateJob(ctx context.Context, teamID, userID, jobType string, metadata []byte) ([]byte, error) {
	if jobType == "" {
		return nil, fail(http.StatusUnprocessableEntity, "job_type is required")
	}
	if tooLong(jobType) || tooLong(userID) {
		return nil, fail(http.StatusUnprocessableEntity, "job_type and user_id are at most %d bytes", maxShortField)
	}
	md, err := jsonObject(metadata, "metadata")
	if err != nil {
		return nil, err
	}
	j := store.Job{JobID: events.NewID(), TeamID: teamID, UserID: userID, JobType: jobType, Status: store.JobPending,
		Metadata: md, CreatedAt: s.now().UTC()}
	err = s.st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		t, err := getSaaSTeam(ctx, tx, teamID)
		if err != nil {
			return err
		}
		j.OrganizationID = t.OrganizationID
		return tx.CreateJob(ctx, j)
	})
	if err != nil {
		return nil, s.storeError("create job", err)
	}
	return json.Marshal(map[string]any{"job_id": j.JobID, "status": j.Status, "created_at": j.CreatedAt.Format(time.RFC3339Nano)})
}

// teamJob reads a job of teamID: 404 when it does not exist, 403 when it is
// another team's (nothing about that team is revealed).
func teamJob(ctx context.Context, r store.Reader, teamID, jobID string) (store.Job, error) {
	j, err := r.GetJob(ctx, jobID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Job{}, fail(http.StatusNotFound, detailJobNotFound)
	}
	if err != nil {
		return store.Job{}, err
	}
	if j.TeamID != teamID {
		return store.Job{}, fail(http.StatusForbidden, detailJobOtherTeam)
	}
	return j, nil
}

// GetJob returns a job with its call summary.
func (s *Service) GetJob(ctx context.Context, teamID, jobID string) ([]byte, error) {
	r := s.st.Read()
	j, err := teamJob(ctx, r, teamID, jobID)
	if err != nil {
		return nil, s.storeError("get job", err)
	}
	calls, err := r.ListJobCalls(ctx, jobID)
	if err != nil {
		return nil, s.storeError("get job", err)
	}
	v := jobView(&j)
	v["costs"] = summarize(calls)
	v["calls"] = callViews(calls)
	return json.Marshal(v)
}

// StartCall checks that the job can take a call and marks it in_progress.
func (s *Service) StartCall(ctx context.Context, teamID, jobID, group string) ([]byte, error) {
	err := s.st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		j, err := teamJob(ctx, tx, teamID, jobID)
		if err != nil {
			return err
		}
		switch j.Status {
		case store.JobCompleted, store.JobFailed:
			return fail(http.StatusBadRequest, "Job is already %s", j.Status)
		}
		changed := false
		if j.Status == store.JobPending {
			now := s.now().UTC()
			j.Status, j.StartedAt, changed = store.JobInProgress, &now, true
		}
		if group != "" && !slices.Contains(j.ModelGroupsUsed, group) {
			j.ModelGroupsUsed, changed = append(j.ModelGroupsUsed, group), true
		}
		if !changed {
			return nil
		}
		return tx.UpdateJob(ctx, j)
	})
	if err != nil {
		return nil, s.storeError("start call", err)
	}
	return []byte(`{}`), nil
}

// RecordCall stores one attempt of a job's call.
func (s *Service) RecordCall(ctx context.Context, c store.JobCall) ([]byte, error) {
	if c.CallID == "" || c.RequestID == "" || tooLong(c.CallID) || tooLong(c.RequestID) {
		return nil, fail(http.StatusBadRequest, "call_id is required")
	}
	c.CreatedAt = s.now().UTC()
	err := s.st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		j, err := teamJob(ctx, tx, c.TeamID, c.JobID)
		if err != nil {
			return err
		}
		err = tx.AddJobCall(ctx, c)
		if errors.Is(err, store.ErrConflict) {
			return nil // a retried record: stored already
		}
		if err != nil {
			return err
		}
		if j.Status == store.JobCompleted || j.Status == store.JobFailed {
			return nil // kept for the record; the completion's summary is final
		}
		// Rewrite the job row (unchanged) so that a completion racing with
		// this call conflicts with it (Postgres, repeatable read) instead of
		// deciding the credit without seeing the call.
		return tx.UpdateJob(ctx, j)
	})
	if err != nil {
		return nil, s.storeError("record call", err)
	}
	return []byte(`{}`), nil
}

// CompleteJob ends a job exactly once. A completed job with no failed call
// takes one credit (when the team has one left); a failed job takes none. A
// repeated completion changes nothing and returns the same summary.
func (s *Service) CompleteJob(ctx context.Context, teamID, jobID, status string, metadata []byte, errMsg string) ([]byte, error) {
	if status != store.JobCompleted && status != store.JobFailed {
		return nil, fail(http.StatusUnprocessableEntity, "status must be 'completed' or 'failed'")
	}
	md, err := jsonObject(metadata, "metadata")
	if err != nil {
		return nil, err
	}
	if len(errMsg) > 4096 {
		errMsg = errMsg[:4096]
	}
	var (
		j     store.Job
		calls []store.JobCall
		team  store.Team
	)
	err = s.st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		var err error
		if j, err = teamJob(ctx, tx, teamID, jobID); err != nil {
			return err
		}
		if calls, err = tx.ListJobCalls(ctx, jobID); err != nil {
			return err
		}
		if team, err = getSaaSTeam(ctx, tx, teamID); err != nil {
			return err
		}
		if j.Status == store.JobCompleted || j.Status == store.JobFailed {
			return nil // already ended: nothing changes
		}
		now := s.now().UTC()
		j.Status, j.CompletedAt, j.ErrorMessage = status, &now, errMsg
		if md != nil {
			j.Metadata = mergeObjects(j.Metadata, md)
		}
		sum := summarize(calls)
		if status == store.JobCompleted && sum.FailedCalls == 0 && team.SaaS.CreditsRemaining > 0 {
			sa := *team.SaaS
			before := sa.CreditsRemaining
			sa.CreditsRemaining--
			sa.CreditsUsed++
			team.SaaS = &sa
			team.UpdatedAt = now
			if err := tx.UpdateTeam(ctx, team); err != nil {
				return err
			}
			if err := tx.AddCreditTransaction(ctx, store.CreditTransaction{
				TransactionID: events.NewID(), TeamID: teamID, OrganizationID: team.OrganizationID, JobID: jobID,
				Type: store.CreditDeduction, Amount: 1, BalanceBefore: before, BalanceAfter: sa.CreditsRemaining,
				Reason: "Job " + j.JobType + " completed successfully", CreatedAt: now,
			}); err != nil {
				return err
			}
			j.CreditApplied = true
		}
		return tx.UpdateJob(ctx, j)
	})
	if err != nil {
		return nil, s.storeError("complete job", err)
	}
	costs := summarize(calls)
	out := map[string]any{
		"job_id":       j.JobID,
		"status":       j.Status,
		"completed_at": timeOrNil(j.CompletedAt),
		"costs": map[string]any{
			"total_calls":       costs.TotalCalls,
			"successful_calls":  costs.SuccessfulCalls,
			"failed_calls":      costs.FailedCalls,
			"total_attempts":    costs.Attempts,
			"total_tokens":      costs.TotalTokens,
			"total_cost_usd":    costs.TotalCostUSD,
			"avg_latency_ms":    costs.AvgLatencyMS,
			"credit_applied":    j.CreditApplied,
			"credits_remaining": team.SaaS.CreditsRemaining,
		},
		"calls": callViews(calls),
	}
	return json.Marshal(out)
}

// ListJobs lists a team's jobs, newest first.
func (s *Service) ListJobs(ctx context.Context, teamID string, limit, offset int) ([]byte, error) {
	if limit <= 0 || limit > store.MaxPageSize {
		limit = store.MaxPageSize
	}
	if offset < 0 {
		offset = 0
	}
	// The store pages in multiples of limit: read the one or two pages
	// that hold [offset, offset+limit).
	page, skip := offset/limit+1, offset%limit
	jobs, total, err := s.st.Read().ListJobs(ctx, store.JobFilter{TeamID: teamID, Page: store.Page{Page: page, Size: limit}})
	if err != nil {
		return nil, s.storeError("list jobs", err)
	}
	if skip > 0 {
		jobs = jobs[min(skip, len(jobs)):]
		if offset+len(jobs) < total {
			more, _, err := s.st.Read().ListJobs(ctx, store.JobFilter{TeamID: teamID, Page: store.Page{Page: page + 1, Size: limit}})
			if err != nil {
				return nil, s.storeError("list jobs", err)
			}
			jobs = append(jobs, more[:min(skip, len(more))]...)
		}
	}
	views := make([]map[string]any, 0, len(jobs))
	for i := range jobs {
		views = append(views, jobView(&jobs[i]))
	}
	return json.Marshal(map[string]any{"team_id": teamID, "total": total, "jobs": views})
}

// ListTransactions lists a team's credit transactions, newest first.
func (s *Service) ListTransactions(ctx context.Context, teamID string, limit int) ([]byte, error) {
	if limit <= 0 || limit > store.MaxPageSize {
		limit = 50
	}
	txs, total, err := s.st.Read().ListCreditTransactions(ctx, teamID, store.Page{Size: limit})
	if err != nil {
		return nil, s.storeError("list transactions", err)
	}
	views := make([]map[string]any, 0, len(txs))
	for i := range txs {
		views = append(views, txView(&txs[i]))
	}
	return json.Marshal(map[string]any{"team_id": teamID, "total": total, "transactions": views})
}

// summary is a job's cost summary. A call (one LLM call of the API) failed
// when none of its attempts succeeded; failed attempts a fallback recovered
// from count as attempts, not failed calls.
type summary struct {
	TotalCalls      int     `json:"total_calls"`
	SuccessfulCalls int     `json:"successful_calls"`
	FailedCalls     int     `json:"failed_calls"`
	Attempts        int     `json:"total_attempts"`
	TotalTokens     int64   `json:"total_tokens"`
	TotalCostUSD    float64 `json:"total_cost_usd"`
	AvgLatencyMS    int64   `json:"avg_latency_ms"`
}

func summarize(calls []store.JobCall) summary {
	var s summary
	ok := map[string]bool{}
	var order []string
	var cost, lat int64
	for _, c := range calls {
		if _, seen := ok[c.RequestID]; !seen {
			order = append(order, c.RequestID)
			ok[c.RequestID] = false
		}
		if c.Error == "" {
			ok[c.RequestID] = true
		}
		s.Attempts++
		s.TotalTokens += c.TotalTokens
		cost += c.Cost
		lat += c.LatencyMS
	}
	s.TotalCalls = len(order)
	for _, id := range order {
		if ok[id] {
			s.SuccessfulCalls++
		} else {
			s.FailedCalls++
		}
	}
	s.TotalCostUSD = money.ToUSD(cost)
	if s.Attempts > 0 {
		s.AvgLatencyMS = lat / int64(s.Attempts)
	}
	return s
}

// callViews is one entry per API call with its attempts folded in (error
// set only when no attempt succeeded): never the model or the price.
func callViews(calls []store.JobCall) []map[string]any {
	type agg struct {
		call     store.JobCall
		tokens   int64
		latency  int64
		attempts int
		ok       bool
		lastErr  string
	}
	idx := map[string]int{}
	var aggs []*agg
	for _, c := range calls {
		i, seen := idx[c.RequestID]
		if !seen {
			i = len(aggs)
			idx[c.RequestID] = i
			aggs = append(aggs, &agg{call: c})
		}
		a := aggs[i]
		a.tokens += c.TotalTokens
		a.latency += c.LatencyMS
		a.attempts++
		if c.Error == "" {
			a.ok = true
		} else {
			a.lastErr = c.Error
		}
	}
	out := make([]map[string]any, 0, len(aggs))
	for _, a := range aggs {
		var errV any
		if !a.ok {
			errV = a.lastErr
		}
		out = append(out, map[string]any{
			"call_id": a.call.RequestID, "purpose": nilIfEmpty(a.call.Purpose), "model_group": a.call.ModelGroup,
			"tokens": a.tokens, "latency_ms": a.latency, "attempts": a.attempts, "error": errV,
			"created_at": a.call.CreatedAt.Format(time.RFC3339Nano),
		})
	}
	return out
}

func jobView(j *store.Job) map[string]any {
	md := j.Metadata
	if len(md) == 0 {
		md = json.RawMessage(`{}`)
	}
	groups := j.ModelGroupsUsed
	if groups == nil {
		groups = []string{}
	}
	return map[string]any{
		"job_id":            j.JobID,
		"team_id":           j.TeamID,
		"user_id":           nilIfEmpty(j.UserID),
		"job_type":          j.JobType,
		"status":            j.Status,
		"created_at":        j.CreatedAt.Format(time.RFC3339Nano),
		"started_at":        timeOrNil(j.StartedAt),
		"completed_at":      timeOrNil(j.CompletedAt),
		"metadata":          md,
		"error_message":     nilIfEmpty(j.ErrorMessage),
		"credit_applied":    j.CreditApplied,
		"model_groups_used": groups,
	}
}

func txView(t *store.CreditTransaction) map[string]any {
	return map[string]any{
		"transaction_id":   t.TransactionID,
		"team_id":          t.TeamID,
		"organization_id":  nilIfEmpty(t.OrganizationID),
		"job_id":           nilIfEmpty(t.JobID),
		"transaction_type": t.Type,
		"credits_amount":   t.Amount,
		"balance_before":   t.BalanceBefore,
		"balance_after":    t.BalanceAfter,
		"reason":           nilIfEmpty(t.Reason),
		"created_at":       t.CreatedAt.Format(time.RFC3339Nano),
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func timeOrNil(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.Format(time.RFC3339Nano)
}

// mergeObjects returns base with add's fields set (both JSON objects).
func mergeObjects(base, add json.RawMessage) json.RawMessage {
	m := map[string]json.RawMessage{}
	_ = json.Unmarshal(base, &m)
	var a map[string]json.RawMessage
	if json.Unmarshal(add, &a) != nil {
		return base
	}
	for k, v := range a {
		m[k] = v
	}
	out, err := json.Marshal(m)
	if err != nil {
		return base
	}
	return out
}
