// Package coordtest is the conformance suite every coord.Coordinator
// passes: membership, shares, grants, reclaim and, for implementations that
// serve several replicas, lending across replicas, failover and restart.
//
// Tests wait for conditions with deadlines; none asserts after a fixed sleep.
package coordtest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Deployment starts replicas of one deployment.
type Deployment interface {
	// Replica starts a replica delivering through d. The suite closes it.
	Replica(t *testing.T, d coord.Deliver) Replica
	// Replicas is how many replicas may serve at once (1: the second
	// Replica call replaces the first).
	Replicas() int
}

// Replica is a Coordinator that the suite can inspect.
type Replica interface {
	coord.Coordinator
	coord.Inspector
}

// Sink records what a replica delivered, per session.
type Sink struct {
	mu      sync.Mutex
	members map[string][2]int32                // session → proxies, index
	allow   map[string]map[coord.PoolKey]int64 // session → allowance
	grants  map[string]int                     // session → grants received
}

func newSink() *Sink {
	return &Sink{members: map[string][2]int32{}, allow: map[string]map[coord.PoolKey]int64{}, grants: map[string]int{}}
}

// Deliver is the sink's coord.Deliver.
func (s *Sink) Deliver(session string, g *syncv1.LeaseGrant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.grants[session]++
	if g.GetProxies() > 0 {
		s.members[session] = [2]int32{g.GetProxies(), g.GetIndex()}
	}
	for _, a := range g.GetAllowances() {
		if s.allow[session] == nil {
			s.allow[session] = map[coord.PoolKey]int64{}
		}
		s.allow[session][coord.PoolKey{Scope: a.GetScope(), Window: a.GetWindowUnix()}] = a.GetAllowance()
	}
}

func (s *Sink) member(session string) (int32, int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.members[session]
	return m[0], m[1]
}

func (s *Sink) allowance(session string, k coord.PoolKey) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.allow[session][k]
	return a, ok
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func use(scope string, limit, window, used, want int64) *syncv1.LeaseRequest {
	return &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{{Scope: scope, Limit: limit, WindowUnix: window, Used: used, Want: want}}}
}

func window() int64 {
	now := time.Now().Unix()
	return now - now%60
}

func sum(m map[string]int64) (s int64) {
	for _, v := range m {
		s += v
	}
	return s
}

// proxy is one member with one session on replica r.
type proxy struct {
	r    Replica
	sink *Sink
	s    coord.Session
}

// Run runs the suite on d.
func Run(t *testing.T, d Deployment) {
	t.Run("Membership", func(t *testing.T) { testMembership(t, d) })
	t.Run("SharesAndGrants", func(t *testing.T) { testSharesAndGrants(t, d) })
	t.Run("ReclaimIdle", func(t *testing.T) { testReclaimIdle(t, d) })
	t.Run("ParallelLeaveFrees", func(t *testing.T) { testParallelLeave(t, d) })
	t.Run("ConcurrentAsksNeverExceed", func(t *testing.T) { testConcurrent(t, d) })
	t.Run("FreshGrantNotReclaimed", func(t *testing.T) { testFreshGrant(t, d) })
	if d.Replicas() < 2 {
		// One replica is the whole deployment (the embedded store refuses
		// several): there is nothing to share across replicas, and a
		// restart is a new deployment whose proxies fall back to their
		// implicit shares.
		return
	}
	t.Run("FailoverKeepsGrants", func(t *testing.T) { testFailover(t, d) })
	t.Run("RestartRemembers", func(t *testing.T) { testRestart(t, d) })
}

// start returns n replicas (or one, repeated, when d serves one) and their
// sinks.
func start(t *testing.T, d Deployment, n int) ([]Replica, []*Sink) {
	n = min(n, d.Replicas())
	rs := make([]Replica, n)
	ss := make([]*Sink, n)
	for i := range rs {
		ss[i] = newSink()
		rs[i] = d.Replica(t, ss[i].Deliver)
	}
	return rs, ss
}

func join(t *testing.T, rs []Replica, ss []*Sink, names ...string) []proxy {
	t.Helper()
	out := make([]proxy, len(names))
	for i, n := range names {
		r := i % len(rs)
		out[i] = proxy{rs[r], ss[r], coord.Session{Member: n, ID: n + "-s1"}}
		if err := rs[r].Join(ctx(t), out[i].s); err != nil {
			t.Fatalf("join %s: %v", n, err)
		}
	}
	return out
}

func testMembership(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	ps := join(t, rs, ss, "p-c", "p-a", "p-b")
	// The index is the join order, on every replica.
	want := map[string]int32{"p-c": 0, "p-a": 1, "p-b": 2}
	for _, p := range ps {
		eventually(t, p.s.Member+" told 3 members", func() bool {
			n, i := p.sink.member(p.s.ID)
			return n == 3 && i == want[p.s.Member]
		})
	}
	ps[2].r.Leave(ctx(t), ps[2].s) // p-b
	want = map[string]int32{"p-c": 0, "p-a": 1}
	for _, p := range []proxy{ps[0], ps[1]} {
		eventually(t, p.s.Member+" told 2 members", func() bool {
			n, i := p.sink.member(p.s.ID)
			return n == 2 && i == want[p.s.Member]
		})
	}
	// A second stream of a member changes no count; leaving it neither.
	s2 := coord.Session{Member: "p-a", ID: "p-a-s2"}
	if err := ps[1].r.Join(ctx(t), s2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second stream told its place", func() bool {
		n, i := ps[1].sink.member(s2.ID)
		return n == 2 && i == 1
	})
}

func testSharesAndGrants(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	ps := join(t, rs, ss, "g-a", "g-b", "g-c")
	for _, p := range ps {
		eventually(t, "3 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 3 })
	}
	w := window()
	const scope = "key:g:rpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	// g-a used its implicit share (31/3: 11, 10, 10) and asks for 5; the
	// others just reported, so nothing of theirs is reclaimed.
	ps[1].r.Request(ctx(t), ps[1].s, use(scope, 31, w, 2, 0))
	ps[2].r.Request(ctx(t), ps[2].s, use(scope, 31, w, 1, 0))
	ps[0].r.Request(ctx(t), ps[0].s, use(scope, 31, w, 11, 5))
	eventually(t, "g-a answered", func() bool { _, ok := ps[0].sink.allowance(ps[0].s.ID, k); return ok })
	var al map[string]int64
	eventually(t, "shares opened with every member", func() bool {
		var err error
		al, err = ps[0].r.Allocations(ctx(t), scope, w)
		return err == nil && len(al) == 3 && al["g-b"] == 10 && al["g-c"] == 10
	})
	if a, _ := ps[0].sink.allowance(ps[0].s.ID, k); a != 11 || al["g-a"] != 11 || sum(al) != 31 {
		t.Fatalf("g-a allowance %d, allocations %v: nothing was free, so nothing more is granted", a, al)
	}
	// A non-member (reporting before it joined) is counted but not granted.
	stranger := coord.Session{Member: "g-z", ID: "g-z-s1"}
	ps[0].r.Request(ctx(t), stranger, use(scope, 31, w, 0, 5))
	ps[0].r.Request(ctx(t), ps[0].s, use(scope, 31, w, 11, 5))
	eventually(t, "stranger's report recorded", func() bool {
		al, err := ps[0].r.Allocations(ctx(t), scope, w)
		_, ok := al["g-z"]
		return err == nil && ok && sum(al) <= 31
	})
	if _, ok := ps[0].sink.allowance(stranger.ID, k); ok {
		t.Fatal("a session that never joined was granted")
	}
}

func testReclaimIdle(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	ps := join(t, rs, ss, "r-a", "r-b")
	for _, p := range ps {
		eventually(t, "2 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 2 })
	}
	w := window()
	const scope = "team:r:rpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	// r-a (replica 0) used its 5 and keeps asking; r-b (replica 1 when
	// there are two) never used the window: after coord.Settle its 5 are
	// lent to r-a, and r-b is told its lower allowance by its own replica.
	eventually(t, "r-a lent r-b's idle share", func() bool {
		ps[0].r.Request(ctx(t), ps[0].s, use(scope, 10, w, 5, 5))
		a, _ := ps[0].sink.allowance(ps[0].s.ID, k)
		return a == 10
	})
	eventually(t, "r-b told its share is gone", func() bool {
		a, ok := ps[1].sink.allowance(ps[1].s.ID, k)
		return ok && a == 0
	})
	al, err := ps[0].r.Allocations(ctx(t), scope, w)
	if err != nil || sum(al) != 10 {
		t.Fatalf("allocations %v (%v): want 10 in all", al, err)
	}
	// r-b asks back: r-a's use has been still, so its unused part is lent
	// to r-b, and the total stays the limit.
	eventually(t, "r-b lent r-a's unused part", func() bool {
		ps[1].r.Request(ctx(t), ps[1].s, use(scope, 10, w, 0, 3))
		a, _ := ps[1].sink.allowance(ps[1].s.ID, k)
		return a >= 3
	})
	al, err = ps[0].r.Allocations(ctx(t), scope, w)
	if err != nil || sum(al) != 10 || al["r-a"] < 5 {
		t.Fatalf("allocations %v (%v): want 10 in all, r-a's 5 used kept", al, err)
	}
}

// testFreshGrant: a member whose use has been still because it ran out
// (its requests wait for a grant) is granted more; another member asking
// right after must not reclaim that grant as "unused": the first member is
// admitting its waiting requests with it, and its report of that use is
// still on the way. (The overspend bench: an idle fourth proxy's share lent
// to one proxy was taken back for another before the first one reported,
// and both admitted it: 67 admitted with rpm_limit 60.)
func testFreshGrant(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	ps := join(t, rs, ss, "g-a", "g-b", "g-c")
	for _, p := range ps {
		eventually(t, "3 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 3 })
	}
	w := window()
	const scope = "team:g:rpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	// g-a and g-b used their 10; g-c never uses the window.
	ps[1].r.Request(ctx(t), ps[1].s, use(scope, 30, w, 10, 0))
	// (Asks queued before the first grant arrived may give g-a all of it.)
	eventually(t, "g-a lent g-c's idle share", func() bool {
		ps[0].r.Request(ctx(t), ps[0].s, use(scope, 30, w, 10, 5))
		a, _ := ps[0].sink.allowance(ps[0].s.ID, k)
		return a >= 15
	})
	// g-b asks at once (within coord.Settle of g-a's grant): it may get
	// what is left of g-c's share, never g-a's fresh grant.
	ps[1].r.Request(ctx(t), ps[1].s, use(scope, 30, w, 10, 10))
	eventually(t, "g-b answered", func() bool { _, ok := ps[1].sink.allowance(ps[1].s.ID, k); return ok })
	al, err := ps[0].r.Allocations(ctx(t), scope, w)
	if err != nil || sum(al) != 30 || al["g-a"] < 15 {
		t.Fatalf("allocations %v (%v): want g-a's fresh grant kept (15 or more), 30 in all", al, err)
	}
}

func testParallelLeave(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	ps := join(t, rs, ss, "q-a", "q-b")
	for _, p := range ps {
		eventually(t, "2 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 2 })
	}
	const scope = "key:q:par"
	const rpm = "key:q:rpm"
	w := window()
	// q-b holds its parallel slot and used its rpm share, then leaves: its
	// slot is freed, its used requests stay counted.
	ps[1].r.Request(ctx(t), ps[1].s, &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{
		{Scope: scope, Limit: 2, Used: 1}, {Scope: rpm, Limit: 10, WindowUnix: w, Used: 3}}})
	eventually(t, "q-b's use recorded", func() bool {
		al, _ := ps[1].r.Allocations(ctx(t), rpm, w)
		return len(al) == 2
	})
	ps[1].r.Leave(ctx(t), ps[1].s)
	eventually(t, "q-a told it is alone", func() bool { n, _ := ps[0].sink.member(ps[0].s.ID); return n == 1 })
	al, _ := ps[0].r.Allocations(ctx(t), scope, 0)
	if _, ok := al["q-b"]; ok {
		t.Fatalf("parallel slots of a member that left still held: %v", al)
	}
	al, _ = ps[0].r.Allocations(ctx(t), rpm, w)
	if al["q-b"] != 3 {
		t.Fatalf("rpm allocations after leaving %v: want q-b's 3 used requests kept", al)
	}
	eventually(t, "q-a gets the freed slot", func() bool {
		ps[0].r.Request(ctx(t), ps[0].s, use(scope, 2, 0, 1, 1))
		a, _ := ps[0].sink.allowance(ps[0].s.ID, coord.PoolKey{Scope: scope})
		return a == 2
	})
}

func testConcurrent(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 3)
	names := []string{"c-a", "c-b", "c-c", "c-d", "c-e", "c-f"}
	ps := join(t, rs, ss, names...)
	for _, p := range ps {
		eventually(t, "6 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 6 })
	}
	const scope, limit = "key:c:rpm", 60
	w := window()
	k := coord.PoolKey{Scope: scope, Window: w}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var used int64
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, ok := p.sink.allowance(p.s.ID, k)
				if !ok {
					a = 10 // the implicit share
				}
				used = max(used, min(a, used+3)) // admit what the allowance lets through
				p.r.Request(context.Background(), p.s, use(scope, limit, w, used, 4))
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	for checks := 0; time.Now().Before(deadline) || checks < 10; checks++ {
		al, err := ps[0].r.Allocations(ctx(t), scope, w)
		if err != nil {
			t.Fatal(err)
		}
		if s := sum(al); s > limit {
			close(stop)
			wg.Wait()
			t.Fatalf("allocations add up to %d > limit %d: %v", s, limit, al)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	al, _ := ps[0].r.Allocations(ctx(t), scope, w)
	if s := sum(al); s > limit || s < limit-1 {
		t.Fatalf("allocations %v add up to %d: want the whole limit %d handed out, never more", al, s, limit)
	}
}

func testFailover(t *testing.T, d Deployment) {
	s0, s1 := newSink(), newSink()
	r0 := d.Replica(t, s0.Deliver)
	r1 := d.Replica(t, s1.Deliver)
	a := proxy{r0, s0, coord.Session{Member: "f-a", ID: "f-a-s1"}}
	b := proxy{r1, s1, coord.Session{Member: "f-b", ID: "f-b-s1"}}
	for _, p := range []proxy{a, b} {
		if err := p.r.Join(ctx(t), p.s); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []proxy{a, b} {
		eventually(t, "2 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 2 })
	}
	w := window()
	const scope = "key:f:rpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	// f-a (replica 0) is lent all of f-b's idle share: 20 of 20.
	eventually(t, "f-a holds everything", func() bool {
		a.r.Request(ctx(t), a.s, use(scope, 20, w, 10, 10))
		got, _ := a.sink.allowance(a.s.ID, k)
		return got == 20
	})
	a.r.Request(ctx(t), a.s, use(scope, 20, w, 12, 0))
	// Replica 0 dies (no Leave). f-a keeps 20, unused 8 of it: while it has
	// no live replica nobody may reclaim that (it could not hear it).
	if err := r0.Close(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b.r.Request(ctx(t), b.s, use(scope, 20, w, 0, 5))
		time.Sleep(coord.Settle / 2)
	}
	al, _ := r1.Allocations(ctx(t), scope, w)
	if al["f-a"] != 20 || sum(al) != 20 {
		t.Fatalf("after replica 0 died: %v; want f-a's 20 untouched", al)
	}
	// f-a reconnects to replica 1: it keeps its place and its 20; no new
	// member, so the count does not change.
	a2 := proxy{r1, s1, coord.Session{Member: "f-a", ID: "f-a-s2"}}
	if err := r1.Join(ctx(t), a2.s); err != nil {
		t.Fatal(err)
	}
	// A reconnected proxy reports all its use again (what its dead replica
	// had not written yet included).
	r1.Request(ctx(t), a2.s, use(scope, 20, w, 12, 0))
	eventually(t, "f-a told its allowance on replica 1", func() bool {
		n, i := s1.member(a2.s.ID)
		got, ok := s1.allowance(a2.s.ID, k)
		return n == 2 && i == 0 && ok && got == 20
	})
	// Once it is settled on a live replica, its unused part is lendable
	// again (and nothing ever exceeds the limit).
	eventually(t, "f-b lent f-a's unused share", func() bool {
		b.r.Request(ctx(t), b.s, use(scope, 20, w, 0, 5))
		got, _ := s1.allowance(b.s.ID, k)
		return got >= 5
	})
	al, _ = r1.Allocations(ctx(t), scope, w)
	if sum(al) != 20 || al["f-a"] < 12 {
		t.Fatalf("allocations %v: want 20 in all, f-a's 12 used kept", al)
	}
	eventually(t, "f-a told its lower allowance", func() bool {
		got, _ := s1.allowance(a2.s.ID, k)
		al, _ := r1.Allocations(ctx(t), scope, w)
		return got == al["f-a"] && got < 20
	})
}

func testRestart(t *testing.T, d Deployment) {
	s0 := newSink()
	r0 := d.Replica(t, s0.Deliver)
	a := proxy{r0, s0, coord.Session{Member: "s-a", ID: "s-a-s1"}}
	if err := r0.Join(ctx(t), a.s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "1 member", func() bool { n, _ := s0.member(a.s.ID); return n >= 1 })
	w := window()
	const scope = "user:s:tpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	a.r.Request(ctx(t), a.s, use(scope, 1000, w, 400, 100))
	eventually(t, "s-a answered", func() bool { _, ok := s0.allowance(a.s.ID, k); return ok })
	before, _ := r0.Allocations(ctx(t), scope, w)
	r0.Close()
	// The same deployment restarted: the window's grants are still there.
	s1 := newSink()
	r1 := d.Replica(t, s1.Deliver)
	after, err := r1.Allocations(ctx(t), scope, w)
	if err != nil || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("after a restart %v (%v), before %v", after, err, before)
	}
	a2 := coord.Session{Member: "s-a", ID: "s-a-s2"}
	if err := r1.Join(ctx(t), a2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "s-a told its allowance after the restart", func() bool {
		got, ok := s1.allowance(a2.ID, k)
		return ok && got == before["s-a"]
	})
}
