package syncserver

import (
	"fmt"
	"testing"
)

func revs(ds []encDelta) string {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.rev
	}
	return fmt.Sprint(out)
}

func deltasFrom(from, to int64, size int) []encDelta {
	var ds []encDelta
	for r := from; r <= to; r++ {
		ds = append(ds, encDelta{rev: r, raw: make([]byte, size)})
	}
	return ds
}

func TestFeedRing(t *testing.T) {
	f := newFeed(4, 1<<20)
	f.reset(10)
	_, hi, wake, ok := f.after(10, 10, nil)
	if !ok || hi != 10 {
		t.Fatal("empty ring positioned at 10 must serve a stream at 10")
	}
	f.push(deltasFrom(11, 13, 1))
	select {
	case <-wake:
	default:
		t.Fatal("push did not wake waiters")
	}
	if got, _, _, ok := f.after(10, 10, nil); !ok || revs(got) != "[11 12 13]" {
		t.Fatalf("after 10: %s %v", revs(got), ok)
	}
	if got, _, _, _ := f.after(11, 1, nil); revs(got) != "[12]" {
		t.Fatalf("limit: %s", revs(got))
	}
	if got, _, _, ok := f.after(13, 10, nil); !ok || len(got) != 0 {
		t.Fatal("a stream at hi gets nothing")
	}
	if got, _, _, ok := f.after(20, 10, nil); !ok || len(got) != 0 {
		t.Fatal("a stream past hi (after a newer snapshot) gets nothing yet")
	}
	f.push(deltasFrom(14, 16, 1)) // capacity 4: 11, 12 evicted
	if lo, hi := f.bounds(); lo != 12 || hi != 16 {
		t.Fatalf("bounds %d..%d", lo, hi)
	}
	if _, _, _, ok := f.after(11, 10, nil); ok {
		t.Fatal("a stream behind the ring must be told to read the store")
	}
	if got, _, _, ok := f.after(12, 10, nil); !ok || revs(got) != "[13 14 15 16]" {
		t.Fatalf("after 12: %s %v", revs(got), ok)
	}
	f.push(deltasFrom(15, 17, 1)) // re-read overlap is ignored
	if got, _, _, _ := f.after(15, 10, nil); revs(got) != "[16 17]" {
		t.Fatalf("overlap: %s", revs(got))
	}
	f.push(deltasFrom(30, 30, 1)) // the store skipped (compaction): restart
	if lo, hi := f.bounds(); lo != 29 || hi != 30 {
		t.Fatalf("after a gap: %d..%d", lo, hi)
	}
	if _, _, _, ok := f.after(17, 10, nil); ok {
		t.Fatal("a stream before the gap must go to the store")
	}
}

func TestFeedByteBound(t *testing.T) {
	f := newFeed(100, 1000)
	f.reset(0)
	f.push(deltasFrom(1, 10, 300))
	lo, hi := f.bounds()
	if hi != 10 || lo != 7 { // 3 × 300 ≤ 1000
		t.Fatalf("bounds %d..%d", lo, hi)
	}
	f.push([]encDelta{{rev: 11, raw: make([]byte, 5000)}}) // one oversized delta is kept alone
	if lo, hi := f.bounds(); lo != 10 || hi != 11 {
		t.Fatalf("bounds %d..%d", lo, hi)
	}
}
