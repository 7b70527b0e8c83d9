package coord

import (
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// PoolKey names one window of one limit (window 0: parallel requests).
type PoolKey struct {
	Scope  string
	Window int64
}

// Alloc is one member's place in a pool.
type Alloc struct {
	Alloc, Used int64
	// Transit is what a reclaim took from this member's allowance that the
	// member has not yet confirmed enforcing (see "Two-phase reclaim"): it
	// is still held, not free.
	Transit int64
	// Seq versions Alloc (LeaseAllowance.seq): it rises with every change
	// of Alloc (see bump).
	Seq int64
	// Changed is when the member's reported use last changed (zero:
	// never reported).
	Changed time.Time
	// Dirty marks an Alloc the caller must persist.
	Dirty bool
}

// Two-phase reclaim (issue 16).
//
// A proxy admits against the allowance it last received and reports its
// use every 200 ms. A reclaim decided on a report that is already stale (a
// proxy idle for Settle that just admitted requests it has not reported)
// takes units the proxy has used, and until the lowered allowance reaches
// it the proxy keeps admitting against the old one. If the reclaimed units
// were free at once, the asker would admit them too: more than the limit
// (measured: 2020 of 2000 with 1,000 simulated proxies, 62 of 60 on
// Postgres). So units taken from a holder are not free until the holder
// confirms it enforces the lowered allowance:
//
//   - Reclaiming take from q moves it from q.Alloc to q.Transit: the pool
//     still holds it (held = Σ Alloc + Transit; free = Limit − held), so
//     the asker is granted only what is free now and asks again (a proxy
//     re-asks every 50 ms while requests wait, for at least 800 ms). An
//     ask repeated before the confirmation arrived may reclaim more than
//     the asker then gets: that is free once confirmed, for the next ask.
//   - Every report carries the allowance the proxy enforces and its Seq
//     (LeaseUse.allowance, allowance_seq). When both equal q's Alloc and
//     Seq, q enforces the lowered allowance: from that report on it admits
//     at most max(u, Alloc) in all, u being the use the report carries (a
//     proxy admits while its use is below its allowance, and only the pool
//     raises an allowance). So q keeps min(u − Alloc, Transit) of its
//     transit when it overran the lowered allowance, and the rest is free.
//     A proxy reports at once when its allowance is lowered, so this takes
//     one round trip (on Postgres: the NOTIFY to the holder's replica, the
//     report, and that replica's next transaction, which such a report
//     does not wait for).
//   - A report without the allowance (a proxy older than this protocol)
//     never confirms: what was reclaimed from it stays held until the
//     window ends, or in a parallel pool until the proxy departs. Lending
//     from such proxies stops; nothing is ever admitted twice.
//
// Why Seq, not the allowance alone: grants reach a proxy out of order. A
// grant decided by replica A is delivered after A's commit, a reclaim
// decided by replica B reaches the proxy through a NOTIFY to A (on
// another goroutine), membership deliveries read allowances outside any
// lease transaction, and the in-memory coordinator delivers after
// unlocking. With values alone, a stale higher allowance arriving after
// the confirmation would let the proxy admit units already freed and
// granted. With Seq the proxy ignores any allowance older than the one it
// holds, so its allowance only moves forward in the pool's history; a
// mismatch at the pool (the proxy has not yet received the latest change,
// or its report crossed it) confirms nothing and keeps Transit held, and
// the proxy's allowance is then one the pool held at some point with Seq
// below the current one: never more than Alloc + Transit, because Alloc
// + Transit only falls at a confirmation (or a departure, see Depart),
// and a confirmation needs the latest Seq. So a mismatch leaves the proxy
// enforcing less than, or as much as, what the pool holds for it: safe,
// and what it confirms later frees the rest. Seq comes from the
// coordinator's clock (µs, and at least one more than before), so a pool
// forgotten and opened again (a parallel pool idle for five minutes, an
// in-memory coordinator restarted) starts above anything its proxies still
// hold.
//
// The replica that decided a reclaim may die before the holder confirms:
// the transit is in the row, so no replica regrants it until the holder,
// reconnected anywhere, confirms (on a new stream a proxy reports every
// allowance it holds again, and a reconnection delivers the current ones;
// one that does not raise the allowance held is reported at once).

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

// Get returns m's place, created (holding nothing) when it has none.
func (p *Pool) Get(m string, now time.Time) *Alloc {
	a := p.Allocs[m]
	if a == nil {
		a = &Alloc{}
		bump(a, now) // above what a proxy that departed and came back holds
		p.Allocs[m] = a
	}
	return a
}

// bump versions a change of a's allowance made at now.
func bump(a *Alloc, now time.Time) {
	a.Seq = max(a.Seq+1, now.UnixMicro())
	a.Dirty = true
}

// Open gives every member its implicit share (members in index order), so
// the shares add up to the limit as the proxies assumed without asking.
func (p *Pool) Open(members []string, now time.Time) {
	n := int64(len(members))
	for i, m := range members {
		a := p.Get(m, now)
		a.Alloc = shares.Of(p.Limit, n, int64(i))
		a.Transit = 0
		bump(a, now)
	}
}

// Use records a member's report: its use and, when the report carries it,
// the allowance it enforces, which confirms a lowering (see "Two-phase
// reclaim").
func (p *Pool) Use(m string, u *syncv1.LeaseUse, now time.Time) {
	a := p.Get(m, now)
	used := u.GetUsed()
	if a.Changed.IsZero() || a.Used != used {
		a.Changed = now
	}
	a.Used = used
	a.Dirty = true
	if a.Transit > 0 && u.Allowance != nil && u.GetAllowance() == a.Alloc && u.GetAllowanceSeq() == a.Seq {
		if over := min(max(used-a.Alloc, 0), a.Transit); over > 0 {
			a.Alloc += over
			bump(a, now)
		}
		a.Transit = 0
	}
}

// Confirming reports whether a report from a member may confirm a lowering
// (the coordinators let such a report through without batching delay). A
// report with a negative limit is a confirmation only, from a proxy that
// was told an allowance of a limit it has not used (it does not know the
// limit): it opens no pool and changes no limit.
func Confirming(u *syncv1.LeaseUse) bool { return u.Allowance != nil }

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
// part of the candidates' allowances (in order) that may(q, a) allows when
// that is not enough. What it reclaims is in transit (see "Two-phase
// reclaim"): free, and granted to whoever asks, once its holder confirms.
// It returns the members whose allowance was lowered.
//
// A grant counts as a change of m's use (Changed = now): m asked because it
// ran out or nearly, so its reported use may have been still for a while
// (its requests waiting for the grant), and it admits them with the grant
// before it can report doing so. Its fresh grant is not "unused" for
// another member's ask until Settle has passed, as for any change.
func (p *Pool) Ask(m string, want int64, candidates []string, now time.Time, may func(q string, a *Alloc) bool) (lowered []string) {
	var held int64
	for _, a := range p.Allocs {
		held += a.Alloc + a.Transit
	}
	free := p.Limit - held
	// Reclaimed units become free only once their holder confirms (see
	// "Two-phase reclaim"): reclaim what the asker lacks now, and grant
	// only what is free now.
	if coming := int64(0); free < want {
		for _, q := range candidates {
			if free+coming >= want {
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
			take := min(spare, want-free-coming)
			a.Alloc -= take
			a.Transit += take
			bump(a, now)
			coming += take
			lowered = append(lowered, q)
		}
	}
	if grant := max(min(want, free), 0); grant > 0 {
		a := p.Get(m, now)
		a.Alloc += grant
		a.Changed = now
		bump(a, now)
	} else {
		p.Get(m, now) // the asker hears back even with nothing more
	}
	return lowered
}

// Depart applies a member's departure: what it used in an rpm/tpm window
// stays admitted (allocated); its parallel slots are gone with it.
//
// Transit: in an rpm/tpm window it stays held. A member departs when its
// stream ends, and a proxy whose stream broke may still be alive,
// admitting against an allowance it never heard was lowered; keeping the
// transit held means a departure frees no more than it did before
// two-phase reclaim (Alloc − Used, which the proxy was told it holds),
// and the transit is freed when the proxy, reconnected, confirms, or when
// the window ends. In a parallel pool the member's slots all go with it,
// transit included, as they always did (a departed proxy's requests in
// flight are not counted anywhere).
func (p *Pool) Depart(m string, now time.Time) {
	a := p.Allocs[m]
	if a == nil {
		return
	}
	if p.Par {
		delete(p.Allocs, m)
		return
	}
	if a.Alloc != a.Used {
		a.Alloc = a.Used
		bump(a, now)
	}
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
