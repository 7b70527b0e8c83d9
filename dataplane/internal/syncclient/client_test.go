package syncclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// fakeApplier records what it is fed and enforces revision order.
type fakeApplier struct {
	mu      sync.Mutex
	rev     int64
	pending int64 // revision of a partial snapshot, -1 none
	aborts  int
	deltas  []int64
}

func (f *fakeApplier) Revision() int64 { f.mu.Lock(); defer f.mu.Unlock(); return f.rev }
func (f *fakeApplier) ApplyChunk(c *state.Chunk, framed []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(framed) < 4 {
		return false, errors.New("no spare bytes before the message")
	}
	raw := framed[4:]
	// The client hands over the bytes the chunk came in, for the cache,
	// and the chunk's entities encoded.
	var m syncv1.ControlMessage
	if err := proto.Unmarshal(raw, &m); err != nil {
		return false, fmt.Errorf("raw bytes do not decode: %v", err)
	}
	s := m.GetSnapshot()
	if s.GetRevision() != c.Revision || s.GetSeq() != c.Seq || s.GetLast() != c.Last || s.GetKeysHint() != c.KeysHint || len(s.GetEntities()) != len(c.Entities) {
		return false, errors.New("raw bytes do not hold the chunk")
	}
	for i, e := range s.GetEntities() {
		var d syncv1.Entity
		if err := proto.Unmarshal(c.Entities[i], &d); err != nil || !proto.Equal(&d, e) {
			return false, fmt.Errorf("entity %d differs from the raw bytes (err %v)", i, err)
		}
	}
	if c.Last {
		f.rev, f.pending = c.Revision, -1
		return true, nil
	}
	f.pending = c.Revision
	return false, nil
}
func (f *fakeApplier) AbortSnapshot() { f.mu.Lock(); f.aborts++; f.pending = -1; f.mu.Unlock() }
func (f *fakeApplier) ApplyDelta(d *syncv1.Delta) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.GetPrevRevision() != f.rev {
		return errors.New("gap")
	}
	f.rev = d.GetRevision()
	f.deltas = append(f.deltas, d.GetRevision())
	return nil
}

// fakeServer scripts one answer per session.
type fakeServer struct {
	syncv1.UnimplementedSyncServiceServer
	mu       sync.Mutex
	hellos   []int64
	sessions []func(stream grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]) error
	tokens   []string
	onHello  func(*syncv1.Hello)
}

func (s *fakeServer) Sync(stream grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.tokens = append(s.tokens, md.Get("authorization")...)
	s.hellos = append(s.hellos, m.GetHello().GetRevision())
	if s.onHello != nil {
		s.onHello(m.GetHello())
	}
	var fn func(grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]) error
	if len(s.sessions) > 0 {
		fn, s.sessions = s.sessions[0], s.sessions[1:]
	}
	s.mu.Unlock()
	if fn == nil {
		<-stream.Context().Done()
		return nil
	}
	return fn(stream)
}

func (s *fakeServer) Hellos() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.hellos...)
}

func start(t *testing.T, srv *fakeServer, a Applier) *Client {
	return startWith(t, srv, a, nil)
}

// startWith runs a client against srv; dials, when set, counts the
// transport connections it opens.
func startWith(t *testing.T, srv *fakeServer, a Applier, dials *atomic.Int64, opts ...func(*Options)) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	syncv1.RegisterSyncServiceServer(g, srv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	o := Options{
		Addr: "passthrough:///bufnet", Token: "tok", ProxyID: "p1",
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		DialOptions: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				if dials != nil {
					dials.Add(1)
				}
				return lis.DialContext(ctx)
			}),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		},
	}
	for _, fn := range opts {
		fn(&o)
	}
	c := New(a, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type sendFn = grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]

func snap(rev int64, seq int32, last bool) *syncv1.ControlMessage {
	return &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{Snapshot: &syncv1.SnapshotChunk{Revision: rev, Seq: seq, Last: last}}}
}

func delta(rev int64) *syncv1.ControlMessage {
	return &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Delta{Delta: &syncv1.Delta{Revision: rev, PrevRevision: rev - 1}}}
}

func TestSnapshotThenDeltas(t *testing.T) {
	srv := &fakeServer{sessions: []func(sendFn) error{func(s sendFn) error {
		for _, m := range []*syncv1.ControlMessage{snap(5, 0, false), snap(5, 1, true), delta(6), delta(7)} {
			if err := s.Send(m); err != nil {
				return err
			}
		}
		<-s.Context().Done()
		return nil
	}}}
	a := &fakeApplier{}
	c := start(t, srv, a)
	eventually(t, "revision 7", func() bool { return a.Revision() == 7 })
	if st := c.Status(); !st.Connected || st.Revision != 7 {
		t.Fatalf("status %+v", st)
	}
	if srv.tokens[0] != "Bearer tok" {
		t.Fatalf("token %q", srv.tokens)
	}
}

func TestGapResubscribesFromHeldRevision(t *testing.T) {
	srv := &fakeServer{sessions: []func(sendFn) error{
		func(s sendFn) error {
			_ = s.Send(snap(3, 0, true))
			_ = s.Send(delta(4))
			// Revision 5 is missing: the client must drop the stream.
			_ = s.Send(delta(6))
			<-s.Context().Done()
			return nil
		},
		func(s sendFn) error {
			_ = s.Send(delta(5))
			_ = s.Send(delta(6))
			<-s.Context().Done()
			return nil
		},
	}}
	a := &fakeApplier{}
	start(t, srv, a)
	eventually(t, "revision 6", func() bool { return a.Revision() == 6 })
	if h := srv.Hellos(); len(h) < 2 || h[0] != 0 || h[1] != 4 {
		t.Fatalf("hellos %v, want [0 4 ...]", h)
	}
}

func TestBrokenSnapshotIsAbortedAndRetried(t *testing.T) {
	srv := &fakeServer{sessions: []func(sendFn) error{
		func(s sendFn) error {
			_ = s.Send(snap(9, 0, false))
			return status.Error(codes.Unavailable, "going away")
		},
		func(s sendFn) error {
			_ = s.Send(snap(9, 0, false))
			_ = s.Send(snap(9, 1, true))
			<-s.Context().Done()
			return nil
		},
	}}
	a := &fakeApplier{}
	start(t, srv, a)
	eventually(t, "revision 9", func() bool { return a.Revision() == 9 })
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aborts < 1 {
		t.Fatal("partial snapshot not aborted")
	}
}

func TestUnauthenticatedKeepsRetrying(t *testing.T) {
	var n int
	var mu sync.Mutex
	refuse := func(s sendFn) error {
		mu.Lock()
		n++
		mu.Unlock()
		return status.Error(codes.Unauthenticated, "bad sync token")
	}
	srv := &fakeServer{sessions: []func(sendFn) error{refuse, refuse, func(s sendFn) error {
		_ = s.Send(snap(1, 0, true))
		<-s.Context().Done()
		return nil
	}}}
	a := &fakeApplier{}
	start(t, srv, a)
	eventually(t, "revision 1 after refusals", func() bool { return a.Revision() == 1 })
}

func TestHeartbeatMarksCurrent(t *testing.T) {
	srv := &fakeServer{sessions: []func(sendFn) error{func(s sendFn) error {
		_ = s.Send(snap(2, 0, true))
		_ = s.Send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{HeadRevision: 2}}})
		<-s.Context().Done()
		return nil
	}}}
	a := &fakeApplier{}
	c := start(t, srv, a)
	eventually(t, "heartbeat", func() bool { st := c.Status(); return st.Head == 2 && !st.CurrentAt.IsZero() })
}

// A stream that goes silent without closing (a frozen control plane, a
// black-holed flow) is given up after StallTimeout and the client redials
// on a new transport connection, never the frozen one.
func TestSilentStreamRedialsOnNewConnection(t *testing.T) {
	srv := &fakeServer{sessions: []func(sendFn) error{
		func(s sendFn) error {
			_ = s.Send(snap(3, 0, true))
			<-s.Context().Done() // silent, open
			return nil
		},
		func(s sendFn) error {
			_ = s.Send(delta(4))
			<-s.Context().Done()
			return nil
		},
	}}
	a := &fakeApplier{}
	var dials atomic.Int64
	startWith(t, srv, a, &dials, func(o *Options) {
		o.StallTimeout, o.FirstMessageTimeout, o.PingInterval = 300*time.Millisecond, 5*time.Second, time.Hour
	})
	eventually(t, "revision 4 after the stall", func() bool { return a.Revision() == 4 })
	if h := srv.Hellos(); len(h) < 2 || h[0] != 0 || h[1] != 3 {
		t.Fatalf("hellos %v, want [0 3 ...]", h)
	}
	if n := dials.Load(); n < 2 {
		t.Fatalf("%d transport connections, want a new one for the second session", n)
	}
}

// onPing calls f for every Ping the proxy sends on s, until the stream ends.
func onPing(s sendFn, f func()) {
	for {
		m, err := s.Recv()
		if err != nil {
			return
		}
		if m.GetPing() != nil {
			f()
		}
	}
}

// The client pings while the stream lives, and liveness-only heartbeats
// keep a session alive while the first answer is prepared without being
// taken for it.
func TestPingsAndLivenessHeartbeats(t *testing.T) {
	var pings atomic.Int64
	var pingMs atomic.Int64
	srv := &fakeServer{sessions: []func(sendFn) error{func(s sendFn) error {
		go onPing(s, func() { pings.Add(1) })
		// Liveness-only heartbeats for longer than the stall timeout
		// before the answer.
		for range 40 {
			if err := s.Send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{LivenessOnly: true}}}); err != nil {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := s.Send(snap(2, 0, true)); err != nil {
			return err
		}
		// Keep the session alive as a control plane does: on a loaded
		// machine the checks below can take longer than the stall
		// timeout, and a silent server would be dropped (and the status
		// read from the next session).
		hb := &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{HeadRevision: 2}}}
		for {
			select {
			case <-s.Context().Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			if err := s.Send(hb); err != nil {
				return err
			}
		}
	}}}
	srv.onHello = func(h *syncv1.Hello) { pingMs.Store(int64(h.GetPingIntervalMs())) }
	a := &fakeApplier{}
	c := startWith(t, srv, a, nil, func(o *Options) {
		o.StallTimeout, o.FirstMessageTimeout, o.PingInterval = 300*time.Millisecond, 5*time.Second, 20*time.Millisecond
	})
	eventually(t, "revision 2", func() bool { return a.Revision() == 2 })
	if h := srv.Hellos(); len(h) != 1 {
		t.Fatalf("hellos %v: the session was dropped while liveness heartbeats came", h)
	}
	if pingMs.Load() != 20 {
		t.Fatalf("hello ping_interval_ms %d, want 20", pingMs.Load())
	}
	eventually(t, "pings", func() bool { return pings.Load() >= 3 })
	if st := c.Status(); !st.Connected || st.Head != 2 {
		t.Fatalf("status %+v", st)
	}
}

// A heartbeat is answered with a ping at once when nothing went to the
// control plane for half a PingInterval (the answer rides the heartbeat's
// wake-up), and not when something did; the proxy's own timer waits 1.5
// PingIntervals after its last message.
func TestHeartbeatAnsweredWithAPing(t *testing.T) {
	const every = 2 * time.Second
	pings := make(chan time.Time, 16)
	hb := &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{HeadRevision: 2}}}
	srv := &fakeServer{sessions: []func(sendFn) error{func(s sendFn) error {
		go onPing(s, func() { pings <- time.Now() })
		if err := s.Send(snap(2, 0, true)); err != nil {
			return err
		}
		time.Sleep(every/2 + 200*time.Millisecond) // past half an interval
		if err := s.Send(hb); err != nil {
			return err
		}
		<-s.Context().Done()
		return nil
	}}}
	a := &fakeApplier{}
	start := time.Now()
	startWith(t, srv, a, nil, func(o *Options) {
		o.StallTimeout, o.PingInterval = time.Hour, every
	})
	var first time.Time
	select {
	case first = <-pings:
	case <-time.After(5 * time.Second):
		t.Fatal("no ping")
	}
	// The heartbeat came ~1.2 s after the start; the timer alone would
	// ping 1.5 intervals (3 s) after the start, and before this change
	// pinged after one (2 s).
	if first.Sub(start) >= every-every/8 {
		t.Fatalf("first ping %s after the start: the heartbeat at ~1.2 s was not answered", first.Sub(start))
	}
	// No further ping before 1.5 intervals after this one.
	select {
	case p := <-pings:
		if p.Sub(first) < every+every/4 {
			t.Fatalf("a second ping %s after the first, want the fallback's 1.5 intervals", p.Sub(first))
		}
	case <-time.After(every + every/2 + 2*time.Second):
		t.Fatal("no ping from the fallback timer")
	}
}

// A new session that hears nothing at all (its connection landed on a
// frozen backend) is given up after FirstMessageTimeout, not StallTimeout.
func TestSilentNewSessionGivenUpEarly(t *testing.T) {
	srv := &fakeServer{sessions: []func(sendFn) error{
		func(s sendFn) error {
			<-s.Context().Done() // never answers
			return nil
		},
		func(s sendFn) error {
			_ = s.Send(snap(5, 0, true))
			<-s.Context().Done()
			return nil
		},
	}}
	a := &fakeApplier{}
	startWith(t, srv, a, nil, func(o *Options) {
		o.StallTimeout, o.FirstMessageTimeout, o.PingInterval = time.Hour, 200*time.Millisecond, time.Hour
	})
	eventually(t, "revision 5 from the second session", func() bool { return a.Revision() == 5 })
}

// A control plane slower to answer than FirstMessageTimeout (an older one
// that sends no liveness-only heartbeat while it builds a snapshot, or a
// slow link) still gets its answer through: each session given up for
// hearing nothing doubles the wait.
func TestFirstMessageWaitGrows(t *testing.T) {
	slow := func(s sendFn) error {
		select {
		case <-time.After(400 * time.Millisecond):
		case <-s.Context().Done():
			return nil
		}
		_ = s.Send(snap(7, 0, true))
		<-s.Context().Done()
		return nil
	}
	srv := &fakeServer{sessions: []func(sendFn) error{slow, slow, slow, slow, slow, slow}}
	a := &fakeApplier{}
	startWith(t, srv, a, nil, func(o *Options) {
		o.StallTimeout, o.FirstMessageTimeout, o.PingInterval = time.Hour, 150*time.Millisecond, time.Hour
	})
	eventually(t, "revision 7 from a slow control plane", func() bool { return a.Revision() == 7 })
	if n := len(srv.Hellos()); n < 2 {
		t.Fatalf("%d sessions: the first one should have been given up", n)
	}
}
