package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"syscall"
)

// bbolt's on-disk format (go.etcd.io/bbolt/internal/common), native byte
// order. A page starts with a 16-byte header: id u64, flags u16, count u16,
// overflow u32. The meta page body: magic, version, page size, flags (u32
// each), root bucket (pgid, sequence), freelist pgid, high-water pgid, txid,
// then an FNV-64a checksum of the preceding 56 bytes. Branch elements are
// {pos u32, ksize u32, pgid u64}, leaf elements {flags u32, pos u32, ksize
// u32, vsize u32}, pos relative to the element. A bucket value is {root
// pgid u64, sequence u64} followed, when root is 0, by an inline leaf page.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	elemSize       = 16
	metaSumLen     = 56
	metaLen        = metaSumLen + 8
	noFreelist     = ^uint64(0)

	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	bucketHeaderSize = 16
	maxTreeDepth     = 64
)

var ne = binary.NativeEndian

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages the file must hold
	txid     uint64
}

func parseMeta(b []byte) (boltMeta, error) {
	if len(b) < pageHeaderSize+metaLen {
		return boltMeta{}, errors.New("short meta page")
	}
	m := b[pageHeaderSize : pageHeaderSize+metaLen]
	if ne.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, errors.New("bad magic")
	}
	if v := ne.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("unsupported bbolt version %d", v)
	}
	h := fnv.New64a()
	h.Write(m[:metaSumLen])
	if h.Sum64() != ne.Uint64(m[metaSumLen:]) {
		return boltMeta{}, errors.New("meta checksum mismatch")
	}
	return boltMeta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		pgid:     ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}, nil
}

// verifyFile checks, before bbolt maps the file, everything that would make
// bbolt fault, panic or misread: a valid meta page, a file that holds every
// page the meta page counts, and a page tree whose pages are in range,
// referenced once, of the right type, with elements inside their page and
// keys in order. Failures wrap ErrCorrupt. A missing or empty file passes
// (bbolt initializes it).
func verifyFile(path string) (err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if st.IsDir() {
		return fmt.Errorf("cache: %s is a directory", path)
	}
	size := st.Size()
	if size == 0 {
		return nil
	}
	if int64(int(size)) != size {
		return fmt.Errorf("%w: file too large to map", ErrCorrupt)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("%w: map: %v", ErrCorrupt, err)
	}
	defer syscall.Munmap(data)
	// The file could shrink under us (another writer): a fault is then a
	// panic we report as corruption.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrCorrupt, r)
		}
	}()

	// Page size from the first meta page, else from the second one at the
	// usual page sizes (as bbolt does).
	var pageSize uint32
	m0, err0 := parseMeta(data)
	if err0 == nil {
		pageSize = m0.pageSize
	} else {
		for _, ps := range []uint32{4096, 8192, 16384, 32768, 65536} {
			if int64(ps) < size {
				if m, err := parseMeta(data[ps:]); err == nil && m.pageSize == ps {
					pageSize = ps
					break
				}
			}
		}
	}
	if pageSize < 1024 || pageSize > 64<<10 || pageSize&(pageSize-1) != 0 {
		return fmt.Errorf("%w: not a bbolt file (%v)", ErrCorrupt, err0)
	}
	// bbolt uses the valid meta page with the highest txid.
	var best *boltMeta
	if err0 == nil && m0.pageSize == pageSize {
		best = &m0
	}
	if int64(pageSize) < size {
		if m1, err := parseMeta(data[pageSize:]); err == nil && m1.pageSize == pageSize && (best == nil || m1.txid > best.txid) {
			best = &m1
		}
	}
	if best == nil {
		return fmt.Errorf("%w: no valid meta page", ErrCorrupt)
	}
	if best.pgid < 3 || best.pgid > uint64(size)/uint64(pageSize) {
		return fmt.Errorf("%w: truncated: %d bytes, meta page counts %d pages of %d", ErrCorrupt, size, best.pgid, pageSize)
	}
	v := &verifier{data: data, ps: uint64(pageSize), hwm: best.pgid, seen: make([]uint64, (best.pgid+63)/64)}
	v.mark(0, 0)
	v.mark(1, 0)
	if best.freelist != noFreelist {
		// This package never writes one (NoFreelistSync), but bbolt loads
		// one if present: its ids must be pages of this file.
		v.freelist(best.freelist)
	}
	if v.err == nil {
		v.tree(best.root, nil, nil, 0)
	}
	return v.err
}

type verifier struct {
	data []byte
	ps   uint64
	hwm  uint64
	seen []uint64
	err  error
}

func (v *verifier) fail(format string, args ...any) {
	if v.err == nil {
		v.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

func (v *verifier) mark(id, overflow uint64) bool {
	for p := id; p <= id+overflow; p++ {
		if v.seen[p/64]&(1<<(p%64)) != 0 {
			v.fail("page %d referenced twice", p)
			return false
		}
		v.seen[p/64] |= 1 << (p % 64)
	}
	return true
}

// page returns page id with its overflow pages, checked to lie below the
// high-water mark, to carry its own id, and not to be referenced before.
func (v *verifier) page(id uint64) ([]byte, uint16, error) {
	if id < 2 || id >= v.hwm {
		v.fail("page id %d out of range [2,%d)", id, v.hwm)
		return nil, 0, v.err
	}
	off := id * v.ps
	h := v.data[off : off+pageHeaderSize]
	if got := ne.Uint64(h[0:]); got != id {
		v.fail("page %d carries id %d", id, got)
		return nil, 0, v.err
	}
	overflow := uint64(ne.Uint32(h[12:]))
	if id+overflow >= v.hwm {
		v.fail("page %d overflows past the high-water mark", id)
		return nil, 0, v.err
	}
	if !v.mark(id, overflow) {
		return nil, 0, v.err
	}
	return v.data[off : off+(overflow+1)*v.ps], ne.Uint16(h[8:]), nil
}

// freelist checks a persisted freelist page: the right type, its ids
// inside the page and below the high-water mark.
func (v *verifier) freelist(id uint64) {
	p, flags, err := v.page(id)
	if err != nil {
		return
	}
	if flags != freelistPageFlag {
		v.fail("freelist page %d has type %#x", id, flags)
		return
	}
	n, start := uint64(ne.Uint16(p[10:])), uint64(pageHeaderSize)
	if n == 0xFFFF { // the real count is the first element
		if len(p) < pageHeaderSize+8 {
			v.fail("freelist page %d too short", id)
			return
		}
		n, start = ne.Uint64(p[pageHeaderSize:]), pageHeaderSize+8
	}
	if n > (uint64(len(p))-start)/8 {
		v.fail("freelist page %d count %d overflows the page", id, n)
		return
	}
	for i := range n {
		if f := ne.Uint64(p[start+8*i:]); f < 2 || f >= v.hwm {
			v.fail("freelist page %d lists page %d out of range", id, f)
			return
		}
	}
}

// tree walks the B+tree rooted at page id, whose keys must lie in [lo, hi)
// (nil: unbounded).
func (v *verifier) tree(id uint64, lo, hi []byte, depth int) {
	if depth > maxTreeDepth {
		v.fail("tree deeper than %d", maxTreeDepth)
		return
	}
	p, flags, err := v.page(id)
	if err != nil {
		return
	}
	switch flags {
	case branchPageFlag:
		n := int(ne.Uint16(p[10:]))
		if n == 0 || pageHeaderSize+n*elemSize > len(p) {
			v.fail("branch page %d has a bad element count %d", id, n)
			return
		}
		keys := make([][]byte, n)
		children := make([]uint64, n)
		for i := range n {
			e := pageHeaderSize + i*elemSize
			k, ok := slice(p, e, ne.Uint32(p[e:]), ne.Uint32(p[e+4:]))
			if !ok {
				v.fail("branch page %d element %d out of bounds", id, i)
				return
			}
			keys[i], children[i] = k, ne.Uint64(p[e+8:])
			if !v.inOrder(id, i, k, keys, lo, hi) {
				return
			}
		}
		for i := range n {
			next := hi
			if i+1 < n {
				next = keys[i+1]
			}
			if v.tree(children[i], keys[i], next, depth+1); v.err != nil {
				return
			}
		}
	case leafPageFlag:
		v.leaf(id, p, lo, hi, depth, false)
	default:
		v.fail("page %d has type %#x in a tree", id, flags)
	}
}

// leaf checks a leaf page (or an inline bucket's page when inline).
func (v *verifier) leaf(id uint64, p []byte, lo, hi []byte, depth int, inline bool) {
	if len(p) < pageHeaderSize {
		v.fail("inline page in page %d too short", id)
		return
	}
	if inline && ne.Uint16(p[8:]) != leafPageFlag {
		v.fail("inline page in page %d is not a leaf", id)
		return
	}
	n := int(ne.Uint16(p[10:]))
	if pageHeaderSize+n*elemSize > len(p) {
		v.fail("leaf page %d has a bad element count %d", id, n)
		return
	}
	keys := make([][]byte, n)
	for i := range n {
		e := pageHeaderSize + i*elemSize
		eflags, pos, ksize, vsize := ne.Uint32(p[e:]), ne.Uint32(p[e+4:]), ne.Uint32(p[e+8:]), ne.Uint32(p[e+12:])
		kv, ok := slice(p, e, pos, ksize+vsize)
		if !ok || ksize+vsize < ksize {
			v.fail("leaf page %d element %d out of bounds", id, i)
			return
		}
		k, val := kv[:ksize], kv[ksize:]
		keys[i] = k
		if !v.inOrder(id, i, k, keys, lo, hi) {
			return
		}
		if eflags&bucketLeafFlag == 0 {
			continue
		}
		if inline {
			v.fail("inline bucket in page %d holds a bucket", id)
			return
		}
		if len(val) < bucketHeaderSize {
			v.fail("bucket value in page %d too short", id)
			return
		}
		if root := ne.Uint64(val); root == 0 {
			v.leaf(id, val[bucketHeaderSize:], nil, nil, depth+1, true)
		} else {
			v.tree(root, nil, nil, depth+1)
		}
		if v.err != nil {
			return
		}
	}
}

// inOrder checks key i of a page: strictly after key i-1, within [lo, hi).
func (v *verifier) inOrder(id uint64, i int, k []byte, keys [][]byte, lo, hi []byte) bool {
	switch {
	case i > 0 && bytes.Compare(keys[i-1], k) >= 0:
		v.fail("page %d keys out of order at %d", id, i)
	case i == 0 && lo != nil && bytes.Compare(k, lo) < 0:
		v.fail("page %d first key below its parent's", id)
	case hi != nil && bytes.Compare(k, hi) >= 0:
		v.fail("page %d key %d not below its parent's next key", id, i)
	default:
		return true
	}
	return false
}

// slice returns p[base+pos : base+pos+n] if it lies inside p.
func slice(p []byte, base int, pos, n uint32) ([]byte, bool) {
	start := uint64(base) + uint64(pos)
	end := start + uint64(n)
	if end > uint64(len(p)) {
		return nil, false
	}
	return p[start:end], true
}
