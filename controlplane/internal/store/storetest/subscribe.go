package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var subscribeTests = []test{
	{"FiresAfterWrite", testSubscribeFires},
	{"ReachesFinalHead", testSubscribeFinalHead},
	{"IdleSubscriberNeverBlocks", testSubscribeNeverBlocks},
	{"CanceledSubscription", testSubscribeCanceled},
}

// awaitHead waits on ch until Head reaches want: each signal must be
// followed by a look at Head, and the last advance must be signalled.
func awaitHead(t *testing.T, s store.Store, ch <-chan struct{}, want int64) {
	t.Helper()
	timeout := time.After(wait)
	for {
		head, err := s.Head(context.Background())
		if err != nil {
			t.Fatalf("Head: %v", err)
		}
		if head >= want {
			return
		}
		select {
		case _, ok := <-ch:
			if !ok {
				t.Fatalf("subscription closed at Head %d, waiting for %d", head, want)
			}
		case <-timeout:
			t.Fatalf("no signal took Head from %d to %d within %v", head, want, wait)
		}
	}
}

func testSubscribeFires(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch := s.Subscribe(ctx)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k", t0)) })
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed instead of signalling")
		}
	case <-time.After(wait):
		t.Fatalf("no signal within %v of a write", wait)
	}
	awaitHead(t, s, ch, 1)
}

func testSubscribeFinalHead(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch := s.Subscribe(ctx)
	for i := range 10 {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			return tx.CreateKey(ctx, newKey(fmt.Sprint("k", i), at(i)))
		})
	}
	awaitHead(t, s, ch, 10)
	// And again after a pause: no signal is lost once coalesced.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "k0") })
	awaitHead(t, s, ch, 11)
}

// testSubscribeNeverBlocks: a subscriber that never reads does not hold up
// writes or revisions.
func testSubscribeNeverBlocks(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for range 3 {
		_ = s.Subscribe(ctx)
	}
	wctx, wcancel := context.WithTimeout(t.Context(), wait)
	defer wcancel()
	for i := range 20 {
		err := s.ReadWriteTx(wctx, func(ctx context.Context, tx store.Tx) error {
			return tx.CreateKey(ctx, newKey(fmt.Sprint("k", i), at(i)))
		})
		if err != nil {
			t.Fatalf("write %d with idle subscribers: %v", i, err)
		}
	}
	waitHead(t, s, 20)
}

// testSubscribeCanceled: ending a subscription's context does not disturb
// the store or other subscribers.
func testSubscribeCanceled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	_ = s.Subscribe(ctx)
	cancel()
	live, liveCancel := context.WithCancel(t.Context())
	defer liveCancel()
	ch := s.Subscribe(live)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k", t0)) })
	awaitHead(t, s, ch, 1)
}
