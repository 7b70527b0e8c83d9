package saasapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const master = "sk-master-test-key"

// backends runs fn on a fresh embedded store and a fresh Postgres store.
func backends(t *testing.T, fn func(t *testing.T, s *Service, st store.Store)) {
	t.Run("embedded", func(t *testing.T) {
		st, err := embedded.Open(filepath.Join(t.TempDir(), "tollgate.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		fn(t, New(st, Options{MasterKey: master, SyncToken: "tok"}), st)
	})
	t.Run("postgres", func(t *testing.T) {
		st := pgtest.NewStore(t)
		fn(t, New(st, Options{MasterKey: master, SyncToken: "tok"}), st)
	})
}

type resp struct {
	status int
	body   map[string]any
	raw    string
}

func call(t *testing.T, s *Service, method, path string, body any, hdr ...string) resp {
	t.Helper()
	var rd *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req := httptest.NewRequest(method, path, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, req)
	r := resp{status: w.Code, raw: w.Body.String()}
	_ = json.Unmarshal(w.Body.Bytes(), &r.body)
	return r
}

func admin(t *testing.T, s *Service, method, path string, body any) resp {
	t.Helper()
	return call(t, s, method, path, body, "X-Admin-Key", master)
}

func wantDetail(t *testing.T, r resp, status int, detail string) {
	t.Helper()
	if r.status != status || r.body["detail"] != detail || len(r.body) != 1 {
		t.Fatalf("got %d %s, want %d {\"detail\": %q}", r.status, r.raw, status, detail)
	}
}

// seed creates an organization, a group and a team with credits; it
// returns the team's plaintext key.
func seed(t *testing.T, s *Service, team string, credits int) string {
	t.Helper()
	if r := admin(t, s, "POST", "/api/organizations/create", map[string]any{"organization_id": "org", "name": "Org"}); r.status != 200 && r.status != 400 {
		t.Fatalf("org: %d %s", r.status, r.raw)
	}
	if r := admin(t, s, "POST", "/api/model-groups/create", map[string]any{"group_name": "G",
		"models": []map[string]any{{"model_name": "m2", "priority": 2}, {"model_name": "m1", "priority": 1}}}); r.status != 200 && r.status != 400 {
		t.Fatalf("group: %d %s", r.status, r.raw)
	}
	r := admin(t, s, "POST", "/api/teams/create", map[string]any{"organization_id": "org", "team_id": team,
		"access_groups": []string{"G"}, "credits_allocated": credits})
	if r.status != 200 {
		t.Fatalf("team: %d %s", r.status, r.raw)
	}
	return r.body["virtual_key"].(string)
}

func TestAdminAuth(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, _ store.Store) {
		wantDetail(t, call(t, s, "GET", "/api/model-groups", nil), 401, "Missing X-Admin-Key header. Admin authentication required.")
		wantDetail(t, call(t, s, "GET", "/api/model-groups", nil, "X-Admin-Key", "sk-nope"), 401, "Invalid admin API key")
		wantDetail(t, call(t, s, "GET", "/api/model-groups", nil, "Authorization", "Bearer sk-nope"), 401, "Invalid admin API key")
		if r := call(t, s, "GET", "/api/model-groups", nil, "Authorization", "Bearer "+master); r.status != 200 {
			t.Fatalf("bearer master key: %d %s", r.status, r.raw)
		}
		if r := admin(t, s, "GET", "/api/model-groups", nil); r.status != 200 {
			t.Fatalf("X-Admin-Key: %d %s", r.status, r.raw)
		}
	})
}

func TestCreateTeam(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx := context.Background()
		wantDetail(t, admin(t, s, "POST", "/api/teams/create", map[string]any{"organization_id": "nope", "team_id": "t1"}),
			404, "Organization 'nope' not found")
		key := seed(t, s, "t1", 4)
		// A refused create changes nothing.
		wantDetail(t, admin(t, s, "POST", "/api/teams/create", map[string]any{"organization_id": "org", "team_id": "t2", "model_groups": []string{"G", "missing"}}),
			404, "Model group 'missing' not found")
		if _, err := st.Read().GetTeam(ctx, "t2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("refused create left a team: %v", err)
		}
		wantDetail(t, admin(t, s, "POST", "/api/teams/create", map[string]any{"organization_id": "org", "team_id": "t1"}), 400, "Team 't1' already exists")

		tm, err := st.Read().GetTeam(ctx, "t1")
		if err != nil {
			t.Fatal(err)
		}
		if tm.SaaS.Status != store.TeamStatusActive || tm.SaaS.CreditsRemaining != 4 || strings.Join(tm.Models, ",") != "m1,m2" ||
			tm.MaxBudget == nil || *tm.MaxBudget != 4*DefaultCreditRate || tm.SaaS.ModelGroups[0].Models[0] != "m1" {
			t.Fatalf("stored team %+v %+v", tm, tm.SaaS)
		}
		txs, _, _ := st.Read().ListCreditTransactions(ctx, "t1", store.Page{})
		if len(txs) != 1 || txs[0].BalanceAfter != 4 || txs[0].Type != store.CreditAllocation {
			t.Fatalf("transactions %+v", txs)
		}
		evs, _, _ := st.Read().ListEvents(ctx, store.EventFilter{})
		if len(evs) != 2 || evs[0].Type != store.EventTeamCreated || evs[1].Type != store.EventKeyCreated || strings.Contains(string(evs[1].Payload), key) {
			t.Fatalf("events %+v", evs)
		}
		if l := admin(t, s, "GET", "/api/teams", nil); l.status != 200 || !strings.Contains(l.raw, `"team_id":"t1"`) || strings.Contains(l.raw, key) {
			t.Fatalf("list teams: %d %s", l.status, l.raw)
		}
		g := admin(t, s, "GET", "/api/teams/t1", nil)
		if g.status != 200 || strings.Contains(g.raw, key) || !strings.HasPrefix(g.body["virtual_key"].(string), "sk-...") {
			t.Fatalf("GET team: %d %s", g.status, g.raw)
		}
	})
}

func TestStatusAndCredits(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx := context.Background()
		seed(t, s, "t1", 1)
		if r := call(t, s, "PUT", "/api/teams/t1/suspend", nil, "X-Admin-Key", master, "litellm-changed-by", "ops@example.com"); r.status != 200 {
			t.Fatalf("suspend: %d %s", r.status, r.raw)
		}
		if a, _, _ := st.Read().ListAudit(ctx, store.AuditFilter{ObjectType: "team", ObjectID: "t1"}); len(a) == 0 || a[0].ChangedBy != "ops@example.com" || a[0].Caller != "master_key" {
			t.Fatalf("audit %+v", a)
		}
		for _, c := range []struct{ path, want string }{{"suspend", "suspended"}, {"pause", "paused"}, {"resume", "active"}} {
			r := admin(t, s, "PUT", "/api/teams/t1/"+c.path, nil)
			tm, _ := st.Read().GetTeam(ctx, "t1")
			if r.status != 200 || r.body["status"] != c.want || tm.SaaS.Status != c.want {
				t.Fatalf("%s: %d %s, stored %s", c.path, r.status, r.raw, tm.SaaS.Status)
			}
		}
		wantDetail(t, admin(t, s, "PUT", "/api/teams/nope/suspend", nil), 404, "Team 'nope' not found")
		if r := admin(t, s, "POST", "/api/credits/teams/t1/add", map[string]any{"credits_amount": -3}); r.status != 422 {
			t.Fatalf("negative credits: %d %s", r.status, r.raw)
		}
		r := admin(t, s, "POST", "/api/credits/teams/t1/add", map[string]any{"credits_amount": 5, "reason": "top-up"})
		tm, _ := st.Read().GetTeam(ctx, "t1")
		if r.status != 200 || tm.SaaS.CreditsRemaining != 6 || *tm.MaxBudget != 6*DefaultCreditRate {
			t.Fatalf("add: %d %s; stored %+v", r.status, r.raw, tm.SaaS)
		}
		txs, _, _ := st.Read().ListCreditTransactions(ctx, "t1", store.Page{})
		if len(txs) != 2 || txs[0].BalanceBefore != 1 || txs[0].BalanceAfter != 6 || txs[0].Reason != "top-up" {
			t.Fatalf("transactions %+v", txs)
		}
	})
}

// decoder returns a function that decodes a Service reply (failing t).
func decoder(t *testing.T) func(b []byte, err error) map[string]any {
	return func(b []byte, err error) map[string]any {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
}

func TestCompleteJobExactlyOnce(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx, dec := context.Background(), decoder(t)
		seed(t, s, "t1", 3)
		seed(t, s, "t2", 3)
		job := dec(s.CreateJob(ctx, "t1", "", "x", nil))["job_id"].(string)
		if _, err := s.StartCall(ctx, "t1", job, "G"); err != nil {
			t.Fatal(err)
		}
		// A fallback: the first attempt failed, the second served.
		for i, e := range []string{"upstream failed with status 500", ""} {
			if _, err := s.RecordCall(ctx, store.JobCall{CallID: "c/" + string(rune('1'+i)), RequestID: "c", Attempt: i + 1, JobID: job, TeamID: "t1", Error: e, TotalTokens: 15}); err != nil {
				t.Fatal(err)
			}
		}
		// Another team: 403, nothing revealed; unknown: 404.
		for _, f := range []func() ([]byte, error){
			func() ([]byte, error) { return s.GetJob(ctx, "t2", job) },
			func() ([]byte, error) { return s.CompleteJob(ctx, "t2", job, "completed", nil, "") },
			func() ([]byte, error) { return s.StartCall(ctx, "t2", job, "G") },
		} {
			var ae *apiError
			if _, err := f(); !errors.As(err, &ae) || ae.status != 403 || strings.Contains(ae.detail, "t1") {
				t.Fatalf("other team: %v", err)
			}
		}
		var ae *apiError
		if _, err := s.GetJob(ctx, "t1", "nope"); !errors.As(err, &ae) || ae.status != 404 {
			t.Fatalf("unknown job: %v", err)
		}
		// Eight concurrent completions: one credit.
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if _, err := s.CompleteJob(ctx, "t1", job, "completed", nil, ""); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		out := dec(s.CompleteJob(ctx, "t1", job, "failed", nil, ""))
		costs := out["costs"].(map[string]any)
		if out["status"] != "completed" || costs["credit_applied"] != true || costs["credits_remaining"] != 2.0 ||
			costs["total_calls"] != 1.0 || costs["failed_calls"] != 0.0 || costs["total_attempts"] != 2.0 {
			t.Fatalf("summary %v", out)
		}
		txs, _, _ := st.Read().ListCreditTransactions(ctx, "t1", store.Page{})
		if len(txs) != 2 || txs[0].Type != store.CreditDeduction || txs[0].BalanceAfter != 2 || txs[0].JobID != job {
			t.Fatalf("transactions %+v", txs)
		}
		if _, err := s.StartCall(ctx, "t1", job, "G"); !errors.As(err, &ae) || ae.status != 400 {
			t.Fatalf("call on a completed job: %v", err)
		}
	})
}

func TestFailedJobsCostNothing(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx, dec := context.Background(), decoder(t)
		seed(t, s, "t1", 2)
		// Completed, but a call failed on every model.
		j1 := dec(s.CreateJob(ctx, "t1", "", "x", nil))["job_id"].(string)
		if _, err := s.RecordCall(ctx, store.JobCall{CallID: "a/1", RequestID: "a", JobID: j1, TeamID: "t1", Error: "upstream failed with status 502"}); err != nil {
			t.Fatal(err)
		}
		c1 := dec(s.CompleteJob(ctx, "t1", j1, "completed", nil, ""))["costs"].(map[string]any)
		// Failed by the client.
		j2 := dec(s.CreateJob(ctx, "t1", "", "x", nil))["job_id"].(string)
		c2 := dec(s.CompleteJob(ctx, "t1", j2, "failed", nil, "oops"))["costs"].(map[string]any)
		if c1["credit_applied"] != false || c1["failed_calls"] != 1.0 || c2["credit_applied"] != false || c2["credits_remaining"] != 2.0 {
			t.Fatalf("costs %v %v", c1, c2)
		}
		var ae *apiError
		if _, err := s.CompleteJob(ctx, "t1", j2, "done", nil, ""); !errors.As(err, &ae) || ae.status != http.StatusUnprocessableEntity {
			t.Fatalf("bad status: %v", err)
		}
		if txs, _, _ := st.Read().ListCreditTransactions(ctx, "t1", store.Page{}); len(txs) != 1 {
			t.Fatalf("transactions %+v", txs)
		}
	})
}

func TestTeamUpdateCreditsAddAndUsage(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx, dec := context.Background(), decoder(t)
		seed(t, s, "t1", 2)
		if r := admin(t, s, "POST", "/api/model-groups/create", map[string]any{"group_name": "H", "models": []map[string]any{{"model_name": "m3", "priority": 0}}}); r.status != 200 {
			t.Fatal(r.raw)
		}
		r := admin(t, s, "PUT", "/api/teams/t1", map[string]any{"team_alias": "Prod", "access_groups": []string{"H"}})
		tm, _ := st.Read().GetTeam(ctx, "t1")
		if r.status != 200 || tm.TeamAlias != "Prod" || strings.Join(tm.Models, ",") != "m3" || r.body["access_groups"].([]any)[0] != "H" {
			t.Fatalf("update: %d %s; %+v", r.status, r.raw, tm)
		}
		wantDetail(t, admin(t, s, "PUT", "/api/teams/t1", map[string]any{"model_groups": []string{"nope"}}), 404, "Model group 'nope' not found")
		if tm2, _ := st.Read().GetTeam(ctx, "t1"); strings.Join(tm2.Models, ",") != "m3" {
			t.Fatalf("refused update changed the team: %+v", tm2)
		}
		if r := admin(t, s, "POST", "/api/credits/add", map[string]any{"team_id": "t1", "amount": 3, "description": "top-up"}); r.status != 200 || r.body["credits_remaining"] != 5.0 {
			t.Fatalf("credits/add: %d %s", r.status, r.raw)
		}
		if b := admin(t, s, "GET", "/api/credits/balance?team_id=t1", nil); b.status != 200 || b.body["credits_remaining"] != 5.0 {
			t.Fatalf("admin balance: %d %s", b.status, b.raw)
		}
		if x := admin(t, s, "GET", "/api/credits/teams/t1/transactions", nil); x.status != 200 || x.body["total"] != 2.0 {
			t.Fatalf("admin transactions: %d %s", x.status, x.raw)
		}
		job := dec(s.CreateJob(ctx, "t1", "", "resume", nil))["job_id"].(string)
		dec(s.CompleteJob(ctx, "t1", job, "completed", nil, ""))
		u := admin(t, s, "GET", "/api/teams/t1/usage?period="+time.Now().UTC().Format("2006-01"), nil)
		if u.status != 200 || u.body["summary"].(map[string]any)["total_jobs"] != 1.0 || u.body["summary"].(map[string]any)["credits_used"] != 1.0 {
			t.Fatalf("usage: %d %s", u.status, u.raw)
		}
		if r := admin(t, s, "GET", "/api/teams/t1/usage?period=bad", nil); r.status != 422 {
			t.Fatalf("bad period: %d", r.status)
		}
	})
}

// A team deleted with jobs behind it leaves its id unusable for a new SaaS
// team: the new team would read the old one's jobs and credits.
func TestTeamIDWithHistoryIsNotReused(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx := context.Background()
		seed(t, s, "old", 2)
		if _, err := s.CreateJob(ctx, "old", "", "x", nil); err != nil {
			t.Fatal(err)
		}
		if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "old") }); err != nil {
			t.Fatal(err)
		}
		r := admin(t, s, "POST", "/api/teams/create", map[string]any{"organization_id": "org", "team_id": "old", "access_groups": []string{"G"}})
		if r.status != 409 || !strings.Contains(r.raw, "used before") {
			t.Fatalf("re-created team: %d %s", r.status, r.raw)
		}
	})
}

// Job listings honour any offset, not only multiples of the limit.
func TestListJobsOffset(t *testing.T) {
	backends(t, func(t *testing.T, s *Service, st store.Store) {
		ctx, dec := context.Background(), decoder(t)
		seed(t, s, "t1", 1)
		var ids []string
		for range 5 {
			ids = append(ids, dec(s.CreateJob(ctx, "t1", "", "x", nil))["job_id"].(string))
		}
		got := dec(s.ListJobs(ctx, "t1", 2, 1))
		jobs := got["jobs"].([]any)
		// Newest first: ids[4], ids[3], ids[2], ...; offset 1, limit 2.
		if got["total"] != 5.0 || len(jobs) != 2 || jobs[0].(map[string]any)["job_id"] != ids[3] || jobs[1].(map[string]any)["job_id"] != ids[2] {
			t.Fatalf("offset 1 limit 2: %v", got)
		}
	})
}
