package syncserver

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// gatedReader yields its keys, stopping before key `at` until gate is
// closed, and then fails with fail (if set).
type gatedReader struct {
	*memReader
	at   int
	gate chan struct{}
	fail error
}

func (r *gatedReader) EachKey(ctx context.Context, fn func(store.Key) error) error {
	for i, k := range r.keys {
		if i == r.at {
			<-r.gate
			if r.fail != nil {
				return r.fail
			}
		}
		if err := fn(*k); err != nil {
			return err
		}
	}
	return nil
}

// EachKeyDocs is EachKey's gate for the snapshot builder: one key per
// batch.
func (r *gatedReader) EachKeyDocs(ctx context.Context, fn func([][]byte) error) error {
	for i, k := range r.keys {
		if i == r.at {
			<-r.gate
			if r.fail != nil {
				return r.fail
			}
		}
		if err := fn([][]byte{memKeyDoc(k)}); err != nil {
			return err
		}
	}
	return nil
}

func chunkSeq(t *testing.T, raw []byte) *syncv1.SnapshotChunk {
	t.Helper()
	var m syncv1.ControlMessage
	if err := proto.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m.GetSnapshot()
}

// A stream gets a snapshot's first chunks while the store is still being
// read: the build and the proxy's install overlap.
func TestSnapshotChunksPublishedWhileBuilding(t *testing.T) {
	st := newMemStore()
	seed(t, st, 200)
	var keys []*store.Key
	_ = st.Snapshot(context.Background(), func(_ int64, r store.Reader) error {
		keys = r.(*memReader).keys
		return nil
	})
	r := &gatedReader{memReader: &memReader{keys: keys}, at: 100, gate: make(chan struct{})}
	sn := newSnapshot()
	built := make(chan error, 1)
	go func() {
		err := buildInto(context.Background(), slog.New(slog.DiscardHandler), 9, r, 7, 1<<20, sn)
		sn.finish(err)
		built <- err
	}()
	ctx := context.Background()
	done := make(chan struct{})
	// 100 keys in chunks of 7: 14 full chunks before the gate.
	for i := range 14 {
		raw, ok, err := sn.chunk(ctx, done, i, 5*time.Second)
		if err != nil || !ok {
			t.Fatalf("chunk %d before the build went on: ok %v, err %v", i, ok, err)
		}
		if c := chunkSeq(t, raw); c.GetSeq() != int32(i) || c.GetLast() || c.GetRevision() != 9 {
			t.Fatalf("chunk %d: %v", i, c)
		}
	}
	if _, _, err := sn.chunk(ctx, done, 14, 20*time.Millisecond); !errors.Is(err, errStillBuilding) {
		t.Fatalf("chunk 14 while the build waits: %v, want errStillBuilding", err)
	}
	close(r.gate)
	if err := <-built; err != nil {
		t.Fatal(err)
	}
	n, entities := 0, 0
	for ; ; n++ {
		raw, ok, err := sn.chunk(ctx, done, n, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		c := chunkSeq(t, raw)
		entities += len(c.GetEntities())
		if c.GetSeq() != int32(n) {
			t.Fatalf("chunk %d has seq %d", n, c.GetSeq())
		}
		if last := n == len(sn.chunks)-1; c.GetLast() != last {
			t.Fatalf("chunk %d: last %v", n, c.GetLast())
		}
	}
	if entities != len(keys) || sn.entities != len(keys) || sn.rev() != 9 {
		t.Fatalf("%d chunks, %d entities (counted %d), revision %d; want %d keys at 9", n, entities, sn.entities, sn.rev(), len(keys))
	}
}

// A build that fails after publishing chunks fails the streams sending it
// (they end; the proxies discard the partial snapshot), and the server does
// not cache it.
func TestSnapshotFailingMidBuildEndsStreams(t *testing.T) {
	st := newMemStore()
	seed(t, st, 50)
	var keys []*store.Key
	_ = st.Snapshot(context.Background(), func(_ int64, r store.Reader) error {
		keys = r.(*memReader).keys
		return nil
	})
	boom := errors.New("connection reset")
	r := &gatedReader{memReader: &memReader{keys: keys}, at: 20, gate: make(chan struct{}), fail: boom}
	sn := newSnapshot()
	go func() { sn.finish(buildInto(context.Background(), slog.New(slog.DiscardHandler), 3, r, 7, 1<<20, sn)) }()
	ctx := context.Background()
	if _, ok, err := sn.chunk(ctx, nil, 0, 5*time.Second); !ok || err != nil {
		t.Fatalf("first chunk: %v %v", ok, err)
	}
	close(r.gate)
	for i := 1; ; i++ {
		_, ok, err := sn.chunk(ctx, nil, i, 5*time.Second)
		if errors.Is(err, errSnapshotFailed) && errors.Is(err, boom) {
			break
		}
		if err != nil || !ok {
			t.Fatalf("chunk %d: ok %v, err %v; want the build's failure", i, ok, err)
		}
	}
}

type hintedReader struct{ *memReader }

func (hintedReader) KeysHint(context.Context) int { return 123 }

// A store's key estimate goes out once, on the first chunk holding a key
// (or an earlier one), so that a proxy sizes its key table before adding
// any.
func TestSnapshotKeysHint(t *testing.T) {
	st := newMemStore()
	seed(t, st, 40)
	var mr *memReader
	_ = st.Snapshot(context.Background(), func(_ int64, r store.Reader) error {
		mr = r.(*memReader)
		return nil
	})
	for name, r := range map[string]store.Reader{"hint": hintedReader{mr}, "no hint": mr} {
		sn, err := buildSnapshot(context.Background(), slog.New(slog.DiscardHandler), 4, r, 7, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		hints, keysBefore := 0, 0
		for _, raw := range sn.chunks {
			c := chunkSeq(t, raw)
			if c.GetKeysHint() != 0 {
				hints++
				if c.GetKeysHint() != 123 || keysBefore != 0 {
					t.Fatalf("%s: hint %d after %d keys", name, c.GetKeysHint(), keysBefore)
				}
			}
			for _, e := range c.GetEntities() {
				if e.GetKind() == store.KindKey {
					keysBefore++
				}
			}
		}
		if want := map[string]int{"hint": 1, "no hint": 0}[name]; hints != want || keysBefore != 40 {
			t.Fatalf("%s: %d chunks with a hint, %d keys", name, hints, keysBefore)
		}
	}
}
