package state

import (
	"hash/maphash"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/hugepage"
)

// The key table: 64 shards, each a slice of fixed-size pointer-free records
// plus an open-addressing index of uint32 slots, guarded by its own
// RWMutex. A key's record sits in the shard chosen by (a seeded hash of) its
// current hash; each previous hash still in its grace period gets a full copy
// of the record (with the deadline) in the shard of that previous hash, so a
// lookup touches one shard, one lock, and in the common case three cache
// lines: an index slot and the record (the token id is inline).
//
// Records are append-only: an update rewrites a record's fields in place but
// never its token id bytes, and a removed record becomes a tombstone. So a
// TokenID string handed to a reader (pointing into the record array) never
// changes; when tombstones pile up, the table is rebuilt (compacted).
//
// Index slot layout (0 = empty):
//
//	bit 31     record is a previous-hash copy (shard.prevs) rather than a key (shard.entries)
//	bits 24-30 7-bit tag from the hash, so most non-matching probes do not touch a record
//	bits 0-23  record index + 1
//
// A global reference to a record is shard<<22 | index (4M records per
// shard, 268M in all), which leaves the token-id index 4 bits for a tag.
const (
	shardBits   = 6
	numShards   = 1 << shardBits
	slotIdxMask = 1<<24 - 1
	slotTagMask = 0x7f << 24
	slotPrevBit = 1 << 31
	refShift    = 22
	refIdxMask  = 1<<refShift - 1
	maxPerShard = refIdxMask - 1 // index+1 fits the ref's index bits
	noRef       = ^uint32(0)
	// token-id index slot: ref+1 in the low 28 bits, a 4-bit hash tag above.
	tokRefMask = 1<<28 - 1
	tokTagMask = ^uint32(tokRefMask)

	flagBlocked        = 1
	flagServiceAccount = 2
	flagHasPrev        = 4 // writer bookkeeping: the key has previous-hash copies
	polShift           = 3

	inlineTok = 32   // token ids up to this long live in the record
	tokArena  = 0xff // tokLen marking a longer token id: strRef in tok[0:4]
	tokDead   = 0    // tokLen of a tombstone
)

// entry is one key: 104 bytes, no pointers.
type entry struct {
	hash    [32]byte
	spend   int64
	expires uint32 // unix seconds, clamped (0 never)
	resetAt uint32
	user    strRef
	team    strRef
	org     strRef
	pol     uint32 // policy index<<polShift | flags
	lim     uint32 // limits profile index
	tok     [inlineTok]byte
	tokLen  uint8
}

// prevEntry is a copy of a key's entry under one of its previous hashes.
type prevEntry struct {
	entry
	validUntil int64 // unix ms: the hash matches while now < validUntil
}

var _ [104 - unsafe.Sizeof(entry{})]struct{} // entry stays 104 bytes

// setFields copies everything but the token id from src: bytes a reader's
// TokenID string may point to are written once, when the record is created.
func (e *entry) setFields(src *entry) {
	e.hash = src.hash
	e.spend, e.expires, e.resetAt = src.spend, src.expires, src.resetAt
	e.user, e.team, e.org = src.user, src.team, src.org
	e.pol, e.lim = src.pol, src.lim
}

type shard struct {
	mu      sync.RWMutex
	entries []entry
	prevs   []prevEntry
	index   []uint32
	n       int      // occupied index slots
	_       [88]byte // keep neighbouring shards' locks off one cache line
}

type keyTable struct {
	seed   maphash.Seed
	shards [numShards]shard
	ar     *arena
	ids    *interner
	d      *dict
	// ms holds per-model spend, only for keys with a model_max_budget.
	ms *modelSpends

	// Writer-only state: readers never touch it.
	view    keyView // put's scratch
	tokSeed maphash.Seed
	tok     []uint32 // token id index: tag | global ref of the key's entry + 1
	tokN    int
	prevOf  map[string][]uint32 // token id -> refs of its previous-hash copies
	keys    int
	prevN   int
	dead    int // tombstoned records
	carved  int // records presize carved from one allocation (0: none)

	// bulk is set while a snapshot is built (nobody reads the table yet):
	// put only appends records, and finishBulk builds the indexes at the
	// end, in memory order (see there). bulkTok lists the keys put since,
	// in order.
	bulk    bool
	bulkTok []bulkKey
}

// bulkKey is a key put in bulk mode: the hash of its token id and its
// record.
type bulkKey struct {
	h   uint64
	ref uint32
}

func newKeyTable(d *dict) *keyTable {
	t := &keyTable{
		seed:    maphash.MakeSeed(),
		tokSeed: maphash.MakeSeed(),
		ar:      newArena(),
		ids:     newInterner(),
		d:       d,
		ms:      newModelSpends(),
		tok:     make([]uint32, 64),
		prevOf:  make(map[string][]uint32),
	}
	for i := range t.shards {
		t.shards[i].index = make([]uint32, 16)
	}
	return t
}

func (t *keyTable) hashOf(h *[32]byte) uint64 { return maphash.Bytes(t.seed, h[:]) }

func tagOf(h uint64) uint32 { return uint32(h>>(64-shardBits-7)) & 0x7f << 24 }

// lookup is the read path: one RLock, a few probes, no allocation.
func (t *keyTable) lookup(hash *[32]byte, now int64) (KeyInfo, bool) {
	h := t.hashOf(hash)
	sh := &t.shards[h>>(64-shardBits)]
	tag := tagOf(h)
	sh.mu.RLock()
	idx := sh.index
	mask := uint64(len(idx) - 1)
	prev := -1
	for i := h & mask; ; i = (i + 1) & mask {
		v := idx[i]
		if v == 0 {
			break
		}
		if v&slotTagMask != tag {
			continue
		}
		n := v&slotIdxMask - 1
		if v&slotPrevBit == 0 {
			if e := &sh.entries[n]; e.hash == *hash {
				ki := t.info(e)
				sh.mu.RUnlock()
				return ki, true
			}
		} else if p := &sh.prevs[n]; prev < 0 && p.hash == *hash && now < p.validUntil {
			// A key's current hash wins over another's previous one:
			// keep probing.
			prev = int(n)
		}
	}
	if prev >= 0 {
		ki := t.info(&sh.prevs[prev].entry)
		sh.mu.RUnlock()
		return ki, true
	}
	sh.mu.RUnlock()
	return KeyInfo{}, false
}

func (t *keyTable) info(e *entry) KeyInfo {
	return KeyInfo{
		TokenID:        t.tokenID(e),
		UserID:         t.ar.str(e.user),
		TeamID:         t.ar.str(e.team),
		OrganizationID: t.ar.str(e.org),
		ServiceAccount: e.pol&flagServiceAccount != 0,
		Blocked:        e.pol&flagBlocked != 0,
		ExpiresUnix:    int64(e.expires),
		Limits:         t.d.limitsAt(e.lim, int64(e.resetAt)),
		Spend:          e.spend,
		Policy:         t.d.policy(e.pol >> polShift),
	}
}

// tokenID returns e's token id without copying: the bytes are immutable.
func (t *keyTable) tokenID(e *entry) string {
	if n := e.tokLen; n != tokArena {
		return unsafe.String(&e.tok[0], int(n))
	}
	return t.ar.str(strRef(*(*uint32)(unsafe.Pointer(&e.tok[0]))))
}

// clampUnix stores a unix time in 32 bits: 0 stays "none", times before
// the epoch become 1 (long past), times after 2106 become the last second.
func clampUnix(v int64) uint32 {
	switch {
	case v < 0:
		return 1
	case v > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(v)
}

// ---- writer side ----

func (t *keyTable) mainAt(ref uint32) *entry {
	return &t.shards[ref>>refShift].entries[ref&refIdxMask]
}

func (t *keyTable) prevAt(ref uint32) *prevEntry {
	return &t.shards[ref>>refShift].prevs[ref&refIdxMask]
}

// setToken writes a new record's token id (once, before it is published).
func (t *keyTable) setToken(e *entry, id string) {
	if len(id) <= inlineTok {
		copy(e.tok[:], id)
		e.tokLen = uint8(len(id))
		return
	}
	*(*uint32)(unsafe.Pointer(&e.tok[0])) = uint32(t.ar.add(id))
	e.tokLen = tokArena
}

// put inserts or replaces the key with token id id. k must be valid.
func (t *keyTable) put(id string, k *syncv1.Key) {
	t.view.fromProto(k)
	t.putView(id, &t.view)
}

// putView inserts or replaces the key with token id id. k must be valid;
// id and k may alias a buffer (everything kept is copied).
func (t *keyTable) putView(id string, k *keyView) {
	var ne entry
	copy(ne.hash[:], k.hash)
	ne.user = t.ids.intern(t.ar, k.user)
	ne.team = t.ids.intern(t.ar, k.team)
	ne.org = t.ids.intern(t.ar, k.org)
	ne.pol = t.d.internPolicy(k) << polShift
	if k.blocked {
		ne.pol |= flagBlocked
	}
	if k.serviceAccount {
		ne.pol |= flagServiceAccount
	}
	if len(k.prevs) > 0 {
		ne.pol |= flagHasPrev
	}
	ne.lim = t.d.internLimits(k)
	if k.hasLimits {
		ne.resetAt = clampUnix(k.limits.resetAt)
	}
	ne.expires = clampUnix(k.expires)
	ne.spend = k.spend
	t.ms.set(id, k)

	if t.bulk {
		// A repeated id is resolved by finishBulk (the later record
		// wins); its previous hashes, kept by id, are synced here.
		t.setToken(&ne, id)
		ref := t.insertMain(&ne)
		t.bulkTok = append(t.bulkTok, bulkKey{maphash.String(t.tokSeed, id), ref})
		t.keys++
		if len(k.prevs) > 0 || (len(t.prevOf) > 0 && t.prevOf[id] != nil) {
			t.syncPrevs(id, &ne, k.prevs)
		}
		return
	}
	slot, oldRef, found := t.findTok(id)
	hadPrev := false
	if found {
		old := t.mainAt(oldRef)
		hadPrev = old.pol&flagHasPrev != 0
		ne.tok, ne.tokLen = old.tok, old.tokLen // an arena token id is shared
		if old.hash == ne.hash {
			sh := &t.shards[oldRef>>refShift]
			sh.mu.Lock()
			old.setFields(&ne)
			sh.mu.Unlock()
			if hadPrev || len(k.prevs) > 0 {
				t.syncPrevs(id, &ne, k.prevs)
			}
			return
		}
	} else {
		t.setToken(&ne, id)
		t.reserveTok()
	}
	// Insert before removing the old record: a reader sees the old or the
	// new hash, never a moment with neither.
	ref := t.insertMain(&ne)
	if found {
		t.tok[slot] = t.tok[slot]&tokTagMask | (ref + 1)
	} else {
		t.addTok(id, ref)
		t.keys++
	}
	if hadPrev || len(k.prevs) > 0 {
		t.syncPrevs(id, &ne, k.prevs)
	}
	if found {
		t.removeMain(oldRef)
	}
}

// del removes the key with token id id, if present.
func (t *keyTable) del(id string) {
	t.finishBulk()
	t.ms.del(id)
	slot, ref, found := t.findTok(id)
	if !found {
		return
	}
	if t.mainAt(ref).pol&flagHasPrev != 0 {
		for _, r := range t.prevOf[id] {
			t.removePrev(r)
		}
		delete(t.prevOf, id)
	}
	t.delTokSlot(slot)
	t.removeMain(ref)
	t.keys--
}

// syncPrevs makes key id's previous-hash copies match prevs, each a copy of
// ne. Copies whose hash stays are updated in place (atomically for
// readers); new ones are inserted before stale ones are removed.
func (t *keyTable) syncPrevs(id string, ne *entry, prevs []prevView) {
	old := t.prevOf[id]
	var keep []uint32
next:
	for _, p := range prevs {
		var pe prevEntry
		pe.entry = *ne
		copy(pe.hash[:], p.hash)
		pe.validUntil = p.validUntilMilli
		if pe.validUntil == 0 { // an older control plane: whole seconds
			pe.validUntil = p.validUntil * 1000
		}
		if pe.hash == ne.hash {
			continue
		}
		for _, r := range keep {
			if t.prevAt(r).hash == pe.hash {
				continue next // duplicate previous hash: first wins
			}
		}
		for j, r := range old {
			if r != noRef && t.prevAt(r).hash == pe.hash {
				sh := &t.shards[r>>refShift]
				sh.mu.Lock()
				dst := t.prevAt(r)
				dst.setFields(&pe.entry)
				dst.validUntil = pe.validUntil
				sh.mu.Unlock()
				keep = append(keep, r)
				old[j] = noRef
				continue next
			}
		}
		keep = append(keep, t.insertPrev(&pe))
	}
	for _, r := range old {
		if r != noRef {
			t.removePrev(r)
		}
	}
	if len(keep) > 0 {
		// Own the key: id may alias a buffer, and storing under an
		// existing string key replaces the key too.
		t.prevOf[strings.Clone(id)] = keep
	} else {
		delete(t.prevOf, id)
	}
}

func (t *keyTable) insertMain(e *entry) uint32 {
	h := t.hashOf(&e.hash)
	si := h >> (64 - shardBits)
	sh := &t.shards[si]
	if t.bulk { // not published: no lock, no index yet
		if len(sh.entries) >= maxPerShard {
			panic("state: key table shard full")
		}
		sh.entries = append(sh.entries, *e)
		return uint32(si)<<refShift | uint32(len(sh.entries)-1)
	}
	sh.mu.Lock()
	t.reserveSlot(sh)
	if len(sh.entries) >= maxPerShard {
		sh.mu.Unlock()
		panic("state: key table shard full")
	}
	i := uint32(len(sh.entries))
	sh.entries = append(sh.entries, *e)
	t.insertSlot(sh, h, (i+1)|tagOf(h))
	sh.mu.Unlock()
	return uint32(si)<<refShift | i
}

func (t *keyTable) insertPrev(p *prevEntry) uint32 {
	h := t.hashOf(&p.hash)
	si := h >> (64 - shardBits)
	sh := &t.shards[si]
	if t.bulk {
		if len(sh.prevs) >= maxPerShard {
			panic("state: key table shard full")
		}
		sh.prevs = append(sh.prevs, *p)
		t.prevN++
		return uint32(si)<<refShift | uint32(len(sh.prevs)-1)
	}
	sh.mu.Lock()
	t.reserveSlot(sh)
	if len(sh.prevs) >= maxPerShard {
		sh.mu.Unlock()
		panic("state: key table shard full")
	}
	i := uint32(len(sh.prevs))
	sh.prevs = append(sh.prevs, *p)
	t.insertSlot(sh, h, (i+1)|tagOf(h)|slotPrevBit)
	sh.mu.Unlock()
	t.prevN++
	return uint32(si)<<refShift | i
}

func (t *keyTable) removeMain(ref uint32) {
	sh := &t.shards[ref>>refShift]
	i := ref & refIdxMask
	sh.mu.Lock()
	h := t.hashOf(&sh.entries[i].hash)
	t.removeSlot(sh, h, (i+1)|tagOf(h))
	sh.entries[i].tokLen = tokDead
	sh.mu.Unlock()
	t.dead++
}

func (t *keyTable) removePrev(ref uint32) {
	sh := &t.shards[ref>>refShift]
	i := ref & refIdxMask
	if t.bulk {
		sh.prevs[i].tokLen = tokDead
		t.prevN--
		t.dead++
		return
	}
	sh.mu.Lock()
	h := t.hashOf(&sh.prevs[i].hash)
	t.removeSlot(sh, h, (i+1)|tagOf(h)|slotPrevBit)
	sh.prevs[i].tokLen = tokDead
	sh.mu.Unlock()
	t.prevN--
	t.dead++
}

// slotHash recomputes the hash of the record an index slot points to.
func (t *keyTable) slotHash(sh *shard, v uint32) uint64 {
	n := v&slotIdxMask - 1
	if v&slotPrevBit != 0 {
		return t.hashOf(&sh.prevs[n].hash)
	}
	return t.hashOf(&sh.entries[n].hash)
}

// reserveSlot grows sh's index if one more slot would exceed 3/4 load. It
// must run before the new record is stored (growIndex indexes every live
// record); the caller holds sh.mu.
func (t *keyTable) reserveSlot(sh *shard) {
	if (sh.n+1)*4 > len(sh.index)*3 {
		t.growIndex(sh)
	}
}

// insertSlot adds v at its probe position; the caller holds sh.mu and has
// called reserveSlot.
func (t *keyTable) insertSlot(sh *shard, h uint64, v uint32) {
	mask := uint64(len(sh.index) - 1)
	i := h & mask
	for sh.index[i] != 0 {
		i = (i + 1) & mask
	}
	sh.index[i] = v
	sh.n++
}

// growIndex doubles sh's index, rebuilt from the live records.
func (t *keyTable) growIndex(sh *shard) {
	sh.index = make([]uint32, 2*len(sh.index))
	t.reindex(sh)
}

// reindex fills sh's (empty) index from the live records in memory order
// (sequential reads instead of one cache miss per slot).
func (t *keyTable) reindex(sh *shard) {
	mask := uint64(len(sh.index) - 1)
	put := func(h uint64, v uint32) {
		i := h & mask
		for sh.index[i] != 0 {
			i = (i + 1) & mask
		}
		sh.index[i] = v
	}
	for n := range sh.entries {
		if e := &sh.entries[n]; e.tokLen != tokDead {
			h := t.hashOf(&e.hash)
			put(h, uint32(n+1)|tagOf(h))
		}
	}
	for n := range sh.prevs {
		if p := &sh.prevs[n]; p.tokLen != tokDead {
			h := t.hashOf(&p.hash)
			put(h, uint32(n+1)|tagOf(h)|slotPrevBit)
		}
	}
}

// removeSlot deletes v with backward-shift deletion (no tombstones in the
// index, so probe sequences never lengthen with churn); the caller holds
// sh.mu.
func (t *keyTable) removeSlot(sh *shard, h uint64, v uint32) {
	mask := uint64(len(sh.index) - 1)
	i := h & mask
	for sh.index[i] != v {
		i = (i + 1) & mask
	}
	backShift(sh.index, i, func(v uint32) uint64 { return t.slotHash(sh, v) })
	sh.n--
}

// backShift empties slot i of a linear-probing table and moves later
// members of its cluster back so that every member stays reachable from its
// home position.
func backShift(tab []uint32, i uint64, home func(uint32) uint64) {
	mask := uint64(len(tab) - 1)
	for {
		tab[i] = 0
		j := i
		for {
			j = (j + 1) & mask
			v := tab[j]
			if v == 0 {
				return
			}
			k := home(v) & mask
			// v stays when its home lies cyclically in (i, j].
			if i <= j {
				if i < k && k <= j {
					continue
				}
			} else if i < k || k <= j {
				continue
			}
			tab[i] = v
			i = j
			break
		}
	}
}

// ---- token id index (writer only) ----

func tokTag(h uint64) uint32 { return uint32(h>>60) << 28 }

func (t *keyTable) tokHome(v uint32) uint64 {
	return maphash.String(t.tokSeed, t.tokenID(t.mainAt(v&tokRefMask-1)))
}

// findTok returns the token index slot of id and the ref of its record.
// The tag spares most probes the cache miss of comparing a stored id.
func (t *keyTable) findTok(id string) (slot uint64, ref uint32, ok bool) {
	mask := uint64(len(t.tok) - 1)
	h := maphash.String(t.tokSeed, id)
	tag := tokTag(h)
	for i := h & mask; ; i = (i + 1) & mask {
		v := t.tok[i]
		if v == 0 {
			return i, 0, false
		}
		if v&tokTagMask == tag {
			if r := v&tokRefMask - 1; t.tokenID(t.mainAt(r)) == id {
				return i, r, true
			}
		}
	}
}

// reserveTok grows the token index if one more key would exceed 3/4 load.
// It must run before the key's record is stored (growTok indexes every live
// record).
func (t *keyTable) reserveTok() {
	if (t.tokN+1)*4 > len(t.tok)*3 {
		t.growTok()
	}
}

// addTok indexes a new key; reserveTok must have run before its record was
// stored.
func (t *keyTable) addTok(id string, ref uint32) {
	mask := uint64(len(t.tok) - 1)
	h := maphash.String(t.tokSeed, id)
	i := h & mask
	for t.tok[i] != 0 {
		i = (i + 1) & mask
	}
	t.tok[i] = tokTag(h) | (ref + 1)
	t.tokN++
}

// growTok doubles the token index, rebuilt from the live key records in
// memory order rather than by chasing each old slot's record.
func (t *keyTable) growTok() {
	t.tok = make([]uint32, 2*len(t.tok))
	mask := uint64(len(t.tok) - 1)
	for si := range t.shards {
		es := t.shards[si].entries
		for n := range es {
			if es[n].tokLen == tokDead {
				continue
			}
			h := maphash.String(t.tokSeed, t.tokenID(&es[n]))
			i := h & mask
			for t.tok[i] != 0 {
				i = (i + 1) & mask
			}
			t.tok[i] = tokTag(h) | (uint32(si)<<refShift | uint32(n)) + 1
		}
	}
}

func (t *keyTable) delTokSlot(i uint64) {
	backShift(t.tok, i, t.tokHome)
	t.tokN--
}

// ---- bulk build ----

// finishBulk ends bulk mode: it indexes the token ids of the keys put
// since, in order (a repeated id keeps its last record; the earlier ones
// become tombstones), then builds every shard's index from its live
// records. Inserting into the indexes key by key, between parsing and
// interning, costs a cache miss per key and index that nothing overlaps;
// here the indexes fill in one tight loop each, in memory order (on every
// CPU for the shards), where the misses of consecutive keys overlap.
func (t *keyTable) finishBulk() {
	if !t.bulk {
		return
	}
	t.bulk = false
	if need := pow2((t.tokN + len(t.bulkTok) + 1) * 4 / 3); need > len(t.tok) {
		t.tok = make([]uint32, need) // empty: bulk mode starts with an empty table
	}
	mask := uint64(len(t.tok) - 1)
	for _, b := range t.bulkTok {
		tag := tokTag(b.h)
		i := b.h & mask
		for ; t.tok[i] != 0; i = (i + 1) & mask {
			v := t.tok[i]
			if v&tokTagMask != tag {
				continue
			}
			old := v&tokRefMask - 1
			if oe := t.mainAt(old); t.tokenID(oe) == t.tokenID(t.mainAt(b.ref)) {
				oe.tokLen = tokDead // put again later: the later record wins
				t.dead++
				t.keys--
				t.tokN--
				break
			}
		}
		t.tok[i] = tag | (b.ref + 1)
		t.tokN++
	}
	t.bulkTok = nil
	parallelShards(func(sh *shard) {
		n := 0
		for i := range sh.entries {
			if sh.entries[i].tokLen != tokDead {
				n++
			}
		}
		for i := range sh.prevs {
			if sh.prevs[i].tokLen != tokDead {
				n++
			}
		}
		if n*4 > len(sh.index)*3 {
			sh.index = make([]uint32, pow2(n*4/3+1))
		}
		clear(sh.index)
		sh.n = n
		t.reindex(sh)
	}, t)
}

// parallelShards runs fn on every shard of t, on every CPU.
func parallelShards(fn func(sh *shard), t *keyTable) {
	workers := min(runtime.GOMAXPROCS(0), numShards)
	var next atomic.Int32
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= numShards {
					return
				}
				fn(&t.shards[i])
			}
		})
	}
	wg.Wait()
}

// ---- maintenance ----

// trim drops most append slack from the record slices of a table that is
// not published yet (a finished snapshot).
//
// Records carved by presize from one allocation stay where they are: a
// copy would not free the allocation while other shards use it (and took
// a sixth of a restart copying 100 MB into fresh memory), and presize's
// slack is small. Unless the keys hint was far too high: then every shard
// is copied and the allocation released.
func (t *keyTable) trim() {
	live := 0
	for i := range t.shards {
		live += len(t.shards[i].entries)
	}
	all := t.carved > 0 && live*2 < t.carved
	if t.carved > 0 && !all {
		return
	}
	t.carved = 0
	for i := range t.shards {
		sh := &t.shards[i]
		if n := len(sh.entries); all || cap(sh.entries)-n > n/16+16 {
			e := make([]entry, n, n+n/32+8)
			copy(e, sh.entries)
			sh.entries = e
		}
	}
}

// compactMinDead is a variable so tests can force compaction.
var compactMinDead = 16384

// compactDue reports whether tombstones (deleted keys, regenerated keys'
// old records, expired previous hashes) are worth rebuilding the table for.
func (t *keyTable) compactDue() bool {
	return t.dead > compactMinDead && t.dead*4 > t.keys+t.prevN
}

// compacted returns a copy of t holding only live records, with fresh
// arena, interner and indexes; t itself is unchanged (readers may still use
// it). It shares t's dict.
func (t *keyTable) compacted() *keyTable {
	nt := newKeyTable(t.d)
	nt.ms = t.ms // keyed by token id, which compaction keeps
	nt.presize(t.keys, t.prevN)
	for _, v := range t.tok {
		if v == 0 {
			continue
		}
		src := t.mainAt(v&tokRefMask - 1)
		id := t.tokenID(src) // points into t: copied into nt below
		e := *src
		if e.tokLen == tokArena {
			nt.setToken(&e, id)
		}
		e.user = nt.ids.intern(nt.ar, t.ar.str(e.user))
		e.team = nt.ids.intern(nt.ar, t.ar.str(e.team))
		e.org = nt.ids.intern(nt.ar, t.ar.str(e.org))
		nt.reserveTok()
		ref := nt.insertMain(&e)
		nt.addTok(id, ref)
		nt.keys++
		if old := t.prevOf[id]; len(old) > 0 {
			refs := make([]uint32, 0, len(old))
			for _, r := range old {
				p := *t.prevAt(r)
				h := p.hash
				p.entry = e
				p.hash = h
				refs = append(refs, nt.insertPrev(&p))
			}
			nt.prevOf[strings.Clone(id)] = refs
		}
	}
	nt.trim()
	return nt
}

// presize sizes an empty table for about keys keys and prevs previous
// hashes, so that filling it never regrows an index.
//
// The shards' records and indexes are each carved from one allocation
// advised for huge pages (controlplane/pkg/hugepage): a million keys are
// ~110 MB of records, and their first touch in 4 KiB pages was a tenth of
// a fresh proxy's CPU (one shard's 1.7 MB is too small for a huge page of
// its own). A shard that outgrows its part reallocates it on its own, as
// before; the slices are capped, so appending never runs into the next
// shard's part.
func (t *keyTable) presize(keys, prevs int) {
	t.tok = hugepage.Make[uint32](pow2(keys*4/3+1), pow2(keys*4/3+1))
	if t.bulk {
		t.bulkTok = hugepage.Make[bulkKey](0, keys+keys/64)
	}
	per := (keys+prevs)/numShards + (keys+prevs)/numShards/8 + 16
	slots := pow2(per*4/3 + 1)
	perEntries := keys/numShards + keys/numShards/16 + 8
	index := hugepage.Make[uint32](slots*numShards, slots*numShards)
	entries := hugepage.Make[entry](0, perEntries*numShards)
	t.carved = perEntries * numShards
	for i := range t.shards {
		sh := &t.shards[i]
		sh.index = index[i*slots : (i+1)*slots : (i+1)*slots]
		sh.entries = entries[i*perEntries : i*perEntries : (i+1)*perEntries]
	}
}

func pow2(n int) int {
	p := 16
	for p < n {
		p *= 2
	}
	return p
}

// memBytes estimates the memory the table holds (for Stats).
func (t *keyTable) memBytes() int64 {
	var n int64
	for i := range t.shards {
		sh := &t.shards[i]
		n += int64(cap(sh.entries))*int64(unsafe.Sizeof(entry{})) +
			int64(cap(sh.prevs))*int64(unsafe.Sizeof(prevEntry{})) +
			int64(cap(sh.index))*4
	}
	n += int64(len(t.tok))*4 + int64(len(t.ids.slots))*8 + t.ar.size()
	return n
}

// modelSpends is the per-model spend of the keys that have a
// model_max_budget (few, in practice): a map under a lock beside the
// pointer-free table, so keys without one cost nothing. Only the budgeted
// models are kept (the control plane sends only those).
type modelSpends struct {
	mu sync.RWMutex
	m  map[string]map[string]int64 // token id -> model -> nano-USD
}

func newModelSpends() *modelSpends { return &modelSpends{m: make(map[string]map[string]int64)} }

func (s *modelSpends) set(id string, k *keyView) {
	var spend map[string]int64
	if len(k.budgets) > 0 {
		// Both sorted by model: a merge.
		j := 0
		for _, ms := range k.modelSpend {
			for j < len(k.budgets) && k.budgets[j].model < ms.model {
				j++
			}
			if j < len(k.budgets) && k.budgets[j].model == ms.model && ms.v != 0 {
				if spend == nil {
					spend = make(map[string]int64, len(k.budgets))
				}
				spend[strings.Clone(ms.model)] = ms.v
			}
		}
	}
	if spend == nil {
		if len(s.m) == 0 {
			return // the common case at a snapshot: no lock
		}
		s.mu.Lock()
		delete(s.m, id)
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	s.m[strings.Clone(id)] = spend
	s.mu.Unlock()
}

func (s *modelSpends) del(id string) {
	s.mu.Lock()
	delete(s.m, id)
	s.mu.Unlock()
}

func (s *modelSpends) get(id, model string) int64 {
	s.mu.RLock()
	v := s.m[id][model]
	s.mu.RUnlock()
	return v
}

// newBulkKeyTable is newKeyTable in bulk mode (a snapshot's Builder).
func newBulkKeyTable(d *dict) *keyTable {
	t := newKeyTable(d)
	t.bulk = true
	return t
}
