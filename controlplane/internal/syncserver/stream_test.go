package syncserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// mockStream is a server stream that checks the protocol's invariants on
// every Send, on the exact bytes the server would put on the wire.
type mockStream struct {
	grpc.ServerStream
	ctx  context.Context
	recv chan *syncv1.ProxyMessage

	mu        sync.Mutex
	p         *fakeProxy
	wire      [][]byte
	sends     int
	failAfter int // Send fails once this many succeeded (0: never)
	changed   chan struct{}
}

var errSendFailed = errors.New("connection reset by peer")

func newMockStream(t *testing.T, ctx context.Context, token string) *mockStream {
	md := metadata.Pairs("authorization", "Bearer "+token)
	ctx = metadata.NewIncomingContext(ctx, md)
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4711}})
	return &mockStream{ctx: ctx, recv: make(chan *syncv1.ProxyMessage, 16), changed: make(chan struct{}, 1),
		p: &fakeProxy{t: t, id: "mock", state: map[string]*syncv1.Entity{}}}
}

func (m *mockStream) Context() context.Context { return m.ctx }

func (m *mockStream) Recv() (*syncv1.ProxyMessage, error) {
	select {
	case msg, ok := <-m.recv:
		if !ok {
			return nil, io.EOF
		}
		return msg, nil
	case <-m.ctx.Done():
		return nil, status.FromContextError(m.ctx.Err()).Err()
	}
}

func (m *mockStream) Send(msg *syncv1.ControlMessage) error {
	raw, err := proto.Marshal(msg) // what the proto codec writes
	if err != nil {
		m.p.t.Errorf("Send of an unencodable message: %v", err)
		return err
	}
	var decoded syncv1.ControlMessage
	if err := proto.Unmarshal(raw, &decoded); err != nil {
		m.p.t.Errorf("Send of undecodable bytes: %v", err)
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failAfter > 0 && m.sends >= m.failAfter {
		return errSendFailed
	}
	m.sends++
	m.wire = append(m.wire, raw)
	m.p.apply(&decoded) // fails the test on a broken invariant
	select {
	case m.changed <- struct{}{}:
	default:
	}
	return nil
}

func (m *mockStream) rev() (int64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.p.rev, m.p.inSnap
}

func (m *mockStream) waitRev(t *testing.T, rev int64) {
	t.Helper()
	deadline := time.After(wait)
	for {
		if r, in := m.rev(); r >= rev && !in {
			return
		}
		select {
		case <-m.changed:
		case <-deadline:
			r, _ := m.rev()
			t.Fatalf("mock stream at %d, want %d", r, rev)
		}
	}
}

func startServer(t *testing.T, st store.Store, opts ...Option) *Server {
	t.Helper()
	opts = append(append([]Option{WithLogger(slog.New(slog.DiscardHandler))}, fastOptions()...), opts...)
	srv := New(st, testToken, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv
}

// Writes racing with a snapshot: the proxy sees a complete snapshot, then
// every later change set exactly once, in order, and ends equal to the store.
func TestStreamInvariantsUnderConcurrentWrites(t *testing.T) {
	st := newMemStore()
	plain := seed(t, st, 200)
	st.snapshotDelay = 50 * time.Millisecond
	srv := startServer(t, st, WithChunkLimits(20, 0), WithRing(8, 0))

	ctx, cancel := context.WithCancel(context.Background())
	ms := newMockStream(t, ctx, testToken)
	ms.recv <- hello("mock", 0)
	result := make(chan error, 1)
	go func() { result <- srv.Sync(ms) }()

	var last int64
	for i := range 100 {
		p, rev := addKey(t, st, fmt.Sprintf("w-%03d", i))
		plain = append(plain, p)
		last = rev
		if i%10 == 0 {
			k, _ := st.Read().GetKey(context.Background(), fmt.Sprintf("key-%04d", i))
			k.Blocked = true
			last = write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, k) })
		}
	}
	ms.waitRev(t, last)
	cancel()
	if err := <-result; status.Code(err) != codes.Canceled {
		t.Fatalf("Sync ended with %v, want Canceled", err)
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.p.assertState(st)
	all := bytes.Join(ms.wire, nil)
	for _, p := range plain {
		if bytes.Contains(all, []byte(p)) {
			t.Fatal("plaintext key on the wire")
		}
	}
	if len(srv.Stats().Proxies) != 0 {
		t.Error("the ended stream is still listed")
	}
}

func TestStreamSendErrorEndsStream(t *testing.T) {
	st := newMemStore()
	seed(t, st, 10)
	srv := startServer(t, st, WithChunkLimits(1, 0))
	ms := newMockStream(t, context.Background(), testToken)
	ms.failAfter = 3
	ms.recv <- hello("mock", 0)
	done := make(chan error, 1)
	go func() { done <- srv.Sync(ms) }()
	select {
	case err := <-done:
		if !errors.Is(err, errSendFailed) {
			t.Fatalf("Sync ended with %v, want the send error", err)
		}
	case <-time.After(wait):
		t.Fatal("Sync did not end after a failed Send")
	}
	if len(srv.Stats().Proxies) != 0 {
		t.Error("the failed stream is still listed")
	}
}

// A proxy that half-closes its side keeps receiving.
func TestStreamKeepsSendingAfterProxyCloseSend(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	srv := startServer(t, st)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ms := newMockStream(t, ctx, testToken)
	ms.p.rev = head
	ms.recv <- hello("mock", head)
	close(ms.recv)
	go func() { _ = srv.Sync(ms) }()
	_, rev := addKey(t, st, "k")
	ms.waitRev(t, rev)
}
