package limits

import (
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// notified reports whether l asked for a report to go at once.
func notified(l *Limiter) bool {
	select {
	case <-l.Notify():
		return true
	default:
		return false
	}
}

func useOf(r *syncv1.LeaseRequest, scope string) *syncv1.LeaseUse {
	for _, u := range r.GetUses() {
		if u.GetScope() == scope {
			return u
		}
	}
	return nil
}

// TestLoweringReportedAtOnce pins issue 16's proxy side: the control plane
// frees units it reclaimed from this proxy only once a report shows the
// proxy enforces the lowered allowance, so a lowering is reported at once
// (not at the next 200 ms report, and although the use did not change),
// with the allowance and its seq; an older allowance arriving after it is
// ignored, and a raise is not reported early.
func TestLoweringReportedAtOnce(t *testing.T) {
	l := New(Options{Now: func() time.Time { return fixedNow }, RateWait: -1})
	l.SetConnected(true)
	f := newFixture(t, smallBody)
	f.p.Key.Limits.RPMLimit = 30
	f.p.Key.Limits.MaxParallelRequests = 4
	l.Apply(&syncv1.LeaseGrant{Proxies: 3, Index: 0}) // 10 of 30, 2 of 4 (rounded up: index 0)
	const scope, par = "key:tok-1:rpm", "key:tok-1:par"
	w := fixedNow.Unix() - fixedNow.Unix()%60
	// One request in flight: 1 rpm used, 1 parallel slot.
	inFlight, rej, _ := f.admit(l)
	if rej != nil {
		t.Fatal(rej.Message)
	}
	r := l.Uses()
	u := useOf(r, scope)
	if u == nil || u.Allowance == nil || u.GetAllowance() != 10 || u.GetAllowanceSeq() != 0 {
		t.Fatalf("report %v: want the implicit share 10 (seq 0) as the allowance held", u)
	}
	notified(l)
	if l.Uses() != nil {
		t.Fatal("nothing changed, yet a report")
	}

	// The control plane reclaims 6 (seq 7): reported at once.
	l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{
		{Scope: scope, WindowUnix: w, Allowance: 4, Seq: 7}, {Scope: par, Allowance: 1, Seq: 7}}})
	if !notified(l) {
		t.Fatal("a lowering did not wake the reporter")
	}
	r = l.Uses()
	if u := useOf(r, scope); u == nil || u.GetAllowance() != 4 || u.GetAllowanceSeq() != 7 || u.GetUsed() != 1 {
		t.Fatalf("report %v: want the lowered rpm allowance 4, seq 7, 1 used", r)
	}
	if u := useOf(r, par); u == nil || u.GetAllowance() != 1 || u.GetAllowanceSeq() != 7 || u.GetUsed() != 1 {
		t.Fatalf("report %v: want the lowered parallel allowance 1, seq 7, 1 in flight", r)
	}

	// An allowance older than the one held (reordered across replicas)
	// is ignored: the proxy never goes back to admitting on it.
	l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: scope, WindowUnix: w, Allowance: 10, Seq: 5}}})
	if notified(l) || l.Uses() != nil {
		t.Fatal("a stale allowance was reported")
	}
	inFlight(proxy.Outcome{Status: 200})
	n := 0
	for range 10 {
		if done, rej, _ := f.admit(l); rej == nil {
			n++
			if done != nil {
				done(proxy.Outcome{Status: 200})
			}
		}
	}
	if n != 3 {
		t.Fatalf("admitted %d more: want 3 (the lowered allowance 4, not the stale 10)", n)
	}
	l.Uses()
	notified(l)

	// A raise (a grant this proxy asked for) is reported with its next use,
	// not at once.
	l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: scope, WindowUnix: w, Allowance: 8, Seq: 9}}})
	if nt, r := notified(l), l.Uses(); nt || useOf(r, scope) != nil {
		t.Fatalf("a raise was reported at once (%v, %v)", nt, r)
	}

	// A limit this proxy never used: its implicit share reclaimed is
	// confirmed at once too, as a confirmation only (its limit unknown).
	l.Apply(&syncv1.LeaseGrant{Allowances: []*syncv1.LeaseAllowance{{Scope: "team:other:rpm", WindowUnix: w, Allowance: 0, Seq: 3}}})
	if !notified(l) {
		t.Fatal("a lowering of an unused limit did not wake the reporter")
	}
	r = l.Uses()
	if u := useOf(r, "team:other:rpm"); u == nil || u.GetLimit() != -1 || u.GetAllowance() != 0 || u.GetAllowanceSeq() != 3 || u.GetUsed() != 0 {
		t.Fatalf("report %v: want a confirmation only (limit -1) of allowance 0, seq 3", r)
	}
	if useOf(l.Uses(), "team:other:rpm") != nil {
		t.Fatal("the confirmation was sent twice")
	}

	// A new stream (the last confirmations may be lost with the old one)
	// confirms every allowance held again.
	l.SetConnected(false)
	l.SetConnected(true)
	r = l.Uses()
	if u := useOf(r, "team:other:rpm"); u == nil || u.GetLimit() != -1 || u.GetAllowanceSeq() != 3 {
		t.Fatalf("after a reconnection %v: want the unused limit's allowance confirmed again", r)
	}
	if u := useOf(r, scope); u == nil || u.GetAllowance() != 8 || u.GetAllowanceSeq() != 9 {
		t.Fatalf("after a reconnection %v: want the rpm allowance 8 (seq 9) reported", r)
	}
}
