package state

import (
	"hash/maphash"
	"maps"
)

const cowShards = 64

// cowMap is an immutable map split into shards; a change copies only the
// shards it touches, so a delta that changes one of 100k users copies ~1/64
// of them, not all.
type cowMap[T any] struct {
	seed   maphash.Seed
	shards *[cowShards]map[string]*T
	n      int
}

func newCowMap[T any]() cowMap[T] {
	return cowMap[T]{seed: maphash.MakeSeed(), shards: new([cowShards]map[string]*T)}
}

func (m cowMap[T]) shardOf(id string) int {
	return int(maphash.String(m.seed, id) & (cowShards - 1))
}

func (m cowMap[T]) get(id string) (*T, bool) {
	v, ok := m.shards[m.shardOf(id)][id]
	return v, ok
}

// set mutates m in place; only for maps that are not published yet.
func (m *cowMap[T]) set(id string, v *T) {
	i := m.shardOf(id)
	sh := m.shards[i]
	if sh == nil {
		sh = make(map[string]*T)
		m.shards[i] = sh
	}
	if _, ok := sh[id]; !ok {
		m.n++
	}
	sh[id] = v
}

// del mutates m in place; only for maps that are not published yet.
func (m *cowMap[T]) del(id string) {
	sh := m.shards[m.shardOf(id)]
	if _, ok := sh[id]; ok {
		delete(sh, id)
		m.n--
	}
}

// with returns m with changes applied (a nil value deletes); m is unchanged.
func (m cowMap[T]) with(changes map[string]*T) cowMap[T] {
	if len(changes) == 0 {
		return m
	}
	out := cowMap[T]{seed: m.seed, shards: new([cowShards]map[string]*T), n: m.n}
	*out.shards = *m.shards
	var copied [cowShards]bool
	for id, v := range changes {
		i := out.shardOf(id)
		if !copied[i] {
			copied[i] = true
			if out.shards[i] = maps.Clone(m.shards[i]); out.shards[i] == nil {
				out.shards[i] = make(map[string]*T)
			}
		}
		out.del(id)
		if v != nil {
			out.set(id, v)
		}
	}
	return out
}
