// Package limits is the proxy's rate-limit and budget-reservation gate
// (proxy.Gate): rpm, tpm and max_parallel_requests on the key, its team and
// its user, the key's per-model rpm/tpm, and a reservation of an estimated
// cost per in-flight request against the remaining budget.
//
// # Limits across proxies (leased shares)
//
// Every limit is counted per window (rpm and tpm: the wall-clock minute;
// parallel: one window for ever, counting requests in flight). A proxy may
// admit up to its allowance in a window. It starts each window with an
// implicit share, limit / proxies (the remainder of the division going to
// the lowest indexes), where proxies and its index come from the control
// plane (LeaseGrant, on connect and whenever the set of proxies changes), so
// the shares of all proxies add up to the limit. A proxy that has used 80% of
// its allowance asks for more (LeaseRequest over the sync stream); the
// control plane grants from what no proxy holds, reclaiming the unused part
// of other proxies' shares (they report their use every reportInterval).
// Grants arrive asynchronously: the decision never waits for the network.
//
// When the control plane is unreachable the proxy keeps enforcing with the
// allowances it holds and with implicit shares computed from the last known
// number of proxies; tollgate_limits_degraded is 1.
//
// # Budgets
//
// The decision already refused a scope whose synced spend is at or above its
// max budget. The gate refuses as budget_exceeded a scope whose synced spend
// plus the actual cost of this proxy's finished requests that the synced
// spend does not show yet is at or above it (spent, as LiteLLM counts it).
// Otherwise it reserves the request's estimated cost (budget.go:
// estimateCost) on the key, team (not a SaaS team: its credits are its
// limit), user (without a team), organization, end user and the key's
// model_max_budget for the requested model, if it fits in this proxy's
// share of what remains (budget.go, budget shares; ratelimit.go holds the
// rate-limit allowances). When a request ends its reservation becomes its
// actual cost, pending until the synced spend rises by as much.
//
// # Waiting instead of refusing
//
// A refusal that is only due to amounts held (budget in flight or not yet
// synced on this proxy; a rate-limit allowance on loan to another proxy)
// makes the request wait, holding nothing, bounded by Options.BudgetWait /
// RateWait and MaxWaiting, and be decided again (proxy.Admission.Refresh
// re-reads the state) whenever something changed. Still held at the
// bound, it is refused as budget_held or rate_limit_held (retryable, with
// Retry-After), never as budget_exceeded.
//
// A rejected request consumes nothing: counters taken before a later check
// refused are given back before Admit returns.
package limits

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Options configure a Limiter.
type Options struct {
	// Now nil: time.Now.
	Now func() time.Time
	// Registry receives tollgate_limits_degraded.
	Registry *prometheus.Registry
	// MembersFile, when set, keeps the last known number of proxies (a
	// few bytes, rewritten when it changes), so a proxy restarted while the
	// control plane is down divides limits and budgets by it instead of
	// counting itself alone.
	MembersFile string
	// BudgetWait bounds how long a request refused only because budget
	// that remains is held (in flight or not yet synced on this proxy)
	// waits for it to settle before it is refused as budget_held.
	// 0: DefaultBudgetWait; negative: no wait.
	BudgetWait time.Duration
	// RateWait bounds how long a request refused only because this
	// proxy's rate-limit allowance is on loan to other proxies waits for a
	// grant. 0: DefaultRateWait; negative: no wait.
	RateWait time.Duration
	// MaxWaiting bounds the requests waiting at once (beyond it a held
	// request is refused at once). 0: DefaultMaxWaiting.
	MaxWaiting int
}

// Defaults of the waits (Options). The budget wait covers a few sync rounds
// (spend outbox window + apply + ack + delta, tens of ms, plus syncSkew) on
// a loaded machine; the rate wait covers the control plane's reclaim of an
// idle proxy's share. A rate-limit wait ends early, as rate_limit_error,
// once the control plane has answered an ask without room and at least
// minRateWait has passed (the time other proxies need to report that their
// requests ended).
const (
	DefaultBudgetWait = time.Second
	DefaultRateWait   = time.Second
	DefaultMaxWaiting = 1024
)

// pollEvery is how often a waiting request is decided again when nothing
// signalled a change (the synced spend and syncSkew's expiry signal nothing).
const pollEvery = 10 * time.Millisecond

// minRateWait: see DefaultRateWait. It outlasts the control plane's settle
// time (coord.Settle, 400 ms: an unused share, or one granted a moment ago,
// is not taken before it) plus a report interval, so a request does not give
// up on room that an idle proxy's share is about to free.
const minRateWait = 400*time.Millisecond + 2*reportInterval

// Limiter is the gate. Use New.
type Limiter struct {
	now func() time.Time
	// Plain maps under a RWMutex: sync.Map would box every struct key
	// (an allocation per lookup).
	mu       sync.RWMutex
	counters map[scopeKey]*counter
	byScope  map[string]*counter
	budgets  map[budgetKey]*budget
	outTok   map[string]*atomic.Int64 // deployment id → mean completion tokens × 16

	members atomic.Uint64 // proxies<<32 | index
	// unusedConfirm: a counter of a limit not used here may have a
	// confirmation to send (Uses looks through byScope).
	unusedConfirm atomic.Bool
	// drainEpoch counts the acks after which the spend outbox held no
	// unacked record (see Acked).
	drainEpoch atomic.Uint64
	connected  atomic.Bool
	notify     chan struct{}
	// pending is signalled when a use changed after the last report
	// (pendingSet: until the next report), so the reporter reports within
	// ReportInterval, and does not tick while nothing changes.
	pending    chan struct{}
	pendingSet atomic.Bool
	// urgent is signalled when unshipped spend holds enough of a budget
	// share that the spend shipper should not linger (SpendUrgent).
	urgent chan struct{}

	grants, allowances atomic.Uint64 // lease grants and allowances received (metrics)

	membersFile  string
	saveMu       sync.Mutex
	savedMembers uint64

	budgetWait, rateWait time.Duration
	maxWaiting           int64
	waiting              atomic.Int64
	waitedTotal          atomic.Uint64 // requests that waited (metrics)
	heldTotal            atomic.Uint64 // requests refused as held after waiting (metrics)
	// changed is closed (and replaced) when something a waiting request
	// waits for changed: a request ended, an ack, a grant.
	changedMu sync.Mutex
	changed   chan struct{}
}

type budgetKey struct{ kind, id string }

// New returns a Limiter that is degraded until SetConnected(true).
func New(o Options) *Limiter {
	l := &Limiter{now: o.Now, notify: make(chan struct{}, 1), pending: make(chan struct{}, 1), urgent: make(chan struct{}, 1),
		counters: map[scopeKey]*counter{}, byScope: map[string]*counter{}, budgets: map[budgetKey]*budget{},
		outTok: map[string]*atomic.Int64{}}
	if l.now == nil {
		l.now = time.Now
	}
	l.members.Store(1 << 32)
	l.membersFile = o.MembersFile
	l.budgetWait, l.rateWait, l.maxWaiting = o.BudgetWait, o.RateWait, int64(o.MaxWaiting)
	if l.budgetWait == 0 {
		l.budgetWait = DefaultBudgetWait
	}
	if l.rateWait == 0 {
		l.rateWait = DefaultRateWait
	}
	if l.maxWaiting <= 0 {
		l.maxWaiting = DefaultMaxWaiting
	}
	if o.MembersFile != "" {
		if b, err := os.ReadFile(o.MembersFile); err == nil {
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 31); err == nil && n > 0 {
				// The index is unknown until the control plane answers: 0
				// (its share is the largest by at most one unit).
				l.members.Store(n << 32)
				l.savedMembers = n
			}
		}
	}
	if o.Registry != nil {
		o.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tollgate_limits_degraded",
			Help: "1 while the control plane is unreachable: rate limits are enforced with the shares this proxy holds.",
		}, func() float64 {
			if l.connected.Load() {
				return 0
			}
			return 1
		}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tollgate_limits_lease_proxies",
				Help: "Proxies the control plane last said share the rate limits (each holds about 1/N of a limit it has not leased).",
			}, func() float64 { return float64(l.members.Load() >> 32) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tollgate_limits_leased_scopes",
				Help: "Rate-limit scopes (key, team, user, model windows) this proxy holds an explicit leased allowance for.",
			}, func() float64 {
				l.mu.RLock()
				defer l.mu.RUnlock()
				n := 0
				for _, c := range l.byScope {
					c.mu.Lock()
					if c.allowance >= 0 {
						n++
					}
					c.mu.Unlock()
				}
				return float64(n)
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tollgate_limits_waiting",
				Help: "Requests waiting for held budget or a rate-limit grant to settle.",
			}, func() float64 { return float64(l.waiting.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tollgate_limits_waited_total",
				Help: "Requests that waited for held budget or a rate-limit grant before they were decided again.",
			}, func() float64 { return float64(l.waitedTotal.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tollgate_limits_held_total",
				Help: "Requests refused as held (budget_held, rate_limit_held): the limit had room but it was held at the end of the wait.",
			}, func() float64 { return float64(l.heldTotal.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tollgate_limits_lease_grants_total",
				Help: "Lease grants received from the control plane.",
			}, func() float64 { return float64(l.grants.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tollgate_limits_lease_allowances_total",
				Help: "Leased allowances (one scope's share of a window) received from the control plane.",
			}, func() float64 { return float64(l.allowances.Load()) }),
		)
	}
	return l
}

type taken struct {
	c      *counter
	window int64
	n      int64
}

type admitted struct {
	l       *Limiter
	took    [14]taken
	nt      int
	estTok  int64
	resv    [7]*budget
	nresv   int
	estCost int64
	// Prices (pico-USD per token) to settle the actual cost, and the
	// deployment (its completions feed the estimate).
	inPrice, outPrice int64
	dep               *state.Model // prices the settlement (proxy.Cost)
	depID             string
	epoch             uint64              // the Limiter's drainEpoch at admission
	fn                func(proxy.Outcome) // ad.done, bound once (a method value allocates)
}

// Admissions are pooled: done puts them back, so done must be called
// exactly once (proxy.Gate's contract).
var admissions sync.Pool

func getAdmitted() *admitted {
	if v := admissions.Get(); v != nil {
		return v.(*admitted)
	}
	ad := new(admitted)
	ad.fn = ad.done
	return ad
}

// What a refusal waits for (verdict.held).
const (
	heldNone uint8 = iota
	heldBudget
	heldRate
)

// verdict says why admitOnce refused: held is heldNone for a final refusal
// (or an admission), else what the request may wait for; c is the counter
// of a rate-limit refusal.
type verdict struct {
	held uint8
	c    *counter
}

// Admit implements proxy.Gate. A request refused only because amounts are
// held (budget that remains but is in flight or not yet synced here, a
// rate-limit allowance on loan to other proxies) waits, bounded by
// BudgetWait / RateWait, and is decided again (after a.Refresh, with the
// current synced spend) whenever something changed; nothing is taken while
// it waits, so a client that goes away releases nothing because it holds
// nothing.
func (l *Limiter) Admit(ctx context.Context, a *proxy.Admission) (func(proxy.Outcome), *enforce.Rejection) {
	fn, rej, v := l.admitOnce(a)
	if v.held == heldNone {
		return fn, rej
	}
	if v.held == heldBudget {
		l.urgeSpend() // what frees the share is this proxy's spend reaching the control plane
	}
	if l.bound(v.held) <= 0 || l.waiting.Add(1) > l.maxWaiting {
		if l.bound(v.held) > 0 {
			l.waiting.Add(-1)
		}
		return nil, l.final(rej, v, time.Now())
	}
	defer l.waiting.Add(-1)
	l.waitedTotal.Add(1)
	start := time.Now()
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	for {
		ch := l.changedCh()
		select {
		case <-ctx.Done():
			return nil, l.final(rej, v, start)
		case <-ch:
		case <-t.C:
		}
		t.Reset(pollEvery)
		if a.Refresh != nil {
			if r := a.Refresh.Refresh(); r != nil {
				return nil, r // e.g. the budget is now spent, the key blocked
			}
		}
		fn, rej, v = l.admitOnce(a)
		if v.held == heldNone {
			return fn, rej
		}
		waited := time.Since(start)
		if waited >= l.bound(v.held) ||
			(v.held == heldRate && waited >= minRateWait && v.c.answeredSince(start.UnixNano())) {
			return nil, l.final(rej, v, start)
		}
	}
}

// SpendUrgent is signalled when this proxy's unshipped spend holds enough
// of a budget share that the spend shipper should send it now.
func (l *Limiter) SpendUrgent() <-chan struct{} { return l.urgent }

func (l *Limiter) urgeSpend() {
	select {
	case l.urgent <- struct{}{}:
	default:
	}
}

func (l *Limiter) bound(held uint8) time.Duration {
	if held == heldRate {
		return l.rateWait
	}
	return l.budgetWait
}

// final is the refusal of a request still held at the end of its wait. A
// rate limit whose ask the control plane answered during the wait without
// room is really in use (rate_limit_error); one whose grant did not arrive
// is rate_limit_held. Budget refusals are budget_held already.
func (l *Limiter) final(rej *enforce.Rejection, v verdict, since time.Time) *enforce.Rejection {
	if v.held == heldRate && v.c != nil && l.connected.Load() && v.c.answeredSince(since.UnixNano()) {
		return rej
	}
	l.heldTotal.Add(1)
	if v.held == heldRate {
		h := rej.Header
		held := enforce.New(enforce.Held, http.StatusTooManyRequests, enforce.TypeRateLimitHeld,
			"Rate limit not reached, but this proxy's share of it is in use and more did not arrive in time; "+rej.Message, "")
		h["Retry-After"] = []string{"1"}
		held.Header = h
		return held
	}
	return rej
}

func (l *Limiter) changedCh() chan struct{} {
	l.changedMu.Lock()
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	ch := l.changed
	l.changedMu.Unlock()
	return ch
}

// signal wakes the waiting requests (cheap when none waits).
func (l *Limiter) signal() {
	if l.waiting.Load() == 0 {
		return
	}
	l.changedMu.Lock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	l.changedMu.Unlock()
}

// admitOnce decides once, taking nothing when it refuses.
func (l *Limiter) admitOnce(a *proxy.Admission) (func(proxy.Outcome), *enforce.Rejection, verdict) {
	p := a.Principal
	now := l.now()
	nowUnix, nowNano := now.Unix(), now.UnixNano()
	w := nowUnix - nowUnix%Window
	ad := getAdmitted()
	ad.l, ad.nt, ad.nresv, ad.estCost, ad.inPrice, ad.outPrice, ad.dep, ad.depID = l, 0, 0, 0, 0, 0, nil, ""
	estTok := int64(a.Body.Size()/4 + 1)
	ad.estTok = estTok

	type lim struct {
		kind, id string
		l        state.Limits
	}
	var scopes [4]lim
	ns := 0
	k := &p.Key
	scopes[ns] = lim{"key", k.TokenID, k.Limits}
	ns++
	if p.Team != nil {
		scopes[ns] = lim{"team", p.Team.TeamID, p.Team.Limits}
		ns++
	}
	if p.User != nil {
		scopes[ns] = lim{"user", p.User.UserID, p.User.Limits}
		ns++
	}
	// The body's end user, when its budget gives it rate limits.
	if eu := p.RateEndUser; eu != nil {
		el := state.Limits{MaxBudget: -1, SoftBudget: -1, RPMLimit: -1, TPMLimit: -1, MaxParallelRequests: -1}
		if eu.HasRPM {
			el.RPMLimit = eu.RPM
		}
		if eu.HasTPM {
			el.TPMLimit = eu.TPM
		}
		scopes[ns] = lim{"end_user", eu.EndUserID, el}
		ns++
	}
	// Header figures: the scope with the least remaining.
	hdrReqLimit, hdrReqRem, hdrTokLimit, hdrTokRem := int64(-1), int64(0), int64(-1), int64(0)
	// A rate-limit refusal may wait when the limit is not all here: its
	// failed counter (failed) lent part of it to other proxies.
	var failed *counter
	var failedLent bool
	fail := func(metric uint8, limit int64, who string) (func(proxy.Outcome), *enforce.Rejection, verdict) {
		ad.rollback()
		admissions.Put(ad)
		retry := Window - nowUnix%Window
		what := "requests per minute"
		switch metric {
		case metricTPM:
			what = "tokens per minute"
		case metricPar:
			what = "parallel requests"
			retry = 1
		}
		rej := enforce.New(enforce.RateLimited, http.StatusTooManyRequests, "rate_limit_error",
			"Rate limit exceeded for "+who+": "+what+" limit "+strconv.FormatInt(limit, 10)+". Retry after "+strconv.FormatInt(retry, 10)+"s.", "")
		h := http.Header{"Retry-After": {strconv.FormatInt(retry, 10)}}
		if metric == metricRPM {
			h["X-Ratelimit-Limit-Requests"] = []string{strconv.FormatInt(limit, 10)}
			h["X-Ratelimit-Remaining-Requests"] = []string{"0"}
		} else if metric == metricTPM {
			h["X-Ratelimit-Limit-Tokens"] = []string{strconv.FormatInt(limit, 10)}
			h["X-Ratelimit-Remaining-Tokens"] = []string{"0"}
		}
		rej.Header = h
		v := verdict{}
		if failedLent && l.connected.Load() {
			v = verdict{heldRate, failed}
		}
		return nil, rej, v
	}
	check := func(sk scopeKey, limit, w, n int64) bool {
		c := l.counter(sk)
		ok, al, rem := l.take(c, limit, w, n, nowNano)
		if !ok {
			failed, failedLent = c, al < limit
			return false
		}
		ad.took[ad.nt] = taken{c, w, n}
		ad.nt++
		// Scale this proxy's remaining share to the whole limit.
		if al > 0 && sk.metric != metricPar {
			rem = rem * limit / al
		}
		switch sk.metric {
		case metricRPM:
			if hdrReqLimit < 0 || rem < hdrReqRem {
				hdrReqLimit, hdrReqRem = limit, rem
			}
		case metricTPM:
			if hdrTokLimit < 0 || rem < hdrTokRem {
				hdrTokLimit, hdrTokRem = limit, rem
			}
		}
		return true
	}
	for _, s := range scopes[:ns] {
		if v := s.l.MaxParallelRequests; v >= 0 {
			if !check(scopeKey{s.kind, s.id, metricPar, ""}, v, 0, 1) {
				return fail(metricPar, v, s.kind+" "+s.id)
			}
		}
		if v := s.l.RPMLimit; v >= 0 {
			if !check(scopeKey{s.kind, s.id, metricRPM, ""}, v, w, 1) {
				return fail(metricRPM, v, s.kind+" "+s.id)
			}
		}
		if v := s.l.TPMLimit; v >= 0 {
			if !check(scopeKey{s.kind, s.id, metricTPM, ""}, v, w, estTok) {
				return fail(metricTPM, v, s.kind+" "+s.id)
			}
		}
	}
	if pol := k.Policy; pol != nil && a.Body != nil {
		model := a.Body.Model
		if v, ok := pol.ModelRPMLimit[model]; ok && v >= 0 {
			if !check(scopeKey{"key", k.TokenID, metricRPM, model}, v, w, 1) {
				return fail(metricRPM, v, "key "+k.TokenID+" model "+model)
			}
		}
		if v, ok := pol.ModelTPMLimit[model]; ok && v >= 0 {
			if !check(scopeKey{"key", k.TokenID, metricTPM, model}, v, w, estTok) {
				return fail(metricTPM, v, "key "+k.TokenID+" model "+model)
			}
		}
	}

	// Budget reservations.
	ad.epoch = l.drainEpoch.Load()
	if rej, held := ad.reserve(p, a, nowUnix, nowNano); rej != nil {
		ad.rollback()
		admissions.Put(ad)
		if held {
			return nil, rej, verdict{held: heldBudget}
		}
		return nil, rej, verdict{}
	}
	if a.Header != nil && (hdrReqLimit >= 0 || hdrTokLimit >= 0) {
		hv := make([]string, 4) // one allocation for the four values
		if hdrReqLimit >= 0 {
			hv[0], hv[1] = strconv.FormatInt(hdrReqLimit, 10), strconv.FormatInt(hdrReqRem, 10)
			a.Header["X-Ratelimit-Limit-Requests"] = hv[0:1:1]
			a.Header["X-Ratelimit-Remaining-Requests"] = hv[1:2:2]
		}
		if hdrTokLimit >= 0 {
			hv[2], hv[3] = strconv.FormatInt(hdrTokLimit, 10), strconv.FormatInt(hdrTokRem, 10)
			a.Header["X-Ratelimit-Limit-Tokens"] = hv[2:3:3]
			a.Header["X-Ratelimit-Remaining-Tokens"] = hv[3:4:4]
		}
	}
	if ad.nt == 0 && ad.nresv == 0 {
		admissions.Put(ad)
		return noop, nil, verdict{}
	}
	return ad.fn, nil, verdict{}
}

func noop(proxy.Outcome) {}
func (ad *admitted) rollback() {
	for _, t := range ad.took[:ad.nt] {
		t.c.give(t.window, t.n)
	}
	for _, r := range ad.resv[:ad.nresv] {
		r.mu.Lock()
		r.reserved -= ad.estCost
		r.mu.Unlock()
	}
	ad.nt, ad.nresv = 0, 0
}

// done settles an admitted request: parallel slots and budget reservations
// are released, tpm reservations are corrected to the actual usage.
func (ad *admitted) done(o proxy.Outcome) {
	for _, t := range ad.took[:ad.nt] {
		switch t.c.metric {
		case metricPar:
			ad.l.release(t.c, t.window, t.n)
		case metricTPM:
			actual := int64(0)
			if o.UsageKnown {
				actual = o.Usage.TotalTokens
				if actual == 0 {
					actual = o.Usage.PromptTokens + o.Usage.CompletionTokens
				}
			} else if o.Status >= 200 && o.Status < 300 {
				actual = t.n // no usage reported: keep the estimate
			}
			t.c.give(t.window, t.n-actual)
		}
	}
	if ad.nresv > 0 {
		var actual int64
		// Exactly what the spend record bills (spend.NewRecord), so the
		// record's ack releases it: the reported usage, or the proxy's
		// estimate for a 2xx without usage; nothing for an error.
		if o.UsageKnown || o.UsageEstimated {
			actual = proxy.Cost(ad.dep, o.Usage)
		}
		if o.UsageKnown {
			ad.l.observeOutTokens(ad.depID, o.Usage.CompletionTokens)
		}
		epoch := ad.l.drainEpoch.Load()
		doubtful := epoch != ad.epoch
		nowNano := ad.l.now().UnixNano()
		for _, r := range ad.resv[:ad.nresv] {
			r.mu.Lock()
			r.catchUp(epoch)
			r.reserved -= ad.estCost
			if doubtful {
				r.doubt += actual
				r.doubtAt = nowNano
			} else {
				r.pending += actual
			}
			r.mu.Unlock()
		}
		ad.l.signal()
	}
	ad.l, ad.nt, ad.nresv, ad.inPrice, ad.outPrice, ad.depID, ad.dep = nil, 0, 0, 0, 0, "", nil
	clear(ad.took[:])
	clear(ad.resv[:])
	admissions.Put(ad)
}
