package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var revisionTests = []test{
	{"EmptyStore", testRevisionsEmpty},
	{"OneRevisionPerWriteTransaction", testOneRevisionPerTx},
	{"NoWriteNoRevision", testNoWriteNoRevision},
	{"ChangesPaging", testChangesPaging},
	{"Oldest", testOldest},
	{"ReplayConverges", testReplayConverges},
}

func testRevisionsEmpty(t *testing.T, s store.Store) {
	ctx := t.Context()
	if head, err := s.Head(ctx); err != nil || head != 0 {
		t.Errorf("Head of an empty store = %d, %v; want 0", head, err)
	}
	if oldest, err := s.Oldest(ctx); err != nil || oldest != 1 {
		t.Errorf("Oldest of an empty log = %d, %v; want Head+1 = 1", oldest, err)
	}
	if sets, err := s.Changes(ctx, 0, 10); err != nil || len(sets) != 0 {
		t.Errorf("Changes(0, 10) of an empty store = %s, %v", describeSets(sets), err)
	}
}

// testOneRevisionPerTx: each committed write transaction is one change set,
// however many objects it wrote, with the post-image of each.
func testOneRevisionPerTx(t *testing.T, s store.Store) {
	k, tm, u, o, m, st := fullKey("k"), fullTeam("t"), fullUser("u"), fullOrg("o"), fullModel("m"), fullSettings()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateKey(ctx, k), tx.CreateTeam(ctx, tm), tx.CreateUser(ctx, u),
			tx.CreateOrganization(ctx, o), tx.CreateModel(ctx, m), tx.PutSettings(ctx, st))
	})
	cs := changeSet(t, s, 1)
	if len(cs.Changes) != 6 {
		t.Fatalf("revision 1 = %v, want 6 changes", changeIDs(cs))
	}
	expectPostImage(t, findChange(t, cs, store.KindKey, "k"), k)
	expectPostImage(t, findChange(t, cs, store.KindTeam, "t"), tm)
	expectPostImage(t, findChange(t, cs, store.KindUser, "u"), u)
	expectPostImage(t, findChange(t, cs, store.KindOrganization, "o"), o)
	expectPostImage(t, findChange(t, cs, store.KindModel, "m"), m)
	for _, c := range cs.Changes {
		if c.Kind == store.KindSettings {
			expectPostImage(t, c, st)
		}
	}
	if cs.PrevRevision() != 0 {
		t.Errorf("PrevRevision of revision 1 = %d", cs.PrevRevision())
	}
	if cs.CommittedAt.IsZero() {
		t.Errorf("revision 1 has no CommittedAt")
	}

	k2 := k
	k2.Spend, k2.KeyAlias = 500, "renamed"
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, k2) })
	cs = changeSet(t, s, 2)
	expectChanges(t, cs, "key/k/put")
	expectPostImage(t, cs.Changes[0], k2)

	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.DeleteModel(ctx, "m"), tx.DeleteKey(ctx, "k"), tx.UpdateUser(ctx, newUser("u", t0)))
	})
	cs = changeSet(t, s, 3)
	expectChanges(t, cs, "model/m/delete", "key/k/delete", "user/u/put")
	expectPostImage(t, findChange(t, cs, store.KindUser, "u"), newUser("u", t0))
}

// testNoWriteNoRevision: transactions that only read, only audit, or whose
// writes all failed get no revision.
func testNoWriteNoRevision(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.GetKey(ctx, "k")
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("GetKey: %v", err)
		}
		_, _, err = tx.ListKeys(ctx, store.KeyFilter{})
		return err
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.AppendAudit(ctx, store.AuditEntry{ID: "a1", Action: "created", ObjectType: "key", ObjectID: "x",
			Caller: "master_key", CreatedAt: t0})
	})
	// The writes fail with ErrNotFound and the callback carries on.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, err := range []error{tx.UpdateKey(ctx, newKey("k", t0)), tx.DeleteTeam(ctx, "t"), tx.DeleteUser(ctx, "u")} {
			if !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("write of a missing object: %v", err)
			}
		}
		return nil
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k", t0)) })
	expectChanges(t, changeSet(t, s, 1), "key/k/put")
	if _, n, err := s.Read().ListAudit(ctx, store.AuditFilter{}); err != nil || n != 1 {
		t.Errorf("audit total = %d, %v; want 1", n, err)
	}
	// Nothing else is pending behind it.
	waitHead(t, s, 1)
}

func testChangesPaging(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 6 {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			return tx.CreateKey(ctx, newKey(fmt.Sprint("k", i+1), at(i)))
		})
	}
	waitHead(t, s, 6)
	for _, c := range []struct {
		after int64
		limit int
		want  []int64
	}{
		{0, 2, []int64{1, 2}},
		{2, 2, []int64{3, 4}},
		{4, 10, []int64{5, 6}},
		{3, 1, []int64{4}},
		{0, 1000, []int64{1, 2, 3, 4, 5, 6}},
		{6, 10, nil},
		{100, 10, nil},
	} {
		sets, err := s.Changes(ctx, c.after, c.limit)
		if err != nil {
			t.Errorf("Changes(%d, %d): %v", c.after, c.limit, err)
			continue
		}
		var revs []int64
		for _, cs := range sets {
			revs = append(revs, cs.Revision)
			if want := fmt.Sprint("key/k", cs.Revision, "/put"); !slices.Equal(changeIDs(cs), []string{want}) {
				t.Errorf("revision %d = %v, want [%s]", cs.Revision, changeIDs(cs), want)
			}
		}
		if !slices.Equal(revs, c.want) {
			t.Errorf("Changes(%d, %d) = revisions %v, want %v", c.after, c.limit, revs, c.want)
		}
	}
}

func testOldest(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 3 {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			return tx.CreateKey(ctx, newKey(fmt.Sprint("k", i), at(i)))
		})
	}
	waitHead(t, s, 3)
	oldest, err := s.Oldest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if oldest < 1 || oldest > 4 {
		t.Fatalf("Oldest = %d with Head 3", oldest)
	}
	if oldest <= 3 {
		sets, err := s.Changes(ctx, oldest-1, 1)
		if err != nil || len(sets) != 1 || sets[0].Revision != oldest {
			t.Errorf("Changes(Oldest-1, 1) = %s, %v; want revision %d", describeSets(sets), err, oldest)
		}
	}
}

// testReplayConverges: replaying the whole log from revision 1 gives exactly
// the store's state, after creates, updates, deletes and every cascade.
func testReplayConverges(t *testing.T, s store.Store) {
	history := []func(ctx context.Context, tx store.Tx) error{
		func(ctx context.Context, tx store.Tx) error {
			o := fullOrg("o1")
			o.Members = []store.OrgMember{{UserID: "alice", Role: "org_admin"}, {UserID: "bob", Role: store.RoleInternalUser}}
			tm := fullTeam("t1")
			tm.OrganizationID = "o1"
			tm.Members = []store.TeamMember{{UserID: "alice", Role: store.TeamRoleAdmin}, {UserID: "bob", Role: store.TeamRoleUser}}
			return errors.Join(tx.CreateOrganization(ctx, o), tx.CreateTeam(ctx, tm), tx.CreateTeam(ctx, newTeam("t2", at(1))),
				tx.CreateUser(ctx, fullUser("alice")), tx.CreateUser(ctx, newUser("bob", at(1))),
				tx.CreateModel(ctx, fullModel("m1")), tx.CreateModel(ctx, newModel("m2", "o1")),
				tx.PutSettings(ctx, fullSettings()))
		},
		func(ctx context.Context, tx store.Tx) error {
			var errs []error
			for i, sp := range []struct{ id, user, team, org string }{
				{"k1", "alice", "t1", "o1"}, {"k2", "alice", "", ""}, {"k3", "", "t1", "o1"}, {"k4", "bob", "t2", ""}, {"k5", "bob", "", "o1"},
			} {
				k := fullKey(sp.id)
				k.CreatedAt = at(i)
				k.UserID, k.TeamID, k.OrganizationID = sp.user, sp.team, sp.org
				k.ServiceAccount = sp.user == ""
				errs = append(errs, tx.CreateKey(ctx, k))
			}
			return errors.Join(errs...)
		},
		func(ctx context.Context, tx store.Tx) error {
			k, err := tx.GetKey(ctx, "k4")
			if err != nil {
				return err
			}
			k.Spend += 100
			k.Metadata = json.RawMessage(`{"v":2}`)
			return errors.Join(tx.UpdateKey(ctx, k), tx.UpdateModel(ctx, newModel("m2", "o1-mini")))
		},
		func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "alice") },
		func(ctx context.Context, tx store.Tx) error { return tx.DeleteOrganization(ctx, "o1") },
		func(ctx context.Context, tx store.Tx) error {
			return errors.Join(tx.DeleteTeam(ctx, "t1"), tx.DeleteModel(ctx, "m1"),
				tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(`{"v":3}`), UpdatedAt: at(3)}))
		},
		func(ctx context.Context, tx store.Tx) error {
			return errors.Join(tx.CreateKey(ctx, newKey("k6", at(10))), tx.DeleteKey(ctx, "k5"))
		},
	}
	for i, fn := range history {
		write(t, s, fn)
		// Replaying every prefix converges to the state after it.
		waitHead(t, s, int64(i+1))
		expectReplayed(t, s.Read(), replay(t, allChanges(t, s)))
	}
}

// replayed is the state a data plane holds after applying change sets:
// kind → id → post-image.
type replayed map[string]map[string]json.RawMessage

func replay(t testing.TB, sets []store.ChangeSet) replayed {
	t.Helper()
	st := replayed{}
	for _, cs := range sets {
		for _, c := range cs.Changes {
			if st[c.Kind] == nil {
				st[c.Kind] = map[string]json.RawMessage{}
			}
			switch c.Op {
			case store.OpPut:
				st[c.Kind][c.ID] = c.Data
			case store.OpDelete:
				delete(st[c.Kind], c.ID)
			default:
				t.Fatalf("revision %d: %s/%s has op %q", cs.Revision, c.Kind, c.ID, c.Op)
			}
		}
	}
	return st
}

// expectReplayed checks the replayed state is the state r reads.
func expectReplayed(t testing.TB, r store.Reader, st replayed) {
	t.Helper()
	ctx := context.Background()
	keys := map[string]store.Key{}
	teams := map[string]store.Team{}
	users := map[string]store.User{}
	orgs := map[string]store.Organization{}
	models := map[string]store.Model{}
	endUsers := map[string]store.EndUser{}
	ms, err := r.ListModels(ctx)
	for _, m := range ms {
		models[m.ID] = m
	}
	settings, err2 := r.GetSettings(ctx)
	err = errors.Join(err, err2,
		r.EachKey(ctx, func(v store.Key) error { keys[v.TokenID] = v; return nil }),
		r.EachTeam(ctx, func(v store.Team) error { teams[v.TeamID] = v; return nil }),
		r.EachUser(ctx, func(v store.User) error { users[v.UserID] = v; return nil }),
		r.EachOrganization(ctx, func(v store.Organization) error { orgs[v.OrganizationID] = v; return nil }),
		r.EachEndUser(ctx, func(v store.EndUser) error { endUsers[v.EndUserID] = v; return nil }))
	if err != nil {
		t.Fatalf("reading the store: %v", err)
	}
	expectSameObjects(t, store.KindKey, st[store.KindKey], keys)
	expectSameObjects(t, store.KindTeam, st[store.KindTeam], teams)
	expectSameObjects(t, store.KindUser, st[store.KindUser], users)
	expectSameObjects(t, store.KindOrganization, st[store.KindOrganization], orgs)
	expectSameObjects(t, store.KindModel, st[store.KindModel], models)
	expectSameObjects(t, store.KindEndUser, st[store.KindEndUser], endUsers)
	var rs store.Settings
	switch len(st[store.KindSettings]) {
	case 0:
	case 1:
		for _, d := range st[store.KindSettings] {
			if err := json.Unmarshal(d, &rs); err != nil {
				t.Fatalf("settings post-image %s: %v", d, err)
			}
		}
	default:
		t.Errorf("the log holds %d settings objects, want one", len(st[store.KindSettings]))
	}
	expectEqual(t, "replayed settings", settings, rs)
	for kind := range st {
		switch kind {
		case store.KindKey, store.KindTeam, store.KindUser, store.KindOrganization, store.KindModel, store.KindSettings, store.KindEndUser:
		default:
			t.Errorf("the log holds unknown kind %q", kind)
		}
	}
}

func expectSameObjects[T any](t testing.TB, kind string, log map[string]json.RawMessage, stored map[string]T) {
	t.Helper()
	for id, v := range stored {
		d, ok := log[id]
		if !ok {
			t.Errorf("%s %s is stored but not in the replayed log", kind, id)
			continue
		}
		var got T
		if err := json.Unmarshal(d, &got); err != nil {
			t.Errorf("%s %s: post-image %s: %v", kind, id, d, err)
			continue
		}
		expectEqual(t, "replayed "+kind+" "+id, v, got)
	}
	for id := range log {
		if _, ok := stored[id]; !ok {
			t.Errorf("%s %s is in the replayed log but not stored", kind, id)
		}
	}
}
