package syncserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/hugepage"
)

// Messages that many streams send (snapshot chunks, deltas) are encoded once
// and kept as wire bytes. preencoded wraps such bytes in a ControlMessage
// whose only content is its unknown fields: the proto codec writes them out
// verbatim, so the peer receives exactly the original message while each
// Send costs a copy instead of a re-encode.
func preencoded(raw []byte) *syncv1.ControlMessage {
	m := new(syncv1.ControlMessage)
	m.ProtoReflect().SetUnknown(raw)
	return m
}

// encDelta is one change set, encoded as a ControlMessage{delta}.
type encDelta struct {
	rev int64
	raw []byte
}

// encodeChangeSet converts and encodes a change set. An entity that cannot
// be converted is sent as a tombstone: the proxies drop the object instead
// of keeping a stale version of it (a revoked key must never stay usable
// because its new state failed to convert).
func encodeChangeSet(log *slog.Logger, cs store.ChangeSet) encDelta {
	d := &syncv1.Delta{
		Revision:     cs.Revision,
		PrevRevision: cs.Revision - 1,
		Changes:      make([]*syncv1.Entity, 0, len(cs.Changes)),
	}
	if !cs.CommittedAt.IsZero() {
		d.CommittedAtUnixNano = cs.CommittedAt.UnixNano()
	}
	for _, c := range cs.Changes {
		e, err := changeEntity(c)
		if err != nil {
			log.Error("sync: sending tombstone for unconvertible change", "revision", cs.Revision, "kind", c.Kind, "id", c.ID, "err", err)
			e = tombstone(c.Kind, c.ID)
		}
		d.Changes = append(d.Changes, e)
	}
	msg := &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Delta{Delta: d}}
	raw, err := proto.Marshal(msg)
	if err != nil {
		// proto3 strings must be valid UTF-8; find the offending entities
		// and fail closed on them.
		for i, e := range d.Changes {
			if _, err := proto.Marshal(e); err != nil {
				log.Error("sync: sending tombstone for unencodable entity", "revision", cs.Revision, "kind", e.Kind, "id", e.Id, "err", err)
				d.Changes[i] = tombstone(validUTF8(e.Kind), validUTF8(e.Id))
			}
		}
		if raw, err = proto.Marshal(msg); err != nil {
			// Not expected once every entity encodes alone; fail closed on
			// the whole change set rather than skip or crash.
			log.Error("sync: sending tombstones for an unencodable change set", "revision", cs.Revision, "err", err)
			for i, e := range d.Changes {
				d.Changes[i] = tombstone(validUTF8(e.Kind), validUTF8(e.Id))
			}
			raw, _ = proto.Marshal(msg)
		}
	}
	return encDelta{rev: cs.Revision, raw: raw}
}

func validUTF8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// snapshot is a full state encoded as ControlMessage{snapshot} chunks, all
// carrying revision, the last one with last=true. Chunks are published as
// they are encoded, so streams send a snapshot while it is still being
// built (the proxies install chunk k while chunk k+1 is read from the
// store); once finished it is immutable and any number of streams send it
// concurrently.
type snapshot struct {
	mu       sync.Mutex
	more     chan struct{} // closed (and replaced) when a chunk is published or the build ends
	revision int64
	chunks   [][]byte
	finished bool
	err      error // set when the build failed: the chunks sent so far must be discarded

	entities int
	skipped  int
	bytes    int64
	builtAt  time.Time
	took     time.Duration
}

func newSnapshot() *snapshot { return &snapshot{more: make(chan struct{})} }

// publish appends a chunk and wakes the streams waiting for it.
func (sn *snapshot) publish(raw []byte) {
	sn.mu.Lock()
	sn.chunks = append(sn.chunks, raw)
	close(sn.more)
	sn.more = make(chan struct{})
	sn.mu.Unlock()
}

// finish ends the build, with err when it failed.
func (sn *snapshot) finish(err error) {
	sn.mu.Lock()
	sn.finished, sn.err = true, err
	close(sn.more)
	sn.more = make(chan struct{})
	sn.mu.Unlock()
}

// errSnapshotFailed is what chunk returns to streams that were sending a
// snapshot whose build failed.
var errSnapshotFailed = errors.New("snapshot build failed")

// errStillBuilding is chunk's answer when its wait ran out.
var errStillBuilding = errors.New("snapshot chunk not built yet")

// chunk returns chunk i, waiting for it while the build runs (at most wait,
// then errStillBuilding); ok is false once every chunk was returned. A
// failed build returns an error wrapping errSnapshotFailed (a stream that
// sent part of it must end: the proxy discards the partial snapshot).
func (sn *snapshot) chunk(ctx context.Context, done <-chan struct{}, i int, wait time.Duration) (raw []byte, ok bool, err error) {
	var timeout <-chan time.Time
	for {
		sn.mu.Lock()
		if sn.err != nil {
			err := sn.err
			sn.mu.Unlock()
			return nil, false, fmt.Errorf("%w: %w", errSnapshotFailed, err)
		}
		if i < len(sn.chunks) {
			raw = sn.chunks[i]
			sn.mu.Unlock()
			return raw, true, nil
		}
		if sn.finished {
			sn.mu.Unlock()
			return nil, false, nil
		}
		more := sn.more
		sn.mu.Unlock()
		if timeout == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-more:
		case <-timeout:
			return nil, false, errStillBuilding
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-done:
			return nil, false, errClosed
		}
	}
}

// rev is the snapshot's revision (0 until the build has opened its view).
func (sn *snapshot) rev() int64 {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.revision
}

// chunker packs encoded entities into chunks and publishes each one as soon
// as it is full. Each entity is marshalled once, straight into the chunk
// buffer; the chunk header fields are appended after the entities
// (protobuf accepts fields in any order), which lets the last chunk be
// flagged without holding entities back.
type chunker struct {
	revision    int64
	maxEntities int
	maxBytes    int
	sn          *snapshot
	keysHint    int64 // sent once, on the next chunk flushed (SnapshotChunk.keys_hint)

	body    []byte // fields of the SnapshotChunk being filled (reused)
	n       int    // entities in body
	seq     int32
	scratch []byte
	slab    hugepage.Slab // the chunks' memory

	chunks   int
	entities int
	bytes    int64
}

func (c *chunker) add(e *syncv1.Entity) error {
	var err error
	c.scratch, err = proto.MarshalOptions{}.MarshalAppend(c.scratch[:0], e)
	if err != nil {
		return err
	}
	c.addEncoded(c.scratch)
	return nil
}

// addEncoded adds an entity already encoded (an Entity message's bytes).
func (c *chunker) addEncoded(raw []byte) {
	size := 1 + protowire.SizeVarint(uint64(len(raw))) + len(raw)
	if c.n > 0 && (c.n >= c.maxEntities || len(c.body)+size > c.maxBytes) {
		c.flush(false)
	}
	c.body = protowire.AppendTag(c.body, 4, protowire.BytesType) // SnapshotChunk.entities
	c.body = protowire.AppendBytes(c.body, raw)
	c.n++
	c.entities++
}

func (c *chunker) flush(last bool) {
	body := c.body
	if c.revision != 0 {
		body = protowire.AppendTag(body, 1, protowire.VarintType) // revision
		body = protowire.AppendVarint(body, uint64(c.revision))
	}
	if c.seq != 0 {
		body = protowire.AppendTag(body, 2, protowire.VarintType) // seq
		body = protowire.AppendVarint(body, uint64(c.seq))
	}
	if last {
		body = protowire.AppendTag(body, 3, protowire.VarintType) // last
		body = protowire.AppendVarint(body, 1)
	}
	if c.keysHint > 0 {
		body = protowire.AppendTag(body, 5, protowire.VarintType) // keys_hint
		body = protowire.AppendVarint(body, uint64(c.keysHint))
		c.keysHint = 0
	}
	// ControlMessage.snapshot (field 1), exactly sized: chunks stay in
	// memory as long as the snapshot is cached.
	// Carved from huge-page slabs: a million keys are ~200 MB of chunks,
	// and 4 KiB page faults on that fresh memory were a fifth of the
	// control plane's CPU building the snapshot.
	out := c.slab.Alloc(1 + protowire.SizeVarint(uint64(len(body))) + len(body))
	out = protowire.AppendTag(out, 1, protowire.BytesType)
	out = protowire.AppendBytes(out, body)
	c.sn.publish(out)
	c.chunks++
	c.bytes += int64(len(out))
	c.body = body[:0]
	c.n = 0
	c.seq++
}

// buildSnapshot reads every entity through r (a consistent view at
// revision) and encodes it into a finished snapshot.
func buildSnapshot(ctx context.Context, log *slog.Logger, revision int64, r store.Reader, maxEntities, maxBytes int) (*snapshot, error) {
	sn := newSnapshot()
	err := buildInto(ctx, log, revision, r, maxEntities, maxBytes, sn)
	sn.finish(err)
	if err != nil {
		return nil, err
	}
	return sn, nil
}

// buildInto reads every entity through r (a consistent view at revision)
// and encodes it into sn, publishing chunks as they fill; the caller
// finishes sn. Objects that cannot be converted are left out and logged: on
// the proxies they simply do not exist (fail closed). Entities go out in
// the order the store yields them (the proxies do not need any order).
func buildInto(ctx context.Context, log *slog.Logger, revision int64, r store.Reader, maxEntities, maxBytes int, sn *snapshot) error {
	start := time.Now()
	sn.mu.Lock()
	sn.revision = revision
	sn.mu.Unlock()
	c := &chunker{revision: revision, maxEntities: maxEntities, maxBytes: maxBytes, sn: sn}
	skipped := 0
	// add adds e, or counts err.
	add := func(e *syncv1.Entity, err error) error {
		if err == nil && e != nil {
			err = c.add(e)
		}
		if err != nil {
			// Bounded: a systematic fault must not log once per key.
			if skipped++; skipped <= 10 {
				log.Error("sync: leaving unconvertible entity out of snapshot", "revision", revision, "err", err)
			}
		}
		return ctx.Err()
	}
	st, err := r.GetSettings(ctx)
	if err != nil {
		return err
	}
	if len(st.GeneralSettings) > 0 || !st.UpdatedAt.IsZero() {
		if err := add(settingsEntity(&st)); err != nil {
			return err
		}
	}
	models, err := r.ListModels(ctx)
	if err != nil {
		return err
	}
	for i := range models {
		if err := add(modelEntity(&models[i]), nil); err != nil {
			return err
		}
	}
	if err := r.EachOrganization(ctx, func(o store.Organization) error { return add(orgEntity(&o), nil) }); err != nil {
		return err
	}
	if err := r.EachTeam(ctx, func(t store.Team) error { return add(teamEntity(&t), nil) }); err != nil {
		return err
	}
	if err := r.EachUser(ctx, func(u store.User) error { return add(userEntity(&u), nil) }); err != nil {
		return err
	}
	if err := r.EachEndUser(ctx, func(u store.EndUser) error { return add(endUserEntity(&u), nil) }); err != nil {
		return err
	}
	// A store that can estimate its keys cheaply lets the proxies size
	// their tables once; the chunk that holds the first key carries it.
	if h, ok := r.(interface{ KeysHint(context.Context) int }); ok {
		c.keysHint = int64(h.KeysHint(ctx))
	}
	var kt keyTranscoder
	if err := r.EachKeyDocs(ctx, func(docs [][]byte) error { return kt.batch(ctx, docs, c, add) }); err != nil {
		return err
	}
	c.flush(true)
	if skipped > 10 {
		log.Error("sync: entities left out of snapshot", "revision", revision, "count", skipped)
	}
	sn.mu.Lock()
	sn.entities, sn.skipped, sn.bytes = c.entities, skipped, c.bytes
	sn.builtAt, sn.took = time.Now(), time.Since(start)
	sn.mu.Unlock()
	return nil
}

// keyTranscoder turns batches of key documents into encoded entities
// (keyWire), split across up to GOMAXPROCS goroutines, and adds them to a
// chunker in the batch's order.
type keyTranscoder struct {
	parts []keyPart
}

// keyPart is one goroutine's share of a batch: the entities of docs[i]
// are out[ends[i-1]:ends[i]], or left out when errs[i] is set.
type keyPart struct {
	w     keyWire
	out   []byte
	ends  []int
	errs  []error
	fatal error
}

func (p *keyPart) run(docs [][]byte) {
	p.out, p.ends, p.errs, p.fatal = p.out[:0], p.ends[:0], p.errs[:0], nil
	for _, doc := range docs {
		out, err := p.w.appendEntity(p.out, doc)
		if errors.As(err, new(errKeyDecode)) {
			p.fatal = err
			return
		}
		p.out = out
		p.ends = append(p.ends, len(out))
		p.errs = append(p.errs, err)
	}
}

// batch adds docs' entities to c; a key that cannot be converted goes to
// skip (which counts it and reports whether to go on). A document that
// does not decode fails the build, as EachKey would.
func (t *keyTranscoder) batch(ctx context.Context, docs [][]byte, c *chunker, skip func(*syncv1.Entity, error) error) error {
	workers := max(1, min(runtime.GOMAXPROCS(0), 8, len(docs)/64))
	for len(t.parts) < workers {
		t.parts = append(t.parts, keyPart{})
	}
	per := (len(docs) + workers - 1) / workers
	if workers == 1 {
		t.parts[0].run(docs)
	} else {
		var wg sync.WaitGroup
		for w := range workers {
			lo, hi := min(w*per, len(docs)), min((w+1)*per, len(docs))
			wg.Go(func() { t.parts[w].run(docs[lo:hi]) })
		}
		wg.Wait()
	}
	for w := range workers {
		p := &t.parts[w]
		if p.fatal != nil {
			return p.fatal
		}
		start := 0
		for i, end := range p.ends {
			if p.errs[i] != nil {
				if err := skip(nil, p.errs[i]); err != nil {
					return err
				}
			} else {
				c.addEncoded(p.out[start:end])
			}
			start = end
		}
	}
	return ctx.Err()
}
