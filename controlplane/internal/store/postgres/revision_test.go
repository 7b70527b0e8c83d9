package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

func open(t testing.TB, url string, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url, append([]postgres.Option{postgres.WithLogger(pgtest.Logger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// createKeys runs writers goroutines that each create perWriter keys, one
// transaction per key, on the given stores in turn. It returns, per
// writer, the key ids in the order their transactions committed.
func createKeys(t *testing.T, stores []store.Store, writers, perWriter int) [][]string {
	t.Helper()
	order := make([][]string, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		s := stores[w%len(stores)]
		wg.Go(func() {
			for i := range perWriter {
				id := fmt.Sprintf("w%02d-%03d", w, i)
				err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
					return tx.CreateKey(ctx, key(id, time.Now()))
				})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
				order[w] = append(order[w], id)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return order
}

// checkOneKeyPerRevision checks the log holds each created key in exactly
// one revision of its own, and that each writer's keys have increasing
// revisions (a transaction that began after another committed must come
// after it).
func checkOneKeyPerRevision(t *testing.T, sets []store.ChangeSet, order [][]string) {
	t.Helper()
	rev := map[string]int64{}
	for _, cs := range sets {
		if len(cs.Changes) != 1 {
			t.Fatalf("revision %d has %d changes, want 1 (one transaction)", cs.Revision, len(cs.Changes))
		}
		c := cs.Changes[0]
		if _, dup := rev[c.ID]; dup {
			t.Fatalf("%s in two revisions", c.ID)
		}
		rev[c.ID] = cs.Revision
	}
	n := 0
	for _, ids := range order {
		n += len(ids)
		for i, id := range ids {
			r, ok := rev[id]
			if !ok {
				t.Fatalf("%s committed but has no revision", id)
			}
			if i > 0 && r <= rev[ids[i-1]] {
				t.Fatalf("%s (revision %d) committed after %s (revision %d)", id, r, ids[i-1], rev[ids[i-1]])
			}
		}
	}
	if len(rev) != n {
		t.Fatalf("%d revisions for %d transactions", len(rev), n)
	}
}

func TestConcurrentWritersGetGaplessCommitOrderedRevisions(t *testing.T) {
	s := pgtest.NewStore(t)
	const writers, perWriter = 16, 50
	start := time.Now()
	order := createKeys(t, []store.Store{s}, writers, perWriter)
	t.Logf("%d transactions from %d writers in %v", writers*perWriter, writers, time.Since(start))
	waitHead(t, s, writers*perWriter)
	checkOneKeyPerRevision(t, allChanges(t, s), order)
}

// If B saw A's write, A has the lower revision. Each transaction reads a
// counter in a team's metadata and writes it back incremented, so replaying
// the team's post-images in revision order must count 1, 2, 3, ...
func TestObservedWritesHaveLowerRevisions(t *testing.T) {
	s := pgtest.NewStore(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.CreateTeam(ctx, store.Team{TeamID: "t", Metadata: json.RawMessage(`{"n":0}`), CreatedAt: base})
	})
	const writers, perWriter = 4, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for range perWriter {
				err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
					tm, err := tx.GetTeam(ctx, "t")
					if err != nil {
						return err
					}
					var m struct{ N int }
					if err := json.Unmarshal(tm.Metadata, &m); err != nil {
						return err
					}
					tm.Metadata = json.RawMessage(fmt.Sprintf(`{"n":%d}`, m.N+1))
					// A key per transaction too, so that transactions also
					// overlap in tables without contention.
					if err := tx.CreateKey(ctx, key(fmt.Sprintf("w%d-%d", w, m.N), time.Now())); err != nil {
						return err
					}
					return tx.UpdateTeam(ctx, tm)
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	const total = 1 + writers*perWriter
	waitHead(t, s, total)
	sets := allChanges(t, s)
	for i, cs := range sets[1:] {
		for _, c := range cs.Changes {
			if c.Kind != store.KindTeam {
				continue
			}
			var tm store.Team
			if err := json.Unmarshal(c.Data, &tm); err != nil {
				t.Fatal(err)
			}
			var m struct{ N int }
			if err := json.Unmarshal(tm.Metadata, &m); err != nil {
				t.Fatal(err)
			}
			if m.N != i+1 {
				t.Fatalf("revision %d carries counter %d, want %d", cs.Revision, m.N, i+1)
			}
		}
	}
}

// Two replicas on one database: one sequencer between them, every
// transaction one revision, 1..N without gaps, and both read the same log.
func TestTwoReplicasShareOneGaplessLog(t *testing.T) {
	url := pgtest.NewDatabaseURL(t)
	a, b := open(t, url), open(t, url)
	const writers, perWriter = 8, 40
	order := createKeys(t, []store.Store{a, b}, writers, perWriter)
	waitHead(t, a, writers*perWriter)
	waitHead(t, b, writers*perWriter)
	fromA, fromB := allChanges(t, a), allChanges(t, b)
	checkOneKeyPerRevision(t, fromA, order)
	if len(fromA) != len(fromB) {
		t.Fatalf("replicas see %d and %d change sets", len(fromA), len(fromB))
	}
	for i := range fromA {
		if fromA[i].Revision != fromB[i].Revision || !slices.Equal(changeIDs(fromA[i]), changeIDs(fromB[i])) {
			t.Fatalf("revision %d differs between replicas", fromA[i].Revision)
		}
	}
	if a.IsLeader() == b.IsLeader() {
		t.Errorf("leaders: a=%v b=%v, want exactly one", a.IsLeader(), b.IsLeader())
	}
}

// When the sequencing replica closes, the standby takes over; what was
// committed while nobody sequenced gets its revision then.
func TestSequencerFailsOver(t *testing.T) {
	url := pgtest.NewDatabaseURL(t)
	opts := []postgres.Option{postgres.WithFailoverInterval(20 * time.Millisecond), postgres.WithPollInterval(20 * time.Millisecond)}
	first := open(t, url, opts...)
	waitFor(t, "first replica to lead", first.IsLeader)
	second := open(t, url, opts...)
	write(t, second, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("before", base)) })
	waitHead(t, second, 1)
	if second.IsLeader() {
		t.Fatal("two leaders")
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	write(t, second, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("during", base)) })
	waitFor(t, "second replica to lead", second.IsLeader)
	write(t, second, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("after", base)) })
	waitHead(t, second, 3)
	var got []string
	for _, cs := range allChanges(t, second) {
		got = append(got, changeIDs(cs)...)
	}
	if want := []string{"key/before/put", "key/during/put", "key/after/put"}; !slices.Equal(got, want) {
		t.Errorf("log %v, want %v", got, want)
	}

	// And back: a replica that starts now stands by.
	third := open(t, url, opts...)
	time.Sleep(100 * time.Millisecond)
	if third.IsLeader() {
		t.Error("a new replica took the lock from a live sequencer")
	}
}

// A write's revision shows in Head within milliseconds of its commit, on the
// sequencing replica (local wake-up) and on another one (NOTIFY). The poll
// interval is set high so that only the fast paths can pass.
func TestRevisionVisibleWithinMilliseconds(t *testing.T) {
	url := pgtest.NewDatabaseURL(t)
	opts := []postgres.Option{postgres.WithPollInterval(10 * time.Second)}
	leader := open(t, url, opts...)
	waitFor(t, "leader", leader.IsLeader)
	follower := open(t, url, opts...)
	for _, c := range []struct {
		name string
		s    *postgres.Store
	}{{"sequencing replica", leader}, {"other replica", follower}} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			signals := c.s.Subscribe(ctx)
			var lat []time.Duration
			for i := range 20 {
				head, err := c.s.Head(ctx)
				if err != nil {
					t.Fatal(err)
				}
				write(t, c.s, func(ctx context.Context, tx store.Tx) error {
					return tx.CreateKey(ctx, key(fmt.Sprint(c.name, i), base))
				})
				committed := time.Now()
				for got := head; got <= head; {
					select {
					case <-signals:
					case <-time.After(5 * time.Second):
						t.Fatal("no signal")
					}
					if got, err = c.s.Head(ctx); err != nil {
						t.Fatal(err)
					}
				}
				lat = append(lat, time.Since(committed))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			t.Logf("commit to Head: median %v, max %v", lat[len(lat)/2], lat[len(lat)-1])
			if lat[len(lat)/2] > 50*time.Millisecond {
				t.Errorf("median commit-to-revision latency %v", lat[len(lat)/2])
			}
		})
	}
}

func TestSubscribeSignalsEveryReplica(t *testing.T) {
	url := pgtest.NewDatabaseURL(t)
	a, b := open(t, url), open(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	chA, chB := a.Subscribe(ctx), b.Subscribe(ctx)
	write(t, a, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("k", base)) })
	for name, ch := range map[string]<-chan struct{}{"a": chA, "b": chB} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("replica %s: no signal", name)
		}
	}
	cancel()
	for name, ch := range map[string]<-chan struct{}{"a": chA, "b": chB} {
		select {
		case _, ok := <-ch:
			if ok {
				// A coalesced signal may still be buffered; then it closes.
				if _, ok := <-ch; ok {
					t.Fatalf("replica %s: channel open after cancel", name)
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("replica %s: channel not closed after cancel", name)
		}
	}
	// Subscribers that never read do not block the store.
	_ = a.Subscribe(context.Background())
	for i := range 5 {
		write(t, a, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key(fmt.Sprint("x", i), base)) })
	}
	waitHead(t, a, 6)
}

// A snapshot's revision covers exactly what its view holds, while writers
// keep committing.
func TestSnapshotRevisionMatchesItsView(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { //nolint:errcheck // stops on cancel
				return tx.CreateKey(ctx, key(fmt.Sprint("k", i), base))
			})
		}
	})
	for range 20 {
		var rev int64
		keys := map[string]bool{}
		err := s.Snapshot(context.Background(), func(r int64, rd store.Reader) error {
			rev = r
			return rd.EachKey(context.Background(), func(k store.Key) error { keys[k.TokenID] = true; return nil })
		})
		if err != nil {
			t.Fatal(err)
		}
		sets, err := s.Changes(context.Background(), 0, int(rev))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(sets)) != rev {
			t.Fatalf("%d change sets up to revision %d", len(sets), rev)
		}
		for _, cs := range sets {
			if !keys[cs.Changes[0].ID] {
				t.Fatalf("revision %d (%s) is not in the snapshot at revision %d", cs.Revision, cs.Changes[0].ID, rev)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
}

func TestOldestAndHeadOfAnEmptyStore(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	if head, err := s.Head(ctx); err != nil || head != 0 {
		t.Fatalf("Head = %d, %v", head, err)
	}
	if oldest, err := s.Oldest(ctx); err != nil || oldest != 1 {
		t.Fatalf("Oldest of an empty log = %d, %v; want Head+1", oldest, err)
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("a", base)) })
	waitHead(t, s, 1)
	if oldest, err := s.Oldest(ctx); err != nil || oldest != 1 {
		t.Fatalf("Oldest = %d, %v", oldest, err)
	}
	if sets, err := s.Changes(ctx, 1, 10); err != nil || len(sets) != 0 {
		t.Fatalf("Changes after the head: %v, %v", sets, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
