package postgres_test

import (
	"context"
	"encoding/json"
	"math"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

// Money written before 0009 (micro-USD) reads as the same amounts in
// nano-USD after it: every money field of every document, the end users'
// and spend logs' columns, job call costs and the change log's documents are
// multiplied by 1000; prices (pico-USD per token), rate limits and credits
// are not. An amount beyond int64 in nano-USD saturates.
func TestMigrateMoneyToNanoUSD(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewEmptyDatabaseURL(t)
	if err := postgres.MigrateTo(ctx, url, 8); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	doc := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	i64 := func(v int64) *int64 { return &v }
	k := key("k1", base)
	k.MaxBudget, k.SoftBudget, k.RPMLimit, k.Spend = i64(10_000_000), i64(5), i64(60), 855
	k.ModelMaxBudget = map[string]store.ModelBudget{"gpt": {BudgetLimit: 2_000_000, TimePeriod: "1d"}}
	k.ModelSpend = map[string]int64{"gpt": 3}
	tm := store.Team{TeamID: "t1", CreatedAt: base, Spend: 7, TeamMemberBudget: i64(100),
		Members: []store.TeamMember{{UserID: "alice", Role: store.TeamRoleAdmin, MaxBudgetInTeam: i64(50), Spend: 4}, {UserID: "bob", Role: store.TeamRoleUser}},
		SaaS:    &store.TeamSaaS{Status: "active", CreditsAllocated: 10, CreditsRemaining: 10}}
	tm.MaxBudget = i64(1_000_000)
	u := store.User{UserID: "alice", UserRole: store.RoleInternalUser, CreatedAt: base, Spend: 11}
	u.MaxBudget = i64(1)
	o := store.Organization{OrganizationID: "o1", CreatedAt: base, Spend: 12, Members: []store.OrgMember{{UserID: "alice", Role: "org_admin"}}}
	m := store.Model{ID: "d1", ModelName: "gpt", UpstreamModel: "openai/gpt", InputCostPerToken: 150_000, OutputCostPerToken: 600_000, CreatedAt: base}
	exec(`INSERT INTO keys (token_id, key_hash, created_at, doc) VALUES ($1, $2, $3, $4)`, k.TokenID, k.KeyHash, k.CreatedAt, doc(k))
	exec(`INSERT INTO teams (team_id, created_at, doc) VALUES ($1, $2, $3)`, tm.TeamID, tm.CreatedAt, doc(tm))
	exec(`INSERT INTO users (user_id, user_role, created_at, doc) VALUES ($1, $2, $3, $4)`, u.UserID, u.UserRole, u.CreatedAt, doc(u))
	exec(`INSERT INTO organizations (organization_id, created_at, doc) VALUES ($1, $2, $3)`, o.OrganizationID, o.CreatedAt, doc(o))
	exec(`INSERT INTO models (id, model_name, created_at, doc) VALUES ($1, $2, $3, $4)`, m.ID, m.ModelName, m.CreatedAt, doc(m))
	exec(`INSERT INTO end_users (end_user_id, spend, max_budget, created_at, updated_at) VALUES ('e1', 13, 14, $1, $1), ('e2', 900000000000000000, NULL, $1, $1)`, base)
	exec(`INSERT INTO spend_logs (proxy_id, outbox_id, seq, request_id, token_id, model, deployment_id, prompt_tokens, completion_tokens, cost, streamed, estimated, status, route, start_ns, end_ns)
VALUES ('p', 'o', 1, 'r1', 'k1', 'gpt', 'd1', 9, 12, 9, false, false, 200, '/v1/chat/completions', $1, $1)`, base.UnixNano())
	exec(`INSERT INTO jobs (job_id, team_id, doc) VALUES ('j1', 't1', $1)`, doc(store.Job{JobID: "j1", TeamID: "t1", JobType: "x", Status: "completed", CreatedAt: base}))
	exec(`INSERT INTO job_calls (call_id, job_id, doc) VALUES ('c1', 'j1', $1)`, doc(store.JobCall{CallID: "c1", JobID: "j1", TeamID: "t1", Cost: 16, CreatedAt: base}))
	exec(`INSERT INTO changes (revision, kind, entity_id, op, data) VALUES (1, 'key', 'k1', 'put', $1), (1, 'model', 'd1', 'put', $2), (1, 'end_user', 'e1', 'put', '{"end_user_id":"e1","spend":13,"max_budget":14}'), (1, 'team', 'gone', 'delete', NULL)`, doc(k), doc(m))
	exec(`UPDATE revision_head SET revision = 1`)
	conn.Close(ctx)

	s := open(t, url) // migrates to the newest version
	r := s.Read()
	gk, err := r.GetKey(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if *gk.MaxBudget != 10_000_000_000 || *gk.SoftBudget != 5000 || *gk.RPMLimit != 60 || gk.Spend != 855_000 ||
		gk.ModelMaxBudget["gpt"] != (store.ModelBudget{BudgetLimit: 2_000_000_000, TimePeriod: "1d"}) || gk.ModelSpend["gpt"] != 3000 {
		t.Fatalf("key after migration: %+v", gk)
	}
	gt, err := r.GetTeam(ctx, "t1")
	if err != nil {
		t.Fatal(err)
	}
	if *gt.MaxBudget != 1_000_000_000 || gt.Spend != 7000 || *gt.TeamMemberBudget != 100_000 || len(gt.Members) != 2 ||
		*gt.Members[0].MaxBudgetInTeam != 50_000 || gt.Members[0].Spend != 4000 || gt.Members[1].MaxBudgetInTeam != nil || gt.Members[1].UserID != "bob" ||
		gt.SaaS.CreditsAllocated != 10 || gt.SaaS.CreditsRemaining != 10 {
		t.Fatalf("team after migration: %+v", gt)
	}
	if gu, err := r.GetUser(ctx, "alice"); err != nil || gu.Spend != 11_000 || *gu.MaxBudget != 1000 {
		t.Fatalf("user after migration: %+v, %v", gu, err)
	}
	if g, err := r.GetOrganization(ctx, "o1"); err != nil || g.Spend != 12_000 || len(g.Members) != 1 {
		t.Fatalf("organization after migration: %+v, %v", g, err)
	}
	if g, err := r.GetEndUser(ctx, "e1"); err != nil || g.Spend != 13_000 || *g.MaxBudget != 14_000 {
		t.Fatalf("end user after migration: %+v, %v", g, err)
	}
	if g, err := r.GetEndUser(ctx, "e2"); err != nil || g.Spend != math.MaxInt64 || g.MaxBudget != nil {
		t.Fatalf("end user without budget after migration: %+v, %v", g, err)
	}
	if logs, _, err := r.ListSpendLogs(ctx, store.SpendLogFilter{}); err != nil || len(logs) != 1 || logs[0].Cost != 9000 {
		t.Fatalf("spend logs after migration: %+v, %v", logs, err)
	}
	if calls, err := r.ListJobCalls(ctx, "j1"); err != nil || len(calls) != 1 || calls[0].Cost != 16_000 {
		t.Fatalf("job calls after migration: %+v, %v", calls, err)
	}
	// The change log serves the same amounts as the documents.
	sets, err := s.Changes(ctx, 0, 10)
	if err != nil || len(sets) != 1 || len(sets[0].Changes) != 4 {
		t.Fatalf("changes after migration: %+v, %v", sets, err)
	}
	for _, c := range sets[0].Changes {
		switch c.Kind {
		case store.KindKey:
			var ck store.Key
			if err := json.Unmarshal(c.Data, &ck); err != nil || ck.Spend != 855_000 || *ck.MaxBudget != 10_000_000_000 || ck.ModelSpend["gpt"] != 3000 {
				t.Fatalf("key change: %s, %v", c.Data, err)
			}
		case store.KindModel:
			var cm store.Model
			if err := json.Unmarshal(c.Data, &cm); err != nil || cm.InputCostPerToken != 150_000 || cm.OutputCostPerToken != 600_000 {
				t.Fatalf("model change (prices are not amounts): %s, %v", c.Data, err)
			}
		case store.KindEndUser:
			var ce store.EndUser
			if err := json.Unmarshal(c.Data, &ce); err != nil || ce.Spend != 13_000 || *ce.MaxBudget != 14_000 {
				t.Fatalf("end user change: %s, %v", c.Data, err)
			}
		}
	}
	if gm, err := r.GetModel(ctx, "d1"); err != nil || gm.InputCostPerToken != 150_000 || gm.OutputCostPerToken != 600_000 {
		t.Fatalf("model after migration (prices unchanged): %+v, %v", gm, err)
	}
}
