package embedded_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

// A schema-2 file (before the outbox) with a rotating key comes out of the
// v3 step with the outbox buckets and the key scheduled.
func TestMigrateV3SchedulesRotatingKeys(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	due := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	rot := newKey("rot", 0)
	rot.AutoRotate, rot.RotationInterval, rot.KeyRotationAt = true, "30d", &due
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, rot); err != nil {
			return err
		}
		return tx.CreateKey(ctx, newKey("plain", 1))
	})
	s.Close()

	// Turn the file back into schema version 2.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{"events", "events_by_id", "events_due", "events_delivered", "keys_by_rotation"} {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return err
			}
		}
		return tx.Bucket(embedded.BucketMeta).Put(embedded.MetaSchemaVersion, binary.BigEndian.AppendUint64(nil, 2))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s2, err := embedded.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.Read().KeysDueForRotation(ctx, due, 10)
	if err != nil || len(got) != 1 || got[0].TokenID != "rot" {
		t.Fatalf("KeysDueForRotation after migration: %v, %v", got, err)
	}
	write(t, s2, func(ctx context.Context, tx store.Tx) error {
		return tx.EnqueueEvent(ctx, store.Event{ID: "e1", Type: store.EventKeyCreated, CreatedAt: due})
	})
}

// A schema-3 file (before the budget-reset schedule) comes out of the v4
// step with every object that has a budget_reset_at scheduled.
func TestMigrateV4SchedulesBudgetResets(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	due := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	k := newKey("budgeted", 0)
	k.BudgetDuration, k.BudgetResetAt = "1d", &due
	tm := store.Team{TeamID: "team", CreatedAt: due, UpdatedAt: due}
	tm.BudgetDuration, tm.BudgetResetAt = "1d", &due
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, k); err != nil {
			return err
		}
		if err := tx.CreateTeam(ctx, tm); err != nil {
			return err
		}
		return tx.CreateKey(ctx, newKey("plain", 1))
	})
	s.Close()

	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket([]byte("budget_resets")); err != nil {
			return err
		}
		return tx.Bucket(embedded.BucketMeta).Put(embedded.MetaSchemaVersion, binary.BigEndian.AppendUint64(nil, 3))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s2, err := embedded.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.Read().BudgetResetsDue(ctx, due.Add(time.Second), 10)
	if err != nil || len(got) != 2 || got[0].Kind != store.KindKey || got[1].Kind != store.KindTeam || !got[0].At.Equal(due) {
		t.Fatalf("BudgetResetsDue after migration: %+v, %v", got, err)
	}
}
