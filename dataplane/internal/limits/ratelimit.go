package limits

import (
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Window is the rpm/tpm window (LiteLLM's limits are per minute).
const Window = 60

const (
	metricRPM uint8 = iota
	metricTPM
	metricPar
)

var metricNames = [...]string{"rpm", "tpm", "par"}

// askAt: a proxy asks for more once its remaining allowance is at most this
// fraction (1/askAt) of its allowance.
const askAt = 5

// reportInterval is how often a proxy reports its use of active limits.
const reportInterval = 200 * time.Millisecond

// askEvery bounds how often one limit is asked for (refused requests would
// otherwise ask once each).
const askEvery = int64(50 * time.Millisecond)

type scopeKey struct {
	kind   string // "key", "team", "user"
	id     string
	metric uint8
	model  string
}

func (k scopeKey) String() string {
	s := k.kind + ":" + k.id + ":" + metricNames[k.metric]
	if k.model != "" {
		s += ":" + k.model
	}
	return s
}

type counter struct {
	scope  string
	metric uint8

	mu        sync.Mutex
	limit     int64
	window    int64 // window start (unix s); 0 for parallel
	allowance int64 // -1: the implicit share
	seq       int64 // LeaseAllowance.seq of allowance (0: implicit, or an older control plane)
	used      int64
	reported  int64 // used at the last report (-1: never)
	// confirm: the allowance was lowered (or restated) since the last
	// report; the next report goes at once and confirms it (the control
	// plane frees what it reclaimed only then).
	confirm bool
	// unused: created by a grant for a limit not used here yet (its limit
	// unknown); Uses reports it as a confirmation only.
	unused   bool
	asked    bool
	lastAsk  int64 // unix ns of the last ask
	touched  int64 // unix s of the last use
	answered int64 // unix ns of the last grant for the current window
}

// answeredSince reports whether the control plane answered for c's window
// at or after t (unix ns).
func (c *counter) answeredSince(t int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.answered >= t
}

// implicit is this proxy's share of limit among the proxies it knows of.
func (l *Limiter) implicit(limit int64) int64 {
	m := l.members.Load()
	return shares.Of(limit, int64(m>>32), int64(m&0xffffffff))
}

func (c *counter) allowanceLocked(l *Limiter) int64 {
	if c.allowance >= 0 {
		return c.allowance
	}
	return l.implicit(c.limit)
}

// roll moves c to window w (locked).
func (c *counter) roll(w int64) {
	if c.window != w {
		c.window, c.used, c.allowance, c.seq, c.asked, c.reported, c.confirm = w, 0, -1, 0, false, -1, false
	}
}

func (l *Limiter) counter(k scopeKey) *counter {
	l.mu.RLock()
	c, ok := l.counters[k]
	l.mu.RUnlock()
	if ok {
		return c
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.counters[k]; ok {
		return c
	}
	scope := k.String()
	if c, ok = l.byScope[scope]; ok {
		// Granted before this proxy used the limit (a reclaim, or a
		// window already open when it joined).
		// (Still unused until take records its limit: Uses must not report
		// it with limit 0.)
		c.mu.Lock()
		c.metric = k.metric
		c.mu.Unlock()
		l.counters[k] = c
		return c
	}
	c = &counter{scope: scope, metric: k.metric, allowance: -1, reported: -1}
	l.counters[k] = c
	l.byScope[scope] = c
	return c
}

// take admits n units of c in window w if its allowance has room (used <
// allowance: one request's tokens may overshoot a tpm share). It returns the
// allowance and what remains after the take.
func (l *Limiter) take(c *counter, limit, w, n, nowNano int64) (ok bool, allowance, remaining int64) {
	c.mu.Lock()
	c.roll(w)
	c.limit, c.unused = limit, false
	c.touched = nowNano / 1e9
	a := c.allowanceLocked(l)
	if c.used >= a {
		ask := !c.asked && nowNano-c.lastAsk >= askEvery
		if ask {
			c.asked, c.lastAsk = true, nowNano
		}
		c.mu.Unlock()
		if ask {
			l.wake()
		}
		return false, a, 0
	}
	c.used += n
	rem := a - c.used
	// The first use of a window is reported at once, so that the control
	// plane knows this proxy is using it before it reclaims shares.
	// So is a parallel request on a proxy that last reported none in
	// flight: the control plane may reclaim an idle proxy's parallel
	// share at once.
	ask := c.reported < 0 || (c.metric == metricPar && c.reported == 0)
	if rem*askAt <= a && !c.asked && nowNano-c.lastAsk >= askEvery {
		c.asked, ask, c.lastAsk = true, true, nowNano
	}
	c.mu.Unlock()
	if ask {
		l.wake()
	} else {
		l.markPending()
	}
	return true, a, max(rem, 0)
}

// markPending tells the reporter a use changed since the last report (at
// most one signal per report).
func (l *Limiter) markPending() {
	if l.pendingSet.CompareAndSwap(false, true) {
		select {
		case l.pending <- struct{}{}:
		default:
		}
	}
}

// Pending is signalled when a use changed after the last report: it
// should be reported within ReportInterval.
func (l *Limiter) Pending() <-chan struct{} { return l.pending }

// give returns n units to c if it is still in window w.
func (c *counter) give(w, n int64) {
	c.mu.Lock()
	if c.window == w {
		c.used -= n
	}
	c.mu.Unlock()
}

// release returns a parallel slot of a request that ended. A proxy whose
// last request in flight ended reports it at once (not at the next
// report): the control plane can only reclaim the share it holds once that
// use has been still for a while, and a request on another proxy may be
// waiting for it.
func (l *Limiter) release(c *counter, w, n int64) {
	c.mu.Lock()
	idle := false
	if c.window == w {
		c.used -= n
		idle = c.used == 0 && c.allowance > 0
	}
	c.mu.Unlock()
	if idle {
		l.wake()
	} else {
		l.markPending()
	}
	l.signal()
}

func (l *Limiter) wake() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// Notify is signalled when a limit needs more allowance.
func (l *Limiter) Notify() <-chan struct{} { return l.notify }

// ReportInterval is how often Uses should be sent even without Notify.
func (l *Limiter) ReportInterval() time.Duration { return reportInterval }

// SetConnected records whether the sync stream is up (degraded when not).
// A new connection resends every outstanding ask.
func (l *Limiter) SetConnected(v bool) {
	l.connected.Store(v)
	if v {
		// Every allowance held is confirmed again: a confirmation lost
		// with the old stream would keep what was reclaimed held.
		l.mu.RLock()
		for _, c := range l.byScope {
			c.mu.Lock()
			c.reported = -1
			c.confirm = c.confirm || c.seq != 0
			c.mu.Unlock()
		}
		l.mu.RUnlock()
		l.unusedConfirm.Store(true)
		l.wake()
	}
}

// Uses returns what to report: every limit of the current window whose use
// changed since the last report, and every ask. Idle counters of past
// windows are dropped.
func (l *Limiter) Uses() *syncv1.LeaseRequest {
	l.pendingSet.Store(false) // a use changed from here on signals again
	nowUnix := l.now().Unix()
	w := nowUnix - nowUnix%Window
	var req *syncv1.LeaseRequest
	var drop []scopeKey
	l.mu.RLock()
	for k, c := range l.counters {
		c.mu.Lock()
		if c.metric != metricPar && c.window != w {
			if c.window < w-Window {
				drop = append(drop, k)
			}
			c.mu.Unlock()
			continue
		}
		if c.metric == metricPar && c.used == 0 && nowUnix-c.touched > 2*Window {
			drop = append(drop, k)
			c.mu.Unlock()
			continue
		}
		if c.unused || (c.used == c.reported && !c.asked && !c.confirm) {
			c.mu.Unlock() // (an unused counter: reported below)
			continue
		}
		// Every report carries the allowance this proxy enforces: the
		// confirmation a reclaim waits for (coord.Pool, "Two-phase
		// reclaim").
		view := c.allowanceLocked(l)
		u := &syncv1.LeaseUse{Scope: c.scope, Limit: c.limit, WindowUnix: c.window, Used: c.used,
			Allowance: &view, AllowanceSeq: c.seq}
		c.confirm = false
		if c.asked {
			m := l.members.Load() >> 32
			u.Want = max(1, c.limit/int64(max(m, 1))/2)
		}
		c.reported = c.used
		c.mu.Unlock()
		if req == nil {
			req = &syncv1.LeaseRequest{}
		}
		req.Uses = append(req.Uses, u)
	}
	var orphans []string
	if len(l.byScope) > len(l.counters) || l.unusedConfirm.Load() {
		l.unusedConfirm.Store(false)
		for sc, c := range l.byScope {
			c.mu.Lock()
			if c.unused && c.confirm {
				// Its limit is unknown here: a confirmation only.
				view := c.allowance
				u := &syncv1.LeaseUse{Scope: c.scope, Limit: -1, WindowUnix: c.window, Used: c.used,
					Allowance: &view, AllowanceSeq: c.seq}
				c.confirm = false
				if req == nil {
					req = &syncv1.LeaseRequest{}
				}
				req.Uses = append(req.Uses, u)
			}
			if nowUnix-c.touched > 2*Window && c.used == 0 {
				orphans = append(orphans, sc)
			}
			c.mu.Unlock()
		}
	}
	l.mu.RUnlock()
	if len(orphans) > 0 {
		l.mu.Lock()
		for _, sc := range orphans {
			if c := l.byScope[sc]; c != nil && c.limit == 0 && c.used == 0 {
				delete(l.byScope, sc)
			}
		}
		l.mu.Unlock()
	}
	if len(drop) > 0 {
		// A dropped counter still referenced by a request in flight is
		// settled harmlessly; its window is over or it is idle.
		l.mu.Lock()
		for _, k := range drop {
			if c, ok := l.counters[k]; ok {
				delete(l.byScope, c.scope)
				delete(l.counters, k)
			}
		}
		l.mu.Unlock()
	}
	return req
}

// Apply installs a grant from the control plane.
func (l *Limiter) Apply(g *syncv1.LeaseGrant) {
	l.grants.Add(1)
	l.allowances.Add(uint64(len(g.GetAllowances())))
	if n := g.GetProxies(); n > 0 {
		l.members.Store(uint64(n)<<32 | uint64(uint32(g.GetIndex())))
		l.saveMembers(uint64(n))
	}
	tell := false
	for _, a := range g.GetAllowances() {
		l.mu.RLock()
		c, ok := l.byScope[a.GetScope()]
		l.mu.RUnlock()
		if !ok {
			// Not used here yet: keep the allowance for when it is.
			l.mu.Lock()
			if c, ok = l.byScope[a.GetScope()]; !ok {
				// A lowering of the implicit share (the control
				// plane reclaimed it): confirmed at once.
				c = &counter{scope: a.GetScope(), window: a.GetWindowUnix(), allowance: a.GetAllowance(), seq: a.GetSeq(),
					reported: 0, touched: l.now().Unix(), unused: true, confirm: a.GetSeq() != 0}
				tell = tell || c.confirm
				l.byScope[c.scope] = c
			}
			l.mu.Unlock()
		}
		c.mu.Lock()
		switch {
		case a.GetWindowUnix() > c.window:
			// It replaces the implicit share this proxy held: confirmed
			// at once (a reclaim of it waits for that).
			c.roll(a.GetWindowUnix())
			c.allowance, c.seq = a.GetAllowance(), a.GetSeq()
			c.answered = time.Now().UnixNano()
			if c.seq != 0 {
				c.confirm, tell = true, true
			}
		case a.GetWindowUnix() == c.window && a.GetSeq() >= c.seq:
			// (An allowance older than the one held arrived out of order:
			// ignored, it is not an answer either.) One that does not
			// raise the allowance is a lowering, or the control plane
			// restating it after a reconnection: reported at once, as
			// the control plane frees what it reclaimed only on that
			// report.
			if a.GetAllowance() <= c.allowanceLocked(l) && a.GetSeq() != c.seq {
				c.confirm = true
				tell = true
			}
			c.allowance, c.seq = a.GetAllowance(), a.GetSeq()
			c.asked = false
			c.answered = time.Now().UnixNano()
		}
		c.mu.Unlock()
	}
	if tell {
		l.unusedConfirm.Store(true)
		l.wake()
	}
	l.signal()
}

// saveMembers writes n to the members file when it changed (atomically:
// a temporary file renamed over it). A failure only costs the fallback.
func (l *Limiter) saveMembers(n uint64) {
	if l.membersFile == "" {
		return
	}
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	if n == l.savedMembers {
		return
	}
	tmp := l.membersFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(n, 10)+"\n"), 0o600); err != nil {
		return
	}
	if err := os.Rename(tmp, l.membersFile); err != nil {
		return
	}
	l.savedMembers = n
}
