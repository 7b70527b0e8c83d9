package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
)

// BenchmarkApplySpend measures spend ingestion: records spread over 50 keys
// of 5 teams, one transaction per batch. A proxy sends batches of up to 512
// and keeps 4 in flight; the sync server merges what is queued into one
// transaction, so 2048 is the size a busy proxy's batches are applied at.
func BenchmarkApplySpend(b *testing.B) {
	for _, per := range []int{500, 2048} {
		b.Run(fmt.Sprintf("batch=%d", per), func(b *testing.B) { benchApplySpend(b, per) })
	}
}

func benchApplySpend(b *testing.B, per int) {
	s := pgtest.NewStore(b)
	ctx := context.Background()
	now := time.Now()
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateOrganization(ctx, store.Organization{OrganizationID: "o", OrganizationAlias: "o", CreatedAt: now}); err != nil {
			return err
		}
		for t := range 5 {
			tm := store.Team{TeamID: fmt.Sprint("t", t), OrganizationID: "o", CreatedAt: now}
			for u := range 10 {
				tm.Members = append(tm.Members, store.TeamMember{UserID: fmt.Sprint("u", t*10+u), Role: store.TeamRoleUser})
			}
			if err := tx.CreateTeam(ctx, tm); err != nil {
				return err
			}
		}
		for i := range 50 {
			if err := tx.CreateUser(ctx, store.User{UserID: fmt.Sprint("u", i), UserRole: store.RoleInternalUser, CreatedAt: now}); err != nil {
				return err
			}
			if err := tx.CreateKey(ctx, store.Key{TokenID: fmt.Sprint("k", i), KeyHash: fmt.Sprint("h", i), UserID: fmt.Sprint("u", i),
				TeamID: fmt.Sprint("t", i/10), OrganizationID: "o", CreatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	var seq uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		recs := make([]store.SpendRecord, per)
		for j := range recs {
			seq++
			k := int(seq % 50)
			recs[j] = store.SpendRecord{Seq: seq, RequestID: fmt.Sprint("req-", seq), TokenID: fmt.Sprint("k", k),
				TeamID: fmt.Sprint("t", k/10), UserID: fmt.Sprint("u", k), OrganizationID: "o", EndUser: fmt.Sprint("c", seq%100),
				Model: "gpt-4o-mini", DeploymentID: "d1", PromptTokens: 10, CompletionTokens: 5, Cost: 5, Status: 200,
				Route: "/chat/completions", StartTime: now, EndTime: now}
		}
		err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			_, err := tx.ApplySpend(ctx, store.SpendBatch{ProxyID: "p", OutboxID: "ob", Records: recs})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "records/s")
}
