package syncserver

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// keyIDs returns the ids of the key entities of a snapshot, in order, and
// checks every chunk against the limits.
func keyIDs(t *testing.T, sn *snapshot, maxEntities int) []string {
	t.Helper()
	var ids []string
	for i, raw := range sn.chunks {
		var m syncv1.ControlMessage
		if err := proto.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		c := m.GetSnapshot()
		if c.GetSeq() != int32(i) || c.GetLast() != (i == len(sn.chunks)-1) || len(c.GetEntities()) > maxEntities {
			t.Fatalf("chunk %d: seq %d last %v, %d entities", i, c.GetSeq(), c.GetLast(), len(c.GetEntities()))
		}
		for _, e := range c.GetEntities() {
			if e.GetKind() == store.KindKey {
				if e.GetKey().GetTokenId() != e.GetId() || len(e.GetKey().GetKeyHash()) != 32 {
					t.Fatalf("key entity %v", e)
				}
				ids = append(ids, e.GetId())
			}
		}
	}
	return ids
}

// Keys reach the proxies in token-id order (their caches are written in
// arrival order), whatever order the store yields them in.
func TestSnapshotKeysInIDOrder(t *testing.T) {
	st := newMemStore()
	seed(t, st, 200)
	var keys []*store.Key
	_ = st.Snapshot(context.Background(), func(_ int64, r store.Reader) error {
		keys = r.(*memReader).keys
		return nil
	})
	// Ids sharing their first 8 bytes, and shorter ones.
	for _, id := range []string{"key-00000", "key-0000a", "key", "a", "key-0150-x"} {
		k := *keys[0]
		k.TokenID = id
		keys = append(keys, &k)
	}
	byID := func(a, b *store.Key) int {
		switch {
		case a.TokenID < b.TokenID:
			return -1
		case a.TokenID > b.TokenID:
			return 1
		}
		return 0
	}
	sorted := slices.SortedFunc(slices.Values(keys), byID)
	reversed := slices.Clone(sorted)
	slices.Reverse(reversed)
	sortedThenNot := append(slices.Clone(sorted[50:]), sorted[:50]...)
	for name, order := range map[string][]*store.Key{
		"store order": keys, "sorted": sorted, "reversed": reversed, "sorted then not": sortedThenNot,
	} {
		r := &memReader{keys: order}
		sn, err := buildSnapshot(context.Background(), slog.New(slog.DiscardHandler), 9, r, 7, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		ids := keyIDs(t, sn, 7)
		if sn.entities != len(keys) || len(ids) != len(keys) {
			t.Fatalf("%s: %d keys sent, %d counted, want %d", name, len(ids), sn.entities, len(keys))
		}
		// The keys passed on before the first one out of order stay first
		// (a short run: a store's random order rarely rises for long);
		// every later key comes sorted.
		runs := 1
		for i := 1; i < len(ids); i++ {
			if ids[i] <= ids[i-1] {
				runs++
			}
		}
		if runs > 2 || (name == "sorted" && runs != 1) {
			t.Fatalf("%s: keys in %d increasing runs: %v", name, runs, ids)
		}
		if len(slices.Compact(slices.Sorted(slices.Values(ids)))) != len(keys) {
			t.Fatalf("%s: keys repeated", name)
		}
	}
}
