package embedded

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// tx implements store.Tx on a bbolt write transaction. Every method checks
// everything that can fail (existence, uniqueness, encoding) before its
// first write, so a method that returns an error changed nothing and the
// callback may go on.
type tx struct {
	reader
	btx     *bolt.Tx
	changes []store.Change
	index   map[changeKey]int // position of each entity in changes
	// broken is set when a bbolt write failed half-way; the transaction
	// then refuses to commit.
	broken error
	done   atomic.Bool
}

var _ store.Tx = (*tx)(nil)

// changeKey identifies an entity in a transaction's change set.
type changeKey struct{ kind, id string }

var errTxDone = errors.New("embedded: transaction used after its callback returned")

func newTx(btx *bolt.Tx) *tx {
	t := &tx{btx: btx, index: make(map[changeKey]int)}
	t.view = func(f func(*bolt.Tx) error) error {
		if err := t.check(); err != nil {
			return err
		}
		return f(btx)
	}
	return t
}

// check guards every method against use after the callback returned (the
// bbolt transaction is gone by then) and after a failed write.
func (t *tx) check() error {
	if t.done.Load() {
		return errTxDone
	}
	return t.broken
}

// record adds a change; a later write of the same entity replaces the
// earlier one, so the change set holds each entity once, in its final state.
func (t *tx) record(kind, id, op string, data []byte) {
	c := store.Change{Kind: kind, ID: id, Op: op}
	if op == store.OpPut {
		c.Data = json.RawMessage(data)
	}
	k := changeKey{kind, id}
	if i, ok := t.index[k]; ok {
		t.changes[i] = c
		return
	}
	t.index[k] = len(t.changes)
	t.changes = append(t.changes, c)
}

func (t *tx) fail(err error) error {
	if t.broken == nil {
		t.broken = fmt.Errorf("embedded: write failed, transaction aborted: %w", err)
	}
	return t.broken
}

func (t *tx) put(bucket, k, v []byte) error {
	if err := t.btx.Bucket(bucket).Put(k, v); err != nil {
		return t.fail(err)
	}
	return nil
}

func (t *tx) del(bucket, k []byte) error {
	if err := t.btx.Bucket(bucket).Delete(k); err != nil {
		return t.fail(err)
	}
	return nil
}

// maxFieldLen bounds ids and indexed fields: bbolt keys are at most 32 KiB
// and an index key holds two of them.
const maxFieldLen = 8 << 10

// checkFields rejects fields bbolt cannot index: an empty required id, or
// anything longer than maxFieldLen. pairs alternate name, value; a name
// starting with '*' is required.
func checkFields(kind string, pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		name, v := pairs[i], pairs[i+1]
		if name[0] == '*' {
			name = name[1:]
			if v == "" {
				return fmt.Errorf("embedded: %s without %s", kind, name)
			}
		}
		if len(v) > maxFieldLen {
			return fmt.Errorf("embedded: %s %s longer than %d bytes", kind, name, maxFieldLen)
		}
	}
	return nil
}

func marshal(kind string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("embedded: encode %s: %w", kind, err)
	}
	return b, nil
}

var empty = []byte{}

// ---- keys

func (t *tx) CreateKey(_ context.Context, k store.Key) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkKey(&k); err != nil {
		return err
	}
	doc, err := marshal(store.KindKey, k)
	if err != nil {
		return err
	}
	switch {
	case t.btx.Bucket(bucketKeysHash).Get([]byte(k.KeyHash)) != nil:
		return &store.ConflictError{Field: "key"}
	case k.KeyAlias != "" && t.btx.Bucket(bucketKeysAlias).Get([]byte(k.KeyAlias)) != nil:
		return &store.ConflictError{Field: "key_alias"}
	case t.btx.Bucket(bucketKeys).Get([]byte(k.TokenID)) != nil:
		return &store.ConflictError{Field: "token_id"}
	}
	if err := t.writeKey(&k, doc); err != nil {
		return err
	}
	t.record(store.KindKey, k.TokenID, store.OpPut, doc)
	return nil
}

func checkKey(k *store.Key) error {
	return checkFields(store.KindKey, "*token_id", k.TokenID, "*key_hash", k.KeyHash, "key_alias", k.KeyAlias,
		"user_id", k.UserID, "team_id", k.TeamID, "organization_id", k.OrganizationID)
}

func (t *tx) UpdateKey(_ context.Context, k store.Key) error {
	if err := t.check(); err != nil {
		return err
	}
	old, err := get[store.Key](t.btx, bucketKeys, store.KindKey, k.TokenID)
	if err != nil {
		return err
	}
	if err := checkKey(&k); err != nil {
		return err
	}
	doc, err := marshal(store.KindKey, k)
	if err != nil {
		return err
	}
	if owner := t.btx.Bucket(bucketKeysHash).Get([]byte(k.KeyHash)); owner != nil && string(owner) != k.TokenID {
		return &store.ConflictError{Field: "key"}
	}
	if k.KeyAlias != "" {
		if owner := t.btx.Bucket(bucketKeysAlias).Get([]byte(k.KeyAlias)); owner != nil && string(owner) != k.TokenID {
			return &store.ConflictError{Field: "key_alias"}
		}
	}
	if err := t.unindexKey(&old); err != nil {
		return err
	}
	if err := t.writeKey(&k, doc); err != nil {
		return err
	}
	t.record(store.KindKey, k.TokenID, store.OpPut, doc)
	return nil
}

// keyIndexes lists the index entries of k: bucket, key, value.
func keyIndexes(k *store.Key) [][3][]byte {
	id := []byte(k.TokenID)
	ord := orderKey(k.CreatedAt, k.TokenID)
	ix := [][3][]byte{
		{bucketKeysHash, []byte(k.KeyHash), id},
		{bucketKeysCreated, ord, empty},
	}
	if k.KeyAlias != "" {
		ix = append(ix, [3][]byte{bucketKeysAlias, []byte(k.KeyAlias), id})
	}
	if k.UserID != "" {
		ix = append(ix, [3][]byte{bucketKeysUser, join(lp(k.UserID), ord), empty})
	}
	if k.TeamID != "" {
		ix = append(ix, [3][]byte{bucketKeysTeam, join(lp(k.TeamID), ord), empty})
	}
	if k.OrganizationID != "" {
		ix = append(ix, [3][]byte{bucketKeysOrg, join(lp(k.OrganizationID), ord), empty})
	}
	if k.AutoRotate && k.KeyRotationAt != nil {
		ix = append(ix, [3][]byte{bucketKeysRotation, join(timeKey(*k.KeyRotationAt), id), empty})
	}
	if k.BudgetResetAt != nil {
		ix = append(ix, [3][]byte{bucketBudgetResets, resetKey(*k.BudgetResetAt, store.KindKey, k.TokenID), empty})
	}
	return ix
}

// writeKey stores k and its index entries.
func (t *tx) writeKey(k *store.Key, doc []byte) error {
	if err := t.put(bucketKeys, []byte(k.TokenID), doc); err != nil {
		return err
	}
	for _, ix := range keyIndexes(k) {
		if err := t.put(ix[0], ix[1], ix[2]); err != nil {
			return err
		}
	}
	return nil
}

// unindexKey removes the index entries of the stored key k.
func (t *tx) unindexKey(k *store.Key) error {
	for _, ix := range keyIndexes(k) {
		if err := t.del(ix[0], ix[1]); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) DeleteKey(_ context.Context, tokenID string) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.deleteKey(tokenID, nil)
}

// deleteKey deletes a key and records its tombstone. skip, when set, may
// decline the deletion after seeing the key.
func (t *tx) deleteKey(tokenID string, skip func(*store.Key) bool) error {
	k, err := get[store.Key](t.btx, bucketKeys, store.KindKey, tokenID)
	if err != nil {
		return err
	}
	if skip != nil && skip(&k) {
		return nil
	}
	if err := t.unindexKey(&k); err != nil {
		return err
	}
	if err := t.del(bucketKeys, []byte(tokenID)); err != nil {
		return err
	}
	t.record(store.KindKey, tokenID, store.OpDelete, nil)
	return nil
}

// keyIDsUnder returns the token ids of an owner index (user, team or org)
// under value, collected before any of them is changed.
func (t *tx) keyIDsUnder(index []byte, value string) []string {
	prefix := lp(value)
	var ids []string
	c := t.btx.Bucket(index).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) > len(prefix)+timeKeyLen {
			ids = append(ids, string(k[len(prefix)+timeKeyLen:]))
		}
	}
	return ids
}

// ---- teams, users, organizations, models: one primary bucket, and a
// creation-order index for the listed kinds.

type entity struct {
	kind    string
	field   string // the id's name in conflicts
	bucket  []byte
	created []byte // creation-order index, nil when not listed in order
}

var (
	teamEntity  = entity{store.KindTeam, "team_id", bucketTeams, bucketTeamsCreated}
	userEntity  = entity{store.KindUser, "user_id", bucketUsers, bucketUsersCreated}
	orgEntity   = entity{store.KindOrganization, "organization_id", bucketOrgs, bucketOrgsCreated}
	modelEntity = entity{store.KindModel, "id", bucketModels, nil}
)

// createdAt is what update and delete need from a stored entity.
type createdAt struct {
	CreatedAt     time.Time  `json:"created_at"`
	BudgetResetAt *time.Time `json:"budget_reset_at"`
}

// budgetResetOf is the budget_reset_at of a team, user or organization.
func budgetResetOf(v any) *time.Time {
	switch x := v.(type) {
	case store.Team:
		return x.BudgetResetAt
	case store.User:
		return x.BudgetResetAt
	case store.Organization:
		return x.BudgetResetAt
	}
	return nil
}

func (t *tx) create(e entity, id string, created time.Time, v any) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields(e.kind, "*"+e.field, id); err != nil {
		return err
	}
	doc, err := marshal(e.kind, v)
	if err != nil {
		return err
	}
	if t.btx.Bucket(e.bucket).Get([]byte(id)) != nil {
		return &store.ConflictError{Field: e.field}
	}
	if err := t.write(e, id, created, budgetResetOf(v), doc); err != nil {
		return err
	}
	t.record(e.kind, id, store.OpPut, doc)
	return nil
}

func (t *tx) update(e entity, id string, created time.Time, v any) error {
	if err := t.check(); err != nil {
		return err
	}
	old, err := get[createdAt](t.btx, e.bucket, e.kind, id)
	if err != nil {
		return err
	}
	doc, err := marshal(e.kind, v)
	if err != nil {
		return err
	}
	if e.created != nil && !old.CreatedAt.Equal(created) {
		if err := t.del(e.created, orderKey(old.CreatedAt, id)); err != nil {
			return err
		}
	}
	if old.BudgetResetAt != nil {
		if err := t.del(bucketBudgetResets, resetKey(*old.BudgetResetAt, e.kind, id)); err != nil {
			return err
		}
	}
	if err := t.write(e, id, created, budgetResetOf(v), doc); err != nil {
		return err
	}
	t.record(e.kind, id, store.OpPut, doc)
	return nil
}

func (t *tx) write(e entity, id string, created time.Time, reset *time.Time, doc []byte) error {
	if err := t.put(e.bucket, []byte(id), doc); err != nil {
		return err
	}
	if reset != nil {
		if err := t.put(bucketBudgetResets, resetKey(*reset, e.kind, id), empty); err != nil {
			return err
		}
	}
	if e.created != nil {
		return t.put(e.created, orderKey(created, id), empty)
	}
	return nil
}

func (t *tx) remove(e entity, id string) error {
	if err := t.check(); err != nil {
		return err
	}
	old, err := get[createdAt](t.btx, e.bucket, e.kind, id)
	if err != nil {
		return err
	}
	if e.created != nil {
		if err := t.del(e.created, orderKey(old.CreatedAt, id)); err != nil {
			return err
		}
	}
	if old.BudgetResetAt != nil {
		if err := t.del(bucketBudgetResets, resetKey(*old.BudgetResetAt, e.kind, id)); err != nil {
			return err
		}
	}
	if err := t.del(e.bucket, []byte(id)); err != nil {
		return err
	}
	t.record(e.kind, id, store.OpDelete, nil)
	return nil
}

// scan decodes every entity of a primary bucket that match accepts
// (collected first, so the caller may then rewrite them).
func scan[T any](t *tx, e entity, match func(*T) bool) ([]T, error) {
	var out []T
	err := t.btx.Bucket(e.bucket).ForEach(func(k, v []byte) error {
		x, err := decode[T](e.kind, k, v)
		if err != nil {
			return err
		}
		if match(&x) {
			out = append(out, x)
		}
		return nil
	})
	return out, err
}

func (t *tx) CreateTeam(_ context.Context, tm store.Team) error {
	return t.create(teamEntity, tm.TeamID, tm.CreatedAt, tm)
}

func (t *tx) UpdateTeam(_ context.Context, tm store.Team) error {
	return t.update(teamEntity, tm.TeamID, tm.CreatedAt, tm)
}

// DeleteTeam deletes the team and every key of it, service-account keys
// included.
func (t *tx) DeleteTeam(_ context.Context, teamID string) error {
	if err := t.remove(teamEntity, teamID); err != nil {
		return err
	}
	for _, id := range t.keyIDsUnder(bucketKeysTeam, teamID) {
		if err := t.deleteKey(id, nil); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) CreateUser(_ context.Context, u store.User) error {
	return t.create(userEntity, u.UserID, u.CreatedAt, u)
}

func (t *tx) UpdateUser(_ context.Context, u store.User) error {
	return t.update(userEntity, u.UserID, u.CreatedAt, u)
}

// DeleteUser deletes the user, its keys (never service-account keys) and its
// team and organization memberships, recording every entity it changes.
// Teams and organizations are scanned: they are few.
func (t *tx) DeleteUser(_ context.Context, userID string) error {
	if err := t.remove(userEntity, userID); err != nil {
		return err
	}
	for _, id := range t.keyIDsUnder(bucketKeysUser, userID) {
		if err := t.deleteKey(id, func(k *store.Key) bool { return k.ServiceAccount }); err != nil {
			return err
		}
	}
	teams, err := scan(t, teamEntity, func(tm *store.Team) bool { _, ok := tm.Member(userID); return ok })
	if err != nil {
		return err
	}
	for _, tm := range teams {
		tm.Members = removeMember(tm.Members, func(m store.TeamMember) bool { return m.UserID == userID })
		if err := t.update(teamEntity, tm.TeamID, tm.CreatedAt, tm); err != nil {
			return err
		}
	}
	orgs, err := scan(t, orgEntity, func(o *store.Organization) bool {
		for _, m := range o.Members {
			if m.UserID == userID {
				return true
			}
		}
		return false
	})
	if err != nil {
		return err
	}
	for _, o := range orgs {
		o.Members = removeMember(o.Members, func(m store.OrgMember) bool { return m.UserID == userID })
		if err := t.update(orgEntity, o.OrganizationID, o.CreatedAt, o); err != nil {
			return err
		}
	}
	return nil
}

// removeMember returns ms without the members drop matches (nil when none
// remain, as a decoded empty list would be).
func removeMember[M any](ms []M, drop func(M) bool) []M {
	var out []M
	for _, m := range ms {
		if !drop(m) {
			out = append(out, m)
		}
	}
	return out
}

func (t *tx) CreateOrganization(_ context.Context, o store.Organization) error {
	return t.create(orgEntity, o.OrganizationID, o.CreatedAt, o)
}

func (t *tx) UpdateOrganization(_ context.Context, o store.Organization) error {
	return t.update(orgEntity, o.OrganizationID, o.CreatedAt, o)
}

// DeleteOrganization deletes the organization and clears organization_id on
// its teams and keys, recording each of them.
func (t *tx) DeleteOrganization(_ context.Context, orgID string) error {
	if err := t.remove(orgEntity, orgID); err != nil {
		return err
	}
	teams, err := scan(t, teamEntity, func(tm *store.Team) bool { return tm.OrganizationID == orgID })
	if err != nil {
		return err
	}
	for _, tm := range teams {
		tm.OrganizationID = ""
		if err := t.update(teamEntity, tm.TeamID, tm.CreatedAt, tm); err != nil {
			return err
		}
	}
	for _, id := range t.keyIDsUnder(bucketKeysOrg, orgID) {
		k, err := get[store.Key](t.btx, bucketKeys, store.KindKey, id)
		if err != nil {
			return err
		}
		old := k
		k.OrganizationID = ""
		doc, err := marshal(store.KindKey, k)
		if err != nil {
			return err
		}
		if err := t.unindexKey(&old); err != nil {
			return err
		}
		if err := t.writeKey(&k, doc); err != nil {
			return err
		}
		t.record(store.KindKey, id, store.OpPut, doc)
	}
	return nil
}

func (t *tx) CreateModel(_ context.Context, m store.Model) error {
	return t.create(modelEntity, m.ID, m.CreatedAt, m)
}

func (t *tx) UpdateModel(_ context.Context, m store.Model) error {
	return t.update(modelEntity, m.ID, m.CreatedAt, m)
}

func (t *tx) DeleteModel(_ context.Context, id string) error {
	return t.remove(modelEntity, id)
}

// ---- settings and audit

func (t *tx) PutSettings(_ context.Context, s store.Settings) error {
	if err := t.check(); err != nil {
		return err
	}
	doc, err := marshal(store.KindSettings, s)
	if err != nil {
		return err
	}
	if err := t.put(bucketSettings, settingsKey, doc); err != nil {
		return err
	}
	t.record(store.KindSettings, SettingsID, store.OpPut, doc)
	return nil
}

// AppendAudit stores the entry under its creation time and a sequence
// number (ties keep insertion order). No change record: audit rows are not
// synced to data planes.
func (t *tx) AppendAudit(_ context.Context, e store.AuditEntry) error {
	if err := t.check(); err != nil {
		return err
	}
	if e.ID == "" {
		var b [16]byte
		if _, err := crand.Read(b[:]); err != nil {
			return err
		}
		e.ID = hex.EncodeToString(b[:])
	}
	if err := checkFields("audit entry", "id", e.ID); err != nil {
		return err
	}
	doc, err := marshal("audit entry", e)
	if err != nil {
		return err
	}
	if t.btx.Bucket(bucketAuditIDs).Get([]byte(e.ID)) != nil {
		return &store.ConflictError{Field: "id"}
	}
	audit := t.btx.Bucket(bucketAudit)
	seq, err := audit.NextSequence()
	if err != nil {
		return t.fail(err)
	}
	key := join(timeKey(e.CreatedAt), u64(seq))
	if err := t.put(bucketAudit, key, doc); err != nil {
		return err
	}
	return t.put(bucketAuditIDs, []byte(e.ID), key)
}
