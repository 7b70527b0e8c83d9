// Package syncclient keeps a data plane's replica current: it holds one
// SyncService stream to the control plane, applies the snapshot or deltas it
// receives, and reconnects with jittered exponential backoff.
//
// # Architecture
//
// Run loops over sessions. A session dials its own grpc.ClientConn (so a
// new session always opens a new TCP connection: a flow frozen by a
// partition or a balancer is never reused), sends Hello with the replica's
// revision and its ping interval, then applies
// every message in order on the receiving goroutine: snapshot chunks go to
// ApplyChunk (installed atomically on the last chunk), deltas to ApplyDelta
// (which checks prev_revision; a gap ends the session so the next Hello
// resubscribes from what the replica holds), heartbeats update the head
// and the time of last contact. After each applied delta or snapshot the
// client reports Applied{revision} so the control plane can show lag. A
// pinger goroutine sends Ping when nothing else was sent for PingInterval,
// so that the control plane notices a silent proxy too.
//
// With Options.Spend set, a shipper goroutine per session sends the spend
// outbox's committed records as SpendBatch messages once the stream is
// established (everything not yet acked, from the start) and whenever new
// records commit, with up to spendWindow batches in flight; each SpendAck
// deletes the acked records. Sends from the two goroutines are serialized.
//
// # Thread safety
//
// Run must be called once. Status may be called from any goroutine.
//
// # Failure modes
//
//   - Control plane down or unreachable: sessions fail fast, backoff grows
//     from MinBackoff to MaxBackoff with full jitter, so a restarted control
//     plane is not hit by every proxy at the same instant. The replica keeps
//     serving what it holds (static stability).
//   - Wrong sync token: the control plane answers Unauthenticated; the client
//     logs it (never the token) and keeps retrying at MaxBackoff.
//   - Stream broken mid-snapshot: the partial snapshot is discarded; the
//     replica still serves its previous state.
//   - No message (not even a heartbeat) for StallTimeout (default 3s; the
//     control plane heartbeats every second, and sends liveness-only
//     heartbeats while it prepares the first answer) while the receiving
//     goroutine waits for one, or none within FirstMessageTimeout (1.5s)
//     of starting to dial: the session is considered dead, its connection
//     is closed and a new one is dialled at once (TCP keepalive alone
//     would take ~30s; gRPC's connect timeout 20s). Time spent applying a
//     message (installing a large snapshot) does not count as silence.
//     Each session in a row given up that way doubles the first-message
//     wait (up to 8x), so a control plane too old to send liveness-only
//     heartbeats, or a link slower than the default allows, still gets
//     its answer through.
package syncclient

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Applier is the replica the client feeds.
type Applier interface {
	Revision() int64
	// ApplyChunk gets the chunk (its entities encoded, keys parsed ahead)
	// and the encoded ControlMessage it came in, after 4 spare bytes
	// (which the replica's cache fills and stores as they are; the client
	// never touches framed again); framed is nil when the chunk had to be
	// encoded again.
	ApplyChunk(c *state.Chunk, framed []byte) (installed bool, err error)
	AbortSnapshot()
	ApplyDelta(d *syncv1.Delta) error
}

// SpendSource is the spend outbox the client ships (spend.Outbox).
type SpendSource interface {
	// Batch returns up to max committed, unacked records with seq > after,
	// or nil when there are none.
	Batch(proxyID string, after uint64, max int) (*syncv1.SpendBatch, error)
	// Ack deletes the records up to lastSeq and returns their cost per
	// object (ObjectSpend.Spend is the cost) and whether every record
	// appended so far is now acked.
	Ack(outboxID string, lastSeq uint64) ([]*syncv1.ObjectSpend, bool, error)
	// Changed returns a channel closed at the next commit or ack.
	Changed() <-chan struct{}
}

// Leases is the rate-limit gate the client reports for (limits.Limiter).
type Leases interface {
	// Uses returns the use to report and the asks, nil when nothing changed.
	Uses() *syncv1.LeaseRequest
	// Notify is signalled when an ask is waiting (report now).
	Notify() <-chan struct{}
	// Pending is signalled when a use changed after the last report
	// (report within ReportInterval).
	Pending() <-chan struct{}
	ReportInterval() time.Duration
	// SpendUrgent is signalled when this proxy holds enough of a budget
	// that its unshipped spend should reach the control plane now (the
	// shipper cuts its linger short).
	SpendUrgent() <-chan struct{}
	Apply(g *syncv1.LeaseGrant)
	SetConnected(bool)
	// Acked tells the budget gate that records costing costs (per object)
	// are applied, the spend (per object) that holds them, and whether the
	// outbox is drained (nothing the gate counts as unacked is left).
	Acked(costs, spends []*syncv1.ObjectSpend, drained bool)
}

// Spend shipping: records per batch and batches in flight per stream.
const (
	spendBatchMax = 512
	spendWindow   = 4
)

// spendLinger is the least time between two batches that are not full:
// records gather meanwhile, so at modest rates one batch carries many
// records, and the control plane applies one transaction (and sends every
// proxy one delta) for them instead of one per request. Budgets do not wait
// for it: proxies count their own unsettled spend locally, each admits
// within its share of what the synced spend leaves, and the budget gate
// cuts the linger short (Leases.SpendUrgent) when what this proxy holds of
// a budget nears its share. Each ship/ack/delta round costs a proxy ~2 ms
// of CPU on a small VM (wake-ups of a handful of goroutines and threads,
// the cache commit); at 250 ms that was ~120 µs a request at 50 req/s.
// LiteLLM itself writes spend in batches every 10 s or more. (A variable
// for tests, read when a Client is made.)
var spendLinger = time.Second

// Options configure a Client.
type Options struct {
	Addr    string // control plane gRPC address, host:port
	Token   string // sync token
	ProxyID string
	Version string
	Logger  *slog.Logger
	// Registry, when set, receives the sync metrics.
	Registry *prometheus.Registry
	// MinBackoff and MaxBackoff bound reconnect delays (defaults 100ms, 5s).
	MinBackoff, MaxBackoff time.Duration
	// StallTimeout ends a session that received nothing (default 3s;
	// heartbeats come every second).
	StallTimeout time.Duration
	// FirstMessageTimeout ends a session that received nothing since it
	// started dialling (default 1.5s: the control plane answers a Hello at
	// once, with a liveness-only heartbeat if nothing else). It bounds the
	// time lost on a new connection that lands on a frozen backend; it
	// must cover the connection's handshakes (TCP, TLS, HTTP/2: about four
	// round trips).
	FirstMessageTimeout time.Duration
	// PingInterval is how often the proxy tells the control plane it is
	// alive (default 1s).
	PingInterval time.Duration
	// DialOptions are appended to the defaults (tests use them).
	DialOptions []grpc.DialOption
	// Spend, when set, is shipped over the stream.
	Spend SpendSource
	// Leases, when set, reports rate-limit use and receives grants.
	Leases Leases
	// MasterKey, when set, receives the master key hash heartbeats carry.
	MasterKey interface{ Set(hash []byte) }
}

// Status is the client's view of the sync connection.
type Status struct {
	Connected   bool
	Revision    int64
	Head        int64
	LastContact time.Time // last message from the control plane
	CurrentAt   time.Time // last time the replica was known to be at the head
}

// Client is a sync client.
type Client struct {
	a   Applier
	o   Options
	log *slog.Logger

	mu sync.Mutex
	st Status

	sendMu sync.Mutex // one Send at a time: receiving loop and spend shipper

	lastSent atomic.Int64  // UnixNano of the last Send on the stream (ping skips when recent)
	pingNow  chan struct{} // a heartbeat arrived: ping if due
	hurry    chan struct{} // FlushSpend: ship without waiting for the linger
	draining atomic.Bool   // FlushSpend was called: never linger again
	linger   time.Duration // spendLinger when the client was made

	// instance is random per process and sent in every Hello: the control
	// planes name this proxy by id and instance in their deployment-wide
	// membership, so it keeps its place and leases when it reconnects to
	// another replica.
	instance string
	// unheard counts the sessions in a row given up for receiving nothing
	// (Run's goroutine only).
	unheard int

	m metrics
}

type metrics struct {
	connected  prometheus.Gauge
	revision   prometheus.Gauge
	head       prometheus.Gauge
	reconnects prometheus.Counter
	snapshots  prometheus.Counter
	deltas     prometheus.Counter
	errors     *prometheus.CounterVec
	spendSent  prometheus.Counter
	applySnap  prometheus.Observer
	applyDelta prometheus.Observer
}

// New returns a client; call Run.
func New(a Applier, o Options) *Client {
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 3 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = time.Second
	}
	if o.FirstMessageTimeout <= 0 {
		o.FirstMessageTimeout = min(1500*time.Millisecond, o.StallTimeout)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{a: a, o: o, log: o.Logger.With("component", "sync"), instance: newInstance(), hurry: make(chan struct{}, 1), pingNow: make(chan struct{}, 1), linger: spendLinger}
	c.st.Revision = a.Revision()
	c.m = metrics{
		connected:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "tollgate_sync_connected", Help: "1 while a sync stream to the control plane is established."}),
		revision:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "tollgate_sync_revision", Help: "Revision of the state this proxy serves."}),
		head:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "tollgate_sync_head_revision", Help: "Head revision last announced by the control plane."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_sync_sessions_total", Help: "Sync sessions started."}),
		snapshots:  prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_sync_snapshots_applied_total", Help: "Full snapshots installed."}),
		deltas:     prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_sync_deltas_applied_total", Help: "Deltas applied."}),
		spendSent:  prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_spend_records_sent_total", Help: "Spend records sent to the control plane (resends included)."}),
		errors:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tollgate_sync_session_errors_total", Help: "Sync sessions ended by an error, by reason."}, []string{"reason"}),
	}
	apply := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tollgate_sync_apply_seconds",
		Help:    "Time to apply what the control plane sent, by kind: a delta, or a whole snapshot (every chunk, including the atomic install).",
		Buckets: []float64{50e-6, 250e-6, 1e-3, 5e-3, 25e-3, 100e-3, 500e-3, 2, 10, 30},
	}, []string{"kind"})
	c.m.applySnap = apply.WithLabelValues("snapshot")
	c.m.applyDelta = apply.WithLabelValues("delta")
	c.m.revision.Set(float64(c.st.Revision))
	if o.Registry != nil {
		o.Registry.MustRegister(c.m.connected, c.m.revision, c.m.head, c.m.reconnects, c.m.snapshots, c.m.deltas, c.m.errors, c.m.spendSent, apply,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_sync_revision_lag", Help: "Revisions the served state is behind the head the control plane last announced (0 when current)."}, func() float64 {
				s := c.Status()
				return float64(max(s.Head-s.Revision, 0))
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_sync_state_age_seconds", Help: "Seconds since the replica was last known to be at the control plane's head (-1: never)."}, func() float64 {
				s := c.Status()
				if s.CurrentAt.IsZero() {
					return -1
				}
				return time.Since(s.CurrentAt).Seconds()
			}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_sync_last_contact_age_seconds", Help: "Seconds since the last message from the control plane (-1: never)."}, func() float64 {
				s := c.Status()
				if s.LastContact.IsZero() {
					return -1
				}
				return time.Since(s.LastContact).Seconds()
			}),
		)
	}
	return c
}

// Status returns the current sync status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// StreamWindow is the proxy's fixed HTTP/2 flow-control window, per stream
// and per connection: what gRPC's bandwidth-delay estimator would grow it to
// (16 MiB), without the estimator's pings (see Run).
const StreamWindow = 16 << 20

// Run keeps the replica in sync until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256 << 20)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// Fixed flow-control windows, as large as the ones gRPC's
		// bandwidth-delay estimator grows to: the estimator sends an
		// HTTP/2 PING after every message that arrives on a quiet
		// connection (the heartbeat each second), and the round trip is
		// wake-ups on both ends for nothing once the window is this size.
		grpc.WithStaticStreamWindowSize(StreamWindow),
		grpc.WithStaticConnWindowSize(StreamWindow),
	}, c.o.DialOptions...)
	// Fail on a bad address now rather than on every session.
	conn, err := grpc.NewClient(c.o.Addr, opts...)
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	_ = conn.Close()

	backoff := c.o.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		// A ClientConn per session: closing it closes its TCP connection,
		// so the next session cannot land on a flow that went silent.
		conn, err := grpc.NewClient(c.o.Addr, opts...)
		if err == nil {
			err = c.session(ctx, syncv1.NewSyncServiceClient(conn))
			_ = conn.Close()
		}
		c.setConnected(false)
		c.a.AbortSnapshot()
		if ctx.Err() != nil {
			return nil
		}
		reason, lvl := classify(err)
		c.m.errors.WithLabelValues(reason).Inc()
		c.log.Log(ctx, lvl, "sync session ended", "reason", reason, "err", sanitize(err))
		if time.Since(start) > 10*time.Second {
			backoff = c.o.MinBackoff // a session that lived resets the backoff
		}
		if reason == "unauthenticated" {
			backoff = c.o.MaxBackoff
		}
		// Full jitter: sleep uniformly in [backoff/2, backoff]. A stalled
		// session already waited seconds for nothing: redial at once
		// (jittered) on a new connection.
		d := backoff/2 + rand.N(backoff/2+1)
		if reason == "stalled" {
			d = rand.N(c.o.MinBackoff/2 + 1)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		if backoff *= 2; backoff > c.o.MaxBackoff {
			backoff = c.o.MaxBackoff
		}
	}
	return nil
}

var errGapOrder = errors.New("delta out of order")

func classify(err error) (string, slog.Level) {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return "unauthenticated", slog.LevelError
	case codes.FailedPrecondition:
		return "sync_disabled", slog.LevelError
	case codes.Unavailable:
		return "unavailable", slog.LevelWarn
	case codes.Aborted:
		return "aborted", slog.LevelInfo
	case codes.DeadlineExceeded:
		return "stalled", slog.LevelWarn
	}
	if errors.Is(err, errGapOrder) {
		return "gap", slog.LevelInfo
	}
	if errors.Is(err, io.EOF) {
		return "eof", slog.LevelInfo
	}
	return "error", slog.LevelWarn
}

// sanitize keeps error text short; gRPC errors never carry our token, but
// bound the length anyway.
func sanitize(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

func (c *Client) session(ctx context.Context, cl syncv1.SyncServiceClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+c.o.Token)
	c.m.reconnects.Inc()

	// The watchdog ends the session when the receiving loop has waited
	// StallTimeout for a message (FirstMessageTimeout for the first one,
	// counted from here: a new connection that lands on a frozen backend
	// never completes its handshake). The loop waits while busy is false,
	// since lastRecv (unix nanoseconds).
	var lastRecv atomic.Int64
	var busy, heard atomic.Bool
	lastRecv.Store(time.Now().UnixNano())
	first := c.o.FirstMessageTimeout << min(c.unheard, 3)
	defer func() { // before the deferred cancel: sctx ended only if the watchdog ended it
		switch {
		case heard.Load():
			c.unheard = 0
		case sctx.Err() != nil && ctx.Err() == nil:
			c.unheard++
		}
	}()
	go c.watchdog(sctx, cancel, &lastRecv, &busy, &heard, first)
	stalled := func(err error) error {
		if sctx.Err() != nil && ctx.Err() == nil {
			return status.Error(codes.DeadlineExceeded, "stream stalled")
		}
		return err
	}

	stream, err := cl.Sync(sctx, grpc.ForceCodecV2(&keepRaw{}))
	if err != nil {
		return stalled(err)
	}
	rev := c.a.Revision()
	hello := &syncv1.Hello{ProxyId: c.o.ProxyID, Revision: rev, Version: c.o.Version, Instance: c.instance,
		PingIntervalMs: int32(min(c.o.PingInterval.Milliseconds(), 1<<30))}
	if err := c.send(stream, &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Hello{Hello: hello}}); err != nil {
		return stalled(recvErr(stream, err))
	}
	go c.ping(sctx, stream)

	// Acks go to the shipper, which deletes the records off this goroutine
	// (a deletion is an fsync; deltas should not wait for it).
	acks := make(chan *syncv1.SpendAck, 64)
	answered := false
	var snapApply time.Duration // chunks of the snapshot being received

	// Messages are received and decoded on their own goroutine, one ahead
	// of the loop below: decoding snapshot chunk k+1 overlaps with
	// installing chunk k. It is busy (for the watchdog) from a message's
	// arrival until the loop has taken it.
	type next struct {
		rm  received
		err error
	}
	inbox := make(chan next)
	spare := make(chan *state.Chunk, 1) // applied chunks, to parse the next into
	go func() {
		for {
			lastRecv.Store(time.Now().UnixNano())
			busy.Store(false)
			var n next
			select {
			case n.rm.chunk = <-spare:
			default:
			}
			n.err = stream.RecvMsg(&n.rm)
			busy.Store(true)
			select {
			case inbox <- n:
			case <-sctx.Done():
				return
			}
			if n.err != nil {
				return
			}
		}
	}()
	for {
		var n next
		select {
		case n = <-inbox:
		case <-sctx.Done():
			return stalled(status.FromContextError(sctx.Err()).Err())
		}
		if n.err != nil {
			return stalled(n.err)
		}
		rm := n.rm
		msg := rm.msg
		heard.Store(true)
		now := time.Now()
		if rm.chunk == nil && msg.GetHeartbeat().GetLivenessOnly() {
			continue // the first answer is on its way
		}
		if !answered {
			answered = true
			c.setConnected(true)
			c.log.Info("sync stream established", "control_plane", c.o.Addr, "revision", c.a.Revision())
			if c.o.Spend != nil {
				go c.shipSpend(sctx, cancel, stream, acks)
			}
			if c.o.Leases != nil {
				c.o.Leases.SetConnected(true)
				go c.reportLeases(sctx, stream)
			}
		}
		if ch := rm.chunk; ch != nil {
			t0 := time.Now()
			installed, err := c.a.ApplyChunk(ch, rm.framed)
			snapApply += time.Since(t0)
			if err != nil {
				return fmt.Errorf("snapshot chunk %d at revision %d: %w", ch.Seq, ch.Revision, err)
			}
			if installed {
				c.m.applySnap.Observe(snapApply.Seconds())
				snapApply = 0
				c.m.snapshots.Inc()
				c.log.Info("snapshot installed", "revision", ch.Revision)
				c.applied(stream, ch.Revision, now)
			}
			select {
			case spare <- ch: // the replica keeps nothing of it
			default:
			}
			continue
		}
		switch m := msg.Msg.(type) {
		case *syncv1.ControlMessage_Delta:
			d := m.Delta
			cur := c.a.Revision()
			if d.GetRevision() <= cur {
				continue // already held (a snapshot newer than the stream's position)
			}
			if d.GetPrevRevision() != cur {
				return fmt.Errorf("%w: holding %d, got delta %d after %d", errGapOrder, cur, d.GetRevision(), d.GetPrevRevision())
			}
			t0 := time.Now()
			if err := c.a.ApplyDelta(d); err != nil {
				return fmt.Errorf("delta %d: %w", d.GetRevision(), err)
			}
			c.m.applyDelta.Observe(time.Since(t0).Seconds())
			c.m.deltas.Inc()
			c.applied(stream, d.GetRevision(), now)
		case *syncv1.ControlMessage_Heartbeat:
			h := m.Heartbeat
			c.mu.Lock()
			c.st.Head = h.GetHeadRevision()
			c.st.LastContact = now
			if c.st.Revision >= h.GetHeadRevision() && c.st.Revision > 0 {
				c.st.CurrentAt = now
			}
			c.mu.Unlock()
			c.m.head.Set(float64(h.GetHeadRevision()))
			if c.o.MasterKey != nil {
				c.o.MasterKey.Set(h.GetMasterKeyHash())
			}
			select { // answer with a ping if due (see ping)
			case c.pingNow <- struct{}{}:
			default:
			}
		case *syncv1.ControlMessage_LeaseGrant:
			if c.o.Leases != nil {
				c.o.Leases.Apply(m.LeaseGrant)
			}
		case *syncv1.ControlMessage_SpendAck:
			select {
			case acks <- m.SpendAck:
			case <-sctx.Done():
				return sctx.Err()
			}
		}
	}
}

// watchdog cancels the session once the receiving loop has waited
// StallTimeout for a message (first before the first one).
func (c *Client) watchdog(ctx context.Context, cancel context.CancelFunc, lastRecv *atomic.Int64, busy, heard *atomic.Bool, first time.Duration) {
	// One timer, set for the moment the stream would have been silent too
	// long (not a ticker: an idle proxy wakes about once a heartbeat).
	// Until the first message, every 1/8 of the shorter bound (as the
	// stream's first answer may come at any moment).
	early := max(min(c.o.StallTimeout, first)/8, time.Millisecond)
	t := time.NewTimer(early)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		limit := c.o.StallTimeout
		if !heard.Load() {
			limit = first
		}
		if busy.Load() {
			t.Reset(max(limit/8, time.Millisecond))
			continue
		}
		silent := time.Since(time.Unix(0, lastRecv.Load()))
		if silent > limit {
			c.log.Warn("sync stream silent; dropping the connection and reconnecting", "silent_for", silent.Round(time.Millisecond))
			cancel()
			return
		}
		if !heard.Load() {
			t.Reset(early)
			continue
		}
		t.Reset(limit - silent + time.Millisecond)
	}
}

// ping tells the control plane the proxy is alive, while the session
// lives, so that it notices a proxy that went silent (any message does; a
// proxy that ships spend or reports leases about once a second pings
// rarely). A heartbeat from the control plane asks for one at once
// (pingNow) when nothing went out for half a PingInterval, so the answer
// rides the wake-up the heartbeat caused; the timer, 1.5 PingIntervals
// after the last message, is for when heartbeats pause (the control plane
// skips them while deltas flow). The control plane drops a proxy silent for
// max(5 s, 3 PingIntervals).
func (c *Client) ping(ctx context.Context, stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage]) {
	fallback := c.o.PingInterval + c.o.PingInterval/2
	t := time.NewTimer(fallback)
	defer t.Stop()
	since := func() time.Duration { return time.Since(time.Unix(0, c.lastSent.Load())) }
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.pingNow:
			if since() < c.o.PingInterval/2 {
				continue
			}
		case <-t.C:
			if wait := fallback - since(); wait > 0 {
				t.Reset(wait)
				continue
			}
		}
		if err := c.send(stream, &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Ping{Ping: &syncv1.Ping{Revision: c.a.Revision()}}}); err != nil {
			return // the receiving loop sees the stream's end
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(fallback)
	}
}

// shipSpend sends the outbox's records on one stream: everything unacked
// first, then what commits, up to spendWindow unacked batches at a time. A
// batch that is not full starts a linger: the next one goes out spendLinger
// later (a full one goes on at once), or sooner when the budget gate or
// FlushSpend asks to hurry. So a steady stream of requests makes at most one
// ship/ack/delta round per spendLinger below spendBatchMax records a
// linger, however the acks and the records interleave; the shipper sleeps
// through a linger rather than waking at each record. A failure ends the
// session; the next one starts again from the oldest unacked record (the
// control plane skips what it already applied).
func (c *Client) shipSpend(ctx context.Context, cancel context.CancelFunc,
	stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage], acks <-chan *syncv1.SpendAck) {
	src := c.o.Spend
	var urgent <-chan struct{}
	if c.o.Leases != nil {
		urgent = c.o.Leases.SpendUrgent()
	}
	var sent uint64       // last seq sent on this stream
	var inflight []uint64 // last seq of each unacked batch, in order
	var next time.Time    // a batch that is not full waits until then
	hurry := false
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	for {
		changed := src.Changed() // before reading, so no commit is missed
		var lingerC <-chan time.Time
		if len(inflight) < spendWindow {
			if wait := time.Until(next); wait > 0 && !hurry && !c.draining.Load() {
				// Lingering: records written meanwhile wait for the
				// timer; the shipper does not wake for each of them.
				linger.Reset(wait)
				lingerC, changed = linger.C, nil
			} else {
				b, err := src.Batch(c.o.ProxyID, sent, spendBatchMax)
				if err != nil {
					c.log.Error("spend outbox read failed", "err", err)
					cancel()
					return
				}
				if b != nil {
					if err := c.send(stream, &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_SpendBatch{SpendBatch: b}}); err != nil {
						return // the receiving loop sees the stream's end
					}
					c.m.spendSent.Add(float64(len(b.GetRecords())))
					sent = b.GetLastSeq()
					inflight = append(inflight, sent)
					hurry = false
					if len(b.GetRecords()) < spendBatchMax {
						next = time.Now().Add(c.linger)
					}
					continue
				}
			}
		} else {
			changed = nil // the window is full: only an ack frees it
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-lingerC:
		case <-urgent:
			hurry = true
		case <-c.hurry:
			hurry = true
		case a := <-acks:
			costs, drained, err := src.Ack(a.GetOutboxId(), a.GetLastSeq())
			if err != nil {
				c.log.Error("spend ack not recorded; the records will be sent again", "err", err)
			} else if c.o.Leases != nil && (len(costs) > 0 || drained) {
				c.o.Leases.Acked(costs, a.GetSpends(), drained)
			}
			for len(inflight) > 0 && inflight[0] <= a.GetLastSeq() {
				inflight = inflight[1:]
			}
		}
		if lingerC != nil && !linger.Stop() {
			select { // fired: drain it for the next Reset
			case <-linger.C:
			default:
			}
		}
	}
}

// FlushSpend makes the shipper send the outbox's records as they commit,
// without lingering, from now on (at shutdown, so that the outbox drains
// without waiting for a linger).
func (c *Client) FlushSpend() {
	c.draining.Store(true)
	select {
	case c.hurry <- struct{}{}:
	default:
	}
}

func (c *Client) send(stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage], m *syncv1.ProxyMessage) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.lastSent.Store(time.Now().UnixNano())
	return stream.Send(m)
}

func (c *Client) applied(stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage], rev int64, now time.Time) {
	c.mu.Lock()
	c.st.Revision = rev
	c.st.LastContact = now
	if rev > c.st.Head {
		c.st.Head = rev
	}
	if rev >= c.st.Head {
		c.st.CurrentAt = now
	}
	c.mu.Unlock()
	c.m.revision.Set(float64(rev))
	// Best effort: a failed Send surfaces on the next Recv.
	_ = c.send(stream, &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Applied{Applied: &syncv1.Applied{Revision: rev}}})
}

// reportLeases sends rate-limit use and asks while the stream lives: at
// once for an ask, within ReportInterval of a changed use, and nothing (no
// timer) while nothing changes.
func (c *Client) reportLeases(ctx context.Context, stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage]) {
	l := c.o.Leases
	t := time.NewTimer(l.ReportInterval())
	t.Stop()
	var tick <-chan time.Time // armed while a changed use waits
	for {
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-l.Pending():
			if tick == nil {
				t.Reset(l.ReportInterval())
				tick = t.C
			}
			continue
		case <-tick:
			tick = nil
		case <-l.Notify():
		}
		if r := l.Uses(); r != nil {
			if err := c.send(stream, &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_LeaseRequest{LeaseRequest: r}}); err != nil {
				return // the receiving loop sees the stream's end
			}
		}
	}
}

func (c *Client) setConnected(v bool) {
	if !v && c.o.Leases != nil {
		c.o.Leases.SetConnected(false)
	}
	c.mu.Lock()
	c.st.Connected = v
	c.mu.Unlock()
	if v {
		c.m.connected.Set(1)
	} else {
		c.m.connected.Set(0)
	}
}

// recvErr returns the stream's real status after a failed Send (Send only
// reports io.EOF).
func recvErr(stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage], err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

func newInstance() string {
	b := make([]byte, 8)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}
