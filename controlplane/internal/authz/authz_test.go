package authz

import (
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

const (
	self     = "u-self"
	mate     = "u-mate"
	stranger = "u-stranger"
	t1       = "team-1" // the caller's team
	t2       = "team-2" // a foreign team
	o1       = "org-1"  // the caller's organization
	o2       = "org-2"
)

func i64(v int64) *int64 { return &v }

// callers are the profiles of the matrix.
func callers() map[string]Caller {
	member := func(role, teamRole string) Caller {
		return Caller{ID: self, Role: role, Teams: map[string]string{t1: teamRole}, Orgs: map[string]string{o1: store.RoleInternalUser}}
	}
	return map[string]Caller{
		"master":   {Master: true, ID: "master_key", Role: store.RoleProxyAdmin},
		"padmin":   {ID: self, Role: store.RoleProxyAdmin},
		"viewer":   {ID: self, Role: store.RoleProxyAdminViewer},
		"tadmin":   member(store.RoleInternalUser, store.TeamRoleAdmin),
		"tuser":    member(store.RoleInternalUser, store.TeamRoleUser),
		"iviewer":  member(store.RoleInternalUserViewer, store.TeamRoleUser),
		"loneuser": {ID: self, Role: store.RoleInternalUser},
		// An active key with no user (a master-key key without user_id, a
		// service-account key) in team-1: it reads itself, nothing else.
		"teamkey": {KeyOnly: true, KeyTokenID: "tok-" + self, KeyTeamID: t1},
		// A team user whose team lists LiteLLM's read-only default in
		// team_member_permissions.
		"tuserro": func() Caller {
			c := member(store.RoleInternalUser, store.TeamRoleUser)
			c.TeamPermissions = map[string][]string{t1: {"/key/info", "/key/health"}}
			return c
		}(),
		// A team admin is not restricted by its team's list.
		"tadminro": func() Caller {
			c := member(store.RoleInternalUser, store.TeamRoleAdmin)
			c.TeamPermissions = map[string][]string{t1: {"/key/info"}}
			return c
		}(),
	}
}

// scope is own, same-team or foreign.
type scope int

const (
	own scope = iota
	sameTeam
	foreign
)

func (s scope) user() string { return [...]string{self, mate, stranger}[s] }
func (s scope) team() string { return [...]string{t1, t1, t2}[s] }
func (s scope) org() string  { return [...]string{o1, o1, o2}[s] }

// target builds the target of action a on an object of scope s.
func target(a Action, s scope) Target {
	key := &Object{TokenID: "tok-" + s.user(), UserID: s.user(), TeamID: s.team()}
	switch a {
	case KeyGenerate:
		return Target{After: key}
	case KeyServiceAccountGenerate:
		return Target{After: &Object{TeamID: s.team(), ServiceAccount: true}}
	case KeyUpdate, KeyRegenerate:
		after := *key
		return Target{Before: key, After: &after}
	case KeyUnblock:
		key.Blocked = true
		return Target{Before: key}
	case KeyInfo, KeyDelete, KeyBlock:
		return Target{Before: key}
	case KeyList, SpendRead:
		return Target{Before: [...]*Object{{UserID: self}, {TeamID: t1}, {UserID: stranger}}[s]}
	case TeamList:
		return Target{Before: [...]*Object{{UserID: self}, {}, {UserID: stranger}}[s]}
	case TeamNew:
		return Target{After: &Object{OrgID: s.org()}}
	case TeamInfo, TeamUpdate, TeamDelete, TeamBlock, TeamUnblock:
		return Target{Before: &Object{TeamID: s.team()}}
	case TeamMemberAdd:
		return Target{After: &Object{UserID: "u-new", TeamID: s.team(), Role: store.TeamRoleUser}}
	case TeamMemberUpdate, TeamMemberDelete:
		b := &Object{UserID: s.user(), TeamID: s.team(), Role: store.TeamRoleUser}
		if s == own {
			b.Role = "" // filled per caller below
		}
		after := *b
		after.MaxBudget = i64(1)
		return Target{Before: b, After: &after}
	case UserInfo, UserDelete:
		return Target{Before: &Object{UserID: s.user(), Role: store.RoleInternalUser}}
	case UserUpdate:
		b := &Object{UserID: s.user(), Role: store.RoleInternalUser}
		after := *b
		return Target{Before: b, After: &after}
	case UserNew:
		return Target{After: &Object{UserID: "u-new"}}
	case OrgInfo, OrgUpdate, OrgDelete, OrgMemberAdd, OrgMemberUpdate, OrgMemberDelete:
		return Target{Before: &Object{OrgID: s.org()}}
	}
	return Target{}
}

// expected holds, per caller profile and action, the outcome on own,
// same-team and foreign objects: A allow, 0 = 400, 1 = 401, 3 = 403, 4 = 404.
var expected = map[string]map[Action]string{
	"viewer": {
		KeyGenerate: "333", KeyServiceAccountGenerate: "333", KeyUpdate: "333", KeyDelete: "333", KeyInfo: "AAA", KeyList: "AAA",
		KeyRegenerate: "333", KeyBlock: "333", KeyUnblock: "333",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "333", TeamMemberDelete: "333", TeamMemberUpdate: "333",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "AAA", TeamList: "AAA",
		UserNew: "333", UserUpdate: "333", UserDelete: "333", UserInfo: "AAA", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "AAA", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "AAA", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AAA", ProxyList: "AAA",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "AAA",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "AAA", BudgetList: "AAA",
	},
	"tadmin": {
		KeyGenerate: "A33", KeyServiceAccountGenerate: "AA3", KeyUpdate: "AA4", KeyDelete: "AA4", KeyInfo: "AA4", KeyList: "AA3",
		KeyRegenerate: "A34", KeyBlock: "AA4", KeyUnblock: "AA4",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "AA4", TeamMemberDelete: "AA4", TeamMemberUpdate: "3A4",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "AA4", TeamList: "AA3",
		UserNew: "333", UserUpdate: "A44", UserDelete: "333", UserInfo: "A44", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "AA4", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "333", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AA3", ProxyList: "333",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "333",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "333", BudgetList: "333",
	},
	"tuser": {
		KeyGenerate: "A33", KeyServiceAccountGenerate: "333", KeyUpdate: "A44", KeyDelete: "A44", KeyInfo: "A44", KeyList: "AA3",
		KeyRegenerate: "A44", KeyBlock: "A44", KeyUnblock: "344",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "334", TeamMemberDelete: "334", TeamMemberUpdate: "334",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "AA4", TeamList: "AA3",
		UserNew: "333", UserUpdate: "A44", UserDelete: "333", UserInfo: "A44", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "AA4", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "333", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AA3", ProxyList: "333",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "333",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "333", BudgetList: "333",
	},
	"iviewer": {
		KeyGenerate: "333", KeyServiceAccountGenerate: "333", KeyUpdate: "333", KeyDelete: "333", KeyInfo: "A44", KeyList: "AA3",
		KeyRegenerate: "333", KeyBlock: "333", KeyUnblock: "333",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "333", TeamMemberDelete: "333", TeamMemberUpdate: "333",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "AA4", TeamList: "AA3",
		UserNew: "333", UserUpdate: "333", UserDelete: "333", UserInfo: "A44", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "AA4", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "333", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AA3", ProxyList: "333",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "333",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "333", BudgetList: "333",
	},
	// tuser with team_member_permissions ["/key/info", "/key/health"] on
	// team-1: only reads its keys there.
	"tuserro": {
		KeyGenerate: "333", KeyServiceAccountGenerate: "333", KeyUpdate: "344", KeyDelete: "344", KeyInfo: "A44", KeyList: "A33",
		KeyRegenerate: "344", KeyBlock: "344", KeyUnblock: "344",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "334", TeamMemberDelete: "334", TeamMemberUpdate: "334",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "AA4", TeamList: "AA3",
		UserNew: "333", UserUpdate: "A44", UserDelete: "333", UserInfo: "A44", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "AA4", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "333", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AA3", ProxyList: "333",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "333",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "333", BudgetList: "333",
	},
	// tadmin's team lists only /key/info: admins are not restricted by it.
	"tadminro": {
		KeyGenerate: "A33", KeyServiceAccountGenerate: "AA3", KeyUpdate: "AA4", KeyDelete: "AA4", KeyInfo: "AA4", KeyList: "AA3",
		KeyRegenerate: "A34", KeyBlock: "AA4", KeyUnblock: "AA4",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "AA4", TeamMemberDelete: "AA4", TeamMemberUpdate: "3A4",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "AA4", TeamList: "AA3",
		UserNew: "333", UserUpdate: "A44", UserDelete: "333", UserInfo: "A44", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "AA4", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "333", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AA3", ProxyList: "333",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "333",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "333", BudgetList: "333",
	},
	// A key without a user: its own key and its own team's info, the model
	// list; other keys and teams are hidden as for anyone; the rest is 401.
	"teamkey": {
		KeyGenerate: "111", KeyServiceAccountGenerate: "111", KeyUpdate: "111", KeyDelete: "111", KeyInfo: "A44", KeyList: "111",
		KeyRegenerate: "111", KeyBlock: "111", KeyUnblock: "111",
		TeamNew: "111", TeamUpdate: "111", TeamDelete: "111", TeamMemberAdd: "111", TeamMemberDelete: "111", TeamMemberUpdate: "111",
		TeamBlock: "111", TeamUnblock: "111", TeamInfo: "AA4", TeamList: "111",
		UserNew: "111", UserUpdate: "111", UserDelete: "111", UserInfo: "111", UserList: "111",
		OrgNew: "111", OrgUpdate: "111", OrgDelete: "111", OrgMemberAdd: "111", OrgMemberUpdate: "111", OrgMemberDelete: "111", OrgInfo: "111", OrgList: "111",
		ModelNew: "111", ModelUpdate: "111", ModelDelete: "111", ModelInfo: "AAA",
		SettingsRead: "111", SettingsUpdate: "111", AuditRead: "111", SpendRead: "111", ProxyList: "111",
		CustomerNew: "111", CustomerUpdate: "111", CustomerDelete: "111", CustomerBlock: "111", CustomerUnblock: "111", CustomerList: "111",
		BudgetNew: "111", BudgetUpdate: "111", BudgetDelete: "111", BudgetInfo: "111", BudgetList: "111",
	},
	// An internal user in no team: team objects are all foreign to it (its
	// "own" key in team-1 it may keep managing, but not create there).
	"loneuser": {
		KeyGenerate: "333", KeyServiceAccountGenerate: "333", KeyUpdate: "A44", KeyDelete: "A44", KeyInfo: "A44", KeyList: "AA3",
		KeyRegenerate: "A44", KeyBlock: "A44", KeyUnblock: "344",
		TeamNew: "333", TeamUpdate: "333", TeamDelete: "333", TeamMemberAdd: "444", TeamMemberDelete: "444", TeamMemberUpdate: "444",
		TeamBlock: "333", TeamUnblock: "333", TeamInfo: "444", TeamList: "AA3",
		UserNew: "333", UserUpdate: "A44", UserDelete: "333", UserInfo: "A44", UserList: "AAA",
		OrgNew: "333", OrgUpdate: "333", OrgDelete: "333", OrgMemberAdd: "333", OrgMemberUpdate: "333", OrgMemberDelete: "333", OrgInfo: "444", OrgList: "AAA",
		ModelNew: "333", ModelUpdate: "333", ModelDelete: "333", ModelInfo: "AAA",
		SettingsRead: "333", SettingsUpdate: "333", AuditRead: "333", SpendRead: "AA3", ProxyList: "333",
		CustomerNew: "333", CustomerUpdate: "333", CustomerDelete: "333", CustomerBlock: "333", CustomerUnblock: "333", CustomerList: "333",
		BudgetNew: "333", BudgetUpdate: "333", BudgetDelete: "333", BudgetInfo: "333", BudgetList: "333",
	},
}

func outcome(d Decision) byte {
	if d.Allowed {
		return 'A'
	}
	switch d.Status {
	case 400:
		return '0'
	case 403:
		return '3'
	case 404:
		return '4'
	case 401:
		return '1'
	}
	return '?'
}

// TestDecideMatrix runs every role against every action on its own, its
// team's and a foreign object.
func TestDecideMatrix(t *testing.T) {
	for name, c := range callers() {
		for _, a := range Actions() {
			want := "AAA"
			if name != "master" && name != "padmin" {
				row, ok := expected[name]
				if !ok {
					t.Fatalf("no expectations for caller %s", name)
				}
				if want, ok = row[a]; !ok {
					t.Fatalf("caller %s has no row for action %s: every action needs one", name, a)
				}
			}
			for s := own; s <= foreign; s++ {
				tg := target(a, s)
				if (a == TeamMemberUpdate || a == TeamMemberDelete) && s == own {
					tg.Before.Role, tg.After.Role = c.Teams[t1], c.Teams[t1]
				}
				d := Decide(c, a, tg)
				if got := outcome(d); got != want[s] {
					t.Errorf("%s %s on %s object: got %c (%d %q), want %c", name, a, [...]string{"own", "same-team", "foreign"}[s], got, d.Status, d.Reason, want[s])
				}
				if !d.Allowed && d.Reason == "" {
					t.Errorf("%s %s: refusal without a reason", name, a)
				}
			}
		}
	}
}

func TestEveryActionHasARow(t *testing.T) {
	for name, row := range expected {
		if len(row) != len(Actions()) {
			t.Errorf("caller %s has %d rows for %d actions", name, len(row), len(Actions()))
		}
	}
}

func TestMasterKeyIsNeverAKeyTarget(t *testing.T) {
	for name, c := range callers() {
		for _, a := range []Action{KeyBlock, KeyDelete, KeyRegenerate, KeyUpdate, KeyInfo} {
			if d := Decide(c, a, Target{MasterKey: true}); d.Allowed || d.Status != 403 {
				t.Errorf("%s %s on the master key: %+v", name, a, d)
			}
		}
	}
}

func TestUnknownRoleAndAction(t *testing.T) {
	if d := Decide(Caller{ID: "x", Role: "team"}, KeyInfo, Target{Before: &Object{UserID: "x"}}); d.Allowed {
		t.Fatal("unknown role allowed")
	}
	if d := Decide(Caller{Master: true}, Action("key.steal"), Target{}); d.Allowed {
		t.Fatal("unknown action allowed")
	}
}

// TestSelfRead: every active key reads its own /key/info and its team's
// /team/info, whatever its owner's role, team role or team's
// team_member_permissions; it writes nothing more than before.
func TestSelfRead(t *testing.T) {
	own := &Object{TokenID: "tok-1", UserID: self, TeamID: t2}
	for name, c := range callers() {
		c.KeyTokenID, c.KeyTeamID = "tok-1", t2
		if d := Decide(c, KeyInfo, Target{Before: own}); !d.Allowed {
			t.Errorf("%s reading its own key: %+v", name, d)
		}
		if d := Decide(c, TeamInfo, Target{Before: &Object{TeamID: t2, OrgID: o2}}); !d.Allowed {
			t.Errorf("%s reading its key's team: %+v", name, d)
		}
		other := &Object{TokenID: "tok-2", UserID: stranger, TeamID: t2}
		if d := Decide(c, KeyInfo, Target{Before: other}); d.Allowed && !c.ReadsAll() {
			t.Errorf("%s read another key through its key's team", name)
		}
		if d := Decide(c, KeyDelete, Target{Before: own}); d.Allowed != Decide(withoutKey(c), KeyDelete, Target{Before: own}).Allowed {
			t.Errorf("%s: self-read changed what it may write", name)
		}
	}
	// A user with an unknown role (no management role at all) still reads
	// its own key.
	c := Caller{ID: self, Role: "customer", KeyTokenID: "tok-1"}
	if d := Decide(c, KeyInfo, Target{Before: own}); !d.Allowed {
		t.Errorf("unknown role reading its own key: %+v", d)
	}
	if d := Decide(c, KeyUpdate, Target{Before: own, After: own}); d.Allowed {
		t.Error("unknown role updated its own key")
	}
	// A key without a token id matches nothing.
	if d := Decide(Caller{KeyOnly: true}, KeyInfo, Target{Before: &Object{}}); d.Allowed {
		t.Error("an empty token id matched")
	}
}

func withoutKey(c Caller) Caller { c.KeyTokenID, c.KeyTeamID = "", ""; return c }

// The escalation paths LiteLLM's key endpoints have had, one by one.
func TestEscalations(t *testing.T) {
	cs := callers()
	user := cs["tuser"]
	user.Self = Object{UserID: self, Models: []string{"gpt-4o-mini"}, MaxBudget: i64(10e6), RPMLimit: i64(100)}
	tadmin := cs["tadmin"]
	team1 := &Object{TeamID: t1, Models: []string{"gpt-4o-mini", "gpt-4o"}, MaxBudget: i64(50e6)}
	ownKey := func() *Object {
		return &Object{UserID: self, TeamID: t1, Models: []string{"gpt-4o-mini"}, MaxBudget: i64(5e6), EnforcedParams: []string{"user"}}
	}
	exp := time.Now().Add(time.Hour)
	cases := []struct {
		name   string
		c      Caller
		a      Action
		t      func() Target
		status int
		param  string
	}{
		{"link own key to a budget", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.BudgetID = "enterprise"
			return Target{Before: b, After: a, Team: team1}
		}, 403, "budget_id"},
		{"unlink own key from its budget", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			b.BudgetID = "free-tier"
			return Target{Before: b, After: a, Team: team1}
		}, 403, "budget_id"},
		{"create a key linked to a budget", user, KeyGenerate, func() Target {
			a := ownKey()
			a.BudgetID = "enterprise"
			return Target{After: a, Team: team1}
		}, 403, "budget_id"},
		{"team admin links a member to a budget", tadmin, TeamMemberUpdate, func() Target {
			b := &Object{UserID: mate, TeamID: t1, Role: store.TeamRoleUser}
			a := *b
			a.BudgetID = "enterprise"
			return Target{Before: b, After: &a}
		}, 403, "budget_id"},
		{"move own key into a foreign team", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.TeamID = t2
			return Target{Before: b, After: a}
		}, 403, "team_id"},
		{"give own key to another user", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.UserID = mate
			return Target{Before: b, After: a, Team: team1}
		}, 403, "user_id"},
		{"raise own key max_budget", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.MaxBudget = i64(6e6)
			return Target{Before: b, After: a, Team: team1}
		}, 403, "max_budget"},
		{"widen own key models", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.Models = []string{"gpt-4o-mini", "gpt-4o"}
			return Target{Before: b, After: a, Team: team1}
		}, 403, "models"},
		{"clear own key models (all models)", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.Models = nil
			return Target{Before: b, After: a, Team: team1}
		}, 403, "models"},
		{"drop an enforced param", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			a.EnforcedParams = nil
			return Target{Before: b, After: a, Team: team1}
		}, 403, "enforced_params"},
		{"extend expiry", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			b.Expires = &exp
			return Target{Before: b, After: a, Team: team1}
		}, 403, "expires"},
		{"unblock own key via update", user, KeyUpdate, func() Target {
			b, a := ownKey(), ownKey()
			b.Blocked = true
			return Target{Before: b, After: a, Team: team1}
		}, 403, "blocked"},
		{"admin routes in allowed_routes", user, KeyGenerate, func() Target {
			a := &Object{UserID: self, AllowedRoutes: []string{"/chat/completions", "/key/generate"}}
			return Target{After: a}
		}, 403, "allowed_routes"},
		{"management_routes group", user, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: self, AllowedRoutes: []string{"management_routes"}}}
		}, 403, "allowed_routes"},
		{"set permissions", user, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: self, Permissions: true}}
		}, 403, "permissions"},
		{"create key wider than own budget", user, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: self, MaxBudget: i64(11e6)}}
		}, 403, "max_budget"},
		{"create key wider than own rpm", user, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: self, RPMLimit: i64(101)}}
		}, 403, "rpm_limit"},
		{"create key with a model outside own", user, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: self, Models: []string{"gpt-4o"}}}
		}, 403, "models"},
		{"create team key wider than the team's budget", tadmin, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: self, TeamID: t1, MaxBudget: i64(51e6)}, Team: team1}
		}, 403, "max_budget"},
		{"create key for another user", user, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: mate}}
		}, 403, "user_id"},
		{"team admin creates a key for a member", tadmin, KeyGenerate, func() Target {
			return Target{After: &Object{UserID: mate, TeamID: t1}, Team: team1}
		}, 403, "user_id"},
		{"change own user_role", user, UserUpdate, func() Target {
			return Target{Before: &Object{UserID: self, Role: store.RoleInternalUser}, After: &Object{UserID: self, Role: store.RoleProxyAdmin}}
		}, 403, "user_role"},
		{"raise own user max_budget", user, UserUpdate, func() Target {
			return Target{Before: &Object{UserID: self, MaxBudget: i64(10e6)}, After: &Object{UserID: self, MaxBudget: i64(20e6)}}
		}, 403, "max_budget"},
		{"widen own user models", user, UserUpdate, func() Target {
			return Target{Before: &Object{UserID: self, Models: []string{"a"}}, After: &Object{UserID: self, Models: []string{"a", "b"}}}
		}, 403, "models"},
		{"unblock self", user, UserUpdate, func() Target {
			return Target{Before: &Object{UserID: self, Blocked: true}, After: &Object{UserID: self}}
		}, 403, "blocked"},
		{"regenerate a member's key", tadmin, KeyRegenerate, func() Target {
			return Target{Before: &Object{UserID: mate, TeamID: t1}}
		}, 403, "key"},
		{"team member deletes another member's key", user, KeyDelete, func() Target {
			return Target{Before: &Object{UserID: mate, TeamID: t1}}
		}, 404, "key"},
		{"team admin promotes a member", tadmin, TeamMemberUpdate, func() Target {
			return Target{Before: &Object{UserID: mate, TeamID: t1, Role: store.TeamRoleUser}, After: &Object{UserID: mate, TeamID: t1, Role: store.TeamRoleAdmin}}
		}, 403, "role"},
		{"team admin adds an admin", tadmin, TeamMemberAdd, func() Target {
			return Target{After: &Object{UserID: "u-new", TeamID: t1, Role: store.TeamRoleAdmin}}
		}, 403, "member"},
		{"team admin raises its own member budget", tadmin, TeamMemberUpdate, func() Target {
			return Target{Before: &Object{UserID: self, TeamID: t1, Role: store.TeamRoleAdmin}, After: &Object{UserID: self, TeamID: t1, Role: store.TeamRoleAdmin, MaxBudget: i64(1e9)}}
		}, 403, "user_id"},
		{"internal user creates a user", user, UserNew, func() Target { return Target{} }, 403, ""},
		{"internal user creates a team", user, TeamNew, func() Target { return Target{After: &Object{}} }, 403, ""},
		{"internal user creates an organization", user, OrgNew, func() Target { return Target{} }, 403, ""},
		{"viewer writes", cs["viewer"], KeyGenerate, func() Target { return Target{After: &Object{UserID: self}} }, 403, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.c, tc.a, tc.t())
			if d.Allowed || d.Status != tc.status || d.Param != tc.param {
				t.Fatalf("got %+v, want %d param %q", d, tc.status, tc.param)
			}
		})
	}
	// And what stays allowed.
	allowed := []struct {
		name string
		c    Caller
		a    Action
		t    Target
	}{
		{"lower own key budget", user, KeyUpdate, Target{Before: ownKey(), After: func() *Object { a := ownKey(); a.MaxBudget = i64(1e6); return a }(), Team: team1}},
		{"narrow own key models", user, KeyUpdate, Target{Before: &Object{UserID: self, Models: []string{"gpt-4o-mini", "x"}}, After: &Object{UserID: self, Models: []string{"gpt-4o-mini"}}}},
		{"LLM routes", user, KeyGenerate, Target{After: &Object{UserID: self, Models: []string{"gpt-4o-mini"}, AllowedRoutes: []string{"/v1/chat/completions", "llm_api_routes"}}}},
		{"key within own limits", user, KeyGenerate, Target{After: &Object{UserID: self, Models: []string{"gpt-4o-mini"}, MaxBudget: i64(10e6), RPMLimit: i64(100)}}},
		{"omitted limits inherit", user, KeyGenerate, Target{After: &Object{UserID: self}}},
		{"move own key into own team", user, KeyUpdate, Target{Before: &Object{UserID: self}, After: &Object{UserID: self, TeamID: t1}, Team: team1}},
		{"lower own user budget", user, UserUpdate, Target{Before: &Object{UserID: self, MaxBudget: i64(10e6)}, After: &Object{UserID: self, MaxBudget: i64(5e6)}}},
		{"team admin removes itself", tadmin, TeamMemberDelete, Target{Before: &Object{UserID: self, TeamID: t1, Role: store.TeamRoleAdmin}}},
		{"org admin creates a team in its org", Caller{ID: self, Role: store.RoleInternalUser, Orgs: map[string]string{o1: OrgAdmin}}, TeamNew, Target{After: &Object{OrgID: o1}}},
		{"org admin manages a team of its org", Caller{ID: self, Role: store.RoleInternalUser, Orgs: map[string]string{o1: OrgAdmin}}, TeamMemberAdd, Target{After: &Object{UserID: "u-new", TeamID: t2, OrgID: o1, Role: store.TeamRoleUser}}},
	}
	for _, tc := range allowed {
		if d := Decide(tc.c, tc.a, tc.t); !d.Allowed {
			t.Errorf("%s: refused: %+v", tc.name, d)
		}
	}
}

func TestKeyGenerationSettings(t *testing.T) {
	cs := callers()
	kg := settings.KeyGenerationSettings{
		TeamKeyGeneration:     settings.TeamKeyGeneration{AllowedTeamMemberRoles: []string{"admin"}, RequiredParams: []string{"tags"}},
		PersonalKeyGeneration: settings.PersonalKeyGeneration{AllowedUserRoles: []string{"proxy_admin"}, RequiredParams: []string{"key_alias"}},
	}
	check := func(name string, c Caller, a Action, tg Target, status int, msg string) {
		t.Helper()
		tg.KeyGeneration = kg
		d := Decide(c, a, tg)
		if status == 0 {
			if !d.Allowed {
				t.Errorf("%s: refused %+v", name, d)
			}
			return
		}
		if d.Allowed || d.Status != status || !strings.Contains(d.Reason, msg) {
			t.Errorf("%s: got %+v, want %d %q", name, d, status, msg)
		}
	}
	check("team user may not create team keys", cs["tuser"], KeyGenerate, Target{After: &Object{UserID: self, TeamID: t1}, Params: []string{"team_id", "tags"}}, 403,
		"Team member role user not in allowed_team_member_roles=['admin']")
	check("team admin may", cs["tadmin"], KeyGenerate, Target{After: &Object{UserID: self, TeamID: t1}, Params: []string{"team_id", "tags"}}, 0, "")
	check("team key without a required param", cs["tadmin"], KeyGenerate, Target{After: &Object{UserID: self, TeamID: t1}, Params: []string{"team_id"}}, 400,
		"Required param tags not in data")
	check("personal key restricted", cs["tuser"], KeyGenerate, Target{After: &Object{UserID: self}, Params: []string{"key_alias"}}, 403,
		"Personal key creation has been restricted by admin. Allowed roles=['proxy_admin']. Your role=internal_user")
	check("admin personal key without required param", cs["master"], KeyGenerate, Target{After: &Object{}}, 400, "Required param key_alias not in data")
	check("admin personal key with it", cs["master"], KeyGenerate, Target{After: &Object{}, Params: []string{"key_alias"}}, 0, "")
	check("move own key into a team as a team user", cs["tuser"], KeyUpdate, Target{Before: &Object{UserID: self}, After: &Object{UserID: self, TeamID: t1}}, 403,
		"not in allowed_team_member_roles")
}

// TestTeamMemberPermissions: a team's team_member_permissions restrict what
// its members with team role "user" may do with their keys in the team.
func TestTeamMemberPermissions(t *testing.T) {
	user := func(perms ...string) Caller {
		c := Caller{ID: self, Role: store.RoleInternalUser, Teams: map[string]string{t1: store.TeamRoleUser, t2: store.TeamRoleUser}}
		if perms != nil {
			c.TeamPermissions = map[string][]string{t1: perms}
		}
		return c
	}
	ownKey := func(team string) *Object { return &Object{UserID: self, TeamID: team} }
	upd := func(b, a *Object) Target { return Target{Before: b, After: a} }
	cases := []struct {
		name  string
		c     Caller
		a     Action
		t     Target
		allow bool
	}{
		{"no list: generate", user(), KeyGenerate, Target{After: ownKey(t1)}, true},
		{"listed: generate", user("/key/generate"), KeyGenerate, Target{After: ownKey(t1)}, true},
		{"not listed: generate", user("/key/info"), KeyGenerate, Target{After: ownKey(t1)}, false},
		{"not listed, other team without a list: generate", user("/key/info"), KeyGenerate, Target{After: ownKey(t2)}, true},
		{"not listed, personal key: generate", user("/key/info"), KeyGenerate, Target{After: ownKey("")}, true},
		{"listed: delete", user("/key/delete"), KeyDelete, Target{Before: ownKey(t1)}, true},
		{"not listed: delete", user("/key/generate", "/key/info"), KeyDelete, Target{Before: ownKey(t1)}, false},
		{"not listed: update", user("/key/generate"), KeyUpdate, upd(ownKey(t1), ownKey(t1)), false},
		{"listed: update", user("/key/update"), KeyUpdate, upd(ownKey(t1), ownKey(t1)), true},
		{"not listed: move a key into the team", user("/key/info"), KeyUpdate, upd(ownKey(t2), ownKey(t1)), false},
		{"not listed: regenerate", user("/key/update"), KeyRegenerate, Target{Before: ownKey(t1)}, false},
		{"listed: regenerate", user("/key/regenerate"), KeyRegenerate, Target{Before: ownKey(t1)}, true},
		{"not listed: block", user("/key/info"), KeyBlock, Target{Before: ownKey(t1)}, false},
		{"listed: info", user("/key/info"), KeyInfo, Target{Before: ownKey(t1)}, true},
		{"not listed: info", user("/key/generate"), KeyInfo, Target{Before: ownKey(t1)}, false},
		{"not listed: list the team's keys", user("/key/info"), KeyList, Target{Before: &Object{TeamID: t1}}, false},
		{"listed: list the team's keys", user("/key/list"), KeyList, Target{Before: &Object{TeamID: t1}}, true},
		{"not listed: list own keys", user("/key/info"), KeyList, Target{Before: &Object{UserID: self}}, true},
		{"team admin: not restricted", Caller{ID: self, Role: store.RoleInternalUser, Teams: map[string]string{t1: store.TeamRoleAdmin}, TeamPermissions: map[string][]string{t1: {"/key/info"}}}, KeyDelete, Target{Before: ownKey(t1)}, true},
		{"org admin: not restricted", Caller{ID: self, Role: store.RoleInternalUser, Teams: map[string]string{t1: store.TeamRoleUser}, Orgs: map[string]string{o1: OrgAdmin}, TeamPermissions: map[string][]string{t1: {"/key/info"}}}, KeyDelete, Target{Before: &Object{UserID: self, TeamID: t1, OrgID: o1}}, true},
		{"proxy admin: not restricted", Caller{ID: self, Role: store.RoleProxyAdmin, Teams: map[string]string{t1: store.TeamRoleUser}, TeamPermissions: map[string][]string{t1: {"/key/info"}}}, KeyDelete, Target{Before: ownKey(t1)}, true},
	}
	for _, tc := range cases {
		d := Decide(tc.c, tc.a, tc.t)
		if d.Allowed != tc.allow {
			t.Errorf("%s: got %+v, want allowed=%v", tc.name, d, tc.allow)
			continue
		}
		if !d.Allowed && (d.Status != 403 || d.Param != "team_id" || !strings.Contains(d.Reason, KeyRoutes[tc.a])) {
			t.Errorf("%s: refusal %+v should be 403 on team_id naming %s", tc.name, d, KeyRoutes[tc.a])
		}
	}
}

var sink Decision

// BenchmarkDecide measures the decision alone (no store).
func BenchmarkDecide(b *testing.B) {
	c := callers()["tuser"]
	c.Self = Object{UserID: self, Models: []string{"gpt-4o-mini", "gpt-4o"}, MaxBudget: i64(10e6)}
	before := &Object{UserID: self, TeamID: t1, Models: []string{"gpt-4o-mini"}, MaxBudget: i64(5e6), EnforcedParams: []string{"user"}, AllowedRoutes: []string{"/chat/completions"}}
	after := *before
	after.MaxBudget = i64(4e6)
	tg := Target{Before: before, After: &after, Team: &Object{TeamID: t1, Models: []string{"gpt-4o-mini", "gpt-4o"}}}
	b.ReportAllocs()
	for b.Loop() {
		sink = Decide(c, KeyUpdate, tg)
	}
	if !sink.Allowed {
		b.Fatal(sink)
	}
}

// A non-admin may keep managing its own key while it stays linked to the
// budget an admin chose: only a change of budget_id is refused.
func TestLinkedKeyStaysManageable(t *testing.T) {
	user := callers()["tuser"]
	user.Self = Object{UserID: self}
	b := &Object{UserID: self, TeamID: t1, BudgetID: "free-tier"}
	a := *b
	a.Blocked = true
	if d := Decide(user, KeyUpdate, Target{Before: b, After: &a, Team: &Object{TeamID: t1}}); !d.Allowed {
		t.Fatalf("update of a linked key that keeps its budget: %+v", d)
	}
}
