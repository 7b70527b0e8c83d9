package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
)

// A snapshot's Each* read through a cursor, several pages of it, fetching
// the next page while decoding this one. Pinned here: every row once across
// pages, fn may use the same reader (and nest another Each*) between
// fetches, an error from fn stops the scan and leaves the snapshot usable.
func TestSnapshotEachAcrossCursorPages(t *testing.T) {
	s := pgtest.NewStore(t)
	const n = 12_345 // 2 full pages of 5000 and a partial one
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := range n {
			if err := tx.CreateKey(ctx, key(fmt.Sprintf("k%05d", i), base)); err != nil {
				return err
			}
		}
		for i := range 3 {
			if err := tx.CreateTeam(ctx, store.Team{TeamID: fmt.Sprint("t", i), CreatedAt: base, UpdatedAt: base}); err != nil {
				return err
			}
		}
		return nil
	})
	stop := errors.New("stop")
	err := s.Snapshot(t.Context(), func(_ int64, r store.Reader) error {
		ctx := t.Context()
		seen := make(map[string]int, n)
		teams := 0
		err := r.EachKey(ctx, func(k store.Key) error {
			seen[k.TokenID]++
			if k.KeyHash != key(k.TokenID, base).KeyHash {
				return fmt.Errorf("key %s decoded as %+v", k.TokenID, k)
			}
			if len(seen)%4000 == 1 { // once per page or so: the reader is free
				if _, err := r.GetKey(ctx, k.TokenID); err != nil {
					return fmt.Errorf("GetKey inside EachKey: %w", err)
				}
				if err := r.EachTeam(ctx, func(store.Team) error { teams++; return nil }); err != nil {
					return fmt.Errorf("EachTeam inside EachKey: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(seen) != n {
			return fmt.Errorf("EachKey visited %d keys, want %d", len(seen), n)
		}
		for id, c := range seen {
			if c != 1 {
				return fmt.Errorf("EachKey visited %s %d times", id, c)
			}
		}
		if teams != 3*4 {
			return fmt.Errorf("nested EachTeam visited %d teams, want %d", teams, 3*4)
		}
		calls := 0
		err = r.EachKey(ctx, func(store.Key) error {
			if calls++; calls == 7000 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || calls != 7000 {
			return fmt.Errorf("stopped EachKey: %v after %d calls", err, calls)
		}
		again := 0
		if err := r.EachKey(ctx, func(store.Key) error { again++; return nil }); err != nil || again != n {
			return fmt.Errorf("EachKey after a stopped one: %d keys, %v", again, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
