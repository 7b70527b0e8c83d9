package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var concurrencyTests = []test{
	{"GaplessRevisions", testGaplessRevisions},
	{"NoLostUpdates", testNoLostUpdates},
	{"SnapshotsDuringWrites", testSnapshotsDuringWrites},
}

const (
	writers   = 8
	perWriter = 25
)

// writerKey names the i-th key of writer w.
func writerKey(w, i int) string { return fmt.Sprintf("w%d-%02d", w, i) }

// runWriters has writers goroutines create perWriter keys each, one
// transaction per key, while during runs; during gets a channel closed when
// the writers are done. It fails the test if any write fails.
func runWriters(t *testing.T, s store.Store, during func(done <-chan struct{})) {
	t.Helper()
	done := make(chan struct{})
	var bg sync.WaitGroup
	if during != nil {
		bg.Go(func() { during(done) })
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				id := writerKey(w, i)
				err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
					return tx.CreateKey(ctx, newKey(id, at(w*perWriter+i)))
				})
				if err != nil {
					errs <- fmt.Errorf("writer %d, %s: %w", w, id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// revisionsOf maps each key of the log to the revision that created it,
// checking every change set holds exactly one key put and no key appears
// twice.
func revisionsOf(t *testing.T, sets []store.ChangeSet) map[string]int64 {
	t.Helper()
	rev := map[string]int64{}
	for _, cs := range sets {
		if len(cs.Changes) != 1 || cs.Changes[0].Kind != store.KindKey || cs.Changes[0].Op != store.OpPut {
			t.Fatalf("revision %d = %v, want one key put (one transaction)", cs.Revision, changeIDs(cs))
		}
		id := cs.Changes[0].ID
		if r, dup := rev[id]; dup {
			t.Fatalf("%s is in revisions %d and %d", id, r, cs.Revision)
		}
		rev[id] = cs.Revision
	}
	return rev
}

// testGaplessRevisions: concurrent writers get revisions 1..N, each
// transaction exactly once, each writer's transactions in the order it ran
// them; Head never goes backwards meanwhile.
func testGaplessRevisions(t *testing.T, s store.Store) {
	var backwards atomic.Value
	runWriters(t, s, func(done <-chan struct{}) {
		var last int64
		for {
			select {
			case <-done:
				return
			default:
			}
			head, err := s.Head(context.Background())
			if err != nil {
				backwards.Store(fmt.Sprintf("Head: %v", err))
				return
			}
			if head < last {
				backwards.Store(fmt.Sprintf("Head went from %d back to %d", last, head))
				return
			}
			last = head
			time.Sleep(time.Millisecond)
		}
	})
	if msg := backwards.Load(); msg != nil {
		t.Error(msg)
	}
	waitHead(t, s, writers*perWriter)
	rev := revisionsOf(t, allChanges(t, s))
	for w := range writers {
		for i := range perWriter {
			id := writerKey(w, i)
			r, ok := rev[id]
			if !ok {
				t.Fatalf("%s committed but has no revision", id)
			}
			if prev := writerKey(w, i-1); i > 0 && r <= rev[prev] {
				t.Errorf("%s has revision %d, but %s, committed before it began, has %d", id, r, prev, rev[prev])
			}
		}
	}
	if len(rev) != writers*perWriter {
		t.Errorf("%d revisions for %d transactions", len(rev), writers*perWriter)
	}
}

// testNoLostUpdates: read-modify-write transactions on one object from
// several goroutines never lose an increment (the backend serializes or
// retries them), and the log's last post-image holds the final value.
func testNoLostUpdates(t *testing.T, s store.Store) {
	const goroutines, increments = 4, 10
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateTeam(ctx, newTeam("t", t0)) })
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for range goroutines {
		wg.Go(func() {
			for range increments {
				err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
					tm, err := tx.GetTeam(ctx, "t")
					if err != nil {
						return err
					}
					tm.Spend++
					return tx.UpdateTeam(ctx, tm)
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	tm, err := s.Read().GetTeam(t.Context(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if tm.Spend != goroutines*increments {
		t.Errorf("Spend = %d after %d increments", tm.Spend, goroutines*increments)
	}
	const n = 1 + goroutines*increments
	waitHead(t, s, n)
	sets := allChanges(t, s)
	for i, cs := range sets[1:] {
		var got store.Team
		if err := json.Unmarshal(findChange(t, cs, store.KindTeam, "t").Data, &got); err != nil {
			t.Fatal(err)
		}
		// Revision r holds the (r-1)-th increment: revisions are in commit
		// order, and each increment read the one before it.
		if got.Spend != int64(i+1) {
			t.Errorf("revision %d: Spend %d, want %d", cs.Revision, got.Spend, i+1)
		}
	}
}

// testSnapshotsDuringWrites: snapshots taken while writers run are
// consistent views: every change set up to the snapshot's revision is in
// it, and when a writer's transaction is in it, so are all that writer's
// earlier ones. Once writes stop, a snapshot reflects the head exactly.
func testSnapshotsDuringWrites(t *testing.T, s store.Store) {
	type view struct {
		rev  int64
		head int64 // Head read after the snapshot
		keys map[string]bool
	}
	var views []view
	var snapErr error
	runWriters(t, s, func(done <-chan struct{}) {
		for {
			select {
			case <-done:
				return
			default:
			}
			var v view
			err := s.Snapshot(context.Background(), func(rev int64, r store.Reader) error {
				v = view{rev: rev, keys: map[string]bool{}}
				return r.EachKey(context.Background(), func(k store.Key) error { v.keys[k.TokenID] = true; return nil })
			})
			if err == nil {
				v.head, err = s.Head(context.Background())
			}
			if err != nil {
				snapErr = err
				return
			}
			views = append(views, v)
			time.Sleep(3 * time.Millisecond)
		}
	})
	if snapErr != nil {
		t.Fatalf("Snapshot during writes: %v", snapErr)
	}
	const n = writers * perWriter
	waitHead(t, s, n)
	sets := allChanges(t, s)
	revisionsOf(t, sets)
	for _, v := range views {
		if v.rev < 0 || v.rev > v.head {
			t.Errorf("snapshot at revision %d, but Head right after it was %d", v.rev, v.head)
		}
		for _, cs := range sets[:min(v.rev, n)] {
			if id := cs.Changes[0].ID; !v.keys[id] {
				t.Errorf("snapshot at revision %d lacks %s (revision %d)", v.rev, id, cs.Revision)
			}
		}
		for w := range writers {
			for i := 1; i < perWriter; i++ {
				if v.keys[writerKey(w, i)] && !v.keys[writerKey(w, i-1)] {
					t.Errorf("snapshot at revision %d holds %s but not %s, committed before it", v.rev, writerKey(w, i), writerKey(w, i-1))
				}
			}
		}
	}
	if len(views) == 0 {
		t.Log("no snapshot completed while the writers ran")
	}
	snapshot(t, s, func(rev int64, r store.Reader) {
		if rev != n {
			t.Errorf("snapshot of a quiet store at revision %d, Head is %d", rev, n)
		}
		expectReplayed(t, r, replay(t, sets))
	})
}
