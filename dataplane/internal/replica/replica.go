package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/cache"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

var (
	// ErrSnapshotOrder is wrapped by ApplyChunk's error for a chunk that
	// does not continue the snapshot in progress (other revision, or seq
	// not the next one). The partial snapshot is discarded.
	ErrSnapshotOrder = errors.New("replica: snapshot chunk out of order")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("replica: closed")
)

// Replica is the data plane's copy of the control plane's state: in memory
// (State, read by the request path) and on disk (the cache), advanced
// together by the sync client.
type Replica struct {
	st  *state.State
	log *slog.Logger

	mu      sync.Mutex // serializes the writer methods
	c       *cache.Cache
	pending *pending
}

// pending is a snapshot being received.
type pending struct {
	rev     int64
	next    int32 // expected seq
	b       *state.Builder
	w       *cache.SnapshotWriter
	skipped int
	start   time.Time
}

// Open opens the cache at path and, if it holds a snapshot, loads it into
// memory (State().Ready() is then true). A corrupt cache is moved aside and
// the replica starts empty.
func Open(path string, logger *slog.Logger) (*Replica, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c, err := cache.Open(path, logger)
	if err != nil {
		return nil, err
	}
	r := &Replica{st: state.New(), log: logger, c: c}
	if err := r.load(); err != nil {
		_ = c.Close()
		return nil, err
	}
	return r, nil
}

func (r *Replica) load() error {
	start := time.Now()
	rev, ok, err := r.c.Revision()
	if err != nil || !ok {
		return err
	}
	b := r.st.NewSnapshot(rev)
	b.Presize(r.c.KeysHint())
	skipped := 0
	add := func(err error) error {
		if errors.Is(err, state.ErrMalformed) {
			return fmt.Errorf("%w: %v", cache.ErrCorrupt, err)
		}
		if err != nil {
			// Stored by an older or newer binary with other rules: leave it
			// out (fail closed), as a snapshot would.
			if skipped++; skipped <= 10 {
				r.log.Error("replica: skipping invalid cached entity", "err", err)
			}
		}
		return nil
	}
	// Chunks are parsed ahead on the cache's reading goroutines (every CPU
	// but this one), each into a Chunk that comes back here for reuse.
	spare := make(chan *state.Chunk, 8)
	prepare := func(raw []byte) any {
		var ch *state.Chunk
		select {
		case ch = <-spare:
		default:
			ch = new(state.Chunk)
		}
		if !state.ParseChunk(raw, ch) {
			return nil // decoded whole below
		}
		ch.Prepare()
		return ch
	}
	_, _, err = r.c.LoadRaw(prepare, func(raw []byte, prepared any) error {
		ch, _ := prepared.(*state.Chunk)
		if ch == nil {
			// Not in the form the control plane sends: decode it whole.
			var m syncv1.ControlMessage
			if err := proto.Unmarshal(raw, &m); err != nil || m.GetSnapshot() == nil {
				return fmt.Errorf("%w: snapshot chunk: %v", cache.ErrCorrupt, err)
			}
			for _, e := range m.GetSnapshot().GetEntities() {
				if err := add(b.Add(e)); err != nil {
					return err
				}
			}
			return nil
		}
		for i := range ch.Entities {
			if err := add(b.AddChunkEntity(ch, i)); err != nil {
				return err
			}
		}
		select {
		case spare <- ch:
		default:
		}
		return nil
	}, func(e *syncv1.Entity) error { return add(b.Add(e)) })
	if errors.Is(err, cache.ErrCorrupt) {
		// Start empty; the control plane will send a snapshot.
		return r.c.Reset(err)
	}
	if err != nil {
		return err
	}
	r.st.Install(b)
	r.log.Info("replica: loaded from cache", "path", r.c.Path(), "revision", rev,
		"entities", b.Len(), "skipped", skipped, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// State is the in-memory replica the request path reads.
func (r *Replica) State() *state.State { return r.st }

// Revision is the revision of the installed state (0 when none).
func (r *Replica) Revision() int64 { return r.st.Revision() }

// ApplyChunk takes the next chunk of a snapshot. Chunks come with seq 0, 1,
// 2, ... and one revision; each is added to an in-memory builder (keys read
// straight from their encoded form) and written to the cache's staging
// area as it arrives (nothing holds the whole snapshot's messages). framed
// is the encoded ControlMessage c was read from, preceded by
// cache.FrameHeader spare bytes: it is stored as it is (the cache writes its
// checksum into those bytes) and must not be modified or reused afterwards.
// When framed is nil (or c holds invalid entities) the chunk is encoded
// here. On the chunk with last=true the snapshot is committed to the cache,
// then installed in memory, and installed is true.
//
// A chunk that does not continue the snapshot in progress (another
// revision, or not the next seq) discards it and fails with
// ErrSnapshotOrder; without a snapshot in progress only seq 0 is accepted.
// Invalid entities are left out (logged): the key, team, ... simply does not
// exist on this proxy, as the control plane does with objects it cannot
// convert. An entity that does not decode discards the partial snapshot
// (error wrapping state.ErrMalformed), as a message that does not decode
// ends the session. If the cache write or commit fails, the partial
// snapshot is discarded, nothing is installed and the error is returned.
func (r *Replica) ApplyChunk(c *state.Chunk, framed []byte) (installed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return false, ErrClosed
	}
	p := r.pending
	switch {
	case p == nil && c.Seq == 0:
		w, err := r.c.BeginSnapshot(c.Revision)
		if err != nil {
			return false, err
		}
		p = &pending{rev: c.Revision, b: r.st.NewSnapshot(c.Revision), w: w, start: time.Now()}
		r.pending = p
	case p == nil:
		return false, fmt.Errorf("%w: got revision %d seq %d, want seq 0", ErrSnapshotOrder, c.Revision, c.Seq)
	case c.Revision != p.rev || c.Seq != p.next:
		r.abortLocked()
		return false, fmt.Errorf("%w: got revision %d seq %d, want revision %d seq %d; partial snapshot discarded",
			ErrSnapshotOrder, c.Revision, c.Seq, p.rev, p.next)
	}

	if h := c.KeysHint; h > 0 {
		p.b.Presize(int(min(h, 1<<31)))
	}
	// The chunk as received goes to the cache first: it is buffered there
	// and written by a background transaction every ~16 MiB, beside the
	// in-memory build. Should the chunk turn out to hold invalid entities,
	// the stored copy is replaced by one without them below (the cache
	// keeps only what is installed).
	if framed != nil {
		if err := p.w.WriteFramed(framed); err != nil {
			r.abortLocked()
			return false, fmt.Errorf("replica: cache snapshot chunk %d: %w", c.Seq, err)
		}
	}
	var invalid []bool
	for i := range c.Entities {
		err := p.b.AddChunkEntity(c, i)
		if err == nil {
			continue
		}
		if !errors.Is(err, state.ErrInvalidEntity) {
			r.abortLocked()
			return false, fmt.Errorf("replica: snapshot chunk %d: %w", c.Seq, err)
		}
		if invalid == nil {
			invalid = make([]bool, len(c.Entities))
		}
		invalid[i] = true
		if p.skipped++; p.skipped <= 10 {
			r.log.Error("replica: leaving invalid entity out of snapshot", "revision", p.rev, "err", err)
		}
	}
	var werr error
	switch {
	case framed == nil:
		werr = p.w.WriteChunk(c.Encode(func(i int) bool { return invalid == nil || !invalid[i] }))
	case invalid != nil:
		werr = p.w.ReplaceLast(c.Encode(func(i int) bool { return !invalid[i] }))
	}
	if werr != nil {
		r.abortLocked()
		return false, fmt.Errorf("replica: cache snapshot chunk %d: %w", c.Seq, werr)
	}
	p.next++
	if !c.Last {
		return false, nil
	}

	r.pending = nil
	p.w.SetKeys(p.b.Keys())
	if err := p.w.Commit(); err != nil {
		_ = p.w.Abort()
		return false, fmt.Errorf("replica: cache snapshot commit: %w", err)
	}
	r.st.Install(p.b)
	r.log.Info("replica: snapshot installed", "revision", p.rev, "chunks", p.next,
		"entities", p.b.Len(), "skipped", p.skipped, "took", time.Since(p.start).Round(time.Millisecond))
	return true, nil
}

// AbortSnapshot discards a snapshot in progress (the stream broke). The
// installed state is untouched.
func (r *Replica) AbortSnapshot() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.abortLocked()
}

func (r *Replica) abortLocked() {
	if r.pending == nil {
		return
	}
	if err := r.pending.w.Abort(); err != nil {
		// The next Open or BeginSnapshot deletes the staging bucket.
		r.log.Warn("replica: dropping partial snapshot from cache", "err", err)
	}
	r.pending = nil
}

// ApplyDelta applies one committed change set: it checks that d follows the
// loaded revision (else an error wrapping state.ErrGap, nothing changed),
// persists it to the cache in one transaction with its revision, then
// applies it in memory. An invalid entity (which the control plane never
// sends) becomes a tombstone for its kind and id, logged: the object stops
// existing here (fail closed) instead of the proxy stalling on a delta it
// can never apply. A delta during a snapshot in progress discards the
// snapshot.
func (r *Replica) ApplyDelta(d *syncv1.Delta) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return ErrClosed
	}
	if r.pending != nil {
		r.log.Warn("replica: delta during a snapshot; discarding the partial snapshot", "revision", d.GetRevision())
		r.abortLocked()
	}
	if !r.st.Ready() {
		return fmt.Errorf("%w: delta %d (after %d) but no snapshot is loaded", state.ErrGap, d.GetRevision(), d.GetPrevRevision())
	}
	if cur := r.st.Revision(); d.GetPrevRevision() != cur || d.GetRevision() <= d.GetPrevRevision() {
		return fmt.Errorf("%w: delta %d follows %d, replica is at %d", state.ErrGap, d.GetRevision(), d.GetPrevRevision(), cur)
	}
	d = r.sanitize(d)
	if err := r.c.ApplyDelta(d); err != nil {
		return fmt.Errorf("replica: persist delta %d: %w", d.GetRevision(), err)
	}
	if err := r.st.ApplyDelta(d); err != nil {
		// Unreachable: d was checked above. The cache is ahead of memory;
		// a restart loads it.
		return fmt.Errorf("replica: apply delta %d after persisting it: %w", d.GetRevision(), err)
	}
	return nil
}

// sanitize returns d, or a copy whose invalid entities are tombstones (or
// dropped, for an unknown kind or missing id).
func (r *Replica) sanitize(d *syncv1.Delta) *syncv1.Delta {
	var out []*syncv1.Entity
	for i, e := range d.GetChanges() {
		err := state.Validate(e)
		if err == nil {
			if out != nil {
				out = append(out, e)
			}
			continue
		}
		if out == nil {
			out = append(make([]*syncv1.Entity, 0, len(d.Changes)), d.Changes[:i]...)
		}
		r.log.Error("replica: invalid entity in delta, removing it instead", "revision", d.GetRevision(), "err", err)
		tomb := &syncv1.Entity{Kind: e.GetKind(), Id: e.GetId(), Deleted: true}
		if state.Validate(tomb) == nil {
			out = append(out, tomb)
		}
	}
	if out == nil {
		return d
	}
	return &syncv1.Delta{Revision: d.Revision, PrevRevision: d.PrevRevision, CommittedAtUnixNano: d.CommittedAtUnixNano, Changes: out}
}

// Close discards a snapshot in progress and closes the cache. The State
// stays readable.
func (r *Replica) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return nil
	}
	r.abortLocked()
	err := r.c.Close()
	r.c = nil
	return err
}
