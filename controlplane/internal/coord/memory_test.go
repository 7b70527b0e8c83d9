package coord_test

import (
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord/coordtest"
)

type memDeployment struct{}

func (memDeployment) Replicas() int { return 1 }

func (memDeployment) Replica(t *testing.T, d coord.Deliver) coordtest.Replica {
	m := coord.NewMemory(d)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestMemoryConformance(t *testing.T) { coordtest.Run(t, memDeployment{}) }
