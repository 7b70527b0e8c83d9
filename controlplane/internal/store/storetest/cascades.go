package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var cascadeTests = []test{
	{"DeleteTeam", testDeleteTeam},
	{"DeleteUser", testDeleteUser},
	{"DeleteOrganization", testDeleteOrganization},
}

// keyIDs lists every key id in the store, in creation order.
func keyIDs(t testing.TB, r store.Reader, f store.KeyFilter) []string {
	t.Helper()
	f.Page = store.Page{Size: store.MaxPageSize}
	keys, _, err := r.ListKeys(context.Background(), f)
	if err != nil {
		t.Fatalf("ListKeys: %v", err)
	}
	return ids(keys, keyID)
}

// testDeleteTeam: the team goes with every key that names it, its
// service-account keys included; its members' other keys and the users stay.
func testDeleteTeam(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		t1 := newTeam("t1", at(0))
		t1.Members = []store.TeamMember{{UserID: "alice", Role: store.TeamRoleAdmin}}
		aliceT1 := newKey("alice-t1", at(1))
		aliceT1.UserID, aliceT1.TeamID = "alice", "t1"
		saT1 := newKey("sa-t1", at(2))
		saT1.TeamID, saT1.ServiceAccount, saT1.KeyAlias = "t1", true, "sa-alias"
		bareT1 := newKey("bare-t1", at(3))
		bareT1.TeamID = "t1"
		aliceT2 := newKey("alice-t2", at(4))
		aliceT2.UserID, aliceT2.TeamID = "alice", "t2"
		alice := newKey("alice", at(5))
		alice.UserID = "alice"
		return errors.Join(tx.CreateUser(ctx, newUser("alice", at(0))), tx.CreateTeam(ctx, t1),
			tx.CreateTeam(ctx, newTeam("t2", at(1))), tx.CreateTeam(ctx, newTeam("empty", at(2))),
			tx.CreateKey(ctx, aliceT1), tx.CreateKey(ctx, saT1), tx.CreateKey(ctx, bareT1),
			tx.CreateKey(ctx, aliceT2), tx.CreateKey(ctx, alice))
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "t1") })
	expectChanges(t, changeSet(t, s, 2), "team/t1/delete", "key/alice-t1/delete", "key/sa-t1/delete", "key/bare-t1/delete")

	r := s.Read()
	_, err := r.GetTeam(ctx, "t1")
	expectNotFound(t, "deleted team", err)
	if got, want := keyIDs(t, r, store.KeyFilter{}), []string{"alice-t2", "alice"}; !slices.Equal(got, want) {
		t.Errorf("keys after DeleteTeam = %v, want %v", got, want)
	}
	if got := keyIDs(t, r, store.KeyFilter{TeamID: "t1"}); len(got) != 0 {
		t.Errorf("keys of the deleted team = %v", got)
	}
	_, err = r.GetKeyByAlias(ctx, "sa-alias")
	expectNotFound(t, "service-account key of the deleted team by alias", err)
	if _, err := r.GetUser(ctx, "alice"); err != nil {
		t.Errorf("the team's member: %v", err)
	}
	if users, n, err := r.ListUsers(ctx, store.UserFilter{TeamID: "t1"}); err != nil || n != 0 || len(users) != 0 {
		t.Errorf("ListUsers of the deleted team = %d users, total %d, %v", len(users), n, err)
	}
	if teams, n, err := r.ListTeams(ctx, store.TeamFilter{UserID: "alice"}); err != nil || n != 0 || len(teams) != 0 {
		t.Errorf("ListTeams of its member = %d teams, total %d, %v", len(teams), n, err)
	}

	// A team without keys: only its own tombstone.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "empty") })
	expectChanges(t, changeSet(t, s, 3), "team/empty/delete")
}

// testDeleteUser: the user goes with every key whose user_id it is and its
// memberships; service-account keys (no user) and everyone else's objects
// stay.
func testDeleteUser(t *testing.T, s store.Store) {
	ctx := t.Context()
	t1 := fullTeam("t1")
	t1.Members = []store.TeamMember{
		{UserID: "alice", Role: store.TeamRoleAdmin},
		{UserID: "bob", Role: store.TeamRoleUser, MaxBudgetInTeam: ptr(int64(5)), Spend: 3},
		{UserID: "carol", Role: store.TeamRoleAdmin},
	}
	t2 := newTeam("t2", at(1))
	t2.Members = []store.TeamMember{{UserID: "alice", Role: store.TeamRoleUser}}
	t3 := newTeam("t3", at(2))
	t3.Members = []store.TeamMember{{UserID: "bob", Role: store.TeamRoleUser}}
	o1 := fullOrg("o1")
	o1.Members = []store.OrgMember{{UserID: "bob", Role: "org_admin"}, {UserID: "alice", Role: store.RoleInternalUser}}
	o2 := newOrg("o2", at(1))
	o2.Members = []store.OrgMember{{UserID: "bob", Role: store.RoleInternalUser}}

	alicePersonal := newKey("alice-personal", at(0))
	alicePersonal.UserID = "alice"
	aliceT1 := newKey("alice-t1", at(1))
	aliceT1.UserID, aliceT1.TeamID, aliceT1.OrganizationID, aliceT1.KeyAlias = "alice", "t1", "o1", "alice-alias"
	saT1 := newKey("sa-t1", at(2))
	saT1.TeamID, saT1.ServiceAccount, saT1.CreatedBy, saT1.UpdatedBy = "t1", true, "alice", "alice"
	bobT1 := newKey("bob-t1", at(3))
	bobT1.UserID, bobT1.TeamID, bobT1.CreatedBy = "bob", "t1", "alice"
	bob := newKey("bob", at(4))
	bob.UserID = "bob"

	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateUser(ctx, newUser("alice", at(0))), tx.CreateUser(ctx, newUser("bob", at(1))),
			tx.CreateUser(ctx, newUser("carol", at(2))),
			tx.CreateTeam(ctx, t1), tx.CreateTeam(ctx, t2), tx.CreateTeam(ctx, t3),
			tx.CreateOrganization(ctx, o1), tx.CreateOrganization(ctx, o2),
			tx.CreateKey(ctx, alicePersonal), tx.CreateKey(ctx, aliceT1), tx.CreateKey(ctx, saT1),
			tx.CreateKey(ctx, bobT1), tx.CreateKey(ctx, bob))
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "alice") })

	wantT1 := t1
	wantT1.Members = []store.TeamMember{t1.Members[1], t1.Members[2]}
	wantT2 := t2
	wantT2.Members = nil
	wantO1 := o1
	wantO1.Members = []store.OrgMember{o1.Members[0]}

	cs := changeSet(t, s, 2)
	expectChanges(t, cs, "user/alice/delete", "key/alice-personal/delete", "key/alice-t1/delete",
		"team/t1/put", "team/t2/put", "organization/o1/put")
	expectPostImage(t, findChange(t, cs, store.KindTeam, "t1"), wantT1)
	expectPostImage(t, findChange(t, cs, store.KindTeam, "t2"), wantT2)
	expectPostImage(t, findChange(t, cs, store.KindOrganization, "o1"), wantO1)

	r := s.Read()
	_, err := r.GetUser(ctx, "alice")
	expectNotFound(t, "deleted user", err)
	if got, want := keyIDs(t, r, store.KeyFilter{}), []string{"sa-t1", "bob-t1", "bob"}; !slices.Equal(got, want) {
		t.Errorf("keys after DeleteUser = %v, want %v", got, want)
	}
	if got, err := r.GetKey(ctx, "sa-t1"); err != nil {
		t.Errorf("service-account key: %v", err)
	} else {
		expectEqual(t, "service-account key", saT1, got)
	}
	_, err = r.GetKeyByAlias(ctx, "alice-alias")
	expectNotFound(t, "deleted user's key by alias", err)
	_, err = r.GetKeyByHash(ctx, alicePersonal.KeyHash)
	expectNotFound(t, "deleted user's key by hash", err)

	for _, c := range []struct {
		id   string
		want store.Team
	}{{"t1", wantT1}, {"t2", wantT2}, {"t3", t3}} {
		if got, err := r.GetTeam(ctx, c.id); err != nil {
			t.Errorf("GetTeam(%s): %v", c.id, err)
		} else {
			expectEqual(t, "team "+c.id, c.want, got)
		}
	}
	for _, c := range []struct {
		id   string
		want store.Organization
	}{{"o1", wantO1}, {"o2", o2}} {
		if got, err := r.GetOrganization(ctx, c.id); err != nil {
			t.Errorf("GetOrganization(%s): %v", c.id, err)
		} else {
			expectEqual(t, "organization "+c.id, c.want, got)
		}
	}
	if teams, n, err := r.ListTeams(ctx, store.TeamFilter{UserID: "alice"}); err != nil || n != 0 || len(teams) != 0 {
		t.Errorf("ListTeams of the deleted user = %v, total %d, %v", ids(teams, teamID), n, err)
	}
	if users, n, err := r.ListUsers(ctx, store.UserFilter{TeamID: "t1"}); err != nil || n != 2 ||
		!slices.Equal(ids(users, userID), []string{"bob", "carol"}) {
		t.Errorf("ListUsers of t1 = %v, total %d, %v; want bob, carol", ids(users, userID), n, err)
	}

	// A user with nothing else: only its own tombstone.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "carol") })
	wantT1.Members = []store.TeamMember{t1.Members[1]}
	cs = changeSet(t, s, 3)
	expectChanges(t, cs, "user/carol/delete", "team/t1/put")
	expectPostImage(t, findChange(t, cs, store.KindTeam, "t1"), wantT1)
}

// testDeleteOrganization: the organization goes; its teams and keys stay
// with organization_id cleared and every other field intact.
func testDeleteOrganization(t *testing.T, s store.Store) {
	ctx := t.Context()
	t1 := fullTeam("t1")
	t1.OrganizationID = "o1"
	t2 := newTeam("t2", at(1))
	t2.OrganizationID = "o2"
	t3 := newTeam("t3", at(2))
	k1 := fullKey("k1")
	k1.OrganizationID, k1.TeamID = "o1", "t1"
	k2 := newKey("k2", at(1))
	k2.OrganizationID, k2.UserID = "o1", "alice"
	k3 := newKey("k3", at(2))
	k3.OrganizationID = "o2"
	o1 := fullOrg("o1")
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateOrganization(ctx, o1), tx.CreateOrganization(ctx, newOrg("o2", at(1))),
			tx.CreateUser(ctx, newUser("alice", at(0))),
			tx.CreateTeam(ctx, t1), tx.CreateTeam(ctx, t2), tx.CreateTeam(ctx, t3),
			tx.CreateKey(ctx, k1), tx.CreateKey(ctx, k2), tx.CreateKey(ctx, k3))
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteOrganization(ctx, "o1") })

	wantT1, wantK1, wantK2 := t1, k1, k2
	wantT1.OrganizationID, wantK1.OrganizationID, wantK2.OrganizationID = "", "", ""
	cs := changeSet(t, s, 2)
	expectChanges(t, cs, "organization/o1/delete", "team/t1/put", "key/k1/put", "key/k2/put")
	expectPostImage(t, findChange(t, cs, store.KindTeam, "t1"), wantT1)
	expectPostImage(t, findChange(t, cs, store.KindKey, "k1"), wantK1)
	expectPostImage(t, findChange(t, cs, store.KindKey, "k2"), wantK2)

	r := s.Read()
	_, err := r.GetOrganization(ctx, "o1")
	expectNotFound(t, "deleted organization", err)
	for _, c := range []struct {
		id   string
		want store.Team
	}{{"t1", wantT1}, {"t2", t2}, {"t3", t3}} {
		if got, err := r.GetTeam(ctx, c.id); err != nil {
			t.Errorf("GetTeam(%s): %v", c.id, err)
		} else {
			expectEqual(t, "team "+c.id, c.want, got)
		}
	}
	for _, c := range []struct {
		id   string
		want store.Key
	}{{"k1", wantK1}, {"k2", wantK2}, {"k3", k3}} {
		if got, err := r.GetKey(ctx, c.id); err != nil {
			t.Errorf("GetKey(%s): %v", c.id, err)
		} else {
			expectEqual(t, "key "+c.id, c.want, got)
		}
	}
	if got := keyIDs(t, r, store.KeyFilter{OrganizationID: "o1"}); len(got) != 0 {
		t.Errorf("keys listed under the deleted organization: %v", got)
	}
	if teams, n, err := r.ListTeams(ctx, store.TeamFilter{OrganizationID: "o1"}); err != nil || n != 0 || len(teams) != 0 {
		t.Errorf("teams listed under the deleted organization: %v, %v", ids(teams, teamID), err)
	}
	if got := keyIDs(t, r, store.KeyFilter{TeamID: "t1"}); !slices.Equal(got, []string{"k1"}) {
		t.Errorf("keys of t1 = %v, want [k1]", got)
	}
	if _, err := r.GetUser(ctx, "alice"); err != nil {
		t.Errorf("user: %v", err)
	}
}
