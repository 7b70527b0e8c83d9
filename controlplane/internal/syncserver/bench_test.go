package syncserver

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

const benchKeys = 1_000_000

var bench struct {
	once sync.Once
	st   store.Store
}

// benchStore holds a million keys shaped like real ones (hash, alias,
// owner, models, budget, rpm, per-model limit, small metadata).
func benchStore(b *testing.B) store.Store {
	bench.once.Do(func() {
		start := time.Now()
		st := newMemStore()
		seed(b, st, 0)
		keys := make([]store.Key, benchKeys)
		for i := range keys {
			keys[i] = testKey(fmt.Sprintf("tok-%07d", i), newPlaintext())
		}
		st.loadKeys(keys)
		bench.st = st
		b.Logf("loaded %d keys in %s", benchKeys, time.Since(start).Round(time.Millisecond))
	})
	return bench.st
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// BenchmarkSnapshot1MKeys builds the snapshot of a million keys (cold cache)
// and streams it over loopback gRPC to 1 and to 10 proxies at once (one
// build, shared encoded chunks). Clients use default options: every chunk
// fits gRPC's default 4 MiB receive limit.
func BenchmarkSnapshot1MKeys(b *testing.B) {
	st := benchStore(b)
	for _, tc := range []struct {
		proxies int
		decode  bool
	}{{1, true}, {1, false}, {10, false}} {
		proxies := tc.proxies
		client := map[bool]string{true: "decode", false: "raw"}[tc.decode]
		b.Run(fmt.Sprintf("proxies=%d/client=%s", proxies, client), func(b *testing.B) {
			var (
				mu    sync.Mutex
				info  SnapshotInfo
				total time.Duration
				heap  uint64
			)
			for b.Loop() {
				base := heapInUse()
				h := newHarness(b, st, testToken, WithLogger(slog.New(slog.DiscardHandler)),
					WithSnapshotHook(func(i SnapshotInfo) { mu.Lock(); info = i; mu.Unlock() }))
				<-h.srv.ready
				start := time.Now()
				var wg sync.WaitGroup
				errs := make(chan error, proxies)
				for range proxies {
					wg.Go(func() { errs <- receiveSnapshot(h.conn.Target(), tc.decode) })
				}
				wg.Wait()
				total = time.Since(start)
				close(errs)
				for err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
				heap = heapInUse() - base // the cached snapshot
				h.stop()
			}
			mu.Lock()
			defer mu.Unlock()
			b.ReportMetric(info.Duration.Seconds(), "build-s")
			b.ReportMetric(total.Seconds(), "build+stream-s")
			b.ReportMetric(float64(info.Bytes)/(1<<20), "snapshot-MiB")
			b.ReportMetric(float64(info.Chunks), "chunks")
			b.ReportMetric(float64(heap)/(1<<20), "cached-heap-MiB")
			b.ReportMetric(float64(info.Bytes)/float64(info.Entities), "B/entity")
		})
	}
}

// receiveSnapshot connects as a new proxy over its own connection and reads
// until the last chunk, checking the entity count. Without decode the
// client only scans the wire bytes, so that the figure is the server's and
// the transport's cost, not a Go proxy's unmarshalling on the same 2 cores.
func receiveSnapshot(target string, decode bool) error {
	if !decode {
		return receiveRaw(target, benchKeys)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+testToken))
	defer cancel()
	stream, err := syncv1.NewSyncServiceClient(conn).Sync(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(hello("bench", 0)); err != nil {
		return err
	}
	n := 0
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		c := m.GetSnapshot()
		n += len(c.GetEntities())
		if c.GetLast() {
			break
		}
	}
	if n < benchKeys {
		return fmt.Errorf("received %d entities, want ≥ %d", n, benchKeys)
	}
	return nil
}

// BenchmarkSnapshotBuild1MKeys is the build alone: store scan, conversion
// and encoding, with allocations.
func BenchmarkSnapshotBuild1MKeys(b *testing.B) {
	st := benchStore(b)
	log := slog.New(slog.DiscardHandler)
	b.ReportAllocs()
	for b.Loop() {
		err := st.Snapshot(context.Background(), func(rev int64, r store.Reader) error {
			_, err := buildSnapshot(context.Background(), log, rev, r, 5000, 3<<20)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDeltaFanout measures one change set reaching 50 proxies: encoded
// once by the reader, copied by each stream.
func BenchmarkDeltaFanout50(b *testing.B) {
	st := newMemStore()
	seed(b, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(b, st, testToken, WithLogger(slog.New(slog.DiscardHandler)), WithHeartbeatInterval(time.Hour))
	const n = 50
	var ps []*fakeProxy
	for i := range n {
		p := h.connectOwn(fmt.Sprintf("p%d", i), head, true)
		p.mustNext(wait) // heartbeat
		ps = append(ps, p)
	}
	i := 0
	for b.Loop() {
		i++
		_, rev := addKey(b, st, fmt.Sprintf("fan-%d", i))
		for _, p := range ps {
			p.waitRev(rev, wait)
		}
	}
	b.ReportMetric(float64(st.changesCalls.Load())/float64(i), "store-reads/delta")
}

// rawCodec sends proto messages and receives bytes untouched.
type rawCodec struct{}

type rawMsg struct{ b []byte }

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) ([]byte, error) {
	return proto.Marshal(v.(proto.Message))
}
func (rawCodec) Unmarshal(data []byte, v any) error {
	v.(*rawMsg).b = data
	return nil
}

func receiveRaw(target string, want int) error {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+testToken))
	defer cancel()
	stream, err := conn.NewStream(ctx, &syncv1.SyncService_ServiceDesc.Streams[0], syncv1.SyncService_Sync_FullMethodName,
		grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	if err := stream.SendMsg(hello("bench", 0)); err != nil {
		return err
	}
	n := 0
	for {
		var m rawMsg
		if err := stream.RecvMsg(&m); err != nil {
			return err
		}
		chunk, last := snapshotChunk(m.b)
		n += chunk
		if last {
			break
		}
	}
	if n < want {
		return fmt.Errorf("received %d entities, want ≥ %d", n, want)
	}
	return nil
}

// snapshotChunk scans a ControlMessage for its snapshot chunk's entity
// count and last flag, without decoding the entities.
func snapshotChunk(b []byte) (entities int, last bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			body, n := protowire.ConsumeBytes(b)
			b = b[n:]
			for len(body) > 0 {
				num, typ, n := protowire.ConsumeTag(body)
				body = body[n:]
				if num == 3 {
					v, n := protowire.ConsumeVarint(body)
					last = v != 0
					body = body[n:]
					continue
				}
				if num == 4 {
					entities++
				}
				body = body[protowire.ConsumeFieldValue(num, typ, body):]
			}
			continue
		}
		b = b[protowire.ConsumeFieldValue(num, typ, b):]
	}
	return entities, last
}

// BenchmarkSnapshotPostgres is the build and one raw stream against the
// Postgres backend, whose Each* decodes a JSON document per row. Loading
// takes minutes, so it runs only with TOLLGATE_BENCH_PG_KEYS=<n> set.
func BenchmarkSnapshotPostgres(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("TOLLGATE_BENCH_PG_KEYS"))
	if n <= 0 {
		b.Skip("set TOLLGATE_BENCH_PG_KEYS to the number of keys")
	}
	st := pgtest.NewStore(b)
	seed(b, st, 0)
	start := time.Now()
	const perTx = 5000
	for i := 0; i < n; i += perTx {
		write(b, st, func(ctx context.Context, tx store.Tx) error {
			for j := i; j < min(i+perTx, n); j++ {
				if err := tx.CreateKey(ctx, testKey(fmt.Sprintf("tok-%07d", j), newPlaintext())); err != nil {
					return err
				}
			}
			return nil
		})
	}
	b.Logf("loaded %d keys into Postgres in %s", n, time.Since(start).Round(time.Second))
	var (
		mu   sync.Mutex
		info SnapshotInfo
	)
	for b.Loop() {
		h := newHarness(b, st, testToken, WithLogger(slog.New(slog.DiscardHandler)),
			WithSnapshotHook(func(i SnapshotInfo) { mu.Lock(); info = i; mu.Unlock() }))
		<-h.srv.ready
		start := time.Now()
		if err := receiveRaw(h.conn.Target(), n); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "build+stream-s")
		h.stop()
	}
	mu.Lock()
	defer mu.Unlock()
	b.ReportMetric(info.Duration.Seconds(), "build-s")
	b.ReportMetric(float64(info.Bytes)/(1<<20), "snapshot-MiB")
}

// BenchmarkSnapshotBuildPostgresURL builds the snapshot of an existing,
// already seeded Postgres database (TOLLGATE_BENCH_PG_URL, e.g. a clone of
// deploy/bench/scale.sh's SEEDED template) and reports the build's CPU
// time next to its wall time. No stream: the build alone, as the control
// plane runs it for the first proxy. With TOLLGATE_BENCH_SCAN_ONLY set it
// only reads the key documents (the store's share of the build).
//
//	psql postgres://postgres@127.0.0.1:5432/postgres -c 'CREATE DATABASE snapbench TEMPLATE tollgate_seeded_big_1000000'
//	TOLLGATE_BENCH_PG_URL='postgres://postgres@127.0.0.1:5432/snapbench?sslmode=disable' \
//	    go test ./controlplane/internal/syncserver -run '^$' -bench SnapshotBuildPostgresURL -benchtime 3x
func BenchmarkSnapshotBuildPostgresURL(b *testing.B) {
	u := os.Getenv("TOLLGATE_BENCH_PG_URL")
	if u == "" {
		b.Skip("set TOLLGATE_BENCH_PG_URL to a seeded database")
	}
	st, err := postgres.Open(context.Background(), u, postgres.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	var entities, bytes int
	var cpu time.Duration
	for b.Loop() {
		c0 := processCPU()
		err := st.Snapshot(context.Background(), func(rev int64, r store.Reader) error {
			if os.Getenv("TOLLGATE_BENCH_SCAN_ONLY") != "" {
				return r.EachKeyDocs(context.Background(), func(docs [][]byte) error { entities += len(docs); return nil })
			}
			sn, err := buildSnapshot(context.Background(), log, rev, r, 5000, 3<<20)
			if err == nil {
				entities, bytes = sn.entities, int(sn.bytes)
			}
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		cpu += processCPU() - c0
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	b.ReportMetric(float64(entities), "entities")
	b.ReportMetric(float64(bytes)/(1<<20), "snapshot-MiB")
}

// processCPU is the user+system CPU this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
