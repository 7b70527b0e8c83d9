// Package hugepage allocates large buffers that the kernel may back with
// transparent huge pages (2 MiB) instead of 4 KiB pages: the snapshot's
// chunks on the control plane, the key table and the received chunks on a
// proxy. Both planes import it (it is leaf-level).
//
// Why: the first touch of a fresh 4 KiB page is a page fault, and on the
// virtual machines we run on (paravirtualized page tables) a fault costs
// about 10 µs: 100 MiB of fresh memory took 250 ms to touch, the same with
// huge pages 12 ms. A million-key snapshot allocates several hundred MiB of
// such memory on both planes, and its faults were a third of a fresh
// proxy's CPU. The Go runtime no longer asks for huge pages itself (since
// Go 1.21.1), so with the kernel's default THP mode "madvise" its heap gets
// 4 KiB pages only.
//
// How: the memory is an ordinary Go allocation (the garbage collector owns
// it as usual); its 2 MiB-aligned interior is madvise(MADV_HUGEPAGE)d
// before anything touches it, which only marks the range for the kernel.
// Nothing changes where THP is "never" or the advice fails (the error is
// ignored: it is advice), nor on other systems. Memory the runtime reused
// rather than took fresh from the kernel is mostly resident already, so
// the advice costs little there either.
package hugepage

import "unsafe"

// Size is the huge page size the advice aims at (x86-64, arm64 with 4 KiB
// base pages).
const Size = 2 << 20

// Make returns make([]T, n, c), advised for huge pages when it spans at least
// one. T should hold no pointers (the memory is meant for large flat
// tables); with pointers it works the same but gains little.
func Make[T any](n, c int) []T {
	s := make([]T, n, c)
	var zero T
	if c > 0 {
		advise(unsafe.Pointer(unsafe.SliceData(s)), uintptr(c)*unsafe.Sizeof(zero))
	}
	return s
}

// Slab hands out byte buffers carved from slabs advised for huge pages:
// for many buffers of up to a few MiB that live and die together (a
// snapshot's chunks), which one by one would each be too small to get a
// huge page. A slab stays in memory while any buffer carved from it does.
// Slabs start at MinSlab and double up to SlabSize, so that a small
// snapshot holds little more than it uses. The zero Slab is ready to use;
// a Slab is not safe for concurrent use.
type Slab struct {
	free []byte // the current slab's unused tail (len 0)
	next int    // the next slab's size (0: MinSlab)
}

// MinSlab and SlabSize are the first and the largest slab sizes. Buffers
// over a quarter of SlabSize get an allocation of their own (advised too).
const (
	MinSlab  = 4 << 20
	SlabSize = 32 << 20
)

// SmallBuf is the size under which Alloc makes an ordinary buffer: the
// chunks of a small snapshot are a few KB, and a slab for them would hold
// megabytes for nothing.
const SmallBuf = 64 << 10

// Alloc returns a buffer of length 0 and capacity n (exactly: appending
// past it reallocates rather than writing into the next buffer).
func (s *Slab) Alloc(n int) []byte {
	if n < SmallBuf {
		return make([]byte, 0, n)
	}
	if n > SlabSize/4 {
		return Make[byte](0, n)
	}
	if cap(s.free) < n {
		size := max(s.next, MinSlab)
		for size < n {
			size *= 2
		}
		s.free = Make[byte](0, size)
		s.next = min(size*2, SlabSize)
	}
	b := s.free[:0:n]
	s.free = s.free[n:n:cap(s.free)]
	return b
}
