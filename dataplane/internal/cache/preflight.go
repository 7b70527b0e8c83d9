package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt's on-disk meta page (go.etcd.io/bbolt/internal/common): a 16-byte
// page header, then magic, version, page size, flags (uint32 each), root
// bucket (pgid, sequence), freelist pgid, high-water pgid, txid and an
// FNV-64a checksum of the preceding 56 bytes, in native byte order.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	metaSumLen     = 56
	metaLen        = metaSumLen + 8
)

type boltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: pages the file must hold
	txid     uint64
}

func parseMeta(b []byte) (boltMeta, error) {
	if len(b) < pageHeaderSize+metaLen {
		return boltMeta{}, errors.New("short meta page")
	}
	m := b[pageHeaderSize : pageHeaderSize+metaLen]
	ne := binary.NativeEndian
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
	return boltMeta{pageSize: ne.Uint32(m[8:]), pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}, nil
}

// preflight rejects, before bbolt maps the file, what would make bbolt fault
// or misread: no valid meta page (garbage, wrong magic) and a file shorter
// than its meta page says (truncated). Both wrap ErrCorrupt. A missing or
// empty file passes (bbolt initializes it).
func preflight(path string) error {
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
	head := make([]byte, min(size, 2*64<<10+pageHeaderSize+metaLen))
	if _, err := io.ReadFull(f, head); err != nil {
		return fmt.Errorf("%w: read header: %v", ErrCorrupt, err)
	}
	// Page size from the first meta page, else from the second one at the
	// usual page sizes (bbolt does the same).
	var pageSize uint32
	m0, err0 := parseMeta(head)
	if err0 == nil {
		pageSize = m0.pageSize
	} else {
		for _, ps := range []uint32{4096, 8192, 16384, 32768, 65536} {
			if int64(ps) < int64(len(head)) {
				if m, err := parseMeta(head[ps:]); err == nil && m.pageSize == ps {
					pageSize = ps
					break
				}
			}
		}
	}
	if pageSize < 512 || pageSize > 64<<10 || pageSize&(pageSize-1) != 0 {
		return fmt.Errorf("%w: not a bbolt file (%v)", ErrCorrupt, err0)
	}
	// The meta bbolt will use: the valid one with the highest txid.
	var best *boltMeta
	if err0 == nil && m0.pageSize == pageSize {
		best = &m0
	}
	if int64(pageSize) < int64(len(head)) {
		if m1, err := parseMeta(head[pageSize:]); err == nil && m1.pageSize == pageSize && (best == nil || m1.txid > best.txid) {
			best = &m1
		}
	}
	if best == nil {
		return fmt.Errorf("%w: no valid meta page", ErrCorrupt)
	}
	if need := int64(best.pgid) * int64(pageSize); size < need {
		return fmt.Errorf("%w: truncated: %d bytes, meta page expects %d", ErrCorrupt, size, need)
	}
	return nil
}
