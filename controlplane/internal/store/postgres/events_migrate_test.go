package postgres_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

// Keys written before 0005 that already rotate are scheduled after it (the
// rotation_at backfill); others are not.
func TestMigrateRotationSchedule(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewEmptyDatabaseURL(t)
	if err := postgres.MigrateTo(ctx, url, 4); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	due := base.Add(time.Hour).In(time.FixedZone("x", 3600))
	rot := key("rot", base)
	rot.AutoRotate, rot.RotationInterval, rot.KeyRotationAt = true, "30d", &due
	off := key("off", base)
	off.KeyRotationAt = &due // a rotation time without auto_rotate
	for _, k := range []store.Key{rot, off} {
		doc, _ := json.Marshal(k)
		if _, err := conn.Exec(ctx, `INSERT INTO keys (token_id, key_hash, created_at, doc) VALUES ($1, $2, $3, $4)`,
			k.TokenID, k.KeyHash, k.CreatedAt, doc); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(ctx)
	s := open(t, url)
	got, err := s.Read().KeysDueForRotation(ctx, due.Add(time.Second), 10)
	if err != nil || len(got) != 1 || got[0].TokenID != "rot" {
		t.Fatalf("KeysDueForRotation after migration: %v, %v", got, err)
	}
	if got, _ := s.Read().KeysDueForRotation(ctx, due.Add(-time.Second), 10); len(got) != 0 {
		t.Fatalf("scheduled early: %v", got)
	}
}

// Objects written before 0007 with a budget_reset_at are on the reset
// schedule after it (the budget_reset_at backfill).
func TestMigrateBudgetResetSchedule(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewEmptyDatabaseURL(t)
	if err := postgres.MigrateTo(ctx, url, 6); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	due := base.Add(time.Hour).In(time.FixedZone("x", 3600))
	k := key("budgeted", base)
	k.BudgetDuration, k.BudgetResetAt = "1d", &due
	doc, _ := json.Marshal(k)
	if _, err := conn.Exec(ctx, `INSERT INTO keys (token_id, key_hash, created_at, doc) VALUES ($1, $2, $3, $4)`,
		k.TokenID, k.KeyHash, k.CreatedAt, doc); err != nil {
		t.Fatal(err)
	}
	tm := store.Team{TeamID: "team", CreatedAt: base, UpdatedAt: base}
	tm.BudgetDuration, tm.BudgetResetAt = "1d", &due
	doc, _ = json.Marshal(tm)
	if _, err := conn.Exec(ctx, `INSERT INTO teams (team_id, created_at, doc) VALUES ($1, $2, $3)`, tm.TeamID, tm.CreatedAt, doc); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	s := open(t, url)
	got, err := s.Read().BudgetResetsDue(ctx, due.Add(time.Second), 10)
	if err != nil || len(got) != 2 || got[0].ID != "budgeted" || got[1].ID != "team" || !got[0].At.Equal(due) {
		t.Fatalf("BudgetResetsDue after migration: %+v, %v", got, err)
	}
	if got, _ := s.Read().BudgetResetsDue(ctx, due, 10); len(got) != 0 {
		t.Fatalf("scheduled early: %v", got)
	}
}
