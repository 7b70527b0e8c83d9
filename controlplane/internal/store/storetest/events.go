package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var eventTests = []test{
	{"EnqueueRoundTrip", testEventRoundTrip},
	{"EnqueueRollsBackWithTx", testEventRollback},
	{"NoRevision", testEventNoRevision},
	{"ClaimLeaseAndRetry", testEventClaim},
	{"ConcurrentClaimsDisjoint", testEventConcurrentClaims},
	{"Purge", testEventPurge},
	{"RotationSchedule", testRotationSchedule},
	{"BudgetResetSchedule", testBudgetResetSchedule},
}

func newEvent(i int) store.Event {
	return store.Event{
		ID: fmt.Sprintf("ev-%d", i), Type: store.EventKeyCreated,
		Payload:   json.RawMessage(fmt.Sprintf(`{"token_id":"tok-%d","key_name":"sk-...%04d"}`, i, i)),
		CreatedAt: at(i).In(zone),
	}
}

func enqueue(t *testing.T, s store.Store, evs ...store.Event) {
	t.Helper()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, e := range evs {
			if err := tx.EnqueueEvent(ctx, e); err != nil {
				return err
			}
		}
		return nil
	})
}

func claim(t *testing.T, s store.Store, now time.Time, limit int, lease time.Duration) []store.Event {
	t.Helper()
	var out []store.Event
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var err error
		out, err = tx.ClaimEvents(ctx, now, limit, lease)
		return err
	})
	return out
}

func eventID(e store.Event) string { return e.ID }

func testEventRoundTrip(t *testing.T, s store.Store) {
	e := newEvent(1)
	enqueue(t, s, e)
	got, n, err := s.Read().ListEvents(t.Context(), store.EventFilter{})
	if err != nil || n != 1 || len(got) != 1 {
		t.Fatalf("ListEvents = %d events, total %d, %v", len(got), n, err)
	}
	want := e
	want.NextAttemptAt = e.CreatedAt // zero means due at once
	expectEqual(t, "event", want, got[0])

	err = s.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error { return tx.EnqueueEvent(ctx, e) })
	expectConflict(t, "same event id", err, "event_id")

	// Enqueue order, type filter, pending filter, paging.
	e2, e3 := newEvent(2), newEvent(3)
	e2.Type = store.EventKeyDeleted
	enqueue(t, s, e3, e2)
	all, n, err := s.Read().ListEvents(t.Context(), store.EventFilter{})
	if err != nil || n != 3 || !slices.Equal(ids(all, eventID), []string{"ev-1", "ev-3", "ev-2"}) {
		t.Fatalf("ListEvents order = %v (total %d, %v)", ids(all, eventID), n, err)
	}
	del, n, err := s.Read().ListEvents(t.Context(), store.EventFilter{Type: store.EventKeyDeleted})
	if err != nil || n != 1 || del[0].ID != "ev-2" {
		t.Fatalf("ListEvents(type) = %v (total %d, %v)", ids(del, eventID), n, err)
	}
	page, n, err := s.Read().ListEvents(t.Context(), store.EventFilter{Page: store.Page{Page: 2, Size: 2}})
	if err != nil || n != 3 || !slices.Equal(ids(page, eventID), []string{"ev-2"}) {
		t.Fatalf("ListEvents(page 2) = %v (total %d, %v)", ids(page, eventID), n, err)
	}
}

func testEventRollback(t *testing.T, s store.Store) {
	boom := errors.New("boom")
	err := s.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, newKey("k1", at(0))); err != nil {
			return err
		}
		if err := tx.EnqueueEvent(ctx, newEvent(1)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("ReadWriteTx = %v, want boom", err)
	}
	if _, n, err := s.Read().ListEvents(t.Context(), store.EventFilter{}); err != nil || n != 0 {
		t.Fatalf("rolled-back event stored: total %d, %v", n, err)
	}
	// Committed with the change it describes.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, newKey("k1", at(0))); err != nil {
			return err
		}
		return tx.EnqueueEvent(ctx, newEvent(1))
	})
	if _, n, err := s.Read().ListEvents(t.Context(), store.EventFilter{}); err != nil || n != 1 {
		t.Fatalf("committed event: total %d, %v", n, err)
	}
}

func testEventNoRevision(t *testing.T, s store.Store) {
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k1", at(0))) })
	waitHead(t, s, 1)
	enqueue(t, s, newEvent(1))
	claim(t, s, at(10), 10, time.Minute)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.MarkEventDelivered(ctx, "ev-1", at(20)) })
	time.Sleep(50 * time.Millisecond)
	if h, err := s.Head(t.Context()); err != nil || h != 1 {
		t.Fatalf("Head = %d, %v; outbox writes must not create revisions", h, err)
	}
}

func testEventClaim(t *testing.T, s store.Store) {
	ctx := t.Context()
	enqueue(t, s, newEvent(1), newEvent(2), newEvent(3))
	// Nothing due before creation.
	if got := claim(t, s, at(0), 10, time.Minute); len(got) != 0 {
		t.Fatalf("claimed before due: %v", ids(got, eventID))
	}
	now := at(100)
	got := claim(t, s, now, 2, time.Minute)
	if !slices.Equal(ids(got, eventID), []string{"ev-1", "ev-2"}) {
		t.Fatalf("first claim = %v, want ev-1, ev-2", ids(got, eventID))
	}
	for _, e := range got {
		if e.Attempts != 1 || !e.NextAttemptAt.Equal(now.Add(time.Minute)) {
			t.Fatalf("claimed %s: attempts %d, next %v", e.ID, e.Attempts, e.NextAttemptAt)
		}
	}
	// Leased events are not claimed again before the lease ends.
	if got := claim(t, s, now.Add(time.Second), 10, time.Minute); !slices.Equal(ids(got, eventID), []string{"ev-3"}) {
		t.Fatalf("second claim = %v, want ev-3", ids(got, eventID))
	}
	// ev-1 delivered, ev-2 failed and rescheduled.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.MarkEventDelivered(ctx, "ev-1", now.Add(2*time.Second)); err != nil {
			return err
		}
		return tx.MarkEventFailed(ctx, "ev-2", now.Add(10*time.Second), "webhook returned 500")
	})
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.MarkEventDelivered(ctx, "nope", now) })
	expectNotFound(t, "MarkEventDelivered(unknown)", err)
	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.MarkEventFailed(ctx, "nope", now, "x") })
	expectNotFound(t, "MarkEventFailed(unknown)", err)
	// A failed delivery after success changes nothing.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.MarkEventFailed(ctx, "ev-1", now, "late") })

	pending, n, err := s.Read().ListEvents(ctx, store.EventFilter{PendingOnly: true})
	if err != nil || n != 2 || !slices.Equal(ids(pending, eventID), []string{"ev-2", "ev-3"}) {
		t.Fatalf("pending = %v (total %d, %v)", ids(pending, eventID), n, err)
	}
	all, _, _ := s.Read().ListEvents(ctx, store.EventFilter{})
	if all[0].DeliveredAt == nil || !all[0].DeliveredAt.Equal(now.Add(2*time.Second)) || all[0].LastError != "" {
		t.Fatalf("delivered event: %+v", all[0])
	}
	if all[1].LastError != "webhook returned 500" || !all[1].NextAttemptAt.Equal(now.Add(10*time.Second)) || all[1].Attempts != 1 {
		t.Fatalf("failed event: %+v", all[1])
	}
	// The retry comes due; the lease of ev-3 runs out: both claimed again.
	got = claim(t, s, now.Add(2*time.Minute), 10, time.Minute)
	if !slices.Equal(ids(got, eventID), []string{"ev-2", "ev-3"}) {
		t.Fatalf("retry claim = %v, want ev-2, ev-3", ids(got, eventID))
	}
	for _, e := range got {
		if e.Attempts != 2 {
			t.Fatalf("retry %s: attempts %d, want 2", e.ID, e.Attempts)
		}
	}
	// A delivered event is never claimed again.
	if got := claim(t, s, now.Add(time.Hour), 10, time.Minute); slices.Contains(ids(got, eventID), "ev-1") {
		t.Fatalf("delivered event claimed again: %v", ids(got, eventID))
	}
}

// Concurrent claimers (replicas) never get the same event.
func testEventConcurrentClaims(t *testing.T, s store.Store) {
	const n = 40
	var evs []store.Event
	for i := range n {
		evs = append(evs, newEvent(i))
	}
	enqueue(t, s, evs...)
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	now := at(1000)
	for range 4 {
		wg.Go(func() {
			for {
				var got []store.Event
				err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
					var err error
					got, err = tx.ClaimEvents(ctx, now, 3, time.Hour)
					return err
				})
				if err != nil {
					t.Errorf("ClaimEvents: %v", err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, e := range got {
					seen[e.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("claimed %d distinct events, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("event %s claimed %d times", id, c)
		}
	}
}

func testEventPurge(t *testing.T, s store.Store) {
	enqueue(t, s, newEvent(1), newEvent(2), newEvent(3))
	claim(t, s, at(10), 10, time.Minute)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.MarkEventDelivered(ctx, "ev-1", at(20)); err != nil {
			return err
		}
		return tx.MarkEventDelivered(ctx, "ev-2", at(40))
	})
	var purged int
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var err error
		purged, err = tx.PurgeEvents(ctx, at(30), 10)
		return err
	})
	if purged != 1 {
		t.Fatalf("purged %d, want 1", purged)
	}
	all, _, err := s.Read().ListEvents(t.Context(), store.EventFilter{})
	if err != nil || !slices.Equal(ids(all, eventID), []string{"ev-2", "ev-3"}) {
		t.Fatalf("after purge: %v, %v", ids(all, eventID), err)
	}
	// A purged id may be enqueued again (receivers de-duplicate within
	// their own window); a kept one may not.
	enqueue(t, s, newEvent(1))
	err = s.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error { return tx.EnqueueEvent(ctx, newEvent(2)) })
	expectConflict(t, "kept event id", err, "event_id")
}

func testRotationSchedule(t *testing.T, s store.Store) {
	ctx := t.Context()
	mk := func(id string, auto bool, rot *time.Time) store.Key {
		k := newKey(id, at(0))
		k.AutoRotate, k.KeyRotationAt = auto, rot
		if auto {
			k.RotationInterval = "30d"
		}
		return k
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, k := range []store.Key{
			mk("due-late", true, ptr(at(50).In(zone))),
			mk("due-early", true, ptr(at(10))),
			mk("future", true, ptr(at(5000))),
			mk("manual", false, ptr(at(1))), // a rotation time without auto_rotate: not scheduled
			mk("plain", false, nil),
		} {
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
	due, err := s.Read().KeysDueForRotation(ctx, at(100), 10)
	if err != nil || !slices.Equal(ids(due, keyID), []string{"due-early", "due-late"}) {
		t.Fatalf("KeysDueForRotation = %v, %v", ids(due, keyID), err)
	}
	if due, _ := s.Read().KeysDueForRotation(ctx, at(100), 1); len(due) != 1 || due[0].TokenID != "due-early" {
		t.Fatalf("limit 1: %v", ids(due, keyID))
	}
	// Rotating moves the key's slot; turning auto_rotate off or deleting
	// the key drops it.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k, err := tx.GetKey(ctx, "due-early")
		if err != nil {
			return err
		}
		k.KeyRotationAt = ptr(at(9000))
		k.RotationCount++
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		k2, err := tx.GetKey(ctx, "future")
		if err != nil {
			return err
		}
		k2.AutoRotate = false
		if err := tx.UpdateKey(ctx, k2); err != nil {
			return err
		}
		return tx.DeleteKey(ctx, "due-late")
	})
	if due, err := s.Read().KeysDueForRotation(ctx, at(10000), 10); err != nil || !slices.Equal(ids(due, keyID), []string{"due-early"}) {
		t.Fatalf("after updates: %v, %v", ids(due, keyID), err)
	}
}

func testBudgetResetSchedule(t *testing.T, s store.Store) {
	ctx := t.Context()
	reset := func(l *store.Limits, at *time.Time) {
		l.BudgetDuration, l.BudgetResetAt = "1d", at
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k1, k2, k3 := newKey("k-late", at(0)), newKey("k-future", at(0)), newKey("k-plain", at(0))
		reset(&k1.Limits, ptr(at(60).In(zone)))
		reset(&k2.Limits, ptr(at(5000)))
		tm, u, o := newTeam("t-early", at(0)), newUser("u-mid", at(0)), newOrg("o-mid", at(0))
		reset(&tm.Limits, ptr(at(10)))
		reset(&u.Limits, ptr(at(30)))
		reset(&o.Limits, ptr(at(40)))
		for _, k := range []store.Key{k1, k2, k3} {
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		if err := tx.CreateTeam(ctx, tm); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		return tx.CreateOrganization(ctx, o)
	})
	names := func(list []store.BudgetReset) []string {
		out := []string{}
		for _, b := range list {
			out = append(out, b.Kind+":"+b.ID)
		}
		return out
	}
	due, err := s.Read().BudgetResetsDue(ctx, at(100), 10)
	want := []string{"team:t-early", "user:u-mid", "organization:o-mid", "key:k-late"}
	if err != nil || !slices.Equal(names(due), want) {
		t.Fatalf("BudgetResetsDue = %v, %v; want %v", names(due), err, want)
	}
	if !due[3].At.Equal(at(60)) {
		t.Fatalf("due[3].At = %v, want %v", due[3].At, at(60))
	}
	if due, _ := s.Read().BudgetResetsDue(ctx, at(100), 2); !slices.Equal(names(due), want[:2]) {
		t.Fatalf("limit 2: %v", names(due))
	}
	if due, _ := s.Read().BudgetResetsDue(ctx, at(30), 10); !slices.Equal(names(due), want[:1]) {
		t.Fatalf("until is exclusive: %v", names(due))
	}
	// A reset moves the slot; removing the reset or deleting the object
	// drops it.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		tm, err := tx.GetTeam(ctx, "t-early")
		if err != nil {
			return err
		}
		tm.BudgetResetAt = ptr(at(9000))
		if err := tx.UpdateTeam(ctx, tm); err != nil {
			return err
		}
		u, err := tx.GetUser(ctx, "u-mid")
		if err != nil {
			return err
		}
		u.BudgetResetAt, u.BudgetDuration = nil, ""
		if err := tx.UpdateUser(ctx, u); err != nil {
			return err
		}
		k, err := tx.GetKey(ctx, "k-future")
		if err != nil {
			return err
		}
		k.BudgetResetAt = ptr(at(50))
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		if err := tx.DeleteOrganization(ctx, "o-mid"); err != nil {
			return err
		}
		return tx.DeleteKey(ctx, "k-late")
	})
	due, err = s.Read().BudgetResetsDue(ctx, at(10000), 10)
	if want := []string{"key:k-future", "team:t-early"}; err != nil || !slices.Equal(names(due), want) {
		t.Fatalf("after updates: %v, %v; want %v", names(due), err, want)
	}
}
