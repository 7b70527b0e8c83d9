package syncserver

import (
	"sync"
)

// feed is the shared ring of recently committed change sets, encoded once
// by the server's single reader and read by every stream. It holds a
// contiguous run of revisions lo+1..hi; streams further behind than lo read
// the store themselves.
type feed struct {
	mu       sync.Mutex
	buf      []encDelta // circular, len(buf) = capacity
	start    int        // index of revision lo+1
	n        int
	bytes    int
	maxBytes int
	lo, hi   int64
	// wake is closed (and replaced) whenever hi advances: a broadcast that
	// never blocks the reader, however slow a stream is.
	wake chan struct{}
}

func newFeed(maxDeltas, maxBytes int) *feed {
	return &feed{buf: make([]encDelta, maxDeltas), maxBytes: maxBytes, wake: make(chan struct{})}
}

// reset empties the ring and positions it after revision rev.
func (f *feed) reset(rev int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resetLocked(rev)
}

func (f *feed) resetLocked(rev int64) {
	clear(f.buf)
	f.start, f.n, f.bytes = 0, 0, 0
	f.lo, f.hi = rev, rev
	f.broadcastLocked()
}

func (f *feed) broadcastLocked() {
	close(f.wake)
	f.wake = make(chan struct{})
}

// push appends change sets read from the store, in order. A change set
// that does not follow hi (the store compacted revisions the reader had not
// read yet) restarts the ring at it; streams that needed the missing
// revisions find the gap in the store and are sent back for a snapshot.
func (f *feed) push(ds []encDelta) {
	if len(ds) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range ds {
		if d.rev <= f.hi {
			continue // already held (a re-read after an error)
		}
		if d.rev != f.hi+1 {
			clear(f.buf)
			f.start, f.n, f.bytes = 0, 0, 0
			f.lo, f.hi = d.rev-1, d.rev-1
		}
		if f.n == len(f.buf) {
			f.evictLocked()
		}
		f.buf[(f.start+f.n)%len(f.buf)] = d
		f.n++
		f.bytes += len(d.raw)
		f.hi = d.rev
		for f.bytes > f.maxBytes && f.n > 1 {
			f.evictLocked()
		}
	}
	f.broadcastLocked()
}

func (f *feed) evictLocked() {
	d := f.buf[f.start]
	f.buf[f.start] = encDelta{}
	f.start = (f.start + 1) % len(f.buf)
	f.n--
	f.bytes -= len(d.raw)
	f.lo = d.rev
}

// after appends to dst up to limit deltas with revision > rev, in order. ok is
// false when rev is older than the ring (rev < lo): the caller must read the
// store. wake is closed when more arrive after the returned ones.
func (f *feed) after(rev int64, limit int, dst []encDelta) (out []encDelta, hi int64, wake <-chan struct{}, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rev < f.lo {
		return dst, f.hi, f.wake, false
	}
	for r := rev + 1; r <= f.hi && len(dst) < limit; r++ {
		dst = append(dst, f.buf[(f.start+int(r-f.lo-1))%len(f.buf)])
	}
	return dst, f.hi, f.wake, true
}

// head returns the newest revision the reader has seen and the channel
// closed when it advances.
func (f *feed) head() (int64, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hi, f.wake
}

// bounds returns the revisions the ring holds: lo+1..hi.
func (f *feed) bounds() (lo, hi int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lo, f.hi
}
