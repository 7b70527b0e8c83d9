package storetest

import (
	"context"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var roundTripTests = []test{
	{"Key", testRoundTripKey},
	{"Team", testRoundTripTeam},
	{"User", testRoundTripUser},
	{"Organization", testRoundTripOrganization},
	{"Model", testRoundTripModel},
}

// Every read path returns every field as written: pointers (a pointer to 0
// is not nil), maps, JSON, times, previous hashes. The change log's
// post-image decodes to the same object.

func testRoundTripKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := fullKey("k1")
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, want) })
	expectPostImage(t, findChange(t, changeSet(t, s, 1), store.KindKey, "k1"), want)
	check := func(where string, r store.Reader) {
		t.Helper()
		if got, err := r.GetKey(ctx, "k1"); err != nil {
			t.Errorf("%s GetKey: %v", where, err)
		} else {
			expectEqual(t, where+" GetKey", want, got)
		}
		if got, err := r.GetKeyByHash(ctx, want.KeyHash); err != nil {
			t.Errorf("%s GetKeyByHash: %v", where, err)
		} else {
			expectEqual(t, where+" GetKeyByHash", want, got)
		}
		if got, err := r.GetKeyByAlias(ctx, want.KeyAlias); err != nil {
			t.Errorf("%s GetKeyByAlias: %v", where, err)
		} else {
			expectEqual(t, where+" GetKeyByAlias", want, got)
		}
		if got, n, err := r.ListKeys(ctx, store.KeyFilter{}); err != nil || n != 1 || len(got) != 1 {
			t.Errorf("%s ListKeys = %d keys, total %d, %v", where, len(got), n, err)
		} else {
			expectEqual(t, where+" ListKeys", want, got[0])
		}
		var each []store.Key
		if err := r.EachKey(ctx, func(k store.Key) error { each = append(each, k); return nil }); err != nil || len(each) != 1 {
			t.Errorf("%s EachKey = %d keys, %v", where, len(each), err)
		} else {
			expectEqual(t, where+" EachKey", want, each[0])
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

func testRoundTripTeam(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := fullTeam("t1")
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateTeam(ctx, want) })
	expectPostImage(t, findChange(t, changeSet(t, s, 1), store.KindTeam, "t1"), want)
	check := func(where string, r store.Reader) {
		t.Helper()
		if got, err := r.GetTeam(ctx, "t1"); err != nil {
			t.Errorf("%s GetTeam: %v", where, err)
		} else {
			expectEqual(t, where+" GetTeam", want, got)
		}
		if got, n, err := r.ListTeams(ctx, store.TeamFilter{UserID: "bob"}); err != nil || n != 1 || len(got) != 1 {
			t.Errorf("%s ListTeams = %d teams, total %d, %v", where, len(got), n, err)
		} else {
			expectEqual(t, where+" ListTeams", want, got[0])
		}
		var each []store.Team
		if err := r.EachTeam(ctx, func(v store.Team) error { each = append(each, v); return nil }); err != nil || len(each) != 1 {
			t.Errorf("%s EachTeam = %d teams, %v", where, len(each), err)
		} else {
			expectEqual(t, where+" EachTeam", want, each[0])
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

func testRoundTripUser(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := fullUser("u1")
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, want) })
	expectPostImage(t, findChange(t, changeSet(t, s, 1), store.KindUser, "u1"), want)
	check := func(where string, r store.Reader) {
		t.Helper()
		if got, err := r.GetUser(ctx, "u1"); err != nil {
			t.Errorf("%s GetUser: %v", where, err)
		} else {
			expectEqual(t, where+" GetUser", want, got)
		}
		if got, n, err := r.ListUsers(ctx, store.UserFilter{UserRole: want.UserRole}); err != nil || n != 1 || len(got) != 1 {
			t.Errorf("%s ListUsers = %d users, total %d, %v", where, len(got), n, err)
		} else {
			expectEqual(t, where+" ListUsers", want, got[0])
		}
		var each []store.User
		if err := r.EachUser(ctx, func(v store.User) error { each = append(each, v); return nil }); err != nil || len(each) != 1 {
			t.Errorf("%s EachUser = %d users, %v", where, len(each), err)
		} else {
			expectEqual(t, where+" EachUser", want, each[0])
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

func testRoundTripOrganization(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := fullOrg("o1")
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateOrganization(ctx, want) })
	expectPostImage(t, findChange(t, changeSet(t, s, 1), store.KindOrganization, "o1"), want)
	check := func(where string, r store.Reader) {
		t.Helper()
		if got, err := r.GetOrganization(ctx, "o1"); err != nil {
			t.Errorf("%s GetOrganization: %v", where, err)
		} else {
			expectEqual(t, where+" GetOrganization", want, got)
		}
		if got, n, err := r.ListOrganizations(ctx, store.Page{}); err != nil || n != 1 || len(got) != 1 {
			t.Errorf("%s ListOrganizations = %d orgs, total %d, %v", where, len(got), n, err)
		} else {
			expectEqual(t, where+" ListOrganizations", want, got[0])
		}
		var each []store.Organization
		if err := r.EachOrganization(ctx, func(v store.Organization) error { each = append(each, v); return nil }); err != nil || len(each) != 1 {
			t.Errorf("%s EachOrganization = %d orgs, %v", where, len(each), err)
		} else {
			expectEqual(t, where+" EachOrganization", want, each[0])
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

func testRoundTripModel(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := fullModel("m1")
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateModel(ctx, want) })
	expectPostImage(t, findChange(t, changeSet(t, s, 1), store.KindModel, "m1"), want)
	check := func(where string, r store.Reader) {
		t.Helper()
		if got, err := r.GetModel(ctx, "m1"); err != nil {
			t.Errorf("%s GetModel: %v", where, err)
		} else {
			expectEqual(t, where+" GetModel", want, got)
		}
		if got, err := r.ListModels(ctx); err != nil || len(got) != 1 {
			t.Errorf("%s ListModels = %d models, %v", where, len(got), err)
		} else {
			expectEqual(t, where+" ListModels", want, got[0])
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

// snapshot runs fn in s.Snapshot and fails the test on error.
func snapshot(t testing.TB, s store.Store, fn func(rev int64, r store.Reader)) {
	t.Helper()
	err := s.Snapshot(context.Background(), func(rev int64, r store.Reader) error { fn(rev, r); return nil })
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
}
