package postgres_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var base = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func key(id string, at time.Time) store.Key {
	return store.Key{TokenID: id, KeyHash: hash("sk-" + id), KeyName: "sk-..." + id, CreatedAt: at, UpdatedAt: at}
}

// write runs fn in a transaction and fails the test on error.
func write(t testing.TB, s store.Store, fn func(ctx context.Context, tx store.Tx) error) {
	t.Helper()
	if err := s.ReadWriteTx(context.Background(), fn); err != nil {
		t.Fatalf("ReadWriteTx: %v", err)
	}
}

// waitHead waits until s's head reaches want.
func waitHead(t testing.TB, s store.Store, want int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		head, err := s.Head(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if head >= want {
			if head > want {
				t.Fatalf("head %d, want %d", head, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("head stuck at %d, want %d", head, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// allChanges reads the whole change log in pages and checks the revisions
// are exactly 1..n.
func allChanges(t testing.TB, s store.Store) []store.ChangeSet {
	t.Helper()
	var all []store.ChangeSet
	for {
		after := int64(len(all))
		sets, err := s.Changes(context.Background(), after, 97)
		if err != nil {
			t.Fatal(err)
		}
		if len(sets) == 0 {
			break
		}
		for i, cs := range sets {
			if want := after + int64(i) + 1; cs.Revision != want {
				t.Fatalf("revision %d where %d was expected: the log has a gap", cs.Revision, want)
			}
			if len(cs.Changes) == 0 {
				t.Fatalf("revision %d has no changes", cs.Revision)
			}
		}
		all = append(all, sets...)
	}
	return all
}

func changeIDs(cs store.ChangeSet) []string {
	var ids []string
	for _, c := range cs.Changes {
		ids = append(ids, fmt.Sprintf("%s/%s/%s", c.Kind, c.ID, c.Op))
	}
	return ids
}
