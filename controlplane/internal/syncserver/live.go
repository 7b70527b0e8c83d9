package syncserver

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// markAnswered stops the liveness-only heartbeats: the first answer is
// about to be sent.
func (c *conn) markAnswered() {
	c.liveMu.Lock()
	c.answered = true
	c.liveMu.Unlock()
}

// watchLiveness starts, for a proxy that announced pings, the two halves of
// stream liveness beyond TCP:
//
//   - until the first answer starts, a liveness-only heartbeat at once and
//     then every heartbeat interval, so that the proxy's watchdog (1.5s
//     for the first message, 3s after) does not give up while a snapshot
//     is being built or the head awaited;
//   - a watchdog that drops the stream once the proxy has been silent for
//     the silence timeout while the receiving goroutine waited for it. The
//     proxy leaves the lease membership at once: the handler may still be
//     blocked in a Send on a frozen flow, which only gRPC keepalive ends.
//
// Both goroutines end with ctx.
func (s *Server) watchLiveness(ctx context.Context, stream syncStream, c *conn) {
	if c.pingEvery <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(s.o.heartbeat)
		defer t.Stop()
		for first := true; ; first = false {
			if !first {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
			c.liveMu.Lock()
			if c.answered {
				c.liveMu.Unlock()
				return
			}
			err := stream.Send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{
				ServerTimeUnixNano: time.Now().UnixNano(), LivenessOnly: true,
			}}})
			c.liveMu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	timeout := max(s.o.proxySilence, 3*c.pingEvery)
	go func() {
		t := time.NewTicker(max(min(timeout/8, time.Second), time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if c.recvBusy.Load() {
				continue
			}
			last := c.lastSeen.Load()
			if last == 0 {
				last = c.connectedAt.UnixNano()
			}
			if silent := time.Since(time.Unix(0, last)); silent > timeout {
				s.log.Warn("sync: proxy silent; dropping its stream", "proxy_id", c.id, "peer", c.peer,
					"silent_for", silent.Round(time.Millisecond))
				c.abort(status.Errorf(codes.Unavailable, "no message from the proxy for %s", silent.Round(time.Millisecond)))
				s.coord.Leave(context.WithoutCancel(ctx), coord.Session{Member: c.member, ID: c.session})
				s.connsMu.Lock()
				if _, ok := s.conns[c]; ok {
					s.forgetLocked(c)
				}
				delete(s.sessions, c.session)
				s.connsMu.Unlock()
				return
			}
		}
	}()
}
