package hugepage

import (
	"syscall"
	"unsafe"
)

const madvHugepage = 14 // MADV_HUGEPAGE

// advise marks the huge-page-aligned interior of [p, p+n) with
// MADV_HUGEPAGE.
func advise(p unsafe.Pointer, n uintptr) {
	beg := (uintptr(p) + Size - 1) &^ (Size - 1)
	end := (uintptr(p) + n) &^ (Size - 1)
	if beg < end {
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, beg, end-beg, madvHugepage)
	}
}
