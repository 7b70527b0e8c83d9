package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// ListEvents walks the outbox in enqueue order.
func (r *reader) ListEvents(ctx context.Context, f store.EventFilter) (events []store.Event, total int, err error) {
	p := f.Page.Normalize()
	err = r.view(func(tx *bolt.Tx) error {
		events, total = []store.Event{}, 0
		skip := p.Offset()
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			e, err := decode[store.Event]("event", k, v)
			if err != nil {
				return err
			}
			if (f.Type != "" && e.Type != f.Type) || (f.PendingOnly && e.DeliveredAt != nil) {
				return nil
			}
			total++
			if skip > 0 {
				skip--
				return nil
			}
			if len(events) < p.Size {
				events = append(events, e)
			}
			return nil
		})
	})
	return events, total, err
}

// KeysDueForRotation walks keys_by_rotation up to now.
func (r *reader) KeysDueForRotation(_ context.Context, now time.Time, limit int) (keys []store.Key, err error) {
	if limit <= 0 {
		limit = store.MaxPageSize
	}
	end := timeKey(now)
	err = r.view(func(tx *bolt.Tx) error {
		keys = []store.Key{}
		c := tx.Bucket(bucketKeysRotation).Cursor()
		for k, _ := c.First(); k != nil && len(keys) < limit; k, _ = c.Next() {
			if len(k) < timeKeyLen || bytes.Compare(k[:timeKeyLen], end) > 0 {
				break
			}
			key, err := get[store.Key](tx, bucketKeys, store.KindKey, string(k[timeKeyLen:]))
			if err != nil {
				return err
			}
			keys = append(keys, key)
		}
		return nil
	})
	return keys, err
}

// BudgetResetsDue walks budget_resets up to until.
func (r *reader) BudgetResetsDue(_ context.Context, until time.Time, limit int) (out []store.BudgetReset, err error) {
	if limit <= 0 {
		limit = store.MaxPageSize
	}
	end := timeKey(until)
	err = r.view(func(tx *bolt.Tx) error {
		out = []store.BudgetReset{}
		c := tx.Bucket(bucketBudgetResets).Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			if len(k) < timeKeyLen || bytes.Compare(k[:timeKeyLen], end) >= 0 {
				break
			}
			kind, id, ok := bytes.Cut(k[timeKeyLen:], []byte{0})
			if !ok {
				return fmt.Errorf("embedded: malformed budget reset entry %x", k)
			}
			out = append(out, store.BudgetReset{Kind: string(kind), ID: string(id), At: timeFromKey(k[:timeKeyLen])})
		}
		return nil
	})
	return out, err
}

// eventAt reads the stored event and its seq key.
func (t *tx) eventAt(id string) (store.Event, []byte, error) {
	seq := t.btx.Bucket(bucketEventIDs).Get([]byte(id))
	if seq == nil {
		return store.Event{}, nil, store.ErrNotFound
	}
	seq = bytes.Clone(seq)
	v := t.btx.Bucket(bucketEvents).Get(seq)
	if v == nil {
		return store.Event{}, nil, fmt.Errorf("embedded: event %s missing from the outbox", id)
	}
	e, err := decode[store.Event]("event", seq, v)
	return e, seq, err
}

// putEvent rewrites e (stored under seq) and moves its due / delivered
// index entries from old to e.
func (t *tx) putEvent(seq []byte, old *store.Event, e *store.Event) error {
	doc, err := marshal("event", e)
	if err != nil {
		return err
	}
	if old != nil {
		if old.DeliveredAt == nil {
			if err := t.del(bucketEventsDue, join(timeKey(old.NextAttemptAt), seq)); err != nil {
				return err
			}
		} else if err := t.del(bucketEventsDelivered, join(timeKey(*old.DeliveredAt), seq)); err != nil {
			return err
		}
	}
	if err := t.put(bucketEvents, seq, doc); err != nil {
		return err
	}
	if e.DeliveredAt == nil {
		return t.put(bucketEventsDue, join(timeKey(e.NextAttemptAt), seq), empty)
	}
	return t.put(bucketEventsDelivered, join(timeKey(*e.DeliveredAt), seq), empty)
}

func (t *tx) EnqueueEvent(_ context.Context, e store.Event) error {
	if err := t.check(); err != nil {
		return err
	}
	if e.ID == "" || e.Type == "" {
		return fmt.Errorf("embedded: event without event_id or type")
	}
	if err := checkFields("event", "event_id", e.ID); err != nil {
		return err
	}
	if e.NextAttemptAt.IsZero() {
		e.NextAttemptAt = e.CreatedAt
	}
	if _, err := marshal("event", e); err != nil {
		return err
	}
	if t.btx.Bucket(bucketEventIDs).Get([]byte(e.ID)) != nil {
		return &store.ConflictError{Field: "event_id"}
	}
	n, err := t.btx.Bucket(bucketEvents).NextSequence()
	if err != nil {
		return t.fail(err)
	}
	seq := u64(n)
	if err := t.putEvent(seq, nil, &e); err != nil {
		return err
	}
	return t.put(bucketEventIDs, []byte(e.ID), seq)
}

func (t *tx) ClaimEvents(_ context.Context, now time.Time, limit int, lease time.Duration) ([]store.Event, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	out := []store.Event{}
	if limit <= 0 {
		return out, nil
	}
	end := timeKey(now)
	var seqs [][]byte
	c := t.btx.Bucket(bucketEventsDue).Cursor()
	for k, _ := c.First(); k != nil && len(seqs) < limit; k, _ = c.Next() {
		if len(k) != timeKeyLen+8 || bytes.Compare(k[:timeKeyLen], end) > 0 {
			break
		}
		seqs = append(seqs, bytes.Clone(k[timeKeyLen:]))
	}
	until := now.Add(lease)
	for _, seq := range seqs {
		v := t.btx.Bucket(bucketEvents).Get(seq)
		if v == nil {
			return nil, fmt.Errorf("embedded: due event %d missing from the outbox", binary.BigEndian.Uint64(seq))
		}
		old, err := decode[store.Event]("event", seq, v)
		if err != nil {
			return nil, err
		}
		e := old
		e.Attempts++
		e.NextAttemptAt = until
		if err := t.putEvent(seq, &old, &e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (t *tx) MarkEventDelivered(_ context.Context, id string, at time.Time) error {
	if err := t.check(); err != nil {
		return err
	}
	old, seq, err := t.eventAt(id)
	if err != nil || old.DeliveredAt != nil {
		return err
	}
	e := old
	e.DeliveredAt = &at
	e.LastError = ""
	return t.putEvent(seq, &old, &e)
}

func (t *tx) MarkEventFailed(_ context.Context, id string, next time.Time, lastError string) error {
	if err := t.check(); err != nil {
		return err
	}
	old, seq, err := t.eventAt(id)
	if err != nil || old.DeliveredAt != nil {
		return err
	}
	e := old
	e.NextAttemptAt = next
	e.LastError = lastError
	return t.putEvent(seq, &old, &e)
}

func (t *tx) PurgeEvents(_ context.Context, deliveredBefore time.Time, limit int) (int, error) {
	if err := t.check(); err != nil {
		return 0, err
	}
	if limit <= 0 {
		return 0, nil
	}
	end := timeKey(deliveredBefore)
	var idx [][]byte
	c := t.btx.Bucket(bucketEventsDelivered).Cursor()
	for k, _ := c.First(); k != nil && len(idx) < limit; k, _ = c.Next() {
		if len(k) != timeKeyLen+8 || bytes.Compare(k[:timeKeyLen], end) >= 0 {
			break
		}
		idx = append(idx, bytes.Clone(k))
	}
	for _, k := range idx {
		seq := k[timeKeyLen:]
		if v := t.btx.Bucket(bucketEvents).Get(seq); v != nil {
			e, err := decode[store.Event]("event", seq, v)
			if err != nil {
				return 0, err
			}
			if err := t.del(bucketEventIDs, []byte(e.ID)); err != nil {
				return 0, err
			}
		}
		if err := t.del(bucketEvents, seq); err != nil {
			return 0, err
		}
		if err := t.del(bucketEventsDelivered, k); err != nil {
			return 0, err
		}
	}
	return len(idx), nil
}
