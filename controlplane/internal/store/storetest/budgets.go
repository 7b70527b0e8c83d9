package storetest

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var budgetTests = []test{
	{"CRUD", testBudgetCRUD},
	{"ListOrder", testBudgetListOrder},
	{"Refs", testBudgetRefs},
	{"NoRevision", testBudgetNoRevision},
	{"RollsBackWithTx", testBudgetRollback},
}

func testBudgetCRUD(t *testing.T, s store.Store) {
	ctx := context.Background()
	b := store.Budget{BudgetID: "tier-1", Limits: fullLimits(), CreatedAt: at(1), UpdatedAt: at(1), CreatedBy: "admin", UpdatedBy: "admin"}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateBudget(ctx, b) })
	got, err := s.Read().GetBudget(ctx, "tier-1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normBudget(got), normBudget(b)) {
		t.Fatalf("GetBudget: got %+v, want %+v", got, b)
	}
	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateBudget(ctx, store.Budget{BudgetID: "tier-1", CreatedAt: at(2)})
	})
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Field != "budget_id" {
		t.Fatalf("duplicate budget: got %v, want conflict on budget_id", err)
	}
	// Update replaces the limits and keeps created_at / created_by.
	upd := store.Budget{BudgetID: "tier-1", Limits: store.Limits{RPMLimit: ptr(int64(7))}, CreatedAt: at(9), CreatedBy: "other", UpdatedAt: at(5), UpdatedBy: "u2"}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateBudget(ctx, upd) })
	got, err = s.Read().GetBudget(ctx, "tier-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.MaxBudget != nil || got.RPMLimit == nil || *got.RPMLimit != 7 || got.UpdatedBy != "u2" ||
		!got.CreatedAt.Equal(at(1)) || got.CreatedBy != "admin" || !got.UpdatedAt.Equal(at(5)) {
		t.Fatalf("after UpdateBudget: %+v", got)
	}
	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.UpdateBudget(ctx, store.Budget{BudgetID: "nope"})
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateBudget unknown: %v", err)
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteBudget(ctx, "tier-1") })
	if _, err := s.Read().GetBudget(ctx, "tier-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetBudget after delete: %v", err)
	}
	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.DeleteBudget(ctx, "tier-1") })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteBudget twice: %v", err)
	}
}

// normBudget makes times comparable (Postgres keeps microseconds and the
// location differs).
func normBudget(b store.Budget) store.Budget {
	b.CreatedAt, b.UpdatedAt = b.CreatedAt.UTC().Truncate(1000), b.UpdatedAt.UTC().Truncate(1000)
	if b.BudgetResetAt != nil {
		r := b.BudgetResetAt.UTC().Truncate(1000)
		b.BudgetResetAt = &r
	}
	return b
}

func testBudgetListOrder(t *testing.T, s store.Store) {
	ctx := context.Background()
	bs, err := s.Read().ListBudgets(ctx)
	if err != nil || bs == nil || len(bs) != 0 {
		t.Fatalf("ListBudgets on an empty store: %v, %v (want an empty, non-nil slice)", bs, err)
	}
	for i, id := range []string{"c", "a", "b"} {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			return tx.CreateBudget(ctx, store.Budget{BudgetID: id, CreatedAt: at(i), UpdatedAt: at(i)})
		})
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateBudget(ctx, store.Budget{BudgetID: "0tie", CreatedAt: at(2), UpdatedAt: at(2)})
	})
	bs, err = s.Read().ListBudgets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range bs {
		ids = append(ids, b.BudgetID)
	}
	if want := []string{"c", "a", "0tie", "b"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("ListBudgets order: %v, want %v (creation order, ties by id)", ids, want)
	}
}

func testBudgetRefs(t *testing.T, s store.Store) {
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, id := range []string{"b1", "b2"} {
			if err := tx.CreateBudget(ctx, store.Budget{BudgetID: id, CreatedAt: at(0), UpdatedAt: at(0)}); err != nil {
				return err
			}
		}
		for _, k := range []struct{ id, budget string }{{"k2", "b1"}, {"k1", "b1"}, {"k3", "b2"}, {"k4", ""}} {
			key := newKey(k.id, at(1))
			key.BudgetID = k.budget
			// A metadata value that looks like the link must not count.
			if k.id == "k4" {
				key.Metadata = []byte(`{"budget_id":"b1"}`)
			}
			if err := tx.CreateKey(ctx, key); err != nil {
				return err
			}
		}
		o := newOrg("o1", at(1))
		o.BudgetID = "b1"
		if err := tx.CreateOrganization(ctx, o); err != nil {
			return err
		}
		if err := tx.CreateOrganization(ctx, newOrg("o2", at(2))); err != nil {
			return err
		}
		if err := tx.PutEndUser(ctx, store.EndUser{EndUserID: "e1", BudgetID: "b1", RPMLimit: ptr(int64(5)), TPMLimit: ptr(int64(0)), CreatedAt: at(1)}); err != nil {
			return err
		}
		if err := tx.PutEndUser(ctx, store.EndUser{EndUserID: "e2", BudgetID: "b2", CreatedAt: at(1)}); err != nil {
			return err
		}
		tm := newTeam("t1", at(1))
		tm.Members = []store.TeamMember{{UserID: "u2", Role: "user", BudgetID: "b1"}, {UserID: "u1", Role: "user", BudgetID: "b1"}, {UserID: "u3", Role: "user", BudgetID: "b2"}}
		return tx.CreateTeam(ctx, tm)
	})
	refs, err := s.Read().BudgetRefs(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	want := store.BudgetRefs{Keys: []string{"k1", "k2"}, EndUsers: []string{"e1"}, Organizations: []string{"o1"},
		TeamMembers: []store.TeamMemberRef{{TeamID: "t1", UserID: "u1"}, {TeamID: "t1", UserID: "u2"}}}
	if !reflect.DeepEqual(refs, want) {
		t.Fatalf("BudgetRefs(b1) = %+v, want %+v", refs, want)
	}
	// The end user's link and rate limits survive a read back and a spend
	// update.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.ApplySpend(ctx, store.SpendBatch{ProxyID: "p", OutboxID: "o", Records: []store.SpendRecord{
			{Seq: 1, RequestID: "r1", EndUser: "e1", Cost: 3, StartTime: at(5), EndTime: at(6)}}})
		return err
	})
	e, err := s.Read().GetEndUser(ctx, "e1")
	if err != nil || e.BudgetID != "b1" || e.Spend != 3 || e.RPMLimit == nil || *e.RPMLimit != 5 || e.TPMLimit == nil || *e.TPMLimit != 0 {
		t.Fatalf("GetEndUser: %+v, %v", e, err)
	}
	if e, err := s.Read().GetEndUser(ctx, "e2"); err != nil || e.RPMLimit != nil || e.TPMLimit != nil {
		t.Fatalf("GetEndUser without limits: %+v, %v", e, err)
	}
	refs, err = s.Read().BudgetRefs(ctx, "none")
	if err != nil || !refs.Empty() || refs.Keys == nil {
		t.Fatalf("BudgetRefs(none) = %+v, %v; want empty, non-nil lists", refs, err)
	}
	// Unlinking removes the reference.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		e, err := tx.GetEndUser(ctx, "e2")
		if err != nil {
			return err
		}
		e.BudgetID = ""
		return tx.PutEndUser(ctx, e)
	})
	refs, err = s.Read().BudgetRefs(ctx, "b2")
	if err != nil || len(refs.EndUsers) != 0 || len(refs.Keys) != 1 || len(refs.TeamMembers) != 1 {
		t.Fatalf("BudgetRefs(b2) after unlinking e2 = %+v, %v", refs, err)
	}
}

func testBudgetNoRevision(t *testing.T, s store.Store) {
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateBudget(ctx, store.Budget{BudgetID: "b", CreatedAt: at(0)}); err != nil {
			return err
		}
		return tx.UpdateBudget(ctx, store.Budget{BudgetID: "b", UpdatedAt: at(1)})
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteBudget(ctx, "b") })
	if h, err := s.Head(ctx); err != nil || h != 0 {
		t.Fatalf("Head after budget-only writes: %d, %v; want 0", h, err)
	}
}

func testBudgetRollback(t *testing.T, s store.Store) {
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateBudget(ctx, store.Budget{BudgetID: "b", CreatedAt: at(0)}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("ReadWriteTx: %v", err)
	}
	if _, err := s.Read().GetBudget(ctx, "b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("budget after rollback: %v", err)
	}
}
