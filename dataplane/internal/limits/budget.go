package limits

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// estimateCost is the reservation for one request (nano-USD, rounded up
// once, like the spend record): the prompt at estTok tokens, and max_tokens
// (max_completion_tokens, the Responses API's max_output_tokens) when the request sets it, else what this
// deployment's responses have used (outTokens).
func (l *Limiter) estimateCost(a *proxy.Admission, estTok int64) int64 {
	dep := a.Deployment
	if dep == nil || (dep.InputCost <= 0 && dep.OutputCost <= 0) {
		return 0
	}
	out := int64(-1)
	// The first of these the body sets (max_output_tokens: the Responses API's).
	for _, name := range completionCaps {
		if v, ok := a.Body.Lookup(name); ok {
			if n, err := strconv.ParseInt(string(a.Body.Raw(v)), 10, 64); err == nil && n > 0 {
				out = n
			}
			break
		}
	}
	if out < 0 {
		out = l.outTokens(dep.ID, estTok)
	}
	// Capped (at ~9 million USD) so that sums of reservations never overflow.
	return min(money.RequestCost(estTok, dep.InputCost, out, dep.OutputCost), maxEstimate)
}

// completionCaps are the body members that cap a completion's tokens.
var completionCaps = [...]string{"max_tokens", "max_completion_tokens", "max_output_tokens"}

// maxEstimate caps one request's reservation (nano-USD).
const maxEstimate = 1 << 53

// Completion-token estimate per deployment, for requests without
// max_tokens: the mean of the completions seen, reserved with a quarter on
// top. It learns fast at first (the plain mean of the first learnFirst
// completions), then moves as an exponentially weighted mean (weight 1/8).
// Before a deployment's first answer on this proxy the guess is the
// prompt's own length, clamped to [coldMinOut, coldMaxOut] tokens: chat
// answers are mostly of the order of their question, and a fixed 256
// tokens was 20-50 times the cost of short exchanges.
const (
	coldMinOut = 16
	coldMaxOut = 256
	learnFirst = 8
)

// outTok packs a deployment's mean (× 16, fixed point) and how many
// completions it has seen, up to learnFirst: mean16<<4 | count.
func (l *Limiter) outTokens(depID string, estTok int64) int64 {
	l.mu.RLock()
	v := l.outTok[depID]
	l.mu.RUnlock()
	if v == nil {
		return min(max(estTok, coldMinOut), coldMaxOut)
	}
	m := v.Load() >> 4 // mean × 16
	return (m*5/4+15)/16 + 1
}

func (l *Limiter) observeOutTokens(depID string, n int64) {
	if depID == "" || n < 0 {
		return
	}
	n = min(n, 1<<32) // no overflow of the packed mean
	l.mu.RLock()
	v := l.outTok[depID]
	l.mu.RUnlock()
	if v == nil {
		l.mu.Lock()
		if v = l.outTok[depID]; v == nil {
			v = new(atomic.Int64)
			v.Store(n*16<<4 | 1)
			l.outTok[depID] = v
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
	for {
		old := v.Load()
		mean, count := old>>4, old&15
		w := int64(8)
		if count < learnFirst {
			count++
			w = count
		}
		if v.CompareAndSwap(old, (mean+(n*16-mean)/w)<<4|count) {
			return
		}
	}
}

// reserve reserves the request's estimate on every budget scope, or refuses:
// budget_exceeded when a scope's spend, synced plus what this proxy knows it
// admitted and has not seen synced yet, is at or above its max budget; held
// (budget_held, and the request may wait) when budget remains but this
// proxy's share of it is held by its requests in flight or not yet synced.
func (ad *admitted) reserve(p *enforce.Principal, a *proxy.Admission, nowUnix, nowNano int64) (rej *enforce.Rejection, held bool) {
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
	// A SaaS team's credits are its limit (enforce: its USD budget never
	// refuses a team with credits left), so nothing is reserved on it.
	if t := p.Team; t != nil && t.Limits.MaxBudget >= 0 && t.SaaS == nil {
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
		return nil, false
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
		r.observe(spend, period, nowNano, ad.l.connected.Load())
		// Spent: the synced spend plus the actual cost of this proxy's
		// finished requests that it knows the synced spend does not show
		// (acked, at a figure above it). At or above the max budget, the
		// budget is exceeded (LiteLLM: spend >= max_budget), whatever is
		// in flight. Costs not acked yet may or may not be in the synced
		// spend already (the delta can come before the ack): if they
		// would reach the max, the request waits for their ack.
		unsynced := r.unsynced()
		if unacked := r.pending + r.doubt; spend+unsynced < b.l.MaxBudget && spend+unsynced+unacked >= b.l.MaxBudget {
			r.mu.Unlock()
			return heldRejection(b.kind, b.id, spend, r.held(), b.l.MaxBudget, allowed, ad.l.members.Load()>>32), true
		}
		if spend+unsynced >= b.l.MaxBudget {
			r.mu.Unlock()
			if b.kind == "user" || b.kind == "end_user" { // LiteLLM's wording for these
				return enforce.BudgetRejection(budgetMessage(b.kind, b.id) + " Spend=" + enforce.USD(spend+unsynced) +
					", Budget=" + enforce.USD(b.l.MaxBudget)), false
			}
			if b.kind == "key" {
				msg := enforce.KeyBudgetMessage(enforce.USD(spend+unsynced), enforce.USD(b.l.MaxBudget))
				if unsynced > 0 {
					msg += " (" + enforce.USD(unsynced) + " of the current cost not yet synced)"
				}
				return enforce.BudgetRejection(msg), false
			}
			msg := budgetMessage(b.kind, b.id) + " Current cost: " + enforce.USD(spend+unsynced)
			if unsynced > 0 {
				msg += " (" + enforce.USD(unsynced) + " of it not yet synced)"
			}
			return enforce.BudgetRejection(msg + ", Max budget: " + enforce.USD(b.l.MaxBudget)), false
		}
		// Admit while this proxy's reservations in flight + the cost of
		// its finished requests that the synced spend does not hold yet
		// is below its share, then reserve: concurrent requests see each
		// other's estimates. The request's estimate must fit in the share;
		// a proxy holding nothing may admit one request whose estimate is
		// larger (else a share smaller than one estimate would strand the
		// budget).
		held := r.held()
		if held > 0 && est > allowed-held {
			r.mu.Unlock()
			return heldRejection(b.kind, b.id, spend, held, b.l.MaxBudget, allowed, ad.l.members.Load()>>32), true
		}
		r.reserved += est
		// Finished requests' spend that has not reached the control plane
		// holds half the share or more: ship it now rather than after the
		// shipper's linger, so that requests do not come to wait for it.
		urge := r.pending+r.doubt > 0 && 2*r.held() >= allowed
		r.mu.Unlock()
		if urge {
			ad.l.urgeSpend()
		}
		ad.resv[ad.nresv] = r
		ad.nresv++
	}
	return nil, false
}

// heldRejection is the retryable refusal of a request whose scope has budget
// left that this proxy's requests in flight or not yet synced hold: never
// budget_exceeded (DESIGN.md: budget_exceeded means spent).
func heldRejection(kind, id string, spend, held, maxBudget, share int64, proxies uint64) *enforce.Rejection {
	who := "key"
	if kind != "key" {
		who = strings.ReplaceAll(kind, "_", " ") + " " + id
	}
	msg := "Budget not exceeded for " + who + ": Current cost: " + enforce.USD(spend) + ", Max budget: " + enforce.USD(maxBudget) +
		"; the remaining " + enforce.USD(maxBudget-spend) + " is held by requests in flight or not yet synced (" + enforce.USD(held) +
		" on this proxy, whose share is " + enforce.USD(share) + ", 1/" + strconv.FormatUint(proxies, 10) + "). Retry after 1s."
	rej := enforce.New(enforce.Held, http.StatusTooManyRequests, enforce.TypeBudgetHeld, msg, "")
	rej.Header = http.Header{"Retry-After": {"1"}}
	return rej
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

// budget is one scope's budget use on this proxy (nano-USD).
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
	// doubt is the actual cost of finished requests during which the
	// outbox drained: their records may have been acked before the
	// request ended (the proxy appends the record just before it calls
	// done), and then no ack will take them out of pending. Acks take
	// from it after pending; while connected it is dropped after
	// doubtTTL (a record not yet acked is acked within milliseconds).
	doubt, doubtAt int64
}

const doubtTTL = int64(500 * time.Millisecond)

// catchUp drops pending that predates the outbox's last drain (locked).
func (b *budget) catchUp(epoch uint64) {
	if b.epoch != epoch {
		b.pending, b.doubt, b.epoch = 0, 0, epoch
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

func (b *budget) held() int64 { return b.reserved + b.pending + b.doubt + b.ackedSum }

// unsynced is the actual cost of this proxy's finished requests that the
// synced spend certainly does not show yet (locked; after observe): the
// acked costs whose figure the synced spend has not reached.
func (b *budget) unsynced() int64 {
	u := int64(0)
	for j := len(b.acked) - 1; j >= 0 && b.acked[j].seen == 0; j-- {
		u += b.acked[j].amount
	}
	return u
}

// observe drops the acked costs the synced spend now holds (locked). A new
// budget period starts this proxy's count afresh: what it admitted in the
// last one belongs to that period (the control plane counts a record that
// it applies after the reset in the new period: at most the records of the
// ~100 ms before the reset, which this proxy then does not count twice).
func (b *budget) observe(spend, period, nowNano int64, connected bool) {
	if b.doubt > 0 && connected && nowNano-b.doubtAt > doubtTTL {
		b.doubt = 0
	}
	if spend < b.base || period != b.period {
		b.acked, b.ackedSum, b.pending, b.doubt = b.acked[:0], 0, 0, 0
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
		if d := min(c.GetSpend()-amount, r.doubt); d > 0 {
			r.doubt -= d
			amount += d
		}
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
	l.signal()
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
