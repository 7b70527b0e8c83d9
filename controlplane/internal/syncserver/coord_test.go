package syncserver

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
)

// recordingCoord wraps coord.Memory and records the calls the server makes.
type recordingCoord struct {
	*coord.Memory
	mu     sync.Mutex
	joins  []coord.Session
	leaves []coord.Session
	closed bool
}

func (r *recordingCoord) Join(ctx context.Context, s coord.Session) error {
	r.mu.Lock()
	r.joins = append(r.joins, s)
	r.mu.Unlock()
	return r.Memory.Join(ctx, s)
}

func (r *recordingCoord) Leave(ctx context.Context, s coord.Session) {
	r.mu.Lock()
	r.leaves = append(r.leaves, s)
	r.mu.Unlock()
	r.Memory.Leave(ctx, s)
}

func (r *recordingCoord) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return nil
}

func (r *recordingCoord) counts() (int, int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.joins), len(r.leaves), r.closed
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCoordinatorJoinLeaveAndStop: streams join the coordinator once
// current and deliver its grants; a proxy that goes away leaves; a stopping
// server closes the coordinator without making its proxies leave (they fail
// over to another replica keeping their place).
func TestCoordinatorJoinLeaveAndStop(t *testing.T) {
	rc := &recordingCoord{}
	h := newHarness(t, newMemStore(), "tok", WithCoordinator(func(d coord.Deliver) coord.Coordinator {
		rc.Memory = coord.NewMemory(d)
		return rc
	}))
	a := h.connect("proxy-a", "tok", 0, true)
	b := h.connect("proxy-b", "tok", 0, true)
	waitFor(t, "both joined", func() bool { j, _, _ := rc.counts(); return j == 2 })
	var sawTwo bool
	for deadline := time.Now().Add(10 * time.Second); !sawTwo && time.Now().Before(deadline); {
		if _, err := a.next(time.Second); err != nil {
			t.Fatal(err)
		}
		for _, g := range a.leaseGrants {
			sawTwo = sawTwo || g.GetProxies() == 2
		}
	}
	if !sawTwo {
		t.Fatal("proxy-a never told that 2 proxies share the limits")
	}
	// proxy-b goes away: it leaves.
	b.cancel()
	waitFor(t, "proxy-b left", func() bool { _, l, _ := rc.counts(); return l == 1 })
	// The server stops: the coordinator is closed, proxy-a does not leave.
	h.stop()
	_, leaves, closed := rc.counts()
	if !closed || leaves != 1 {
		t.Fatalf("after stop: closed %v, leaves %d; want closed and only proxy-b's leave", closed, leaves)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.leaves[0].Member != "proxy-b" || rc.joins[0].ID == rc.joins[1].ID {
		t.Fatalf("joins %v, leaves %v", rc.joins, rc.leaves)
	}
}
