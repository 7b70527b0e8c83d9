package syncserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// maxIDLen bounds the proxy id and version a Hello may carry.
const maxIDLen = 256

// peekWait is how long a refused stream is given to send its Hello, only so
// that the refusal can be logged with the proxy id it claims.
const peekWait = 250 * time.Millisecond

// Answers to a Hello.
const (
	answerCurrent  = "current"
	answerDeltas   = "deltas"
	answerSnapshot = "snapshot"
)

type syncStream = grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]

// Sync serves one proxy: authentication, the authoritative first answer to
// its Hello, then deltas and heartbeats until the proxy leaves or the server
// closes.
func (s *Server) Sync(raw syncStream) error {
	stream := &lockedStream{syncStream: raw}
	ctx, abort := context.WithCancelCause(stream.Context())
	defer abort(nil)
	addr := peerAddr(ctx)
	select {
	case <-s.done:
		return errShutdown()
	default:
	}
	if !s.hasToken && !s.o.peerAuth {
		s.log.Warn("sync: refused stream: control plane has no --sync-token", "peer", addr)
		return status.Error(codes.FailedPrecondition, "control plane has no --sync-token; data-plane sync is disabled")
	}
	// Without a token, the transport verified the client certificate
	// (WithPeerAuthenticated); with one, it is required as well.
	if reason := s.authenticate(ctx); s.hasToken && reason != "" {
		// The claimed id only helps the operator find the misconfigured
		// proxy; it is not trusted for anything.
		s.log.Warn("sync: refused stream: "+reason, "peer", addr, "proxy_id", peekProxyID(stream))
		return status.Error(codes.Unauthenticated, "invalid or missing sync token")
	}
	select {
	case <-s.ready:
	case <-s.done:
		return errShutdown()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-time.After(s.o.readyWait):
		return status.Error(codes.Unavailable, "sync feed is not ready; retry")
	}

	c := &conn{peer: addr, connectedAt: time.Now(), abort: abort, send: stream.Send, session: newSession()}
	hello, err := s.recvHello(ctx, stream, c)
	if err != nil {
		s.log.Warn("sync: bad stream opening", "peer", addr, "err", err)
		return err
	}
	c.id, c.version, c.hello = hello.GetProxyId(), hello.GetVersion(), hello.GetRevision()
	c.member = memberName(hello, c.session)
	c.pingEvery = time.Duration(max(hello.GetPingIntervalMs(), 0)) * time.Millisecond
	c.sent.Store(c.hello)
	s.watchLiveness(ctx, stream, c)

	s.connsMu.Lock()
	s.conns[c] = struct{}{}
	s.sessions[c.session] = c
	s.connsMu.Unlock()
	err = s.serve(ctx, stream, c)
	select {
	case <-s.done:
		// This replica is stopping: its proxies reconnect to another one
		// and keep their place and leases there (coord.Coordinator.Close).
	default:
		s.coord.Leave(context.WithoutCancel(ctx), coord.Session{Member: c.member, ID: c.session})
	}
	if cause := context.Cause(ctx); ctx.Err() != nil && cause != nil && status.Code(cause) != codes.Unknown {
		err = cause // the receiving goroutine ended the stream
	}
	s.connsMu.Lock()
	s.forgetLocked(c)
	delete(s.sessions, c.session)
	s.connsMu.Unlock()

	attrs := []any{"proxy_id", c.id, "peer", addr, "sent_revision", c.sent.Load(),
		"applied_revision", c.applied.Load(), "connected_for", time.Since(c.connectedAt).Round(time.Millisecond)}
	switch code := status.Code(err); code {
	case codes.OK, codes.Canceled, codes.DeadlineExceeded:
		s.log.Info("sync: proxy disconnected", attrs...)
	default:
		s.log.Warn("sync: proxy disconnected", append(attrs, "err", err)...)
	}
	return err
}

func errShutdown() error {
	return status.Error(codes.Unavailable, "control plane is shutting down")
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

// authenticate returns why the stream's credentials are refused, or "".
// Digests are compared so that the comparison takes the same time whatever
// the presented token's length.
func (s *Server) authenticate(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	switch {
	case len(vals) == 0:
		return "missing sync token"
	case len(vals) > 1:
		return "more than one authorization header"
	}
	const scheme = "bearer "
	v := vals[0]
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "authorization is not a bearer token"
	}
	d := sha256.Sum256([]byte(strings.TrimSpace(v[len(scheme):])))
	if subtle.ConstantTimeCompare(d[:], s.digest[:]) != 1 {
		return "wrong sync token"
	}
	return ""
}

// peekProxyID reads the refused stream's first message briefly. The reading
// goroutine ends when the handler returns (Recv fails then).
func peekProxyID(stream syncStream) string {
	ch := make(chan string, 1)
	go func() {
		m, err := stream.Recv()
		if err != nil {
			ch <- ""
			return
		}
		ch <- m.GetHello().GetProxyId()
	}()
	select {
	case id := <-ch:
		if len(id) > maxIDLen {
			id = id[:maxIDLen]
		}
		return strings.ToValidUTF8(id, "?")
	case <-time.After(peekWait):
		return ""
	}
}

// recvHello waits for the Hello and then keeps receiving in the
// background: Applied reports update c; spend batches are applied in the
// order they arrive and acked (a failure ends the stream through c.abort,
// and the proxy resends what was not acked). The receiving goroutine ends
// with the stream.
func (s *Server) recvHello(ctx context.Context, stream syncStream, c *conn) (*syncv1.Hello, error) {
	type first struct {
		m   *syncv1.ProxyMessage
		err error
	}
	ch := make(chan first, 1)
	go func() {
		m, err := stream.Recv()
		ch <- first{m, err}
		if err != nil || m.GetHello() == nil {
			return
		}
		hello := m.GetHello()
		sess := coord.Session{Member: memberName(hello, c.session), ID: c.session}
		for {
			c.recvBusy.Store(false)
			m, err := stream.Recv()
			if err != nil {
				return
			}
			c.lastSeen.Store(time.Now().UnixNano())
			c.recvBusy.Store(true)
			if a := m.GetApplied(); a != nil {
				c.applied.Store(a.GetRevision())
			}
			if lr := m.GetLeaseRequest(); lr != nil {
				s.coord.Request(ctx, sess, lr)
			}
			if b := m.GetSpendBatch(); b != nil {
				batch, ack, err := s.parseSpend(hello.GetProxyId(), b)
				if err != nil {
					s.log.Warn("sync: spend batch refused", "proxy_id", hello.GetProxyId(), "err", err)
					c.abort(err)
					return
				}
				c.spendAt.Store(time.Now().UnixNano())
				if ol := b.GetOutboxLastSeq(); ol >= b.GetLastSeq() {
					c.outboxLast.Store(ol)
				}
				last := b.GetLastSeq()
				// Recorded before the ack is sent, so Stats never lags what
				// the proxy saw; a failed Send ends the stream (and c).
				send := func(m *syncv1.ControlMessage) error {
					c.acked.Store(last)
					return stream.Send(m)
				}
				s.submitSpend(spendReq{batch: batch, ack: ack, send: send, abort: func(err error) {
					s.log.Warn("sync: spend batch not applied; the proxy will resend it", "proxy_id", hello.GetProxyId(), "err", err)
					c.abort(err)
				}})
			}
			// A second Hello means nothing: the answer was authoritative.
		}
	}()
	timer := time.NewTimer(s.o.helloTimeout)
	defer timer.Stop()
	select {
	case f := <-ch:
		if f.err != nil {
			if st, ok := status.FromError(f.err); ok && st.Code() != codes.Unknown {
				return nil, f.err
			}
			return nil, status.Error(codes.Canceled, "stream closed before Hello")
		}
		h := f.m.GetHello()
		switch {
		case h == nil:
			return nil, status.Error(codes.InvalidArgument, "first message must be Hello")
		case h.GetRevision() < 0:
			return nil, status.Error(codes.InvalidArgument, "hello.revision must not be negative")
		case len(h.GetProxyId()) > maxIDLen:
			return nil, status.Errorf(codes.InvalidArgument, "hello.proxy_id is longer than %d bytes", maxIDLen)
		case len(h.GetVersion()) > maxIDLen:
			return nil, status.Errorf(codes.InvalidArgument, "hello.version is longer than %d bytes", maxIDLen)
		}
		return h, nil
	case <-timer.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %s", s.o.helloTimeout)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-s.done:
		return nil, errShutdown()
	}
}

// serve sends the first answer, then deltas and heartbeats.
func (s *Server) serve(ctx context.Context, stream syncStream, c *conn) error {
	answer, reason, target, err := s.decide(ctx, c.hello)
	if err != nil {
		return s.storeErr(ctx, "deciding the first answer", err)
	}
	attrs := []any{"proxy_id", c.id, "peer", c.peer, "version", c.version,
		"revision", c.hello, "head", target, "answer", answer}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	s.log.Info("sync: proxy connected", attrs...)
	if answer == answerSnapshot {
		start := time.Now()
		sn, err := s.snapshotFor(ctx)
		if err != nil {
			return s.storeErr(ctx, "building a snapshot", err)
		}
		// A snapshot still being built is sent as its chunks come. Until
		// the first one, the liveness goroutine keeps the proxy's watchdog
		// quiet; between chunks (the store stalling), this loop does.
		n := 0
		var bytes int64
		for {
			raw, ok, err := sn.chunk(ctx, s.done, n, s.o.heartbeat)
			if errors.Is(err, errStillBuilding) {
				if n > 0 {
					if err := stream.Send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{
						ServerTimeUnixNano: time.Now().UnixNano(), LivenessOnly: true,
					}}}); err != nil {
						return err
					}
				}
				continue
			}
			if err != nil {
				if errors.Is(err, errSnapshotFailed) {
					return s.storeErr(ctx, "building a snapshot", err)
				}
				if errors.Is(err, errClosed) {
					return errShutdown()
				}
				return status.FromContextError(err).Err()
			}
			if !ok {
				break
			}
			if n == 0 {
				c.markAnswered()
			}
			if err := stream.Send(preencoded(raw)); err != nil {
				return err
			}
			n++
			bytes += int64(len(raw))
		}
		rev := sn.rev()
		c.sent.Store(rev)
		target = rev
		s.log.Info("sync: snapshot sent", "proxy_id", c.id, "peer", c.peer, "snapshot_revision", rev,
			"chunks", n, "bytes", bytes, "took", time.Since(start).Round(time.Millisecond))
	}
	return s.follow(ctx, stream, c, target)
}

// decide picks the first answer to a proxy holding revision rev, and the
// revision the answer brings it to.
func (s *Server) decide(ctx context.Context, rev int64) (answer, reason string, head int64, err error) {
	head, err = s.st.Head(ctx)
	if err != nil {
		return "", "", 0, err
	}
	if rev == 0 {
		return answerSnapshot, "new proxy", head, nil
	}
	if rev > head {
		if head, err = s.waitHead(ctx, rev); err != nil {
			return "", "", 0, err
		}
		if rev > head {
			return answerSnapshot, "proxy ahead of this control plane", head, nil
		}
	}
	if rev == head {
		return answerCurrent, "", head, nil
	}
	oldest, err := s.st.Oldest(ctx)
	if err != nil {
		return "", "", 0, err
	}
	if rev < oldest-1 {
		return answerSnapshot, "proxy behind the change log", head, nil
	}
	return answerDeltas, "", head, nil
}

// waitHead waits up to the ahead-wait for the head to reach rev: a proxy
// that was served by a replica further along is usually not ahead of the
// shared database, only of this replica's view of it.
func (s *Server) waitHead(ctx context.Context, rev int64) (int64, error) {
	deadline := time.NewTimer(s.o.aheadWait)
	defer deadline.Stop()
	for {
		_, wake := s.feed.head()
		head, err := s.st.Head(ctx)
		if err != nil || head >= rev {
			return head, err
		}
		select {
		case <-deadline.C:
			return head, nil
		case <-wake:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.done:
			return 0, errClosed
		}
	}
}

// follow streams every change set after c.sent, in order and without gaps,
// from the shared ring or, when the proxy has fallen behind it, from the
// store. The first heartbeat goes out as soon as the proxy has reached
// target (the head when it connected), then one per interval.
func (s *Server) follow(ctx context.Context, stream syncStream, c *conn, target int64) error {
	c.markAnswered()
	hb := time.NewTicker(s.o.heartbeat)
	defer hb.Stop()
	pendingHB := true
	// A heartbeat tells the proxy the head and that this replica is alive;
	// a delta sent within the last half interval told it both (its
	// revision is the head it has), so that tick's heartbeat is skipped:
	// about every other one for a proxy that gets a delta a second (its
	// spend's). The proxy then hears something at least every 1.5
	// intervals (its stall timeout is 3).
	var lastDelta time.Time
	heartbeat := func(sent int64) error {
		if time.Since(lastDelta) < s.o.heartbeat/2 {
			return nil
		}
		return s.heartbeat(stream, sent)
	}
	buf := make([]encDelta, 0, s.o.batch)
	for {
		sent := c.sent.Load()
		if pendingHB && sent >= target {
			if err := s.heartbeat(stream, sent); err != nil {
				return err
			}
			pendingHB = false
			// Membership and rate-limit shares (coord) once the proxy is
			// current: never ahead of the authoritative first answer.
			if err := s.coord.Join(ctx, coord.Session{Member: c.member, ID: c.session}); err != nil {
				return s.storeErr(ctx, "joining the deployment's membership", err)
			}
		}
		batch, _, wake, inRing := s.feed.after(sent, s.o.batch, buf[:0])
		if !inRing {
			var err error
			if batch, err = s.fromStore(ctx, sent, buf[:0]); err != nil {
				return err
			}
		}
		for _, d := range batch {
			if d.rev != sent+1 {
				// Only the store can cause this: it compacted revisions the
				// proxy still needs.
				return status.Errorf(codes.Aborted, "revision %d is no longer in the change log; reconnect for a snapshot", sent+1)
			}
			if err := stream.Send(preencoded(d.raw)); err != nil {
				return err
			}
			sent = d.rev
			c.sent.Store(sent)
			lastDelta = time.Now()
			select {
			case <-hb.C:
				if err := heartbeat(sent); err != nil {
					return err
				}
			default:
			}
		}
		select {
		case <-s.done:
			return errShutdown()
		default:
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return errShutdown()
		case <-wake:
		case <-hb.C:
			if err := heartbeat(sent); err != nil {
				return err
			}
		}
	}
}

func (s *Server) heartbeat(stream syncStream, sent int64) error {
	head, _ := s.feed.head()
	return stream.Send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{
		HeadRevision:       max(head, sent),
		ServerTimeUnixNano: time.Now().UnixNano(),
		MasterKeyHash:      s.o.masterHash,
	}}})
}

// fromStore reads the change sets after rev for a stream that fell behind
// the shared ring. It is the slow path: the stream encodes them itself.
func (s *Server) fromStore(ctx context.Context, rev int64, dst []encDelta) ([]encDelta, error) {
	css, err := s.st.Changes(ctx, rev, s.o.batch)
	if err != nil {
		return nil, s.storeErr(ctx, "reading the change log", err)
	}
	if len(css) == 0 {
		// The ring holds later revisions, so the store had these: they
		// were compacted away.
		return nil, status.Errorf(codes.Aborted, "revision %d is no longer in the change log; reconnect for a snapshot", rev+1)
	}
	for i := range css {
		dst = append(dst, encodeChangeSet(s.log, css[i]))
	}
	return dst, nil
}

// storeErr maps a store failure to a status: the proxy sees a generic
// message and retries, the log gets the cause.
func (s *Server) storeErr(ctx context.Context, doing string, err error) error {
	switch {
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, errClosed) || s.base.Err() != nil:
		return errShutdown()
	}
	s.log.Error("sync: store error while "+doing, "err", err)
	return status.Error(codes.Unavailable, "control plane store unavailable; retry")
}
