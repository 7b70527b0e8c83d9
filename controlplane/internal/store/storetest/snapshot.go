package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var snapshotTests = []test{
	{"EmptyStore", testSnapshotEmpty},
	{"QuietStoreMatchesHead", testSnapshotQuiet},
	{"CallbackErrorReturned", testSnapshotError},
}

func testSnapshotEmpty(t *testing.T, s store.Store) {
	snapshot(t, s, func(rev int64, r store.Reader) {
		if rev != 0 {
			t.Errorf("snapshot of an empty store at revision %d", rev)
		}
		expectReplayed(t, r, replayed{})
	})
}

// testSnapshotQuiet: with no write in flight, a snapshot's revision is the
// head and its view is the log replayed up to it, through every Reader
// method.
func testSnapshotQuiet(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 4 {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			tm := newTeam(fmt.Sprint("t", i), at(i))
			tm.Members = []store.TeamMember{{UserID: "u0", Role: store.TeamRoleUser}}
			k := newKey(fmt.Sprint("k", i), at(i))
			k.KeyAlias, k.UserID, k.TeamID = fmt.Sprint("alias", i), "u0", tm.TeamID
			return errors.Join(tx.CreateTeam(ctx, tm), tx.CreateKey(ctx, k), tx.CreateUser(ctx, newUser(fmt.Sprint("u", i), at(i))))
		})
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "k1") })
	waitHead(t, s, 5)
	sets := allChanges(t, s)
	snapshot(t, s, func(rev int64, r store.Reader) {
		if rev != 5 {
			t.Errorf("snapshot at revision %d, Head is 5", rev)
		}
		expectReplayed(t, r, replay(t, sets))
		if k, err := r.GetKeyByAlias(ctx, "alias2"); err != nil || k.TokenID != "k2" {
			t.Errorf("GetKeyByAlias in a snapshot = %q, %v", k.TokenID, err)
		}
		if _, err := r.GetKey(ctx, "k1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleted key in a snapshot: %v", err)
		}
		if keys, n, err := r.ListKeys(ctx, store.KeyFilter{UserID: "u0", Page: store.Page{Size: 2}}); err != nil || n != 3 || len(keys) != 2 {
			t.Errorf("ListKeys in a snapshot = %d keys, total %d, %v; want 2, 3", len(keys), n, err)
		}
		if teams, n, err := r.ListTeams(ctx, store.TeamFilter{UserID: "u0"}); err != nil || n != 4 || len(teams) != 4 {
			t.Errorf("ListTeams in a snapshot = %d teams, total %d, %v; want 4", len(teams), n, err)
		}
	})
}

func testSnapshotError(t *testing.T, s store.Store) {
	stop := errors.New("stop")
	err := s.Snapshot(t.Context(), func(int64, store.Reader) error { return fmt.Errorf("caller: %w", stop) })
	if !errors.Is(err, stop) {
		t.Errorf("Snapshot = %v, want the callback's error", err)
	}
}
