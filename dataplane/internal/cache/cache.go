package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
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
const schemaVersion = 3 // snapshot chunks as received, plus an entity overlay (doc.go)

// Earlier layouts, emptied at Open (revision 0: a full snapshot follows):
// one value per entity, money in micro-USD (1) or nano-USD (2).
const (
	schemaMicroUSD  = 1
	schemaPerEntity = 2
)

// initialMmap is the size of bbolt's first mapping (a million keys make a
// ~210 MB file, staging and active snapshots together ~430 MB).
const initialMmap = 1 << 30

// lockTimeout bounds the wait for another process holding the file.
var lockTimeout = 2 * time.Second // a variable for tests

var (
	bucketMeta  = []byte("meta")
	keySchema   = []byte("schema")
	keyRevision = []byte("revision")
	keyActive   = []byte("active")
	keyNext     = []byte("next_snapshot")
	keyKeys     = []byte("keys") // keys in the snapshot when committed: a sizing hint for Load's caller
	snapPrefix  = []byte("snap/")
	// ovlPrefix names the overlay bucket of a snapshot bucket: snap/X's
	// deltas go to ovl/X (overlayName).
	ovlPrefix = []byte("ovl/")
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
	idleClear             time.Duration // unsynced.go's idleClear when the cache was opened
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
	c := &Cache{path: path, log: logger, kick: make(chan struct{}, 1), idleClear: idleClear}
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
		// Address space only: a snapshot written into a file that outgrows
		// the mapping makes bbolt remap and copy every node of the
		// transaction out of the old mapping, several times over.
		InitialMmapSize: initialMmap,
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
		if v := meta.Get(keySchema); len(v) == 4 && (binary.BigEndian.Uint32(v) == schemaMicroUSD || binary.BigEndian.Uint32(v) == schemaPerEntity) {
			log.Warn("cache: written by an older release (schema " + strconv.Itoa(int(binary.BigEndian.Uint32(v))) + "); discarding it, a full snapshot follows")
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
			if bytes.Equal(name, bucketMeta) || bytes.Equal(name, active) ||
				(active != nil && bytes.Equal(name, overlayName(active))) {
				continue
			}
			if !bytes.HasPrefix(name, snapPrefix) && !bytes.HasPrefix(name, ovlPrefix) {
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

// Keys inside a snapshot bucket: the chunks as received, in order, then the
// overlay of entities changed by deltas since (Load reads them in this
// order, so an overlay entry replaces or removes the chunk's version).
const (
	chunkPrefix  = 'c' // + seq (uint32, big endian) → CRC-32C || ControlMessage{snapshot}
	entityPrefix = 'e' // + kind + 0x00 + id → CRC-32C || Entity (a tombstone when deleted)
)

func chunkKey(seq uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{chunkPrefix}, seq)
}

// entityKey is the key of an entity in a snapshot bucket's overlay.
// overlayName is the bucket of the entities deltas changed since snapshot
// bucket active was written. It is a bucket of its own, beside the
// snapshot's: an entity put among the chunks would share a leaf with the
// last chunk, and bbolt rewrites a leaf whole, its large values included
// (a delta wrote the last chunk again, up to a few MB, every time).
// Caches of the previous release keep overlay entities in the snapshot
// bucket itself; Load reads them, and the overlay bucket's entries after
// them win.
func overlayName(active []byte) []byte {
	return append(bytes.Clone(ovlPrefix), active[len(snapPrefix):]...)
}

func entityKey(dst []byte, kind, id string) []byte {
	dst = append(dst, entityPrefix)
	dst = append(dst, kind...)
	dst = append(dst, 0)
	return append(dst, id...)
}

func getRevision(meta *bolt.Bucket) int64 {
	return int64(binary.BigEndian.Uint64(meta.Get(keyRevision)))
}

// KeysHint is about how many keys the committed snapshot holds (as counted
// at its commit; deltas since are not counted), 0 when unknown.
func (c *Cache) KeysHint() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return 0
	}
	var n uint64
	_ = c.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyKeys); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return int(min(n, 1<<31))
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

// Load calls fn with every entity of the committed snapshot, with the
// deltas applied since, and returns its revision; ok is false (and fn is
// never called) when there is none. Entities come in application order:
// the snapshot's chunks as received, then the overlay written by deltas,
// tombstones (Deleted) included; applying them in turn (a later one
// replaces an earlier one with the same kind and id, a tombstone removes
// it) gives the state. fn must not keep e (nor modify it). An undecodable
// entity ends Load with an error wrapping ErrCorrupt; an error from fn ends
// it with that error. LoadRaw is Load without decoding the chunks.
func (c *Cache) Load(fn func(e *syncv1.Entity) error) (rev int64, ok bool, err error) {
	return c.LoadRaw(nil, func(raw []byte, _ any) error {
		var m syncv1.ControlMessage
		if err := proto.Unmarshal(raw, &m); err != nil || m.GetSnapshot() == nil {
			return fmt.Errorf("%w: snapshot chunk: %v", ErrCorrupt, err)
		}
		for _, e := range m.GetSnapshot().GetEntities() {
			if e == nil {
				return fmt.Errorf("%w: empty entity in snapshot chunk", ErrCorrupt)
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	}, fn)
}

// LoadRaw is Load with the snapshot's chunks left encoded: chunk gets each
// one's encoded ControlMessage (as stored by WriteChunk, checksum
// verified), in order, then entity gets the overlay's entities. Chunks are
// read, checked and copied out of the file on other goroutines (every CPU
// but one), ahead of the callbacks, which run on the caller's goroutine;
// prepare, when not nil, runs there too, on each chunk after its check,
// and what it returns is passed to chunk (a chunk parsed ahead). raw is
// reused after chunk returns (keep nothing that points into it). An error
// from a callback ends LoadRaw with that error; the caller wraps
// ErrCorrupt in its own for a chunk it cannot decode.
func (c *Cache) LoadRaw(prepare func(raw []byte) any, chunk func(raw []byte, prepared any) error, entity func(e *syncv1.Entity) error) (rev int64, ok bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.db == nil {
		return 0, false, ErrClosed
	}
	// Batches in order: each one's channel gets its chunk or decoded
	// entities (or an error), filled by whichever worker took it.
	order := make(chan chan batch, loadWorkers())
	stop := make(chan struct{})
	free := make(chan []byte, loadWorkers()+2) // chunk buffers to reuse
	type result struct {
		rev int64
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.rev, r.ok, r.err = c.decodeAll(order, stop, free, prepare)
		close(order)
		done <- r
	}()
	var fnErr, decErr error
	for ch := range order {
		b := <-ch
		if fnErr != nil || decErr != nil {
			continue // draining: decodeAll stops at the next batch
		}
		if b.err != nil {
			decErr = b.err
			close(stop)
			continue
		}
		if b.chunk {
			if fnErr = chunk(b.raw, b.prepared); fnErr != nil {
				close(stop)
				continue
			}
			select {
			case free <- b.raw[:0]:
			default:
			}
			continue
		}
		for _, e := range b.entities {
			if fnErr = entity(e); fnErr != nil {
				close(stop)
				break
			}
		}
	}
	r := <-done
	switch {
	case fnErr != nil:
		return 0, false, fnErr
	case r.err != nil:
		return 0, false, r.err
	case decErr != nil:
		return 0, false, decErr
	}
	return r.rev, r.ok, nil
}

// loadWorkers is how many goroutines decode chunks for Load: every CPU but
// the one running fn (more only add decoded chunks waiting in memory,
// which costs garbage collection and fresh pages).
func loadWorkers() int { return max(1, runtime.GOMAXPROCS(0)-1) }

// batch is what LoadRaw's workers prepare: a chunk (checked, copied out
// of the mapping), or a run of decoded overlay entities.
type batch struct {
	chunk    bool // raw is a chunk (else entities)
	raw      []byte
	prepared any // what LoadRaw's prepare made of raw
	entities []*syncv1.Entity
	err      error
}

const overlayBatch = 1024

// decodeAll reads the active snapshot in one read transaction and queues
// its values, in order, on order; workers decode them. It returns once
// every queued value is decoded (the values point into the transaction's
// mapping) or stop is closed.
func (c *Cache) decodeAll(order chan<- chan batch, stop <-chan struct{}, free chan []byte, prepare func([]byte) any) (rev int64, ok bool, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			rev, ok, err = 0, false, fmt.Errorf("%w: reading snapshot: %v", ErrCorrupt, r)
		}
	}()
	type job struct {
		vals [][]byte // one chunk, or overlay entities
		keys [][]byte // overlay entities' keys (nil for a chunk)
		out  chan batch
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range loadWorkers() {
		wg.Go(func() {
			// A fault on the mapping while decoding is corruption too.
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			for j := range jobs {
				j.out <- func() (b batch) {
					defer func() {
						if r := recover(); r != nil {
							b = batch{err: fmt.Errorf("%w: decoding snapshot: %v", ErrCorrupt, r)}
						}
					}()
					if j.keys == nil {
						var buf []byte
						select {
						case buf = <-free:
						default:
						}
						b := checkChunk(j.vals[0], buf)
						if b.err == nil && prepare != nil {
							b.prepared = prepare(b.raw)
						}
						return b
					}
					return decodeOverlay(j.keys, j.vals)
				}()
			}
		})
	}
	errStopped := errors.New("stopped")
	err = c.db.View(func(tx *bolt.Tx) error {
		defer wg.Wait()
		defer close(jobs)
		meta := tx.Bucket(bucketMeta)
		active := meta.Get(keyActive)
		if active == nil {
			return nil
		}
		ok, rev = true, getRevision(meta)
		queue := func(j job) error {
			j.out = make(chan batch, 1)
			select {
			case order <- j.out:
			case <-stop:
				return errStopped
			}
			select {
			case jobs <- j:
				return nil
			case <-stop:
				j.out <- batch{err: errStopped}
				return errStopped
			}
		}
		var ov job
		cur := tx.Bucket(active).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			switch {
			case k[0] == chunkPrefix && len(k) == 5:
				if err := queue(job{vals: [][]byte{v}}); err != nil {
					return err
				}
			case k[0] == entityPrefix:
				ov.keys, ov.vals = append(ov.keys, k), append(ov.vals, v)
				if len(ov.keys) == overlayBatch {
					if err := queue(ov); err != nil {
						return err
					}
					ov = job{}
				}
			default:
				return fmt.Errorf("%w: unknown record %q in snapshot bucket", ErrCorrupt, k)
			}
		}
		if ob := tx.Bucket(overlayName(active)); ob != nil {
			cur := ob.Cursor()
			for k, v := cur.First(); k != nil; k, v = cur.Next() {
				if k[0] != entityPrefix {
					return fmt.Errorf("%w: unknown record %q in overlay bucket", ErrCorrupt, k)
				}
				ov.keys, ov.vals = append(ov.keys, k), append(ov.vals, v)
				if len(ov.keys) == overlayBatch {
					if err := queue(ov); err != nil {
						return err
					}
					ov = job{}
				}
			}
		}
		if len(ov.keys) > 0 {
			return queue(ov)
		}
		return nil
	})
	if err == errStopped {
		err = nil
	}
	return rev, ok, err
}

// checkChunk checks a stored chunk (CRC-32C || ControlMessage) and copies
// the message into buf (grown as needed).
func checkChunk(v, buf []byte) batch {
	if len(v) < 4 {
		return batch{err: fmt.Errorf("%w: short snapshot chunk", ErrCorrupt)}
	}
	if crc32.Checksum(v[4:], castagnoli) != binary.BigEndian.Uint32(v) {
		return batch{err: fmt.Errorf("%w: snapshot chunk checksum mismatch", ErrCorrupt)}
	}
	return batch{chunk: true, raw: append(buf[:0], v[4:]...)}
}

func decodeOverlay(keys, vals [][]byte) batch {
	ents := make([]syncv1.Entity, len(keys))
	out := make([]*syncv1.Entity, len(keys))
	var key []byte
	for i, k := range keys {
		e := &ents[i]
		if err := decodeValue(vals[i], e); err != nil {
			return batch{err: fmt.Errorf("%w: entity %q: %v", ErrCorrupt, k, err)}
		}
		if key = entityKey(key[:0], e.Kind, e.Id); !bytes.Equal(key, k) {
			return batch{err: fmt.Errorf("%w: entity stored under %q is %s %q", ErrCorrupt, k, e.Kind, e.Id)}
		}
		out[i] = e
	}
	return batch{entities: out}
}

// ApplyDelta stores d's changes and revision in one transaction: after a
// crash of the process the cache holds d entirely or not at all. The
// transaction is not fdatasynced (unsynced.go): a sync follows once deltas
// pause for idleClear, and a crash of the machine before it discards the
// cache.
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
		snap := tx.Bucket(active)
		b, err := tx.CreateBucketIfNotExists(overlayName(active))
		if err != nil {
			return fmt.Errorf("cache: overlay bucket: %w", err)
		}
		for _, e := range d.GetChanges() {
			if e == nil {
				continue
			}
			k := entityKey(nil, e.Kind, e.Id)
			// An entity a previous release put among the chunks goes (once):
			// from now on the overlay bucket holds it.
			if snap.Get(k) != nil {
				if err := snap.Delete(k); err != nil {
					return fmt.Errorf("cache: move %s %q to the overlay: %w", e.Kind, e.Id, err)
				}
			}
			if e.Deleted {
				// The snapshot's chunks may hold the entity: the overlay
				// keeps a tombstone for it (until the next snapshot).
				e = &syncv1.Entity{Kind: e.Kind, Id: e.Id, Deleted: true}
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

// SnapshotWriter writes a snapshot into a staging bucket: its chunks as
// received, each under its sequence number. Chunks are buffered and written
// in transactions of about flushBytes that are not fsynced (memory stays
// bounded, and a staging bucket is worthless after a crash: the next Open
// deletes it), each on its own goroutine while the caller goes on (one at
// a time: a write that fills the next batch first waits for the previous
// one; an error of a background transaction is returned by the next call).
// Commit writes the rest and makes the snapshot active in one last,
// fsynced transaction, which also makes everything before it durable.
// Until then the previous snapshot stays the one Load and a restart see. A
// SnapshotWriter is used by one goroutine.
type SnapshotWriter struct {
	c    *Cache
	rev  int64
	name []byte
	done bool
	n    int // chunks written (buffered, being flushed or stored)

	vals     [][]byte // the last chunks written, framed, not yet handed to a flush
	buffered int
	keys     int

	flushing chan error // the background flush in progress, nil when none
	err      error      // a background flush failed: the snapshot is lost
}

// SetKeys records how many keys the snapshot holds (KeysHint after Commit).
func (w *SnapshotWriter) SetKeys(n int) { w.keys = n }

// flushBytes is the encoded size at which WriteChunk starts a transaction.
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
			switch {
			case bytes.HasPrefix(name, snapPrefix) && !bytes.Equal(name, active),
				bytes.HasPrefix(name, ovlPrefix) && (active == nil || !bytes.Equal(name, overlayName(active))):
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

// Len is the number of chunks written so far.
func (w *SnapshotWriter) Len() int { return w.n }

// wait waits for the background flush, if any, and returns the first
// error any flush met.
func (w *SnapshotWriter) wait() error {
	if w.flushing != nil {
		if err := <-w.flushing; err != nil && w.err == nil {
			w.err = err
		}
		w.flushing = nil
	}
	return w.err
}

// update runs fn in a write transaction of the cache, not fsynced when
// noSync (Commit's fsync covers it).
func (w *SnapshotWriter) update(noSync bool, fn func(*bolt.Tx) error) error {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.db == nil {
		return ErrClosed
	}
	if noSync {
		w.c.db.NoSync = true
		defer func() { w.c.db.NoSync = false }()
	}
	return w.c.db.Update(fn)
}

var errFinished = errors.New("cache: snapshot already committed or aborted")

// Write adds entities to the snapshot as one chunk (WriteChunk, encoded
// here). A tombstone removes an entity added earlier.
func (w *SnapshotWriter) Write(entities []*syncv1.Entity) error {
	if w.done {
		return errFinished
	}
	var ents []*syncv1.Entity
	for _, e := range entities {
		if e != nil {
			ents = append(ents, e)
		}
	}
	raw, err := proto.Marshal(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{
		Snapshot: &syncv1.SnapshotChunk{Revision: w.rev, Entities: ents}}})
	if err != nil {
		return fmt.Errorf("cache: encode snapshot chunk: %w", err)
	}
	return w.WriteChunk(raw)
}

// WriteChunk adds a chunk as received from the control plane: an encoded
// ControlMessage holding a SnapshotChunk (its other fields are not read
// back). Chunks are loaded in the order they were written. raw is copied:
// the caller may reuse it.
func (w *SnapshotWriter) WriteChunk(raw []byte) error {
	v := make([]byte, FrameHeader+len(raw))
	copy(v[FrameHeader:], raw)
	return w.WriteFramed(v)
}

// FrameHeader is how many spare bytes WriteFramed needs before a chunk.
const FrameHeader = 4

// WriteFramed is WriteChunk for a chunk received into a buffer with
// FrameHeader spare bytes before it: framed is those bytes, then the
// chunk. The checksum is written into them and framed is stored as it is,
// without a copy: the caller must not modify or reuse framed afterwards.
func (w *SnapshotWriter) WriteFramed(framed []byte) error {
	if w.done {
		return errFinished
	}
	if w.err != nil {
		return w.err
	}
	if len(framed) < FrameHeader {
		return errors.New("cache: framed chunk shorter than its header")
	}
	w.vals = append(w.vals, framed)
	w.n++
	w.buffered += len(framed)
	if w.buffered < flushBytes {
		return nil
	}
	if err := w.wait(); err != nil {
		return err
	}
	vals, first := w.vals, uint32(w.n-len(w.vals))
	w.vals, w.buffered = nil, 0
	done := make(chan error, 1)
	w.flushing = done
	go func() { done <- w.update(true, func(tx *bolt.Tx) error { return w.put(tx, vals, first) }) }()
	return nil
}

// ReplaceLast replaces the chunk written last (by Write, WriteChunk or
// WriteFramed) with raw: for a chunk found to hold entities that are left
// out, after it was written.
func (w *SnapshotWriter) ReplaceLast(raw []byte) error {
	if w.done {
		return errFinished
	}
	if w.n == 0 {
		return errors.New("cache: no snapshot chunk to replace")
	}
	v := make([]byte, FrameHeader+len(raw))
	copy(v[FrameHeader:], raw)
	if n := len(w.vals); n > 0 {
		w.buffered += len(v) - len(w.vals[n-1])
		w.vals[n-1] = v
		return nil
	}
	// Handed to a flush: overwritten once that is done.
	if err := w.wait(); err != nil {
		return err
	}
	return w.update(true, func(tx *bolt.Tx) error { return w.put(tx, [][]byte{v}, uint32(w.n-1)) })
}

// put stores framed chunks, from seq first on, into the staging bucket
// within tx, writing each one's checksum into its frame.
func (w *SnapshotWriter) put(tx *bolt.Tx, vals [][]byte, first uint32) error {
	b := tx.Bucket(w.name)
	if b == nil {
		return errors.New("cache: staging bucket vanished (snapshot restarted elsewhere?)")
	}
	b.FillPercent = 1 // keys only ever grow: pages are never split again
	for i, v := range vals {
		binary.BigEndian.PutUint32(v, crc32.Checksum(v[FrameHeader:], castagnoli))
		if err := b.Put(chunkKey(first+uint32(i)), v); err != nil {
			return fmt.Errorf("cache: store snapshot chunk %d: %w", first+uint32(i), err)
		}
	}
	return nil
}

// Commit writes what is buffered, makes the staged snapshot the active one
// and sets the revision, in one fsynced transaction, and drops the previous
// snapshot.
func (w *SnapshotWriter) Commit() error {
	if w.done {
		return errFinished
	}
	if err := w.wait(); err != nil {
		return err
	}
	vals, first := w.vals, uint32(w.n-len(w.vals))
	err := w.update(false, func(tx *bolt.Tx) error {
		if err := w.put(tx, vals, first); err != nil {
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
		if err := meta.Put(keyKeys, binary.BigEndian.AppendUint64(nil, uint64(max(w.keys, 0)))); err != nil {
			return err
		}
		if old != nil && !bytes.Equal(old, w.name) {
			if err := tx.DeleteBucket(old); err != nil {
				return err
			}
			// The old snapshot's overlay goes with it.
			if err := tx.DeleteBucket(overlayName(old)); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
				return err
			}
		}
		return nil
	})
	if err == nil {
		w.done = true
		w.vals = nil
	}
	return err
}

// Abort drops the staged snapshot. It is safe to call after Commit (no-op).
func (w *SnapshotWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	_ = w.wait() // the bucket goes anyway
	w.vals = nil
	return w.update(false, func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(w.name); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return err
		}
		return nil
	})
}
