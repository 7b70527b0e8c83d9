package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var listTests = []test{
	{"KeysPages", testListKeysPages},
	{"CreationOrderTiesByID", testListTiesByID},
	{"PageSizeDefaultAndClamp", testListPageSize},
	{"KeyFilters", testListKeyFilters},
	{"Teams", testListTeams},
	{"Users", testListUsers},
	{"Organizations", testListOrganizations},
	{"EmptyStore", testListEmpty},
	{"Each", testEach},
}

// pages reads every page of a listing with the given size and checks the
// totals agree.
func pages[T any](t testing.TB, size int, list func(store.Page) ([]T, int, error)) (all []T, total int) {
	t.Helper()
	total = -1
	for p := 1; ; p++ {
		items, n, err := list(store.Page{Page: p, Size: size})
		if err != nil {
			t.Fatalf("page %d: %v", p, err)
		}
		if total >= 0 && n != total {
			t.Fatalf("page %d: total %d, page 1 said %d", p, n, total)
		}
		total = n
		if len(items) > size {
			t.Fatalf("page %d: %d items, size %d", p, len(items), size)
		}
		if len(items) == 0 {
			return all, total
		}
		all = append(all, items...)
		if p > 1000 {
			t.Fatal("listing does not end")
		}
	}
}

func testListKeysPages(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Created out of id order, in increasing creation time, over several
	// transactions.
	var want []string
	for n := range 25 {
		want = append(want, fmt.Sprintf("k%02d", (n*7)%25)) // a permutation of 0..24
	}
	for tx := range 5 {
		write(t, s, func(ctx context.Context, txn store.Tx) error {
			for i := range 5 {
				n := tx*5 + i
				if err := txn.CreateKey(ctx, newKey(want[n], at(n))); err != nil {
					return err
				}
			}
			return nil
		})
	}
	r := s.Read()
	for _, size := range []int{1, 7, 10, 25, 26} {
		got, total := pages(t, size, func(p store.Page) ([]store.Key, int, error) {
			return r.ListKeys(ctx, store.KeyFilter{Page: p})
		})
		if total != 25 {
			t.Errorf("size %d: total %d, want 25", size, total)
		}
		if gotIDs := ids(got, keyID); !slices.Equal(gotIDs, want) {
			t.Errorf("size %d: keys across pages\n got  %v\n want %v (creation order)", size, gotIDs, want)
		}
	}
	// Exact page boundaries: 10, 10, 5, then nothing.
	for p, n := range map[int]int{1: 10, 2: 10, 3: 5, 4: 0, 100: 0} {
		items, total, err := r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: p, Size: 10}})
		if err != nil || len(items) != n || total != 25 {
			t.Errorf("page %d size 10: %d keys, total %d, %v; want %d, 25", p, len(items), total, err, n)
		}
	}
	// Page 0 and negative pages are page 1.
	first, _, _ := r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: 1, Size: 3}})
	for _, p := range []int{0, -1} {
		items, _, err := r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: p, Size: 3}})
		if err != nil || !slices.Equal(ids(items, keyID), ids(first, keyID)) {
			t.Errorf("page %d = %v, %v; want page 1 %v", p, ids(items, keyID), err, ids(first, keyID))
		}
	}
	// An update does not move a key: order is by creation.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k := newKey(want[0], at(0))
		k.UpdatedAt = at(1000)
		k.Spend = 5
		return tx.UpdateKey(ctx, k)
	})
	got, _ := pages(t, 25, func(p store.Page) ([]store.Key, int, error) { return r.ListKeys(ctx, store.KeyFilter{Page: p}) })
	if gotIDs := ids(got, keyID); !slices.Equal(gotIDs, want) {
		t.Errorf("after an update: %v, want %v", gotIDs, want)
	}
}

// testListTiesByID: objects created at the same instant are ordered by id,
// whatever order they were written in.
func testListTiesByID(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var errs []error
		for _, id := range []string{"c", "a", "b"} {
			errs = append(errs, tx.CreateKey(ctx, newKey("k-"+id, t0)), tx.CreateTeam(ctx, newTeam("t-"+id, t0)),
				tx.CreateUser(ctx, newUser("u-"+id, t0)), tx.CreateOrganization(ctx, newOrg("o-"+id, t0)))
		}
		// One older object written last comes first.
		errs = append(errs, tx.CreateKey(ctx, newKey("k-z", t0.Add(-1e6))), tx.CreateTeam(ctx, newTeam("t-z", t0.Add(-1e6))),
			tx.CreateUser(ctx, newUser("u-z", t0.Add(-1e6))), tx.CreateOrganization(ctx, newOrg("o-z", t0.Add(-1e6))))
		return errors.Join(errs...)
	})
	r := s.Read()
	for prefix, list := range map[string]func(store.Page) ([]string, error){
		"k-": func(p store.Page) ([]string, error) {
			v, _, err := r.ListKeys(ctx, store.KeyFilter{Page: p})
			return ids(v, keyID), err
		},
		"t-": func(p store.Page) ([]string, error) {
			v, _, err := r.ListTeams(ctx, store.TeamFilter{Page: p})
			return ids(v, teamID), err
		},
		"u-": func(p store.Page) ([]string, error) {
			v, _, err := r.ListUsers(ctx, store.UserFilter{Page: p})
			return ids(v, userID), err
		},
		"o-": func(p store.Page) ([]string, error) {
			v, _, err := r.ListOrganizations(ctx, p)
			return ids(v, orgID), err
		},
	} {
		want := []string{prefix + "z", prefix + "a", prefix + "b", prefix + "c"}
		got, err := list(store.Page{})
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s list = %v, %v; want %v", prefix, got, err, want)
		}
		// Stable across pages of 1.
		var paged []string
		for p := 1; p <= 4; p++ {
			one, err := list(store.Page{Page: p, Size: 1})
			if err != nil {
				t.Fatal(err)
			}
			paged = append(paged, one...)
		}
		if !slices.Equal(paged, want) {
			t.Errorf("%s pages of 1 = %v, want %v", prefix, paged, want)
		}
	}
}

func testListPageSize(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = store.MaxPageSize + 20
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := range n {
			if err := tx.CreateKey(ctx, newKey(fmt.Sprintf("k%03d", i), at(i))); err != nil {
				return err
			}
			if err := tx.CreateUser(ctx, newUser(fmt.Sprintf("u%03d", i), at(i))); err != nil {
				return err
			}
		}
		return nil
	})
	r := s.Read()
	for _, c := range []struct {
		size, want int
	}{{0, 50}, {-5, 50}, {store.MaxPageSize, store.MaxPageSize}, {store.MaxPageSize + 1, store.MaxPageSize}, {1 << 30, store.MaxPageSize}} {
		keys, total, err := r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Size: c.size}})
		if err != nil || len(keys) != c.want || total != n {
			t.Errorf("ListKeys size %d: %d keys, total %d, %v; want %d, total %d", c.size, len(keys), total, err, c.want, n)
		}
		users, total, err := r.ListUsers(ctx, store.UserFilter{Page: store.Page{Size: c.size}})
		if err != nil || len(users) != c.want || total != n {
			t.Errorf("ListUsers size %d: %d users, total %d, %v; want %d, total %d", c.size, len(users), total, err, c.want, n)
		}
	}
	// A clamped page 2 continues where the clamped page 1 ended.
	keys, _, err := r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: 2, Size: 1000}})
	if err != nil || len(keys) != n-store.MaxPageSize || keys[0].TokenID != fmt.Sprintf("k%03d", store.MaxPageSize) {
		t.Errorf("ListKeys page 2 size 1000: %d keys, %v", len(keys), err)
	}
}

func testListKeyFilters(t *testing.T, s store.Store) {
	ctx := t.Context()
	type spec struct{ id, user, team, org, alias string }
	specs := []spec{
		{"k0", "alice", "", "", "personal-a"},
		{"k1", "alice", "t1", "o1", ""},
		{"k2", "bob", "t1", "o1", "bob-t1"},
		{"k3", "", "t1", "o1", "sa"}, // service account
		{"k4", "bob", "t2", "", ""},
		{"k5", "alice", "t2", "o2", ""},
		{"k6", "", "", "o1", ""},
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i, sp := range specs {
			k := newKey(sp.id, at(i))
			k.UserID, k.TeamID, k.OrganizationID, k.KeyAlias = sp.user, sp.team, sp.org, sp.alias
			k.ServiceAccount = sp.user == "" && sp.team != ""
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
	r := s.Read()
	for _, c := range []struct {
		f    store.KeyFilter
		want []string
	}{
		{store.KeyFilter{}, []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6"}},
		{store.KeyFilter{UserID: "alice"}, []string{"k0", "k1", "k5"}},
		{store.KeyFilter{TeamID: "t1"}, []string{"k1", "k2", "k3"}},
		{store.KeyFilter{OrganizationID: "o1"}, []string{"k1", "k2", "k3", "k6"}},
		{store.KeyFilter{KeyAlias: "bob-t1"}, []string{"k2"}},
		{store.KeyFilter{UserID: "alice", TeamID: "t2"}, []string{"k5"}},
		{store.KeyFilter{UserID: "bob", OrganizationID: "o1"}, []string{"k2"}},
		{store.KeyFilter{TeamID: "t1", OrganizationID: "o1", UserID: "bob", KeyAlias: "bob-t1"}, []string{"k2"}},
		{store.KeyFilter{UserID: "nobody"}, nil},
		{store.KeyFilter{TeamID: "t1", KeyAlias: "personal-a"}, nil},
	} {
		got, total := pages(t, 2, func(p store.Page) ([]store.Key, int, error) {
			f := c.f
			f.Page = p
			return r.ListKeys(ctx, f)
		})
		if gotIDs := ids(got, keyID); !slices.Equal(gotIDs, c.want) || total != len(c.want) {
			t.Errorf("ListKeys(%+v) = %v total %d, want %v", c.f, gotIDs, total, c.want)
		}
	}
}

func testListTeams(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var errs []error
		for i, sp := range []struct {
			id, org string
			members []string
		}{
			{"t0", "o1", []string{"alice", "bob"}},
			{"t1", "", []string{"bob"}},
			{"t2", "o1", nil},
			{"t3", "o2", []string{"alice"}},
			{"t4", "o1", []string{"carol", "alice"}},
		} {
			tm := newTeam(sp.id, at(i))
			tm.OrganizationID = sp.org
			for _, m := range sp.members {
				tm.Members = append(tm.Members, store.TeamMember{UserID: m, Role: store.TeamRoleUser})
			}
			errs = append(errs, tx.CreateTeam(ctx, tm))
		}
		return errors.Join(errs...)
	})
	r := s.Read()
	check := func(f store.TeamFilter, want ...string) {
		t.Helper()
		got, total := pages(t, 2, func(p store.Page) ([]store.Team, int, error) {
			f.Page = p
			return r.ListTeams(ctx, f)
		})
		if gotIDs := ids(got, teamID); !slices.Equal(gotIDs, want) || total != len(want) {
			t.Errorf("ListTeams(%+v) = %v total %d, want %v", f, gotIDs, total, want)
		}
	}
	check(store.TeamFilter{}, "t0", "t1", "t2", "t3", "t4")
	check(store.TeamFilter{OrganizationID: "o1"}, "t0", "t2", "t4")
	check(store.TeamFilter{UserID: "alice"}, "t0", "t3", "t4")
	check(store.TeamFilter{UserID: "alice", OrganizationID: "o1"}, "t0", "t4")
	check(store.TeamFilter{UserID: "nobody"})

	// Membership follows updates.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		tm, err := tx.GetTeam(ctx, "t0")
		if err != nil {
			return err
		}
		tm.Members = []store.TeamMember{{UserID: "bob", Role: store.TeamRoleAdmin}}
		tm.OrganizationID = "o2"
		return tx.UpdateTeam(ctx, tm)
	})
	check(store.TeamFilter{UserID: "alice"}, "t3", "t4")
	check(store.TeamFilter{UserID: "bob"}, "t0", "t1")
	check(store.TeamFilter{OrganizationID: "o2"}, "t0", "t3")
}

func testListUsers(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var errs []error
		for i, sp := range []struct{ id, role string }{
			{"alice", store.RoleInternalUser},
			{"bob", store.RoleProxyAdmin},
			{"carol", store.RoleInternalUser},
			{"dave", store.RoleInternalUserViewer},
			{"erin", store.RoleInternalUser},
		} {
			u := newUser(sp.id, at(i))
			u.UserRole = sp.role
			if sp.id == "bob" || sp.id == "dave" {
				u.UserEmail = "shared@example.com"
			}
			errs = append(errs, tx.CreateUser(ctx, u))
		}
		tm := newTeam("t1", at(0))
		tm.Members = []store.TeamMember{{UserID: "erin", Role: store.TeamRoleUser}, {UserID: "alice", Role: store.TeamRoleAdmin},
			{UserID: "bob", Role: store.TeamRoleUser}}
		errs = append(errs, tx.CreateTeam(ctx, tm))
		return errors.Join(errs...)
	})
	r := s.Read()
	check := func(f store.UserFilter, want ...string) {
		t.Helper()
		got, total := pages(t, 2, func(p store.Page) ([]store.User, int, error) {
			f.Page = p
			return r.ListUsers(ctx, f)
		})
		if gotIDs := ids(got, userID); !slices.Equal(gotIDs, want) || total != len(want) {
			t.Errorf("ListUsers(%+v) = %v total %d, want %v", f, gotIDs, total, want)
		}
	}
	check(store.UserFilter{}, "alice", "bob", "carol", "dave", "erin")
	check(store.UserFilter{UserRole: store.RoleInternalUser}, "alice", "carol", "erin")
	check(store.UserFilter{TeamID: "t1"}, "alice", "bob", "erin") // creation order, not member order
	check(store.UserFilter{TeamID: "t1", UserRole: store.RoleInternalUser}, "alice", "erin")
	check(store.UserFilter{TeamID: "nope"})
	check(store.UserFilter{UserEmail: "shared@example.com"}, "bob", "dave")
	check(store.UserFilter{UserEmail: "shared@example.com", TeamID: "t1"}, "bob")
	check(store.UserFilter{UserEmail: "Shared@example.com"})

	// A role change moves the user between role filters.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		u, err := tx.GetUser(ctx, "carol")
		if err != nil {
			return err
		}
		u.UserRole = store.RoleProxyAdmin
		return tx.UpdateUser(ctx, u)
	})
	check(store.UserFilter{UserRole: store.RoleProxyAdmin}, "bob", "carol")
}

func testListOrganizations(t *testing.T, s store.Store) {
	ctx := t.Context()
	var want []string
	for i := range 12 {
		want = append(want, fmt.Sprintf("o%02d", 11-i))
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i, id := range want {
			if err := tx.CreateOrganization(ctx, newOrg(id, at(i))); err != nil {
				return err
			}
		}
		return nil
	})
	got, total := pages(t, 5, func(p store.Page) ([]store.Organization, int, error) {
		return s.Read().ListOrganizations(ctx, p)
	})
	if gotIDs := ids(got, orgID); !slices.Equal(gotIDs, want) || total != 12 {
		t.Errorf("ListOrganizations = %v total %d, want %v", gotIDs, total, want)
	}
}

func testListEmpty(t *testing.T, s store.Store) {
	ctx := t.Context()
	r := s.Read()
	keys, n1, err1 := r.ListKeys(ctx, store.KeyFilter{})
	teams, n2, err2 := r.ListTeams(ctx, store.TeamFilter{})
	users, n3, err3 := r.ListUsers(ctx, store.UserFilter{})
	orgs, n4, err4 := r.ListOrganizations(ctx, store.Page{})
	models, err5 := r.ListModels(ctx)
	audit, n6, err6 := r.ListAudit(ctx, store.AuditFilter{})
	if err := errors.Join(err1, err2, err3, err4, err5, err6); err != nil {
		t.Fatal(err)
	}
	if len(keys)+len(teams)+len(users)+len(orgs)+len(models)+len(audit) != 0 || n1+n2+n3+n4+n6 != 0 {
		t.Errorf("an empty store lists objects")
	}
}

// testEach: Each* visits every object exactly once, and an error from fn
// stops the iteration and is returned.
func testEach(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = 30
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var errs []error
		for i := range n {
			id := fmt.Sprint(i)
			errs = append(errs, tx.CreateKey(ctx, newKey("k"+id, at(i))), tx.CreateTeam(ctx, newTeam("t"+id, at(i))),
				tx.CreateUser(ctx, newUser("u"+id, at(i))), tx.CreateOrganization(ctx, newOrg("o"+id, at(i))))
		}
		return errors.Join(errs...)
	})
	r := s.Read()
	type each func(fn func(id string) error) error
	for name, e := range map[string]each{
		"EachKey": func(fn func(string) error) error {
			return r.EachKey(ctx, func(v store.Key) error { return fn(v.TokenID) })
		},
		"EachTeam": func(fn func(string) error) error {
			return r.EachTeam(ctx, func(v store.Team) error { return fn(v.TeamID) })
		},
		"EachUser": func(fn func(string) error) error {
			return r.EachUser(ctx, func(v store.User) error { return fn(v.UserID) })
		},
		"EachOrganization": func(fn func(string) error) error {
			return r.EachOrganization(ctx, func(v store.Organization) error { return fn(v.OrganizationID) })
		},
	} {
		seen := map[string]int{}
		if err := e(func(id string) error { seen[id]++; return nil }); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if len(seen) != n {
			t.Errorf("%s visited %d objects, want %d", name, len(seen), n)
		}
		for id, c := range seen {
			if c != 1 {
				t.Errorf("%s visited %s %d times", name, id, c)
			}
		}
		stop := errors.New("stop")
		calls := 0
		err := e(func(string) error {
			calls++
			if calls == 3 {
				return fmt.Errorf("third: %w", stop)
			}
			return nil
		})
		if !errors.Is(err, stop) {
			t.Errorf("%s returned %v, want fn's error", name, err)
		}
		if calls != 3 {
			t.Errorf("%s called fn %d times after it failed on the 3rd", name, calls)
		}
	}
}
