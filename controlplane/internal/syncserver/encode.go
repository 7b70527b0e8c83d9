package syncserver

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
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
// carrying revision, the last one with last=true. Immutable once built, so
// any number of streams send it concurrently.
type snapshot struct {
	revision int64
	chunks   [][]byte
	entities int
	skipped  int
	bytes    int64
	builtAt  time.Time
	took     time.Duration
}

// chunker packs encoded entities into chunks. Each entity is marshalled
// once, straight into the chunk buffer; the chunk header fields are
// appended after the entities (protobuf accepts fields in any order), which
// lets the last chunk be flagged without holding entities back.
type chunker struct {
	revision    int64
	maxEntities int
	maxBytes    int

	body    []byte // fields of the SnapshotChunk being filled (reused)
	n       int    // entities in body
	seq     int32
	scratch []byte

	chunks   [][]byte
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
	// ControlMessage.snapshot (field 1), exactly sized: chunks stay in
	// memory as long as the snapshot is cached.
	out := make([]byte, 0, 1+protowire.SizeVarint(uint64(len(body)))+len(body))
	out = protowire.AppendTag(out, 1, protowire.BytesType)
	out = protowire.AppendBytes(out, body)
	c.chunks = append(c.chunks, out)
	c.bytes += int64(len(out))
	c.body = body[:0]
	c.n = 0
	c.seq++
}

// keyOrder hands keys to the chunker in token-id order. The proxies write
// a snapshot into their bbolt cache as it arrives, and that is fast and
// compact only for keys in order (a million keys in random order made a
// 2.4x larger cache and a 4x slower apply). The embedded store yields keys
// in id order already: they go straight through, at no cost. From the
// first key out of order on (the Postgres backend reads in heap order:
// sorting there costs the database more than sorting here), keys are
// encoded into a buffer and sorted by id at the end, after the few passed
// on before; the keys are then briefly held twice.
type keyOrder struct {
	c       *chunker
	n       int
	last    []byte // id of the last key passed straight through
	scratch []byte

	buffering bool
	// Buffered keys: id then encoded entity, packed in fixed-size
	// segments (one huge slice would be copied as it grows, and a copy of
	// hundreds of megabytes stalls the garbage collector).
	segs [][]byte
	refs []keyRef
}

// keySegment is the size of a buffer segment (larger keys get their own).
const keySegment = 4 << 20

type keyRef struct {
	// prefix is the id's first 8 bytes, big-endian (zero-padded): most
	// comparisons end there, without a cache miss into the segments.
	prefix    uint64
	seg, off  int32 // where the id starts; the entity follows it
	idN, encN int32
}

func idPrefix(id string) uint64 {
	var b [8]byte
	copy(b[:], id)
	return binary.BigEndian.Uint64(b[:])
}

func (o *keyOrder) add(e *syncv1.Entity) error {
	id := e.GetId()
	if !o.buffering {
		if o.n == 0 || id > string(o.last) {
			o.n++
			o.last = append(o.last[:0], id...)
			return o.c.add(e)
		}
		o.buffering = true
	}
	var err error
	o.scratch, err = proto.MarshalOptions{}.MarshalAppend(o.scratch[:0], e)
	if err != nil {
		return err
	}
	need := len(id) + len(o.scratch)
	if len(o.segs) == 0 || cap(o.segs[len(o.segs)-1])-len(o.segs[len(o.segs)-1]) < need {
		o.segs = append(o.segs, make([]byte, 0, max(keySegment, need)))
	}
	i := len(o.segs) - 1
	seg := o.segs[i]
	o.refs = append(o.refs, keyRef{prefix: idPrefix(id), seg: int32(i), off: int32(len(seg)), idN: int32(len(id)), encN: int32(len(o.scratch))})
	seg = append(seg, id...)
	o.segs[i] = append(seg, o.scratch...)
	o.n++
	return nil
}

// finish passes the buffered keys on, sorted.
func (o *keyOrder) finish() {
	if !o.buffering {
		return
	}
	id := func(r *keyRef) []byte { return o.segs[r.seg][r.off : r.off+r.idN] }
	slices.SortFunc(o.refs, func(a, b keyRef) int {
		if a.prefix != b.prefix {
			return cmp.Compare(a.prefix, b.prefix)
		}
		return bytes.Compare(id(&a), id(&b))
	})
	for i := range o.refs {
		r := &o.refs[i]
		start := r.off + r.idN
		o.c.addEncoded(o.segs[r.seg][start : start+r.encN])
	}
	o.segs, o.refs = nil, nil
}

// buildSnapshot reads every entity through r (a consistent view at
// revision) and encodes it. Objects that cannot be converted are left out
// and logged: on the proxies they simply do not exist (fail closed).
func buildSnapshot(ctx context.Context, log *slog.Logger, revision int64, r store.Reader, maxEntities, maxBytes int) (*snapshot, error) {
	start := time.Now()
	c := &chunker{revision: revision, maxEntities: maxEntities, maxBytes: maxBytes}
	skipped := 0
	// add adds e, or counts err (a nil e with a nil err: already added).
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
		return nil, err
	}
	if len(st.GeneralSettings) > 0 || !st.UpdatedAt.IsZero() {
		if err := add(settingsEntity(&st)); err != nil {
			return nil, err
		}
	}
	models, err := r.ListModels(ctx)
	if err != nil {
		return nil, err
	}
	for i := range models {
		if err := add(modelEntity(&models[i]), nil); err != nil {
			return nil, err
		}
	}
	if err := r.EachOrganization(ctx, func(o store.Organization) error { return add(orgEntity(&o), nil) }); err != nil {
		return nil, err
	}
	if err := r.EachTeam(ctx, func(t store.Team) error { return add(teamEntity(&t), nil) }); err != nil {
		return nil, err
	}
	if err := r.EachUser(ctx, func(u store.User) error { return add(userEntity(&u), nil) }); err != nil {
		return nil, err
	}
	if err := r.EachEndUser(ctx, func(u store.EndUser) error { return add(endUserEntity(&u), nil) }); err != nil {
		return nil, err
	}
	var ks keyScratch
	ko := keyOrder{c: c}
	if err := r.EachKey(ctx, func(k store.Key) error {
		e, err := ks.fill(&k)
		if err == nil {
			err = ko.add(e)
		}
		return add(nil, err)
	}); err != nil {
		return nil, err
	}
	ko.finish()
	c.flush(true)
	if skipped > 10 {
		log.Error("sync: entities left out of snapshot", "revision", revision, "count", skipped)
	}
	return &snapshot{
		revision: revision,
		chunks:   c.chunks,
		entities: c.entities,
		skipped:  skipped,
		bytes:    c.bytes,
		builtAt:  time.Now(),
		took:     time.Since(start),
	}, nil
}
