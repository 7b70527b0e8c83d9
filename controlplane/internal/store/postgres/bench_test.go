package postgres_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

// BenchmarkConcurrentCommits measures write throughput with 16 concurrent
// writers per CPU. Writes on the sequencing replica wake it in process; on
// another replica the wake-up NOTIFY is sent after commit (what the store
// does) or inside each writer's transaction (which makes Postgres serialize
// the commits of all notifying transactions).
func BenchmarkConcurrentCommits(b *testing.B) {
	for _, c := range []struct {
		name     string
		opts     []postgres.Option
		follower bool
	}{
		{"sequencing-replica/notify=none", nil, false},
		{"other-replica/notify=after-commit", nil, true},
		{"other-replica/notify=in-tx", []postgres.Option{postgres.WithNotifyInTx()}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			opts := append(c.opts, postgres.WithMaxConns(32))
			url := pgtest.NewDatabaseURL(b)
			var s *postgres.Store
			leader := open(b, url, opts...)
			s = leader
			if c.follower {
				for !leader.IsLeader() {
					time.Sleep(time.Millisecond)
				}
				s = open(b, url, opts...)
			}
			var n atomic.Int64
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := fmt.Sprint("k", n.Add(1))
					err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
						return tx.CreateKey(ctx, key(id, time.Now()))
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			waitHead(b, s, n.Load())
		})
	}
}
