package syncserver

import (
	"sync"
	"testing"
	"time"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

type leaseSink struct {
	mu   sync.Mutex
	msgs []*syncv1.LeaseGrant
}

func (s *leaseSink) conn(connectedAt time.Time) *conn {
	return &conn{connectedAt: connectedAt, send: func(m *syncv1.ControlMessage) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.msgs = append(s.msgs, m.GetLeaseGrant())
		return nil
	}}
}

func (s *leaseSink) last() *syncv1.LeaseGrant {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.msgs) == 0 {
		return nil
	}
	return s.msgs[len(s.msgs)-1]
}

func allowance(g *syncv1.LeaseGrant, scope string) int64 {
	for _, a := range g.GetAllowances() {
		if a.GetScope() == scope {
			return a.GetAllowance()
		}
	}
	return -1
}

func TestLeasesShareGrantReclaim(t *testing.T) {
	var l leases
	old := time.Now().Add(-time.Minute)
	sinks := [3]leaseSink{}
	cs := [3]*conn{sinks[0].conn(old), sinks[1].conn(old), sinks[2].conn(old)}
	for _, c := range cs {
		l.join(c)
	}
	for i := range cs {
		if g := sinks[i].last(); g.GetProxies() != 3 || g.GetIndex() != int32(i) {
			t.Fatalf("proxy %d membership %v", i, g)
		}
	}
	const scope = "key:k:rpm"
	w := time.Now().Unix() / 60 * 60
	// Proxy 0 used its share (10 of 30) and asks; the others are busy
	// (just reported), so nothing is reclaimed yet.
	l.request(cs[1], &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{{Scope: scope, Limit: 30, WindowUnix: w, Used: 4}}})
	l.request(cs[2], &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{{Scope: scope, Limit: 30, WindowUnix: w, Used: 0}}})
	l.request(cs[0], &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{{Scope: scope, Limit: 30, WindowUnix: w, Used: 10, Want: 5}}})
	if a := allowance(sinks[0].last(), scope); a != 10 {
		t.Fatalf("granted on busy proxies' shares: allowance %d", a)
	}
	// Once their use has been still, the unused shares move.
	p := l.pools[poolKey{scope, w}]
	for _, c := range cs[1:] {
		p.changed[c] = time.Now().Add(-time.Second)
	}
	l.request(cs[0], &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{{Scope: scope, Limit: 30, WindowUnix: w, Used: 10, Want: 8}}})
	if a := allowance(sinks[0].last(), scope); a != 18 {
		t.Fatalf("allowance after reclaim %d, want 18", a)
	}
	if a := allowance(sinks[1].last(), scope); a != 4 {
		t.Fatalf("proxy 1 left with %d, want 4 (its use)", a)
	}
	if a := allowance(sinks[2].last(), scope); a != 8 {
		t.Fatalf("proxy 2 left with %d, want 8", a)
	}
	var sum int64
	for _, a := range p.alloc {
		sum += a
	}
	if sum != 30 {
		t.Fatalf("allowances add up to %d, want the limit 30", sum)
	}
	// A proxy that leaves keeps what it used; a newcomer starts at 0.
	l.leave(cs[1])
	if p.alloc[cs[1]] != 4 || len(l.members) != 2 {
		t.Fatalf("after leave: %v", p.alloc)
	}
	s4 := leaseSink{}
	c4 := s4.conn(time.Now())
	l.join(c4)
	if g := s4.last(); g.GetProxies() != 3 || allowance(g, scope) != 0 {
		t.Fatalf("newcomer %v", g)
	}
}
