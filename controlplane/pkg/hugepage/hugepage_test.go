package hugepage

import (
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

func TestSlabBuffersAreExactAndApart(t *testing.T) {
	var s Slab
	var bufs [][]byte
	for i := range 200 {
		n := 1 + i*4099
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
		t.Errorf("after ~80 MiB of buffers the next slab is %d MiB, want the largest", s.next>>20)
	}
	var small Slab
	small.Alloc(1000)
	if cap(small.free)+1000 != MinSlab {
		t.Errorf("a first small buffer took a slab of %d bytes, want %d", cap(small.free)+1000, MinSlab)
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
	a, b := s.Alloc(8), s.Alloc(8)
	b = append(b, "ABCDEFGH"...)
	a = append(a, "12345678"...)
	a = append(a, 'x')
	if string(b) != "ABCDEFGH" || string(a) != "12345678x" {
		t.Fatalf("a %q b %q", a, b)
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
	faults := func() int64 {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return ru.Minflt
	}
	runtime.LockOSThread() // faults are counted per process; keep the noise low
	defer runtime.UnlockOSThread()
	before := faults()
	b := Make[byte](n, n)
	for i := 0; i < n; i += 4096 {
		b[i] = 1
	}
	got := faults() - before
	// 16384 faults with 4 KiB pages; a few dozen with huge pages (plus
	// the unaligned ends and whatever else the process touched).
	if got > n/4096/8 {
		t.Fatalf("%d page faults touching %d MiB: no huge pages", got, n>>20)
	}
	t.Logf("%d page faults for %d MiB", got, n>>20)
	runtime.KeepAlive(b)
}
