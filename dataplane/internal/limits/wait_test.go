package limits

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// clock is a test clock that tests advance explicitly.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(fixedNow.UnixNano())
	return c
}
func (c *clock) now() time.Time                   { return time.Unix(0, c.ns.Load()) }
func (c *clock) add(d time.Duration)              { c.ns.Add(int64(d)) }
func (f refreshFunc) Refresh() *enforce.Rejection { return f() }

type refreshFunc func() *enforce.Rejection

// The sequential case: max_budget 0.05, requests costing 0.033,
// one proxy. The second request, sent as soon as the first has answered
// (its cost not synced yet), is admitted once the cost has synced (LiteLLM
// admits it: spend 0.033 < 0.05); the third is refused as budget_exceeded,
// because 0.066 is spent.
func TestSequentialClientSpendsLikeLiteLLM(t *testing.T) {
	clk := newClock()
	l := New(Options{Now: clk.now, BudgetWait: 5 * time.Second})
	l.SetConnected(true)
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 50_000_000 // $0.05 in nano-USD
	f.dep.OutputCost = 1_000_000_000      // $0.001 per completion token: 33 tokens cost $0.033
	usage := proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 33, TotalTokens: 33}}
	cost := int64(33_000_000)

	var mu sync.Mutex
	synced := int64(0)
	refresh := refreshFunc(func() *enforce.Rejection {
		mu.Lock()
		f.p.Key.Spend = synced
		mu.Unlock()
		return nil
	})
	admit := func() (func(proxy.Outcome), *enforce.Rejection) {
		return l.Admit(context.Background(), &proxy.Admission{Route: enforce.RouteChat, Principal: &f.p, Body: &f.body,
			Deployment: &f.dep, Header: http.Header{}, Refresh: refresh})
	}
	done, rej := admit()
	if rej != nil {
		t.Fatalf("first request refused: %s", rej.Message)
	}
	done(usage)
	// The spend pipeline, a moment later: the ack, the synced spend, the
	// clock moving past syncSkew.
	stop := make(chan struct{})
	go func() {
		time.Sleep(20 * time.Millisecond)
		l.Acked([]*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: cost}}, []*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: cost}}, true)
		mu.Lock()
		synced = cost
		mu.Unlock()
		// Time passes (syncSkew), however slowly the waiter polls.
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				clk.add(50 * time.Millisecond)
			}
		}
	}()
	defer close(stop)
	done, rej = admit()
	if rej != nil {
		t.Fatalf("second request (spend $0.033 of $0.05) refused: %s", rej.Message)
	}
	done(usage)
	// Its record is acked: the transaction left the key at 0.066.
	l.Acked([]*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: cost}}, []*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 2 * cost}}, true)
	_, rej = admit()
	if rej == nil || rej.Type != enforce.TypeBudget || rej.Outcome != enforce.BudgetExceeded {
		t.Fatalf("third request (spend $0.066 of $0.05): %+v", rej)
	}
	if l.waiting.Load() != 0 {
		t.Fatalf("%d still waiting", l.waiting.Load())
	}
}

// A refusal that is only due to held amounts never says exceeded: at the
// end of the wait it is budget_held with Retry-After, and nothing stays
// reserved. A scope whose synced + unsynced spend reaches the max is
// budget_exceeded at once, without waiting.
func TestHeldIsNotExceeded(t *testing.T) {
	l := New(Options{Now: func() time.Time { return fixedNow }, BudgetWait: 30 * time.Millisecond})
	l.SetConnected(true)
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 100
	f.dep.OutputCost = 1_000_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":60,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	done, rej, _ := f.admit(l) // 60 in flight
	if rej != nil {
		t.Fatal(rej.Message)
	}
	start := time.Now()
	_, rej, _ = f.admit(l)
	if rej == nil || rej.Type != enforce.TypeBudgetHeld || rej.Outcome != enforce.Held || rej.Status != 429 || rej.Header.Get("Retry-After") != "1" {
		t.Fatalf("second request with 60 of 100 in flight: %+v", rej)
	}
	if time.Since(start) < 30*time.Millisecond {
		t.Fatal("refused before the wait's bound")
	}
	r := l.reservation(budgetKey{"key", "tok-1"})
	r.mu.Lock()
	if r.reserved != 60_000 {
		t.Errorf("reserved %d after the held refusal, want 60000 (the first request only)", r.reserved)
	}
	r.mu.Unlock()
	done(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 100, TotalTokens: 100}})
	l.Acked([]*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 100}}, []*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 100}}, true)
	// 100 spent (acked, not yet synced): exceeded, at once.
	start = time.Now()
	_, rej, _ = f.admit(l)
	if rej == nil || rej.Type != enforce.TypeBudget || rej.Outcome != enforce.BudgetExceeded {
		t.Fatalf("request with 100 of 100 spent: %+v", rej)
	}
	if time.Since(start) >= 30*time.Millisecond {
		t.Error("an exceeded budget waited")
	}
}

// A waiting request whose client goes away returns at once and holds
// nothing; the number of waiting requests is bounded.
func TestWaitEndsWithTheClientAndIsBounded(t *testing.T) {
	l := New(Options{Now: func() time.Time { return fixedNow }, BudgetWait: time.Minute, MaxWaiting: 1})
	l.SetConnected(true)
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 100
	f.dep.OutputCost = 1_000_000
	if rej := enforce.ParseBody([]byte(`{"model":"m","max_tokens":60,"messages":[]}`), &f.body); rej != nil {
		t.Fatal(rej.Message)
	}
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatal(rej.Message)
	}
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan *enforce.Rejection, 1)
	g := *f // its own principal and body
	go func() {
		_, rej := l.Admit(ctx, &proxy.Admission{Route: enforce.RouteChat, Principal: &g.p, Body: &g.body, Deployment: &g.dep, Header: http.Header{}})
		res <- rej
	}()
	deadline := time.Now().Add(10 * time.Second)
	for l.waiting.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the second request never waited")
		}
		time.Sleep(time.Millisecond)
	}
	// A third finds the waiting room full: refused at once, as held.
	start := time.Now()
	if _, rej, _ := f.admit(l); rej == nil || rej.Type != enforce.TypeBudgetHeld {
		t.Fatalf("third request with the waiting room full: %+v", rej)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the third request waited")
	}
	cancel()
	select {
	case rej := <-res:
		if rej == nil || rej.Type != enforce.TypeBudgetHeld {
			t.Fatalf("cancelled waiter: %+v", rej)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled waiter did not return")
	}
	r := l.reservation(budgetKey{"key", "tok-1"})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reserved != 60_000 || l.waiting.Load() != 0 {
		t.Fatalf("reserved %d, waiting %d after the cancel", r.reserved, l.waiting.Load())
	}
}

// A proxy whose parallel allowance is on loan (explicit 0 of 3) waits for
// the grant instead of refusing; the proxy that held the slots reports its
// last release at once.
func TestRateLimitWaitsForGrant(t *testing.T) {
	l := New(Options{Now: func() time.Time { return fixedNow }, RateWait: 10 * time.Second})
	l.SetConnected(true)
	l.Apply(&syncv1.LeaseGrant{Proxies: 3, Index: 1, Allowances: []*syncv1.LeaseAllowance{{Scope: "key:tok-1:par", WindowUnix: 0, Allowance: 0}}})
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxParallelRequests = 3
	go func() {
		// The control plane answers the ask once the other proxy's share
		// is reclaimed.
		for l.waiting.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		<-l.Notify()
		l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: "key:tok-1:par", WindowUnix: 0, Allowance: 1}}})
	}()
	done, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatalf("refused while the allowance was on loan: %+v", rej)
	}
	for len(l.Notify()) > 0 {
		<-l.Notify()
	}
	done(proxy.Outcome{Status: 200})
	select {
	case <-l.Notify():
	default:
		t.Fatal("the last parallel release was not reported at once")
	}
	// With the whole limit here and in use, the refusal is immediate and
	// a real rate_limit_error.
	l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: "key:tok-1:par", WindowUnix: 0, Allowance: 3}}})
	for range 3 {
		if _, rej, _ := f.admit(l); rej != nil {
			t.Fatal(rej.Message)
		}
	}
	start := time.Now()
	if _, rej, _ := f.admit(l); rej == nil || rej.Type != "rate_limit_error" {
		t.Fatalf("fourth parallel request with the whole limit here: %+v", rej)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("a limit really in use waited")
	}
}

// A limit really in use elsewhere: the control plane answers the ask
// without room, and the wait ends (after minRateWait) as rate_limit_error,
// not at the bound and not as held.
func TestRateLimitInUseElsewhereEndsTheWait(t *testing.T) {
	l := New(Options{Now: func() time.Time { return fixedNow }, RateWait: 20 * time.Second})
	l.SetConnected(true)
	l.Apply(&syncv1.LeaseGrant{Proxies: 3, Index: 0, Allowances: []*syncv1.LeaseAllowance{{Scope: "key:tok-1:par", WindowUnix: 0, Allowance: 1}}})
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxParallelRequests = 3
	if _, rej, _ := f.admit(l); rej != nil {
		t.Fatal(rej.Message)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-l.Notify():
				l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: "key:tok-1:par", WindowUnix: 0, Allowance: 1}}})
			}
		}
	}()
	start := time.Now()
	_, rej, _ := f.admit(l)
	if rej == nil || rej.Type != "rate_limit_error" || rej.Outcome != enforce.RateLimited {
		t.Fatalf("second request, the rest of the limit in use elsewhere: %+v", rej)
	}
	if d := time.Since(start); d < minRateWait || d > 10*time.Second {
		t.Fatalf("refused after %v", d)
	}
}

// The proxy appends a request's spend record just before it calls done; if
// the outbox ships, is acked and drains in between, no ack will take that
// cost out of what this proxy counts as unsynced. It must not stay counted
// (it made a budget look spent for ever: a false budget_exceeded).
func TestCostAckedBeforeDoneIsNotCountedForEver(t *testing.T) {
	clk := newClock()
	l := New(Options{Now: clk.now, BudgetWait: -1})
	l.SetConnected(true)
	f := newFixture(t, smallBody)
	f.p.Key.Limits.MaxBudget = 7
	f.dep.OutputCost = 1_000_000
	done, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatal(rej.Message)
	}
	// The record (cost 5) is acked and the outbox drained before done.
	l.Acked([]*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 5}}, []*syncv1.ObjectSpend{{Kind: "key", Id: "tok-1", Spend: 5}}, true)
	done(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 5, TotalTokens: 5}})
	f.p.Key.Spend = 5 // synced
	clk.add(time.Second)
	done, rej, _ = f.admit(l)
	if rej != nil {
		t.Fatalf("spend 5 of 7, nothing in flight: %s", rej.Message)
	}
	done(proxy.Outcome{Status: 200, UsageKnown: true, Usage: proxy.Usage{CompletionTokens: 5, TotalTokens: 5}})
}
