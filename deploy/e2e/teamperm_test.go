package e2e

import (
	"slices"
	"strings"
	"testing"
)

// TestTeamMemberPermissions: a team's team_member_permissions (the
// key-management routes its members with team role "user" may call on their
// keys in the team) are honoured; a refusal is a 403 envelope naming the
// route and changes nothing. Team admins are not restricted by the list.
func TestTeamMemberPermissions(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		cp := StartControlPlane(t, o)
		u, mk := cp.URL(), cp.MasterKey
		users := map[string]string{}
		for _, id := range []string{"tp-alice", "tp-boss"} {
			r := ok(t, Do(t, "POST", u+"/user/new", mk, map[string]any{"user_id": id, "user_role": "internal_user"}))
			users[id] = r["key"].(string)
		}
		alice, boss := users["tp-alice"], users["tp-boss"]
		members := []map[string]any{{"user_id": "tp-alice", "role": "user"}, {"user_id": "tp-boss", "role": "admin"}}
		newTeam := func(id string, perms []string) {
			t.Helper()
			body := map[string]any{"team_id": id, "members_with_roles": members}
			if perms != nil {
				body["team_member_permissions"] = perms
			}
			ok(t, Do(t, "POST", u+"/team/new", mk, body))
		}
		newTeam("tp-gen", []string{"/key/generate", "/key/info"})
		newTeam("tp-ro", []string{"/key/info"})
		newTeam("tp-open", nil)

		perms := func(team string) []string {
			t.Helper()
			r := ok(t, Do(t, "GET", u+"/team/info?team_id="+team, mk, nil))
			info, _ := r["team_info"].(map[string]any)
			if info == nil {
				info = r
			}
			var out []string
			l, _ := info["team_member_permissions"].([]any)
			for _, p := range l {
				out = append(out, p.(string))
			}
			return out
		}
		if got := perms("tp-gen"); !slices.Equal(got, []string{"/key/generate", "/key/info"}) {
			t.Fatalf("team/info team_member_permissions = %v", got)
		}
		if got := perms("tp-open"); len(got) != 0 {
			t.Fatalf("team without a list shows %v", got)
		}
		refused := func(r Response, route string) {
			t.Helper()
			e := envelope(t, r, 403)
			if msg := e["message"].(string); !strings.Contains(msg, route) {
				t.Fatalf("refusal does not name %s: %s", route, msg)
			}
		}
		gen := func(bearer, team string) Response {
			return Do(t, "POST", u+"/key/generate", bearer, map[string]any{"team_id": team})
		}

		// Listed: a team user may create its own key in the team.
		k := ok(t, gen(alice, "tp-gen"))
		tok := k["token_id"].(string)
		// Not listed: /key/delete is refused and the key stays.
		before := keyCount(t, cp)
		refused(Do(t, "POST", u+"/key/delete", alice, map[string]any{"keys": []string{tok}}), "/key/delete")
		ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))
		// /key/info is listed.
		ok(t, Do(t, "GET", u+"/key/info?key="+tok, alice, nil))
		// Not listed: /key/update and /key/block.
		refused(Do(t, "POST", u+"/key/update", alice, map[string]any{"key": tok, "key_alias": "renamed"}), "/key/update")
		refused(Do(t, "POST", u+"/key/block", alice, map[string]any{"key": tok}), "/key/block")
		if inf, _ := ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))["info"].(map[string]any); inf == nil || inf["key_alias"] != nil && inf["key_alias"] != "" || inf["blocked"] == true {
			t.Fatalf("a refused call changed the key: %v", inf)
		}

		// Not listed: /key/generate in the read-only team, nothing created.
		refused(gen(alice, "tp-ro"), "/key/generate")
		if n := keyCount(t, cp); n != before {
			t.Fatalf("key count %v after refusals, want %v", n, before)
		}
		// The team admin is not restricted by the list.
		ok(t, gen(boss, "tp-ro"))
		// A team without a list: the role table applies.
		ok(t, gen(alice, "tp-open"))

		// Updating the list takes effect on the next call.
		ok(t, Do(t, "POST", u+"/team/update", mk, map[string]any{"team_id": "tp-ro", "team_member_permissions": []string{"/key/info", "/key/generate"}}))
		ok(t, gen(alice, "tp-ro"))
		ok(t, Do(t, "POST", u+"/team/update", mk, map[string]any{"team_id": "tp-gen", "team_member_permissions": []string{"/key/delete"}}))
		ok(t, Do(t, "POST", u+"/key/delete", alice, map[string]any{"keys": []string{tok}}))
		// An empty list clears it.
		ok(t, Do(t, "POST", u+"/team/update", mk, map[string]any{"team_id": "tp-gen", "team_member_permissions": []string{}}))
		if got := perms("tp-gen"); len(got) != 0 {
			t.Fatalf("cleared list shows %v", got)
		}

		// Only key-management routes are accepted.
		envelope(t, Do(t, "POST", u+"/team/new", mk, map[string]any{"team_id": "tp-bad", "team_member_permissions": []string{"/team/update"}}), 400)
		envelope(t, Do(t, "POST", u+"/team/update", mk, map[string]any{"team_id": "tp-ro", "team_member_permissions": []string{"/user/new"}}), 400)
		if got := perms("tp-ro"); !slices.Equal(got, []string{"/key/info", "/key/generate"}) {
			t.Fatalf("a refused update changed the list: %v", got)
		}
		// A team admin may not change the list (team/update is proxy_admin only).
		envelope(t, Do(t, "POST", u+"/team/update", boss, map[string]any{"team_id": "tp-ro", "team_member_permissions": []string{}}), 403)
	})
}
