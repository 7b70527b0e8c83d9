package embedded_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

// A schema-5 file (money in micro-USD) comes out of the v6 step with every
// amount in nano-USD: documents, end users, spend logs, job calls and the
// change log's documents multiplied by 1000 (saturating); prices, rate
// limits and credits unchanged.
func TestMigrateV6MoneyToNanoUSD(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	i64 := func(v int64) *int64 { return &v }
	k := newKey("k1", 0)
	k.MaxBudget, k.SoftBudget, k.RPMLimit = i64(10_000_000), i64(5), i64(60)
	k.ModelMaxBudget = map[string]store.ModelBudget{"gpt": {BudgetLimit: 2_000_000, TimePeriod: "1d"}}
	k.TeamID, k.UserID = "t1", "alice"
	tm := store.Team{TeamID: "t1", CreatedAt: at, UpdatedAt: at, TeamMemberBudget: i64(100),
		Members: []store.TeamMember{{UserID: "alice", Role: store.TeamRoleAdmin, MaxBudgetInTeam: i64(50)}, {UserID: "bob", Role: store.TeamRoleUser}},
		SaaS:    &store.TeamSaaS{Status: "active", CreditsAllocated: 10, CreditsRemaining: 10}}
	tm.MaxBudget = i64(1_000_000)
	u := store.User{UserID: "alice", UserRole: store.RoleInternalUser, CreatedAt: at, UpdatedAt: at}
	u.MaxBudget = i64(1)
	o := store.Organization{OrganizationID: "o1", CreatedAt: at, UpdatedAt: at}
	m := store.Model{ID: "d1", ModelName: "gpt", UpstreamModel: "openai/gpt", InputCostPerToken: 150_000, OutputCostPerToken: 600_000, CreatedAt: at}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, err := range []error{tx.CreateTeam(ctx, tm), tx.CreateUser(ctx, u), tx.CreateOrganization(ctx, o), tx.CreateKey(ctx, k), tx.CreateModel(ctx, m),
			tx.PutEndUser(ctx, store.EndUser{EndUserID: "e1", MaxBudget: i64(14), CreatedAt: at, UpdatedAt: at}),
			tx.PutEndUser(ctx, store.EndUser{EndUserID: "e2", Spend: 900_000_000_000_000_000, CreatedAt: at, UpdatedAt: at}),
			tx.CreateJob(ctx, store.Job{JobID: "j1", TeamID: "t1", JobType: "x", Status: "completed", CreatedAt: at}),
			tx.AddJobCall(ctx, store.JobCall{CallID: "c1", JobID: "j1", TeamID: "t1", Cost: 16, CreatedAt: at})} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	rec := store.SpendRecord{Seq: 1, RequestID: "r1", TokenID: "k1", TeamID: "t1", UserID: "alice", OrganizationID: "o1", EndUser: "e1",
		Model: "gpt", DeploymentID: "d1", PromptTokens: 9, CompletionTokens: 12, Cost: 9, Status: 200, StartTime: at, EndTime: at}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.ApplySpend(ctx, store.SpendBatch{ProxyID: "p", OutboxID: "o", Records: []store.SpendRecord{rec}})
		return err
	})
	s.Close()

	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(embedded.BucketMeta).Put(embedded.MetaSchemaVersion, binary.BigEndian.AppendUint64(nil, 5))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s2, err := embedded.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r := s2.Read()
	gk, err := r.GetKey(ctx, "k1")
	if err != nil || *gk.MaxBudget != 10_000_000_000 || *gk.SoftBudget != 5000 || *gk.RPMLimit != 60 || gk.Spend != 9000 ||
		gk.ModelMaxBudget["gpt"] != (store.ModelBudget{BudgetLimit: 2_000_000_000, TimePeriod: "1d"}) || gk.ModelSpend["gpt"] != 9000 {
		t.Fatalf("key after migration: %+v, %v", gk, err)
	}
	gt, err := r.GetTeam(ctx, "t1")
	if err != nil || *gt.MaxBudget != 1_000_000_000 || gt.Spend != 9000 || *gt.TeamMemberBudget != 100_000 || len(gt.Members) != 2 ||
		*gt.Members[0].MaxBudgetInTeam != 50_000 || gt.Members[0].Spend != 9000 || gt.Members[1].MaxBudgetInTeam != nil ||
		gt.SaaS.CreditsAllocated != 10 || gt.SaaS.CreditsRemaining != 10 {
		t.Fatalf("team after migration: %+v, %v", gt, err)
	}
	if g, err := r.GetUser(ctx, "alice"); err != nil || g.Spend != 9000 || *g.MaxBudget != 1000 {
		t.Fatalf("user after migration: %+v, %v", g, err)
	}
	if g, err := r.GetOrganization(ctx, "o1"); err != nil || g.Spend != 9000 {
		t.Fatalf("organization after migration: %+v, %v", g, err)
	}
	if g, err := r.GetEndUser(ctx, "e1"); err != nil || g.Spend != 9000 || *g.MaxBudget != 14_000 {
		t.Fatalf("end user after migration: %+v, %v", g, err)
	}
	if g, err := r.GetEndUser(ctx, "e2"); err != nil || g.Spend != math.MaxInt64 || g.MaxBudget != nil {
		t.Fatalf("end user e2 after migration (saturated): %+v, %v", g, err)
	}
	if logs, _, err := r.ListSpendLogs(ctx, store.SpendLogFilter{}); err != nil || len(logs) != 1 || logs[0].Cost != 9000 {
		t.Fatalf("spend logs after migration: %+v, %v", logs, err)
	}
	if calls, err := r.ListJobCalls(ctx, "j1"); err != nil || len(calls) != 1 || calls[0].Cost != 16_000 {
		t.Fatalf("job calls after migration: %+v, %v", calls, err)
	}
	if gm, err := r.GetModel(ctx, "d1"); err != nil || gm.InputCostPerToken != 150_000 || gm.OutputCostPerToken != 600_000 {
		t.Fatalf("model after migration (prices unchanged): %+v, %v", gm, err)
	}
	// The change log serves the same amounts as the documents.
	sets, err := s2.Changes(ctx, 0, 100)
	if err != nil || len(sets) == 0 {
		t.Fatalf("changes after migration: %v, %v", sets, err)
	}
	var seenKey, seenModel, seenEndUser bool
	for _, cs := range sets {
		for _, c := range cs.Changes {
			switch c.Kind {
			case store.KindKey:
				var ck store.Key
				if err := json.Unmarshal(c.Data, &ck); err != nil || *ck.MaxBudget != 10_000_000_000 || (ck.Spend != 0 && ck.Spend != 9000) {
					t.Fatalf("key change: %s, %v", c.Data, err)
				}
				seenKey = true
			case store.KindModel:
				var cm store.Model
				if err := json.Unmarshal(c.Data, &cm); err != nil || cm.InputCostPerToken != 150_000 {
					t.Fatalf("model change: %s, %v", c.Data, err)
				}
				seenModel = true
			case store.KindEndUser:
				var ce store.EndUser
				if err := json.Unmarshal(c.Data, &ce); err != nil || (ce.EndUserID == "e1" && *ce.MaxBudget != 14_000) {
					t.Fatalf("end user change: %s, %v", c.Data, err)
				}
				seenEndUser = true
			}
		}
	}
	if !seenKey || !seenModel || !seenEndUser {
		t.Fatalf("change log misses kinds: key %v model %v end user %v", seenKey, seenModel, seenEndUser)
	}
}
