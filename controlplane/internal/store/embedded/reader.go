package embedded

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// reader implements store.Reader. view runs a function in a read
// transaction: a new one per call for Store.Read, the enclosing one in a
// snapshot or read-write transaction.
type reader struct {
	view func(func(*bolt.Tx) error) error
}

var _ store.Reader = (*reader)(nil)

// eachBatch is how many entities Each* decodes per read: enough that a
// million keys take a thousand seeks, few enough to bound memory.
const eachBatch = 1000

// ctxEvery is how many entries a scan walks between context checks.
const ctxEvery = 4096

// decode unmarshals a stored entity.
func decode[T any](kind string, id, v []byte) (T, error) {
	var x T
	if err := store.DecodeJSON(v, &x); err != nil {
		return x, fmt.Errorf("embedded: decode %s %q: %w", kind, id, err)
	}
	return x, nil
}

// get reads and decodes the entity id of a primary bucket.
func get[T any](tx *bolt.Tx, bucket []byte, kind, id string) (T, error) {
	var zero T
	if id == "" {
		return zero, store.ErrNotFound
	}
	v := tx.Bucket(bucket).Get([]byte(id))
	if v == nil {
		return zero, store.ErrNotFound
	}
	return decode[T](kind, []byte(id), v)
}

// getVia reads the entity whose id an index bucket maps key to.
func getVia[T any](tx *bolt.Tx, index, bucket []byte, kind, key string) (T, error) {
	var zero T
	if key == "" {
		return zero, store.ErrNotFound
	}
	id := tx.Bucket(index).Get([]byte(key))
	if id == nil {
		return zero, store.ErrNotFound
	}
	return get[T](tx, bucket, kind, string(id))
}

func (r *reader) GetKey(_ context.Context, tokenID string) (k store.Key, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		k, err = get[store.Key](tx, bucketKeys, store.KindKey, tokenID)
		return err
	})
	return k, err
}

func (r *reader) GetKeyByHash(_ context.Context, keyHash string) (k store.Key, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		k, err = getVia[store.Key](tx, bucketKeysHash, bucketKeys, store.KindKey, keyHash)
		return err
	})
	return k, err
}

func (r *reader) GetKeyByAlias(_ context.Context, alias string) (k store.Key, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		k, err = getVia[store.Key](tx, bucketKeysAlias, bucketKeys, store.KindKey, alias)
		return err
	})
	return k, err
}

// ListKeys walks the most selective index: the alias (one key), else the
// user, team or organization index, else creation order. Filters the index
// does not answer are checked on the decoded keys.
func (r *reader) ListKeys(ctx context.Context, f store.KeyFilter) (keys []store.Key, total int, err error) {
	match := func(k *store.Key) bool {
		return (f.UserID == "" || k.UserID == f.UserID) &&
			(f.TeamID == "" || k.TeamID == f.TeamID) &&
			(f.OrganizationID == "" || k.OrganizationID == f.OrganizationID) &&
			(f.KeyAlias == "" || k.KeyAlias == f.KeyAlias)
	}
	err = r.view(func(tx *bolt.Tx) error {
		if f.KeyAlias != "" {
			k, err := getVia[store.Key](tx, bucketKeysAlias, bucketKeys, store.KindKey, f.KeyAlias)
			if errors.Is(err, store.ErrNotFound) || (err == nil && !match(&k)) {
				keys = []store.Key{}
				return nil
			}
			if err != nil {
				return err
			}
			total = 1
			keys = []store.Key{}
			if f.Page.Offset() == 0 {
				keys = append(keys, k)
			}
			return nil
		}
		idx, prefix := bucketKeysCreated, []byte(nil)
		switch {
		case f.UserID != "":
			idx, prefix = bucketKeysUser, lp(f.UserID)
		case f.TeamID != "":
			idx, prefix = bucketKeysTeam, lp(f.TeamID)
		case f.OrganizationID != "":
			idx, prefix = bucketKeysOrg, lp(f.OrganizationID)
		}
		// One filter is answered by its index; with more, the others are
		// checked on the decoded keys.
		var m func(*store.Key) bool
		if nonEmpty(f.UserID, f.TeamID, f.OrganizationID) > 1 {
			m = match
		}
		keys, total, err = list(ctx, tx, idx, prefix, bucketKeys, store.KindKey, m, f.Page)
		return err
	})
	return keys, total, err
}

func nonEmpty(ss ...string) int {
	n := 0
	for _, s := range ss {
		if s != "" {
			n++
		}
	}
	return n
}

// list returns one page of the entities whose creation-order keys are
// under prefix in idx (key = prefix + timeKey + id), with the number of
// matches. With a nil match only the page is decoded.
func list[T any](ctx context.Context, tx *bolt.Tx, idx, prefix, bucket []byte, kind string,
	match func(*T) bool, p store.Page) ([]T, int, error) {
	p = p.Normalize()
	lo, hi := p.Offset(), p.Offset()+p.Size
	items := []T{}
	total := 0
	primary := tx.Bucket(bucket)
	c := tx.Bucket(idx).Cursor()
	n := 0
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if n++; n%ctxEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
		}
		if len(k) < len(prefix)+timeKeyLen {
			return nil, 0, fmt.Errorf("embedded: malformed %s index entry", kind)
		}
		if match == nil && (total < lo || total >= hi) {
			total++
			continue
		}
		id := k[len(prefix)+timeKeyLen:]
		v := primary.Get(id)
		if v == nil {
			return nil, 0, fmt.Errorf("embedded: %s index names missing %s %q", idx, kind, id)
		}
		x, err := decode[T](kind, id, v)
		if err != nil {
			return nil, 0, err
		}
		if match != nil && !match(&x) {
			continue
		}
		if total >= lo && total < hi {
			items = append(items, x)
		}
		total++
	}
	return items, total, nil
}

func (r *reader) GetTeam(_ context.Context, teamID string) (t store.Team, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		t, err = get[store.Team](tx, bucketTeams, store.KindTeam, teamID)
		return err
	})
	return t, err
}

// ListTeams scans teams in creation order (teams are few).
func (r *reader) ListTeams(ctx context.Context, f store.TeamFilter) (teams []store.Team, total int, err error) {
	var match func(*store.Team) bool
	if f.OrganizationID != "" || f.UserID != "" {
		match = func(t *store.Team) bool {
			if f.OrganizationID != "" && t.OrganizationID != f.OrganizationID {
				return false
			}
			if f.UserID != "" {
				if _, ok := t.Member(f.UserID); !ok {
					return false
				}
			}
			return true
		}
	}
	err = r.view(func(tx *bolt.Tx) error {
		teams, total, err = list(ctx, tx, bucketTeamsCreated, nil, bucketTeams, store.KindTeam, match, f.Page)
		return err
	})
	return teams, total, err
}

func (r *reader) GetUser(_ context.Context, userID string) (u store.User, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		u, err = get[store.User](tx, bucketUsers, store.KindUser, userID)
		return err
	})
	return u, err
}

// ListUsers scans users in creation order; the team filter uses the team's
// member list.
func (r *reader) ListUsers(ctx context.Context, f store.UserFilter) (users []store.User, total int, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		var members map[string]bool
		if f.TeamID != "" {
			t, err := get[store.Team](tx, bucketTeams, store.KindTeam, f.TeamID)
			if errors.Is(err, store.ErrNotFound) {
				users = []store.User{}
				return nil
			}
			if err != nil {
				return err
			}
			members = make(map[string]bool, len(t.Members))
			for _, m := range t.Members {
				members[m.UserID] = true
			}
		}
		var match func(*store.User) bool
		if f.UserRole != "" || members != nil || f.UserEmail != "" {
			match = func(u *store.User) bool {
				return (f.UserRole == "" || u.UserRole == f.UserRole) && (members == nil || members[u.UserID]) &&
					(f.UserEmail == "" || u.UserEmail == f.UserEmail)
			}
		}
		users, total, err = list(ctx, tx, bucketUsersCreated, nil, bucketUsers, store.KindUser, match, f.Page)
		return err
	})
	return users, total, err
}

func (r *reader) GetOrganization(_ context.Context, orgID string) (o store.Organization, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		o, err = get[store.Organization](tx, bucketOrgs, store.KindOrganization, orgID)
		return err
	})
	return o, err
}

func (r *reader) ListOrganizations(ctx context.Context, p store.Page) (orgs []store.Organization, total int, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		orgs, total, err = list[store.Organization](ctx, tx, bucketOrgsCreated, nil, bucketOrgs, store.KindOrganization, nil, p)
		return err
	})
	return orgs, total, err
}

func (r *reader) GetModel(_ context.Context, id string) (m store.Model, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		m, err = get[store.Model](tx, bucketModels, store.KindModel, id)
		return err
	})
	return m, err
}

// ListModels returns every model ordered by model_name, then id.
func (r *reader) ListModels(_ context.Context) (models []store.Model, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		models = []store.Model{}
		return tx.Bucket(bucketModels).ForEach(func(k, v []byte) error {
			m, err := decode[store.Model](store.KindModel, k, v)
			if err != nil {
				return err
			}
			models = append(models, m)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(models, func(a, b store.Model) int {
		if c := strings.Compare(a.ModelName, b.ModelName); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return models, nil
}

// GetSettings returns the zero Settings when none were saved.
func (r *reader) GetSettings(_ context.Context) (s store.Settings, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketSettings).Get(settingsKey)
		if v == nil {
			s = store.Settings{}
			return nil
		}
		s, err = decode[store.Settings](store.KindSettings, settingsKey, v)
		return err
	})
	return s, err
}

func (r *reader) EachKey(ctx context.Context, fn func(store.Key) error) error {
	return each(ctx, r, bucketKeys, store.KindKey, fn)
}

func (r *reader) EachTeam(ctx context.Context, fn func(store.Team) error) error {
	return each(ctx, r, bucketTeams, store.KindTeam, fn)
}

func (r *reader) EachUser(ctx context.Context, fn func(store.User) error) error {
	return each(ctx, r, bucketUsers, store.KindUser, fn)
}

func (r *reader) EachOrganization(ctx context.Context, fn func(store.Organization) error) error {
	return each(ctx, r, bucketOrgs, store.KindOrganization, fn)
}

// each decodes a primary bucket eachBatch entities at a time, in id order,
// and calls fn outside the cursor walk, so that fn may read (or, in a
// read-write transaction, write) through the same reader. On Store.Read
// every batch is its own read transaction: entities written during the
// iteration may or may not be seen; in a snapshot the view is fixed.
// Decoding JSON is most of the cost of a snapshot, so a batch is decoded
// on every CPU.
func each[T any](ctx context.Context, r *reader, bucket []byte, kind string, fn func(T) error) error {
	batch := make([]T, eachBatch)
	n := 0
	err := eachRaw(ctx, r, bucket, func(raw [][2][]byte) error {
		// raw points into the mmap: decode before the view ends.
		n = len(raw)
		return decodeBatch(kind, raw, batch[:n])
	}, func() error {
		for i := range n {
			if err := fn(batch[i]); err != nil {
				return err
			}
			var zero T
			batch[i] = zero // let the GC have what fn did not keep
		}
		return nil
	})
	return err
}

// EachKeyDocs copies each batch of documents out of the view before fn
// runs (fn may write through the store: a read transaction held open
// meanwhile could block the write's remap).
func (r *reader) EachKeyDocs(ctx context.Context, fn func(docs [][]byte) error) error {
	var arena []byte
	var ends []int
	var docs [][]byte
	return eachRaw(ctx, r, bucketKeys, func(raw [][2][]byte) error {
		arena, ends = arena[:0], ends[:0]
		for _, kv := range raw {
			arena = append(arena, kv[1]...)
			ends = append(ends, len(arena))
		}
		return nil
	}, func() error {
		// Slices are taken once the arena stopped growing.
		docs = docs[:0]
		start := 0
		for _, end := range ends {
			docs = append(docs, arena[start:end:end])
			start = end
		}
		return fn(docs)
	})
}

// eachRaw walks a primary bucket eachBatch entries at a time, in id order:
// in the view it calls in with the batch's entries (pointing into the
// mmap, valid only during in), then out outside the view. It stops after
// the first batch shorter than eachBatch; empty batches are never passed.
func eachRaw(ctx context.Context, r *reader, bucket []byte, in func(raw [][2][]byte) error, out func() error) error {
	var after []byte
	raw := make([][2][]byte, 0, eachBatch)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := 0
		err := r.view(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucket).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			raw = raw[:0]
			for ; k != nil && len(raw) < eachBatch; k, v = c.Next() {
				raw = append(raw, [2][]byte{k, v})
			}
			if len(raw) == 0 {
				return nil
			}
			n = len(raw)
			after = bytes.Clone(raw[n-1][0])
			return in(raw)
		})
		if err != nil {
			return err
		}
		if n > 0 {
			if err := out(); err != nil {
				return err
			}
		}
		if n < eachBatch {
			return nil
		}
	}
}

// decodeBatch decodes raw[i] into out[i], split across up to GOMAXPROCS
// goroutines for large batches.
func decodeBatch[T any](kind string, raw [][2][]byte, out []T) error {
	workers := min(runtime.GOMAXPROCS(0), 8, len(raw)/64)
	if workers <= 1 {
		return decodeRange(kind, raw, out)
	}
	errs := make([]error, workers)
	var wg sync.WaitGroup
	per := (len(raw) + workers - 1) / workers
	for w := range workers {
		lo, hi := w*per, min((w+1)*per, len(raw))
		wg.Go(func() { errs[w] = decodeRange(kind, raw[lo:hi], out[lo:hi]) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func decodeRange[T any](kind string, raw [][2][]byte, out []T) error {
	for i, kv := range raw {
		var x T
		if err := store.DecodeJSON(kv[1], &x); err != nil {
			return fmt.Errorf("embedded: decode %s %q: %w", kind, kv[0], err)
		}
		out[i] = x
	}
	return nil
}

// auditLight is the part of an audit entry the filters look at.
type auditLight struct {
	ObjectType string `json:"object_type"`
	ObjectID   string `json:"object_id"`
	Caller     string `json:"caller"`
}

// ListAudit returns entries newest first. Since is inclusive and Until
// exclusive (as in the Postgres backend). The time bounds seek; the other
// filters decode each entry in range.
func (r *reader) ListAudit(ctx context.Context, f store.AuditFilter) (entries []store.AuditEntry, total int, err error) {
	p := f.Page.Normalize()
	lo, hi := p.Offset(), p.Offset()+p.Size
	filtered := f.ObjectType != "" || f.ObjectID != "" || f.Caller != ""
	var since []byte
	if !f.Since.IsZero() {
		since = timeKey(f.Since)
	}
	err = r.view(func(tx *bolt.Tx) error {
		entries, total = []store.AuditEntry{}, 0
		c := tx.Bucket(bucketAudit).Cursor()
		var k, v []byte
		if f.Until.IsZero() {
			k, v = c.Last()
		} else if k, v = c.Seek(timeKey(f.Until)); k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
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
			if filtered {
				var a auditLight
				if err := json.Unmarshal(v, &a); err != nil {
					return fmt.Errorf("embedded: decode audit entry: %w", err)
				}
				if (f.ObjectType != "" && a.ObjectType != f.ObjectType) ||
					(f.ObjectID != "" && a.ObjectID != f.ObjectID) ||
					(f.Caller != "" && a.Caller != f.Caller) {
					continue
				}
			}
			if total >= lo && total < hi {
				e, err := decode[store.AuditEntry]("audit entry", nil, v)
				if err != nil {
					return err
				}
				entries = append(entries, e)
			}
			total++
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return entries, total, nil
}
