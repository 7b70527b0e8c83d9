package pgcoord_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord/coordtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord/pgcoord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type pgDeployment struct{ url string }

func (pgDeployment) Replicas() int { return 3 }

func (d pgDeployment) Replica(t *testing.T, deliver coord.Deliver) coordtest.Replica {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgcoord.Open(ctx, d.url, deliver, pgcoord.Options{Logger: pgtest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPostgresConformance(t *testing.T) {
	// Each subtest gets a deployment of its own (a fresh database).
	coordtest.Run(t, &perTest{})
}

// perTest starts a new database whenever a subtest starts its first replica.
type perTest struct {
	t   *testing.T
	url string
}

func (p *perTest) Replicas() int { return 3 }

func (p *perTest) Replica(t *testing.T, deliver coord.Deliver) coordtest.Replica {
	if p.t != t {
		p.t, p.url = t, pgtest.NewDatabaseURL(t)
	}
	return pgDeployment{p.url}.Replica(t, deliver)
}

// TestMemberOfDeadReplicaExpires: a replica dies and its proxy never comes
// back; after MemberTTL another replica expires the member: the count drops,
// its rpm use stays allocated and its parallel slots are freed.
func TestMemberOfDeadReplicaExpires(t *testing.T) {
	url := pgtest.NewDatabaseURL(t)
	o := pgcoord.Options{Logger: pgtest.Logger(), Beat: 100 * time.Millisecond, MemberTTL: time.Second}
	var mu sync.Mutex
	last := map[string]int32{}
	deliver := func(session string, g *syncv1.LeaseGrant) {
		mu.Lock()
		defer mu.Unlock()
		if g.GetProxies() > 0 {
			last[session] = g.GetProxies()
		}
	}
	ctx := context.Background()
	r0, err := pgcoord.Open(ctx, url, deliver, o)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := pgcoord.Open(ctx, url, deliver, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r1.Close() })
	a := coord.Session{Member: "x-a", ID: "x-a-1"}
	b := coord.Session{Member: "x-b", ID: "x-b-1"}
	if err := r0.Join(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := r1.Join(ctx, b); err != nil {
		t.Fatal(err)
	}
	w := time.Now().Unix() / 60 * 60
	r0.Request(ctx, a, &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{
		{Scope: "key:x:rpm", Limit: 10, WindowUnix: w, Used: 3}, {Scope: "key:x:par", Limit: 2, Used: 1}}})
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("x-a's use recorded", func() bool {
		al, _ := r1.Allocations(ctx, "key:x:par", 0)
		return len(al) == 2
	})
	wait("x-b counts 2", func() bool { mu.Lock(); defer mu.Unlock(); return last[b.ID] == 2 })
	r0.Close() // dies without leaving
	wait("x-a expired: x-b counts 1", func() bool { mu.Lock(); defer mu.Unlock(); return last[b.ID] == 1 })
	rpm, _ := r1.Allocations(ctx, "key:x:rpm", w)
	par, _ := r1.Allocations(ctx, "key:x:par", 0)
	if rpm["x-a"] != 3 {
		t.Fatalf("rpm allocations after expiry %v: want x-a's 3 used kept", rpm)
	}
	if _, ok := par["x-a"]; ok {
		t.Fatalf("parallel allocations after expiry %v: want x-a's slot freed", par)
	}
}
