// Package coordtest is the conformance suite every coord.Coordinator
// passes: membership, shares, grants, reclaim and, for implementations that
// serve several replicas, lending across replicas, failover and restart.
//
// Tests wait for conditions with deadlines; none asserts after a fixed sleep.
package coordtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
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

// Sink records what a replica delivered, per session, and plays the
// proxies of the sessions attached to it as the real proxy does: an
// allowance older (lower seq) than the one held is ignored, every report
// carries the allowance held and its seq, and an allowance that does not
// raise the one held is confirmed at once by a report of the session's use
// (from a goroutine: Deliver must not call back into the coordinator).
type Sink struct {
	mu       sync.Mutex
	members  map[string][2]int32                // session → proxies, index
	allow    map[string]map[coord.PoolKey]int64 // session → allowance
	seq      map[string]map[coord.PoolKey]int64 // session → seq of allowance
	used     map[string]map[coord.PoolKey]int64 // session → use (admitted)
	limit    map[string]map[coord.PoolKey]int64 // session → limit reported
	grants   map[string]int                     // session → grants received
	attached map[string]*proxy                  // session → proxy it plays
	confirm  []pendingConfirm
	wake     chan struct{}
	// slowFirst delays the first grant to each session (before it is
	// recorded), as a stream whose first Send is slow: deliveries made
	// meanwhile to the same session are recorded before it.
	slowFirst time.Duration
	delivered map[string]bool // session → a grant reached Deliver
}

type pendingConfirm struct {
	session string
	k       coord.PoolKey
}

func newSink(t *testing.T) *Sink {
	s := &Sink{members: map[string][2]int32{}, allow: map[string]map[coord.PoolKey]int64{},
		seq: map[string]map[coord.PoolKey]int64{}, used: map[string]map[coord.PoolKey]int64{},
		limit: map[string]map[coord.PoolKey]int64{}, grants: map[string]int{}, attached: map[string]*proxy{},
		wake: make(chan struct{}, 1), delivered: map[string]bool{}}
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-s.wake:
			}
			s.mu.Lock()
			q := s.confirm
			s.confirm = nil
			s.mu.Unlock()
			for _, c := range q {
				s.mu.Lock()
				p := s.attached[c.session]
				var u *syncv1.LeaseUse
				if p != nil && p.paused {
					s.confirm = append(s.confirm, c) // later (pause)
				} else if p != nil {
					u = s.useLocked(c.session, c.k, 0)
					if _, ok := s.limit[c.session][c.k]; !ok {
						u.Limit = -1 // not used here: a confirmation only
					}
				}
				s.mu.Unlock()
				if u != nil {
					p.r.Request(context.Background(), p.s, &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{u}})
				}
			}
		}
	}()
	return s
}

func put(m map[string]map[coord.PoolKey]int64, session string, k coord.PoolKey, v int64) {
	if m[session] == nil {
		m[session] = map[coord.PoolKey]int64{}
	}
	m[session][k] = v
}

// attach makes s play p (see Sink); legacy: p is a proxy older than
// confirmations (its reports carry no allowance, it confirms nothing).
func (s *Sink) attach(p *proxy, legacy bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.sink, p.legacy = s, legacy
	s.attached[p.s.ID] = p
}

// Deliver is the sink's coord.Deliver.
func (s *Sink) Deliver(session string, g *syncv1.LeaseGrant) {
	s.mu.Lock()
	if !s.delivered[session] {
		s.delivered[session] = true
		if d := s.slowFirst; d > 0 {
			s.mu.Unlock()
			time.Sleep(d)
			s.mu.Lock()
		}
	}
	defer s.mu.Unlock()
	s.grants[session]++
	if g.GetProxies() > 0 {
		s.members[session] = [2]int32{g.GetProxies(), g.GetIndex()}
	}
	tell := false
	for _, a := range g.GetAllowances() {
		k := coord.PoolKey{Scope: a.GetScope(), Window: a.GetWindowUnix()}
		held, ok := s.allow[session][k]
		if ok && a.GetSeq() < s.seq[session][k] {
			continue // out of order: older than the allowance held
		}
		if p := s.attached[session]; p != nil && !p.legacy && (!ok || (a.GetAllowance() <= held && a.GetSeq() != s.seq[session][k])) {
			s.confirm = append(s.confirm, pendingConfirm{session, k})
			tell = true
		}
		put(s.allow, session, k, a.GetAllowance())
		put(s.seq, session, k, a.GetSeq())
	}
	if tell {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// viewLocked is the allowance session enforces in k: the one held, else
// the implicit share.
func (s *Sink) viewLocked(session string, k coord.PoolKey, limit int64) int64 {
	if a, ok := s.allow[session][k]; ok {
		return a
	}
	m := s.members[session]
	return shares.Of(limit, max(int64(m[0]), 1), int64(m[1]))
}

// useLocked is session's report of k (its use, its allowance and seq).
func (s *Sink) useLocked(session string, k coord.PoolKey, want int64) *syncv1.LeaseUse {
	limit := s.limit[session][k]
	u := &syncv1.LeaseUse{Scope: k.Scope, Limit: limit, WindowUnix: k.Window, Used: s.used[session][k], Want: want}
	if p := s.attached[session]; p == nil || !p.legacy {
		view := s.viewLocked(session, k, limit)
		u.Allowance, u.AllowanceSeq = &view, s.seq[session][k]
	}
	return u
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

// proxy is one member with one session on replica r, played by sink.
type proxy struct {
	r      Replica
	sink   *Sink
	s      coord.Session
	legacy bool
	paused bool // its confirmations wait (sink.mu)
}

// pause holds p's confirmations back (they are sent when it resumes), as
// if the lowerings were still on their way to it.
func (p *proxy) pause(v bool) {
	p.sink.mu.Lock()
	p.paused = v
	p.sink.mu.Unlock()
	select {
	case p.sink.wake <- struct{}{}:
	default:
	}
}

// report sends p's use of scope (used: what it admitted in all) and its
// ask, as the proxy does: with the allowance it holds.
func (p *proxy) report(t *testing.T, scope string, limit, window, used, want int64) {
	k := coord.PoolKey{Scope: scope, Window: window}
	p.sink.mu.Lock()
	put(p.sink.used, p.s.ID, k, used)
	put(p.sink.limit, p.s.ID, k, limit)
	u := p.sink.useLocked(p.s.ID, k, want)
	p.sink.mu.Unlock()
	p.r.Request(context.Background(), p.s, &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{u}})
}

// admit admits up to n more requests of scope as the proxy does (while its
// use is below the allowance it holds, the implicit share until it was told
// one) and returns how many it admitted.
func (p *proxy) admit(scope string, limit, window, n int64) int64 {
	k := coord.PoolKey{Scope: scope, Window: window}
	p.sink.mu.Lock()
	defer p.sink.mu.Unlock()
	put(p.sink.limit, p.s.ID, k, limit)
	used := p.sink.used[p.s.ID][k]
	got := max(min(n, p.sink.viewLocked(p.s.ID, k, limit)-used), 0)
	put(p.sink.used, p.s.ID, k, used+got)
	return got
}

// mayUse is what each proxy may still admit in all in k, as things stand:
// its use or the allowance it holds, whichever is more. (All sinks locked
// at once: one instant.)
func mayUse(ps []*proxy, k coord.PoolKey, limit int64) map[string]int64 {
	var sinks []*Sink
	for _, p := range ps {
		if !slices.Contains(sinks, p.sink) {
			sinks = append(sinks, p.sink)
		}
	}
	for _, s := range sinks {
		s.mu.Lock()
	}
	out := map[string]int64{}
	for _, p := range ps {
		out[p.s.Member] = max(p.sink.used[p.s.ID][k], p.sink.viewLocked(p.s.ID, k, limit))
	}
	for _, s := range sinks {
		s.mu.Unlock()
	}
	return out
}

// Run runs the suite on d.
func Run(t *testing.T, d Deployment) {
	t.Run("Membership", func(t *testing.T) { testMembership(t, d) })
	t.Run("ConcurrentJoinsCountAll", func(t *testing.T) { testConcurrentJoins(t, d) })
	t.Run("SharesAndGrants", func(t *testing.T) { testSharesAndGrants(t, d) })
	t.Run("ReclaimIdle", func(t *testing.T) { testReclaimIdle(t, d) })
	t.Run("ParallelLeaveFrees", func(t *testing.T) { testParallelLeave(t, d) })
	t.Run("ConcurrentAsksNeverExceed", func(t *testing.T) { testConcurrent(t, d) })
	t.Run("FreshGrantNotReclaimed", func(t *testing.T) { testFreshGrant(t, d) })
	t.Run("ReclaimWaitsForConfirm", func(t *testing.T) { testReclaimWaitsForConfirm(t, d) })
	t.Run("LegacyNeverConfirms", func(t *testing.T) { testLegacyNeverConfirms(t, d) })
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
		ss[i] = newSink(t)
		rs[i] = d.Replica(t, ss[i].Deliver)
	}
	return rs, ss
}

func join(t *testing.T, rs []Replica, ss []*Sink, names ...string) []*proxy {
	t.Helper()
	out := make([]*proxy, len(names))
	for i, n := range names {
		r := i % len(rs)
		out[i] = &proxy{r: rs[r], s: coord.Session{Member: n, ID: n + "-s1"}}
		ss[r].attach(out[i], false)
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
	for _, p := range []*proxy{ps[0], ps[1]} {
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

// testConcurrentJoins: many proxies join at once on every replica (a
// deployment starting, a replica's proxies failing over) and then half of
// them leave at once. Whatever order the replica's membership reads and
// deliveries interleave in (a joining stream's own read, the refresh after
// other joins; the first Send to a stream is slow here), every proxy must
// end up told the final count and a place of its own: a proxy left with an
// older, smaller count divides the limit by too few and over-admits in
// every new minute (issue 16). Two of 1,000 simulated proxies kept an older
// count in a coord.sh run.
func testConcurrentJoins(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 3)
	for _, s := range ss {
		s.slowFirst = 50 * time.Millisecond
	}
	const n = 60
	ps := make([]*proxy, n)
	for i := range ps {
		r := i % len(rs)
		name := fmt.Sprintf("j-%02d", i)
		ps[i] = &proxy{r: rs[r], s: coord.Session{Member: name, ID: name + "-s1"}}
		ss[r].attach(ps[i], false)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.r.Join(ctx(t), p.s); err != nil {
				errs <- fmt.Errorf("join %s: %w", p.s.Member, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	settled := func(ps []*proxy, want int32) {
		t.Helper()
		var bad []string
		defer func() {
			if t.Failed() {
				t.Logf("proxies told another count or a shared place: %v", bad)
			}
		}()
		eventually(t, fmt.Sprintf("every proxy told %d members, each its own place", want), func() bool {
			bad = nil
			seen := map[int32]bool{}
			for _, p := range ps {
				c, i := p.sink.member(p.s.ID)
				if c != want || i < 0 || i >= want || seen[i] {
					bad = append(bad, fmt.Sprintf("%s: %d members, index %d", p.s.Member, c, i))
				}
				seen[i] = true
			}
			return len(bad) == 0
		})
		// And it stays so (no older view delivered late).
		time.Sleep(300 * time.Millisecond)
		for _, p := range ps {
			if c, _ := p.sink.member(p.s.ID); c != want {
				t.Fatalf("%s counts %d members after settling on %d", p.s.Member, c, want)
			}
		}
	}
	settled(ps, n)
	for _, p := range ps[n/2:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.r.Leave(ctx(t), p.s)
		}()
	}
	wg.Wait()
	settled(ps[:n/2], n/2)
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
	ps[1].report(t, scope, 31, w, 2, 0)
	ps[2].report(t, scope, 31, w, 1, 0)
	ps[0].report(t, scope, 31, w, 11, 5)
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
	ps[0].report(t, scope, 31, w, 11, 5)
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
		ps[0].report(t, scope, 10, w, 5, 5)
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
		ps[1].report(t, scope, 10, w, 0, 3)
		a, _ := ps[1].sink.allowance(ps[1].s.ID, k)
		return a >= 3
	})
	al, err = ps[0].r.Allocations(ctx(t), scope, w)
	held, _ := ps[0].r.Held(ctx(t), scope, w)
	if err != nil || sum(held) > 10 || al["r-a"] < 5 {
		t.Fatalf("allocations %v, held %v (%v): want at most 10 in all, r-a's 5 used kept", al, held, err)
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
	ps[1].report(t, scope, 30, w, 10, 0)
	// (Asks queued before the first grant arrived may give g-a all of it.)
	eventually(t, "g-a lent g-c's idle share", func() bool {
		ps[0].report(t, scope, 30, w, 10, 5)
		a, _ := ps[0].sink.allowance(ps[0].s.ID, k)
		return a >= 15
	})
	// g-b asks at once (within coord.Settle of g-a's grant): it may get
	// what is left of g-c's share, never g-a's fresh grant.
	ps[1].report(t, scope, 30, w, 10, 10)
	eventually(t, "g-b answered", func() bool { _, ok := ps[1].sink.allowance(ps[1].s.ID, k); return ok })
	al, err := ps[0].r.Allocations(ctx(t), scope, w)
	held, _ := ps[0].r.Held(ctx(t), scope, w)
	if err != nil || sum(held) > 30 || al["g-a"] < 15 {
		t.Fatalf("allocations %v, held %v (%v): want g-a's fresh grant kept (15 or more), at most 30 in all", al, held, err)
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
		ps[0].report(t, scope, 2, 0, 1, 1)
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
	// c-a..c-c are busy: they admit 3 every 5 ms and report and ask each
	// time. The others admit 1 every 100 ms but report only every 600 ms
	// (asking when they ran out): for a while after each report their use
	// looks settled to the pool, while they have admitted since (issue 16:
	// a proxy reports every 200 ms, the pool settles after 400 ms).
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var used int64
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if i < 3 {
					used += p.admit(scope, limit, w, 3)
					p.report(t, scope, limit, w, used, 4)
				} else {
					if n%20 == 19 {
						used += p.admit(scope, limit, w, 1)
					}
					if n%120 == 0 {
						var want int64
						if p.admit(scope, limit, w, 0) == 0 && mayUse([]*proxy{p}, k, limit)[p.s.Member] <= used {
							want = 4
						}
						p.report(t, scope, limit, w, used, want)
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Second)
	for checks := 0; time.Now().Before(deadline) || checks < 10; checks++ {
		held, err := ps[0].r.Held(ctx(t), scope, w)
		if err != nil {
			t.Fatal(err)
		}
		may := mayUse(ps, k, limit)
		if s, h := sum(may), sum(held); s > limit || h > limit {
			close(stop)
			wg.Wait()
			t.Fatalf("the proxies may admit %d in all (%v), the pool holds %d (%v); limit %d", s, may, h, held, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	// Once every holder confirmed, the whole limit is handed out.
	for _, p := range ps {
		p.sink.mu.Lock()
		used := p.sink.used[p.s.ID][k]
		p.sink.mu.Unlock()
		p.report(t, scope, limit, w, used, 0)
	}
	eventually(t, "every reclaim confirmed", func() bool {
		al, _ := ps[0].r.Allocations(ctx(t), scope, w)
		held, _ := ps[0].r.Held(ctx(t), scope, w)
		return sum(al) == sum(held)
	})
	al, _ := ps[0].r.Allocations(ctx(t), scope, w)
	if s := sum(al); s > limit || s < limit-1 {
		t.Fatalf("allocations %v add up to %d: want the whole limit %d handed out, never more", al, s, limit)
	}
}

// testReclaimWaitsForConfirm pins issue 16: a holder idle for Settle
// admitted a request it has not reported yet; another proxy asks, and the
// pool reclaims the holder's "unused" share on the stale report. The
// reclaimed units are not the asker's until the holder confirms it enforces
// the lowered allowance, and the confirmation's use keeps the request the
// holder admitted meanwhile with it.
func testReclaimWaitsForConfirm(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	ps := join(t, rs, ss, "w-a", "w-b")
	for _, p := range ps {
		eventually(t, "2 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 2 })
	}
	a, b := ps[0], ps[1]
	w := window()
	const scope, limit = "key:w:rpm", 20
	k := coord.PoolKey{Scope: scope, Window: w}
	// w-b holds 10 and reported 4 used, then admitted 3 more that it has
	// not reported yet (it reports every 200 ms); w-a used its 10 and asks.
	// w-b's confirmations are held back: the lowering is on its way.
	b.pause(true)
	b.report(t, scope, limit, w, b.admit(scope, limit, w, 4), 0)
	if got := b.admit(scope, limit, w, 3); got != 3 {
		t.Fatalf("w-b admitted %d, want 3", got)
	}
	a.report(t, scope, limit, w, a.admit(scope, limit, w, 10), 0)
	eventually(t, "w-b's share reclaimed on its stale report", func() bool {
		a.report(t, scope, limit, w, 10, 6)
		got, ok := b.sink.allowance(b.s.ID, k)
		return ok && got < 10
	})
	for range 3 {
		a.report(t, scope, limit, w, 10, 6)
		time.Sleep(coord.Settle / 4)
	}
	// Until w-b confirms, w-a gets nothing of it.
	al, _ := a.r.Allocations(ctx(t), scope, w)
	if got, _ := a.sink.allowance(a.s.ID, k); got > 10 || al["w-a"] > 10 {
		t.Fatalf("w-a granted %d (pool %v) before w-b confirmed the lowering", got, al)
	}
	if m := mayUse(ps, k, limit); sum(m) > limit {
		t.Fatalf("the proxies may admit %v: over the limit %d", m, limit)
	}
	// w-b's confirmation (sent when the lowering reached it) carries its 7
	// used: 7 stay its own, the rest is free and w-a gets it.
	b.pause(false)
	eventually(t, "w-a granted what w-b confirmed it does not use", func() bool {
		a.report(t, scope, limit, w, 10, 6)
		got, _ := a.sink.allowance(a.s.ID, k)
		return got == 13
	})
	held, _ := a.r.Held(ctx(t), scope, w)
	al, _ = a.r.Allocations(ctx(t), scope, w)
	if al["w-b"] != 7 || held["w-b"] != 7 || sum(held) != limit {
		t.Fatalf("allocations %v, held %v: want w-b's 7 used kept, %d in all", al, held, limit)
	}
	if m := mayUse(ps, k, limit); sum(m) > limit {
		t.Fatalf("the proxies may admit %v: over the limit %d", m, limit)
	}
}

// testLegacyNeverConfirms: a proxy older than confirmations (its reports
// carry no allowance) never frees what was reclaimed from it: it may be
// admitting on its old allowance.
func testLegacyNeverConfirms(t *testing.T, d Deployment) {
	rs, ss := start(t, d, 2)
	a := &proxy{r: rs[0], s: coord.Session{Member: "l-a", ID: "l-a-s1"}}
	b := &proxy{r: rs[len(rs)-1], s: coord.Session{Member: "l-b", ID: "l-b-s1"}}
	ss[0].attach(a, false)
	ss[len(ss)-1].attach(b, true)
	for _, p := range []*proxy{a, b} {
		if err := p.r.Join(ctx(t), p.s); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*proxy{a, b} {
		eventually(t, "2 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 2 })
	}
	w := window()
	const scope, limit = "key:l:rpm", 20
	k := coord.PoolKey{Scope: scope, Window: w}
	b.report(t, scope, limit, w, 2, 0)
	eventually(t, "l-b's share reclaimed", func() bool {
		a.report(t, scope, limit, w, 10, 5)
		got, ok := b.sink.allowance(b.s.ID, k)
		return ok && got < 10
	})
	for range 5 {
		b.report(t, scope, limit, w, 2, 0)
		a.report(t, scope, limit, w, 10, 5)
		time.Sleep(coord.Settle / 4)
	}
	held, _ := a.r.Held(ctx(t), scope, w)
	al, _ := a.r.Allocations(ctx(t), scope, w)
	if held["l-b"] != 10 || al["l-a"] != 10 || sum(held) != limit {
		t.Fatalf("allocations %v, held %v: a proxy that never confirms keeps its 10 held, l-a gets none of it", al, held)
	}
}

func testFailover(t *testing.T, d Deployment) {
	s0, s1 := newSink(t), newSink(t)
	r0 := d.Replica(t, s0.Deliver)
	r1 := d.Replica(t, s1.Deliver)
	a := &proxy{r: r0, s: coord.Session{Member: "f-a", ID: "f-a-s1"}}
	b := &proxy{r: r1, s: coord.Session{Member: "f-b", ID: "f-b-s1"}}
	s0.attach(a, false)
	s1.attach(b, false)
	for _, p := range []*proxy{a, b} {
		if err := p.r.Join(ctx(t), p.s); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*proxy{a, b} {
		eventually(t, "2 members", func() bool { n, _ := p.sink.member(p.s.ID); return n == 2 })
	}
	w := window()
	const scope = "key:f:rpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	// f-a (replica 0) is lent all of f-b's idle share: 20 of 20.
	eventually(t, "f-a holds everything", func() bool {
		a.report(t, scope, 20, w, 10, 10)
		got, _ := a.sink.allowance(a.s.ID, k)
		return got == 20
	})
	a.report(t, scope, 20, w, 12, 0)
	// Replica 0 dies (no Leave). f-a keeps 20, unused 8 of it: while it has
	// no live replica nobody may reclaim that (it could not hear it).
	if err := r0.Close(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b.report(t, scope, 20, w, 0, 5)
		time.Sleep(coord.Settle / 2)
	}
	al, _ := r1.Allocations(ctx(t), scope, w)
	if al["f-a"] != 20 || sum(al) != 20 {
		t.Fatalf("after replica 0 died: %v; want f-a's 20 untouched", al)
	}
	// f-a reconnects to replica 1: it keeps its place and its 20; no new
	// member, so the count does not change.
	a2 := &proxy{r: r1, s: coord.Session{Member: "f-a", ID: "f-a-s2"}}
	s1.attach(a2, false)
	if err := r1.Join(ctx(t), a2.s); err != nil {
		t.Fatal(err)
	}
	// A reconnected proxy reports all its use again (what its dead replica
	// had not written yet included).
	a2.report(t, scope, 20, w, 12, 0)
	eventually(t, "f-a told its allowance on replica 1", func() bool {
		n, i := s1.member(a2.s.ID)
		got, ok := s1.allowance(a2.s.ID, k)
		return n == 2 && i == 0 && ok && got == 20
	})
	// Once it is settled on a live replica, its unused part is lendable
	// again (and nothing ever exceeds the limit).
	eventually(t, "f-b lent f-a's unused share", func() bool {
		b.report(t, scope, 20, w, 0, 5)
		got, _ := s1.allowance(b.s.ID, k)
		return got >= 5
	})
	// (Asks repeated while f-a's confirmation was on its way may have
	// reclaimed more than f-b got: that is free once confirmed.)
	al, _ = r1.Allocations(ctx(t), scope, w)
	held, _ := r1.Held(ctx(t), scope, w)
	if sum(held) > 20 || al["f-a"] < 12 {
		t.Fatalf("allocations %v, held %v: want at most 20 in all, f-a's 12 used kept", al, held)
	}
	eventually(t, "f-a told its lower allowance", func() bool {
		got, _ := s1.allowance(a2.s.ID, k)
		al, _ := r1.Allocations(ctx(t), scope, w)
		return got == al["f-a"] && got < 20
	})
}

func testRestart(t *testing.T, d Deployment) {
	s0 := newSink(t)
	r0 := d.Replica(t, s0.Deliver)
	a := &proxy{r: r0, s: coord.Session{Member: "s-a", ID: "s-a-s1"}}
	s0.attach(a, false)
	if err := r0.Join(ctx(t), a.s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "1 member", func() bool { n, _ := s0.member(a.s.ID); return n >= 1 })
	w := window()
	const scope = "user:s:tpm"
	k := coord.PoolKey{Scope: scope, Window: w}
	a.report(t, scope, 1000, w, 400, 100)
	eventually(t, "s-a answered", func() bool { _, ok := s0.allowance(a.s.ID, k); return ok })
	before, _ := r0.Allocations(ctx(t), scope, w)
	r0.Close()
	// The same deployment restarted: the window's grants are still there.
	s1 := newSink(t)
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
