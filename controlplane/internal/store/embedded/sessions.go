package embedded

import (
	"context"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// bucketSessions holds admin UI sign-outs: session id → revocation JSON.
// It is created by the first sign-out (no schema version needed); a
// missing bucket is an empty list.
var bucketSessions = []byte("ui_revoked_sessions")

// revocation is a bucketSessions value; Seq is the bucket's sequence at
// the write, the cursor RevokedSessions filters on.
type revocation struct {
	Expires int64  `json:"exp"` // unix nanoseconds
	Seq     uint64 `json:"seq"`
}

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
		exp := expires.UnixNano()
		if v := b.Get([]byte(id)); v != nil {
			var old revocation
			if json.Unmarshal(v, &old) == nil && old.Expires > exp {
				exp = old.Expires
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
		return b.Put([]byte(id), doc)
	}))
}

// RevokedSessions returns the sign-outs written after cursor (a bucket
// sequence). One process writes them, so the sequence is exact.
func (s *Store) RevokedSessions(ctx context.Context, cursor int64, now time.Time) (out []store.RevokedSession, next int64, err error) {
	if err := ctx.Err(); err != nil {
		return nil, cursor, err
	}
	next = cursor
	err = s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSessions)
		if b == nil {
			return nil
		}
		next = int64(b.Sequence())
		return b.ForEach(func(k, v []byte) error {
			var r revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			if int64(r.Seq) > cursor && r.Expires > now.UnixNano() {
				out = append(out, store.RevokedSession{ID: string(k), Expires: time.Unix(0, r.Expires)})
			}
			return nil
		})
	})
	return out, next, err
}

// PruneRevokedSessions deletes the sign-outs of sessions that expired.
func (s *Store) PruneRevokedSessions(ctx context.Context, now time.Time) (n int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	err = boltErr(s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSessions)
		if b == nil {
			return nil
		}
		var dead [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			var r revocation
			if json.Unmarshal(v, &r) != nil || r.Expires <= now.UnixNano() {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	}))
	return n, err
}
