package syncserver

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
)

// A snapshot built from EachKeyDocs holds exactly the key entities the old
// build (EachKey, keyScratch.fill, proto.Marshal) produced, on both
// stores, for keys with every field set, keys the fast path leaves to the
// old way, and a key left out for its malformed hash.
func TestSnapshotKeysMatchOldBuild(t *testing.T) {
	stores := map[string]func(t *testing.T) store.Store{
		"postgres": func(t *testing.T) store.Store { return pgtest.NewStore(t) },
		"embedded": func(t *testing.T) store.Store {
			st, err := embedded.Open(filepath.Join(t.TempDir(), "tollgate.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			keys := wireKeys()
			write(t, st, func(ctx context.Context, tx store.Tx) error {
				for i, k := range keys {
					k.TokenID = fmt.Sprintf("tok-%03d", i)
					if k.KeyAlias != "" {
						k.KeyAlias += k.TokenID
					}
					if len(k.KeyHash) == 64 {
						k.KeyHash = sha256Hex(k.TokenID + strings.ToLower(k.KeyHash))
					} else {
						k.KeyHash += k.TokenID // malformed, and unique
					}
					if err := tx.CreateKey(ctx, k); err != nil {
						return err
					}
				}
				return nil
			})
			err := st.Snapshot(t.Context(), func(rev int64, r store.Reader) error {
				want := map[string]*syncv1.Entity{}
				skipped := 0
				if err := r.EachKey(t.Context(), func(k store.Key) error {
					e, err := keyEntity(&k)
					if err != nil {
						skipped++
						return nil
					}
					want[e.Id] = e
					return nil
				}); err != nil {
					return err
				}
				sn, err := buildSnapshot(t.Context(), slog.New(slog.DiscardHandler), rev, r, 7, 1<<20)
				if err != nil {
					return err
				}
				got := map[string]*syncv1.Entity{}
				for _, raw := range sn.chunks {
					var m syncv1.ControlMessage
					if err := proto.Unmarshal(raw, &m); err != nil {
						return err
					}
					for _, e := range m.GetSnapshot().GetEntities() {
						if e.GetKind() == store.KindKey {
							got[e.Id] = e
						}
					}
				}
				if skipped == 0 || sn.skipped != skipped {
					t.Errorf("snapshot left out %d keys, the old build %d", sn.skipped, skipped)
				}
				if len(got) != len(want) || len(want) < len(keys)-skipped {
					t.Fatalf("snapshot holds %d keys, the old build %d", len(got), len(want))
				}
				for id, w := range want {
					if !proto.Equal(w, got[id]) {
						t.Errorf("key %s:\nold build %v\nnew build %v", id, w, got[id])
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
