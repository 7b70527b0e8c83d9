package cache

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

func TestMain(m *testing.M) {
	// Small staging transactions, so that tests cross several of them.
	flushBytes = 8 << 10
	os.Exit(m.Run())
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func open(t *testing.T, path string) *Cache {
	t.Helper()
	c, err := Open(path, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func snapshot(t *testing.T, c *Cache, rev int64, chunks ...[]*syncv1.Entity) {
	t.Helper()
	w, err := c.BeginSnapshot(rev)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chunks {
		if err := w.Write(ch); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

// load returns the stored entities by kind/id, applying what Load yields
// in order (a tombstone removes).
func load(t *testing.T, c *Cache) (int64, bool, map[string]*syncv1.Entity) {
	t.Helper()
	got := map[string]*syncv1.Entity{}
	rev, ok, err := c.Load(func(e *syncv1.Entity) error {
		if e.Deleted {
			delete(got, e.Kind+"/"+e.Id)
			return nil
		}
		got[e.Kind+"/"+e.Id] = proto.Clone(e).(*syncv1.Entity)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rev, ok, got
}

func keys(n int) []*syncv1.Entity {
	out := make([]*syncv1.Entity, n)
	for i := range out {
		out[i] = statetest.Key(i)
	}
	return out
}

func TestReopenKeepsRevisionAndEntities(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	if rev, ok, _ := load(t, c); ok || rev != 0 {
		t.Fatal("new cache has a snapshot")
	}
	if err := c.ApplyDelta(&syncv1.Delta{PrevRevision: 0, Revision: 1}); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("delta before snapshot: %v", err)
	}
	snapshot(t, c, 10, keys(50)[:25], keys(50)[25:], []*syncv1.Entity{statetest.Team(1), statetest.Settings(`{"a":1}`)})
	d := &syncv1.Delta{PrevRevision: 10, Revision: 11, Changes: []*syncv1.Entity{
		statetest.Tombstone("key", statetest.TokenID(3)), statetest.Team(2), statetest.Key(100),
	}}
	if err := c.ApplyDelta(d); err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyDelta(d); !errors.Is(err, ErrRevisionMismatch) {
		t.Fatalf("replayed delta: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Load(func(*syncv1.Entity) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Load after Close: %v", err)
	}

	c = open(t, path)
	rev, ok, got := load(t, c)
	if !ok || rev != 11 {
		t.Fatalf("rev %d ok %v", rev, ok)
	}
	if len(got) != 50-1+1+2+1 {
		t.Fatalf("%d entities", len(got))
	}
	if _, ok := got["key/"+statetest.TokenID(3)]; ok {
		t.Fatal("deleted key came back")
	}
	if !proto.Equal(got["key/"+statetest.TokenID(100)], statetest.Key(100)) || !proto.Equal(got["team/team-2"], statetest.Team(2)) {
		t.Fatal("entity changed through the cache")
	}
	if r, ok, err := c.Revision(); r != 11 || !ok || err != nil {
		t.Fatalf("Revision = %d %v %v", r, ok, err)
	}

	// A second snapshot replaces the first entirely.
	snapshot(t, c, 20, []*syncv1.Entity{statetest.Key(7)})
	rev, _, got = load(t, c)
	if rev != 20 || len(got) != 1 {
		t.Fatalf("after resnapshot: rev %d, %d entities", rev, len(got))
	}
	assertBuckets(t, c, 2) // meta + active only
}

// assertBuckets checks how many top-level buckets the file has.
func assertBuckets(t *testing.T, c *Cache, want int) {
	t.Helper()
	n := 0
	_ = c.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func([]byte, *bolt.Bucket) error { n++; return nil })
	})
	if n != want {
		t.Fatalf("%d buckets, want %d", n, want)
	}
}

func corruptFiles(t *testing.T, path string) []string {
	t.Helper()
	m, _ := filepath.Glob(path + ".corrupt-*")
	return m
}

func expectMovedAside(t *testing.T, path string, content []byte) {
	t.Helper()
	c := open(t, path)
	if _, ok, got := load(t, c); ok || len(got) != 0 {
		t.Fatal("corrupt cache loaded")
	}
	moved := corruptFiles(t, path)
	if len(moved) != 1 {
		t.Fatalf("corrupt files: %v", moved)
	}
	if b, _ := os.ReadFile(moved[0]); content != nil && !bytes.Equal(b, content) {
		t.Fatal("moved file differs from the original")
	}
	// The fresh cache works.
	snapshot(t, c, 3, keys(3))
	if rev, ok, got := load(t, c); rev != 3 || !ok || len(got) != 3 {
		t.Fatal("fresh cache unusable")
	}
}

func TestGarbageFileMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	garbage := bytes.Repeat([]byte("not a bbolt file "), 2000)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	expectMovedAside(t, path, garbage)
}

func TestTinyFileMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	if err := os.WriteFile(path, []byte{1, 2, 3}, 0o600); err != nil {
		t.Fatal(err)
	}
	expectMovedAside(t, path, []byte{1, 2, 3})
}

// validFile writes a cache with n keys and returns its bytes.
func validFile(t *testing.T, path string, n int) []byte {
	t.Helper()
	c, err := Open(path, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	snapshot(t, c, 5, keys(n))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTruncatedFileMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	b := validFile(t, path, 2000)
	// bbolt grows the file ahead of its pages (sparse): cut what the meta
	// page counts, not the file's length.
	used := len(b)
	for _, off := range []int{0, 4096} {
		if m, err := parseMeta(b[off:]); err == nil {
			used = min(used, int(m.pgid)*int(m.pageSize))
		}
	}
	for _, cut := range []int{used / 2, 3 * 4096, 4096 + 100} {
		if err := os.WriteFile(path, b[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		for _, m := range corruptFiles(t, path) {
			os.Remove(m)
		}
		t.Run(fmt.Sprint(cut), func(t *testing.T) { expectMovedAside(t, path, b[:cut]) })
		os.Remove(path)
	}
}

func TestUnknownSchemaMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	validFile(t, path, 10)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte{0, 0, 0, 9}) })
	db.Close()
	expectMovedAside(t, path, nil)
}

// TestSyncedFreelistAccepted: a healthy file whose freelist was persisted
// (another bbolt configuration or tool) still opens.
func TestSyncedFreelistAccepted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	validFile(t, path, 100)
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: false})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte("x"), []byte("y")) })
	db.Close()
	if err := verifyFile(path); err != nil {
		t.Fatal(err)
	}
	c := open(t, path)
	if rev, ok, got := load(t, c); !ok || rev != 5 || len(got) != 100 {
		t.Fatalf("rev %d ok %v n %d", rev, ok, len(got))
	}
}

func TestForeignBboltFileMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("spend")); return err })
	db.Close()
	expectMovedAside(t, path, nil)
}

func TestPartialStagingDiscarded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c, err := Open(path, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	snapshot(t, c, 5, keys(10))
	w, err := c.BeginSnapshot(9)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(keys(500)); err != nil {
		t.Fatal(err)
	}
	// Uncommitted staging is invisible.
	if rev, _, got := load(t, c); rev != 5 || len(got) != 10 {
		t.Fatalf("staging visible: rev %d, %d entities", rev, len(got))
	}
	// "Crash": close without commit or abort.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = open(t, path)
	if rev, _, got := load(t, c); rev != 5 || len(got) != 10 {
		t.Fatalf("after crash: rev %d, %d entities", rev, len(got))
	}
	assertBuckets(t, c, 2)
	if len(corruptFiles(t, path)) != 0 {
		t.Fatal("a crash mid-snapshot is not corruption")
	}

	// Abort drops staging too; Write after Abort fails.
	w, err = c.BeginSnapshot(12)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(keys(20)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(keys(1)); err == nil {
		t.Fatal("Write after Abort")
	}
	assertBuckets(t, c, 2)
	// A new BeginSnapshot discards an abandoned one.
	w1, _ := c.BeginSnapshot(13)
	_ = w1.Write(keys(5))
	w2, _ := c.BeginSnapshot(14)
	if err := w1.Commit(); err == nil {
		t.Fatal("abandoned snapshot committed")
	}
	if err := w2.Write(keys(2)); err != nil {
		t.Fatal(err)
	}
	if err := w2.Commit(); err != nil {
		t.Fatal(err)
	}
	if rev, _, got := load(t, c); rev != 14 || len(got) != 2 {
		t.Fatalf("rev %d, %d entities", rev, len(got))
	}
}

func TestSnapshotWriteOrderAndTombstones(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "c.db"))
	ks := keys(100)
	rand.New(rand.NewPCG(1, 1)).Shuffle(len(ks), func(i, j int) { ks[i], ks[j] = ks[j], ks[i] })
	changed := statetest.Key(5)
	changed.GetKey().Spend = 99
	snapshot(t, c, 1, ks[:50], append(ks[50:], changed, statetest.Tombstone("key", statetest.TokenID(6))))
	_, _, got := load(t, c)
	if len(got) != 99 || got["key/"+statetest.TokenID(5)].GetKey().Spend != 99 {
		t.Fatalf("%d entities", len(got))
	}
}

func TestCorruptEntityLoadError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	snapshot(t, c, 1, keys(3))
	_ = c.db.Update(func(tx *bolt.Tx) error {
		active := tx.Bucket(bucketMeta).Get(keyActive)
		return tx.Bucket(active).Put(entityKey(nil, "key", "zzz"), []byte{0xff, 0xff, 0xff})
	})
	_, _, err := c.Load(func(*syncv1.Entity) error { return nil })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Load = %v", err)
	}
	if err := c.Reset(err); err != nil {
		t.Fatal(err)
	}
	if len(corruptFiles(t, path)) != 1 {
		t.Fatal("not moved aside")
	}
	if _, ok, _ := load(t, c); ok {
		t.Fatal("reset cache has a snapshot")
	}
	stop := errors.New("stop")
	snapshot(t, c, 2, keys(3))
	if _, _, err := c.Load(func(*syncv1.Entity) error { return stop }); err != stop {
		t.Fatalf("callback error: %v", err)
	}
}

func TestLockedFileNotMovedAside(t *testing.T) {
	defer func(d time.Duration) { lockTimeout = d }(lockTimeout)
	lockTimeout = 100 * time.Millisecond
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	snapshot(t, c, 1, keys(1))
	if _, err := Open(path, logger(t)); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if len(corruptFiles(t, path)) != 0 {
		t.Fatal("locked file moved aside")
	}
}

func TestMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "c.db")
	_, err := Open(path, logger(t))
	if err == nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open in a missing directory = %v", err)
	}
}

func TestDirectoryIsNotMovedAside(t *testing.T) {
	path := t.TempDir()
	if _, err := Open(path, logger(t)); err == nil || errors.Is(err, ErrLocked) {
		t.Fatalf("Open(dir) = %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("directory moved")
	}
}

var damageCases = 40 + envInt("CACHE_DAMAGE_CASES")

// TestRandomDamage flips bytes across a valid file: Open must either load it
// or move it aside, never crash, and Load must fail cleanly if at all.
func TestRandomDamage(t *testing.T) {
	dir := t.TempDir()
	orig := validFile(t, filepath.Join(dir, "orig.db"), 3000)
	rng := rand.New(rand.NewPCG(7, 7))
	outcome := map[string]int{}
	defer func() { t.Log(outcome) }()
	for i := range damageCases {
		b := bytes.Clone(orig)
		for range 1 + rng.IntN(8) {
			off := rng.IntN(len(b))
			if i%4 == 0 {
				off = rng.IntN(2 * 4096) // meta pages
			}
			b[off] ^= byte(1 + rng.IntN(255))
		}
		path := filepath.Join(dir, fmt.Sprintf("d%d.db", i))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Open(path, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("case %d: Open = %v", i, err)
		}
		n := 0
		_, ok, err := c.Load(func(*syncv1.Entity) error { n++; return nil })
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("case %d: Load = %v", i, err)
		}
		switch {
		case err != nil:
			outcome["load corrupt"]++
		case !ok:
			outcome["moved aside"]++
		case n == 3000:
			outcome["intact"]++
		default:
			t.Fatalf("case %d: loaded %d of 3000 entities without an error", i, n)
		}
		_ = c.Close()
	}
}

// TestChurnStaysValid: heavy random deltas and reopens never make a healthy
// file look corrupt to the verifier.
func TestChurnStaysValid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c, err := Open(path, logger(t))
	if err != nil {
		t.Fatal(err)
	}
	snapshot(t, c, 1, keys(3000))
	rng := rand.New(rand.NewPCG(3, 3))
	rev := int64(1)
	live := map[int]bool{}
	for i := range 3000 {
		live[i] = true
	}
	for round := range 30 {
		for range 10 {
			var ch []*syncv1.Entity
			for range 50 {
				i := rng.IntN(6000)
				if rng.IntN(2) == 0 {
					ch = append(ch, statetest.Tombstone("key", statetest.TokenID(i)))
					delete(live, i)
				} else {
					ch = append(ch, statetest.Key(i))
					live[i] = true
				}
			}
			if err := c.ApplyDelta(&syncv1.Delta{PrevRevision: rev, Revision: rev + 1, Changes: ch}); err != nil {
				t.Fatal(err)
			}
			rev++
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := verifyFile(path); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if c, err = Open(path, logger(t)); err != nil {
			t.Fatal(err)
		}
	}
	defer c.Close()
	r, _, got := load(t, c)
	if r != rev || len(got) != len(live) {
		t.Fatalf("rev %d/%d, %d entities, want %d", r, rev, len(got), len(live))
	}
	if len(corruptFiles(t, path)) != 0 {
		t.Fatal("healthy file moved aside")
	}
}

func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

// A cache written before money was nano-USD (schema 1) is emptied at Open,
// not moved aside as corrupt: the proxy starts at revision 0 and fetches a
// full snapshot, and never reads the cached micro-USD amounts.
func TestMicroUSDCacheDiscarded(t *testing.T) { testOlderSchemaDiscarded(t, schemaMicroUSD) }

// A cache of the one-value-per-entity layout (schema 2) is emptied too.
func TestPerEntityCacheDiscarded(t *testing.T) { testOlderSchemaDiscarded(t, schemaPerEntity) }

func testOlderSchemaDiscarded(t *testing.T, schema byte) {
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	snapshot(t, c, 7, keys(3))
	_ = c.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{0, 0, 0, schema})
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := open(t, path)
	if rev, ok, got := load(t, c2); ok || rev != 0 || len(got) != 0 {
		t.Fatalf("micro-USD cache loaded: revision %d, ok %v, %d entities", rev, ok, len(got))
	}
	if len(corruptFiles(t, path)) != 0 {
		t.Fatal("an older cache is not corruption")
	}
	snapshot(t, c2, 8, keys(2))
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	c3 := open(t, path)
	if rev, ok, got := load(t, c3); !ok || rev != 8 || len(got) != 2 {
		t.Fatalf("after a new snapshot and reopen: revision %d, ok %v, %d entities", rev, ok, len(got))
	}
}

// A damaged snapshot chunk (its CRC no longer matches) fails Load with
// ErrCorrupt, whichever chunk it is, and Load ends cleanly.
func TestCorruptChunkLoadError(t *testing.T) {
	for _, seq := range []uint32{0, 3, 9} {
		c := open(t, filepath.Join(t.TempDir(), "c.db"))
		ks := keys(100)
		var chunks [][]*syncv1.Entity
		for i := 0; i < len(ks); i += 10 {
			chunks = append(chunks, ks[i:i+10])
		}
		snapshot(t, c, 1, chunks...)
		_ = c.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(tx.Bucket(bucketMeta).Get(keyActive))
			v := bytes.Clone(b.Get(chunkKey(seq)))
			v[len(v)/2] ^= 0x40
			return b.Put(chunkKey(seq), v)
		})
		n := 0
		_, _, err := c.Load(func(*syncv1.Entity) error { n++; return nil })
		if !errors.Is(err, ErrCorrupt) || n > int(seq)*10 {
			t.Fatalf("chunk %d damaged: Load = %v after %d entities", seq, err, n)
		}
	}
}

// Deltas after a snapshot land in the overlay: a reopened cache yields the
// snapshot's chunks, then the changes, and applying them in order gives the
// state (a deleted key stays deleted, a changed one has its new version).
func TestDeltasOverSnapshotChunks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	snapshot(t, c, 1, keys(10), keys(20)[10:])
	changed := statetest.Key(3)
	changed.GetKey().Spend = 42
	if err := c.ApplyDelta(&syncv1.Delta{Revision: 2, PrevRevision: 1, Changes: []*syncv1.Entity{
		changed, statetest.Tombstone("key", statetest.TokenID(4)), statetest.Key(25),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyDelta(&syncv1.Delta{Revision: 3, PrevRevision: 2, Changes: []*syncv1.Entity{
		statetest.Tombstone("key", statetest.TokenID(25)),
	}}); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	c = open(t, path)
	rev, ok, got := load(t, c)
	if !ok || rev != 3 || len(got) != 19 {
		t.Fatalf("revision %d, ok %v, %d entities", rev, ok, len(got))
	}
	if got["key/"+statetest.TokenID(3)].GetKey().GetSpend() != 42 || got["key/"+statetest.TokenID(4)] != nil || got["key/"+statetest.TokenID(25)] != nil {
		t.Fatal("deltas not applied over the snapshot")
	}
	// A new snapshot starts with an empty overlay.
	snapshot(t, c, 5, keys(5))
	if rev, _, got := load(t, c); rev != 5 || len(got) != 5 || got["key/"+statetest.TokenID(3)].GetKey().GetSpend() == 42 {
		t.Fatalf("after a new snapshot: revision %d, %d entities", rev, len(got))
	}
}

// The key count recorded at commit survives a reopen (Load's caller sizes
// its table with it); a cache without one says 0.
func TestKeysHint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	if n := c.KeysHint(); n != 0 {
		t.Fatalf("empty cache: hint %d", n)
	}
	w, err := c.BeginSnapshot(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(keys(3)); err != nil {
		t.Fatal(err)
	}
	w.SetKeys(3)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if n := open(t, path).KeysHint(); n != 3 {
		t.Fatalf("hint %d after reopen, want 3", n)
	}
}

func chunkMsg(t *testing.T, seq int32, ents ...*syncv1.Entity) []byte {
	t.Helper()
	raw, err := proto.Marshal(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{
		Snapshot: &syncv1.SnapshotChunk{Revision: 7, Seq: seq, Entities: ents}}})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestWriteFramedAndReplaceLast: chunks stored from a framed buffer (not
// copied) and chunks replaced after they were written, both while still
// buffered and once flushed to the staging bucket, load as written last.
func TestWriteFramedAndReplaceLast(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "c.db"))
	w, err := c.BeginSnapshot(7)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.ReplaceLast(chunkMsg(t, 0)); err == nil {
		t.Fatal("ReplaceLast before any chunk")
	}
	ks := keys(300)
	framed := append(make([]byte, FrameHeader), chunkMsg(t, 0, ks[:100]...)...)
	if err := w.WriteFramed(framed); err != nil {
		t.Fatal(err)
	}
	// Still buffered (a small chunk): replaced in memory.
	if err := w.ReplaceLast(chunkMsg(t, 0, ks[:99]...)); err != nil {
		t.Fatal(err)
	}
	// Big enough to flush (flushBytes is 8 KiB here): replaced in the bucket.
	if err := w.WriteChunk(chunkMsg(t, 1, ks[100:300]...)); err != nil {
		t.Fatal(err)
	}
	if len(w.vals) != 0 || w.Len() != 2 || w.flushing == nil {
		t.Fatalf("no flush started: %d buffered, %d written", len(w.vals), w.Len())
	}
	if err := w.ReplaceLast(chunkMsg(t, 1, ks[101:300]...)); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFramed(framed); !errors.Is(err, errFinished) {
		t.Fatalf("after commit: %v", err)
	}
	_, _, got := load(t, c)
	if len(got) != 298 || got["key/"+statetest.TokenID(99)] != nil || got["key/"+statetest.TokenID(100)] != nil || got["key/"+statetest.TokenID(299)] == nil {
		t.Fatalf("loaded %d entities", len(got))
	}
}

// TestLoadRawPrepare: LoadRaw's prepare runs on each chunk before chunk
// gets it, chunks come in order, then the overlay; an error from chunk
// ends the load with it.
func TestLoadRawPrepare(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "c.db"))
	var chunks [][]*syncv1.Entity
	for i := range 20 {
		chunks = append(chunks, keys(200)[i*10:i*10+10])
	}
	snapshot(t, c, 7, chunks...)
	if err := c.ApplyDelta(&syncv1.Delta{PrevRevision: 7, Revision: 8, Changes: []*syncv1.Entity{statetest.Team(1)}}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	rev, ok, err := c.LoadRaw(func(raw []byte) any {
		var m syncv1.ControlMessage
		if err := proto.Unmarshal(raw, &m); err != nil {
			return err
		}
		return m.GetSnapshot().GetEntities()[0].GetId()
	}, func(raw []byte, prepared any) error {
		seen = append(seen, prepared.(string))
		return nil
	}, func(e *syncv1.Entity) error {
		seen = append(seen, e.Kind)
		return nil
	})
	if err != nil || !ok || rev != 8 {
		t.Fatal(rev, ok, err)
	}
	want := []string{}
	for i := range 20 {
		want = append(want, statetest.TokenID(i*10))
	}
	want = append(want, "team")
	if strings.Join(seen, ",") != strings.Join(want, ",") {
		t.Fatalf("seen %v", seen)
	}
	stop := errors.New("stop")
	n := 0
	if _, _, err := c.LoadRaw(nil, func([]byte, any) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	}, nil); err != stop || n != 3 {
		t.Fatalf("chunk error: %v after %d", err, n)
	}
}

// TestBackgroundFlushError: a background transaction that fails makes the
// next call fail, and Commit never activates the snapshot.
func TestBackgroundFlushError(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "c.db"))
	snapshot(t, c, 3, keys(5))
	w, err := c.BeginSnapshot(7)
	if err != nil {
		t.Fatal(err)
	}
	// Another snapshot started meanwhile deletes w's staging bucket.
	w2, err := c.BeginSnapshot(8)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteChunk(chunkMsg(t, 0, keys(300)...)); err != nil {
		t.Fatal(err) // the flush runs in the background
	}
	if err := w.Commit(); err == nil || !strings.Contains(err.Error(), "vanished") {
		t.Fatalf("Commit after a failed flush: %v", err)
	}
	if err := w.WriteChunk(chunkMsg(t, 1)); err == nil {
		t.Fatal("write after a failed flush")
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w2.Abort(); err != nil {
		t.Fatal(err)
	}
	if rev, _, got := load(t, c); rev != 3 || len(got) != 5 {
		t.Fatalf("rev %d, %d entities", rev, len(got))
	}
}

// A delta's commit writes the overlay's pages, not the snapshot's chunks:
// before the overlay had a bucket of its own, an entity shared a leaf with
// the last chunk and every delta wrote that chunk again.
func TestDeltaDoesNotRewriteChunks(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "c.db"))
	snapshot(t, c, 1, keys(3000)) // one chunk of a few hundred KB
	rev := int64(1)
	delta := func() {
		t.Helper()
		changed := statetest.Key(7)
		changed.GetKey().Spend = rev
		if err := c.ApplyDelta(&syncv1.Delta{Revision: rev + 1, PrevRevision: rev, Changes: []*syncv1.Entity{changed}}); err != nil {
			t.Fatal(err)
		}
		rev++
	}
	delta() // creates the overlay bucket
	before := c.db.Stats().TxStats
	for range 5 {
		delta()
	}
	after := c.db.Stats().TxStats
	perDelta := (after.GetPageAlloc() - before.GetPageAlloc()) / 5
	if perDelta > 64<<10 {
		t.Fatalf("a one-entity delta allocated %d bytes of pages: the chunk is rewritten", perDelta)
	}
	if _, _, got := load(t, c); got["key/"+statetest.TokenID(7)].GetKey().GetSpend() != rev-1 || len(got) != 3000 {
		t.Fatalf("after the deltas: spend %d, %d entities", got["key/"+statetest.TokenID(7)].GetKey().GetSpend(), len(got))
	}
}

// A cache of the previous release keeps overlay entities in the snapshot
// bucket: Load reads them, a delta to the same entity moves it to the
// overlay bucket, and the overlay wins.
func TestOverlayOfThePreviousReleaseRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	snapshot(t, c, 1, keys(10))
	old := statetest.Key(3)
	old.GetKey().Spend = 11
	gone := statetest.Tombstone("key", statetest.TokenID(4))
	if err := c.db.Update(func(tx *bolt.Tx) error { // as the previous release wrote deltas
		b := tx.Bucket(tx.Bucket(bucketMeta).Get(keyActive))
		for _, e := range []*syncv1.Entity{old, gone} {
			v, err := appendValue(nil, e)
			if err != nil {
				return err
			}
			if err := b.Put(entityKey(nil, e.Kind, e.Id), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	c = open(t, path)
	if _, _, got := load(t, c); len(got) != 9 || got["key/"+statetest.TokenID(3)].GetKey().GetSpend() != 11 {
		t.Fatalf("the previous release's overlay not read: %d entities", len(got))
	}
	newer := statetest.Key(3)
	newer.GetKey().Spend = 22
	if err := c.ApplyDelta(&syncv1.Delta{Revision: 2, PrevRevision: 1, Changes: []*syncv1.Entity{newer}}); err != nil {
		t.Fatal(err)
	}
	if _, _, got := load(t, c); len(got) != 9 || got["key/"+statetest.TokenID(3)].GetKey().GetSpend() != 22 {
		t.Fatalf("the delta did not win over the previous release's overlay: %d entities", len(got))
	}
	_ = c.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(tx.Bucket(bucketMeta).Get(keyActive)).Get(entityKey(nil, "key", statetest.TokenID(3))) != nil {
			t.Fatal("the entity stayed among the chunks after the delta")
		}
		return nil
	})
	// A new snapshot drops the old overlay bucket with its snapshot.
	snapshot(t, c, 5, keys(5))
	assertBuckets(t, c, 2) // meta and the new snapshot
}
