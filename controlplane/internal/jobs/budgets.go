// Package jobs holds the control plane's background jobs.
//
// Budget resets: every key, team, user and organization with a
// budget_duration has a budget_reset_at; at that instant its spend is set to
// zero and budget_reset_at advances by the duration (past instants are
// skipped, calendar-aware for months), in one store transaction, so the
// change reaches every proxy as an ordinary entity update. Proxies do not
// wait for it: a scope whose budget_reset_at has passed counts as zero
// spend on the proxy already (dataplane/internal/enforce.EffectiveSpend).
//
// Scheduling: the job reads the store's index of budget_reset_at
// (Reader.BudgetResetsDue, so it costs the same with a million keys as with
// ten) every ScanInterval, and after every committed change (at most every
// 200 ms, so a budget_reset_at set or moved through the API is scheduled at
// once), for resets due within Lookahead, and sleeps until each is due
// (timer precision: the reset lands within milliseconds of budget_reset_at).
// After a reset the next one is scheduled directly, so recurring resets are
// exact. Spend settled in the instant between the
// proxies' local reset and the stored reset is counted in the old period.
//
// With several control-plane replicas, every replica runs the job; a reset
// re-reads the object in its transaction and does nothing when the reset is
// no longer due, so a reset happens once.
package jobs

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
)

// Scheduling parameters.
const (
	ScanInterval = 30 * time.Second
	Lookahead    = 2 * ScanInterval
)

type due struct {
	at       time.Time
	kind, id string
}

// StartBudgetResets runs the budget-reset job until ctx ends.
func StartBudgetResets(ctx context.Context, st store.Store, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	go runResets(ctx, st, log.With("component", "budget_reset"), ScanInterval)
}

// rescanAfterChange: after a committed change the job reads the index
// again (a budget_reset_at set or moved through the API is then scheduled
// at once), at most this often.
const rescanAfterChange = 200 * time.Millisecond

func runResets(ctx context.Context, st store.Store, log *slog.Logger, every time.Duration) {
	var sched []due
	changed := st.Subscribe(ctx)
	nextScan := time.Now()
	var lastScan time.Time
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(nextScan) {
			lastScan = now
			s, more, err := scan(ctx, st, now.Add(Lookahead))
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Warn("budget reset scan failed; retrying", "err", err)
				nextScan = now.Add(time.Second)
			} else {
				sched = mergeDue(sched, s)
				nextScan = now.Add(every)
				if last := len(s) - 1; more && s[last].at.Before(nextScan) {
					// Scan again once the last of this batch is due.
					nextScan = s[last].at
				}
			}
		}
		for len(sched) > 0 && !sched[0].at.After(now) {
			d := sched[0]
			sched = sched[1:]
			next, err := resetOne(ctx, st, d.kind, d.id, now)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Warn("budget reset failed; retried at the next scan", "kind", d.kind, "id", d.id, "err", err)
				continue
			}
			if next != nil {
				log.Info("budget reset", "kind", d.kind, "id", d.id, "due", d.at, "next", *next)
				if next.Before(now.Add(Lookahead)) {
					sched = mergeDue(sched, []due{{*next, d.kind, d.id}})
				}
			}
		}
		wake := nextScan
		if len(sched) > 0 && sched[0].at.Before(wake) {
			wake = sched[0].at
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-changed:
			t.Stop()
			if at := lastScan.Add(rescanAfterChange); at.Before(nextScan) {
				nextScan = at
			}
		}
	}
}

// mergeDue adds b to a, sorted by time, one entry per object: an object in
// both keeps b's time (b is the newer reading of the store, so a reset moved
// earlier or later through the API is rescheduled).
func mergeDue(a, b []due) []due {
	fresh := make(map[[2]string]bool, len(b))
	for _, d := range b {
		fresh[[2]string{d.kind, d.id}] = true
	}
	out := a[:0]
	for _, d := range a {
		if !fresh[[2]string{d.kind, d.id}] {
			out = append(out, d)
		}
	}
	seen := make(map[[2]string]bool, len(b))
	for _, d := range b {
		if k := [2]string{d.kind, d.id}; !seen[k] {
			seen[k] = true
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}

// scanLimit bounds one scan; when more resets are due, the job scans again
// as soon as it has worked through the batch.
const scanLimit = 10000

// scan returns the resets due before until, read from the store's index of
// budget_reset_at (never a scan of every key), and whether there may be more.
func scan(ctx context.Context, st store.Store, until time.Time) ([]due, bool, error) {
	list, err := st.Read().BudgetResetsDue(ctx, until, scanLimit)
	if err != nil {
		return nil, false, err
	}
	out := make([]due, len(list))
	for i, b := range list {
		out[i] = due{b.At, b.Kind, b.ID}
	}
	return out, len(list) == scanLimit, nil
}

// advance returns the first reset after now, or nil when the duration is
// unusable (the reset then happens once).
func advance(l *store.Limits, now time.Time) *time.Time {
	d, err := duration.Parse(l.BudgetDuration)
	if err != nil || l.BudgetResetAt == nil {
		return nil
	}
	next := d.AddTo(*l.BudgetResetAt)
	for i := 0; !next.After(now) && i < 1_000_000; i++ {
		next = d.AddTo(next)
	}
	return &next
}

// resetOne zeroes the spend of one object if its reset is due at now, and
// returns its next budget_reset_at (nil when nothing was due or none).
func resetOne(ctx context.Context, st store.Store, kind, id string, now time.Time) (*time.Time, error) {
	var next *time.Time
	err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		next = nil
		isDue := func(l *store.Limits) bool { return l.BudgetResetAt != nil && !l.BudgetResetAt.After(now) }
		switch kind {
		case store.KindKey:
			k, err := tx.GetKey(ctx, id)
			if err != nil || !isDue(&k.Limits) {
				return ignoreNotFound(err)
			}
			next = advance(&k.Limits, now)
			k.Spend, k.ModelSpend, k.BudgetResetAt = 0, nil, next
			return tx.UpdateKey(ctx, k)
		case store.KindTeam:
			t, err := tx.GetTeam(ctx, id)
			if err != nil || !isDue(&t.Limits) {
				return ignoreNotFound(err)
			}
			next = advance(&t.Limits, now)
			t.Spend, t.BudgetResetAt = 0, next
			return tx.UpdateTeam(ctx, t)
		case store.KindUser:
			u, err := tx.GetUser(ctx, id)
			if err != nil || !isDue(&u.Limits) {
				return ignoreNotFound(err)
			}
			next = advance(&u.Limits, now)
			u.Spend, u.BudgetResetAt = 0, next
			return tx.UpdateUser(ctx, u)
		case store.KindOrganization:
			o, err := tx.GetOrganization(ctx, id)
			if err != nil || !isDue(&o.Limits) {
				return ignoreNotFound(err)
			}
			next = advance(&o.Limits, now)
			o.Spend, o.BudgetResetAt = 0, next
			return tx.UpdateOrganization(ctx, o)
		}
		return nil
	})
	return next, err
}

func ignoreNotFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
