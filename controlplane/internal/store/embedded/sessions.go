package embedded

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Admin UI sign-outs. The buckets are created by the first sign-out (no
// schema version needed); missing buckets are an empty list.
var (
	bucketSessions      = []byte("ui_revoked_sessions")        // session id → revocation JSON
	bucketSessionsBySeq = []byte("ui_revoked_sessions_by_seq") // big-endian seq → session id
)

// revocation is a bucketSessions value; Seq is the sequence of its last
// write, the cursor RevokedSessions reads after (through the seq index, so
// a poll costs what was revoked since, not every revocation).
type revocation struct {
	Expires int64  `json:"exp"` // unix nanoseconds
	Seq     uint64 `json:"seq"`
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// RevokeSession records a UI sign-out.
func (s *Store) RevokeSession(ctx context.Context, id string, expires time.Time) error {
	if err := store.CheckSessionID(id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return boltErr(s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketSessions)
		if err != nil {
			return err
		}
		idx, err := tx.CreateBucketIfNotExists(bucketSessionsBySeq)
		if err != nil {
			return err
		}
		exp := expires.UnixNano()
		if v := b.Get([]byte(id)); v != nil {
			var old revocation
			if json.Unmarshal(v, &old) == nil {
				exp = max(exp, old.Expires)
				if err := idx.Delete(seqKey(old.Seq)); err != nil {
					return err
				}
			}
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		doc, err := json.Marshal(revocation{Expires: exp, Seq: seq})
		if err != nil {
			return err
		}
		if err := idx.Put(seqKey(seq), []byte(id)); err != nil {
			return err
		}
		return b.Put([]byte(id), doc)
	}))
}

// RevokedSessions returns the sign-outs written after cursor (a sequence:
// one process writes them, so it is exact).
func (s *Store) RevokedSessions(ctx context.Context, cursor int64, now time.Time) (out []store.RevokedSession, next int64, err error) {
	if err := ctx.Err(); err != nil {
		return nil, cursor, err
	}
	next = cursor
	err = s.view(func(tx *bolt.Tx) error {
		b, idx := tx.Bucket(bucketSessions), tx.Bucket(bucketSessionsBySeq)
		if b == nil || idx == nil {
			return nil
		}
		next = int64(b.Sequence())
		add := func(id, v []byte) error {
			var r revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if r.Expires > now.UnixNano() {
				out = append(out, store.RevokedSession{ID: string(id), Expires: time.Unix(0, r.Expires)})
			}
			return nil
		}
		if cursor <= 0 {
			return b.ForEach(add)
		}
		c := idx.Cursor()
		for k, id := c.Seek(seqKey(uint64(cursor) + 1)); k != nil; k, id = c.Next() {
			if v := b.Get(id); v != nil {
				if err := add(id, v); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return out, next, err
}

// PruneRevokedSessions deletes the sign-outs of sessions that expired.
func (s *Store) PruneRevokedSessions(ctx context.Context, now time.Time) (n int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	err = boltErr(s.db.Update(func(tx *bolt.Tx) error {
		b, idx := tx.Bucket(bucketSessions), tx.Bucket(bucketSessionsBySeq)
		if b == nil || idx == nil {
			return nil
		}
		type dead struct {
			id  []byte
			seq uint64
		}
		var gone []dead
		if err := b.ForEach(func(k, v []byte) error {
			var r revocation
			if json.Unmarshal(v, &r) != nil || r.Expires <= now.UnixNano() {
				gone = append(gone, dead{append([]byte(nil), k...), r.Seq})
			}
			return nil
		}); err != nil {
			return err
		}
		for _, d := range gone {
			if err := b.Delete(d.id); err != nil {
				return err
			}
			if err := idx.Delete(seqKey(d.seq)); err != nil {
				return err
			}
		}
		n = len(gone)
		return nil
	}))
	return n, err
}
