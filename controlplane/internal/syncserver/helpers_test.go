package syncserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
)

const testToken = "sync-token-for-tests"

func TestMain(m *testing.M) { pgtest.Main(m) }

// backend is a store the protocol tests run against.
type backend struct {
	name string
	open func(t testing.TB) store.Store
}

// backends are the in-memory test store (always) and the real backends
// (Postgres via pgtest; skipped there when no server can be found).
func backends() []backend {
	return []backend{
		{"mem", func(testing.TB) store.Store { return newMemStore() }},
		{"postgres", func(t testing.TB) store.Store {
			return pgtest.NewStore(t)
		}},
	}
}

func forEachBackend(t *testing.T, fn func(t *testing.T, st store.Store)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			fn(t, b.open(t))
		})
	}
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// harness is a Server behind a real gRPC server on a loopback port, with a
// client connection to it.
type harness struct {
	t      testing.TB
	st     store.Store
	srv    *Server
	logs   *logBuffer
	client syncv1.SyncServiceClient
	conn   *grpc.ClientConn
	stop   func()
}

func fastOptions() []Option {
	return []Option{WithHeartbeatInterval(100 * time.Millisecond), WithPollInterval(50 * time.Millisecond), WithAheadWait(300 * time.Millisecond)}
}

func newHarness(t testing.TB, st store.Store, token string, opts ...Option) *harness {
	t.Helper()
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts = append(append([]Option{WithLogger(logger)}, fastOptions()...), opts...)
	srv := New(st, token, opts...)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	syncv1.RegisterSyncServiceServer(gs, srv)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	wg.Go(func() {
		if err := srv.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, st: st, srv: srv, logs: logs, client: syncv1.NewSyncServiceClient(conn), conn: conn}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel() // ends Run, which closes srv and ends every stream
			conn.Close()
			gs.GracefulStop()
			wg.Wait()
		})
	}
	t.Cleanup(h.stop)
	return h
}

// fakeProxy is a data plane reduced to what the protocol promises: it
// applies snapshots and deltas and fails the test on any invariant broken
// by any message it receives.
type fakeProxy struct {
	t      testing.TB
	id     string
	stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage]
	conn   *grpc.ClientConn // own connection, if any
	cancel context.CancelFunc
	msgs   chan *syncv1.ControlMessage
	errc   chan error

	rev         int64
	leaseGrants []*syncv1.LeaseGrant
	state       map[string]*syncv1.Entity
	inSnap      bool
	snapRev     int64
	nextSeq     int32
	pending     map[string]*syncv1.Entity
	acks        []*syncv1.SpendAck
	snapshots   []int64 // revisions of complete snapshots
	deltas      []int64 // revisions of applied deltas
	heartbeats  []*syncv1.Heartbeat
	received    [][]byte // every message, re-encoded
}

// connect opens a stream with the given token ("" for none) and sends
// Hello{revision: rev}. With pump, a goroutine receives continuously.
func (h *harness) connect(id, token string, rev int64, pump bool) *fakeProxy {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	stream, err := h.client.Sync(ctx)
	if err != nil {
		cancel()
		h.t.Fatalf("open stream: %v", err)
	}
	if err := stream.Send(&syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Hello{Hello: &syncv1.Hello{ProxyId: id, Revision: rev, Version: "test"}}}); err != nil {
		cancel()
		h.t.Fatalf("send hello: %v", err)
	}
	p := &fakeProxy{t: h.t, id: id, stream: stream, cancel: cancel, rev: rev,
		msgs: make(chan *syncv1.ControlMessage, 4096), errc: make(chan error, 1), state: map[string]*syncv1.Entity{}}
	h.t.Cleanup(cancel)
	if pump {
		p.startPump()
	}
	return p
}

func (p *fakeProxy) startPump() {
	go func() {
		for {
			m, err := p.stream.Recv()
			if err != nil {
				p.errc <- err
				return
			}
			p.msgs <- m
		}
	}()
}

// next returns the next message, or the stream's end as an error.
func (p *fakeProxy) next(timeout time.Duration) (*syncv1.ControlMessage, error) {
	p.t.Helper()
	select {
	case m := <-p.msgs:
		p.apply(m)
		if m.GetLeaseGrant() != nil {
			// Rate-limit shares are not part of the revision protocol
			// these tests check.
			p.leaseGrants = append(p.leaseGrants, m.GetLeaseGrant())
			return p.next(timeout)
		}
		return m, nil
	case err := <-p.errc:
		p.errc <- err // stays readable
		return nil, err
	case <-time.After(timeout):
		p.t.Fatalf("proxy %s: no message within %s (rev %d)", p.id, timeout, p.rev)
		return nil, nil
	}
}

func (p *fakeProxy) mustNext(timeout time.Duration) *syncv1.ControlMessage {
	p.t.Helper()
	m, err := p.next(timeout)
	if err != nil {
		p.t.Fatalf("proxy %s: stream ended: %v", p.id, err)
	}
	return m
}

// waitRev reads until the proxy holds at least rev.
func (p *fakeProxy) waitRev(rev int64, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for p.inSnap || p.rev < rev {
		left := time.Until(deadline)
		if left <= 0 {
			p.t.Fatalf("proxy %s: at revision %d, want %d", p.id, p.rev, rev)
		}
		p.mustNext(left)
	}
}

// quiet asserts that only heartbeats arrive for d.
func (p *fakeProxy) quiet(d time.Duration) {
	p.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-p.msgs:
			p.apply(m)
			if m.GetHeartbeat() == nil && m.GetLeaseGrant() == nil {
				p.t.Fatalf("proxy %s: unexpected %T while quiet", p.id, m.GetMsg())
			}
		case err := <-p.errc:
			p.t.Fatalf("proxy %s: stream ended: %v", p.id, err)
		case <-deadline:
			return
		}
	}
}

func entityKey(e *syncv1.Entity) string { return e.GetKind() + "/" + e.GetId() }

// apply checks the protocol's invariants on m and applies it.
func (p *fakeProxy) apply(m *syncv1.ControlMessage) {
	p.t.Helper()
	raw, err := proto.Marshal(m)
	if err != nil {
		p.t.Errorf("proxy %s: re-encode: %v", p.id, err)
	}
	p.received = append(p.received, raw)
	switch x := m.GetMsg().(type) {
	case *syncv1.ControlMessage_Snapshot:
		c := x.Snapshot
		if !p.inSnap {
			if c.GetSeq() != 0 {
				p.t.Errorf("proxy %s: snapshot starts at seq %d", p.id, c.GetSeq())
			}
			p.inSnap, p.snapRev, p.nextSeq, p.pending = true, c.GetRevision(), 0, map[string]*syncv1.Entity{}
		}
		if c.GetRevision() != p.snapRev {
			p.t.Errorf("proxy %s: snapshot chunk %d has revision %d, chunk 0 had %d", p.id, c.GetSeq(), c.GetRevision(), p.snapRev)
		}
		if c.GetSeq() != p.nextSeq {
			p.t.Errorf("proxy %s: snapshot chunk seq %d, want %d", p.id, c.GetSeq(), p.nextSeq)
		}
		p.nextSeq++
		for _, e := range c.GetEntities() {
			if e.GetDeleted() {
				p.t.Errorf("proxy %s: tombstone %s in a snapshot", p.id, entityKey(e))
			}
			p.pending[entityKey(e)] = e
		}
		if c.GetLast() {
			p.state, p.rev, p.inSnap, p.pending = p.pending, p.snapRev, false, nil
			p.snapshots = append(p.snapshots, p.snapRev)
		}
	case *syncv1.ControlMessage_Delta:
		d := x.Delta
		if p.inSnap {
			p.t.Errorf("proxy %s: delta %d inside a snapshot", p.id, d.GetRevision())
		}
		if d.GetPrevRevision() != p.rev || d.GetRevision() != d.GetPrevRevision()+1 {
			p.t.Errorf("proxy %s: delta %d (prev %d) applied at revision %d", p.id, d.GetRevision(), d.GetPrevRevision(), p.rev)
		}
		for _, e := range d.GetChanges() {
			if e.GetDeleted() {
				delete(p.state, entityKey(e))
			} else {
				p.state[entityKey(e)] = e
			}
		}
		p.rev = d.GetRevision()
		p.deltas = append(p.deltas, d.GetRevision())
	case *syncv1.ControlMessage_Heartbeat:
		if p.inSnap {
			p.t.Errorf("proxy %s: heartbeat inside a snapshot", p.id)
		}
		if !x.Heartbeat.GetLivenessOnly() && x.Heartbeat.GetHeadRevision() < p.rev {
			p.t.Errorf("proxy %s: heartbeat head %d below held revision %d", p.id, x.Heartbeat.GetHeadRevision(), p.rev)
		}
		p.heartbeats = append(p.heartbeats, x.Heartbeat)
	case *syncv1.ControlMessage_SpendAck:
		p.acks = append(p.acks, x.SpendAck)
	case *syncv1.ControlMessage_LeaseGrant:
		// Rate-limit shares: not part of the revision protocol.
	default:
		p.t.Errorf("proxy %s: empty control message", p.id)
	}
}

// wantState is the store's current state as a fresh snapshot would carry it.
func wantState(t testing.TB, st store.Store) (int64, map[string]*syncv1.Entity) {
	t.Helper()
	var (
		rev   int64
		state = map[string]*syncv1.Entity{}
	)
	err := st.Snapshot(context.Background(), func(r int64, rd store.Reader) error {
		sn, err := buildSnapshot(context.Background(), slog.New(slog.DiscardHandler), r, rd, 1000, 1<<20)
		if err != nil {
			return err
		}
		rev = sn.revision
		for _, raw := range sn.chunks {
			var m syncv1.ControlMessage
			if err := proto.Unmarshal(raw, &m); err != nil {
				return err
			}
			for _, e := range m.GetSnapshot().GetEntities() {
				state[entityKey(e)] = e
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rev, state
}

// assertState compares the proxy's state with a fresh snapshot of the store
// at the same revision.
func (p *fakeProxy) assertState(st store.Store) {
	p.t.Helper()
	rev, want := wantState(p.t, st)
	if rev != p.rev {
		p.t.Fatalf("proxy %s at revision %d, store at %d", p.id, p.rev, rev)
	}
	if len(want) != len(p.state) {
		p.t.Errorf("proxy %s holds %d entities, store %d", p.id, len(p.state), len(want))
	}
	for k, w := range want {
		if g, ok := p.state[k]; !ok || !proto.Equal(g, w) {
			p.t.Errorf("proxy %s: %s = %v, want %v", p.id, k, g, w)
		}
	}
}

// ---- fixtures

func ptr[T any](v T) *T { return &v }

// newPlaintext returns a fresh key secret in LiteLLM's "sk-" form.
func newPlaintext() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "sk-" + hex.EncodeToString(b)
}

func testKey(id string, plaintext string) store.Key {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return store.Key{
		TokenID: id, KeyHash: sha256Hex(plaintext), KeyName: "sk-..." + plaintext[len(plaintext)-4:],
		KeyAlias: "alias-" + id, TeamID: "team-1", UserID: "user-1",
		Models:        []string{"gpt-4o-mini"},
		Limits:        store.Limits{MaxBudget: ptr[int64](5_000_000), RPMLimit: ptr[int64](60)},
		ModelRPMLimit: map[string]int64{"gpt-4o-mini": 10},
		Metadata:      json.RawMessage(`{"env":"test"}`),
		CreatedAt:     now, UpdatedAt: now,
	}
}

const (
	masterKeyValue = "sk-master-0123456789abcdef-NEVER-SYNC"
	dbURLValue     = "postgres://tollgate:hunter2@db.internal/tollgate"
)

// seed writes an organization, team, user, model, settings (with secrets
// that must be stripped) and n keys in one transaction; it returns the
// plaintexts of the keys.
func seed(t testing.TB, st store.Store, n int) []string {
	t.Helper()
	plain := make([]string, n)
	now := time.Now().UTC().Truncate(time.Microsecond)
	_ = write(t, st, func(ctx context.Context, tx store.Tx) error {
		if err := tx.PutSettings(ctx, store.Settings{
			GeneralSettings: json.RawMessage(fmt.Sprintf(`{"master_key":%q,"database_url":%q,"service_account_settings":{"enforced_params":["user"]}}`, masterKeyValue, dbURLValue)),
			UpdatedAt:       now,
		}); err != nil {
			return err
		}
		if err := tx.CreateOrganization(ctx, store.Organization{OrganizationID: "org-1", OrganizationAlias: "Org", CreatedAt: now, UpdatedAt: now}); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, store.User{UserID: "user-1", UserRole: store.RoleInternalUser, CreatedAt: now, UpdatedAt: now}); err != nil {
			return err
		}
		if err := tx.CreateTeam(ctx, store.Team{TeamID: "team-1", OrganizationID: "org-1", CreatedAt: now, UpdatedAt: now,
			Members: []store.TeamMember{{UserID: "user-1", Role: store.TeamRoleAdmin, MaxBudgetInTeam: ptr[int64](1_000_000)}}}); err != nil {
			return err
		}
		if err := tx.CreateModel(ctx, store.Model{ID: "m-1", ModelName: "gpt-4o-mini", UpstreamModel: "openai/gpt-4o-mini",
			APIKey: "os.environ/OPENAI_API_KEY", InputCostPerToken: 150_000, CreatedAt: now, UpdatedAt: now}); err != nil {
			return err
		}
		for i := range n {
			plain[i] = newPlaintext()
			if err := tx.CreateKey(ctx, testKey(fmt.Sprintf("key-%04d", i), plain[i])); err != nil {
				return err
			}
		}
		return nil
	})
	return plain
}

// write runs fn in a transaction and returns the revision it got (tests
// write from one goroutine; Postgres numbers commits shortly after).
func write(t testing.TB, st store.Store, fn func(ctx context.Context, tx store.Tx) error) int64 {
	t.Helper()
	ctx := context.Background()
	before, err := st.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ReadWriteTx(ctx, fn); err != nil {
		t.Fatalf("write: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		head, err := st.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if head > before {
			return head
		}
	}
	t.Fatal("the write got no revision")
	return 0
}

// addKey writes one key in its own transaction.
func addKey(t testing.TB, st store.Store, id string) (plaintext string, rev int64) {
	t.Helper()
	plaintext = newPlaintext()
	rev = write(t, st, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, testKey(id, plaintext)) })
	return plaintext, rev
}

// withBatch sets how many change sets one read of the change log takes
// (tests: 1 keeps a lagging stream from reading ahead).
func withBatch(n int) Option { return func(o *options) { o.batch = n } }
