package syncserver

import (
	"context"
	"log/slog"
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
	size := 1 + protowire.SizeVarint(uint64(len(c.scratch))) + len(c.scratch)
	if c.n > 0 && (c.n >= c.maxEntities || len(c.body)+size > c.maxBytes) {
		c.flush(false)
	}
	c.body = protowire.AppendTag(c.body, 4, protowire.BytesType) // SnapshotChunk.entities
	c.body = protowire.AppendBytes(c.body, c.scratch)
	c.n++
	c.entities++
	return nil
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

// buildSnapshot reads every entity through r (a consistent view at
// revision) and encodes it. Objects that cannot be converted are left out
// and logged: on the proxies they simply do not exist (fail closed).
func buildSnapshot(ctx context.Context, log *slog.Logger, revision int64, r store.Reader, maxEntities, maxBytes int) (*snapshot, error) {
	start := time.Now()
	c := &chunker{revision: revision, maxEntities: maxEntities, maxBytes: maxBytes}
	skipped := 0
	add := func(e *syncv1.Entity, err error) error {
		if err == nil {
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
	var ks keyScratch
	if err := r.EachKey(ctx, func(k store.Key) error { return add(ks.fill(&k)) }); err != nil {
		return nil, err
	}
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
