package syncserver

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Option configures a Server.
type Option func(*options)

type options struct {
	// masterHash is the SHA-256 of the master key sent on heartbeats (nil:
	// none).
	masterHash     []byte
	log            *slog.Logger
	heartbeat      time.Duration
	poll           time.Duration
	aheadWait      time.Duration
	helloTimeout   time.Duration
	readyWait      time.Duration
	chunkEntities  int
	chunkBytes     int
	ringDeltas     int
	ringBytes      int
	prefill        int
	batch          int
	snapshotMaxLag int64
	snapshotTTL    time.Duration
	proxySilence   time.Duration
	onSnapshot     func(SnapshotInfo)
	registry       prometheus.Registerer
	// peerAuth: streams are authenticated by the transport (mutual TLS,
	// checked before the handler runs); a token, when set, is required too.
	peerAuth bool
	// coordinator builds the membership and lease bookkeeping (default:
	// coord.NewMemory, this replica alone).
	coordinator func(coord.Deliver) coord.Coordinator
}

func defaultOptions() options {
	return options{
		log:           slog.Default(),
		heartbeat:     time.Second,
		poll:          time.Second,
		aheadWait:     2 * time.Second,
		helloTimeout:  10 * time.Second,
		readyWait:     10 * time.Second,
		chunkEntities: 5000,
		// Below gRPC's default 4 MiB receive limit, so a proxy with default
		// client options accepts every chunk (one oversized entity aside).
		chunkBytes:     3 << 20,
		ringDeltas:     4096,
		ringBytes:      64 << 20,
		prefill:        1024,
		batch:          256,
		snapshotMaxLag: 10000,
		snapshotTTL:    10 * time.Minute,
		proxySilence:   5 * time.Second,
	}
}

// WithLogger sets the logger (default slog.Default()).
// WithMasterKeyHash makes heartbeats carry the SHA-256 of the master key,
// so that proxies accept the master key on the LLM routes. Only the hash
// leaves the control plane.
func WithMasterKeyHash(h [32]byte) Option {
	return func(o *options) { o.masterHash = h[:] }
}

func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithHeartbeatInterval sets how often each stream gets a heartbeat
// (default 1s).
func WithHeartbeatInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.heartbeat = d
		}
	}
}

// WithProxySilence sets how long a proxy that announced pings
// (Hello.ping_interval_ms) may stay silent before its stream is dropped
// (default 5s, and never less than three of its ping intervals). Proxies
// that do not ping are left to gRPC keepalive.
func WithProxySilence(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.proxySilence = d
		}
	}
}

// WithPollInterval sets the fallback poll of the change log, for stores
// whose Subscribe misses a wake-up (default 1s).
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.poll = d
		}
	}
}

// WithAheadWait sets how long a stream whose proxy claims a revision beyond
// this replica's head waits for the head to catch up before answering with
// a snapshot (default 2s). With Postgres, another replica may simply have
// sequenced further already.
func WithAheadWait(d time.Duration) Option {
	return func(o *options) {
		if d >= 0 {
			o.aheadWait = d
		}
	}
}

// WithHelloTimeout bounds the wait for an authenticated stream's Hello
// (default 10s).
func WithHelloTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.helloTimeout = d
		}
	}
}

// WithChunkLimits sets the snapshot chunk size: at most entities entities
// and about maxBytes bytes per chunk (defaults 5000 and 3 MiB; a single
// larger entity gets a chunk of its own).
func WithChunkLimits(entities, maxBytes int) Option {
	return func(o *options) {
		if entities > 0 {
			o.chunkEntities = entities
		}
		if maxBytes > 0 {
			o.chunkBytes = maxBytes
		}
	}
}

// WithRing sizes the shared ring of recent encoded deltas (defaults 4096
// change sets, 64 MiB). Streams further behind read the store.
func WithRing(deltas, maxBytes int) Option {
	return func(o *options) {
		if deltas > 0 {
			o.ringDeltas = deltas
			o.prefill = min(o.prefill, deltas)
		}
		if maxBytes > 0 {
			o.ringBytes = maxBytes
		}
	}
}

// WithSnapshotReuse sets when the cached snapshot is reused instead of
// rebuilt: while it is at most maxLag revisions behind the head (the proxy
// then receives the deltas since), and dropped after ttl without use
// (defaults 10000 revisions, 10 minutes).
func WithSnapshotReuse(maxLag int64, ttl time.Duration) Option {
	return func(o *options) {
		if maxLag >= 0 {
			o.snapshotMaxLag = maxLag
		}
		if ttl > 0 {
			o.snapshotTTL = ttl
		}
	}
}

// WithSnapshotHook calls fn after every snapshot build (successful or not),
// from the building goroutine, before the waiting streams get the snapshot:
// for metrics and tests. fn must not block.
func WithSnapshotHook(fn func(SnapshotInfo)) Option {
	return func(o *options) { o.onSnapshot = fn }
}

// SnapshotInfo describes one snapshot build.
type SnapshotInfo struct {
	Revision int64
	Entities int
	// Skipped counts objects left out because they could not be converted.
	Skipped  int
	Chunks   int
	Bytes    int64
	Duration time.Duration
	Err      error
}

// Stats is a point-in-time view of the sync service.
type Stats struct {
	// Head is the newest revision the server has read from the change log.
	Head int64
	// RingOldest is the oldest revision in the shared delta ring; proxies
	// behind it are served from the store.
	RingOldest int64
	// SnapshotRevision is the revision of the cached snapshot, -1 if none.
	SnapshotRevision int64
	SnapshotBytes    int64
	SnapshotBuilds   int64
	Proxies          []ProxyStats // ordered by ID, then peer
	// Disconnected lists proxies whose stream ended within the last
	// goneTTL and that have not come back (by ID): the stalest replica of
	// all is the one that stopped syncing.
	Disconnected []ProxyStats
}

// ProxyStats describes one connected proxy.
type ProxyStats struct {
	ID          string
	Peer        string
	Version     string
	ConnectedAt time.Time
	// HelloRevision is the revision the proxy held when it connected.
	HelloRevision int64
	// SentRevision is the revision of the last snapshot or delta sent.
	SentRevision int64
	// AppliedRevision is the last revision the proxy reported persisted
	// (0 until it reports).
	AppliedRevision int64
	// LastSeen is when the proxy last sent anything (ConnectedAt before).
	LastSeen time.Time
	// LastSpendBatch is when the proxy last shipped spend (zero: never).
	LastSpendBatch time.Time
	// OutboxDepth is how many spend records wait in the proxy's outbox as
	// of its last batch, minus those acked since; -1 when it never said.
	OutboxDepth int64
	// SpendAckedSeq is the last outbox sequence acked to the proxy.
	SpendAckedSeq uint64
	// Connected is false in Stats.Disconnected.
	Connected      bool
	DisconnectedAt time.Time
}

// Disconnected proxies stay in Stats.Disconnected for goneTTL, at most
// maxGone of them.
const (
	goneTTL = time.Hour
	maxGone = 1000
)

// Server implements syncv1.SyncServiceServer.
type Server struct {
	syncv1.UnimplementedSyncServiceServer

	st       store.Store
	digest   [sha256.Size]byte
	hasToken bool
	log      *slog.Logger
	o        options

	feed    *feed
	ready   chan struct{} // closed once Run has positioned the feed
	running atomic.Bool

	// base lives until Close; snapshot builds run under it so that the
	// stream that triggered a build may leave without failing the others.
	base      context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once

	snapMu   sync.Mutex
	snap     *snapshot // latest built
	snapUsed time.Time
	building *snapshot // in flight, if any
	builds   atomic.Int64

	connsMu sync.Mutex
	conns   map[*conn]struct{}
	gone    map[string]ProxyStats // by proxy id, under connsMu

	// Membership and rate-limit leases, deployment-wide (coord).
	coord    coord.Coordinator
	sessions map[string]*conn // by conn.session, under connsMu
	grants   atomic.Int64     // lease grants sent (metrics)

	// Spend batches from every stream go through one applier (spend.go).
	spendOnce sync.Once
	spendQ    chan spendReq

	m metrics
}

// conn is one connected proxy.
type conn struct {
	id, peer, version string
	connectedAt       time.Time
	hello             int64
	sent              atomic.Int64
	applied           atomic.Int64
	// lastSeen and spendAt are unix nanoseconds of the last message and
	// the last spend batch received; outboxLast is the proxy's reported
	// outbox head (0: not reported) and acked the last seq acked to it.
	lastSeen   atomic.Int64
	spendAt    atomic.Int64
	outboxLast atomic.Uint64
	acked      atomic.Uint64
	// abort ends the stream from the receiving goroutine (a spend batch
	// that could not be applied).
	abort context.CancelCauseFunc
	// send is the stream's (locked) Send, for lease grants.
	send func(*syncv1.ControlMessage) error
	// member names the proxy in the deployment's membership; session this
	// stream (coord.Session).
	member, session string
	// Liveness (live.go): pingEvery is the proxy's announced ping
	// interval (0: it does not ping); recvBusy is true while the receiving
	// goroutine handles a message rather than waiting for one; answered
	// once the first answer starts (under liveMu, so that no liveness-only
	// heartbeat is sent inside it).
	pingEvery time.Duration
	recvBusy  atomic.Bool
	liveMu    sync.Mutex
	answered  bool
}

// WithCoordinator makes the server count its proxies and lease rate limits
// through the Coordinator newCoord returns (given the function that delivers
// grants to this server's streams), instead of in this replica's memory
// alone: with several replicas on Postgres, pgcoord. The server closes it.
func WithCoordinator(newCoord func(coord.Deliver) coord.Coordinator) Option {
	return func(o *options) { o.coordinator = newCoord }
}

// WithPeerAuthenticated declares that the transport already authenticated
// every stream (mutual TLS with a client CA): with an empty token, streams
// are then served on the certificate alone instead of being refused; with a
// token, both are required.
func WithPeerAuthenticated() Option {
	return func(o *options) { o.peerAuth = true }
}

// New returns a sync server reading st. token is the shared secret every
// data plane presents; when it is empty every stream is refused with
// FailedPrecondition (sync is disabled rather than open to anyone). Run must
// be running for streams to be served.
func New(st store.Store, token string, opts ...Option) *Server {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		st:       st,
		hasToken: token != "",
		log:      o.log,
		o:        o,
		feed:     newFeed(o.ringDeltas, o.ringBytes),
		ready:    make(chan struct{}),
		base:     base,
		cancel:   cancel,
		done:     make(chan struct{}),
		conns:    make(map[*conn]struct{}),
		sessions: make(map[string]*conn),
	}
	if o.coordinator != nil {
		s.coord = o.coordinator(s.deliverLease)
	} else {
		s.coord = coord.NewMemory(s.deliverLease)
	}
	if s.hasToken {
		s.digest = sha256.Sum256([]byte(token))
	}
	s.m = newMetrics(s, o.registry)
	return s
}

// Run reads the change log into the shared delta ring until ctx ends or
// Close is called, then ends every stream (so that a graceful gRPC stop does
// not wait for them). It returns nil on a normal stop. Store errors are
// logged and retried; they never stop Run.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("syncserver: Run called twice")
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.base, cancel)
	defer stop()

	// Subscribe before reading the head: no advance can slip between.
	sub := s.st.Subscribe(ctx)
	r := reader{s: s}
	for !r.position(ctx) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.o.poll):
		}
	}
	close(s.ready)
	tick := time.NewTicker(s.o.poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-sub:
			if !ok {
				sub = nil // store closed its subscriptions; keep polling
				continue
			}
			r.pull(ctx)
		case <-tick.C:
			r.pull(ctx)
			s.expireSnapshot()
		}
	}
}

// Close ends Run and every stream (with Unavailable) and cancels snapshot
// builds. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.cancel()
		if err := s.coord.Close(); err != nil {
			s.log.Warn("sync: closing the coordinator", "err", err)
		}
	})
	return nil
}

// deliverLease sends a lease grant to one of this replica's streams
// (coord.Deliver). Best effort: a failed Send ends that stream, and its
// proxy keeps the allowance it had.
func (s *Server) deliverLease(session string, g *syncv1.LeaseGrant) {
	s.connsMu.Lock()
	c := s.sessions[session]
	s.connsMu.Unlock()
	if c == nil || c.send == nil {
		return
	}
	s.grants.Add(1)
	_ = c.send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_LeaseGrant{LeaseGrant: g}})
}

// memberName names a proxy process in the deployment's membership: its id
// and the instance it announced (random per process), so that it keeps its
// place when it reconnects to any replica. A proxy that sends neither is a
// member per stream.
func memberName(h *syncv1.Hello, session string) string {
	switch {
	case h.GetInstance() != "":
		return h.GetProxyId() + "#" + h.GetInstance()
	case h.GetProxyId() != "":
		return h.GetProxyId()
	}
	return "#" + session
}

func newSession() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// reader is Run's state: the single goroutine that reads change sets from
// the store and encodes them, once for all streams.
type reader struct {
	s       *Server
	failing bool
}

func (r *reader) fail(msg string, err error) {
	if !r.failing && r.s.base.Err() == nil {
		r.s.log.Warn(msg, "err", err)
	}
	r.failing = true
}

func (r *reader) recovered() {
	if r.failing {
		r.s.log.Info("sync: change log readable again")
	}
	r.failing = false
}

// position starts the ring a little before the head, so that proxies that
// are slightly behind after a control-plane restart are served from memory.
func (r *reader) position(ctx context.Context) bool {
	head, err := r.s.st.Head(ctx)
	if err != nil {
		r.fail("sync: reading head revision", err)
		return false
	}
	oldest, err := r.s.st.Oldest(ctx)
	if err != nil {
		r.fail("sync: reading oldest revision", err)
		return false
	}
	start := max(head-int64(r.s.o.prefill), oldest-1, 0)
	r.s.feed.reset(start)
	r.pull(ctx)
	return true
}

func (r *reader) pull(ctx context.Context) {
	for {
		_, hi := r.s.feed.bounds()
		css, err := r.s.st.Changes(ctx, hi, r.s.o.batch)
		if err != nil {
			r.fail("sync: reading change log", err)
			return
		}
		r.recovered()
		ds := make([]encDelta, len(css))
		for i := range css {
			ds[i] = encodeChangeSet(r.s.log, css[i])
		}
		r.s.feed.push(ds)
		if len(css) < r.s.o.batch {
			return
		}
	}
}

// snapshotFor returns a snapshot for a proxy that needs one: the cached one
// when it is recent enough (the proxy gets the deltas since), else the one
// being built (its chunks are sent as they are published), else a new
// build. However many streams ask at once, one build runs.
func (s *Server) snapshotFor(ctx context.Context) (*snapshot, error) {
	head, err := s.st.Head(ctx)
	if err != nil {
		return nil, err
	}
	oldest, err := s.st.Oldest(ctx)
	if err != nil {
		return nil, err
	}
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if sn := s.snap; sn != nil && sn.revision >= oldest-1 && head-sn.revision <= s.o.snapshotMaxLag {
		s.snapUsed = time.Now()
		return sn, nil
	}
	if s.building == nil {
		s.building = newSnapshot()
		go s.build(s.building)
	}
	return s.building, nil
}

var errClosed = errors.New("sync server closed")

func (s *Server) build(sn *snapshot) {
	s.builds.Add(1)
	start := time.Now()
	err := s.st.Snapshot(s.base, func(rev int64, r store.Reader) error {
		return buildInto(s.base, s.log, rev, r, s.o.chunkEntities, s.o.chunkBytes, sn)
	})
	if err == nil && len(sn.chunks) == 0 {
		err = errors.New("store returned no snapshot")
	}
	info := SnapshotInfo{Duration: time.Since(start), Err: err}
	s.m.snapshotBuild.Observe(info.Duration.Seconds())
	if err != nil {
		s.m.snapshotErrors.Inc()
		if s.base.Err() == nil {
			s.log.Error("sync: snapshot build failed", "err", err, "took", info.Duration)
		}
	} else {
		info.Revision, info.Entities, info.Skipped = sn.revision, sn.entities, sn.skipped
		info.Chunks, info.Bytes = len(sn.chunks), sn.bytes
		s.log.Info("sync: snapshot built", "revision", sn.revision, "entities", sn.entities,
			"chunks", len(sn.chunks), "bytes", sn.bytes, "took", info.Duration)
	}
	s.snapMu.Lock()
	s.building = nil
	if err == nil && (s.snap == nil || sn.revision >= s.snap.revision) {
		s.snap = sn
		s.snapUsed = time.Now()
	}
	s.snapMu.Unlock()
	// Streams waiting for chunks learn the outcome only now: a stream never
	// sees a finished snapshot that is not yet the cached one.
	sn.finish(err)
	if s.o.onSnapshot != nil {
		s.o.onSnapshot(info)
	}
}

// expireSnapshot drops the cached snapshot after a quiet period: at a
// million keys it is a few hundred megabytes. Streams still sending it keep
// their reference.
func (s *Server) expireSnapshot() {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if s.snap != nil && time.Since(s.snapUsed) > s.o.snapshotTTL {
		s.log.Info("sync: dropping idle snapshot cache", "revision", s.snap.revision)
		s.snap = nil
	}
}

// Stats returns the connected proxies and the state of the shared caches.
func (s *Server) Stats() Stats {
	lo, hi := s.feed.bounds()
	st := Stats{Head: hi, RingOldest: lo + 1, SnapshotRevision: -1, SnapshotBuilds: s.builds.Load()}
	if lo == hi {
		st.RingOldest = hi // empty ring
	}
	s.snapMu.Lock()
	if s.snap != nil {
		st.SnapshotRevision, st.SnapshotBytes = s.snap.revision, s.snap.bytes
	}
	s.snapMu.Unlock()
	s.connsMu.Lock()
	live := map[string]bool{}
	for c := range s.conns {
		live[c.id] = true
		st.Proxies = append(st.Proxies, c.stats())
	}
	now := time.Now()
	for id, ps := range s.gone {
		switch {
		case now.Sub(ps.DisconnectedAt) > goneTTL:
			delete(s.gone, id)
		case !live[id]:
			st.Disconnected = append(st.Disconnected, ps)
		}
	}
	s.connsMu.Unlock()
	for _, list := range [][]ProxyStats{st.Proxies, st.Disconnected} {
		slices.SortFunc(list, func(a, b ProxyStats) int {
			return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Peer, b.Peer))
		})
	}
	return st
}

// stats is c's line in Stats.
func (c *conn) stats() ProxyStats {
	ps := ProxyStats{
		ID: c.id, Peer: c.peer, Version: c.version, ConnectedAt: c.connectedAt, LastSeen: c.connectedAt,
		HelloRevision: c.hello, SentRevision: c.sent.Load(), AppliedRevision: c.applied.Load(),
		OutboxDepth: -1, SpendAckedSeq: c.acked.Load(),
	}
	if t := c.lastSeen.Load(); t != 0 {
		ps.LastSeen = time.Unix(0, t)
	}
	if t := c.spendAt.Load(); t != 0 {
		ps.LastSpendBatch = time.Unix(0, t)
	}
	if ol := c.outboxLast.Load(); ol != 0 {
		ps.OutboxDepth = int64(ol - min(ol, ps.SpendAckedSeq))
	}
	ps.Connected = true
	return ps
}

// forget moves c from the connected proxies to the recently disconnected
// ones. Call with connsMu held.
func (s *Server) forgetLocked(c *conn) {
	delete(s.conns, c)
	if c.id == "" {
		return
	}
	if s.gone == nil {
		s.gone = map[string]ProxyStats{}
	}
	if _, ok := s.gone[c.id]; !ok && len(s.gone) >= maxGone {
		var oldest string
		for id, ps := range s.gone {
			if oldest == "" || ps.DisconnectedAt.Before(s.gone[oldest].DisconnectedAt) {
				oldest = id
			}
		}
		delete(s.gone, oldest)
	}
	ps := c.stats()
	ps.Connected, ps.DisconnectedAt = false, time.Now()
	s.gone[c.id] = ps
}
