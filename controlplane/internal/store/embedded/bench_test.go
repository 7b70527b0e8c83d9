package embedded_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

// realisticKey is a key with the fields a typical generated key carries.
func realisticKey(i int) store.Key {
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	budget, rpm := int64(10_000_000), int64(60)
	k := newKey(id, i)
	k.UserID = "user-" + strconv.Itoa(i%1000)
	k.TeamID = "team-" + strconv.Itoa(i%50)
	k.Models = []string{"gpt-4o-mini", "text-embedding-3-small"}
	k.MaxBudget, k.RPMLimit = &budget, &rpm
	k.BudgetDuration = "30d"
	k.Metadata = json.RawMessage(`{"env":"prod","owner":"team"}`)
	k.CreatedAt = time.Now()
	return k
}

// BenchmarkCreateKey is one key per transaction: each commit is two
// fsyncs, which is what bounds the rate.
func BenchmarkCreateKey(b *testing.B) {
	s, err := embedded.Open(filepath.Join(b.TempDir(), "tollgate.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	i := 0
	for b.Loop() {
		k := realisticKey(i)
		i++
		if err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) }); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMillionKeySnapshot loads TOLLGATE_BIG_KEYS keys (e.g. 1000000) and
// times a snapshot through EachKey. It is skipped unless the variable is set.
func TestMillionKeySnapshot(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("TOLLGATE_BIG_KEYS"))
	if n == 0 {
		t.Skip("set TOLLGATE_BIG_KEYS to run")
	}
	dir := os.Getenv("TOLLGATE_BIG_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := embedded.Open(filepath.Join(dir, "tollgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	start := time.Now()
	const batch = 10_000
	for i := 0; i < n; i += batch {
		err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			for j := i; j < min(i+batch, n); j++ {
				if err := tx.CreateKey(ctx, realisticKey(j)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("loaded %d keys in %v", n, time.Since(start))

	start = time.Now()
	count := 0
	err = s.Snapshot(ctx, func(rev int64, r store.Reader) error {
		return r.EachKey(ctx, func(store.Key) error { count++; return nil })
	})
	if err != nil || count != n {
		t.Fatalf("snapshot saw %d keys: %v", count, err)
	}
	t.Logf("snapshot of %d keys in %v", n, time.Since(start))

	start = time.Now()
	_, total, err := s.Read().ListKeys(ctx, store.KeyFilter{UserID: "user-7"})
	t.Logf("ListKeys(user) total %d in %v (%v)", total, time.Since(start), err)
	start = time.Now()
	_, total, err = s.Read().ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: 100, Size: 100}})
	t.Logf("ListKeys(page 100) total %d in %v (%v)", total, time.Since(start), err)
	start = time.Now()
	for i := 0; i < 100; i++ {
		k := realisticKey(n + i)
		if err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) }); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("100 single-key creates at %d keys: %v each", n, time.Since(start)/100)
}
