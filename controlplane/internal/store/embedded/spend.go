package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// spendSourceKey is the high-water mark's key for an outbox.
func spendSourceKey(proxyID, outboxID string) []byte {
	return append(lp(proxyID), outboxID...)
}

func readHighWater(tx *bolt.Tx, proxyID, outboxID string) uint64 {
	v := tx.Bucket(bucketSpendSources).Get(spendSourceKey(proxyID, outboxID))
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// ApplySpend applies a batch in the caller's transaction (bbolt has one
// writer at a time, so the high-water mark cannot race).
func (t *tx) ApplySpend(_ context.Context, b store.SpendBatch) (store.SpendResult, error) {
	if err := t.check(); err != nil {
		return store.SpendResult{}, err
	}
	if err := b.Validate(); err != nil {
		return store.SpendResult{}, err
	}
	if err := checkFields("spend batch", "*proxy_id", b.ProxyID, "*outbox_id", b.OutboxID); err != nil {
		return store.SpendResult{}, err
	}
	recs := b.Above(readHighWater(t.btx, b.ProxyID, b.OutboxID))
	if len(recs) == 0 {
		return store.SpendResult{}, nil
	}
	for i := range recs {
		if err := checkFields("spend record", "request_id", recs[i].RequestID); err != nil {
			return store.SpendResult{}, err
		}
	}
	tot := store.Totals(recs)

	// Read and encode everything first, so nothing is written when a
	// decode fails.
	type put struct {
		bucket, id, doc []byte
		kind            string
	}
	var puts []put
	collect := func(bucket []byte, kind string, totals map[string]int64, add func([]byte) (any, error)) error {
		for _, id := range store.SortedIDs(totals) {
			v := t.btx.Bucket(bucket).Get([]byte(id))
			if v == nil {
				continue // deleted since the request: only the log keeps its spend
			}
			x, err := add(v)
			if err != nil {
				return err
			}
			doc, err := marshal(kind, x)
			if err != nil {
				return err
			}
			puts = append(puts, put{bucket, []byte(id), doc, kind})
		}
		return nil
	}
	if err := collect(bucketKeys, store.KindKey, tot.Keys, func(v []byte) (any, error) {
		k, err := decode[store.Key](store.KindKey, nil, v)
		tot.AddToKey(&k)
		return &k, err
	}); err != nil {
		return store.SpendResult{}, err
	}
	if err := collect(bucketTeams, store.KindTeam, tot.Teams, func(v []byte) (any, error) {
		tm, err := decode[store.Team](store.KindTeam, nil, v)
		tot.AddToTeam(&tm)
		return &tm, err
	}); err != nil {
		return store.SpendResult{}, err
	}
	if err := collect(bucketUsers, store.KindUser, tot.Users, func(v []byte) (any, error) {
		u, err := decode[store.User](store.KindUser, nil, v)
		tot.AddToUser(&u)
		return &u, err
	}); err != nil {
		return store.SpendResult{}, err
	}
	if err := collect(bucketOrgs, store.KindOrganization, tot.Orgs, func(v []byte) (any, error) {
		o, err := decode[store.Organization](store.KindOrganization, nil, v)
		tot.AddToOrg(&o)
		return &o, err
	}); err != nil {
		return store.SpendResult{}, err
	}
	now := time.Now()
	for _, id := range store.SortedIDs(tot.EndUsers) {
		e := store.EndUser{EndUserID: id, CreatedAt: now}
		if v := t.btx.Bucket(bucketEndUsers).Get([]byte(id)); v != nil {
			var err error
			if e, err = decode[store.EndUser]("end user", []byte(id), v); err != nil {
				return store.SpendResult{}, err
			}
		}
		e.Spend += tot.EndUsers[id]
		e.UpdatedAt = now
		tot.After = append(tot.After, store.ObjectSpend{Kind: store.KindEndUser, ID: id, Spend: e.Spend})
		doc, err := marshal("end user", e)
		if err != nil {
			return store.SpendResult{}, err
		}
		puts = append(puts, put{bucketEndUsers, []byte(id), doc, store.KindEndUser})
	}
	logs := make([][]byte, len(recs))
	for i := range recs {
		doc, err := marshal("spend log", store.SpendLog{SpendRecord: recs[i], ProxyID: b.ProxyID, OutboxID: b.OutboxID})
		if err != nil {
			return store.SpendResult{}, err
		}
		logs[i] = doc
	}

	for _, p := range puts {
		if err := t.put(p.bucket, p.id, p.doc); err != nil {
			return store.SpendResult{}, err
		}
		if p.kind != "" {
			t.record(p.kind, string(p.id), store.OpPut, p.doc)
		}
	}
	lb := t.btx.Bucket(bucketSpendLogs)
	for i := range recs {
		n, err := lb.NextSequence()
		if err != nil {
			return store.SpendResult{}, t.fail(err)
		}
		key := join(timeKey(recs[i].StartTime), u64(n))
		if err := t.put(bucketSpendLogs, key, logs[i]); err != nil {
			return store.SpendResult{}, err
		}
		if err := t.put(bucketSpendReqs, join([]byte(recs[i].RequestID), []byte{0}, key), empty); err != nil {
			return store.SpendResult{}, err
		}
	}
	if err := t.put(bucketSpendSources, spendSourceKey(b.ProxyID, b.OutboxID), u64(recs[len(recs)-1].Seq)); err != nil {
		return store.SpendResult{}, err
	}
	return store.SpendResult{Applied: len(recs), SoftBudgetCrossings: tot.Crossings, Spends: tot.After}, nil
}

// PutEndUser creates or replaces an end user, keeping its created_at.
func (t *tx) PutEndUser(_ context.Context, e store.EndUser) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields("end user", "*end_user_id", e.EndUserID, "alias", e.Alias); err != nil {
		return err
	}
	now := time.Now()
	if v := t.btx.Bucket(bucketEndUsers).Get([]byte(e.EndUserID)); v != nil {
		old, err := decode[store.EndUser]("end user", []byte(e.EndUserID), v)
		if err != nil {
			return err
		}
		e.CreatedAt = old.CreatedAt
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = now
	}
	if e.UpdatedAt.IsZero() {
		e.UpdatedAt = now
	}
	doc, err := marshal("end user", e)
	if err != nil {
		return err
	}
	if err := t.put(bucketEndUsers, []byte(e.EndUserID), doc); err != nil {
		return err
	}
	t.record(store.KindEndUser, e.EndUserID, store.OpPut, doc)
	return nil
}

// DeleteEndUser deletes an end user and records a tombstone.
func (t *tx) DeleteEndUser(_ context.Context, id string) error {
	if err := t.check(); err != nil {
		return err
	}
	if id == "" || t.btx.Bucket(bucketEndUsers).Get([]byte(id)) == nil {
		return store.ErrNotFound
	}
	if err := t.del(bucketEndUsers, []byte(id)); err != nil {
		return err
	}
	t.record(store.KindEndUser, id, store.OpDelete, nil)
	return nil
}

// ListEndUsers pages through the end users in id order.
func (r *reader) ListEndUsers(ctx context.Context, p store.Page) (out []store.EndUser, total int, err error) {
	p = p.Normalize()
	lo, hi := p.Offset(), p.Offset()+p.Size
	err = r.view(func(tx *bolt.Tx) error {
		out, total = []store.EndUser{}, 0
		c := tx.Bucket(bucketEndUsers).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if total%ctxEvery == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if total >= lo && total < hi {
				e, err := decode[store.EndUser]("end user", k, v)
				if err != nil {
					return err
				}
				out = append(out, e)
			}
			total++
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, total, nil
}

func (r *reader) EachEndUser(ctx context.Context, fn func(store.EndUser) error) error {
	return each(ctx, r, bucketEndUsers, store.KindEndUser, fn)
}

func (r *reader) GetEndUser(_ context.Context, id string) (e store.EndUser, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		e, err = get[store.EndUser](tx, bucketEndUsers, "end user", id)
		return err
	})
	return e, err
}

func (r *reader) SpendHighWater(_ context.Context, proxyID, outboxID string) (hw uint64, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		hw = readHighWater(tx, proxyID, outboxID)
		return nil
	})
	return hw, err
}

// spendLight is the part of a spend log the filters look at.
type spendLight struct {
	TokenID   string    `json:"token_id"`
	RequestID string    `json:"request_id"`
	UserID    string    `json:"user_id"`
	TeamID    string    `json:"team_id"`
	EndUser   string    `json:"end_user"`
	StartTime time.Time `json:"start_time"`
}

// ListSpendLogs walks the logs newest first within the time bounds (a
// request id seeks its index instead) and decodes each to filter.
func (r *reader) ListSpendLogs(ctx context.Context, f store.SpendLogFilter) (logs []store.SpendLog, total int, err error) {
	p := f.Page.Normalize()
	lo, hi := p.Offset(), p.Offset()+p.Size
	match := func(v []byte) (bool, error) {
		var l spendLight
		if err := json.Unmarshal(v, &l); err != nil {
			return false, fmt.Errorf("embedded: decode spend log: %w", err)
		}
		return (f.TokenID == "" || l.TokenID == f.TokenID) && (f.RequestID == "" || l.RequestID == f.RequestID) &&
			(f.UserID == "" || l.UserID == f.UserID) && (f.TeamID == "" || l.TeamID == f.TeamID) &&
			(f.EndUser == "" || l.EndUser == f.EndUser) &&
			(f.Since.IsZero() || !l.StartTime.Before(f.Since)) && (f.Until.IsZero() || l.StartTime.Before(f.Until)), nil
	}
	err = r.view(func(tx *bolt.Tx) error {
		logs, total = []store.SpendLog{}, 0
		visit := func(v []byte) error {
			ok, err := match(v)
			if err != nil || !ok {
				return err
			}
			if total >= lo && total < hi {
				l, err := decode[store.SpendLog]("spend log", nil, v)
				if err != nil {
					return err
				}
				logs = append(logs, l)
			}
			total++
			return nil
		}
		return walkSpendLogs(ctx, tx, f, visit)
	})
	if err != nil {
		return nil, 0, err
	}
	return logs, total, nil
}

// walkSpendLogs calls visit with each log within f's time bounds, newest
// first (a request id seeks its index instead). visit filters the rest.
func walkSpendLogs(ctx context.Context, tx *bolt.Tx, f store.SpendLogFilter, visit func(v []byte) error) error {
	lb := tx.Bucket(bucketSpendLogs)
	if f.RequestID != "" {
		prefix := join([]byte(f.RequestID), []byte{0})
		var keys [][]byte
		c := tx.Bucket(bucketSpendReqs).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k[len(prefix):]))
		}
		for i := len(keys) - 1; i >= 0; i-- { // newest first
			if v := lb.Get(keys[i]); v != nil {
				if err := visit(v); err != nil {
					return err
				}
			}
		}
		return nil
	}
	c := lb.Cursor()
	var k, v []byte
	if f.Until.IsZero() {
		k, v = c.Last()
	} else if k, v = c.Seek(timeKey(f.Until)); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	var since []byte
	if !f.Since.IsZero() {
		since = timeKey(f.Since)
	}
	for n := 1; k != nil; k, v = c.Prev() {
		if n++; n%ctxEvery == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if since != nil && bytes.Compare(k, since) < 0 {
			break
		}
		if err := visit(v); err != nil {
			return err
		}
	}
	return nil
}

// spendSum is the part of a spend log a report reads.
type spendSum struct {
	spendLight
	Model            string `json:"model"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	Cost             int64  `json:"cost"`
}

// SpendReport sums the logs f matches per UTC day and group in one walk.
func (r *reader) SpendReport(ctx context.Context, f store.SpendLogFilter, by store.SpendGroup) ([]store.SpendDay, error) {
	if !by.Valid() {
		return nil, fmt.Errorf("embedded: unknown spend group %q", by)
	}
	type cell struct {
		day   int64
		group string
	}
	sums := map[cell]*store.SpendDay{}
	err := r.view(func(tx *bolt.Tx) error {
		return walkSpendLogs(ctx, tx, f, func(v []byte) error {
			var l spendSum
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("embedded: decode spend log: %w", err)
			}
			if (f.TokenID != "" && l.TokenID != f.TokenID) || (f.RequestID != "" && l.RequestID != f.RequestID) ||
				(f.UserID != "" && l.UserID != f.UserID) || (f.TeamID != "" && l.TeamID != f.TeamID) ||
				(f.EndUser != "" && l.EndUser != f.EndUser) ||
				(!f.Since.IsZero() && l.StartTime.Before(f.Since)) || (!f.Until.IsZero() && !l.StartTime.Before(f.Until)) {
				return nil
			}
			var g string
			switch by {
			case store.SpendByKey:
				g = l.TokenID
			case store.SpendByTeam:
				g = l.TeamID
			case store.SpendByUser:
				g = l.UserID
			case store.SpendByModel:
				g = l.Model
			case store.SpendByEndUser:
				g = l.EndUser
			}
			day := l.StartTime.UTC().Truncate(24 * time.Hour)
			k := cell{day.Unix(), g}
			d := sums[k]
			if d == nil {
				d = &store.SpendDay{Day: day, Group: g}
				sums[k] = d
			}
			d.Cost += l.Cost
			d.Requests++
			d.Tokens += l.PromptTokens + l.CompletionTokens
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]store.SpendDay, 0, len(sums))
	for _, d := range sums {
		out = append(out, *d)
	}
	store.SortSpendDays(out)
	return out, nil
}
