package state

import (
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// A key entity read straight from its wire form (an encoded syncv1.Entity):
// a snapshot of a million keys is a million of them, and decoding each into
// generated structs (an Entity, a Key, Limits, strings, slices, maps: a
// dozen allocations, then as much garbage) cost more than building the key
// table. parse reads only what the key table keeps, allocates nothing (its
// strings alias the buffer; the table copies what it keeps), and gives up on
// anything unusual: another kind, another value case, malformed input,
// invalid UTF-8. The caller then decodes with proto.Unmarshal (which
// reports the error, if any). When parse succeeds, the result is exactly
// what proto.Unmarshal and keyView.fromProto give: unknown fields and known
// fields of the wrong wire type are skipped, a repeated scalar keeps its
// last value, a repeated message is merged, a repeated map key keeps its
// last value.

// wireEntity is an entity parsed by parse.
type wireEntity struct {
	kind, id string
	deleted  bool
	hasKey   bool // the value is a Key (possibly empty)
	key      keyView
}

// Field numbers (proto/tollgate/sync/v1/sync.proto).
const (
	entityKind    = 1
	entityID      = 2
	entityDeleted = 3
	entityKey     = 10
	entityLastVal = 16 // 11..16: the other value cases

	keyTokenID   = 1
	keyHash      = 2
	keyAlias     = 3
	keyUser      = 4
	keyTeam      = 5
	keyOrg       = 6
	keyService   = 7
	keyModels    = 8
	keyLimits    = 9
	keyMaxBudget = 10
	keyRPM       = 11
	keyTPM       = 12
	keyEnforced  = 13
	keyRoutes    = 14
	keyBlocked   = 15
	keyExpires   = 16
	keyPrevs     = 17
	keySpend     = 18
	keyTags      = 19
	keyModelSp   = 21
)

// field is one field read by nextField.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64 // varint value
	b   []byte // bytes value
}

// nextField reads the field at the start of b and returns the rest, or ok
// false when b is malformed. A field of a type other than varint or bytes
// (fixed, group) is skipped: f.typ tells.
func nextField(b []byte, f *field) (rest []byte, ok bool) {
	var tag uint64
	var n int
	if len(b) > 0 && b[0] < 0x80 {
		tag, n = uint64(b[0]), 1
	} else if tag, n = protowire.ConsumeVarint(b); n < 0 {
		return nil, false
	}
	f.num, f.typ = protowire.Number(tag>>3), protowire.Type(tag&7)
	if tag>>3 < uint64(protowire.MinValidNumber) || tag>>3 > uint64(protowire.MaxValidNumber) {
		return nil, false
	}
	b = b[n:]
	switch f.typ {
	case protowire.VarintType:
		if len(b) > 0 && b[0] < 0x80 {
			f.v = uint64(b[0])
			return b[1:], true
		}
		f.v, n = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		var l uint64
		if len(b) > 0 && b[0] < 0x80 {
			l, n = uint64(b[0]), 1
		} else if l, n = protowire.ConsumeVarint(b); n < 0 {
			return nil, false
		}
		if l > uint64(len(b)-n) {
			return nil, false
		}
		f.b = b[n : n+int(l)]
		n += int(l)
	default:
		n = protowire.ConsumeFieldValue(f.num, f.typ, b)
	}
	if n < 0 {
		return nil, false
	}
	return b[n:], true
}

// str returns b as a string without copying.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// utf8Str is str for a proto3 string field, ok false when b is not UTF-8
// (proto.Unmarshal rejects the message).
func utf8Str(b []byte) (string, bool) {
	if !utf8.Valid(b) {
		return "", false
	}
	return str(b), true
}

// parse reads an encoded Entity of kind "key" into w; false means "decode
// it with proto.Unmarshal" (see above).
func (w *wireEntity) parse(b []byte) bool {
	w.kind, w.id, w.deleted, w.hasKey = "", "", false, false
	w.key.reset()
	var f field
	var ok bool
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return false
		}
		switch {
		case f.num == entityKind && f.typ == protowire.BytesType:
			if w.kind, ok = utf8Str(f.b); !ok {
				return false
			}
		case f.num == entityID && f.typ == protowire.BytesType:
			if w.id, ok = utf8Str(f.b); !ok {
				return false
			}
		case f.num == entityDeleted && f.typ == protowire.VarintType:
			w.deleted = f.v != 0
		case f.num == entityKey && f.typ == protowire.BytesType:
			if !w.key.parse(f.b) {
				return false
			}
			w.hasKey = true
		case f.num > entityKey && f.num <= entityLastVal:
			return false // another value case: the generic decoder
		}
	}
	if w.kind != KindKey {
		return false
	}
	w.key.rpm = dedupByModel(w.key.rpm, intModel)
	w.key.tpm = dedupByModel(w.key.tpm, intModel)
	w.key.modelSpend = dedupByModel(w.key.modelSpend, intModel)
	w.key.budgets = dedupByModel(w.key.budgets, budgetModel)
	return true
}

// parse merges an encoded Key into k.
func (k *keyView) parse(b []byte) bool {
	var f field
	var ok bool
	var s string
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return false
		}
		if f.typ == protowire.VarintType {
			switch f.num {
			case keyService:
				k.serviceAccount = f.v != 0
			case keyBlocked:
				k.blocked = f.v != 0
			case keyExpires:
				k.expires = int64(f.v)
			case keySpend:
				k.spend = int64(f.v)
			}
			continue
		}
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case keyHash:
			k.hash = f.b
		case keyTokenID, keyAlias:
			if _, ok = utf8Str(f.b); !ok {
				return false
			}
		case keyUser, keyTeam, keyOrg, keyModels, keyEnforced, keyRoutes, keyTags:
			if s, ok = utf8Str(f.b); !ok {
				return false
			}
			switch f.num {
			case keyUser:
				k.user = s
			case keyTeam:
				k.team = s
			case keyOrg:
				k.org = s
			case keyModels:
				k.models = append(k.models, s)
			case keyEnforced:
				k.enforced = append(k.enforced, s)
			case keyRoutes:
				k.routes = append(k.routes, s)
			case keyTags:
				k.tags = append(k.tags, s)
			}
		case keyLimits:
			if !k.limits.parse(f.b) {
				return false
			}
			k.hasLimits = true
		case keyRPM, keyTPM, keyModelSp:
			m, ok := parseModelInt(f.b)
			if !ok {
				return false
			}
			switch f.num {
			case keyRPM:
				k.rpm = append(k.rpm, m)
			case keyTPM:
				k.tpm = append(k.tpm, m)
			default:
				k.modelSpend = append(k.modelSpend, m)
			}
		case keyMaxBudget:
			mb, ok := parseModelBudget(f.b)
			if !ok {
				return false
			}
			k.budgets = append(k.budgets, mb)
		case keyPrevs:
			var p prevView
			if !p.parse(f.b) {
				return false
			}
			k.prevs = append(k.prevs, p)
		}
	}
	return true
}

func (l *limitsView) parse(b []byte) bool {
	var f field
	var ok bool
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return false
		}
		switch {
		case f.typ == protowire.VarintType:
			switch f.num {
			case 1:
				l.maxBudget = int64(f.v)
			case 2:
				l.softBudget = int64(f.v)
			case 4:
				l.resetAt = int64(f.v)
			case 5:
				l.rpm = int64(f.v)
			case 6:
				l.tpm = int64(f.v)
			case 7:
				l.parallel = int64(f.v)
			}
		case f.num == 3 && f.typ == protowire.BytesType:
			if l.duration, ok = utf8Str(f.b); !ok {
				return false
			}
		}
	}
	return true
}

func (p *prevView) parse(b []byte) bool {
	var f field
	var ok bool
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return false
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			p.hash = f.b
		case f.num == 2 && f.typ == protowire.VarintType:
			p.validUntil = int64(f.v)
		case f.num == 70 && f.typ == protowire.VarintType:
			p.validUntilMilli = int64(f.v)
		}
	}
	return true
}

// parseModelInt reads a map<string, int64> entry.
func parseModelInt(b []byte) (m modelInt, ok bool) {
	var f field
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return m, false
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			if m.model, ok = utf8Str(f.b); !ok {
				return m, false
			}
		case f.num == 2 && f.typ == protowire.VarintType:
			m.v = int64(f.v)
		}
	}
	return m, true
}

// parseModelBudget reads a map<string, ModelBudget> entry.
func parseModelBudget(b []byte) (m modelBudget, ok bool) {
	var f field
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return m, false
		}
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			if m.model, ok = utf8Str(f.b); !ok {
				return m, false
			}
		case f.num == 2 && f.typ == protowire.BytesType:
			v := f.b
			var g field
			for len(v) > 0 {
				if v, ok = nextField(v, &g); !ok {
					return m, false
				}
				switch {
				case g.num == 1 && g.typ == protowire.VarintType:
					m.limit = int64(g.v)
				case g.num == 2 && g.typ == protowire.BytesType:
					if m.period, ok = utf8Str(g.b); !ok {
						return m, false
					}
				}
			}
		}
	}
	return m, true
}

// validate is Validate for a parsed key entity (same checks, same errors).
func (w *wireEntity) validate() error {
	if w.id == "" {
		return invalidID(w.kind, w.id, "empty id")
	}
	if len(w.id) > maxStringLen {
		return invalidID(w.kind, w.id, "id too long")
	}
	if w.deleted {
		return nil
	}
	k := &w.key
	switch {
	case !w.hasKey:
		return invalidID(w.kind, w.id, "missing key value")
	case len(k.hash) != 32:
		return invalidID(w.kind, w.id, "key_hash is not 32 bytes")
	}
	for _, p := range k.prevs {
		if len(p.hash) != 32 {
			return invalidID(w.kind, w.id, "previous key_hash is not 32 bytes")
		}
	}
	if len(k.user) > maxStringLen || len(k.team) > maxStringLen || len(k.org) > maxStringLen {
		return invalidID(w.kind, w.id, "owner id too long")
	}
	return nil
}

// Chunk is a snapshot chunk with its entities left encoded (AddWire reads
// them): what ParseChunk reads from an encoded ControlMessage.
type Chunk struct {
	Revision int64
	Seq      int32
	Last     bool
	KeysHint int64
	Entities [][]byte // encoded syncv1.Entity each, aliasing the message

	// Set by Prepare: the entities parsed ahead, and the backing arrays
	// of their lists.
	parsed  []preparedEntity
	strs    []string
	ints    []modelInt
	budgets []modelBudget
	prevs   []prevView
}

type preparedEntity struct {
	ok bool // w holds the entity; else AddChunkEntity decodes it
	w  wireEntity
}

// ControlMessage and SnapshotChunk field numbers.
const (
	controlSnapshot = 1
	controlLastCase = 5 // 2..5: the other message cases

	chunkRevision = 1
	chunkSeq      = 2
	chunkLast     = 3
	chunkEntities = 4
	chunkKeysHint = 5
)

// ParseChunk reads an encoded ControlMessage holding a snapshot chunk into
// c without decoding its entities (c.Entities alias raw). It returns false
// when raw holds another message, the message in an unusual form (another
// case of its oneof beside the snapshot) or malformed bytes: decode it with
// proto.Unmarshal then (which reports the error). Entities are not checked
// here: AddWire reports a malformed one.
func ParseChunk(raw []byte, c *Chunk) bool {
	c.Revision, c.Seq, c.Last, c.KeysHint = 0, 0, false, 0
	c.Entities = c.Entities[:0]
	c.unprepare()
	var f field
	var ok, snapshot bool
	for len(raw) > 0 {
		if raw, ok = nextField(raw, &f); !ok {
			return false
		}
		switch {
		case f.num == controlSnapshot && f.typ == protowire.BytesType:
			snapshot = true
			if !c.parse(f.b) {
				return false
			}
		case f.num > controlSnapshot && f.num <= controlLastCase:
			return false
		}
	}
	return snapshot
}

// parse merges an encoded SnapshotChunk into c.
func (c *Chunk) parse(b []byte) bool {
	var f field
	var ok bool
	for len(b) > 0 {
		if b, ok = nextField(b, &f); !ok {
			return false
		}
		switch {
		case f.typ == protowire.VarintType:
			switch f.num {
			case chunkRevision:
				c.Revision = int64(f.v)
			case chunkSeq:
				c.Seq = int32(f.v)
			case chunkLast:
				c.Last = f.v != 0
			case chunkKeysHint:
				c.KeysHint = int64(f.v)
			}
		case f.num == chunkEntities && f.typ == protowire.BytesType:
			c.Entities = append(c.Entities, f.b)
		}
	}
	return true
}

// ChunkOf encodes a decoded chunk's entities (nil ones left out).
func ChunkOf(s *syncv1.SnapshotChunk) (*Chunk, error) {
	c := &Chunk{Revision: s.GetRevision(), Seq: s.GetSeq(), Last: s.GetLast(), KeysHint: s.GetKeysHint()}
	for _, e := range s.GetEntities() {
		if e == nil {
			continue
		}
		b, err := proto.Marshal(e)
		if err != nil {
			return nil, err
		}
		c.Entities = append(c.Entities, b)
	}
	return c, nil
}

// Encode returns c as an encoded ControlMessage, with only the entities
// keep accepts (all when keep is nil).
func (c *Chunk) Encode(keep func(i int) bool) []byte {
	var body []byte
	if c.Revision != 0 {
		body = protowire.AppendVarint(protowire.AppendTag(body, chunkRevision, protowire.VarintType), uint64(c.Revision))
	}
	if c.Seq != 0 {
		body = protowire.AppendVarint(protowire.AppendTag(body, chunkSeq, protowire.VarintType), uint64(int64(c.Seq)))
	}
	if c.Last {
		body = protowire.AppendVarint(protowire.AppendTag(body, chunkLast, protowire.VarintType), 1)
	}
	for i, e := range c.Entities {
		if keep == nil || keep(i) {
			body = protowire.AppendBytes(protowire.AppendTag(body, chunkEntities, protowire.BytesType), e)
		}
	}
	if c.KeysHint != 0 {
		body = protowire.AppendVarint(protowire.AppendTag(body, chunkKeysHint, protowire.VarintType), uint64(c.KeysHint))
	}
	out := protowire.AppendTag(make([]byte, 0, len(body)+8), controlSnapshot, protowire.BytesType)
	return protowire.AppendBytes(out, body)
}

// Prepare parses c's key entities ahead of Builder.AddChunkEntity, which
// then only adds them: a chunk can be prepared on another goroutine while
// the builder adds the previous one. It allocates nothing when c is reused
// (ParseChunk into the same Chunk).
func (c *Chunk) Prepare() {
	c.unprepare()
	if cap(c.parsed) < len(c.Entities) {
		c.parsed = make([]preparedEntity, len(c.Entities))
	}
	clear(c.parsed[len(c.Entities):cap(c.parsed)]) // a shorter chunk: drop the rest
	c.parsed = c.parsed[:len(c.Entities)]
	var w wireEntity
	for i, raw := range c.Entities {
		p := &c.parsed[i]
		if p.ok = w.parse(raw); !p.ok {
			p.w = wireEntity{} // nothing of an earlier message stays reachable
			continue
		}
		p.w = w
		k := &p.w.key
		k.models = keep(&c.strs, k.models)
		k.enforced = keep(&c.strs, k.enforced)
		k.routes = keep(&c.strs, k.routes)
		k.tags = keep(&c.strs, k.tags)
		k.rpm = keep(&c.ints, k.rpm)
		k.tpm = keep(&c.ints, k.tpm)
		k.modelSpend = keep(&c.ints, k.modelSpend)
		k.budgets = keep(&c.budgets, k.budgets)
		k.prevs = keep(&c.prevs, k.prevs)
	}
}

// unprepare drops what Prepare parsed, keeping the arrays (Prepare
// overwrites each entity it parses again; clearing them all here cost as
// much as parsing).
func (c *Chunk) unprepare() {
	c.parsed = c.parsed[:0]
	clear(c.strs)
	c.strs = c.strs[:0]
	c.ints, c.budgets, c.prevs = c.ints[:0], c.budgets[:0], c.prevs[:0]
}

// keep copies l to the end of *pool and returns the copy (nil when
// empty). Growing the pool leaves earlier copies in the old array, which
// they keep alive.
func keep[T any](pool *[]T, l []T) []T {
	if len(l) == 0 {
		return nil
	}
	n := len(*pool)
	*pool = append(*pool, l...)
	return (*pool)[n:len(*pool):len(*pool)]
}
