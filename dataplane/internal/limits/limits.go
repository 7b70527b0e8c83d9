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
// max budget. The gate then reserves the request's estimated cost (prompt
// bytes / 4 tokens at the input price, max_tokens or 256 tokens at the
// output price) on the key, team, user (without a team), organization, end
// user (the body's "user", when a budget applies to it) and the key's
// model_max_budget for the requested model: a
// request is admitted only while synced spend + this proxy's reservations
// in flight + the actual cost of its finished requests that the synced
// spend does not show yet is below the max budget. When a request ends its
// reservation becomes its actual cost, pending until the synced spend rises
// by as much (the spend outbox ships it within milliseconds).
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

	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
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
	used      int64
	reported  int64 // used at the last report (-1: never)
	asked     bool
	lastAsk   int64 // unix ns of the last ask
	touched   int64 // unix s of the last use
}

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
}

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
	// drainEpoch counts the acks after which the spend outbox held no
	// unacked record (see Acked).
	drainEpoch atomic.Uint64
	connected  atomic.Bool
	notify     chan struct{}

	grants, allowances atomic.Uint64 // lease grants and allowances received (metrics)

	membersFile  string
	saveMu       sync.Mutex
	savedMembers uint64
}

type budgetKey struct{ kind, id string }

// New returns a Limiter that is degraded until SetConnected(true).
func New(o Options) *Limiter {
	l := &Limiter{now: o.Now, notify: make(chan struct{}, 1),
		counters: map[scopeKey]*counter{}, byScope: map[string]*counter{}, budgets: map[budgetKey]*budget{},
		outTok: map[string]*atomic.Int64{}}
	if l.now == nil {
		l.now = time.Now
	}
	l.members.Store(1 << 32)
	l.membersFile = o.MembersFile
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
		c.window, c.used, c.allowance, c.asked, c.reported = w, 0, -1, false, -1
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
		c.metric = k.metric
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
	c.limit = limit
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
	ask := c.reported < 0
	if rem*askAt <= a && !c.asked && nowNano-c.lastAsk >= askEvery {
		c.asked, ask, c.lastAsk = true, true, nowNano
	}
	c.mu.Unlock()
	if ask {
		l.wake()
	}
	return true, a, max(rem, 0)
}

// give returns n units to c if it is still in window w.
func (c *counter) give(w, n int64) {
	c.mu.Lock()
	if c.window == w {
		c.used -= n
	}
	c.mu.Unlock()
}

func (l *Limiter) wake() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

type taken struct {
	c      *counter
	window int64
	n      int64
}

type admitted struct {
	l       *Limiter
	took    [12]taken
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

// Admit implements proxy.Gate.
func (l *Limiter) Admit(_ context.Context, a *proxy.Admission) (func(proxy.Outcome), *enforce.Rejection) {
	p := a.Principal
	now := l.now()
	nowUnix, nowNano := now.Unix(), now.UnixNano()
	w := nowUnix - nowUnix%Window
	ad := getAdmitted()
	ad.l, ad.nt, ad.nresv, ad.estCost, ad.inPrice, ad.outPrice = l, 0, 0, 0, 0, 0
	estTok := int64(a.Body.Size()/4 + 1)
	ad.estTok = estTok

	type lim struct {
		kind, id string
		l        state.Limits
	}
	var scopes [3]lim
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
	// Header figures: the scope with the least remaining.
	hdrReqLimit, hdrReqRem, hdrTokLimit, hdrTokRem := int64(-1), int64(0), int64(-1), int64(0)
	fail := func(metric uint8, limit int64, who string) (func(proxy.Outcome), *enforce.Rejection) {
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
		return nil, rej
	}
	check := func(sk scopeKey, limit, w, n int64) bool {
		c := l.counter(sk)
		ok, al, rem := l.take(c, limit, w, n, nowNano)
		if !ok {
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
	if rej := ad.reserve(p, a, nowUnix, nowNano); rej != nil {
		ad.rollback()
		admissions.Put(ad)
		return nil, rej
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
		return noop, nil
	}
	return ad.fn, nil
}

func noop(proxy.Outcome) {}

// estimateCost is the reservation for one request (micro-USD, rounded up):
// the prompt at estTok tokens, and max_tokens (max_completion_tokens) when
// the request sets it, else what this deployment's responses have used
// (outTokens).
func (l *Limiter) estimateCost(a *proxy.Admission, estTok int64) int64 {
	dep := a.Deployment
	if dep == nil || (dep.InputCost <= 0 && dep.OutputCost <= 0) {
		return 0
	}
	out := int64(-1)
	if v, ok := a.Body.Lookup("max_tokens"); ok {
		if n, err := strconv.ParseInt(string(a.Body.Raw(v)), 10, 64); err == nil && n > 0 {
			out = n
		}
	} else if v, ok := a.Body.Lookup("max_completion_tokens"); ok {
		if n, err := strconv.ParseInt(string(a.Body.Raw(v)), 10, 64); err == nil && n > 0 {
			out = n
		}
	}
	if out < 0 {
		out = l.outTokens(dep.ID)
	}
	pico := estTok*dep.InputCost + out*dep.OutputCost
	return (pico + 999_999) / 1_000_000
}

// Completion-token estimate per deployment, for requests without
// max_tokens: an exponentially weighted mean of the completions seen
// (weight 1/8, kept ×16 in fixed point), reserved with a quarter on top;
// 256 tokens until the deployment has answered once.
const defaultOutTokens = 256

func (l *Limiter) outTokens(depID string) int64 {
	l.mu.RLock()
	v := l.outTok[depID]
	l.mu.RUnlock()
	if v == nil {
		return defaultOutTokens
	}
	m := v.Load() // mean × 16
	return (m*5/4+15)/16 + 1
}

func (l *Limiter) observeOutTokens(depID string, n int64) {
	if depID == "" || n < 0 {
		return
	}
	l.mu.RLock()
	v := l.outTok[depID]
	l.mu.RUnlock()
	if v == nil {
		l.mu.Lock()
		if v = l.outTok[depID]; v == nil {
			v = new(atomic.Int64)
			v.Store(n * 16)
			l.outTok[depID] = v
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
	for {
		old := v.Load()
		if v.CompareAndSwap(old, old+(n*16-old)/8) {
			return
		}
	}
}

func (ad *admitted) reserve(p *enforce.Principal, a *proxy.Admission, nowUnix, nowNano int64) *enforce.Rejection {
	type bscope struct {
		kind, id string
		l        state.Limits // a copy: pointers into locals moved them to the heap
		spend    int64
	}
	var bs [7]bscope
	n := 0
	k := &p.Key
	if k.Limits.MaxBudget >= 0 {
		bs[n] = bscope{"key", k.TokenID, k.Limits, k.Spend}
		n++
	}
	if t := p.Team; t != nil && t.Limits.MaxBudget >= 0 {
		bs[n] = bscope{"team", t.TeamID, t.Limits, t.Spend}
		n++
	}
	if u := p.User; u != nil && p.Team == nil && u.Limits.MaxBudget >= 0 {
		bs[n] = bscope{"user", u.UserID, u.Limits, u.Spend}
		n++
	}
	if o := p.Org; o != nil && o.Limits.MaxBudget >= 0 {
		bs[n] = bscope{"org", o.OrganizationID, o.Limits, o.Spend}
		n++
	}
	// The end user (body "user") with a budget: its own max_budget or
	// max_end_user_budget (end users have no budget period).
	if p.EndUserID != "" && p.EndUserBudget >= 0 {
		bs[n] = bscope{"end_user", p.EndUserID, state.Limits{MaxBudget: p.EndUserBudget}, p.EndUserSpend}
		n++
	}
	// The key's user as a member of its team (the decision resolved its
	// budget; no budget period).
	if t := p.Team; t != nil && p.HasMemberBudget {
		bs[n] = bscope{"team_member", t.TeamID + "/" + k.UserID, state.Limits{MaxBudget: p.MemberBudget}, p.MemberSpend}
		n++
	}
	// The key's model_max_budget for this model: its spend resets with the
	// key's budget period.
	if p.HasModelBudget && a.Body != nil {
		mbl := state.Limits{MaxBudget: p.ModelBudget, BudgetResetAtUnix: k.Limits.BudgetResetAtUnix}
		bs[n] = bscope{"key_model", k.TokenID + "/" + a.Body.Model, mbl, p.ModelSpend}
		n++
	}
	if n == 0 {
		return nil
	}
	est := ad.l.estimateCost(a, ad.estTok)
	ad.estCost = est
	if dep := a.Deployment; dep != nil {
		ad.inPrice, ad.outPrice, ad.depID, ad.dep = dep.InputCost, dep.OutputCost, dep.ID, dep
	}
	for _, b := range bs[:n] {
		r := ad.l.reservation(budgetKey{b.kind, b.id})
		spend := enforce.EffectiveSpend(b.l, b.spend, nowUnix)
		remaining := b.l.MaxBudget - spend
		// This proxy's share of what remains: the shares of the proxies
		// connected to the control plane add up to the remaining budget,
		// so together they never hold more than is left.
		allowed := ad.l.implicit(max(remaining, 0))
		// The period: before budget_reset_at it ends there; after it (the
		// proxy honours the reset before the control plane records it) a
		// new one has begun.
		period := b.l.BudgetResetAtUnix
		if period > 0 && nowUnix >= period {
			period++
		}
		r.mu.Lock()
		r.catchUp(ad.l.drainEpoch.Load())
		r.observe(spend, period, nowNano)
		// Admit while this proxy's reservations in flight + the cost of
		// its finished requests that the synced spend does not hold yet
		// is below its share, then reserve: concurrent requests see each
		// other's estimates.
		held := r.held()
		// The request's estimate must fit in the share; a proxy holding
		// nothing may admit one request whose estimate is larger (else a
		// share smaller than one estimate would strand the budget).
		if (held > 0 && held+est > allowed) || (held == 0 && allowed <= 0) {
			r.mu.Unlock()
			msg := budgetMessage(b.kind, b.id) + " Current cost: " + enforce.USD(spend)
			if held > 0 {
				msg += " (+" + enforce.USD(held) + " in flight or not yet synced on this proxy)"
			}
			msg += ", Max budget: " + enforce.USD(b.l.MaxBudget)
			if remaining > 0 {
				msg += ". The remaining " + enforce.USD(remaining) + " is held by requests in flight (this proxy's share: " +
					enforce.USD(allowed) + ", 1/" + strconv.FormatUint(ad.l.members.Load()>>32, 10) + ")."
			}
			return enforce.BudgetRejection(msg)
		}
		r.reserved += est
		r.mu.Unlock()
		ad.resv[ad.nresv] = r
		ad.nresv++
	}
	return nil
}

func budgetMessage(kind, id string) string {
	switch kind {
	case "team":
		return "Budget has been exceeded! Team=" + id
	case "user":
		return "ExceededBudget: User=" + id + " over budget."
	case "org":
		return "Budget has been exceeded! Organization=" + id
	case "end_user":
		return "ExceededBudget: End User=" + id + " over budget."
	case "team_member":
		team, user, _ := strings.Cut(id, "/")
		return "Budget has been exceeded! User=" + user + " in Team=" + team
	case "key_model":
		tok, model, _ := strings.Cut(id, "/")
		return "LiteLLM Virtual Key: " + tok + ", exceeded budget for model=" + model + "."
	}
	return "Budget has been exceeded!"
}

// budget is one scope's budget use on this proxy (micro-USD).
//
// What this proxy admitted and the synced spend does not show yet is
// reserved (estimates of requests in flight) + pending (actual cost of
// finished requests whose records the control plane has not acked) + the
// acked costs still waiting for the synced spend to reach the figure the
// ack named (the spend the applying transaction left). Spend only rises
// within a period, so a synced spend at or above that figure holds them.
type budget struct {
	mu       sync.Mutex
	reserved int64
	pending  int64
	acked    []ackedCost
	ackedSum int64
	// base is the synced spend last seen and period the budget period it
	// belongs to (a fall of the spend or a new period starts afresh).
	base, period int64
	// epoch is the Limiter's drainEpoch when pending last changed.
	epoch uint64
}

// catchUp drops pending that predates the outbox's last drain (locked).
func (b *budget) catchUp(epoch uint64) {
	if b.epoch != epoch {
		b.pending, b.epoch = 0, epoch
	}
}

type ackedCost struct {
	until  int64 // synced spend that holds it
	amount int64
	at     int64 // unix ns of the ack
	seen   int64 // unix ns when the synced spend first held it (0: not yet)
}

// syncSkew is how long a proxy keeps counting its own acked cost after its
// synced spend holds it: the other proxies apply the same delta a moment
// later, and until they do, their shares of the remaining budget still
// count it as remaining. (Counting it twice here for that moment is the
// safe side.)
const syncSkew = int64(100 * time.Millisecond)

// ackedTTL: an acked cost is dropped after this long even if the synced
// spend never reached its figure (the object was deleted or reset).
const ackedTTL = int64(10 * time.Second)

func (b *budget) held() int64 { return b.reserved + b.pending + b.ackedSum }

// observe drops the acked costs the synced spend now holds (locked). A new
// budget period starts this proxy's count afresh: what it admitted in the
// last one belongs to that period (the control plane counts a record that
// it applies after the reset in the new period: at most the records of the
// ~100 ms before the reset, which this proxy then does not count twice).
func (b *budget) observe(spend, period, nowNano int64) {
	if spend < b.base || period != b.period {
		b.acked, b.ackedSum, b.pending = b.acked[:0], 0, 0
		b.period = period
	}
	b.base = spend
	for j := range b.acked {
		if b.acked[j].until > spend {
			break
		}
		if b.acked[j].seen == 0 {
			b.acked[j].seen = nowNano
		}
	}
	i := 0
	for i < len(b.acked) && ((b.acked[i].seen != 0 && nowNano-b.acked[i].seen >= syncSkew) || nowNano-b.acked[i].at > ackedTTL) {
		b.ackedSum -= b.acked[i].amount
		i++
	}
	if i > 0 {
		b.acked = append(b.acked[:0], b.acked[i:]...)
	}
	if len(b.acked) == 0 {
		b.ackedSum = 0
	}
}

// Acked implements syncclient.Leases: records costing costs (per object)
// were applied by a transaction that left the objects' spend at spends.
// drained says the outbox holds no unacked record: whatever is still
// pending then has no record to wait for (a price changed between the
// decision and the record, an append failed) and is dropped, so the count
// cannot creep up.
func (l *Limiter) Acked(costs, spends []*syncv1.ObjectSpend, drained bool) {
	nowNano := l.now().UnixNano()
	if drained {
		// Lazily: each budget drops its older pending when it next sees
		// the new epoch (O(1) here, however many budgets there are).
		defer l.drainEpoch.Add(1)
	}
	epoch := l.drainEpoch.Load()
	var figures map[[2]string]int64 // spends by (kind, id)
	for _, c := range costs {
		kind := c.GetKind()
		if kind == "organization" {
			kind = "org"
		}
		l.mu.RLock()
		r, ok := l.budgets[budgetKey{kind, c.GetId()}]
		l.mu.RUnlock()
		if !ok {
			continue // no budget on it here
		}
		if figures == nil { // built once, when a budget here needs it
			figures = make(map[[2]string]int64, len(spends))
			for _, s := range spends {
				figures[[2]string{s.GetKind(), s.GetId()}] = s.GetSpend()
			}
		}
		until, ok := figures[[2]string{c.GetKind(), c.GetId()}]
		if !ok {
			until = -1
		}
		r.mu.Lock()
		r.catchUp(epoch)
		amount := min(c.GetSpend(), r.pending)
		r.pending -= amount
		// Without a figure (the object is gone), the cost counts as synced.
		if until >= 0 && amount > 0 {
			// Acks come in order and spend only rises, so the list stays
			// sorted by until.
			e := ackedCost{until: until, amount: amount, at: nowNano}
			if until <= r.base {
				e.seen = nowNano // the delta came first
			}
			r.acked = append(r.acked, e)
			r.ackedSum += amount
		}
		r.mu.Unlock()
	}
}

func (l *Limiter) reservation(k budgetKey) *budget {
	l.mu.RLock()
	r, ok := l.budgets[k]
	l.mu.RUnlock()
	if ok {
		return r
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.budgets[k]; ok {
		return r
	}
	r = new(budget)
	l.budgets[k] = r
	return r
}

// rollback gives back everything taken so far (a rejected request).
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
			t.c.give(t.window, t.n)
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
		for _, r := range ad.resv[:ad.nresv] {
			r.mu.Lock()
			r.catchUp(epoch)
			r.reserved -= ad.estCost
			r.pending += actual
			r.mu.Unlock()
		}
	}
	ad.l, ad.nt, ad.nresv, ad.inPrice, ad.outPrice, ad.depID, ad.dep = nil, 0, 0, 0, 0, "", nil
	clear(ad.took[:])
	clear(ad.resv[:])
	admissions.Put(ad)
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
		l.mu.RLock()
		for _, c := range l.counters {
			c.mu.Lock()
			c.reported = -1
			c.mu.Unlock()
		}
		l.mu.RUnlock()
		l.wake()
	}
}

// Uses returns what to report: every limit of the current window whose use
// changed since the last report, and every ask. Idle counters of past
// windows are dropped.
func (l *Limiter) Uses() *syncv1.LeaseRequest {
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
		if c.used == c.reported && !c.asked {
			c.mu.Unlock()
			continue
		}
		u := &syncv1.LeaseUse{Scope: c.scope, Limit: c.limit, WindowUnix: c.window, Used: c.used}
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
	if len(l.byScope) > len(l.counters) {
		for sc, c := range l.byScope {
			c.mu.Lock()
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
	for _, a := range g.GetAllowances() {
		l.mu.RLock()
		c, ok := l.byScope[a.GetScope()]
		l.mu.RUnlock()
		if !ok {
			// Not used here yet: keep the allowance for when it is.
			l.mu.Lock()
			if c, ok = l.byScope[a.GetScope()]; !ok {
				c = &counter{scope: a.GetScope(), window: a.GetWindowUnix(), allowance: a.GetAllowance(), reported: 0, touched: l.now().Unix()}
				l.byScope[c.scope] = c
			}
			l.mu.Unlock()
		}
		c.mu.Lock()
		switch {
		case a.GetWindowUnix() > c.window:
			c.roll(a.GetWindowUnix())
			c.allowance = a.GetAllowance()
		case a.GetWindowUnix() == c.window:
			c.allowance = a.GetAllowance()
			c.asked = false
		}
		c.mu.Unlock()
	}
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
