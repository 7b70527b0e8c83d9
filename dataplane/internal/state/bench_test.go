package state

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

const bigN = 1_000_000

var big struct {
	once   sync.Once
	s      *State
	hashes [][32]byte
}

// loadBig builds a state with 1M keys (and 100k users, 1000 teams) once per
// benchmark binary.
func loadBig(b *testing.B) *State {
	big.once.Do(func() {
		s := New()
		bl := s.NewSnapshot(1)
		bl.Presize(bigN) // as a proxy does from the snapshot's keys_hint
		if err := statetest.Snapshot(bigN, bl.Add); err != nil {
			b.Fatal(err)
		}
		s.Install(bl)
		big.s = s
		big.hashes = make([][32]byte, bigN)
		for i := range big.hashes {
			big.hashes[i] = statetest.Hash(i)
		}
	})
	return big.s
}

// BenchmarkLookupKey: 1M keys loaded, each lookup a different key (the
// hashes are read in order, their records sit at random places: the table's
// cache misses are measured, not the benchmark's).
func BenchmarkLookupKey(b *testing.B) {
	s := loadBig(b)
	b.ReportAllocs()
	b.ResetTimer()
	j := 0
	for i := 0; i < b.N; i++ {
		if j++; j == bigN {
			j = 0
		}
		if _, ok := s.LookupKey(&big.hashes[j], 0); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkLookupKeyHot: 1M keys loaded, traffic from 1000 active keys.
func BenchmarkLookupKeyHot(b *testing.B) {
	s := loadBig(b)
	b.ReportAllocs()
	b.ResetTimer()
	j := 0
	for i := 0; i < b.N; i++ {
		if j += 997; j >= bigN {
			j -= bigN
		}
		if _, ok := s.LookupKey(&big.hashes[j%1000*997], 0); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkLookupKeyMiss(b *testing.B) {
	s := loadBig(b)
	h := statetest.Hash(bigN + 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h[0] = byte(i)
		h[1] = byte(i >> 8)
		if _, ok := s.LookupKey(&h, 0); ok {
			b.Fatal("hit")
		}
	}
}

func BenchmarkLookupKeyParallel(b *testing.B) {
	s := loadBig(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		j := int(time.Now().UnixNano() % bigN)
		for pb.Next() {
			if j++; j == bigN {
				j = 0
			}
			if _, ok := s.LookupKey(&big.hashes[j], 0); !ok {
				b.Fatal("miss")
			}
		}
	})
}

// BenchmarkMemoryLatency is the floor under BenchmarkLookupKey: one
// dependent random read in an array the size of the key index (8 MiB) and
// of the key records (100 MiB). A lookup of a random key among 1M does one
// of each.
func BenchmarkMemoryLatency(b *testing.B) {
	for _, mb := range []int{8, 100} {
		b.Run(fmt.Sprintf("%dMiB", mb), func(b *testing.B) {
			next := make([]uint32, mb<<20/4)
			perm := rand.Perm(len(next))
			for i := range perm {
				next[perm[i]] = uint32(perm[(i+1)%len(perm)])
			}
			b.ResetTimer()
			j := uint32(0)
			for i := 0; i < b.N; i++ {
				j = next[j]
			}
			runtime.KeepAlive(j)
		})
	}
}

// BenchmarkApplyDeltaSmall: deltas of three key changes against 1M keys:
// two updates plus a delete (even iterations) or the re-creation of the
// deleted key (odd ones).
func BenchmarkApplyDeltaSmall(b *testing.B) {
	s := loadBig(b)
	keys := make([]*syncv1.Entity, 3000)
	tombs := make([]*syncv1.Entity, 3000)
	for i := range keys {
		keys[i] = statetest.Key(i)
		tombs[i] = statetest.Tombstone(KindKey, statetest.TokenID(i))
	}
	d := &syncv1.Delta{Changes: make([]*syncv1.Entity, 3)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i / 2 % 1000
		d.Changes[0], d.Changes[1] = keys[k], keys[k+1000]
		if i%2 == 0 {
			d.Changes[2] = tombs[k+2000]
		} else {
			d.Changes[2] = keys[k+2000]
		}
		d.PrevRevision = s.Revision()
		d.Revision = d.PrevRevision + 1
		if err := s.ApplyDelta(d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuild1M: Builder.Add of a whole 1M-key snapshot, then Install.
func BenchmarkBuild1M(b *testing.B) {
	for i := 0; i < b.N; i++ {
		s := New()
		bl := s.NewSnapshot(1)
		bl.Presize(bigN) // as a proxy does from the snapshot's keys_hint
		if err := statetest.Snapshot(bigN, bl.Add); err != nil {
			b.Fatal(err)
		}
		s.Install(bl)
	}
}

// BenchmarkMemory1M reports the heap held per key with 1M keys (keys only)
// and what a full GC costs with them loaded, against a Go map of pointers to
// key structs holding the same data.
func BenchmarkMemory1M(b *testing.B) {
	for i := 0; i < b.N; i++ {
		gcWall := func() time.Duration {
			runtime.GC()
			t0 := time.Now()
			runtime.GC()
			return time.Since(t0)
		}
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		base := gcWall()

		s := New()
		bl := s.NewSnapshot(1)
		bl.Presize(bigN) // as a proxy does from the snapshot's keys_hint
		for k := range bigN {
			if err := bl.Add(statetest.Key(k)); err != nil {
				b.Fatal(err)
			}
		}
		s.Install(bl)
		runtime.GC()
		runtime.ReadMemStats(&m1)
		withTable := gcWall()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		pause := ms.PauseNs[(ms.NumGC+255)%256]
		st := s.Stats()
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/bigN, "heap-B/key")
		b.ReportMetric(float64(st.KeyTableBytes)/bigN, "table-B/key")
		b.ReportMetric(float64(withTable.Microseconds())/1000, "gc-ms")
		b.ReportMetric(float64(base.Microseconds())/1000, "gc-empty-ms")
		b.ReportMetric(float64(pause)/1000, "last-pause-µs")
		runtime.KeepAlive(s)
		s = nil

		// Baseline: what DESIGN.md warns about.
		m := make(map[[32]byte]*KeyInfo, bigN)
		for k := range bigN {
			e := statetest.Key(k).GetKey()
			m[[32]byte(e.KeyHash)] = &KeyInfo{
				TokenID: e.TokenId, UserID: e.UserId, TeamID: e.TeamId, OrganizationID: e.OrganizationId,
				Limits: Limits{BudgetDuration: e.Limits.BudgetDuration}, Policy: &Policy{Models: e.Models},
			}
		}
		var m2 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m2)
		b.ReportMetric(float64(gcWall().Microseconds())/1000, "gc-ptrmap-ms")
		b.ReportMetric(float64(m2.HeapAlloc-m0.HeapAlloc)/bigN, "ptrmap-B/key")
		runtime.KeepAlive(m)
	}
}

func ExampleState_LookupKey() {
	s := New()
	b := s.NewSnapshot(1)
	_ = b.Add(statetest.Key(42))
	s.Install(b)
	h := statetest.Hash(42)
	ki, ok := s.LookupKey(&h, time.Now().Unix())
	fmt.Println(ok, ki.TokenID == statetest.TokenID(42), ki.TeamID)
	// Output: true true team-42
}
