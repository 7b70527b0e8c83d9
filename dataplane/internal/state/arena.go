package state

import (
	"encoding/binary"
	"hash/maphash"
	"unsafe"
)

// Strings of the key table (user, team and org ids; token ids longer than
// fit in a record) live in an
// arena of fixed-size byte chunks and are referenced by a uint32 strRef, so
// a million keys hold no Go pointers. A string is stored once as
// uvarint(len) || bytes and is never modified afterwards: readers turn it
// into a Go string with unsafe.String and may keep that string forever (it
// keeps its chunk alive, which is what we want).
//
// Chunks are never reallocated and the chunk table is a fixed array, so the
// writer can append while readers read published strings: they touch
// disjoint memory, and a string is published (under a shard lock or an atomic
// store) only after it was written.
const (
	arenaChunkBits = 20
	arenaChunkSize = 1 << arenaChunkBits
	arenaMaxChunks = 1 << (32 - arenaChunkBits) // 4 GiB addressable
	// maxStringLen bounds every id stored in the arena (Validate enforces
	// it); the length prefix is then at most two bytes.
	maxStringLen = 1024
)

// strRef addresses a string in an arena: chunk<<arenaChunkBits | offset.
// 0 is the empty string.
type strRef uint32

type arena struct {
	chunks [arenaMaxChunks][]byte
	cur    int   // chunk being filled
	off    int   // next free byte in chunks[cur]
	used   int64 // bytes written (live and garbage)
}

func newArena() *arena {
	a := &arena{}
	a.chunks[0] = make([]byte, arenaChunkSize)
	a.off = 1 // chunks[0][0] == 0 is the empty string at ref 0
	a.used = 1
	return a
}

// add appends s and returns its reference. len(s) must be <= maxStringLen.
func (a *arena) add(s string) strRef {
	if s == "" {
		return 0
	}
	need := uvarintLen(len(s)) + len(s)
	if a.off+need > arenaChunkSize {
		a.cur++
		if a.cur >= arenaMaxChunks {
			panic("state: string arena exhausted (4 GiB)")
		}
		a.chunks[a.cur] = make([]byte, arenaChunkSize)
		a.off = 0
	}
	c := a.chunks[a.cur]
	n := binary.PutUvarint(c[a.off:], uint64(len(s)))
	copy(c[a.off+n:], s)
	ref := strRef(a.cur<<arenaChunkBits | a.off)
	a.off += need
	a.used += int64(need)
	return ref
}

// str returns the string at ref without copying or allocating.
func (a *arena) str(ref strRef) string {
	if ref == 0 {
		return ""
	}
	c := a.chunks[ref>>arenaChunkBits]
	off := int(ref & (arenaChunkSize - 1))
	n, w := int(c[off]), 1
	if n >= 0x80 {
		n, w = n&0x7f|int(c[off+1])<<7, 2
	}
	if n == 0 {
		return ""
	}
	return unsafe.String(&c[off+w], n)
}

// size is the memory held by the arena's chunks.
func (a *arena) size() int64 { return int64(a.cur+1) * arenaChunkSize }

func uvarintLen(n int) int {
	if n < 0x80 {
		return 1
	}
	return 2
}

// interner deduplicates strings in an arena (user, team, org ids shared by
// many keys). It is an open-addressing table with linear probing; a slot
// holds the high half of the string's hash above the strRef, so probes
// rarely touch the arena and growing needs no rehash (the home position is
// taken from that half). Only the writer uses it.
type interner struct {
	seed  maphash.Seed
	slots []uint64 // tag<<32 | strRef; 0 empty
	n     int
}

func newInterner() *interner {
	return &interner{seed: maphash.MakeSeed(), slots: make([]uint64, 64)}
}

func (in *interner) intern(a *arena, s string) strRef {
	if s == "" {
		return 0
	}
	if (in.n+1)*4 > len(in.slots)*3 {
		in.grow()
	}
	h := maphash.String(in.seed, s)
	tag := h &^ (1<<32 - 1)
	mask := uint64(len(in.slots) - 1)
	for i := (h >> 32) & mask; ; i = (i + 1) & mask {
		v := in.slots[i]
		if v == 0 {
			r := a.add(s)
			in.slots[i] = tag | uint64(r)
			in.n++
			return r
		}
		if v&^(1<<32-1) == tag && a.str(strRef(v)) == s {
			return strRef(v)
		}
	}
}

func (in *interner) grow() {
	old := in.slots
	in.slots = make([]uint64, 2*len(old))
	mask := uint64(len(in.slots) - 1)
	for _, v := range old {
		if v == 0 {
			continue
		}
		i := (v >> 32) & mask // the home position comes from the tag
		for in.slots[i] != 0 {
			i = (i + 1) & mask
		}
		in.slots[i] = v
	}
}
