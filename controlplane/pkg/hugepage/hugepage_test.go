package hugepage

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

func TestSlabBuffersAreExactAndApart(t *testing.T) {
	var s Slab
	var bufs [][]byte
	for i := range 200 {
		n := SmallBuf + i*4099
		b := s.Alloc(n)
		if len(b) != 0 || cap(b) != n {
			t.Fatalf("Alloc(%d): len %d cap %d", n, len(b), cap(b))
		}
		b = b[:n]
		for j := range b {
			b[j] = byte(i)
		}
		bufs = append(bufs, b)
	}
	if s.next != SlabSize {
		t.Errorf("after ~90 MiB of buffers the next slab is %d MiB, want the largest", s.next>>20)
	}
	var small Slab
	if b := small.Alloc(1000); cap(b) != 1000 || small.free != nil {
		t.Errorf("a small buffer took a slab (cap %d, slab tail %d)", cap(b), cap(small.free))
	}
	small.Alloc(SmallBuf)
	if cap(small.free)+SmallBuf != MinSlab {
		t.Errorf("a first buffer took a slab of %d bytes, want %d", cap(small.free)+SmallBuf, MinSlab)
	}
	big := s.Alloc(SlabSize/4 + 1)
	if cap(big) != SlabSize/4+1 {
		t.Fatalf("big buffer cap %d", cap(big))
	}
	for i, b := range bufs {
		for _, c := range b {
			if c != byte(i) {
				t.Fatalf("buffer %d was overwritten by another", i)
			}
		}
	}
	// Appending past a buffer's capacity must not reach the next one.
	a, b := s.Alloc(SmallBuf), s.Alloc(SmallBuf)
	if &a[:1][0] == &b[:1][0] || cap(a) != SmallBuf {
		t.Fatal("two buffers share their first byte")
	}
	b = append(b, bytes.Repeat([]byte{'B'}, SmallBuf)...)
	a = append(a, bytes.Repeat([]byte{'A'}, SmallBuf)...)
	a = append(a, 'x') // past the capacity: a moves, b stays as it was
	if !bytes.Equal(b, bytes.Repeat([]byte{'B'}, SmallBuf)) || len(a) != SmallBuf+1 {
		t.Fatal("appending past a buffer's capacity reached the next one")
	}
}

func TestMakeGetsHugePages(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("advice is Linux only")
	}
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || strings.Contains(string(mode), "[never]") {
		t.Skipf("transparent huge pages are off here (%q, %v)", mode, err)
	}
	const n = 64 << 20
	b := Make[byte](n, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	// The kernel's own account of the mapping that holds b (page fault
	// counts would not do: the race detector's shadow memory faults too).
	kb, err := anonHugeKB(uintptr(unsafe.Pointer(&b[n/2])))
	if err != nil {
		t.Fatal(err)
	}
	if kb < n/2>>10 {
		t.Fatalf("%d kB of huge pages in the mapping of a %d MiB buffer", kb, n>>20)
	}
	t.Logf("%d kB of huge pages for %d MiB", kb, n>>20)
	runtime.KeepAlive(b)
}

// anonHugeKB is AnonHugePages of the mapping holding addr, from
// /proc/self/smaps.
func anonHugeKB(addr uintptr) (int, error) {
	f, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	in := false
	for _, line := range strings.Split(string(f), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fields[0], "-"); ok && !strings.HasSuffix(fields[0], ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			z, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= a && uint64(addr) < z
			continue
		}
		if in && fields[0] == "AnonHugePages:" && len(fields) >= 2 {
			return strconv.Atoi(fields[1])
		}
	}
	return 0, fmt.Errorf("no mapping holds %#x", addr)
}
