package syncserver

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

const wait = 10 * time.Second

// openRaw opens a stream with the given authorization header ("" for
// none), sends first and returns the error that ends the stream.
func (h *harness) openRaw(t *testing.T, authz string, first *syncv1.ProxyMessage) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if authz != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", authz)
	}
	stream, err := h.client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// io.EOF: the server already ended the stream; Recv has the status.
	if err := stream.Send(first); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

func hello(id string, rev int64) *syncv1.ProxyMessage {
	return &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Hello{Hello: &syncv1.Hello{ProxyId: id, Revision: rev}}}
}

func TestSyncRefusesMissingOrWrongToken(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	h := newHarness(t, st, testToken)
	for _, tc := range []struct{ name, authz string }{
		{"missing", ""},
		{"wrong", "Bearer wrong-token-value-xyz"},
		{"prefix of the right one", "Bearer " + testToken[:len(testToken)-1]},
		{"not bearer", "Basic " + testToken},
		{"empty bearer", "Bearer "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := h.openRaw(t, tc.authz, hello("proxy-"+strings.ReplaceAll(tc.name, " ", "-"), 0))
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("got %v, want Unauthenticated", err)
			}
		})
	}
	logs := h.logs.String()
	for _, want := range []string{"refused stream", "proxy_id=proxy-wrong", "peer=127.0.0.1:", "proxy_id=proxy-missing"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	for _, secret := range []string{"wrong-token-value-xyz", testToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain a presented token %q:\n%s", secret, logs)
		}
	}
	if n := len(h.srv.Stats().Proxies); n != 0 {
		t.Errorf("%d refused proxies registered", n)
	}
}

func TestSyncRightTokenIsAccepted(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	h := newHarness(t, st, testToken)
	// The scheme is case-insensitive (RFC 7235).
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "bearer "+testToken), wait)
	defer cancel()
	stream, err := h.client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(hello("p", 0)); err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil || m.GetSnapshot() == nil {
		t.Fatalf("got %v, %v; want a snapshot chunk", m, err)
	}
}

func TestSyncWithoutServerTokenRefusesEveryStream(t *testing.T) {
	st := newMemStore()
	h := newHarness(t, st, "")
	for _, authz := range []string{"", "Bearer ", "Bearer anything"} {
		err := h.openRaw(t, authz, hello("p", 0))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--sync-token") {
			t.Fatalf("authz %q: got %v, want FailedPrecondition naming --sync-token", authz, err)
		}
	}
}

func TestSyncFirstMessageMustBeHello(t *testing.T) {
	h := newHarness(t, newMemStore(), testToken)
	err := h.openRaw(t, "Bearer "+testToken, &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Applied{Applied: &syncv1.Applied{Revision: 3}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	err = h.openRaw(t, "Bearer "+testToken, hello("p", -1))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative revision: got %v, want InvalidArgument", err)
	}
	err = h.openRaw(t, "Bearer "+testToken, hello(strings.Repeat("x", maxIDLen+1), 0))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("long proxy id: got %v, want InvalidArgument", err)
	}
}

func TestSyncHelloTimeout(t *testing.T) {
	h := newHarness(t, newMemStore(), testToken, WithHelloTimeout(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+testToken), wait)
	defer cancel()
	stream, err := h.client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
}

func TestNewProxyGetsChunkedSnapshotThenDeltas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st store.Store) {
		seed(t, st, 23) // + settings, model, org, team, user = 28 entities
		h := newHarness(t, st, testToken, WithChunkLimits(5, 0))
		head := waitStoreHead(t, st)
		p := h.connect("new", testToken, 0, true)
		p.waitRev(head, wait)
		chunks := 0
		for _, raw := range p.received {
			if bytes.HasPrefix(raw, []byte{0x0a}) { // ControlMessage.snapshot
				chunks++
			}
		}
		if chunks != 6 || len(p.snapshots) != 1 || p.snapshots[0] != head {
			t.Fatalf("got %d chunks, snapshots %v; want 6 chunks of one snapshot at %d", chunks, p.snapshots, head)
		}
		if len(p.state) != 28 {
			t.Fatalf("snapshot holds %d entities, want 28", len(p.state))
		}
		if m := p.mustNext(wait); m.GetHeartbeat() == nil {
			t.Fatalf("after the snapshot got %v, want a heartbeat at once", m)
		} else if m.GetHeartbeat().GetHeadRevision() != head {
			t.Fatalf("heartbeat head %d, want %d", m.GetHeartbeat().GetHeadRevision(), head)
		}
		p.assertState(st)

		_, r1 := addKey(t, st, "key-new")
		k, err := st.Read().GetKey(context.Background(), "key-0001")
		if err != nil {
			t.Fatal(err)
		}
		k.Blocked = true
		r2 := write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, k) })
		r3 := write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "key-0002") })
		p.waitRev(r3, wait)
		if want := []int64{r1, r2, r3}; fmt.Sprint(p.deltas) != fmt.Sprint(want) {
			t.Fatalf("deltas %v, want %v", p.deltas, want)
		}
		p.assertState(st)
		if !p.state["key/key-0001"].GetKey().GetBlocked() {
			t.Error("blocked key not blocked on the proxy")
		}
		if _, ok := p.state["key/key-0002"]; ok {
			t.Error("deleted key still on the proxy")
		}
	})
}

// waitStoreHead returns the head once every committed write is numbered.
func waitStoreHead(t testing.TB, st store.Store) int64 {
	t.Helper()
	ctx := context.Background()
	var prev int64 = -1
	for range 500 {
		h, err := st.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h == prev && h > 0 {
			return h
		}
		prev = h
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no head")
	return 0
}

func TestProxyAtHeadGetsHeartbeatsThenDeltas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st store.Store) {
		seed(t, st, 3)
		head := waitStoreHead(t, st)
		h := newHarness(t, st, testToken)
		p := h.connect("current", testToken, head, true)
		if m := p.mustNext(wait); m.GetHeartbeat() == nil || m.GetHeartbeat().GetHeadRevision() != head {
			t.Fatalf("first answer %v, want a heartbeat at head %d", m, head)
		}
		p.quiet(350 * time.Millisecond) // ~3 heartbeats, nothing else
		if len(p.heartbeats) < 3 {      // the first one and at least two ticks
			t.Errorf("%d heartbeats in 350ms at a 100ms interval", len(p.heartbeats))
		}
		_, r := addKey(t, st, "key-x")
		p.waitRev(r, wait)
		if len(p.snapshots) != 0 || fmt.Sprint(p.deltas) != fmt.Sprint([]int64{head + 1}) || r != head+1 {
			t.Fatalf("snapshots %v deltas %v, want only delta %d", p.snapshots, p.deltas, head+1)
		}
	})
}

func TestProxyBehindGetsExactlyTheMissingDeltas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st store.Store) {
		seed(t, st, 2)
		base := waitStoreHead(t, st)
		for i := range 6 {
			addKey(t, st, fmt.Sprintf("later-%d", i))
		}
		head := base + 6
		for _, tc := range []struct {
			name string
			opts []Option
		}{
			{"from the ring", nil},
			{"from the store", []Option{WithRing(2, 0)}}, // the stream falls behind the ring
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarness(t, st, testToken, tc.opts...)
				p := h.connect("behind", testToken, base+2, true)
				p.waitRev(head, wait)
				if m := p.mustNext(wait); m.GetHeartbeat() == nil {
					t.Fatalf("after catching up got %v, want a heartbeat", m)
				}
				want := []int64{base + 3, base + 4, base + 5, base + 6}
				if len(p.snapshots) != 0 || fmt.Sprint(p.deltas) != fmt.Sprint(want) {
					t.Fatalf("snapshots %v deltas %v, want deltas %v", p.snapshots, p.deltas, want)
				}
				p.quiet(250 * time.Millisecond)
			})
		}
	})
}

func TestProxyBehindCompactedLogGetsSnapshot(t *testing.T) {
	st := newMemStore()
	seed(t, st, 2)
	for i := range 5 {
		addKey(t, st, fmt.Sprintf("later-%d", i))
	}
	st.compact(4) // revisions 1..4 gone; a proxy at 2 cannot be caught up
	h := newHarness(t, st, testToken)
	p := h.connect("far-behind", testToken, 2, true)
	p.waitRev(6, wait)
	if len(p.snapshots) != 1 || p.snapshots[0] != 6 {
		t.Fatalf("snapshots %v, want one at 6", p.snapshots)
	}
	p.assertState(st)
	// At Oldest-1 the deltas are still there.
	p2 := h.connect("just-in-time", testToken, 4, true)
	p2.waitRev(6, wait)
	if len(p2.snapshots) != 0 || fmt.Sprint(p2.deltas) != "[5 6]" {
		t.Fatalf("snapshots %v deltas %v, want deltas [5 6]", p2.snapshots, p2.deltas)
	}
}

func TestProxyAheadGetsSnapshot(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st store.Store) {
		seed(t, st, 4)
		head := waitStoreHead(t, st)
		h := newHarness(t, st, testToken) // ahead-wait 300ms
		start := time.Now()
		p := h.connect("ahead", testToken, head+5, true)
		for len(p.snapshots) == 0 {
			p.mustNext(wait)
		}
		if len(p.snapshots) != 1 || p.snapshots[0] != head || p.rev != head {
			t.Fatalf("snapshots %v at rev %d, want one snapshot at %d", p.snapshots, p.rev, head)
		}
		if el := time.Since(start); el < 250*time.Millisecond {
			t.Errorf("snapshot after %s: the head was not given time to catch up", el)
		}
		p.assertState(st)
		if !strings.Contains(h.logs.String(), "ahead of this control plane") {
			t.Error("the ahead decision is not logged")
		}
	})
}

// A proxy served by another replica may hold a revision this replica has not
// seen yet; when the head reaches it within the wait, it is current.
func TestProxyAheadOfLaggingReplicaIsNotResnapshotted(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	h := newHarness(t, st, testToken, WithAheadWait(3*time.Second))
	p := h.connect("ahead-by-2", testToken, 3, true)
	time.Sleep(50 * time.Millisecond)
	addKey(t, st, "k2")
	addKey(t, st, "k3")
	if m := p.mustNext(wait); m.GetHeartbeat() == nil {
		t.Fatalf("first answer %v, want a heartbeat (proxy is current)", m)
	}
	p.quiet(200 * time.Millisecond)
	addKey(t, st, "k4")
	p.waitRev(4, wait)
	if len(p.snapshots) != 0 || fmt.Sprint(p.deltas) != "[4]" {
		t.Fatalf("snapshots %v deltas %v, want delta [4] only", p.snapshots, p.deltas)
	}
}

func TestSnapshotAndDeltasNeverCarryPlaintext(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st store.Store) {
		plain := seed(t, st, 40)
		// A regenerated key: its old secret is honoured for a while.
		old := plain[0]
		k, err := st.Read().GetKey(context.Background(), "key-0000")
		if err != nil {
			t.Fatal(err)
		}
		fresh := newPlaintext()
		plain = append(plain, fresh)
		k.PreviousHashes = []store.PreviousHash{{KeyHash: k.KeyHash, ValidUntil: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}}
		k.KeyHash = sha256Hex(fresh)
		write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, k) })
		head := waitStoreHead(t, st)

		h := newHarness(t, st, testToken)
		p := h.connect("grep", testToken, 0, true)
		p.waitRev(head, wait)
		p2 := h.connect("grep-deltas", testToken, head, true)
		p2.mustNext(wait)
		late, r := addKey(t, st, "late")
		plain = append(plain, late)
		p.waitRev(r, wait)
		p2.waitRev(r, wait)

		all := bytes.Join(append(p.received, p2.received...), nil)
		all = append(all, []byte(h.logs.String())...)
		for _, pt := range plain {
			for _, needle := range []string{pt, strings.TrimPrefix(pt, "sk-"), pt[len(pt)-16:]} {
				if bytes.Contains(all, []byte(needle)) {
					t.Fatalf("plaintext key material %q found in what was sent or logged", needle)
				}
			}
		}
		for _, secret := range []string{masterKeyValue, dbURLValue, "hunter2"} {
			if bytes.Contains(all, []byte(secret)) {
				t.Fatalf("control-plane secret %q was synced", secret)
			}
		}
		// The check can see what is there: hashes as 32 raw bytes, the
		// model's credential reference, the remaining settings.
		oldHash, _ := hex.DecodeString(sha256Hex(old))
		newHash, _ := hex.DecodeString(sha256Hex(fresh))
		for _, want := range [][]byte{oldHash, newHash, []byte("os.environ/OPENAI_API_KEY"), []byte("service_account_settings")} {
			if !bytes.Contains(all, want) {
				t.Errorf("expected %q in the synced bytes", want)
			}
		}
		key := p.state["key/key-0000"].GetKey()
		if !bytes.Equal(key.GetKeyHash(), newHash) || len(key.GetPreviousHashes()) != 1 || !bytes.Equal(key.GetPreviousHashes()[0].GetKeyHash(), oldHash) {
			t.Errorf("regenerated key synced as %v", key)
		}
	})
}

// A control plane restart with many proxies attached builds the snapshot
// once, not once per proxy.
func TestManyProxiesAfterRestartShareOneSnapshotBuild(t *testing.T) {
	st := newMemStore()
	seed(t, st, 500)
	head, _ := st.Head(context.Background())

	// The previous incarnation served everyone; the new one starts cold.
	before := newHarness(t, st, testToken)
	before.connect("warm", testToken, 0, true).waitRev(head, wait)
	before.stop()
	st.snapshots.Store(0)

	st.snapshotDelay = 300 * time.Millisecond // all 50 arrive while it builds
	var builds atomic.Int64
	h := newHarness(t, st, testToken, WithSnapshotHook(func(SnapshotInfo) { builds.Add(1) }))
	const n = 50
	proxies := make([]*fakeProxy, n)
	for i := range proxies {
		proxies[i] = h.connectOwn(fmt.Sprintf("proxy-%02d", i), 0, true)
	}
	for _, p := range proxies {
		p.waitRev(head, wait)
		if len(p.snapshots) != 1 || p.snapshots[0] != head {
			t.Fatalf("%s: snapshots %v, want one at %d", p.id, p.snapshots, head)
		}
	}
	if b, s := builds.Load(), st.snapshots.Load(); b != 1 || s != 1 {
		t.Fatalf("%d snapshot builds (%d store snapshots) for %d proxies, want 1", b, s, n)
	}
	if got := len(h.srv.Stats().Proxies); got != n {
		t.Errorf("Stats lists %d proxies, want %d", got, n)
	}

	// A second wave after a few writes reuses the cached snapshot and
	// catches up with deltas.
	var last int64
	for i := range 3 {
		_, last = addKey(t, st, fmt.Sprintf("after-%d", i))
	}
	for i := range 5 {
		p := h.connectOwn(fmt.Sprintf("late-%02d", i), 0, true)
		p.waitRev(last, wait)
		if fmt.Sprint(p.snapshots) != fmt.Sprint([]int64{head}) || fmt.Sprint(p.deltas) != fmt.Sprint([]int64{head + 1, head + 2, head + 3}) {
			t.Fatalf("%s: snapshots %v deltas %v; want the cached snapshot at %d then 3 deltas", p.id, p.snapshots, p.deltas, head)
		}
		p.assertState(st)
	}
	if b := builds.Load(); b != 1 {
		t.Fatalf("%d builds after the second wave, want 1", b)
	}
	if strings.Count(h.logs.String(), "snapshot built") != 1 {
		t.Error("want exactly one 'snapshot built' log line")
	}
}

// connectOwn connects a proxy over its own client connection, as separate
// proxy processes would (flow control is per connection).
func (h *harness) connectOwn(id string, rev int64, pump bool, dialOpts ...grpc.DialOption) *fakeProxy {
	h.t.Helper()
	target := h.conn.Target()
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dialOpts...)...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	saved := h.client
	h.client = syncv1.NewSyncServiceClient(conn)
	defer func() { h.client = saved }()
	p := h.connect(id, testToken, rev, pump)
	p.conn = conn
	return p
}

func TestSlowConsumerDoesNotBlockOthers(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken, WithRing(16, 0))
	// The slow proxy never reads; small fixed windows make its stream block
	// after ~64 KiB.
	slow := h.connectOwn("slow", head, false, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	fast := h.connectOwn("fast", head, true)
	fast.mustNext(wait) // heartbeat: connected

	big := json.RawMessage(`{"blob":"` + strings.Repeat("x", 32<<10) + `"}`)
	var last int64
	start := time.Now()
	for i := range 200 {
		k := testKey(fmt.Sprintf("big-%03d", i), newPlaintext())
		k.Metadata = big
		last = write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) })
	}
	fast.waitRev(last, wait)
	t.Logf("fast proxy received %d deltas (6.4 MB) in %s", len(fast.deltas), time.Since(start))

	var slowSent int64
	for _, ps := range h.srv.Stats().Proxies {
		if ps.ID == "slow" {
			slowSent = ps.SentRevision
		}
	}
	if slowSent >= last {
		t.Fatalf("slow proxy was sent everything (%d): the test did not exercise a blocked stream", slowSent)
	}
	t.Logf("slow proxy blocked at revision %d of %d", slowSent, last)

	// Once it reads, it catches up in order (beyond the ring: from the store).
	slow.startPump()
	slow.waitRev(last, wait)
	if len(slow.deltas) != int(last-head) {
		t.Fatalf("slow proxy got %d deltas, want %d", len(slow.deltas), last-head)
	}
}

func TestCompactionUnderLaggingStreamAbortsIt(t *testing.T) {
	// The stream must still be behind when the log it needs is compacted.
	// It reads one change set at a time (withBatch(1)) and its proxy reads
	// nothing until after the compaction, but on a loaded machine the
	// transport sometimes lets it catch up first; then there is nothing to
	// test, and the scenario runs again.
	for attempt := 1; ; attempt++ {
		if compactUnderLaggingStream(t) {
			return
		}
		if attempt == 5 {
			t.Fatal("in 5 attempts the stream never lagged behind the compaction")
		}
		t.Logf("attempt %d: the stream caught up before the compaction; again", attempt)
	}
}

// compactUnderLaggingStream reports false when the stream was not behind
// the compaction (it received every change); a lagging stream must end
// Aborted.
func compactUnderLaggingStream(t *testing.T) bool {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken, WithRing(4, 0), withBatch(1))
	slow := h.connectOwn("lagging", head, false, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	big := json.RawMessage(`{"blob":"` + strings.Repeat("x", 32<<10) + `"}`)
	var last int64
	for i := range 50 {
		k := testKey(fmt.Sprintf("big-%03d", i), newPlaintext())
		k.Metadata = big
		last = write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) })
	}
	st.compact(last - 1)
	slow.startPump()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := slow.next(wait)
		if err != nil {
			if status.Code(err) != codes.Aborted {
				t.Fatalf("stream ended with %v, want Aborted", err)
			}
			if slow.rev >= last {
				t.Fatal("aborted although it had every change")
			}
			return true
		}
		if slow.rev >= last {
			return false
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream at revision %d (compacted to %d) still open after 30 s, want Aborted", slow.rev, last-1)
		}
	}
}

func TestCancelEndsStreamsWithoutLeaks(t *testing.T) {
	st := newMemStore()
	seed(t, st, 100)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken)
	h.connectOwn("warmup", head, true).mustNext(wait)
	settle := func(limit int) int {
		var n int
		for range 250 {
			if n = runtime.NumGoroutine(); n <= limit {
				return n
			}
			time.Sleep(20 * time.Millisecond)
		}
		return n
	}
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	var ps []*fakeProxy
	for i := range 10 {
		p := h.connectOwn(fmt.Sprintf("p%d", i), 0, true)
		p.waitRev(head, wait)
		ps = append(ps, p)
	}
	if n := runtime.NumGoroutine(); n <= base {
		t.Fatalf("goroutines %d with 10 streams, base %d: the count is not measuring anything", n, base)
	}
	for _, p := range ps {
		p.cancel()
		var err error
		for err == nil {
			_, err = p.next(wait)
		}
		if status.Code(err) != codes.Canceled {
			t.Errorf("%s ended with %v, want Canceled", p.id, err)
		}
		p.conn.Close()
	}
	deadline := time.Now().Add(wait)
	for len(h.srv.Stats().Proxies) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d proxies still registered", len(h.srv.Stats().Proxies))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := settle(base); n > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after cancel, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
	if !strings.Contains(h.logs.String(), "proxy disconnected") {
		t.Error("disconnects are not logged")
	}
}

func TestCloseEndsStreams(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken)
	p := h.connect("p", testToken, head, true)
	p.mustNext(wait)
	h.srv.Close()
	for {
		if _, err := p.next(wait); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want Unavailable", err)
			}
			break
		}
	}
	if err := h.openRaw(t, "Bearer "+testToken, hello("late", 0)); status.Code(err) != codes.Unavailable {
		t.Fatalf("after Close: got %v, want Unavailable", err)
	}
}

func TestStatsReportsProxies(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken)
	p := h.connect("stats-proxy", testToken, 0, true)
	p.waitRev(head, wait)
	if err := p.stream.Send(&syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Applied{Applied: &syncv1.Applied{Revision: head}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		s := h.srv.Stats()
		if len(s.Proxies) == 1 && s.Proxies[0].AppliedRevision == head {
			ps := s.Proxies[0]
			if ps.ID != "stats-proxy" || ps.SentRevision != head || ps.HelloRevision != 0 || ps.Version != "test" || !strings.HasPrefix(ps.Peer, "127.0.0.1:") {
				t.Fatalf("stats %+v", ps)
			}
			if s.Head != head || s.SnapshotRevision != head || s.SnapshotBuilds != 1 || s.SnapshotBytes == 0 {
				t.Fatalf("stats %+v", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	logs := h.logs.String()
	for _, want := range []string{"proxy connected", "proxy_id=stats-proxy", "answer=snapshot", "snapshot_revision=" + fmt.Sprint(head)} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestStoreFailureGivesUnavailable(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	for i := range 5 {
		addKey(t, st, fmt.Sprint(i))
	}
	h := newHarness(t, st, testToken, WithRing(2, 0))
	time.Sleep(100 * time.Millisecond) // Run has positioned the ring
	st.failChanges.Store(true)
	err := h.openRaw(t, "Bearer "+testToken, hello("p", 1)) // behind the ring: reads the store
	if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), errInjected.Error()) {
		t.Fatalf("got %v, want a generic Unavailable", err)
	}
	if !strings.Contains(h.logs.String(), errInjected.Error()) {
		t.Error("the cause is not logged")
	}
}

// Snapshot builds are shared, so the first requester leaving must not fail
// the others.
func TestSnapshotBuildSurvivesItsRequesterLeaving(t *testing.T) {
	st := newMemStore()
	seed(t, st, 10)
	head, _ := st.Head(context.Background())
	st.snapshotDelay = 300 * time.Millisecond
	h := newHarness(t, st, testToken)
	first := h.connect("first", testToken, 0, true)
	time.Sleep(50 * time.Millisecond)
	second := h.connect("second", testToken, 0, true)
	first.cancel()
	second.waitRev(head, wait)
	if len(second.snapshots) != 1 {
		t.Fatalf("second proxy: snapshots %v", second.snapshots)
	}
}

func TestReaderRecoversFromStoreErrors(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken)
	p := h.connect("p", testToken, head, true)
	p.mustNext(wait)
	st.failChanges.Store(true)
	_, r1 := addKey(t, st, "during-outage")
	p.quiet(200 * time.Millisecond) // heartbeats continue, no delta can be read
	st.failChanges.Store(false)
	_, r2 := addKey(t, st, "after-outage")
	p.waitRev(r2, wait)
	if fmt.Sprint(p.deltas) != fmt.Sprint([]int64{r1, r2}) {
		t.Fatalf("deltas %v, want [%d %d]", p.deltas, r1, r2)
	}
	logs := h.logs.String()
	if strings.Count(logs, "reading change log") != 1 || !strings.Contains(logs, "change log readable again") {
		t.Errorf("want one failure line and one recovery line:\n%s", logs)
	}
}

func TestIdleSnapshotCacheIsDropped(t *testing.T) {
	st := newMemStore()
	seed(t, st, 5)
	head, _ := st.Head(context.Background())
	// An idle time the first check cannot miss on a loaded machine (CI,
	// -race: 150 ms passed between the proxy's last chunk and the check).
	h := newHarness(t, st, testToken, WithSnapshotReuse(100, time.Second))
	h.connect("p", testToken, 0, true).waitRev(head, wait)
	if got := h.srv.Stats().SnapshotRevision; got != head {
		t.Fatalf("cached snapshot at %d, want %d", got, head)
	}
	deadline := time.Now().Add(wait)
	for h.srv.Stats().SnapshotRevision != -1 {
		if time.Now().After(deadline) {
			t.Fatal("idle snapshot never dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Fan-out reads each change set from the store once, not once per stream.
func TestDeltaFanoutReadsTheStoreOnce(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken)
	const proxies, writes = 20, 10
	var ps []*fakeProxy
	for i := range proxies {
		p := h.connectOwn(fmt.Sprintf("p%d", i), head, true)
		p.mustNext(wait)
		ps = append(ps, p)
	}
	before := st.changesCalls.Load()
	start := time.Now()
	var last int64
	for i := range writes {
		_, last = addKey(t, st, fmt.Sprint(i))
	}
	for _, p := range ps {
		p.waitRev(last, wait)
	}
	reads := st.changesCalls.Load() - before
	polls := int64(time.Since(start)/(50*time.Millisecond)) + 1
	if limit := 2*writes + polls; reads > limit {
		t.Fatalf("%d store reads for %d change sets to %d proxies (limit %d)", reads, writes, proxies, limit)
	}
	t.Logf("%d store reads for %d change sets to %d proxies", reads, writes, proxies)
}

// While deltas reach a proxy more often than every half heartbeat
// interval, the heartbeats they make redundant are skipped; the proxy is
// never left silent for its stall timeout (3 intervals), and heartbeats
// resume when the deltas stop. (The bounds leave room for a loaded 2-core
// machine stalling the writer: without the skip all 8 ticks send one.)
func TestHeartbeatsSkippedWhileDeltasFlow(t *testing.T) {
	st := newMemStore()
	seed(t, st, 2)
	head := waitStoreHead(t, st)
	h := newHarness(t, st, testToken) // heartbeat every 100 ms
	p := h.connect("busy", testToken, head, true)
	if m := p.mustNext(wait); m.GetHeartbeat() == nil {
		t.Fatalf("first answer %v, want a heartbeat", m)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			addKey(t, st, fmt.Sprintf("flow-%d", i))
		}
	}()
	var beats, deltas int
	last := time.Now()
	var maxGap time.Duration
	for end := time.Now().Add(800 * time.Millisecond); time.Now().Before(end); {
		m := p.mustNext(wait)
		maxGap = max(maxGap, time.Since(last))
		last = time.Now()
		switch {
		case m.GetHeartbeat() != nil:
			beats++
		case m.GetDelta() != nil:
			deltas++
		}
	}
	close(stop)
	<-done
	if deltas < 20 {
		t.Fatalf("only %d deltas in 800 ms", deltas)
	}
	if beats > 4 { // 8 ticks; a stall of the writer may let some through
		t.Errorf("%d heartbeats in 800 ms with a delta every 20 ms, want them skipped", beats)
	}
	if maxGap > 300*time.Millisecond {
		t.Errorf("the proxy heard nothing for %v (interval 100 ms)", maxGap)
	}
	before := len(p.heartbeats)
	p.quiet(350 * time.Millisecond)
	if len(p.heartbeats)-before < 2 {
		t.Errorf("%d heartbeats in 350 ms after the deltas stopped", len(p.heartbeats)-before)
	}
}
