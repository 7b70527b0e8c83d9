package spend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// The log's files. A segment holds records in sequence order:
//
//	header: segMagic (8 bytes)
//	frame:  payload length (uint32, big-endian) | CRC-32C of the payload (uint32) | payload
//
// The payload is a SpendRecord (protobuf) with its Seq set. A segment is
// named by the first sequence number written to it (20 digits, so names
// sort as numbers). A frame that does not check (torn by a crash of the
// machine before its fdatasync, or zeros) ends the segment: what follows it
// was never made durable.
const (
	segMagic   = "TGSPLOG1"
	segSuffix  = ".seg"
	frameHead  = 8
	maxPayload = 1 << 20 // far above any record; a larger length is a torn frame
	fileID     = "id"
	fileAcked  = "acked"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends r (Seq set) as one frame to dst.
func appendFrame(dst []byte, r *syncv1.SpendRecord) ([]byte, error) {
	at := len(dst)
	dst = append(dst, make([]byte, frameHead)...)
	dst, err := proto.MarshalOptions{}.MarshalAppend(dst, r)
	if err != nil {
		return dst[:at], err
	}
	payload := dst[at+frameHead:]
	binary.BigEndian.PutUint32(dst[at:], uint32(len(payload)))
	binary.BigEndian.PutUint32(dst[at+4:], crc32.Checksum(payload, castagnoli))
	return dst, nil
}

// segment is one file of the log.
type segment struct {
	first uint64 // from the name
	last  uint64 // last seq in it (0: none yet)
	path  string
	size  int64 // bytes of valid frames (and header)
}

func segName(dir string, first uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", first, segSuffix))
}

// listSegments returns the log's segments in order (not yet scanned).
func listSegments(dir string) ([]*segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []*segment
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok || e.IsDir() {
			continue
		}
		first, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, &segment{first: first, path: filepath.Join(dir, e.Name())})
	}
	slices.SortFunc(segs, func(a, b *segment) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	return segs, nil
}

var errTorn = errors.New("torn frame")

// scan reads a segment's records in order, calling fn for each (fn may keep
// r). It returns the size of the valid prefix and errTorn when a frame did
// not check before the end of the file.
func scan(path string, fn func(r *syncv1.SpendRecord) error) (int64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	if len(raw) < len(segMagic) || string(raw[:len(segMagic)]) != segMagic {
		if len(raw) < len(segMagic) && string(raw) == segMagic[:len(raw)] {
			return 0, errTorn // created, header not (all) written
		}
		return 0, fmt.Errorf("%s: not a spend log segment", path)
	}
	off := len(segMagic)
	for off < len(raw) {
		if len(raw)-off < frameHead {
			return int64(off), errTorn
		}
		n := int(binary.BigEndian.Uint32(raw[off:]))
		sum := binary.BigEndian.Uint32(raw[off+4:])
		if n == 0 && sum == 0 && allZero(raw[off:]) {
			return int64(off), nil // the preallocated rest: a clean end
		}
		if n == 0 || n > maxPayload || len(raw)-off-frameHead < n {
			return int64(off), errTorn
		}
		payload := raw[off+frameHead : off+frameHead+n]
		if crc32.Checksum(payload, castagnoli) != sum {
			return int64(off), errTorn
		}
		r := new(syncv1.SpendRecord)
		if err := proto.Unmarshal(payload, r); err != nil {
			return int64(off), errTorn
		}
		if err := fn(r); err != nil {
			return int64(off), err
		}
		off += frameHead + n
	}
	return int64(off), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// readAcked reads the acked mark (0 when absent or not valid).
func readAcked(dir string) uint64 {
	raw, err := os.ReadFile(filepath.Join(dir, fileAcked))
	if err != nil || len(raw) < 12 {
		return 0
	}
	if crc32.Checksum(raw[:8], castagnoli) != binary.BigEndian.Uint32(raw[8:12]) {
		return 0
	}
	return binary.BigEndian.Uint64(raw[:8])
}

func ackedBytes(seq uint64) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, seq)
	binary.BigEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
	return b
}

// syncDir makes a directory's entries (a created or removed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
