package coord

import (
	"context"
	"slices"
	"sync"
	"time"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Memory is the in-process Coordinator: the whole deployment is this one
// replica (the embedded store refuses several). Its state lives in memory:
// a restart forgets the open windows and proxies fall back to their implicit
// shares until they report again.
type Memory struct {
	deliver Deliver
	now     func() time.Time

	mu sync.Mutex
	// out orders deliveries: it is taken before mu is released (flush), so
	// grants reach the streams in the order they were built under mu and
	// an older membership view is never delivered after a newer one.
	out      sync.Mutex
	members  []string                        // in join order: the index
	sessions map[string]map[string]time.Time // member → session → joined
	since    map[string]time.Time            // member → when it joined
	pools    map[PoolKey]*memPool
	lastGC   time.Time
}

type memPool struct {
	Pool
	touched time.Time
}

// NewMemory returns an in-process Coordinator delivering grants through d.
func NewMemory(d Deliver) *Memory {
	return &Memory{deliver: d, now: time.Now, sessions: map[string]map[string]time.Time{},
		since: map[string]time.Time{}, pools: map[PoolKey]*memPool{}}
}

type send struct {
	session string
	g       *syncv1.LeaseGrant
}

// flush releases m.mu and delivers out, after every grant built before it
// under m.mu and before every grant built after it. (Deliver never calls
// back into the coordinator: holding out while delivering cannot deadlock.)
func (m *Memory) flush(out []send) {
	m.out.Lock()
	defer m.out.Unlock()
	m.mu.Unlock()
	for _, s := range out {
		m.deliver(s.session, s.g)
	}
}

// membershipLocked builds the grant telling member its place and pins its
// allowance in every open window (its implicit shares would change with the
// count).
func (m *Memory) membershipLocked(member string) *syncv1.LeaseGrant {
	now := m.now()
	i := slices.Index(m.members, member)
	g := &syncv1.LeaseGrant{Proxies: int32(len(m.members)), Index: int32(i)}
	for k, p := range m.pools {
		a := p.Get(member, now)
		g.Allowances = append(g.Allowances, &syncv1.LeaseAllowance{Scope: k.Scope, WindowUnix: k.Window, Allowance: a.Alloc, Seq: a.Seq})
	}
	return g
}

func (m *Memory) everyoneLocked() []send {
	var out []send
	for _, mem := range m.members {
		g := m.membershipLocked(mem)
		for s := range m.sessions[mem] {
			out = append(out, send{s, g})
		}
	}
	return out
}

// Join implements Coordinator.
func (m *Memory) Join(_ context.Context, s Session) error {
	now := m.now()
	m.mu.Lock()
	ss := m.sessions[s.Member]
	var out []send
	if ss == nil {
		ss = map[string]time.Time{}
		m.sessions[s.Member] = ss
		m.since[s.Member] = now
		m.members = append(m.members, s.Member)
		ss[s.ID] = now
		out = m.everyoneLocked()
	} else {
		ss[s.ID] = now
		out = []send{{s.ID, m.membershipLocked(s.Member)}}
	}
	m.flush(out)
	return nil
}

// Leave implements Coordinator.
func (m *Memory) Leave(_ context.Context, s Session) {
	m.mu.Lock()
	ss := m.sessions[s.Member]
	if _, ok := ss[s.ID]; !ok {
		m.mu.Unlock()
		return
	}
	delete(ss, s.ID)
	if len(ss) > 0 {
		m.mu.Unlock()
		return
	}
	delete(m.sessions, s.Member)
	delete(m.since, s.Member)
	if i := slices.Index(m.members, s.Member); i >= 0 {
		m.members = slices.Delete(m.members, i, i+1)
	}
	now := m.now()
	for _, p := range m.pools {
		p.Depart(s.Member, now)
	}
	out := m.everyoneLocked()
	m.flush(out)
}

// Request implements Coordinator.
func (m *Memory) Request(_ context.Context, s Session, r *syncv1.LeaseRequest) {
	now := m.now()
	m.mu.Lock()
	if now.Sub(m.lastGC) > 10*time.Second {
		for k, p := range m.pools {
			if Expired(k, p.touched, now) {
				delete(m.pools, k)
			}
		}
		m.lastGC = now
	}
	_, member := m.since[s.Member]
	var mine *syncv1.LeaseGrant
	others := map[string]*syncv1.LeaseGrant{}
	for _, u := range r.GetUses() {
		if len(u.GetScope()) > MaxScope {
			continue
		}
		k := PoolKey{u.GetScope(), u.GetWindowUnix()}
		p := m.pools[k]
		if u.GetLimit() < 0 {
			// A confirmation only, from a proxy that never used the limit.
			if p != nil && Confirming(u) {
				p.Use(s.Member, u, now)
			}
			continue
		}
		if p == nil {
			p = &memPool{Pool: Pool{Limit: u.GetLimit(), Par: k.Window == 0, Created: now, Allocs: map[string]*Alloc{}}}
			p.Open(m.members, now)
			m.pools[k] = p
		}
		p.touched = now
		p.Limit = u.GetLimit()
		p.Use(s.Member, u, now)
		if !member || u.GetWant() <= 0 {
			continue
		}
		lowered := p.Ask(s.Member, u.GetWant(), m.members, now, func(q string, a *Alloc) bool {
			return p.Settled(a, m.since[q], now)
		})
		for _, q := range lowered {
			g := others[q]
			if g == nil {
				g = &syncv1.LeaseGrant{}
				others[q] = g
			}
			a := p.Allocs[q]
			g.Allowances = append(g.Allowances, &syncv1.LeaseAllowance{Scope: k.Scope, WindowUnix: k.Window, Allowance: a.Alloc, Seq: a.Seq})
		}
		if mine == nil {
			mine = &syncv1.LeaseGrant{}
		}
		a := p.Allocs[s.Member]
		mine.Allowances = append(mine.Allowances, &syncv1.LeaseAllowance{Scope: k.Scope, WindowUnix: k.Window, Allowance: a.Alloc, Seq: a.Seq})
	}
	var out []send
	if mine != nil {
		for sid := range m.sessions[s.Member] {
			out = append(out, send{sid, mine})
		}
	}
	for q, g := range others {
		for sid := range m.sessions[q] {
			out = append(out, send{sid, g})
		}
	}
	m.flush(out)
}

// Pools implements Coordinator.
func (m *Memory) Pools() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pools)
}

// Close implements Coordinator.
func (m *Memory) Close() error { return nil }

// Allocations implements coord.Inspector.
func (m *Memory) Allocations(_ context.Context, scope string, window int64) (map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int64{}
	if p := m.pools[PoolKey{scope, window}]; p != nil {
		for k, a := range p.Allocs {
			out[k] = a.Alloc
		}
	}
	return out, nil
}

// Held implements coord.Inspector.
func (m *Memory) Held(_ context.Context, scope string, window int64) (map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int64{}
	if p := m.pools[PoolKey{scope, window}]; p != nil {
		for k, a := range p.Allocs {
			out[k] = a.Alloc + a.Transit
		}
	}
	return out, nil
}
