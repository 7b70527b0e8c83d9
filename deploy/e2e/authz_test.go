package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// world is a deployment with a user of every role, each with a management
// key, and a foreign user in a foreign team.
type world struct {
	t    *testing.T
	cp   *ControlPlane
	u    string
	mk   string
	keys map[string]string // role name -> management key
	seq  atomic.Int64
}

// Roles of the matrix: user id = role name; teamRoles are their roles in
// the caller's team of each case.
var (
	matrixRoles = []string{"master", "padmin", "viewer", "tadmin", "tuser", "iviewer"}
	userRoles   = map[string]string{"padmin": "proxy_admin", "viewer": "proxy_admin_viewer", "tadmin": "internal_user", "tuser": "internal_user", "iviewer": "internal_user_viewer"}
	teamRoles   = map[string]string{"tadmin": "admin", "tuser": "user", "iviewer": "user"}
)

func newWorld(t *testing.T, o CPOptions) *world {
	cp := StartControlPlane(t, o)
	w := &world{t: t, cp: cp, u: cp.URL(), mk: cp.MasterKey, keys: map[string]string{"master": cp.MasterKey}}
	for _, id := range []string{"padmin", "viewer", "tadmin", "tuser", "iviewer", "mate", "outsider", "spare"} {
		role := userRoles[id]
		if role == "" {
			role = "internal_user"
		}
		r := ok(t, Do(t, "POST", w.u+"/user/new", w.mk, map[string]any{"user_id": id, "user_role": role}))
		if k, _ := r["key"].(string); k != "" {
			w.keys[id] = k
		}
	}
	return w
}

func (w *world) id(prefix string) string { return fmt.Sprintf("%s-%d", prefix, w.seq.Add(1)) }

// self is the user whose objects are "own" for caller (the master key owns
// nothing: it stands in for padmin).
func self(caller string) string {
	if caller == "master" {
		return "padmin"
	}
	return caller
}

// fixture is a fresh set of objects for one case, created with the master
// key: a team of the caller (with mate as a plain member), a foreign team of
// outsider, and a key of each in them.
type fixture struct {
	caller, self string
	// ownTeam and ownTeam2 are the caller's teams (same membership), so that
	// an "own" call that deletes one leaves the other for the "same-team" call.
	ownTeam, ownTeam2, foreignTeam string
	ownKey, mateKey, foreignKey    string // token ids
	foreignKeyS                    string // plaintext
	ownOrg, ownOrg2, foreignOrg    string
	// Users created for the case: in no team, in ownTeam, in foreignTeam.
	freshUser, freshMate, freshOutsider string
}

func (w *world) fixture(caller string, blocked bool) fixture {
	t := w.t
	f := fixture{caller: caller, self: self(caller), ownTeam: w.id("team"), ownTeam2: w.id("team"), foreignTeam: w.id("team"),
		ownOrg: w.id("org"), ownOrg2: w.id("org"), foreignOrg: w.id("org")}
	members := []map[string]any{{"user_id": "mate", "role": "user"}}
	if r := teamRoles[caller]; r != "" {
		members = append(members, map[string]any{"user_id": caller, "role": r})
	}
	for _, org := range []string{f.ownOrg, f.ownOrg2, f.foreignOrg} {
		ok(t, Do(t, "POST", w.u+"/organization/new", w.mk, map[string]any{"organization_id": org, "organization_alias": org}))
	}
	for _, org := range []string{f.ownOrg, f.ownOrg2} {
		ok(t, Do(t, "POST", w.u+"/organization/member_add", w.mk, map[string]any{"organization_id": org, "member": []map[string]any{{"user_id": f.self, "role": "internal_user"}, {"user_id": "mate"}}}))
	}
	ok(t, Do(t, "POST", w.u+"/organization/member_add", w.mk, map[string]any{"organization_id": f.foreignOrg, "member": map[string]any{"user_id": "outsider"}}))
	ok(t, Do(t, "POST", w.u+"/team/new", w.mk, map[string]any{"team_id": f.ownTeam, "members_with_roles": members}))
	ok(t, Do(t, "POST", w.u+"/team/new", w.mk, map[string]any{"team_id": f.ownTeam2, "members_with_roles": members}))
	ok(t, Do(t, "POST", w.u+"/team/new", w.mk, map[string]any{"team_id": f.foreignTeam, "members_with_roles": []map[string]any{{"user_id": "outsider", "role": "admin"}}}))
	gen := func(user, team string) (string, string) {
		body := map[string]any{"user_id": user, "blocked": blocked}
		if team != "" {
			body["team_id"] = team
		}
		r := ok(t, Do(t, "POST", w.u+"/key/generate", w.mk, body))
		return r["token_id"].(string), r["key"].(string)
	}
	ownTeam := f.ownTeam
	if teamRoles[caller] == "" {
		ownTeam = "" // admins and viewers own personal keys
	}
	f.ownKey, _ = gen(f.self, ownTeam)
	f.mateKey, _ = gen("mate", f.ownTeam)
	f.foreignKey, f.foreignKeyS = gen("outsider", f.foreignTeam)
	f.freshUser, f.freshMate, f.freshOutsider = w.id("user"), w.id("user"), w.id("user")
	ok(t, Do(t, "POST", w.u+"/user/new", w.mk, map[string]any{"user_id": f.freshUser, "auto_create_key": false}))
	ok(t, Do(t, "POST", w.u+"/user/new", w.mk, map[string]any{"user_id": f.freshMate, "teams": []string{f.ownTeam, f.ownTeam2}, "auto_create_key": false}))
	ok(t, Do(t, "POST", w.u+"/user/new", w.mk, map[string]any{"user_id": f.freshOutsider, "teams": []string{f.foreignTeam}, "auto_create_key": false}))
	return f
}

// auditTotal is the number of audit rows: every mutation writes one in its
// transaction, so an unchanged total means a call changed nothing.
func (w *world) auditTotal() float64 {
	r := ok(w.t, Do(w.t, "GET", w.u+"/audit?page_size=1", w.mk, nil))
	return r["total"].(float64)
}

// call is one request of the matrix.
type call struct {
	method, path string
	body         any
}

type scopeFn func(w *world, f fixture) call

// endpoint is a row group of the matrix: the request on own, same-team and
// foreign objects, and the expected status per role (A = 200, 3 = 403,
// 4 = 404; "" = "AAA").
type endpoint struct {
	own, team, foreign scopeFn
	blocked            bool // fixture keys start blocked
	want               map[string]string
}

func same(fn scopeFn) (scopeFn, scopeFn, scopeFn) { return fn, fn, fn }

func get(path string) call { return call{method: "GET", path: path} }

func post(path string, body any) call { return call{method: "POST", path: path, body: body} }

var (
	// The expectations are DESIGN.md's "Who may do what" table, row by row.
	allRead   = map[string]string{}
	adminOnly = map[string]string{"viewer": "333", "tadmin": "333", "tuser": "333", "iviewer": "333"}
	ownRead   = map[string]string{"tadmin": "AA4", "tuser": "A44", "iviewer": "A44"}
)

func matrix() map[string]endpoint {
	keyOp := func(path string, body func(tok string) any) (scopeFn, scopeFn, scopeFn) {
		return func(_ *world, f fixture) call { return post(path, body(f.ownKey)) },
			func(_ *world, f fixture) call { return post(path, body(f.mateKey)) },
			func(_ *world, f fixture) call { return post(path, body(f.foreignKey)) }
	}
	e := map[string]endpoint{}
	{
		var ep endpoint
		ep.own = func(_ *world, f fixture) call {
			b := map[string]any{"key_alias": "g-" + f.ownTeam}
			if teamRoles[f.caller] != "" {
				b["team_id"] = f.ownTeam
			}
			return post("/key/generate", b)
		}
		ep.team = func(_ *world, f fixture) call {
			return post("/key/generate", map[string]any{"user_id": "mate", "team_id": f.ownTeam})
		}
		ep.foreign = func(_ *world, f fixture) call {
			return post("/key/generate", map[string]any{"user_id": "outsider", "team_id": f.foreignTeam})
		}
		ep.want = map[string]string{"viewer": "333", "tadmin": "A33", "tuser": "A33", "iviewer": "333"}
		e["/key/generate"] = ep
	}
	e["/key/service-account/generate"] = endpoint{
		own: func(_ *world, f fixture) call {
			return post("/key/service-account/generate", map[string]any{"team_id": f.ownTeam})
		},
		team: func(_ *world, f fixture) call {
			return post("/key/service-account/generate", map[string]any{"team_id": f.ownTeam})
		},
		foreign: func(_ *world, f fixture) call {
			return post("/key/service-account/generate", map[string]any{"team_id": f.foreignTeam})
		},
		want: map[string]string{"viewer": "333", "tadmin": "AA3", "tuser": "333", "iviewer": "333"},
	}
	ownWrite := map[string]string{"viewer": "333", "tadmin": "AA4", "tuser": "A44", "iviewer": "333"}
	o, tm, fo := keyOp("/key/update", func(tok string) any { return map[string]any{"key": tok, "key_alias": "upd-" + tok} })
	e["/key/update"] = endpoint{own: o, team: tm, foreign: fo, want: ownWrite}
	o, tm, fo = keyOp("/key/delete", func(tok string) any { return map[string]any{"keys": []string{tok}} })
	e["/key/delete"] = endpoint{own: o, team: tm, foreign: fo, want: ownWrite}
	o, tm, fo = keyOp("/key/block", func(tok string) any { return map[string]any{"key": tok} })
	e["/key/block"] = endpoint{own: o, team: tm, foreign: fo, want: ownWrite}
	o, tm, fo = keyOp("/key/unblock", func(tok string) any { return map[string]any{"key": tok} })
	e["/key/unblock"] = endpoint{own: o, team: tm, foreign: fo, blocked: true, want: map[string]string{"viewer": "333", "tadmin": "AA4", "tuser": "344", "iviewer": "333"}}
	o, tm, fo = keyOp("/key/regenerate", func(tok string) any { return map[string]any{"key": tok} })
	regen := map[string]string{"viewer": "333", "tadmin": "A34", "tuser": "A44", "iviewer": "333"}
	e["/key/regenerate"] = endpoint{own: o, team: tm, foreign: fo, want: regen}
	e["/key/{key}/regenerate"] = endpoint{
		own:     func(_ *world, f fixture) call { return post("/key/"+f.ownKey+"/regenerate", map[string]any{}) },
		team:    func(_ *world, f fixture) call { return post("/key/"+f.mateKey+"/regenerate", map[string]any{}) },
		foreign: func(_ *world, f fixture) call { return post("/key/"+f.foreignKey+"/regenerate", map[string]any{}) },
		want:    regen,
	}
	e["/key/info"] = endpoint{
		own:     func(_ *world, f fixture) call { return get("/key/info?key=" + f.ownKey) },
		team:    func(_ *world, f fixture) call { return get("/key/info?key=" + f.mateKey) },
		foreign: func(_ *world, f fixture) call { return get("/key/info?key=" + f.foreignKeyS) },
		want:    ownRead,
	}
	listWant := map[string]string{"tadmin": "AA3", "tuser": "AA3", "iviewer": "AA3"}
	e["/key/list"] = endpoint{
		own:     func(_ *world, f fixture) call { return get("/key/list?user_id=" + f.self) },
		team:    func(_ *world, f fixture) call { return get("/key/list?team_id=" + f.ownTeam) },
		foreign: func(_ *world, f fixture) call { return get("/key/list?user_id=outsider") },
		want:    listWant,
	}

	teamOp := func(path string, body func(team string) any) (scopeFn, scopeFn, scopeFn) {
		return func(_ *world, f fixture) call { return post(path, body(f.ownTeam)) },
			func(_ *world, f fixture) call { return post(path, body(f.ownTeam2)) },
			func(_ *world, f fixture) call { return post(path, body(f.foreignTeam)) }
	}
	o, tm, fo = same(func(w *world, _ fixture) call { return post("/team/new", map[string]any{"team_id": w.id("new-team")}) })
	e["/team/new"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	for path, body := range map[string]func(string) any{
		"/team/update":  func(id string) any { return map[string]any{"team_id": id, "team_alias": "a-" + id} },
		"/team/delete":  func(id string) any { return map[string]any{"team_ids": []string{id}} },
		"/team/block":   func(id string) any { return map[string]any{"team_id": id} },
		"/team/unblock": func(id string) any { return map[string]any{"team_id": id} },
	} {
		o, tm, fo = teamOp(path, body)
		e[path] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	}
	o, tm, fo = teamOp("/team/member_add", func(id string) any {
		return map[string]any{"team_id": id, "member": map[string]any{"user_id": "spare", "role": "user"}}
	})
	e["/team/member_add"] = endpoint{own: o, team: tm, foreign: fo, want: map[string]string{"viewer": "333", "tadmin": "AA4", "tuser": "334", "iviewer": "333"}}
	memberOp := func(path string, extra map[string]any) (scopeFn, scopeFn, scopeFn) {
		mk := func(team, user string) call {
			b := map[string]any{"team_id": team, "user_id": user}
			for k, v := range extra {
				b[k] = v
			}
			return post(path, b)
		}
		return func(_ *world, f fixture) call { return mk(f.ownTeam, f.self) },
			func(_ *world, f fixture) call { return mk(f.ownTeam2, f.freshMate) },
			func(_ *world, f fixture) call { return mk(f.foreignTeam, f.freshOutsider) }
	}
	o, tm, fo = memberOp("/team/member_update", map[string]any{"max_budget_in_team": 1})
	// Admins updating a non-member "own" membership get 404 (they are not members).
	e["/team/member_update"] = endpoint{own: o, team: tm, foreign: fo, want: map[string]string{"master": "4AA", "padmin": "4AA", "viewer": "333", "tadmin": "3A4", "tuser": "334", "iviewer": "333"}}
	o, tm, fo = memberOp("/team/member_delete", nil)
	e["/team/member_delete"] = endpoint{own: o, team: tm, foreign: fo, want: map[string]string{"master": "4AA", "padmin": "4AA", "viewer": "333", "tadmin": "AA4", "tuser": "334", "iviewer": "333"}}
	e["/team/info"] = endpoint{
		own:     func(_ *world, f fixture) call { return get("/team/info?team_id=" + f.ownTeam) },
		team:    func(_ *world, f fixture) call { return get("/team/info?team_id=" + f.ownTeam) },
		foreign: func(_ *world, f fixture) call { return get("/team/info?team_id=" + f.foreignTeam) },
		want:    map[string]string{"tadmin": "AA4", "tuser": "AA4", "iviewer": "AA4"},
	}
	e["/team/list"] = endpoint{
		own:     func(_ *world, f fixture) call { return get("/team/list?user_id=" + f.self) },
		team:    func(_ *world, f fixture) call { return get("/team/list") },
		foreign: func(_ *world, f fixture) call { return get("/team/list?user_id=outsider") },
		want:    listWant,
	}

	o, tm, fo = same(func(w *world, _ fixture) call { return post("/user/new", map[string]any{"user_id": w.id("nu")}) })
	e["/user/new"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	e["/user/update"] = endpoint{
		own: func(_ *world, f fixture) call {
			return post("/user/update", map[string]any{"user_id": f.self, "user_alias": "alias-" + f.ownTeam})
		},
		team: func(_ *world, f fixture) call {
			return post("/user/update", map[string]any{"user_id": f.freshMate, "user_alias": "x"})
		},
		foreign: func(_ *world, f fixture) call {
			return post("/user/update", map[string]any{"user_id": f.freshOutsider, "user_alias": "x"})
		},
		want: map[string]string{"viewer": "333", "tadmin": "A44", "tuser": "A44", "iviewer": "333"},
	}
	// Deleting oneself would end the run: "own" is a fresh user here.
	e["/user/delete"] = endpoint{
		own: func(_ *world, f fixture) call {
			return post("/user/delete", map[string]any{"user_ids": []string{f.freshUser}})
		},
		team: func(_ *world, f fixture) call {
			return post("/user/delete", map[string]any{"user_ids": []string{f.freshMate}})
		},
		foreign: func(_ *world, f fixture) call {
			return post("/user/delete", map[string]any{"user_ids": []string{f.freshOutsider}})
		},
		want: adminOnly,
	}
	e["/user/info"] = endpoint{
		own:     func(_ *world, f fixture) call { return get("/user/info?user_id=" + f.self) },
		team:    func(_ *world, f fixture) call { return get("/user/info?user_id=" + f.freshMate) },
		foreign: func(_ *world, f fixture) call { return get("/user/info?user_id=" + f.freshOutsider) },
		want:    map[string]string{"tadmin": "A44", "tuser": "A44", "iviewer": "A44"},
	}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/user/list") })
	e["/user/list"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}

	orgOp := func(method, path string, body func(org string) any) (scopeFn, scopeFn, scopeFn) {
		mk := func(org string) call {
			if method == "GET" {
				return get(path + "?organization_id=" + org)
			}
			return post(path, body(org))
		}
		return func(_ *world, f fixture) call { return mk(f.ownOrg) },
			func(_ *world, f fixture) call { return mk(f.ownOrg2) },
			func(_ *world, f fixture) call { return mk(f.foreignOrg) }
	}
	o, tm, fo = same(func(w *world, _ fixture) call {
		return post("/organization/new", map[string]any{"organization_alias": w.id("o")})
	})
	e["/organization/new"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = orgOp("POST", "/organization/update", func(id string) any { return map[string]any{"organization_id": id, "organization_alias": "n-" + id} })
	e["/organization/update"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = orgOp("POST", "/organization/delete", func(id string) any { return map[string]any{"organization_ids": []string{id}} })
	e["/organization/delete"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = orgOp("POST", "/organization/member_add", func(id string) any {
		return map[string]any{"organization_id": id, "member": map[string]any{"user_id": "spare"}}
	})
	e["/organization/member_add"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	orgMember := func(path string, extra map[string]any) (scopeFn, scopeFn, scopeFn) {
		mk := func(org, user string) call {
			b := map[string]any{"organization_id": org, "user_id": user}
			for k, v := range extra {
				b[k] = v
			}
			return post(path, b)
		}
		return func(_ *world, f fixture) call { return mk(f.ownOrg, "mate") },
			func(_ *world, f fixture) call { return mk(f.ownOrg2, "mate") },
			func(_ *world, f fixture) call { return mk(f.foreignOrg, "outsider") }
	}
	o, tm, fo = orgMember("/organization/member_update", map[string]any{"role": "internal_user_viewer"})
	e["/organization/member_update"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = orgMember("/organization/member_delete", nil)
	e["/organization/member_delete"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = orgOp("GET", "/organization/info", nil)
	e["/organization/info"] = endpoint{own: o, team: tm, foreign: fo, want: map[string]string{"tadmin": "AA4", "tuser": "AA4", "iviewer": "AA4"}}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/organization/list") })
	e["/organization/list"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}

	o, tm, fo = same(func(w *world, _ fixture) call {
		return post("/model/new", map[string]any{"model_name": w.id("m"), "litellm_params": map[string]any{"model": "openai/x"}})
	})
	e["/model/new"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(w *world, _ fixture) call {
		id := w.model()
		return post("/model/update", map[string]any{"model_name": "upd", "litellm_params": map[string]any{"model": "openai/y"}, "model_info": map[string]any{"id": id}})
	})
	e["/model/update"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(w *world, _ fixture) call { return post("/model/delete", map[string]any{"id": w.model()}) })
	e["/model/delete"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/model/info") })
	e["/model/info"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/v1/model/info") })
	e["/v1/model/info"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}

	readsAdmin := map[string]string{"tadmin": "333", "tuser": "333", "iviewer": "333"}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/settings") })
	e["/settings"] = endpoint{own: o, team: tm, foreign: fo, want: readsAdmin}
	o, tm, fo = same(func(_ *world, _ fixture) call {
		return post("/config/update", map[string]any{"general_settings": map[string]any{"max_end_user_budget": 100}})
	})
	e["/config/update"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/audit") })
	e["/audit"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/spend/logs") })
	e["/spend/logs"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/spend/logs/paged") })
	e["/spend/logs/paged"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/global/spend/report?group_by=team") })
	e["/global/spend/report"] = endpoint{own: o, team: tm, foreign: fo, want: allRead}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/proxies") })
	e["/proxies"] = endpoint{own: o, team: tm, foreign: fo, want: map[string]string{"tadmin": "333", "tuser": "333", "iviewer": "333"}}
	// An end user nobody has billed: 404 for everyone (admins and viewers
	// read customers; others get the same 404, never a hint).
	noCustomer := map[string]string{"master": "444", "padmin": "444", "viewer": "444", "tadmin": "444", "tuser": "444", "iviewer": "444"}
	for _, p := range []string{"/customer/info", "/end_user/info"} {
		o, tm, fo = same(func(_ *world, _ fixture) call { return get(p + "?end_user_id=nobody-billed") })
		e[p] = endpoint{own: o, team: tm, foreign: fo, want: noCustomer}
	}
	// End users: proxy_admin writes; admins and viewers list.
	for _, base := range []string{"/customer", "/end_user"} {
		o, tm, fo = same(func(w *world, _ fixture) call {
			return post(base+"/new", map[string]any{"user_id": w.id("c"), "max_budget": 1})
		})
		e[base+"/new"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
		o, tm, fo = same(func(w *world, _ fixture) call {
			return post(base+"/update", map[string]any{"user_id": w.endUser(), "alias": "renamed"})
		})
		e[base+"/update"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
		o, tm, fo = same(func(w *world, _ fixture) call {
			return post(base+"/delete", map[string]any{"user_ids": []string{w.endUser()}})
		})
		e[base+"/delete"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
		o, tm, fo = same(func(w *world, _ fixture) call {
			return post(base+"/block", map[string]any{"user_ids": []string{w.id("c")}})
		})
		e[base+"/block"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
		o, tm, fo = same(func(w *world, _ fixture) call {
			return post(base+"/unblock", map[string]any{"user_ids": []string{w.endUser()}})
		})
		e[base+"/unblock"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
		o, tm, fo = same(func(_ *world, _ fixture) call { return get(base + "/list") })
		e[base+"/list"] = endpoint{own: o, team: tm, foreign: fo, want: readsAdminViewer}
	}
	// Budgets: proxy_admin writes; admins and viewers read.
	o, tm, fo = same(func(w *world, _ fixture) call {
		return post("/budget/new", map[string]any{"budget_id": w.id("b"), "max_budget": 1})
	})
	e["/budget/new"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(w *world, _ fixture) call {
		return post("/budget/update", map[string]any{"budget_id": w.budget(), "rpm_limit": 5})
	})
	e["/budget/update"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(w *world, _ fixture) call { return post("/budget/delete", map[string]any{"id": w.budget()}) })
	e["/budget/delete"] = endpoint{own: o, team: tm, foreign: fo, want: adminOnly}
	o, tm, fo = same(func(w *world, _ fixture) call {
		return post("/budget/info", map[string]any{"budgets": []string{w.budget()}})
	})
	e["/budget/info"] = endpoint{own: o, team: tm, foreign: fo, want: readsAdminViewer}
	o, tm, fo = same(func(_ *world, _ fixture) call { return get("/budget/list") })
	e["/budget/list"] = endpoint{own: o, team: tm, foreign: fo, want: readsAdminViewer}
	return e
}

// budget creates a throwaway budget and returns its id.
func (w *world) budget() string {
	id := w.id("b")
	ok(w.t, Do(w.t, "POST", w.u+"/budget/new", w.mk, map[string]any{"budget_id": id, "max_budget": 1}))
	return id
}

// readsAdminViewer: admins and viewers may call it, nobody else.
var readsAdminViewer = map[string]string{"tadmin": "333", "tuser": "333", "iviewer": "333"}

// endUser creates a throwaway end user and returns its id.
func (w *world) endUser() string {
	id := w.id("c")
	ok(w.t, Do(w.t, "POST", w.u+"/customer/new", w.mk, map[string]any{"user_id": id}))
	return id
}

// model creates a throwaway model and returns its id.
func (w *world) model() string {
	r := ok(w.t, Do(w.t, "POST", w.u+"/model/new", w.mk, map[string]any{"model_name": w.id("m"), "litellm_params": map[string]any{"model": "openai/x"}}))
	return r["model_info"].(map[string]any)["id"].(string)
}

var ruleRE = regexp.MustCompile(`(?m)^\s*-?\s*(get|post|put|delete|patch):\s*"?([^"\s]+)"?`)

// httpRules lists every REST path in the gateway configuration.
func httpRules(t *testing.T) []string {
	b, err := os.ReadFile(filepath.Join(RepoRoot(), "proto", "tollgate", "admin", "v1", "admin_http.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, m := range ruleRE.FindAllStringSubmatch(string(b), -1) {
		paths = append(paths, m[2])
	}
	sort.Strings(paths)
	return paths
}

// TestAuthzMatrixCoversEveryEndpoint fails when an endpoint is added to the
// gateway without rows in the authorization matrix.
func TestAuthzMatrixCoversEveryEndpoint(t *testing.T) {
	m := matrix()
	paths := httpRules(t)
	if len(paths) < 39 {
		t.Fatalf("parsed only %d HTTP rules: %v", len(paths), paths)
	}
	for _, p := range paths {
		ep, ok := m[p]
		if !ok {
			t.Errorf("endpoint %s has no rows in the authorization matrix (deploy/e2e/authz_test.go)", p)
			continue
		}
		if ep.own == nil || ep.team == nil || ep.foreign == nil {
			t.Errorf("endpoint %s lacks an own, same-team or foreign request", p)
		}
	}
}

// TestAuthzMatrix tries every role against every management endpoint on
// its own, its team's and foreign objects, over REST, and checks statuses and
// that refused calls changed nothing.
func TestAuthzMatrix(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		w := newWorld(t, o)
		rules := map[string]bool{}
		for _, p := range httpRules(t) {
			rules[p] = true
		}
		m := matrix()
		paths := make([]string, 0, len(m))
		for p := range m {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		calls := 0
		defer func() { t.Logf("%d calls checked", calls) }()
		for _, p := range paths {
			if !rules[p] {
				continue // a row for an endpoint not (yet) served
			}
			ep := m[p]
			for _, role := range matrixRoles {
				want := ep.want[role]
				if want == "" {
					want = "AAA"
				}
				f := w.fixture(role, ep.blocked)
				for i, fn := range []scopeFn{ep.own, ep.team, ep.foreign} {
					c := fn(w, f)
					before := w.auditTotal()
					r := Do(t, c.method, w.u+c.path, w.keys[role], c.body)
					calls++
					scope := [...]string{"own", "same-team", "foreign"}[i]
					wantStatus := map[byte]int{'A': 200, '0': 400, '3': 403, '4': 404}[want[i]]
					if r.Status != wantStatus {
						t.Errorf("%s as %s on %s object: status %d, want %d: %s", p, role, scope, r.Status, wantStatus, r.Body)
						continue
					}
					if r.Status != 200 {
						envelope(t, r, r.Status)
						if after := w.auditTotal(); after != before {
							t.Errorf("%s as %s on %s object: refused call wrote %v audit rows", p, role, scope, after-before)
						}
					}
				}
			}
		}
	})
}

// TestAuthzEscalations replays LiteLLM's known escalation paths one by one;
// each is refused and changes nothing.
func TestAuthzEscalations(t *testing.T) {
	w := newWorld(t, CPOptions{})
	u, mk := w.u, w.mk
	tuser, tadmin := w.keys["tuser"], w.keys["tadmin"]
	ok(t, Do(t, "POST", u+"/user/update", mk, map[string]any{"user_id": "tuser", "max_budget": 10, "models": []string{"gpt-4o-mini"}}))
	f := w.fixture("tuser", false)
	ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": f.ownKey, "max_budget": 5, "models": []string{"gpt-4o-mini"}}))

	state := func() string {
		var b strings.Builder
		for _, p := range []string{"/key/info?key=" + f.ownKey, "/key/info?key=" + f.mateKey, "/key/info?key=" + f.foreignKey, "/user/info?user_id=tuser", "/team/info?team_id=" + f.ownTeam, "/user/list", "/team/list"} {
			r := Do(t, "GET", u+p, mk, nil)
			if r.Status != 200 {
				t.Fatalf("%s: %d %s", p, r.Status, r.Body)
			}
			b.Write(r.Body)
		}
		return b.String()
	}
	cases := []struct {
		name   string
		key    string
		path   string
		body   any
		status int
	}{
		{"user moves its key into a foreign team", tuser, "/key/update", map[string]any{"key": f.ownKey, "team_id": f.foreignTeam}, 403},
		{"user gives its key to another user", tuser, "/key/update", map[string]any{"key": f.ownKey, "user_id": "mate"}, 403},
		{"user raises its key's max_budget", tuser, "/key/update", map[string]any{"key": f.ownKey, "max_budget": 50}, 403},
		{"user widens its key's models", tuser, "/key/update", map[string]any{"key": f.ownKey, "models": []string{"gpt-4o-mini", "gpt-4o"}}, 403},
		{"user clears its key's models", tuser, "/key/update", map[string]any{"key": f.ownKey, "models": []string{}}, 403},
		{"user gives its key admin routes", tuser, "/key/update", map[string]any{"key": f.ownKey, "allowed_routes": []string{"/key/generate"}}, 403},
		{"user sets permissions", tuser, "/key/update", map[string]any{"key": f.ownKey, "permissions": map[string]any{"admin": true}}, 403},
		{"user raises its own max_budget", tuser, "/user/update", map[string]any{"user_id": "tuser", "max_budget": 1000}, 403},
		{"user widens its own models", tuser, "/user/update", map[string]any{"user_id": "tuser", "models": []string{"gpt-4o-mini", "gpt-4o"}}, 403},
		{"user changes its own user_role", tuser, "/user/update", map[string]any{"user_id": "tuser", "user_role": "proxy_admin"}, 403},
		{"user changes another's user_role", tuser, "/user/update", map[string]any{"user_id": "mate", "user_role": "proxy_admin"}, 404},
		{"user regenerates another's key", tuser, "/key/regenerate", map[string]any{"key": f.foreignKey}, 404},
		{"user regenerates another's key by path", tuser, "/key/" + f.foreignKey + "/regenerate", map[string]any{}, 404},
		{"team admin regenerates a member's key", tadmin, "/key/regenerate", map[string]any{"key": f.mateKey}, 404}, // tadmin is not in this fixture's team
		{"team member deletes another member's key", tuser, "/key/delete", map[string]any{"keys": []string{f.mateKey}}, 404},
		{"team member blocks another member's key", tuser, "/key/block", map[string]any{"key": f.mateKey}, 404},
		{"user creates a key for another user", tuser, "/key/generate", map[string]any{"user_id": "mate"}, 403},
		{"user creates a key in a foreign team", tuser, "/key/generate", map[string]any{"team_id": f.foreignTeam}, 403},
		{"user creates a key wider than its budget", tuser, "/key/generate", map[string]any{"max_budget": 11}, 403},
		{"user creates a key with a model it lacks", tuser, "/key/generate", map[string]any{"models": []string{"gpt-4o"}}, 403},
		{"user creates a key with admin routes", tuser, "/key/generate", map[string]any{"allowed_routes": []string{"management_routes"}}, 403},
		{"internal user creates a user", tuser, "/user/new", map[string]any{"user_id": "evil", "user_role": "proxy_admin"}, 403},
		{"internal user creates a team", tuser, "/team/new", map[string]any{"team_id": "evil"}, 403},
		{"internal user adds itself to a team", tuser, "/team/member_add", map[string]any{"team_id": f.foreignTeam, "member": map[string]any{"user_id": "tuser"}}, 404},
		{"team user promotes itself", tuser, "/team/member_update", map[string]any{"team_id": f.ownTeam, "user_id": "tuser", "role": "admin"}, 403},
		{"viewer writes", w.keys["viewer"], "/key/generate", map[string]any{}, 403},
		{"internal viewer writes its own key", w.keys["iviewer"], "/key/generate", map[string]any{}, 403},
		{"viewer reads the audit log", w.keys["viewer"], "/audit", nil, 403},
		{"master key blocked through the key API", mk, "/key/block", map[string]any{"key": mk}, 403},
		{"master key deleted through the key API", mk, "/key/delete", map[string]any{"keys": []string{mk}}, 403},
		{"master key regenerated through the key API", mk, "/key/regenerate", map[string]any{"key": mk}, 403},
	}
	for _, tc := range cases {
		before, audit := state(), w.auditTotal()
		method := "POST"
		if tc.body == nil {
			method = "GET"
		}
		r := Do(t, method, u+tc.path, tc.key, tc.body)
		if r.Status != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, r.Status, tc.status, r.Body)
			continue
		}
		envelope(t, r, tc.status)
		if after := state(); after != before {
			t.Errorf("%s: refused call changed state", tc.name)
		}
		if w.auditTotal() != audit {
			t.Errorf("%s: refused call wrote an audit row", tc.name)
		}
	}

	// Another's object and a missing one get the same answer, byte for byte.
	for _, pair := range [][2]call{
		{get("/key/info?key=" + f.foreignKey), get("/key/info?key=no-such-token")},
		{get("/key/info?key=" + f.foreignKeyS), get("/key/info?key=sk-no-such-key-000000000000")},
		{post("/key/update", map[string]any{"key": f.foreignKey, "key_alias": "z"}), post("/key/update", map[string]any{"key": "no-such-token", "key_alias": "z"})},
		{post("/key/delete", map[string]any{"keys": []string{f.mateKey}}), post("/key/delete", map[string]any{"keys": []string{"no-such-token"}})},
		{get("/team/info?team_id=" + f.foreignTeam), get("/team/info?team_id=no-such-team")},
		{post("/team/member_add", map[string]any{"team_id": f.foreignTeam, "member": map[string]any{"user_id": "spare"}}), post("/team/member_add", map[string]any{"team_id": "no-such-team", "member": map[string]any{"user_id": "spare"}})},
		{get("/user/info?user_id=outsider"), get("/user/info?user_id=no-such-user")},
		{get("/organization/info?organization_id=" + f.foreignOrg), get("/organization/info?organization_id=no-such-org")},
	} {
		a := Do(t, pair[0].method, u+pair[0].path, tuser, pair[0].body)
		b := Do(t, pair[1].method, u+pair[1].path, tuser, pair[1].body)
		if a.Status != 404 || string(a.Body) != string(b.Body) {
			t.Errorf("%s hints at existence: %d %s vs %d %s", pair[0].path, a.Status, a.Body, b.Status, b.Body)
		}
	}

	// What stays allowed: a non-admin key is stamped with its owner and
	// inherits a restricted owner's models.
	g := ok(t, Do(t, "POST", u+"/key/generate", tuser, map[string]any{"max_budget": 2}))
	if g["user_id"] != "tuser" || fmt.Sprint(g["models"]) != "[gpt-4o-mini]" {
		t.Fatalf("non-admin key not stamped: %v", g)
	}
	ok(t, Do(t, "POST", u+"/key/update", tuser, map[string]any{"key": f.ownKey, "max_budget": 1}))
	ok(t, Do(t, "POST", u+"/user/update", tuser, map[string]any{"user_id": "tuser", "user_alias": "me"}))

	// Blocked, expired, service-account and ownerless keys are not
	// management credentials (401).
	blocked := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "padmin", "blocked": true}))["key"].(string)
	expired := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"user_id": "padmin", "expires": time.Now().Add(-time.Hour).Format(time.RFC3339)}))["key"].(string)
	sa := ok(t, Do(t, "POST", u+"/key/service-account/generate", mk, map[string]any{"team_id": f.ownTeam}))["key"].(string)
	ownerless := ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}))["key"].(string)
	for name, k := range map[string]string{"blocked": blocked, "expired": expired, "service-account": sa, "ownerless": ownerless} {
		envelope(t, Do(t, "GET", u+"/key/list", k, nil), 401)
		if r := Do(t, "POST", u+"/user/new", k, map[string]any{"user_id": "x-" + name}); r.Status != 401 {
			t.Errorf("%s key as credential: %d", name, r.Status)
		}
	}

	// Team admins manage their team's members and keys.
	ft := w.fixture("tadmin", false)
	ok(t, Do(t, "POST", u+"/key/delete", tadmin, map[string]any{"keys": []string{ft.mateKey}}))
	envelope(t, Do(t, "POST", u+"/key/regenerate", tadmin, map[string]any{"key": ft.foreignKey}), 404)
	ok(t, Do(t, "POST", u+"/team/member_add", tadmin, map[string]any{"team_id": ft.ownTeam, "member": map[string]any{"user_id": "spare"}}))
	envelope(t, Do(t, "POST", u+"/team/member_add", tadmin, map[string]any{"team_id": ft.ownTeam, "member": map[string]any{"user_id": "never-created"}}), 400)
	envelope(t, Do(t, "POST", u+"/team/member_update", tadmin, map[string]any{"team_id": ft.ownTeam, "user_id": "spare", "role": "admin"}), 403)
	ok(t, Do(t, "POST", u+"/team/member_delete", tadmin, map[string]any{"team_id": ft.ownTeam, "user_id": "spare"}))
}

// TestAuthzListingsNarrowed checks that listings show a caller only what it
// may see.
func TestAuthzListingsNarrowed(t *testing.T) {
	w := newWorld(t, CPOptions{})
	u := w.u
	f := w.fixture("tuser", false)
	lk := ok(t, Do(t, "GET", u+"/key/list?return_full_object=true", w.keys["tuser"], nil))
	for _, k := range lk["keys_full"].([]any) {
		if k.(map[string]any)["user_id"] != "tuser" {
			t.Fatalf("key/list shows another's key: %v", k)
		}
	}
	// team_id filter by a plain member: still only its own keys.
	lk = ok(t, Do(t, "GET", u+"/key/list?return_full_object=true&team_id="+f.ownTeam, w.keys["tuser"], nil))
	for _, k := range lk["keys_full"].([]any) {
		if k.(map[string]any)["user_id"] != "tuser" {
			t.Fatalf("key/list by team shows a member's key to a team user: %v", k)
		}
	}
	ti := ok(t, Do(t, "GET", u+"/team/info?team_id="+f.ownTeam, w.keys["tuser"], nil))
	for _, k := range ti["keys"].([]any) {
		if k.(map[string]any)["user_id"] != "tuser" {
			t.Fatalf("team/info shows a member's key to a team user: %v", k)
		}
	}
	r := Do(t, "GET", u+"/team/list", w.keys["tuser"], nil)
	var teams []map[string]any
	if err := json.Unmarshal(r.Body, &teams); err != nil {
		t.Fatalf("team/list: %s", r.Body)
	}
	for _, tm := range teams {
		if tm["team_id"] == f.foreignTeam {
			t.Fatal("team/list shows a foreign team")
		}
	}
	ul := ok(t, Do(t, "GET", u+"/user/list", w.keys["tuser"], nil))
	if us := ul["users"].([]any); len(us) != 1 || us[0].(map[string]any)["user_id"] != "tuser" {
		t.Fatalf("user/list for an internal user: %v", ul)
	}
	if ul := ok(t, Do(t, "GET", u+"/user/list", w.keys["viewer"], nil)); len(ul["users"].([]any)) < 8 {
		t.Fatalf("viewer user/list: %v", ul)
	}
	ft := w.fixture("tadmin", false)
	lk = ok(t, Do(t, "GET", u+"/key/list?return_full_object=true&team_id="+ft.ownTeam, w.keys["tadmin"], nil))
	if lk["total_count"].(float64) < 2 {
		t.Fatalf("team admin should list its team's keys: %v", lk)
	}
}

// TestKeyGenerationSettings checks key_generation_settings and the custom
// key-generation webhook (deny, allow, unreachable).
func TestKeyGenerationSettings(t *testing.T) {
	w := newWorld(t, CPOptions{})
	u, mk := w.u, w.mk
	f := w.fixture("tuser", false)
	ft := w.fixture("tadmin", false)
	ok(t, Do(t, "POST", u+"/config/update", mk, `{"general_settings": {"key_generation_settings": {
		"team_key_generation": {"allowed_team_member_roles": ["admin"], "required_params": ["tags"]},
		"personal_key_generation": {"allowed_user_roles": ["proxy_admin"], "required_params": ["key_alias"]}}}}`))
	msg := func(r Response, status int) string {
		t.Helper()
		return envelope(t, r, status)["message"].(string)
	}
	if m := msg(Do(t, "POST", u+"/key/generate", w.keys["tuser"], map[string]any{"team_id": f.ownTeam, "tags": []string{"x"}}), 403); m != "Team member role user not in allowed_team_member_roles=['admin']" {
		t.Fatalf("team role message: %q", m)
	}
	if m := msg(Do(t, "POST", u+"/key/generate", w.keys["tuser"], map[string]any{"key_alias": "a"}), 403); m != "Personal key creation has been restricted by admin. Allowed roles=['proxy_admin']. Your role=internal_user" {
		t.Fatalf("personal role message: %q", m)
	}
	if m := msg(Do(t, "POST", u+"/key/generate", mk, map[string]any{"team_id": f.ownTeam}), 400); m != "Required param tags not in data" {
		t.Fatalf("required param message: %q", m)
	}
	if m := msg(Do(t, "POST", u+"/key/generate", mk, map[string]any{}), 400); m != "Required param key_alias not in data" {
		t.Fatalf("required param message: %q", m)
	}
	ok(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{"team_id": f.ownTeam, "tags": []string{"x"}}))
	ok(t, Do(t, "POST", u+"/key/generate", w.keys["tadmin"], map[string]any{"team_id": ft.ownTeam, "tags": []string{"x"}}))
	ok(t, Do(t, "POST", u+"/config/update", mk, `{"general_settings": {"key_generation_settings": null}}`))

	// The custom check.
	var decision atomic.Value
	decision.Store(`{"decision": false, "message": "keys need a cost center"}`)
	var seen atomic.Value
	hook := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		b, _ := json.Marshal(body)
		seen.Store(string(b))
		d := decision.Load().(string)
		if d == "slow" {
			time.Sleep(5 * time.Second)
		}
		rw.Header().Set("Content-Type", "application/json")
		_, _ = rw.Write([]byte(d))
	}))
	defer hook.Close()
	ok(t, Do(t, "POST", u+"/config/update", mk, map[string]any{"general_settings": map[string]any{"custom_key_generate_webhook": hook.URL}}))
	before := keyCount(t, w.cp)
	chosen := "sk-chosen-" + RandomKey()[3:]
	if m := msg(Do(t, "POST", u+"/key/generate", w.keys["tuser"], map[string]any{"key_alias": "cc", "key": chosen}), 403); m != "keys need a cost center" {
		t.Fatalf("webhook deny message: %q", m)
	}
	s, _ := seen.Load().(string)
	if !strings.Contains(s, `"user_id":"tuser"`) || !strings.Contains(s, `"key_alias":"cc"`) || strings.Contains(s, chosen) {
		t.Fatalf("webhook payload: %s", s)
	}
	if keyCount(t, w.cp) != before {
		t.Fatal("a denied key was created")
	}
	decision.Store(`{"decision": true}`)
	ok(t, Do(t, "POST", u+"/key/generate", w.keys["tuser"], map[string]any{"key_alias": "cc2"}))
	decision.Store(`not json`)
	envelope(t, Do(t, "POST", u+"/key/generate", w.keys["tuser"], map[string]any{}), 403)
	decision.Store("slow")
	start := time.Now()
	envelope(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}), 403)
	if d := time.Since(start); d > 4500*time.Millisecond {
		t.Fatalf("webhook timeout not bounded: %v", d)
	}
	hook.Close()
	envelope(t, Do(t, "POST", u+"/key/generate", mk, map[string]any{}), 403)
	if keyCount(t, w.cp) != before+1 {
		t.Fatal("keys were created while the check failed")
	}
}

// TestAuditEndpoint reads the audit log back after a series of mutations.
func TestAuditEndpoint(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		w := newWorld(t, o)
		u, mk := w.u, w.mk
		g := ok(t, Do(t, "POST", u+"/key/generate", w.keys["tuser"], map[string]any{"key_alias": "audited"}))
		tok, secret := g["token_id"].(string), g["key"].(string)
		ok(t, Do(t, "POST", u+"/key/update", w.keys["tuser"], map[string]any{"key": tok, "key_alias": "audited-2"}, "litellm-changed-by", "alice@example.com"))
		rg := ok(t, Do(t, "POST", u+"/key/regenerate", w.keys["tuser"], map[string]any{"key": tok}))
		ok(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": tok}))
		ok(t, Do(t, "POST", u+"/key/delete", mk, map[string]any{"keys": []string{tok}}))

		r := ok(t, Do(t, "GET", u+"/audit?object_type=key&object_id="+tok, mk, nil))
		logs := r["audit_logs"].([]any)
		var actions []string
		for _, l := range logs {
			actions = append(actions, l.(map[string]any)["action"].(string))
		}
		if got := strings.Join(actions, ","); got != "deleted,blocked,regenerated,updated,created" {
			t.Fatalf("actions newest first: %s", got)
		}
		upd := logs[3].(map[string]any)
		if upd["caller"] != "tuser" || upd["changed_by"] != "alice@example.com" {
			t.Fatalf("caller/changed_by: %v", upd)
		}
		if logs[1].(map[string]any)["caller"] != "master_key" {
			t.Fatalf("master caller: %v", logs[1])
		}
		if upd["before"].(map[string]any)["key_alias"] != "audited" || upd["after"].(map[string]any)["key_alias"] != "audited-2" {
			t.Fatalf("before/after: %v", upd)
		}
		all := Do(t, "GET", u+"/audit?page_size=100", mk, nil)
		for _, s := range []string{secret, rg["key"].(string), mk} {
			if strings.Contains(string(all.Body), s) || strings.Contains(string(all.Body), s[3:]) {
				t.Fatal("audit log holds key material")
			}
		}
		if r := ok(t, Do(t, "GET", u+"/audit?caller=tuser&page_size=2", mk, nil)); len(r["audit_logs"].([]any)) != 2 || r["total"].(float64) < 3 {
			t.Fatalf("caller filter/paging: %v", r)
		}
		future := url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339))
		if r := ok(t, Do(t, "GET", u+"/audit?start_time="+future, mk, nil)); r["total"].(float64) != 0 {
			t.Fatalf("start_time filter: %v", r)
		}
		if r := ok(t, Do(t, "GET", u+"/audit?end_time="+future+"&object_type=user", mk, nil)); r["total"].(float64) < 8 {
			t.Fatalf("end_time + object_type filter: %v", r)
		}
		envelope(t, Do(t, "GET", u+"/audit?start_time=yesterday", mk, nil), 400)
		envelope(t, Do(t, "GET", u+"/audit", w.keys["viewer"], nil), 403)
		envelope(t, Do(t, "GET", u+"/audit", w.keys["tuser"], nil), 403)
		ok(t, Do(t, "GET", u+"/audit", w.keys["padmin"], nil))
	})
}

// TestAuthzGRPC runs a representative subset over gRPC with the generated
// clients and the credential in "authorization" metadata.
func TestAuthzGRPC(t *testing.T) {
	w := newWorld(t, CPOptions{})
	f := w.fixture("tuser", false)
	conn, err := grpc.NewClient(w.cp.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	as := func(role string) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+w.keys[role])
	}
	keysC, usersC, teamsC, auditC := adminv1.NewKeyServiceClient(conn), adminv1.NewUserServiceClient(conn), adminv1.NewTeamServiceClient(conn), adminv1.NewAuditServiceClient(conn)
	code := func(name string, err error, want codes.Code) {
		t.Helper()
		if status.Code(err) != want {
			t.Errorf("%s: %v, want %s", name, err, want)
		}
	}
	before := w.auditTotal()
	_, err = keysC.UpdateKey(as("tuser"), &adminv1.UpdateKeyRequest{Key: f.ownKey, TeamId: wrapperspb.String(f.foreignTeam)})
	code("move key to foreign team", err, codes.PermissionDenied)
	_, err = keysC.UpdateKey(as("tuser"), &adminv1.UpdateKeyRequest{Key: f.foreignKey, KeyAlias: wrapperspb.String("x")})
	code("update foreign key", err, codes.NotFound)
	_, err = keysC.RegenerateKey(as("tuser"), &adminv1.RegenerateKeyRequest{Key: f.mateKey})
	code("regenerate mate's key", err, codes.NotFound)
	_, err = keysC.GenerateKey(as("tuser"), &adminv1.GenerateKeyRequest{UserId: "mate"})
	code("key for another user", err, codes.PermissionDenied)
	_, err = usersC.UpdateUser(as("tuser"), &adminv1.UpdateUserRequest{UserId: "tuser", UserRole: wrapperspb.String("proxy_admin")})
	code("own role", err, codes.PermissionDenied)
	_, err = usersC.NewUser(as("tuser"), &adminv1.NewUserRequest{UserId: "evil"})
	code("create user", err, codes.PermissionDenied)
	_, err = teamsC.NewTeam(as("viewer"), &adminv1.NewTeamRequest{TeamId: "evil"})
	code("viewer writes", err, codes.PermissionDenied)
	_, err = auditC.ListAudit(as("viewer"), &adminv1.ListAuditRequest{})
	code("viewer audit", err, codes.PermissionDenied)
	_, err = keysC.ListKeys(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer sk-nope"), &adminv1.ListKeysRequest{})
	code("bad credential", err, codes.Unauthenticated)
	if w.auditTotal() != before {
		t.Fatal("refused gRPC calls wrote audit rows")
	}
	if _, err := keysC.UpdateKey(as("tuser"), &adminv1.UpdateKeyRequest{Key: f.ownKey, KeyAlias: wrapperspb.String("grpc-own")}); err != nil {
		t.Fatalf("own key update over gRPC: %v", err)
	}
	lr, err := keysC.ListKeys(as("tuser"), &adminv1.ListKeysRequest{ReturnFullObject: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range lr.GetKeysFull() {
		if k.GetUserId() != "tuser" {
			t.Fatalf("gRPC key list shows %s's key", k.GetUserId())
		}
	}
	ar, err := auditC.ListAudit(as("master"), &adminv1.ListAuditRequest{ObjectId: f.ownKey, PageSize: 10})
	if err != nil || len(ar.GetAuditLogs()) != 2 || ar.GetAuditLogs()[0].GetCaller() != "tuser" {
		t.Fatalf("gRPC audit: %v %v", ar, err)
	}
}
