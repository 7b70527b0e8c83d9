package syncserver

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// pinger opens a stream whose Hello announces pings every pingMs (0: an
// older proxy that never pings).
func (h *harness) pinger(t *testing.T, id string, rev int64, pingMs int32) *fakeProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+testToken)
	stream, err := h.client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Hello{Hello: &syncv1.Hello{ProxyId: id, Revision: rev, PingIntervalMs: pingMs}}}); err != nil {
		t.Fatal(err)
	}
	p := &fakeProxy{t: t, id: id, stream: stream, cancel: cancel, rev: rev,
		msgs: make(chan *syncv1.ControlMessage, 4096), errc: make(chan error, 1), state: map[string]*syncv1.Entity{}}
	p.startPump()
	return p
}

func waitProxies(t *testing.T, h *harness, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for len(h.srv.Stats().Proxies) != n {
		if time.Now().After(deadline) {
			t.Fatalf("connected proxies %d, want %d", len(h.srv.Stats().Proxies), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A proxy that announced pings and then went silent (a frozen VM, a flow a
// balancer dropped) is dropped without waiting for TCP.
func TestSilentProxyIsDropped(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken, WithProxySilence(300*time.Millisecond))
	p := h.pinger(t, "silent", 0, 50)
	p.waitRev(head, wait)
	start := time.Now()
	for {
		if _, err := p.next(wait); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("silent proxy dropped after %s", took)
	}
	waitProxies(t, h, 0)
}

// A proxy that pings is kept however long it has nothing else to say; one
// that never announced pings is left to TCP keepalive.
func TestPingingAndOldProxiesAreKept(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken, WithProxySilence(300*time.Millisecond))
	p := h.pinger(t, "pinging", 0, 50)
	old := h.pinger(t, "old", 0, 0)
	p.waitRev(head, wait)
	old.waitRev(head, wait)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			if err := p.stream.Send(&syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Ping{Ping: &syncv1.Ping{Revision: head}}}); err != nil {
				return
			}
		}
	}()
	p.quiet(time.Second)
	old.quiet(100 * time.Millisecond)
	close(stop)
	<-done
	waitProxies(t, h, 2)
}

// While the first answer is being prepared (a slow snapshot build), a proxy
// that pings gets liveness-only heartbeats, so its stall watchdog does not
// give up; an older proxy gets none (it would take one for the answer).
func TestLivenessHeartbeatsBeforeTheFirstAnswer(t *testing.T) {
	st := newMemStore()
	seed(t, st, 1)
	st.snapshotDelay = 600 * time.Millisecond
	head, _ := st.Head(context.Background())
	h := newHarness(t, st, testToken)
	p := h.pinger(t, "new", 0, 50)
	old := h.pinger(t, "old", 0, 0)
	m := p.mustNext(wait)
	if hb := m.GetHeartbeat(); hb == nil || !hb.GetLivenessOnly() || hb.GetHeadRevision() != 0 {
		t.Fatalf("first message %v, want a liveness-only heartbeat", m)
	}
	p.waitRev(head, wait)
	m = old.mustNext(wait)
	if m.GetSnapshot() == nil {
		t.Fatalf("older proxy's first message %v, want its snapshot", m)
	}
	old.waitRev(head, wait)
	// Once answered, heartbeats are real ones again.
	for {
		m := p.mustNext(wait)
		if hb := m.GetHeartbeat(); hb != nil && !hb.GetLivenessOnly() {
			if hb.GetHeadRevision() != head {
				t.Fatalf("heartbeat head %d, want %d", hb.GetHeadRevision(), head)
			}
			break
		}
	}
}
