package replica

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/cache"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
)

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func open(t testing.TB, path string) *Replica {
	t.Helper()
	r, err := Open(path, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func applySnapshot(t testing.TB, r *Replica, rev int64, nKeys, per int) {
	t.Helper()
	err := statetest.Chunks(rev, nKeys, per, func(c *syncv1.SnapshotChunk) error {
		installed, err := applyChunk(r, c, nil)
		if err != nil {
			return err
		}
		if installed != c.Last {
			return fmt.Errorf("chunk %d: installed=%v last=%v", c.Seq, installed, c.Last)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func delta(prev, rev int64, es ...*syncv1.Entity) *syncv1.Delta {
	return &syncv1.Delta{PrevRevision: prev, Revision: rev, Changes: es}
}

// dump renders what a reader sees for keys 0..n+10 (current and previous
// hashes), a few teams, users, orgs, the models and the settings.
func dump(s *state.State, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ready=%v rev=%d\n", s.Ready(), s.Revision())
	for i := range n + 10 {
		for _, h := range [][32]byte{statetest.Hash(i), statetest.PrevHash(i)} {
			if ki, ok := s.LookupKey(&h, 1); ok {
				p := ki.Policy
				ki.Policy = nil
				fmt.Fprintf(&b, "%d %+v %+v\n", i, ki, *p)
			}
		}
	}
	for i := range 20 {
		if t, ok := s.Team(fmt.Sprint("team-", i)); ok {
			fmt.Fprintf(&b, "%+v\n", *t)
		}
		if u, ok := s.User(fmt.Sprint("user-", i)); ok {
			fmt.Fprintf(&b, "%+v\n", *u)
		}
		if o, ok := s.Org(fmt.Sprint("org-", i)); ok {
			fmt.Fprintf(&b, "%+v\n", *o)
		}
	}
	for _, name := range s.ModelNames() {
		for _, m := range s.Deployments(name) {
			fmt.Fprintf(&b, "%+v\n", *m)
		}
	}
	for _, g := range []string{"premium", "basic"} {
		fmt.Fprintf(&b, "%s=%v\n", g, s.AccessGroup(g))
	}
	fmt.Fprintf(&b, "settings=%s %v\n", s.Settings().Raw, s.Settings().ServiceAccountEnforcedParams)
	return b.String()
}

func TestSnapshotDeltasReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	r := open(t, path)
	if r.State().Ready() || r.Revision() != 0 {
		t.Fatal("empty replica is ready")
	}
	applySnapshot(t, r, 100, 3000, 700)
	if !r.State().Ready() || r.Revision() != 100 {
		t.Fatalf("after snapshot: ready=%v rev=%d", r.State().Ready(), r.Revision())
	}
	if ki, ok := r.State().LookupKey(ptr(statetest.Hash(42)), 0); !ok || ki.TokenID != statetest.TokenID(42) {
		t.Fatal("key 42 missing")
	}
	blocked := statetest.Key(5)
	blocked.GetKey().Blocked = true
	team := statetest.Team(3)
	team.GetTeam().Blocked = true
	ds := []*syncv1.Delta{
		delta(100, 101, blocked, statetest.Tombstone("key", statetest.TokenID(6)), statetest.Key(3005)),
		delta(101, 105, team, statetest.Tombstone("user", "user-4"), statetest.Model("m9", "o1", "basic")),
		delta(105, 106, statetest.Settings(`{"service_account_settings":{"enforced_params":["user","metadata.tags"]}}`)),
	}
	for _, d := range ds {
		if err := r.ApplyDelta(d); err != nil {
			t.Fatal(err)
		}
	}
	want := dump(r.State(), 3000)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyDelta(delta(106, 107)); !errors.Is(err, ErrClosed) {
		t.Fatalf("ApplyDelta after Close: %v", err)
	}

	r2 := open(t, path)
	got := dump(r2.State(), 3000)
	if got != want {
		t.Fatalf("state after reopen differs:\n%s", firstDiff(want, got))
	}
	for _, must := range []string{"Blocked:true", "m9", "metadata.tags"} {
		if !strings.Contains(got, must) {
			t.Fatalf("state lacks %q", must)
		}
	}
	// And the reopened replica continues from its revision.
	if err := r2.ApplyDelta(delta(106, 107, statetest.Tombstone("key", statetest.TokenID(5)))); err != nil {
		t.Fatal(err)
	}
}

func ptr(h [32]byte) *[32]byte { return &h }

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\nwant %s\ngot  %s", i, al[i], bl[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d", len(al), len(bl))
}

func TestSnapshotInvisibleUntilLastChunk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	r := open(t, path)
	applySnapshot(t, r, 10, 100, 1000)
	before := dump(r.State(), 200)
	var chunks []*syncv1.SnapshotChunk
	_ = statetest.Chunks(20, 200, 50, func(c *syncv1.SnapshotChunk) error { chunks = append(chunks, c); return nil })
	for _, c := range chunks[:len(chunks)-1] {
		if installed, err := applyChunk(r, c, nil); err != nil || installed {
			t.Fatalf("chunk %d: %v %v", c.Seq, installed, err)
		}
		if dump(r.State(), 200) != before || r.Revision() != 10 {
			t.Fatal("partial snapshot visible")
		}
	}
	// Reopening mid-snapshot (a crash) still shows the old snapshot.
	r.Close()
	r = open(t, path)
	if got := dump(r.State(), 200); got != before {
		t.Fatalf("after crash mid-snapshot:\n%s", firstDiff(before, got))
	}
	for _, c := range chunks {
		if _, err := applyChunk(r, c, nil); err != nil {
			t.Fatal(err)
		}
	}
	if r.Revision() != 20 {
		t.Fatalf("rev %d", r.Revision())
	}
	if _, ok := r.State().LookupKey(ptr(statetest.Hash(150)), 0); !ok {
		t.Fatal("new snapshot not installed")
	}
}

func TestChunksOutOfOrder(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "proxy.db"))
	applySnapshot(t, r, 10, 10, 100)
	before := dump(r.State(), 50)
	chunk := func(rev int64, seq int32, last bool, keys ...int) *syncv1.SnapshotChunk {
		c := &syncv1.SnapshotChunk{Revision: rev, Seq: seq, Last: last}
		for _, k := range keys {
			c.Entities = append(c.Entities, statetest.Key(k))
		}
		return c
	}
	cases := []struct {
		name   string
		chunks []*syncv1.SnapshotChunk
	}{
		{"first seq not 0", []*syncv1.SnapshotChunk{chunk(20, 1, true, 40)}},
		{"seq skipped", []*syncv1.SnapshotChunk{chunk(20, 0, false, 40), chunk(20, 2, true, 41)}},
		{"seq repeated", []*syncv1.SnapshotChunk{chunk(20, 0, false, 40), chunk(20, 0, true, 41)}},
		{"revision changed", []*syncv1.SnapshotChunk{chunk(20, 0, false, 40), chunk(21, 1, true, 41)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			for _, c := range tc.chunks {
				if _, err = applyChunk(r, c, nil); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrSnapshotOrder) {
				t.Fatalf("err = %v", err)
			}
			if dump(r.State(), 50) != before {
				t.Fatal("state changed")
			}
			// The partial snapshot is gone: its continuation is refused.
			if _, err := applyChunk(r, chunk(20, 1, true, 42), nil); !errors.Is(err, ErrSnapshotOrder) {
				t.Fatalf("continuation accepted: %v", err)
			}
		})
	}
	// AbortSnapshot, then a clean snapshot works.
	if _, err := applyChunk(r, chunk(30, 0, false, 1), nil); err != nil {
		t.Fatal(err)
	}
	r.AbortSnapshot()
	if ok, err := applyChunk(r, chunk(31, 0, true, 2), nil); !ok || err != nil {
		t.Fatalf("snapshot after abort: %v %v", ok, err)
	}
	if r.Revision() != 31 {
		t.Fatal("not installed")
	}
	if _, ok := r.State().LookupKey(ptr(statetest.Hash(1)), 0); ok {
		t.Fatal("aborted snapshot's key visible")
	}
}

func TestDeltaGapChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	r := open(t, path)
	if err := r.ApplyDelta(delta(0, 1, statetest.Key(1))); !errors.Is(err, state.ErrGap) {
		t.Fatalf("delta before snapshot: %v", err)
	}
	applySnapshot(t, r, 10, 10, 100)
	before := dump(r.State(), 20)
	for _, d := range []*syncv1.Delta{delta(9, 11, statetest.Key(15)), delta(11, 12, statetest.Key(15)), delta(10, 10)} {
		if err := r.ApplyDelta(d); !errors.Is(err, state.ErrGap) {
			t.Fatalf("delta %d->%d: %v", d.PrevRevision, d.Revision, err)
		}
	}
	r.Close()
	r = open(t, path)
	if got := dump(r.State(), 20); got != before {
		t.Fatalf("gap changed state:\n%s", firstDiff(before, got))
	}
}

func TestInvalidEntities(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	r := open(t, path)
	bad := statetest.Key(2)
	bad.GetKey().KeyHash = []byte("short")
	c := &syncv1.SnapshotChunk{Revision: 5, Last: true, Entities: []*syncv1.Entity{
		statetest.Key(1), bad, {Kind: "gadget", Id: "g"}, statetest.Key(3),
	}}
	if ok, err := applyChunk(r, c, nil); !ok || err != nil {
		t.Fatalf("snapshot with bad entities: %v %v", ok, err)
	}
	s := r.State()
	if _, ok := s.LookupKey(ptr(statetest.Hash(2)), 0); ok {
		t.Fatal("invalid key installed")
	}
	if _, ok := s.LookupKey(ptr(statetest.Hash(3)), 0); !ok {
		t.Fatal("valid key after an invalid one missing")
	}
	// In a delta, an invalid key removes the key (fail closed) and the
	// revision advances.
	bad3 := statetest.Key(3)
	bad3.GetKey().KeyHash = nil
	if err := r.ApplyDelta(delta(5, 6, bad3, statetest.Key(4), &syncv1.Entity{Kind: "gadget", Id: "g"})); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.LookupKey(ptr(statetest.Hash(3)), 0); ok {
		t.Fatal("key with an invalid update still works")
	}
	if _, ok := s.LookupKey(ptr(statetest.Hash(4)), 0); !ok || r.Revision() != 6 {
		t.Fatal("rest of the delta not applied")
	}
	want := dump(s, 10)
	r.Close()
	if got := dump(open(t, path).State(), 10); got != want {
		t.Fatalf("reopen:\n%s", firstDiff(want, got))
	}
}

func TestCorruptCacheStartsEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("garbage", 5000)), 0o600); err != nil {
		t.Fatal(err)
	}
	r := open(t, path)
	if r.State().Ready() {
		t.Fatal("ready from a corrupt cache")
	}
	if m, _ := filepath.Glob(path + ".corrupt-*"); len(m) != 1 {
		t.Fatalf("moved aside: %v", m)
	}
	applySnapshot(t, r, 3, 5, 100)
	if !r.State().Ready() {
		t.Fatal("not ready after snapshot")
	}
}

// TestCommittedRevisionSurvivesKill runs a child process that applies a
// snapshot and deltas, reporting each revision after ApplyDelta returns,
// kills it with SIGKILL mid-stream, and checks the cache holds at least the
// last reported revision and exactly the state of the revision it holds.
func TestCommittedRevisionSurvivesKill(t *testing.T) {
	if path := os.Getenv("TOLLGATE_REPLICA_CHILD"); path != "" {
		childApply(path)
		return
	}
	if testing.Short() {
		t.Skip("spawns a process")
	}
	for round := range 3 {
		path := filepath.Join(t.TempDir(), "proxy.db")
		cmd := exec.Command(os.Args[0], "-test.run=^TestCommittedRevisionSurvivesKill$")
		cmd.Env = append(os.Environ(), "TOLLGATE_REPLICA_CHILD="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var last int64
		deadline := time.Now().Add(time.Duration(150+100*round) * time.Millisecond)
		for sc.Scan() {
			if rev, err := strconv.ParseInt(strings.TrimPrefix(sc.Text(), "applied "), 10, 64); err == nil && strings.HasPrefix(sc.Text(), "applied ") {
				last = rev
			}
			if last > 0 && time.Now().After(deadline) {
				break
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if last == 0 {
			t.Fatal("child applied nothing")
		}
		r := open(t, path)
		got := r.Revision()
		if got < last {
			t.Fatalf("cache at revision %d, child had reported %d", got, last)
		}
		// The state is exactly that of revision got: keys 1000+k for every
		// delta k < got-100 exist, later ones do not.
		for k := int64(0); k < got-100+5; k++ {
			_, ok := r.State().LookupKey(ptr(statetest.Hash(int(1000+k))), 0)
			if ok != (k < got-100) {
				t.Fatalf("revision %d: key of delta %d present=%v", got, k, ok)
			}
		}
		t.Logf("round %d: killed after reported revision %d, cache holds %d", round, last, got)
		r.Close()
	}
}

func childApply(path string) {
	r, err := Open(path, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	err = statetest.Chunks(100, 1000, 250, func(c *syncv1.SnapshotChunk) error {
		_, err := applyChunk(r, c, nil)
		return err
	})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for rev := int64(100); ; rev++ {
		if err := r.ApplyDelta(delta(rev, rev+1, statetest.Key(int(1000+rev-100)))); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Printf("applied %d\n", rev+1)
	}
}

func TestConcurrentReadsDuringSync(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "proxy.db"))
	applySnapshot(t, r, 1, 500, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			s := r.State()
			s.LookupKey(ptr(statetest.Hash(i%600)), 0)
			_ = slices.Clone(s.ModelNames())
			s.Team("team-1")
		}
	}()
	rev := int64(1)
	for i := range 200 {
		if err := r.ApplyDelta(delta(rev, rev+1, statetest.Key(500+i), statetest.Tombstone("key", statetest.TokenID(i)))); err != nil {
			t.Fatal(err)
		}
		rev++
		if i%50 == 0 {
			applySnapshot(t, r, rev+1, 300, 100)
			rev++
		}
	}
	done <- struct{}{}
}

// applyChunk feeds a decoded chunk, encoded entity by entity as the sync
// client hands them over.
func applyChunk(r *Replica, c *syncv1.SnapshotChunk, raw []byte) (bool, error) {
	wc, err := state.ChunkOf(c)
	if err != nil {
		return false, err
	}
	return r.ApplyChunk(wc, raw)
}

// framedChunk encodes c as the sync client hands it over: the chunk's
// entities encoded, and the message after cache.FrameHeader spare bytes.
func framedChunk(t *testing.T, c *syncv1.SnapshotChunk) (*state.Chunk, []byte) {
	t.Helper()
	raw, err := proto.Marshal(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{Snapshot: c}})
	if err != nil {
		t.Fatal(err)
	}
	framed := append(make([]byte, cache.FrameHeader), raw...)
	var wc state.Chunk
	if !state.ParseChunk(framed[cache.FrameHeader:], &wc) {
		t.Fatal("not a chunk")
	}
	wc.Prepare()
	return &wc, framed
}

// TestFramedChunksWithInvalidEntities: chunks stored as received, except
// those holding invalid entities, which are stored without them.
func TestFramedChunksWithInvalidEntities(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	r := open(t, path)
	bad := statetest.Key(2)
	bad.GetKey().KeyHash = []byte("short")
	chunks := []*syncv1.SnapshotChunk{
		{Revision: 5, Seq: 0, Entities: []*syncv1.Entity{statetest.Team(1), statetest.Key(1), bad, {Kind: "gadget", Id: "g"}}},
		{Revision: 5, Seq: 1, Entities: []*syncv1.Entity{statetest.Key(3), statetest.Key(4)}},
		{Revision: 5, Seq: 2, Last: true, Entities: []*syncv1.Entity{statetest.Key(5), {Kind: "key", Id: "k"}}},
	}
	for _, c := range chunks {
		wc, framed := framedChunk(t, c)
		if ok, err := r.ApplyChunk(wc, framed); err != nil || ok != c.Last {
			t.Fatalf("chunk %d: %v %v", c.Seq, ok, err)
		}
	}
	want := dump(r.State(), 10)
	for _, i := range []int{1, 3, 4, 5} {
		if !strings.Contains(want, statetest.TokenID(i)) {
			t.Fatalf("key %d missing", i)
		}
	}
	if strings.Contains(want, statetest.TokenID(2)) {
		t.Fatal("invalid key installed")
	}
	r.Close()
	c, err := cache.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	if _, _, err := c.Load(func(e *syncv1.Entity) error { ids = append(ids, e.Id); return nil }); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := strings.Join(ids, ","); got != strings.Join([]string{"team-1", statetest.TokenID(1), statetest.TokenID(3), statetest.TokenID(4), statetest.TokenID(5)}, ",") {
		t.Fatalf("cache holds %s", got)
	}
	if got := dump(open(t, path).State(), 10); got != want {
		t.Fatalf("reopen:\n%s", firstDiff(want, got))
	}
}

// TestMalformedEntityDiscardsSnapshot: an entity that does not decode
// discards the snapshot in progress; the installed state stays.
func TestMalformedEntityDiscardsSnapshot(t *testing.T) {
	r := open(t, filepath.Join(t.TempDir(), "proxy.db"))
	applySnapshot(t, r, 5, 50, 20)
	before := dump(r.State(), 50)
	wc, framed := framedChunk(t, &syncv1.SnapshotChunk{Revision: 9, Entities: []*syncv1.Entity{statetest.Key(60)}})
	if _, err := r.ApplyChunk(wc, framed); err != nil {
		t.Fatal(err)
	}
	body := proto.Clone(statetest.Key(61)).(*syncv1.Entity)
	wc, framed = framedChunk(t, &syncv1.SnapshotChunk{Revision: 9, Seq: 1, Last: true, Entities: []*syncv1.Entity{body}})
	wc.Entities[0] = wc.Entities[0][:len(wc.Entities[0])-3] // cut inside the key
	wc.Prepare()
	if _, err := r.ApplyChunk(wc, framed); !errors.Is(err, state.ErrMalformed) {
		t.Fatalf("malformed entity: %v", err)
	}
	if got := dump(r.State(), 50); got != before || r.Revision() != 5 {
		t.Fatalf("state changed:\n%s", firstDiff(before, got))
	}
	if _, err := r.ApplyChunk(framedChunk(t, &syncv1.SnapshotChunk{Revision: 9, Seq: 1})); !errors.Is(err, ErrSnapshotOrder) {
		t.Fatalf("snapshot still in progress: %v", err)
	}
	applySnapshot(t, r, 10, 50, 20)
}

// TestRestartFromPreviousReleaseCache: a cache as the previous release
// wrote it (chunks encoded by proto.Marshal, entities decoded on load)
// loads into the state a snapshot install gives.
func TestRestartFromPreviousReleaseCache(t *testing.T) {
	dir := t.TempDir()
	c, err := cache.Open(filepath.Join(dir, "old.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.BeginSnapshot(100)
	if err != nil {
		t.Fatal(err)
	}
	r := open(t, filepath.Join(dir, "new.db"))
	err = statetest.Chunks(100, 3000, 700, func(ch *syncv1.SnapshotChunk) error {
		if err := w.Write(ch.Entities); err != nil {
			return err
		}
		_, err := applyChunk(r, ch, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	w.SetKeys(3000)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	blocked := statetest.Key(5)
	blocked.GetKey().Blocked = true
	d := delta(100, 101, blocked, statetest.Tombstone("key", statetest.TokenID(6)), statetest.Key(3005))
	if err := c.ApplyDelta(d); err != nil {
		t.Fatal(err)
	}
	if err := r.ApplyDelta(d); err != nil {
		t.Fatal(err)
	}
	c.Close()
	want := dump(r.State(), 3010)
	if got := dump(open(t, filepath.Join(dir, "old.db")).State(), 3010); got != want {
		t.Fatalf("state from the older cache differs:\n%s", firstDiff(want, got))
	}
	if !strings.Contains(want, "Blocked:true") {
		t.Fatal("blocked key lost")
	}
}
