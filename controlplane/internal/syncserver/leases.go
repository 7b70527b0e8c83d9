package syncserver

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Rate-limit leases (DESIGN.md, "Money"): the control plane is the
// bookkeeper of every active limit window, in memory.
//
// Each proxy connected to this control plane starts every window of every
// limit with an implicit share, shares.Of(limit, proxies, index) (limit /
// proxies, the remainder to the lowest indexes), so the shares add up to the
// limit without a round trip. The proxies report their use of active limits
// (LeaseRequest, every 200 ms while it changes) and ask for more when they
// are close to their allowance; the control plane grants from what no proxy
// holds and, when nothing is left, reclaims the unused part (allowance -
// reported use) of the other proxies' allowances, telling them their new,
// lower allowance. A proxy that leaves keeps what it used (rpm, tpm) or frees
// its slots (parallel). A proxy that joins gets an explicit allowance of 0
// for every window already open and asks like any other; everyone gets their
// new index and count.
//
// Bounds: within one window the allowances on this control plane add up to
// at most the limit. Only the share of a proxy whose reported use has been
// still for two report intervals (or that never used the window, reported
// at its first use) is reclaimed, so a busy proxy's share is not taken on a
// stale report; a proxy that starts using a limit in the instant its share
// is reclaimed may admit up to the requests in flight on the wire before it
// learns its lower allowance. With several
// control-plane replicas each replica does this for its own proxies only:
// with R replicas a limit can be admitted up to R times over (each replica's
// proxies share the whole limit).
//
// Windows live in memory: a control-plane restart forgets them, and proxies
// fall back to their implicit shares (from the count they knew) until they
// report again.
type leases struct {
	mu      sync.Mutex
	members []*conn
	pools   map[poolKey]*pool
	lastGC  time.Time
	// grants counts lease grants sent (metrics).
	grants atomic.Int64
}

type poolKey struct {
	scope  string
	window int64
}

type pool struct {
	limit   int64
	par     bool
	alloc   map[*conn]int64
	used    map[*conn]int64
	changed map[*conn]time.Time // when a proxy's reported use last changed
	created time.Time
	touched time.Time
}

// settle is how long a proxy's use must have been still (or, never
// reported, the window open and the proxy connected) before its unused share
// may be reclaimed: two report intervals, so a busy proxy's share is never
// taken on a stale report.
const settle = 400 * time.Millisecond

// reclaimable reports whether q's unused share may be taken now. A proxy
// that reported no parallel request in flight gives its parallel share up
// at once (issue 17: after slow requests ended, another proxy refused a
// request for 400 ms with nothing in flight anywhere); it reports its next
// request at once, so the window in which both admit is one report's trip.
func (p *pool) reclaimable(q *conn, now time.Time) bool {
	if u, ok := p.used[q]; ok && p.par && u == 0 {
		return true
	}
	if t, ok := p.changed[q]; ok {
		return now.Sub(t) >= settle
	}
	return now.Sub(p.created) >= settle && now.Sub(q.connectedAt) >= settle
}

type leaseSend struct {
	c *conn
	m *syncv1.LeaseGrant
}

func (l *leases) index(c *conn) int {
	for i, m := range l.members {
		if m == c {
			return i
		}
	}
	return -1
}

// membership tells every member its index and the count, and pins the
// allowance of every open window (their implicit shares would change with
// the count).
func (l *leases) membershipLocked() []leaseSend {
	out := make([]leaseSend, 0, len(l.members))
	for i, m := range l.members {
		g := &syncv1.LeaseGrant{Proxies: int32(len(l.members)), Index: int32(i)}
		for k, p := range l.pools {
			a, ok := p.alloc[m]
			if !ok {
				a = 0
				p.alloc[m] = 0
			}
			g.Allowances = append(g.Allowances, &syncv1.LeaseAllowance{Scope: k.scope, WindowUnix: k.window, Allowance: a})
		}
		out = append(out, leaseSend{m, g})
	}
	return out
}

func (l *leases) join(c *conn) {
	l.mu.Lock()
	if l.pools == nil {
		l.pools = make(map[poolKey]*pool)
	}
	l.members = append(l.members, c)
	out := l.membershipLocked()
	l.mu.Unlock()
	l.deliver(out)
}

func (l *leases) leave(c *conn) {
	l.mu.Lock()
	i := l.index(c)
	if i < 0 {
		l.mu.Unlock()
		return
	}
	l.members = append(l.members[:i], l.members[i+1:]...)
	for _, p := range l.pools {
		if p.par {
			delete(p.alloc, c) // its requests in flight are gone with it
		} else {
			p.alloc[c] = p.used[c] // what it admitted stays admitted
		}
		delete(p.used, c)
		delete(p.changed, c)
	}
	out := l.membershipLocked()
	l.mu.Unlock()
	l.deliver(out)
}

// request records a proxy's use and answers its asks.
func (l *leases) request(c *conn, r *syncv1.LeaseRequest) {
	now := time.Now()
	l.mu.Lock()
	if l.pools == nil {
		l.pools = make(map[poolKey]*pool)
	}
	if now.Sub(l.lastGC) > 10*time.Second {
		l.gcLocked(now)
		l.lastGC = now
	}
	member := l.index(c) >= 0
	var mine *syncv1.LeaseGrant
	others := map[*conn]*syncv1.LeaseGrant{}
	for _, u := range r.GetUses() {
		if u.GetLimit() < 0 || len(u.GetScope()) > 1024 {
			continue
		}
		k := poolKey{u.GetScope(), u.GetWindowUnix()}
		p := l.pools[k]
		if p == nil {
			p = &pool{limit: u.GetLimit(), par: u.GetWindowUnix() == 0, alloc: map[*conn]int64{}, used: map[*conn]int64{},
				changed: map[*conn]time.Time{}, created: now}
			n := int64(len(l.members))
			for i, m := range l.members {
				p.alloc[m] = shares.Of(p.limit, n, int64(i))
			}
			l.pools[k] = p
		}
		p.touched = now
		p.limit = u.GetLimit()
		if old, ok := p.used[c]; !ok || old != u.GetUsed() {
			p.changed[c] = now
		}
		p.used[c] = u.GetUsed()
		if !member || u.GetWant() <= 0 {
			continue
		}
		var held int64
		for _, a := range p.alloc {
			held += a
		}
		free := p.limit - held
		want := u.GetWant()
		if free < want {
			for _, q := range l.members {
				if q == c || free >= want || !p.reclaimable(q, now) {
					continue
				}
				spare := p.alloc[q] - p.used[q]
				if spare <= 0 {
					continue
				}
				take := min(spare, want-free)
				p.alloc[q] -= take
				free += take
				g := others[q]
				if g == nil {
					g = &syncv1.LeaseGrant{}
					others[q] = g
				}
				g.Allowances = append(g.Allowances, &syncv1.LeaseAllowance{Scope: k.scope, WindowUnix: k.window, Allowance: p.alloc[q]})
			}
		}
		grant := max(min(want, free), 0)
		p.alloc[c] += grant
		if mine == nil {
			mine = &syncv1.LeaseGrant{}
		}
		mine.Allowances = append(mine.Allowances, &syncv1.LeaseAllowance{Scope: k.scope, WindowUnix: k.window, Allowance: p.alloc[c]})
	}
	l.mu.Unlock()
	out := make([]leaseSend, 0, len(others)+1)
	if mine != nil {
		out = append(out, leaseSend{c, mine})
	}
	for q, g := range others {
		out = append(out, leaseSend{q, g})
	}
	l.deliver(out)
}

// gcLocked drops windows that have ended and idle parallel pools.
func (l *leases) gcLocked(now time.Time) {
	cur := now.Unix() - now.Unix()%60
	for k, p := range l.pools {
		if (p.par && now.Sub(p.touched) > 5*time.Minute) || (!p.par && k.window < cur-60) {
			delete(l.pools, k)
		}
	}
}

func (l *leases) deliver(out []leaseSend) {
	for _, s := range out {
		l.grants.Add(1)
		if s.c.send == nil {
			continue
		}
		// Best effort: a failed Send ends that stream, and its proxy
		// keeps the allowance it had.
		_ = s.c.send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_LeaseGrant{LeaseGrant: s.m}})
	}
}
