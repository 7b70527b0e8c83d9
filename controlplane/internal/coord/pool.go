package coord

import (
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
)

// PoolKey names one window of one limit (window 0: parallel requests).
type PoolKey struct {
	Scope  string
	Window int64
}

// Alloc is one member's place in a pool.
type Alloc struct {
	Alloc, Used int64
	// Changed is when the member's reported use last changed (zero:
	// never reported).
	Changed time.Time
	// Dirty marks an Alloc the caller must persist.
	Dirty bool
}

// ParSettle: see Settled.
const ParSettle = 100 * time.Millisecond

// Pool is one window of one limit: the algorithm both implementations run
// (the Postgres one on rows it loaded under a row lock).
type Pool struct {
	Limit   int64
	Par     bool
	Created time.Time
	Allocs  map[string]*Alloc
}

func (p *Pool) get(m string) *Alloc {
	a := p.Allocs[m]
	if a == nil {
		a = &Alloc{}
		p.Allocs[m] = a
	}
	return a
}

// Open gives every member its implicit share (members in index order), so
// the shares add up to the limit as the proxies assumed without asking.
func (p *Pool) Open(members []string) {
	n := int64(len(members))
	for i, m := range members {
		a := p.get(m)
		a.Alloc = shares.Of(p.Limit, n, int64(i))
		a.Dirty = true
	}
}

// Use records a member's reported use.
func (p *Pool) Use(m string, used int64, now time.Time) {
	a := p.get(m)
	if a.Changed.IsZero() || a.Used != used {
		a.Changed = now
	}
	a.Used = used
	a.Dirty = true
}

// Settled reports whether a's unused share may be taken now (Settle).
// joined is when its holder became a member (of this session's replica).
//
// A member that reported no parallel request in flight gives its parallel
// share up at once (issue 17: after slow requests ended, another proxy
// refused a request for the settle time with nothing in flight anywhere);
// proxies report their next parallel request at once, so the window in
// which both admit is one report's trip.
//
// ParSettle is how long a parallel share reported idle (or just granted:
// Ask marks a grant as a change) is kept before it may be taken: long
// enough for a proxy to report the request a fresh grant let in (proxies
// report their first parallel request at once), short enough that a key
// whose slow requests ended is admitted elsewhere at once (the waiting
// request is decided again when the grant arrives).
func (p *Pool) Settled(a *Alloc, joined, now time.Time) bool {
	if p.Par && !a.Changed.IsZero() && a.Used == 0 && now.Sub(a.Changed) >= ParSettle {
		return true
	}
	if now.Sub(joined) < Settle {
		return false
	}
	if !a.Changed.IsZero() {
		return now.Sub(a.Changed) >= Settle
	}
	return now.Sub(p.Created) >= Settle
}

// Ask grants m up to want from what no member holds, reclaiming the spare
// part of the candidates' allowances (in order) that may(q, a) allows. It
// returns the members whose allowance was lowered.
//
// A grant counts as a change of m's use (Changed = now): m asked because it
// ran out or nearly, so its reported use may have been still for a while
// (its requests waiting for the grant), and it admits them with the grant
// before it can report doing so. Its fresh grant is not "unused" for
// another member's ask until Settle has passed, as for any change.
func (p *Pool) Ask(m string, want int64, candidates []string, now time.Time, may func(q string, a *Alloc) bool) (lowered []string) {
	var held int64
	for _, a := range p.Allocs {
		held += a.Alloc
	}
	free := p.Limit - held
	if free < want {
		for _, q := range candidates {
			if free >= want {
				break
			}
			a := p.Allocs[q]
			if q == m || a == nil || !may(q, a) {
				continue
			}
			spare := a.Alloc - a.Used
			if spare <= 0 {
				continue
			}
			take := min(spare, want-free)
			a.Alloc -= take
			a.Dirty = true
			free += take
			lowered = append(lowered, q)
		}
	}
	if grant := max(min(want, free), 0); grant > 0 {
		a := p.get(m)
		a.Alloc += grant
		a.Changed = now
		a.Dirty = true
	} else {
		p.get(m) // the asker hears back even with nothing more
	}
	return lowered
}

// Depart applies a member's departure: what it used in an rpm/tpm window
// stays admitted (allocated); its parallel slots are gone with it.
func (p *Pool) Depart(m string) {
	a := p.Allocs[m]
	if a == nil {
		return
	}
	if p.Par {
		delete(p.Allocs, m)
		return
	}
	a.Alloc = a.Used
	a.Dirty = true
}

// Expired reports whether a pool may be forgotten: an rpm/tpm window that
// ended more than a minute ago, or a parallel pool idle for five minutes.
func Expired(k PoolKey, touched, now time.Time) bool {
	if k.Window == 0 {
		return now.Sub(touched) > 5*time.Minute
	}
	cur := now.Unix() - now.Unix()%60
	return k.Window < cur-60
}
