package spend

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// The outbox of proxies before the log: a bbolt file (<cache>.spend) with
// the outbox id and last sequence number in "meta" and the unacked records
// in "records" (big-endian seq → SpendRecord). Open takes it over once.
var (
	bucketMeta    = []byte("meta")
	bucketRecords = []byte("records")
	metaOutboxID  = []byte("outbox_id")
	metaSeq       = []byte("last_seq")
	// metaMoney is the unit of the records' costs: "nano-usd". A file
	// without it was written in micro-USD; its records are converted.
	metaMoney = []byte("money")
	nanoUSD   = []byte("nano-usd")
)

// readLegacy reads an older outbox file: its id ("" when there is no file),
// its unacked records (costs in nano-USD) and its last sequence number.
func readLegacy(path string) (string, []*syncv1.SpendRecord, uint64, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return "", nil, 0, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, ReadOnly: true})
	if err != nil {
		return "", nil, 0, err
	}
	defer db.Close()
	var id string
	var recs []*syncv1.SpendRecord
	var last uint64
	err = db.View(func(tx *bolt.Tx) error {
		meta, rb := tx.Bucket(bucketMeta), tx.Bucket(bucketRecords)
		if meta == nil || rb == nil {
			return nil // created, never written
		}
		id = string(meta.Get(metaOutboxID))
		if v := meta.Get(metaSeq); len(v) == 8 {
			last = binary.BigEndian.Uint64(v)
		}
		micro := !bytes.Equal(meta.Get(metaMoney), nanoUSD)
		return rb.ForEach(func(k, v []byte) error {
			r := new(syncv1.SpendRecord)
			if err := proto.Unmarshal(v, r); err != nil {
				return fmt.Errorf("record %x: %w", k, err)
			}
			r.Seq = binary.BigEndian.Uint64(k)
			if micro {
				if r.Cost > math.MaxInt64/1000 {
					r.Cost = math.MaxInt64
				} else {
					r.Cost *= 1000
				}
			}
			recs = append(recs, r)
			last = max(last, r.Seq)
			return nil
		})
	})
	return id, recs, last, err
}

// writeSegment writes recs (their Seq set, increasing) as a segment of their
// own, durably.
func writeSegment(dir string, recs []*syncv1.SpendRecord) (*segment, error) {
	buf := []byte(segMagic)
	for _, r := range recs {
		var err error
		if buf, err = appendFrame(buf, r); err != nil {
			return nil, err
		}
	}
	path := segName(dir, recs[0].Seq)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return nil, err
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return &segment{first: recs[0].Seq, last: recs[len(recs)-1].Seq, path: path, size: int64(len(buf))}, nil
}
