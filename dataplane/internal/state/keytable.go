package state

import (
	"hash/maphash"
	"sync"
	"unsafe"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// The key table: 64 shards, each a slice of fixed-size pointer-free records
// plus an open-addressing index of uint32 slots, guarded by its own
// RWMutex. A key's record sits in the shard chosen by (a seeded hash of) its
// current hash; each previous hash still in its grace period gets a full copy
// of the record (with the deadline) in the shard of that previous hash, so a
// lookup touches exactly one shard and one lock.
//
// Index slot layout (0 = empty):
//
//	bit 31     record is a previous-hash copy (shard.prevs) rather than a key (shard.entries)
//	bits 24-30 7-bit tag from the hash, so most non-matching probes do not touch a record
//	bits 0-23  record index + 1
//
// A global reference to a record is shard<<24 | index.
const (
	shardBits   = 6
	numShards   = 1 << shardBits
	slotIdxMask = 1<<24 - 1
	slotTagMask = 0x7f << 24
	slotPrevBit = 1 << 31
	// maxPerShard bounds record indexes so index+1 fits in 24 bits.
	maxPerShard = slotIdxMask - 1
	refIdxMask  = 1<<24 - 1
	noRef       = ^uint32(0)

	flagBlocked        = 1
	flagServiceAccount = 2
	polShift           = 2
)

// entry is one key: 80 bytes, no pointers.
type entry struct {
	hash    [32]byte
	spend   int64
	expires int64
	resetAt int64
	token   strRef
	user    strRef
	team    strRef
	org     strRef
	pol     uint32 // policy index<<polShift | flags
	lim     uint32 // limits profile index
}

// prevEntry is a copy of a key's entry under one of its previous hashes.
type prevEntry struct {
	entry
	validUntil int64 // the hash matches while nowUnix < validUntil
}

var _ [80 - unsafe.Sizeof(entry{})]struct{} // entry stays 80 bytes

type shard struct {
	mu      sync.RWMutex
	entries []entry
	prevs   []prevEntry
	index   []uint32
	n       int      // occupied index slots
	freeE   []uint32 // reusable entries indexes (writer only)
	freeP   []uint32
	_       [40]byte // keep neighbouring shards' locks off one cache line
}

type keyTable struct {
	seed   maphash.Seed
	shards [numShards]shard
	ar     *arena
	ids    *interner
	d      *dict

	// Writer-only state: readers never touch it.
	tokSeed maphash.Seed
	tok     []uint32 // token id index: global ref of the key's entry + 1
	tokN    int
	prevOf  map[string][]uint32 // token id (arena string) -> refs of its previous-hash copies
	keys    int
	prevN   int
	garbage int64 // arena bytes of deleted keys' token ids
}

func newKeyTable(d *dict) *keyTable {
	t := &keyTable{
		seed:    maphash.MakeSeed(),
		tokSeed: maphash.MakeSeed(),
		ar:      newArena(),
		ids:     newInterner(),
		d:       d,
		tok:     make([]uint32, 1024),
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
		TokenID:        t.ar.str(e.token),
		UserID:         t.ar.str(e.user),
		TeamID:         t.ar.str(e.team),
		OrganizationID: t.ar.str(e.org),
		ServiceAccount: e.pol&flagServiceAccount != 0,
		Blocked:        e.pol&flagBlocked != 0,
		ExpiresUnix:    e.expires,
		Limits:         t.d.limitsAt(e.lim, e.resetAt),
		Spend:          e.spend,
		Policy:         t.d.policy(e.pol >> polShift),
	}
}

// ---- writer side ----

func (t *keyTable) mainAt(ref uint32) *entry {
	return &t.shards[ref>>24].entries[ref&refIdxMask]
}

func (t *keyTable) prevAt(ref uint32) *prevEntry {
	return &t.shards[ref>>24].prevs[ref&refIdxMask]
}

// put inserts or replaces the key with token id id. k must be valid.
func (t *keyTable) put(id string, k *syncv1.Key) {
	var ne entry
	copy(ne.hash[:], k.KeyHash)
	slot, oldRef, found := t.findTok(id)
	var oldHash [32]byte
	if found {
		old := t.mainAt(oldRef)
		oldHash, ne.token = old.hash, old.token
	} else {
		ne.token = t.ar.add(id)
	}
	ne.user = t.ids.intern(t.ar, k.UserId)
	ne.team = t.ids.intern(t.ar, k.TeamId)
	ne.org = t.ids.intern(t.ar, k.OrganizationId)
	ne.pol = t.d.internPolicy(k) << polShift
	if k.Blocked {
		ne.pol |= flagBlocked
	}
	if k.ServiceAccount {
		ne.pol |= flagServiceAccount
	}
	ne.lim = t.d.internLimits(k.Limits)
	ne.resetAt = k.Limits.GetBudgetResetAtUnix()
	ne.expires = k.ExpiresUnix
	ne.spend = k.Spend

	ref := oldRef
	if found && oldHash == ne.hash {
		sh := &t.shards[oldRef>>24]
		sh.mu.Lock()
		sh.entries[oldRef&refIdxMask] = ne
		sh.mu.Unlock()
	} else {
		// Insert before removing the old record: a reader sees the old or
		// the new hash, never a moment with neither.
		ref = t.insertMain(&ne)
		if found {
			t.tok[slot] = ref + 1
		} else {
			t.addTok(id, ref)
			t.keys++
		}
	}
	t.syncPrevs(t.ar.str(ne.token), &ne, k.PreviousHashes)
	if found && ref != oldRef {
		t.removeMain(oldRef)
	}
}

// del removes the key with token id id, if present.
func (t *keyTable) del(id string) {
	slot, ref, found := t.findTok(id)
	if !found {
		return
	}
	key := t.ar.str(t.mainAt(ref).token)
	for _, r := range t.prevOf[key] {
		t.removePrev(r)
	}
	delete(t.prevOf, key)
	t.delTokSlot(slot)
	t.removeMain(ref)
	t.keys--
	t.garbage += int64(uvarintLen(len(id)) + len(id))
}

// syncPrevs makes key's previous-hash copies match prevs, each a copy of
// ne. Copies whose hash stays are overwritten in place (atomically for
// readers); new ones are inserted before stale ones are removed.
func (t *keyTable) syncPrevs(key string, ne *entry, prevs []*syncv1.PreviousHash) {
	old := t.prevOf[key]
	if len(prevs) == 0 && len(old) == 0 {
		return
	}
	var keep []uint32
next:
	for _, p := range prevs {
		var pe prevEntry
		pe.entry = *ne
		copy(pe.hash[:], p.KeyHash)
		pe.validUntil = p.ValidUntilUnix
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
				sh := &t.shards[r>>24]
				sh.mu.Lock()
				sh.prevs[r&refIdxMask] = pe
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
		t.prevOf[key] = keep
	} else {
		delete(t.prevOf, key)
	}
}

func (t *keyTable) insertMain(e *entry) uint32 {
	h := t.hashOf(&e.hash)
	si := h >> (64 - shardBits)
	sh := &t.shards[si]
	sh.mu.Lock()
	var i uint32
	if n := len(sh.freeE); n > 0 {
		i = sh.freeE[n-1]
		sh.freeE = sh.freeE[:n-1]
		sh.entries[i] = *e
	} else {
		if len(sh.entries) >= maxPerShard {
			sh.mu.Unlock()
			panic("state: key table shard full")
		}
		i = uint32(len(sh.entries))
		sh.entries = append(sh.entries, *e)
	}
	t.insertSlot(sh, h, (i+1)|tagOf(h))
	sh.mu.Unlock()
	return uint32(si)<<24 | i
}

func (t *keyTable) insertPrev(p *prevEntry) uint32 {
	h := t.hashOf(&p.hash)
	si := h >> (64 - shardBits)
	sh := &t.shards[si]
	sh.mu.Lock()
	var i uint32
	if n := len(sh.freeP); n > 0 {
		i = sh.freeP[n-1]
		sh.freeP = sh.freeP[:n-1]
		sh.prevs[i] = *p
	} else {
		if len(sh.prevs) >= maxPerShard {
			sh.mu.Unlock()
			panic("state: key table shard full")
		}
		i = uint32(len(sh.prevs))
		sh.prevs = append(sh.prevs, *p)
	}
	t.insertSlot(sh, h, (i+1)|tagOf(h)|slotPrevBit)
	sh.mu.Unlock()
	t.prevN++
	return uint32(si)<<24 | i
}

func (t *keyTable) removeMain(ref uint32) {
	sh := &t.shards[ref>>24]
	i := ref & refIdxMask
	sh.mu.Lock()
	h := t.hashOf(&sh.entries[i].hash)
	t.removeSlot(sh, h, (i+1)|tagOf(h))
	sh.entries[i] = entry{}
	sh.freeE = append(sh.freeE, i)
	sh.mu.Unlock()
}

func (t *keyTable) removePrev(ref uint32) {
	sh := &t.shards[ref>>24]
	i := ref & refIdxMask
	sh.mu.Lock()
	h := t.hashOf(&sh.prevs[i].hash)
	t.removeSlot(sh, h, (i+1)|tagOf(h)|slotPrevBit)
	sh.prevs[i] = prevEntry{}
	sh.freeP = append(sh.freeP, i)
	sh.mu.Unlock()
	t.prevN--
}

// slotHash recomputes the hash of the record an index slot points to.
func (t *keyTable) slotHash(sh *shard, v uint32) uint64 {
	n := v&slotIdxMask - 1
	if v&slotPrevBit != 0 {
		return t.hashOf(&sh.prevs[n].hash)
	}
	return t.hashOf(&sh.entries[n].hash)
}

// insertSlot adds v at its probe position; the caller holds sh.mu.
func (t *keyTable) insertSlot(sh *shard, h uint64, v uint32) {
	if (sh.n+1)*4 > len(sh.index)*3 {
		t.growIndex(sh)
	}
	mask := uint64(len(sh.index) - 1)
	i := h & mask
	for sh.index[i] != 0 {
		i = (i + 1) & mask
	}
	sh.index[i] = v
	sh.n++
}

func (t *keyTable) growIndex(sh *shard) {
	old := sh.index
	sh.index = make([]uint32, 2*len(old))
	mask := uint64(len(sh.index) - 1)
	for _, v := range old {
		if v == 0 {
			continue
		}
		i := t.slotHash(sh, v) & mask
		for sh.index[i] != 0 {
			i = (i + 1) & mask
		}
		sh.index[i] = v
	}
}

// removeSlot deletes v with backward-shift deletion (no tombstones, so
// probe sequences never lengthen with churn); the caller holds sh.mu.
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

func (t *keyTable) tokHome(v uint32) uint64 {
	return maphash.String(t.tokSeed, t.ar.str(t.mainAt(v-1).token))
}

func (t *keyTable) findTok(id string) (slot uint64, ref uint32, ok bool) {
	mask := uint64(len(t.tok) - 1)
	for i := maphash.String(t.tokSeed, id) & mask; ; i = (i + 1) & mask {
		v := t.tok[i]
		if v == 0 {
			return i, 0, false
		}
		if t.ar.str(t.mainAt(v-1).token) == id {
			return i, v - 1, true
		}
	}
}

func (t *keyTable) addTok(id string, ref uint32) {
	if (t.tokN+1)*4 > len(t.tok)*3 {
		old := t.tok
		t.tok = make([]uint32, 2*len(old))
		mask := uint64(len(t.tok) - 1)
		for _, v := range old {
			if v == 0 {
				continue
			}
			i := t.tokHome(v) & mask
			for t.tok[i] != 0 {
				i = (i + 1) & mask
			}
			t.tok[i] = v
		}
	}
	mask := uint64(len(t.tok) - 1)
	i := maphash.String(t.tokSeed, id) & mask
	for t.tok[i] != 0 {
		i = (i + 1) & mask
	}
	t.tok[i] = ref + 1
	t.tokN++
}

func (t *keyTable) delTokSlot(i uint64) {
	backShift(t.tok, i, t.tokHome)
	t.tokN--
}

// ---- maintenance ----

// trim drops most append slack from the record slices of a table that is
// not published yet (a finished snapshot).
func (t *keyTable) trim() {
	for i := range t.shards {
		sh := &t.shards[i]
		if n := len(sh.entries); cap(sh.entries)-n > n/16+16 {
			e := make([]entry, n, n+n/32+8)
			copy(e, sh.entries)
			sh.entries = e
		}
	}
}

// compactDue reports whether deleted keys' strings waste enough of the
// arena to rebuild the table.
func (t *keyTable) compactDue() bool {
	return t.garbage > compactMinGarbage && t.garbage*2 > t.ar.used
}

// compactMinGarbage is a variable so tests can force compaction.
var compactMinGarbage int64 = 32 << 20

// compacted returns a copy of t with fresh arena, interner and indexes,
// holding only live keys; t itself is unchanged (readers may still use it).
// It shares t's dict.
func (t *keyTable) compacted() *keyTable {
	nt := newKeyTable(t.d)
	for _, v := range t.tok {
		if v == 0 {
			continue
		}
		e := *t.mainAt(v - 1)
		id := t.ar.str(e.token)
		e.token = nt.ar.add(id)
		e.user = nt.ids.intern(nt.ar, t.ar.str(e.user))
		e.team = nt.ids.intern(nt.ar, t.ar.str(e.team))
		e.org = nt.ids.intern(nt.ar, t.ar.str(e.org))
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
			nt.prevOf[nt.ar.str(e.token)] = refs
		}
	}
	nt.trim()
	return nt
}

// memBytes estimates the memory the table holds (for Stats).
func (t *keyTable) memBytes() int64 {
	var n int64
	for i := range t.shards {
		sh := &t.shards[i]
		n += int64(cap(sh.entries))*int64(unsafe.Sizeof(entry{})) +
			int64(cap(sh.prevs))*int64(unsafe.Sizeof(prevEntry{})) +
			int64(cap(sh.index)+cap(sh.freeE)+cap(sh.freeP))*4
	}
	n += int64(len(t.tok))*4 + int64(len(t.ids.slots))*4 + t.ar.size()
	return n
}
