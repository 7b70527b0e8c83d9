package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var saasTests = []test{
	{"TeamSaaSRoundTrip", testTeamSaaSRoundTrip},
	{"ModelGroups", testModelGroups},
	{"Jobs", testJobs},
	{"JobCalls", testJobCalls},
	{"CreditTransactions", testCreditTransactions},
	{"NoRevision", testSaaSNoRevision},
	{"RollsBackWithTx", testSaaSRollback},
}

func testTeamSaaSRoundTrip(t *testing.T, s store.Store) {
	tm := newTeam("t1", at(1))
	tm.SaaS = &store.TeamSaaS{
		Status: store.TeamStatusPaused, CreditsAllocated: 10, CreditsUsed: 3, CreditsRemaining: 7,
		ModelGroups: []store.TeamModelGroup{{Name: "g", Models: []string{"b", "a"}}},
		KeyTokenID:  "tok", KeyName: "sk-...abcd",
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateTeam(ctx, tm) })
	got, err := s.Read().GetTeam(context.Background(), "t1")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(tm.SaaS)
	b, _ := json.Marshal(got.SaaS)
	if string(a) != string(b) {
		t.Fatalf("saas part: got %s, want %s", b, a)
	}
}

func testModelGroups(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, n := range []string{"zeta", "alpha"} {
		g := store.ModelGroup{Name: n, DisplayName: "D " + n, Models: []store.ModelGroupModel{{ModelName: "m2", Priority: 1}, {ModelName: "m1", Priority: 0}}, CreatedAt: at(1), UpdatedAt: at(1)}
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateModelGroup(ctx, g) })
	}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateModelGroup(ctx, store.ModelGroup{Name: "alpha", CreatedAt: at(2)})
	})
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Field != "group_name" {
		t.Fatalf("duplicate group: got %v, want conflict on group_name", err)
	}
	g, err := s.Read().GetModelGroup(ctx, "alpha")
	if err != nil || g.DisplayName != "D alpha" || len(g.Models) != 2 || g.Models[0].ModelName != "m2" {
		t.Fatalf("GetModelGroup: %+v, %v", g, err)
	}
	if _, err := s.Read().GetModelGroup(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown group: %v", err)
	}
	gs, err := s.Read().ListModelGroups(ctx)
	if err != nil || len(gs) != 2 || gs[0].Name != "alpha" || gs[1].Name != "zeta" {
		t.Fatalf("ListModelGroups: %+v, %v", gs, err)
	}
}

func testJobs(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := range 5 {
		team := "ta"
		if i%2 == 1 {
			team = "tb"
		}
		j := store.Job{JobID: fmt.Sprintf("job-%d", i), TeamID: team, JobType: "x", Status: store.JobPending,
			Metadata: json.RawMessage(`{"a":1}`), CreatedAt: at(i)}
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateJob(ctx, j) })
	}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateJob(ctx, store.Job{JobID: "job-0", TeamID: "ta"})
	})
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Field != "job_id" {
		t.Fatalf("duplicate job: %v", err)
	}
	jobs, total, err := s.Read().ListJobs(ctx, store.JobFilter{TeamID: "ta", Page: store.Page{Page: 1, Size: 2}})
	if err != nil || total != 3 || len(jobs) != 2 || jobs[0].JobID != "job-4" || jobs[1].JobID != "job-2" {
		t.Fatalf("ListJobs page 1: %v %d %v", jobs, total, err)
	}
	jobs, _, _ = s.Read().ListJobs(ctx, store.JobFilter{TeamID: "ta", Page: store.Page{Page: 2, Size: 2}})
	if len(jobs) != 1 || jobs[0].JobID != "job-0" {
		t.Fatalf("ListJobs page 2: %v", jobs)
	}
	j, err := s.Read().GetJob(ctx, "job-1")
	var md bytes.Buffer
	if err == nil {
		err = json.Compact(&md, j.Metadata)
	}
	if err != nil || j.TeamID != "tb" || md.String() != `{"a":1}` {
		t.Fatalf("GetJob: %+v %v", j, err)
	}
	j.Status, j.CreditApplied = store.JobCompleted, true
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateJob(ctx, j) })
	if j2, _ := s.Read().GetJob(ctx, "job-1"); j2.Status != store.JobCompleted || !j2.CreditApplied {
		t.Fatalf("UpdateJob not applied: %+v", j2)
	}
	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.UpdateJob(ctx, store.Job{JobID: "nope", TeamID: "ta"})
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateJob unknown: %v", err)
	}
	if _, err := s.Read().GetJob(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetJob unknown: %v", err)
	}
}

func testJobCalls(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i, job := range []string{"j1", "j2", "j1", "j1"} {
		c := store.JobCall{CallID: fmt.Sprintf("c%d", i), JobID: job, TeamID: "t", Model: "m", TotalTokens: int64(i), CreatedAt: at(i)}
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.AddJobCall(ctx, c) })
	}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.AddJobCall(ctx, store.JobCall{CallID: "c0", JobID: "j1"})
	})
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Field != "call_id" {
		t.Fatalf("duplicate call: %v", err)
	}
	calls, err := s.Read().ListJobCalls(ctx, "j1")
	if err != nil || len(calls) != 3 || calls[0].CallID != "c0" || calls[1].CallID != "c2" || calls[2].CallID != "c3" {
		t.Fatalf("ListJobCalls: %+v %v", calls, err)
	}
	if calls, _ := s.Read().ListJobCalls(ctx, "none"); len(calls) != 0 {
		t.Fatalf("calls of an unknown job: %v", calls)
	}
}

func testCreditTransactions(t *testing.T, s store.Store) {
	ctx := context.Background()
	bal := int64(0)
	for i := range 4 {
		c := store.CreditTransaction{TransactionID: fmt.Sprintf("x%d", i), TeamID: "t", Type: store.CreditAllocation,
			Amount: 5, BalanceBefore: bal, BalanceAfter: bal + 5, CreatedAt: at(i)}
		bal += 5
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.AddCreditTransaction(ctx, c) })
	}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.AddCreditTransaction(ctx, store.CreditTransaction{TransactionID: "x1", TeamID: "t"})
	})
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Field != "transaction_id" {
		t.Fatalf("duplicate transaction: %v", err)
	}
	txs, total, err := s.Read().ListCreditTransactions(ctx, "t", store.Page{Size: 3})
	if err != nil || total != 4 || len(txs) != 3 || txs[0].TransactionID != "x3" || txs[0].BalanceAfter != 20 {
		t.Fatalf("ListCreditTransactions: %+v %d %v", txs, total, err)
	}
	if txs, total, _ := s.Read().ListCreditTransactions(ctx, "other", store.Page{}); len(txs) != 0 || total != 0 {
		t.Fatalf("other team: %v", txs)
	}
}

// testSaaSNoRevision: the SaaS entities are not synced, so writing them
// alone gives no revision.
func testSaaSNoRevision(t *testing.T, s store.Store) {
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateModelGroup(ctx, store.ModelGroup{Name: "g", CreatedAt: at(0)}); err != nil {
			return err
		}
		if err := tx.CreateJob(ctx, store.Job{JobID: "j", TeamID: "t", CreatedAt: at(0)}); err != nil {
			return err
		}
		if err := tx.AddJobCall(ctx, store.JobCall{CallID: "c", JobID: "j", CreatedAt: at(0)}); err != nil {
			return err
		}
		return tx.AddCreditTransaction(ctx, store.CreditTransaction{TransactionID: "x", TeamID: "t", CreatedAt: at(0)})
	})
	if h, err := s.Head(ctx); err != nil || h != 0 {
		t.Fatalf("Head after SaaS-only writes: %d, %v; want 0", h, err)
	}
}

func testSaaSRollback(t *testing.T, s store.Store) {
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateJob(ctx, store.Job{JobID: "j", TeamID: "t", CreatedAt: at(0)}); err != nil {
			return err
		}
		if err := tx.AddCreditTransaction(ctx, store.CreditTransaction{TransactionID: "x", TeamID: "t", CreatedAt: at(0)}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err := s.Read().GetJob(ctx, "j"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("job survived rollback: %v", err)
	}
	if txs, _, _ := s.Read().ListCreditTransactions(ctx, "t", store.Page{}); len(txs) != 0 {
		t.Fatalf("transaction survived rollback: %v", txs)
	}
}
