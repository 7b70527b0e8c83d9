package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Store is the Postgres implementation of store.Store.
type Store struct {
	pool *pgxpool.Pool
	// readPool serves Read(): reads outside transactions.
	readPool *pgxpool.Pool
	// connConfig opens the dedicated connections (sequencer, listener) that
	// must not come from the pool: they hold a session lock or LISTEN.
	connConfig *pgx.ConnConfig
	opts       options
	log        *slog.Logger

	// seqWake wakes the local sequencer (buffered 1, coalescing).
	seqWake chan struct{}
	// notifyWake asks the notifier to tell the other replicas' sequencers
	// that changes are pending (buffered 1, coalescing).
	notifyWake chan struct{}
	// leader is true while this replica holds the sequencer lock.
	leader atomic.Bool
	// head is the highest revision this replica has seen; subscribers are
	// signalled when it advances.
	head atomic.Int64

	subsMu sync.Mutex
	subs   map[chan struct{}]struct{}
	closed bool
	done   chan struct{} // closed by Close

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to the database, applies pending migrations, and starts the
// background work (sequencer candidate, listener, notifier). Close stops it.
func Open(ctx context.Context, databaseURL string, opts ...Option) (*Store, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := parseURL(databaseURL)
	if err != nil {
		return nil, err
	}
	if !strings.Contains(databaseURL, "pool_max_conns") {
		cfg.MaxConns = o.maxConns
	}
	if err := migrate(ctx, cfg.ConnConfig, SchemaVersion()); err != nil {
		return nil, err
	}
	// Dedicated connections name themselves (tollgate-sequencer, ...)
	// unless the URL names them all.
	dedicated := cfg.ConnConfig.Copy()
	if _, set := cfg.ConnConfig.RuntimeParams["application_name"]; !set {
		cfg.ConnConfig.RuntimeParams["application_name"] = "tollgate-controlplane"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", classify(ctx, err))
	}
	// Reads outside transactions (auth lookups, /key/info, listings) get a
	// pool of their own, so a burst of write transactions holding every
	// write connection never queues a point read behind it.
	rcfg := cfg.Copy()
	rcfg.MaxConns = max(2, cfg.MaxConns/2)
	readPool, err := pgxpool.NewWithConfig(ctx, rcfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: %w", classify(ctx, err))
	}
	s := &Store{
		pool:       pool,
		readPool:   readPool,
		connConfig: dedicated,
		opts:       o,
		log:        o.logger.With("component", "store/postgres"),
		seqWake:    make(chan struct{}, 1),
		notifyWake: make(chan struct{}, 1),
		subs:       make(map[chan struct{}]struct{}),
		done:       make(chan struct{}),
	}
	head, err := s.Head(ctx)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.head.Store(head)

	bg, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(4)
	go s.runSequencer(bg)
	go s.runListener(bg)
	go s.runNotifier(bg)
	go s.runHeadPoller(bg)
	return s, nil
}

// Close stops the background work and closes every connection. A replica
// that was the sequencer releases its lock, so a standby takes over.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.subsMu.Lock()
		s.closed = true
		close(s.done)
		for ch := range s.subs {
			delete(s.subs, ch)
			close(ch)
		}
		s.subsMu.Unlock()
		s.pool.Close()
		s.readPool.Close()
	})
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	return classify(ctx, s.pool.Ping(ctx))
}

// Read returns a Reader on the pool: each call sees the latest committed
// state.
func (s *Store) Read() store.Reader {
	return &reader{q: s.readPool, fail: classify}
}

// Head returns the highest assigned revision.
func (s *Store) Head(ctx context.Context) (int64, error) {
	var head int64
	if err := s.pool.QueryRow(ctx, "SELECT revision FROM revision_head").Scan(&head); err != nil {
		return 0, classify(ctx, err)
	}
	return head, nil
}

// Changes returns up to limit change sets after the given revision.
// Revisions are gapless and a transaction's rows get their revision in one
// statement, so the range (after, after+limit] holds exactly the wanted
// change sets, each complete.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]store.ChangeSet, error) {
	if limit <= 0 {
		return nil, nil
	}
	if after < 0 {
		after = 0
	}
	upper := int64(math.MaxInt64)
	if int64(limit) < math.MaxInt64-after {
		upper = after + int64(limit)
	}
	rows, err := s.pool.Query(ctx, `
SELECT revision, kind, entity_id, op, data, committed_at
FROM changes
WHERE revision > $1 AND revision <= $2
ORDER BY revision, id`, after, upper)
	if err != nil {
		return nil, classify(ctx, err)
	}
	defer rows.Close()
	var sets []store.ChangeSet
	for rows.Next() {
		var (
			rev         int64
			c           store.Change
			data        []byte
			committedAt time.Time
		)
		if err := rows.Scan(&rev, &c.Kind, &c.ID, &c.Op, &data, &committedAt); err != nil {
			return nil, classify(ctx, err)
		}
		if data != nil {
			c.Data = json.RawMessage(data)
		}
		if n := len(sets); n == 0 || sets[n-1].Revision != rev {
			sets = append(sets, store.ChangeSet{Revision: rev, CommittedAt: committedAt})
		}
		last := &sets[len(sets)-1]
		last.Changes = append(last.Changes, c)
		if committedAt.After(last.CommittedAt) {
			last.CommittedAt = committedAt
		}
	}
	if err := rows.Err(); err != nil {
		return nil, classify(ctx, err)
	}
	return sets, nil
}

// Oldest returns the lowest revision still in the change log, or Head+1
// when the log is empty.
func (s *Store) Oldest(ctx context.Context) (int64, error) {
	var oldest *int64
	var head int64
	err := s.pool.QueryRow(ctx, `
SELECT (SELECT min(revision) FROM changes WHERE revision IS NOT NULL), revision
FROM revision_head`).Scan(&oldest, &head)
	if err != nil {
		return 0, classify(ctx, err)
	}
	if oldest == nil {
		return head + 1, nil
	}
	return *oldest, nil
}

// Snapshot runs fn in a REPEATABLE READ READ ONLY transaction: the revision
// head and every entity come from one database snapshot. The sequencer
// advances the head in the same transaction that numbers committed writes,
// so every change set up to the revision is in the view.
//
// Writes committed but not yet numbered may be in the view too; replaying
// their change sets later converges, but an entity could briefly step back
// to an older version in between (a change set numbered after the snapshot's
// revision, yet older than what the view holds). Snapshot therefore waits a
// little (up to about 50ms) for a view without such writes before it settles
// for one.
func (s *Store) Snapshot(ctx context.Context, fn func(revision int64, r store.Reader) error) error {
	for attempt := 1; ; attempt++ {
		err := s.snapshot(ctx, attempt < snapshotAttempts, fn)
		if err != errPendingInView {
			return err
		}
		if !sleep(ctx, 2*time.Millisecond) {
			return ctx.Err()
		}
	}
}

const snapshotAttempts = 25

var errPendingInView = errors.New("postgres: snapshot holds writes without a revision")

func (s *Store) snapshot(ctx context.Context, exact bool, fn func(revision int64, r store.Reader) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return classify(ctx, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read only; nothing to lose
	var head int64
	var pending bool
	err = tx.QueryRow(ctx, `
SELECT revision, EXISTS (SELECT 1 FROM changes WHERE revision IS NULL)
FROM revision_head`).Scan(&head, &pending)
	if err != nil {
		return classify(ctx, err)
	}
	if pending && exact {
		return errPendingInView
	}
	sq := &serialQuerier{q: tx}
	if err := fn(head, &reader{q: sq, fail: classify, snap: sq}); err != nil {
		return err
	}
	return classify(ctx, tx.Commit(ctx))
}

// Subscribe returns a channel signalled (coalesced, never blocking the
// store) whenever the head revision advances. It is closed when ctx ends or
// the store closes.
func (s *Store) Subscribe(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.subsMu.Lock()
	if s.closed {
		s.subsMu.Unlock()
		close(ch)
		return ch
	}
	s.subs[ch] = struct{}{}
	s.subsMu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
		case <-s.done:
		}
		s.subsMu.Lock()
		defer s.subsMu.Unlock()
		if _, ok := s.subs[ch]; ok {
			delete(s.subs, ch)
			close(ch)
		}
	}()
	return ch
}

// advanceHead records a head revision seen by any path (sequencer commit,
// notification, poll) and signals subscribers when it moved forward.
func (s *Store) advanceHead(rev int64) {
	for {
		cur := s.head.Load()
		if rev <= cur {
			return
		}
		if s.head.CompareAndSwap(cur, rev) {
			break
		}
	}
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (s *Store) hasSubscribers() bool {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	return len(s.subs) > 0
}

// sleep waits for d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
