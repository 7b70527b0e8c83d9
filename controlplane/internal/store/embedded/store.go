package embedded

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("locked by another process")

// ErrSchemaTooNew is returned by Open for a file written by a newer Tollgate.
var ErrSchemaTooNew = errors.New("schema version newer than this binary supports")

// Store is the embedded (bbolt) implementation of store.Store.
type Store struct {
	db   *bolt.DB
	path string
	opts options

	// head mirrors the committed revision head, for subscribers.
	head atomic.Int64

	subsMu sync.Mutex
	subs   map[chan struct{}]struct{}
	closed bool
	done   chan struct{} // closed by Close

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

type options struct {
	lockTimeout time.Duration
	retention   int64
	mmapSize    int
}

// Option configures Open.
type Option func(*options)

// DefaultRetention is how many change sets the log keeps (see doc.go).
const DefaultRetention = 100_000

// WithLockTimeout bounds how long Open waits for the file lock (default 2s).
func WithLockTimeout(d time.Duration) Option { return func(o *options) { o.lockTimeout = d } }

// WithRetention sets how many of the latest change sets Changes keeps
// (default DefaultRetention; values below 1 mean 1).
func WithRetention(n int) Option {
	return func(o *options) { o.retention = int64(max(n, 1)) }
}

// Open opens (creating if missing: directory 0700, file 0600) the store
// file at path and migrates it to the current schema. A file held by
// another process fails with ErrLocked after the lock timeout; a file with a
// newer schema fails with ErrSchemaTooNew.
func Open(path string, opts ...Option) (*Store, error) {
	o := options{lockTimeout: 2 * time.Second, retention: DefaultRetention, mmapSize: initialMmapSize()}
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("embedded: create directory for store %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      o.lockTimeout,
		FreelistType: bolt.FreelistArrayType,
		// Address space only (the file grows as data is written): as long
		// as the file fits, a writer never waits for long read
		// transactions (snapshots) to remap.
		InitialMmapSize: o.mmapSize,
	})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("embedded: store %s is %w (no lock after %s); is another controlplane running with the same --data-dir?",
			path, ErrLocked, o.lockTimeout)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
		return nil, fmt.Errorf("embedded: store %s is not a valid Tollgate store file: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("embedded: open store %s: %w", path, err)
	}
	s := &Store{db: db, path: path, opts: o, subs: make(map[chan struct{}]struct{}), done: make(chan struct{})}
	if err := s.upgrade(); err != nil {
		db.Close() //nolint:errcheck // the open error matters more
		return nil, err
	}
	var head int64
	if err := db.View(func(tx *bolt.Tx) error { head = readHead(tx); return nil }); err != nil {
		db.Close() //nolint:errcheck
		return nil, fmt.Errorf("embedded: read head of %s: %w", path, err)
	}
	s.head.Store(head)
	return s, nil
}

// initialMmapSize is the address space mapped up front: 8 GiB where that is
// only address space (64-bit, not Windows, where bbolt would grow the file
// to it), 1 GiB elsewhere.
func initialMmapSize() int {
	if strconv.IntSize == 64 && runtime.GOOS != "windows" {
		return 8 << 30
	}
	return 1 << 30
}

// upgrade checks the schema version and applies pending migrations.
func (s *Store) upgrade() error {
	var v int
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if v, err = schemaVersion(tx); err != nil || v > 0 {
			return err
		}
		// Migrations are atomic, so a file without a version and with
		// buckets was written by something else (a data plane's cache?).
		if k, _ := tx.Cursor().First(); k != nil {
			return fmt.Errorf("not a Tollgate control-plane store (it holds a bucket %q but no schema version)", k)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("embedded: store %s: %w", s.path, err)
	}
	if v > len(migrations) {
		return fmt.Errorf("embedded: store %s has schema version %d, this binary knows up to %d (%w); upgrade Tollgate",
			s.path, v, len(migrations), ErrSchemaTooNew)
	}
	if v == len(migrations) {
		return nil
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketMeta); err != nil {
			return err
		}
		return migrate(tx, v)
	}); err != nil {
		return fmt.Errorf("embedded: store %s: %w", s.path, err)
	}
	return nil
}

// Close closes the file (waiting for running transactions) and ends every
// subscription. Later calls return ErrUnavailable errors.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.subsMu.Lock()
		s.closed = true
		close(s.done)
		for ch := range s.subs {
			delete(s.subs, ch)
			close(ch)
		}
		s.subsMu.Unlock()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// boltErr maps bbolt errors for conditions outside the caller's control.
func boltErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("embedded: %w: store is closed", store.ErrUnavailable)
	}
	return fmt.Errorf("embedded: %w", err)
}

// view runs fn in a read transaction. Errors from fn come back unchanged;
// bbolt's own are mapped by boltErr.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	var ferr error
	err := s.db.View(func(tx *bolt.Tx) error {
		ferr = fn(tx)
		return ferr
	})
	if ferr != nil {
		return ferr
	}
	return boltErr(err)
}

// Ping checks that the file is open.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.view(func(*bolt.Tx) error { return nil })
}

// Read returns a Reader whose every call is its own read transaction.
func (s *Store) Read() store.Reader {
	return &reader{view: s.view}
}

// ReadWriteTx runs fn in one bbolt write transaction (writers are
// serialized, so fn runs exactly once) and commits it when fn returns nil.
// A transaction that changed an entity gets the next revision and its change
// set, in the same commit.
func (s *Store) ReadWriteTx(ctx context.Context, fn func(ctx context.Context, tx store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		ferr error
		rev  int64
	)
	err := s.db.Update(func(btx *bolt.Tx) error {
		t := newTx(btx)
		defer t.done.Store(true)
		if ferr = fn(ctx, t); ferr != nil {
			return ferr
		}
		t.done.Store(true)
		if t.broken != nil {
			// fn swallowed a write that failed half-way: committing could
			// store an entity without its indexes.
			return t.broken
		}
		if len(t.changes) == 0 {
			return nil
		}
		var err error
		rev, err = s.appendChangeSet(btx, t.changes)
		return err
	})
	if ferr != nil {
		return ferr
	}
	if err != nil {
		return boltErr(err)
	}
	if rev > 0 {
		s.advance(rev)
	}
	return nil
}

// changeRecord is the stored form of a ChangeSet (the revision is the key).
type changeRecord struct {
	CommittedAt time.Time      `json:"committed_at"`
	Changes     []store.Change `json:"changes"`
}

// compactBatch bounds how many old change sets one commit deletes, so that
// lowering the retention does not make one write slow.
const compactBatch = 1000

// appendChangeSet assigns the next revision, stores the change set under it
// and drops change sets older than the retention.
func (s *Store) appendChangeSet(tx *bolt.Tx, changes []store.Change) (int64, error) {
	rev := readHead(tx) + 1
	rec, err := json.Marshal(changeRecord{CommittedAt: time.Now().UTC(), Changes: changes})
	if err != nil {
		return 0, fmt.Errorf("encode change set: %w", err)
	}
	log := tx.Bucket(bucketChanges)
	if err := log.Put(u64(uint64(rev)), rec); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bucketMeta).Put(metaHead, u64(uint64(rev))); err != nil {
		return 0, err
	}
	cutoff := rev - s.opts.retention // drop revisions ≤ cutoff
	if cutoff <= 0 {
		return rev, nil
	}
	c := log.Cursor()
	for i := 0; i < compactBatch; i++ {
		k, _ := c.First()
		if k == nil || int64(binary.BigEndian.Uint64(k)) > cutoff {
			break
		}
		if err := c.Delete(); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

// advance records a committed head and signals subscribers.
func (s *Store) advance(rev int64) {
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

// Head returns the highest committed revision.
func (s *Store) Head(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var head int64
	err := s.view(func(tx *bolt.Tx) error { head = readHead(tx); return nil })
	return head, err
}

// Changes returns up to limit change sets after the given revision.
func (s *Store) Changes(ctx context.Context, after int64, limit int) ([]store.ChangeSet, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	if after < 0 {
		after = 0
	}
	var sets []store.ChangeSet
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketChanges).Cursor()
		for k, v := c.Seek(u64(uint64(after) + 1)); k != nil && len(sets) < limit; k, v = c.Next() {
			rev := int64(binary.BigEndian.Uint64(k))
			var rec changeRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("embedded: decode change set %d: %w", rev, err)
			}
			sets = append(sets, store.ChangeSet{Revision: rev, CommittedAt: rec.CommittedAt, Changes: rec.Changes})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sets, nil
}

// Oldest returns the lowest revision in the change log, or Head+1 when the
// log is empty.
func (s *Store) Oldest(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var oldest int64
	err := s.view(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketChanges).Cursor().First(); k != nil {
			oldest = int64(binary.BigEndian.Uint64(k))
		} else {
			oldest = readHead(tx) + 1
		}
		return nil
	})
	return oldest, err
}

// Snapshot calls fn in one read transaction: the revision is the head in
// that view and the Reader sees exactly the state after it. The Reader must
// not be used after fn returns.
func (s *Store) Snapshot(ctx context.Context, fn func(revision int64, r store.Reader) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.view(func(tx *bolt.Tx) error {
		r := &reader{}
		var done atomic.Bool
		defer done.Store(true)
		r.view = func(f func(*bolt.Tx) error) error {
			if done.Load() {
				return errSnapshotDone
			}
			return f(tx)
		}
		return fn(readHead(tx), r)
	})
}

var errSnapshotDone = errors.New("embedded: snapshot reader used after its callback returned")

// Subscribe returns a channel signalled (coalesced, never blocking the
// store) whenever the head advances. It is closed when ctx ends or the
// store closes.
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
