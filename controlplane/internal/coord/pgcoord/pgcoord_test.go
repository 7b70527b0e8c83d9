package pgcoord_test

import (
	"context"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord/coordtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord/pgcoord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
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
