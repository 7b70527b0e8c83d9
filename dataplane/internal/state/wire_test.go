package state

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// fullKey is a key with every field set, a repeated map key aside.
func fullKey(i int) *syncv1.Entity {
	e := statetest.Key(i)
	k := e.GetKey()
	k.KeyAlias = "alias"
	k.ServiceAccount = true
	k.Blocked = i%2 == 0
	k.Models = []string{"gpt-4o", "gpt-4o-mini", "ünïcode"}
	k.EnforcedParams = []string{"user", "metadata.x"}
	k.AllowedRoutes = []string{"/chat/completions"}
	k.Tags = []string{"a", "b"}
	k.Limits = &syncv1.Limits{MaxBudget: 5, SoftBudget: 4, BudgetDuration: "1d", BudgetResetAtUnix: 1_900_000_000, RpmLimit: 7, TpmLimit: 8, MaxParallelRequests: 9}
	k.ModelMaxBudget = map[string]*syncv1.ModelBudget{"gpt-4o": {BudgetLimit: 100, TimePeriod: "30d"}, "o3": {BudgetLimit: 5, TimePeriod: "1d"}, "z": nil}
	k.ModelRpmLimit = map[string]int64{"gpt-4o": 10, "o3": 3}
	k.ModelTpmLimit = map[string]int64{"gpt-4o": 1000}
	k.ModelSpend = map[string]int64{"gpt-4o": 42, "o3": 0, "other": 7}
	k.Metadata = []byte(`{"env":"x"}`)
	k.ExpiresUnix = 2_000_000_000
	k.Spend = -3
	p1, p2 := statetest.PrevHash(i), statetest.PrevHash(i+500_000) // no two keys share one
	k.PreviousHashes = []*syncv1.PreviousHash{
		{KeyHash: p1[:], ValidUntilUnix: 1_999_999_999, ValidUntilUnixMs: 1_999_999_999_500},
		{KeyHash: p2[:], ValidUntilUnix: 1_999_999_000},
	}
	return e
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// canonKey makes nil and empty slices alike (the decoders differ there).
func canonKey(k keyView) keyView {
	nilEmpty := func(l []string) []string {
		if len(l) == 0 {
			return nil
		}
		return l
	}
	k.models, k.enforced, k.routes, k.tags = nilEmpty(k.models), nilEmpty(k.enforced), nilEmpty(k.routes), nilEmpty(k.tags)
	if len(k.hash) == 0 {
		k.hash = nil
	}
	if len(k.rpm) == 0 {
		k.rpm = nil
	}
	if len(k.tpm) == 0 {
		k.tpm = nil
	}
	if len(k.modelSpend) == 0 {
		k.modelSpend = nil
	}
	if len(k.budgets) == 0 {
		k.budgets = nil
	}
	if len(k.prevs) == 0 {
		k.prevs = nil
	}
	for i := range k.prevs {
		if len(k.prevs[i].hash) == 0 {
			k.prevs[i].hash = nil
		}
	}
	return k
}

// checkWire asserts that parse either declines raw or gives what
// proto.Unmarshal and fromProto give.
func checkWire(t *testing.T, raw []byte) (parsed bool) {
	t.Helper()
	var w wireEntity
	ok := w.parse(raw)
	var e syncv1.Entity
	err := proto.Unmarshal(raw, &e)
	if !ok {
		return false
	}
	if err != nil {
		t.Fatalf("parse accepted what proto.Unmarshal rejects (%v): %x", err, raw)
	}
	if e.Kind != w.kind || e.Id != w.id || e.Deleted != w.deleted || (e.GetKey() != nil) != w.hasKey {
		t.Fatalf("entity header differs: proto %q %q %v %v, wire %q %q %v %v",
			e.Kind, e.Id, e.Deleted, e.GetKey() != nil, w.kind, w.id, w.deleted, w.hasKey)
	}
	if w.hasKey {
		var want keyView
		want.fromProto(e.GetKey())
		if got, want := canonKey(w.key), canonKey(want); !reflect.DeepEqual(got, want) {
			t.Fatalf("key differs:\nwire  %+v\nproto %+v", got, want)
		}
	}
	if (Validate(&e) == nil) != (w.validate() == nil) {
		t.Fatalf("validation differs: proto %v, wire %v", Validate(&e), w.validate())
	}
	if err := w.validate(); err != nil && err.Error() != Validate(&e).Error() {
		t.Fatalf("validation error differs: proto %v, wire %v", Validate(&e), err)
	}
	return true
}

// wireSeeds are encoded entities: canonical keys and every odd form the
// wire allows (repeats, unknown fields, wrong wire types, bad UTF-8).
func wireSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for i := range 8 {
		seeds = append(seeds, marshal(t, statetest.Key(i)), marshal(t, fullKey(i)))
	}
	full := marshal(t, fullKey(7))
	key := marshal(t, fullKey(3).GetKey())
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	str := func(b []byte, num protowire.Number, s string) []byte {
		return protowire.AppendBytes(tag(b, num, protowire.BytesType), []byte(s))
	}
	vint := func(b []byte, num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(tag(b, num, protowire.VarintType), v)
	}
	entity := func(k []byte, extra ...func([]byte) []byte) []byte {
		b := str(nil, 1, "key")
		b = str(b, 2, "tok-1")
		b = protowire.AppendBytes(tag(b, 10, protowire.BytesType), k)
		for _, x := range extra {
			b = x(b)
		}
		return b
	}
	entry := func(model string, v uint64) []byte { return vint(str(nil, 1, model), 2, v) }
	h := statetest.Hash(1)
	seeds = append(seeds,
		marshal(t, statetest.Tombstone("key", "tok-9")),
		marshal(t, statetest.Team(1)),
		marshal(t, statetest.User(1)),
		marshal(t, &syncv1.Entity{Kind: "key", Id: "x"}), // no value
		marshal(t, &syncv1.Entity{Kind: "key", Id: "", Value: &syncv1.Entity_Key{Key: &syncv1.Key{}}}), // empty id, empty key
		append(bytes.Clone(full), full...),                           // the whole entity twice: merged
		entity(append(bytes.Clone(key), key...)),                     // the key twice: merged
		entity(key, func(b []byte) []byte { return str(b, 11, "") }), // another value case after the key
		entity(key, func(b []byte) []byte { return vint(b, 1, 5) }),  // kind as a varint: unknown
		entity(key, func(b []byte) []byte { return str(b, 999, "unknown") }),
		entity(key, func(b []byte) []byte { return protowire.AppendFixed64(tag(b, 77, protowire.Fixed64Type), 1) }),
		entity(key, func(b []byte) []byte { return str(b, 2, "tok-2") }), // the id twice
		entity(key, func(b []byte) []byte { return vint(b, 3, 2) }),      // deleted = 2
		entity(str(nil, 3, "\xff")),                                      // alias not UTF-8
		entity(str(nil, 1, "\xc3")),                                      // token id not UTF-8
		entity(str(nil, 20, "\xff")),                                     // metadata: bytes, any
		entity(str(str(nil, 2, string(h[:])), 8, "gpt\xff")),
		entity(str(nil, 2, string(h[:5]))), // short hash
		entity(protowire.AppendBytes(tag(str(nil, 2, string(h[:])), 11, protowire.BytesType),
			append(entry("m", 1), entry("m", 2)...))), // a repeated field within one map entry
		entity(func() []byte { // a repeated map key: the last wins
			b := str(nil, 2, string(h[:]))
			for _, e := range [][]byte{entry("b", 1), entry("a", 2), entry("b", 3)} {
				b = protowire.AppendBytes(tag(b, 11, protowire.BytesType), e)
			}
			return b
		}()),
		entity(protowire.AppendBytes(tag(str(nil, 2, string(h[:])), 10, protowire.BytesType), str(nil, 1, "m"))), // budget without value
		entity(protowire.AppendBytes(tag(str(nil, 2, string(h[:])), 9, protowire.BytesType), vint(vint(nil, 5, 1), 5, 2))),
		entity(protowire.AppendBytes(tag(protowire.AppendBytes(tag(str(nil, 2, string(h[:])), 9, protowire.BytesType), vint(nil, 5, 1)), 9, protowire.BytesType), vint(nil, 6, 2))), // limits twice: merged
		entity(vint(str(nil, 2, string(h[:])), 8, 1)),   // models as a varint: unknown
		entity(str(str(nil, 2, string(h[:])), 16, "x")), // expires as bytes: unknown
		entity(vint(nil, 18, ^uint64(0))),               // spend -1
		[]byte{0x0a},                                    // truncated
		[]byte{0x00},                                    // field 0
		[]byte{0x0b, 0x0c},                              // group
		[]byte{0xfa, 0xff, 0xff, 0xff, 0x0f, 0x00},      // field number too large
		nil,
	)
	return seeds
}

func TestWireParseMatchesProto(t *testing.T) {
	parsed := 0
	for _, raw := range wireSeeds(t) {
		if checkWire(t, raw) {
			parsed++
		}
	}
	if parsed < 30 {
		t.Fatalf("only %d seeds took the wire path", parsed)
	}
}

func FuzzWireParse(f *testing.F) {
	for _, s := range wireSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkWire(t, raw) })
}

// TestAddWireSameTable builds one state with Add (decoded entities) and
// one with AddWire (encoded), from keys with every field set, tombstones,
// replacements and other kinds, and compares what readers see.
func TestAddWireSameTable(t *testing.T) {
	var ents []*syncv1.Entity
	const n = 3000
	for i := range n {
		switch {
		case i%3 == 0:
			ents = append(ents, fullKey(i))
		default:
			ents = append(ents, statetest.Key(i))
		}
	}
	for i := range 100 {
		ents = append(ents, statetest.Team(i), statetest.User(i), statetest.Tombstone("key", statetest.TokenID(i*7)))
		ents = append(ents, fullKey(i*11)) // replaced later in the snapshot
	}
	ents = append(ents, statetest.Org(1), statetest.Model("m1", "gpt-4o"), statetest.Settings(`{}`),
		&syncv1.Entity{Kind: "key", Id: "bad", Value: &syncv1.Entity_Key{Key: &syncv1.Key{KeyHash: []byte{1}}}})

	a, b := New(), New()
	ba, bb := a.NewSnapshot(5), b.NewSnapshot(5)
	bb.Presize(n)
	for _, e := range ents {
		raw := marshal(t, e)
		var dec syncv1.Entity
		if err := proto.Unmarshal(raw, &dec); err != nil {
			t.Fatal(err)
		}
		ea, eb := ba.Add(&dec), bb.AddWire(raw)
		if (ea == nil) != (eb == nil) || (ea != nil && ea.Error() != eb.Error()) {
			t.Fatalf("%s %q: Add %v, AddWire %v", e.Kind, e.Id, ea, eb)
		}
	}
	a.Install(ba)
	b.Install(bb)
	sa, sb := a.Stats(), b.Stats()
	sa.KeyTableBytes, sb.KeyTableBytes = 0, 0
	if sa != sb {
		t.Fatalf("stats differ:\nAdd     %+v\nAddWire %+v", sa, sb)
	}
	for i := range n + 1000 {
		for _, h := range [][32]byte{statetest.Hash(i), statetest.PrevHash(i), statetest.PrevHash(i + 500_000)} {
			ka, oka := a.LookupKey(&h, 1_999_999_999_000)
			kb, okb := b.LookupKey(&h, 1_999_999_999_000)
			if oka != okb || !reflect.DeepEqual(ka, kb) {
				t.Fatalf("key %d differs:\nAdd     %+v %+v\nAddWire %+v %+v", i, ka, ka.Policy, kb, kb.Policy)
			}
		}
		for _, m := range []string{"gpt-4o", "o3", "other"} {
			if x, y := a.KeyModelSpend(statetest.TokenID(i), m), b.KeyModelSpend(statetest.TokenID(i), m); x != y {
				t.Fatalf("key %d model %s spend: %d vs %d", i, m, x, y)
			}
		}
	}
	if ta, _ := a.Team("team-1"); ta == nil || !reflect.DeepEqual(ta, func() *Team { tb, _ := b.Team("team-1"); return tb }()) {
		t.Fatal("team differs")
	}
}

func TestAddWireMalformed(t *testing.T) {
	b := New().NewSnapshot(1)
	if err := b.AddWire([]byte{0x0a, 0x05, 'k'}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("truncated: %v", err)
	}
	if err := b.AddWire(marshal(t, &syncv1.Entity{Kind: "key", Id: "x"})); !errors.Is(err, ErrInvalidEntity) {
		t.Fatalf("no value: %v", err)
	}
	if err := b.AddWire(marshal(t, statetest.Key(1))); err != nil {
		t.Fatal(err)
	}
}

// compareStates fails unless a and b answer every reader call alike for
// keys 0..n (their current and previous secrets) at unix ms now.
func compareStates(t *testing.T, a, b *State, n int, now int64) {
	t.Helper()
	sa, sb := a.Stats(), b.Stats()
	sa.KeyTableBytes, sb.KeyTableBytes = 0, 0
	sa.DeadRecords, sb.DeadRecords = 0, 0 // a bulk build tombstones what a delta updates in place
	if sa != sb {
		t.Fatalf("stats differ:\n%+v\n%+v", sa, sb)
	}
	for i := range n {
		for _, h := range [][32]byte{statetest.Hash(i), statetest.PrevHash(i), statetest.PrevHash(i + 500_000)} {
			ka, oka := a.LookupKey(&h, now)
			kb, okb := b.LookupKey(&h, now)
			if oka != okb || !reflect.DeepEqual(ka, kb) {
				t.Fatalf("key %d differs:\n%v %+v %+v\n%v %+v %+v", i, oka, ka, ka.Policy, okb, kb, kb.Policy)
			}
		}
		for _, m := range []string{"gpt-4o", "o3", "other"} {
			if x, y := a.KeyModelSpend(statetest.TokenID(i), m), b.KeyModelSpend(statetest.TokenID(i), m); x != y {
				t.Fatalf("key %d model %s spend: %d vs %d", i, m, x, y)
			}
		}
	}
}

// TestBulkBuildRepeatedKeys: a snapshot that repeats token ids (with and
// without previous hashes, with the same or another hash) builds the table
// that applying the same entities one by one, as deltas, builds.
func TestBulkBuildRepeatedKeys(t *testing.T) {
	const n = 2000
	var ents []*syncv1.Entity
	for i := range n {
		ents = append(ents, fullKey(i))
	}
	for i := 0; i < n; i += 7 {
		e := statetest.Key(i) // no previous hash now; another hash when i%2
		if i%2 == 1 {
			h := statetest.Hash(i + n)
			e.GetKey().KeyHash = h[:]
		}
		ents = append(ents, e)
	}
	for i := 3; i < n; i += 11 {
		ents = append(ents, fullKey(i)) // back again, previous hashes included
	}
	bulk := New()
	b := bulk.NewSnapshot(1)
	b.Presize(n)
	for _, e := range ents {
		if err := b.AddWire(marshal(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	if b.Keys() != n {
		t.Fatalf("Keys() = %d, want %d", b.Keys(), n)
	}
	bulk.Install(b)

	inc := New()
	ib := inc.NewSnapshot(1)
	if err := ib.Add(ents[0]); err != nil {
		t.Fatal(err)
	}
	inc.Install(ib)
	for i, e := range ents[1:] {
		if err := inc.ApplyDelta(&syncv1.Delta{PrevRevision: int64(i + 1), Revision: int64(i + 2), Changes: []*syncv1.Entity{e}}); err != nil {
			t.Fatal(err)
		}
	}
	st := inc.Stats()
	if st.Keys != n {
		t.Fatalf("incremental: %d keys", st.Keys)
	}
	for _, h := range [][32]byte{statetest.PrevHash(3), statetest.Hash(7 + n)} {
		if _, ok := bulk.LookupKey(&h, 1_999_999_999_000); !ok {
			t.Fatal("a previous hash or a replaced hash does not match")
		}
	}
	if _, ok := bulk.LookupKey(ptrHash(statetest.PrevHash(28)), 1_999_999_999_000); ok {
		t.Fatal("a previous hash dropped by a later put still matches")
	}
	// Same revision for the comparison of Stats.
	bulk.v.Load().rev = inc.Revision()
	compareStates(t, bulk, inc, 2*n, 1_999_999_999_000)

	// A tombstone ends bulk mode mid-snapshot; the rest is added one by one.
	mid := New()
	mb := mid.NewSnapshot(inc.Revision())
	for i, e := range ents {
		if i == len(ents)/2 {
			if err := mb.Add(statetest.Tombstone("key", "none")); err != nil {
				t.Fatal(err)
			}
		}
		if err := mb.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	mid.Install(mb)
	compareStates(t, mid, inc, 2*n, 1_999_999_999_000)
}

// TestPreparedChunkSameTable: a chunk parsed ahead (ParseChunk, Prepare,
// reused for the next chunk) adds what AddWire adds.
func TestPreparedChunkSameTable(t *testing.T) {
	const n = 3000
	var ents []*syncv1.Entity
	for i := range n {
		if i%3 == 0 {
			ents = append(ents, fullKey(i))
		} else {
			ents = append(ents, statetest.Key(i))
		}
		if i%100 == 0 {
			ents = append(ents, statetest.User(i), statetest.Team(i))
		}
	}
	a, b := New(), New()
	ba, bb := a.NewSnapshot(1), b.NewSnapshot(1)
	for _, e := range ents {
		if err := ba.AddWire(marshal(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	var c Chunk
	for start := 0; start < len(ents); start += 700 {
		part := ents[start:min(start+700, len(ents))]
		raw := marshal(t, &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{Snapshot: &syncv1.SnapshotChunk{
			Revision: 1, Seq: int32(start / 700), Entities: part, KeysHint: 9}}})
		if !ParseChunk(raw, &c) || c.Revision != 1 || c.Seq != int32(start/700) || c.KeysHint != 9 || len(c.Entities) != len(part) {
			t.Fatalf("ParseChunk: %+v", c)
		}
		c.Prepare()
		clear(raw[:0]) // raw stays as it is until the chunk is added
		for i := range c.Entities {
			if err := bb.AddChunkEntity(&c, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	a.Install(ba)
	b.Install(bb)
	compareStates(t, a, b, n, 1_999_999_999_000)
	ta, _ := a.Team("team-100")
	tb, _ := b.Team("team-100")
	if ta == nil || !reflect.DeepEqual(ta, tb) {
		t.Fatal("team differs")
	}
}

func TestParseChunkDeclines(t *testing.T) {
	var c Chunk
	for _, m := range []*syncv1.ControlMessage{
		{Msg: &syncv1.ControlMessage_Delta{Delta: &syncv1.Delta{Revision: 2}}},
		{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{HeadRevision: 2}}},
		{},
	} {
		if ParseChunk(marshal(t, m), &c) {
			t.Fatalf("ParseChunk accepted %v", m)
		}
	}
	snap := marshal(t, &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{Snapshot: &syncv1.SnapshotChunk{Revision: 3, Last: true}}})
	delta := marshal(t, &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Delta{Delta: &syncv1.Delta{Revision: 2}}})
	if ParseChunk(append(bytes.Clone(snap), delta...), &c) {
		t.Fatal("ParseChunk accepted a snapshot followed by a delta (the delta wins)")
	}
	if !ParseChunk(snap, &c) || !c.Last || c.Revision != 3 {
		t.Fatalf("ParseChunk: %+v", c)
	}
	if ParseChunk(snap[:len(snap)-1], &c) {
		t.Fatal("ParseChunk accepted a truncated message")
	}
	// Encode round trip, with an entity left out.
	c = Chunk{Revision: 4, Seq: 2, Last: true, KeysHint: 7, Entities: [][]byte{marshal(t, statetest.Key(1)), marshal(t, statetest.Key(2))}}
	var m syncv1.ControlMessage
	if err := proto.Unmarshal(c.Encode(func(i int) bool { return i == 1 }), &m); err != nil {
		t.Fatal(err)
	}
	s := m.GetSnapshot()
	if s.GetRevision() != 4 || s.GetSeq() != 2 || !s.GetLast() || s.GetKeysHint() != 7 || len(s.GetEntities()) != 1 || !proto.Equal(s.GetEntities()[0], statetest.Key(2)) {
		t.Fatalf("Encode: %v", s)
	}
}

func ptrHash(h [32]byte) *[32]byte { return &h }
