package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// schemaVersion is the layout written by this package. Any other value on
// disk is treated as corrupt: a cache is rebuilt from the control plane, so
// there is no migration. Version 2 holds money in nano-USD; a version-1
// cache (micro-USD) is emptied at Open (revision 0), so the proxy fetches a
// full snapshot instead of reading micro-USD amounts as nano-USD.
const schemaVersion = 2 // values: CRC-32C || protobuf

// schemaMicroUSD is the previous layout: the same, with money in micro-USD.
const schemaMicroUSD = 1

// lockTimeout bounds the wait for another process holding the file.
var lockTimeout = 2 * time.Second // a variable for tests

var (
	bucketMeta  = []byte("meta")
	keySchema   = []byte("schema")
	keyRevision = []byte("revision")
	keyActive   = []byte("active")
	keyNext     = []byte("next_snapshot")
	snapPrefix  = []byte("snap/")
)

var (
	// ErrCorrupt marks a file that is not a readable cache of this schema.
	// Open moves such a file aside; Load returns it (wrapped) when an
	// entity cannot be decoded, and the caller may then call Reset.
	ErrCorrupt = errors.New("cache: corrupt")
	// ErrLocked means another process holds the cache file.
	ErrLocked = errors.New("cache: file is locked by another process")
	// ErrNoSnapshot is returned by ApplyDelta before any snapshot was
	// committed.
	ErrNoSnapshot = errors.New("cache: no snapshot")
	// ErrRevisionMismatch is returned by ApplyDelta when the delta does not
	// follow the stored revision.
	ErrRevisionMismatch = errors.New("cache: delta does not follow the stored revision")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("cache: closed")
)

// Cache is the bbolt file holding the data plane's last applied state.
type Cache struct {
	mu   sync.Mutex // guards db (Reset swaps it) and serializes writers
	db   *bolt.DB
	path string
	log  *slog.Logger

	// Deltas are committed without an fdatasync (see unsynced.go); these
	// track what the periodic sync has made durable.
	unsynced              bool  // the marker file is down: writes may be unsynced
	deltaWrites, synced   int64 // delta commits, and how many of them were synced
	lastWrite             time.Time
	stopSync, syncStopped chan struct{}
	kick                  chan struct{} // the marker went down
}

// Open opens (or creates) the cache at path. A file that is corrupt or
// unreadable (bad magic or checksum, truncated, failed consistency check,
// unknown schema, any bbolt open error but a lock timeout) is renamed to
// <path>.corrupt-<unixtime>, logged, and replaced by an empty cache.
func Open(path string, logger *slog.Logger) (*Cache, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache{path: path, log: logger, kick: make(chan struct{}, 1)}
	if err := c.checkUnsynced(); err != nil {
		return nil, err
	}
	db, err := openDB(path, logger)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		if err := c.moveAside(err); err != nil {
			return nil, err
		}
		if db, err = openDB(path, logger); err != nil {
			return nil, fmt.Errorf("cache: open fresh %s: %w", path, err)
		}
	}
	c.db = db
	c.stopSync, c.syncStopped = make(chan struct{}), make(chan struct{})
	go c.syncLoop()
	return c, nil
}

// Path is the file's path.
func (c *Cache) Path() string { return c.path }

// Close closes the file. Later calls fail with ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.db == nil {
		c.mu.Unlock()
		return nil
	}
	c.syncLocked(true)
	err := c.db.Close()
	c.db = nil
	c.mu.Unlock()
	close(c.stopSync)
	<-c.syncStopped
	return err
}

// Reset moves the current file aside as corrupt (for reason) and starts an
// empty cache in its place.
func (c *Cache) Reset(reason error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return ErrClosed
	}
	_ = c.db.Close()
	c.db = nil
	if err := c.moveAside(reason); err != nil {
		return err
	}
	c.clearUnsynced()
	db, err := openDB(c.path, c.log)
	if err != nil {
		return fmt.Errorf("cache: open fresh %s: %w", c.path, err)
	}
	c.db = db
	return nil
}

func (c *Cache) moveAside(reason error) error {
	if st, err := os.Lstat(c.path); err != nil || !st.Mode().IsRegular() {
		// Nothing we can set aside (missing file, a directory...): the
		// original error stands.
		return reason
	}
	base := c.path + ".corrupt-" + strconv.FormatInt(time.Now().Unix(), 10)
	dst := base
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		dst = base + "." + strconv.Itoa(i)
	}
	if err := os.Rename(c.path, dst); err != nil {
		return fmt.Errorf("cache: move corrupt %s aside: %w (cause: %v)", c.path, err, reason)
	}
	c.log.Error("cache: file is corrupt or unreadable; moved aside, starting empty",
		"path", c.path, "moved_to", dst, "err", reason)
	return nil
}

// openDB checks the file, opens it with bbolt and checks the schema.
// Corruption of any kind comes back wrapping ErrCorrupt.
func openDB(path string, log *slog.Logger) (db *bolt.DB, err error) {
	_, statErr := os.Lstat(path)
	if err := verifyFile(path); err != nil {
		return nil, err
	}
	// bbolt reads the file through mmap and panics (or faults) on some
	// corruptions; treat that as corruption too.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				func() {
					defer func() { _ = recover() }()
					_ = db.Close()
				}()
			}
			db, err = nil, fmt.Errorf("%w: %v", ErrCorrupt, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: lockTimeout,
		// The freelist is rebuilt at open by walking every page, which is
		// also our consistency check; commits write less.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		if errors.Is(statErr, os.ErrNotExist) {
			// Nothing there to be corrupt: the directory is missing or
			// not writable.
			return nil, fmt.Errorf("cache: create %s: %w", path, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := initSchema(db, log); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// initSchema creates the meta bucket in a new file, verifies it in an
// existing one, and drops snapshot buckets that were never activated (a
// snapshot interrupted by a crash or an abort).
func initSchema(db *bolt.DB, log *slog.Logger) error {
	return db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		var names [][]byte
		if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, bytes.Clone(name))
			return nil
		}); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		if meta == nil {
			if len(names) > 0 {
				return fmt.Errorf("%w: not a tollgate cache (no meta bucket)", ErrCorrupt)
			}
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, schemaVersion)); err != nil {
				return err
			}
			return meta.Put(keyRevision, binary.BigEndian.AppendUint64(nil, 0))
		}
		if v := meta.Get(keySchema); len(v) == 4 && binary.BigEndian.Uint32(v) == schemaMicroUSD {
			log.Warn("cache: holds money in micro-USD (an older release); discarding it, a full snapshot follows")
			for _, name := range names {
				if !bytes.Equal(name, bucketMeta) {
					if err := tx.DeleteBucket(name); err != nil {
						return err
					}
				}
			}
			if err := meta.Delete(keyActive); err != nil {
				return err
			}
			if err := meta.Put(keyRevision, binary.BigEndian.AppendUint64(nil, 0)); err != nil {
				return err
			}
			return meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, schemaVersion))
		}
		if v := meta.Get(keySchema); len(v) != 4 || binary.BigEndian.Uint32(v) != schemaVersion {
			return fmt.Errorf("%w: unknown schema version %x", ErrCorrupt, v)
		}
		if v := meta.Get(keyRevision); len(v) != 8 {
			return fmt.Errorf("%w: bad revision record", ErrCorrupt)
		}
		active := meta.Get(keyActive)
		if active != nil && tx.Bucket(active) == nil {
			return fmt.Errorf("%w: active snapshot bucket %q missing", ErrCorrupt, active)
		}
		for _, name := range names {
			if bytes.Equal(name, bucketMeta) || bytes.Equal(name, active) {
				continue
			}
			if !bytes.HasPrefix(name, snapPrefix) {
				return fmt.Errorf("%w: unknown bucket %q", ErrCorrupt, name)
			}
			log.Warn("cache: discarding incomplete snapshot", "bucket", string(name))
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
}

// castagnoli is hardware-accelerated on amd64 and arm64.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendValue appends e's stored form: CRC-32C (big endian) of the
// protobuf bytes, then the bytes. bbolt checksums only its meta pages; the
// CRC catches a damaged value that would still decode.
func appendValue(dst []byte, e *syncv1.Entity) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst, err := proto.MarshalOptions{}.MarshalAppend(dst, e)
	if err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], castagnoli))
	return dst, nil
}

func decodeValue(v []byte, e *syncv1.Entity) error {
	if len(v) < 4 {
		return errors.New("short value")
	}
	if crc32.Checksum(v[4:], castagnoli) != binary.BigEndian.Uint32(v) {
		return errors.New("checksum mismatch")
	}
	return proto.Unmarshal(v[4:], e)
}

// entityKey is the key of an entity inside a snapshot bucket.
func entityKey(dst []byte, kind, id string) []byte {
	dst = append(dst, kind...)
	dst = append(dst, 0)
	return append(dst, id...)
}

func getRevision(meta *bolt.Bucket) int64 {
	return int64(binary.BigEndian.Uint64(meta.Get(keyRevision)))
}

// Revision returns the revision of the committed snapshot (with the deltas
// applied since); ok is false when the cache holds no snapshot.
func (c *Cache) Revision() (rev int64, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return 0, false, ErrClosed
	}
	err = c.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		ok = meta.Get(keyActive) != nil
		rev = getRevision(meta)
		return nil
	})
	return rev, ok, err
}

// Load calls fn with every entity of the committed snapshot, in key order,
// and returns its revision; ok is false (and fn is never called) when there
// is none. Entities are decoded on another goroutine, ahead of fn; fn runs
// on the caller's goroutine, one entity at a time, and must not keep e (nor
// modify it). An undecodable entity ends Load with an error wrapping
// ErrCorrupt; an error from fn ends it with that error.
func (c *Cache) Load(fn func(e *syncv1.Entity) error) (rev int64, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return 0, false, ErrClosed
	}
	batches := make(chan []syncv1.Entity, 4)
	stop := make(chan struct{})
	type result struct {
		rev int64
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.rev, r.ok, r.err = c.decodeAll(batches, stop)
		close(batches)
		done <- r
	}()
	var fnErr error
	for batch := range batches {
		for i := 0; i < len(batch) && fnErr == nil; i++ {
			if fnErr = fn(&batch[i]); fnErr != nil {
				close(stop)
			}
		}
	}
	r := <-done
	if fnErr != nil {
		return 0, false, fnErr
	}
	if r.err != nil {
		return 0, false, r.err
	}
	return r.rev, r.ok, nil
}

const loadBatch = 1024

// decodeAll reads the active snapshot in one read transaction and sends its
// entities in batches until done or stop is closed.
func (c *Cache) decodeAll(out chan<- []syncv1.Entity, stop <-chan struct{}) (rev int64, ok bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			rev, ok, err = 0, false, fmt.Errorf("%w: reading snapshot: %v", ErrCorrupt, r)
		}
	}()
	errStopped := errors.New("stopped")
	err = c.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		active := meta.Get(keyActive)
		if active == nil {
			return nil
		}
		ok, rev = true, getRevision(meta)
		var key []byte
		batch := make([]syncv1.Entity, 0, loadBatch)
		send := func() error {
			select {
			case out <- batch:
				batch = make([]syncv1.Entity, 0, loadBatch)
				return nil
			case <-stop:
				return errStopped
			}
		}
		cur := tx.Bucket(active).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			batch = batch[:len(batch)+1]
			e := &batch[len(batch)-1]
			if err := decodeValue(v, e); err != nil {
				return fmt.Errorf("%w: entity %q: %v", ErrCorrupt, k, err)
			}
			if key = entityKey(key[:0], e.Kind, e.Id); !bytes.Equal(key, k) {
				return fmt.Errorf("%w: entity stored under %q is %s %q", ErrCorrupt, k, e.Kind, e.Id)
			}
			if len(batch) == loadBatch {
				if err := send(); err != nil {
					return err
				}
			}
		}
		if len(batch) > 0 {
			return send()
		}
		return nil
	})
	if err == errStopped {
		err = nil
	}
	return rev, ok, err
}

// ApplyDelta stores d's changes and revision in one transaction: after a
// crash of the process the cache holds d entirely or not at all. The
// transaction is not fdatasynced (unsynced.go): a sync follows within
// syncEvery, and a crash of the machine before it discards the cache.
func (c *Cache) ApplyDelta(d *syncv1.Delta) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return ErrClosed
	}
	if err := c.markUnsynced(); err != nil {
		return err
	}
	c.db.NoSync = true // every writer holds c.mu: no other commit sees it
	defer func() { c.db.NoSync = false }()
	c.deltaWrites++
	c.lastWrite = time.Now()
	return c.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		active := meta.Get(keyActive)
		if active == nil {
			return ErrNoSnapshot
		}
		if rev := getRevision(meta); rev != d.GetPrevRevision() {
			return fmt.Errorf("%w: delta %d follows %d, cache holds %d", ErrRevisionMismatch, d.GetRevision(), d.GetPrevRevision(), rev)
		}
		b := tx.Bucket(active)
		for _, e := range d.GetChanges() {
			if e == nil {
				continue
			}
			k := entityKey(nil, e.Kind, e.Id)
			if e.Deleted {
				if err := b.Delete(k); err != nil {
					return err
				}
				continue
			}
			v, err := appendValue(nil, e)
			if err != nil {
				return fmt.Errorf("cache: encode %s %q: %w", e.Kind, e.Id, err)
			}
			if err := b.Put(k, v); err != nil {
				return fmt.Errorf("cache: store %s %q: %w", e.Kind, e.Id, err)
			}
		}
		return meta.Put(keyRevision, binary.BigEndian.AppendUint64(nil, uint64(d.GetRevision())))
	})
}

// SnapshotWriter writes a snapshot into a staging bucket. Entities are
// encoded as they come and written in transactions of about flushBytes
// (memory stays bounded, fsyncs stay few); Commit writes the rest and makes
// the snapshot active in one last transaction. Until then the previous
// snapshot stays the one Load and a restart see; a staging bucket left by a
// crash is deleted by the next Open.
type SnapshotWriter struct {
	c    *Cache
	rev  int64
	name []byte
	done bool
	n    int

	buf  []byte // encoded keys and values not yet written
	recs []rec
}

type rec struct {
	k, v      [2]int // offsets into buf
	tombstone bool
}

// flushBytes is the encoded size at which Write starts a transaction.
var flushBytes = 16 << 20

// BeginSnapshot starts writing a snapshot at revision rev, discarding any
// other unfinished one.
func (c *Cache) BeginSnapshot(rev int64) (*SnapshotWriter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return nil, ErrClosed
	}
	w := &SnapshotWriter{c: c, rev: rev}
	err := c.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		active := meta.Get(keyActive)
		var stale [][]byte
		_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if bytes.HasPrefix(name, snapPrefix) && !bytes.Equal(name, active) {
				stale = append(stale, bytes.Clone(name))
			}
			return nil
		})
		for _, name := range stale {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		var next uint64
		if v := meta.Get(keyNext); len(v) == 8 {
			next = binary.BigEndian.Uint64(v)
		}
		next++
		if err := meta.Put(keyNext, binary.BigEndian.AppendUint64(nil, next)); err != nil {
			return err
		}
		w.name = fmt.Appendf(bytes.Clone(snapPrefix), "%016x", next)
		_, err := tx.CreateBucket(w.name)
		return err
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// Revision is the snapshot's revision.
func (w *SnapshotWriter) Revision() int64 { return w.rev }

// Len is the number of entities stored so far (tombstones excluded).
func (w *SnapshotWriter) Len() int { return w.n }

// snapshotFill packs staging pages: snapshot keys mostly arrive in order.
const snapshotFill = 0.9

var errFinished = errors.New("cache: snapshot already committed or aborted")

// Write adds entities to the snapshot; it writes a transaction when enough
// is buffered. A tombstone removes an entity added earlier.
func (w *SnapshotWriter) Write(entities []*syncv1.Entity) error {
	if w.done {
		return errFinished
	}
	for _, e := range entities {
		if e == nil {
			continue
		}
		var r rec
		r.k[0] = len(w.buf)
		w.buf = entityKey(w.buf, e.Kind, e.Id)
		r.k[1] = len(w.buf)
		if e.Deleted {
			r.tombstone = true
		} else {
			r.v[0] = len(w.buf)
			b, err := appendValue(w.buf, e)
			if err != nil {
				return fmt.Errorf("cache: encode %s %q: %w", e.Kind, e.Id, err)
			}
			w.buf = b
			r.v[1] = len(w.buf)
		}
		w.recs = append(w.recs, r)
	}
	if len(w.buf) < flushBytes {
		return nil
	}
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.db == nil {
		return ErrClosed
	}
	return w.c.db.Update(w.flush)
}

// flush puts the buffered records into the staging bucket within tx.
func (w *SnapshotWriter) flush(tx *bolt.Tx) error {
	b := tx.Bucket(w.name)
	if b == nil {
		return errors.New("cache: staging bucket vanished (snapshot restarted elsewhere?)")
	}
	b.FillPercent = snapshotFill
	// Sorted puts touch each page once; stable so that a later duplicate
	// wins.
	buf := w.buf
	slices.SortStableFunc(w.recs, func(a, b rec) int {
		return bytes.Compare(buf[a.k[0]:a.k[1]], buf[b.k[0]:b.k[1]])
	})
	n := 0
	for _, r := range w.recs {
		k := buf[r.k[0]:r.k[1]]
		if r.tombstone {
			if err := b.Delete(k); err != nil {
				return err
			}
			continue
		}
		if err := b.Put(k, buf[r.v[0]:r.v[1]]); err != nil {
			return fmt.Errorf("cache: store %q: %w", k, err)
		}
		n++
	}
	// bbolt copies keys and values at commit: the buffer is reused after
	// the transaction, never inside it.
	tx.OnCommit(func() {
		w.n += n
		w.buf, w.recs = w.buf[:0], w.recs[:0]
	})
	return nil
}

// Commit writes what is buffered, makes the staged snapshot the active one
// and sets the revision, in one fsynced transaction, and drops the previous
// snapshot.
func (w *SnapshotWriter) Commit() error {
	if w.done {
		return errFinished
	}
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.db == nil {
		return ErrClosed
	}
	err := w.c.db.Update(func(tx *bolt.Tx) error {
		if err := w.flush(tx); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		old := bytes.Clone(meta.Get(keyActive))
		if err := meta.Put(keyActive, w.name); err != nil {
			return err
		}
		if err := meta.Put(keyRevision, binary.BigEndian.AppendUint64(nil, uint64(w.rev))); err != nil {
			return err
		}
		if old != nil && !bytes.Equal(old, w.name) {
			return tx.DeleteBucket(old)
		}
		return nil
	})
	if err == nil {
		w.done = true
		w.buf, w.recs = nil, nil
	}
	return err
}

// Abort drops the staged snapshot. It is safe to call after Commit (no-op).
func (w *SnapshotWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.buf, w.recs = nil, nil
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.db == nil {
		return ErrClosed
	}
	return w.c.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(w.name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
		return nil
	})
}
