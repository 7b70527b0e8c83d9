package litellmimport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/api"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Counts are what an import did (or would do) to one kind of object.
type Counts struct {
	Created, Updated, Unchanged int
}

// Result is an import's outcome per kind (store.Kind* names).
type Result struct {
	Kinds map[string]*Counts
	// Notes are per-object adjustments made against the existing store.
	Notes []string
}

func (r *Result) count(kind string) *Counts {
	c := r.Kinds[kind]
	if c == nil {
		c = &Counts{}
		r.Kinds[kind] = c
	}
	return c
}

// Totals sums the counts over every kind.
func (r *Result) Totals() Counts {
	var t Counts
	for _, c := range r.Kinds {
		t.Created += c.Created
		t.Updated += c.Updated
		t.Unchanged += c.Unchanged
	}
	return t
}

// Apply writes the plan to st in one transaction. With dryRun it only reads
// and reports what it would do. Objects equal to what the store holds are
// left alone, so a second import changes nothing.
func Apply(ctx context.Context, st store.Store, p *Plan, dryRun bool, now time.Time) (*Result, error) {
	now = now.UTC().Truncate(time.Microsecond)
	if dryRun {
		return apply(ctx, st.Read(), nil, p, now)
	}
	var res *Result
	err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		var err error
		res, err = apply(ctx, tx, tx, p, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// apply compares each planned object with r and, when w is not nil, writes
// the differences.
func apply(ctx context.Context, r store.Reader, w store.Tx, p *Plan, now time.Time) (*Result, error) {
	res := &Result{Kinds: map[string]*Counts{}}
	for _, o := range p.Organizations {
		old, err := r.GetOrganization(ctx, o.OrganizationID)
		if err := step(res, store.KindOrganization, err, func() bool {
			o.Spend, o.Limits = keepProgress(old.Spend, o.Spend, old.Limits, o.Limits)
			o.CreatedAt, o.UpdatedAt = old.CreatedAt, old.UpdatedAt
			return same(normOrg(old), normOrg(o))
		}, func(create bool) error {
			if w == nil {
				return nil
			}
			if create {
				return w.CreateOrganization(ctx, o)
			}
			o.UpdatedAt = now
			return w.UpdateOrganization(ctx, o)
		}); err != nil {
			return nil, fmt.Errorf("organization %s: %w", o.OrganizationID, err)
		}
	}
	for _, t := range p.Teams {
		old, err := r.GetTeam(ctx, t.TeamID)
		if err := step(res, store.KindTeam, err, func() bool {
			t.Spend, t.Limits = keepProgress(old.Spend, t.Spend, old.Limits, t.Limits)
			for i := range t.Members {
				if om, ok := old.Member(t.Members[i].UserID); ok && om.Spend > t.Members[i].Spend {
					t.Members[i].Spend = om.Spend
				}
			}
			t.CreatedAt, t.UpdatedAt = old.CreatedAt, old.UpdatedAt
			return same(normTeam(old), normTeam(t))
		}, func(create bool) error {
			if w == nil {
				return nil
			}
			if create {
				return w.CreateTeam(ctx, t)
			}
			t.UpdatedAt = now
			return w.UpdateTeam(ctx, t)
		}); err != nil {
			return nil, fmt.Errorf("team %s: %w", t.TeamID, err)
		}
	}
	for _, u := range p.Users {
		old, err := r.GetUser(ctx, u.UserID)
		if err := step(res, store.KindUser, err, func() bool {
			u.Spend, u.Limits = keepProgress(old.Spend, u.Spend, old.Limits, u.Limits)
			u.CreatedAt, u.UpdatedAt = old.CreatedAt, old.UpdatedAt
			return same(normUser(old), normUser(u))
		}, func(create bool) error {
			if w == nil {
				return nil
			}
			if create {
				return w.CreateUser(ctx, u)
			}
			u.UpdatedAt = now
			return w.UpdateUser(ctx, u)
		}); err != nil {
			return nil, fmt.Errorf("user %s: %w", u.UserID, err)
		}
	}
	// One pass over the existing keys instead of two lookups per imported
	// key (LiteLLM databases hold many thousands).
	byHash := map[string]store.Key{}
	aliasOwner := map[string]string{}
	if len(p.Keys) > 0 {
		if err := r.EachKey(ctx, func(k store.Key) error {
			byHash[k.KeyHash] = k
			if k.KeyAlias != "" {
				aliasOwner[k.KeyAlias] = k.TokenID
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	for _, k := range p.Keys {
		old, found := byHash[k.KeyHash]
		err := store.ErrNotFound
		if found {
			err = nil
			k.TokenID = old.TokenID // a key created in Tollgate with the same secret
		}
		if owner, taken := aliasOwner[k.KeyAlias]; k.KeyAlias != "" && taken && owner != k.TokenID {
			res.Notes = append(res.Notes, fmt.Sprintf("key %s: alias %q belongs to another Tollgate key; imported without an alias", k.KeyName, k.KeyAlias))
			k.KeyAlias = ""
		}
		if err := step(res, store.KindKey, err, func() bool {
			k.Spend, k.Limits = keepProgress(old.Spend, k.Spend, old.Limits, k.Limits)
			for model, s := range old.ModelSpend {
				if s > k.ModelSpend[model] {
					if k.ModelSpend == nil {
						k.ModelSpend = map[string]int64{}
					}
					k.ModelSpend[model] = s
				}
			}
			// Tollgate's own rotation state wins over LiteLLM's.
			if old.RotationCount > k.RotationCount {
				k.RotationCount, k.LastRotationAt, k.KeyRotationAt = old.RotationCount, old.LastRotationAt, old.KeyRotationAt
			}
			k.CreatedAt, k.UpdatedAt = old.CreatedAt, old.UpdatedAt
			return same(normKey(old), normKey(k))
		}, func(create bool) error {
			if w == nil {
				return nil
			}
			if create {
				return w.CreateKey(ctx, k)
			}
			k.UpdatedAt = now
			return w.UpdateKey(ctx, k)
		}); err != nil {
			return nil, fmt.Errorf("key %s: %w", k.KeyName, err)
		}
	}
	for _, m := range p.Models {
		old, err := r.GetModel(ctx, m.ID)
		if err := step(res, store.KindModel, err, func() bool {
			m.CreatedAt, m.UpdatedAt = old.CreatedAt, old.UpdatedAt
			return same(old, m)
		}, func(create bool) error {
			if w == nil {
				return nil
			}
			if create {
				return w.CreateModel(ctx, m)
			}
			m.UpdatedAt = now
			return w.UpdateModel(ctx, m)
		}); err != nil {
			return nil, fmt.Errorf("model %s (%s): %w", m.ModelName, m.ID, err)
		}
	}
	for _, e := range p.EndUsers {
		old, err := r.GetEndUser(ctx, e.EndUserID)
		if err := step(res, KindEndUser, err, func() bool {
			// End users have no budget window: the higher spend wins, so a
			// re-import never gives budget back.
			e.Spend = max(old.Spend, e.Spend)
			e.CreatedAt, e.UpdatedAt = old.CreatedAt, old.UpdatedAt
			return same(normEndUser(old), normEndUser(e))
		}, func(create bool) error {
			if w == nil {
				return nil
			}
			if !create {
				e.UpdatedAt = now
			}
			return w.PutEndUser(ctx, e)
		}); err != nil {
			return nil, fmt.Errorf("end user %s: %w", e.EndUserID, err)
		}
	}
	if len(p.GeneralSettings) > 0 {
		cur, err := r.GetSettings(ctx)
		if err != nil {
			return nil, err
		}
		merged, err := api.MergeSettings(cur.GeneralSettings, p.GeneralSettings)
		if err != nil {
			return nil, fmt.Errorf("general_settings: %w", err)
		}
		c := res.count(store.KindSettings)
		switch {
		case jsonEqual(merged, cur.GeneralSettings):
			c.Unchanged++
		default:
			if len(cur.GeneralSettings) == 0 {
				c.Created++
			} else {
				c.Updated++
			}
			if w != nil {
				if err := w.PutSettings(ctx, store.Settings{GeneralSettings: merged, UpdatedAt: now}); err != nil {
					return nil, err
				}
			}
		}
	}
	return res, nil
}

// step counts and performs one object's create, update or nothing. getErr
// is the lookup's error; equal (called only when the object exists) adjusts
// the new object against the old and reports whether they are the same.
func step(res *Result, kind string, getErr error, equal func() bool, write func(create bool) error) error {
	c := res.count(kind)
	switch {
	case errors.Is(getErr, store.ErrNotFound):
		c.Created++
		return write(true)
	case getErr != nil:
		return getErr
	case equal():
		c.Unchanged++
		return nil
	default:
		c.Updated++
		return write(false)
	}
}

// keepProgress decides the spend and budget window of an object that exists
// in both systems: after a Tollgate budget reset (a later budget_reset_at)
// Tollgate's window and spend stand; otherwise the higher spend wins, so a
// re-import never gives budget back.
func keepProgress(oldSpend, newSpend int64, oldL, newL store.Limits) (int64, store.Limits) {
	if oldL.BudgetResetAt != nil && newL.BudgetResetAt != nil && oldL.BudgetResetAt.After(*newL.BudgetResetAt) &&
		oldL.BudgetDuration == newL.BudgetDuration {
		newL.BudgetResetAt = oldL.BudgetResetAt
		return oldSpend, newL
	}
	return max(oldSpend, newSpend), newL
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := t.UTC().Truncate(time.Microsecond)
	return &v
}

func normLimits(l store.Limits) store.Limits {
	l.BudgetResetAt = utc(l.BudgetResetAt)
	return l
}

func normRaw(r json.RawMessage) json.RawMessage {
	if isEmptyJSON(r) {
		return nil
	}
	return r
}

func normOrg(o store.Organization) store.Organization {
	o.Limits = normLimits(o.Limits)
	o.Metadata = normRaw(o.Metadata)
	o.CreatedAt, o.UpdatedAt = time.Time{}, time.Time{}
	return o
}

func normTeam(t store.Team) store.Team {
	t.Limits = normLimits(t.Limits)
	t.Metadata = normRaw(t.Metadata)
	t.CreatedAt, t.UpdatedAt = time.Time{}, time.Time{}
	return t
}

func normUser(u store.User) store.User {
	u.Limits = normLimits(u.Limits)
	u.Metadata = normRaw(u.Metadata)
	u.CreatedAt, u.UpdatedAt = time.Time{}, time.Time{}
	return u
}

func normEndUser(e store.EndUser) store.EndUser {
	e.CreatedAt, e.UpdatedAt = time.Time{}, time.Time{}
	return e
}

func normKey(k store.Key) store.Key {
	k.Limits = normLimits(k.Limits)
	k.Metadata, k.Permissions = normRaw(k.Metadata), normRaw(k.Permissions)
	k.Expires, k.KeyRotationAt, k.LastRotationAt = utc(k.Expires), utc(k.KeyRotationAt), utc(k.LastRotationAt)
	ph := make([]store.PreviousHash, len(k.PreviousHashes))
	for i, p := range k.PreviousHashes {
		ph[i] = store.PreviousHash{KeyHash: p.KeyHash, ValidUntil: p.ValidUntil.UTC().Truncate(time.Microsecond)}
	}
	k.PreviousHashes = ph
	k.CreatedAt, k.UpdatedAt = time.Time{}, time.Time{}
	return k
}

// same compares two objects by their canonical JSON.
func same(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && jsonEqual(ja, jb)
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return len(normRaw(a)) == 0 && len(normRaw(b)) == 0
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

// kindOrder is the order reports list kinds in.
var kindOrder = []string{store.KindOrganization, store.KindTeam, store.KindUser, store.KindKey, store.KindModel, KindEndUser, store.KindSettings}

// KindEndUser names end users (LiteLLM_EndUserTable rows) in a Result; they
// are not synced to proxies, so the store has no kind for them.
const KindEndUser = "end_user"

// Report writes a human-readable summary of an import.
func Report(out io.Writer, src *Source, p *Plan, res *Result, dryRun bool) {
	verb := "imported"
	if dryRun {
		verb = "dry run (nothing written)"
	}
	fmt.Fprintf(out, "LiteLLM import: %s\n\n", verb)
	fmt.Fprintf(out, "%-14s %8s %8s %10s\n", "kind", "created", "updated", "unchanged")
	for _, k := range kindOrder {
		c := res.Kinds[k]
		if c == nil {
			c = &Counts{}
		}
		fmt.Fprintf(out, "%-14s %8d %8d %10d\n", k, c.Created, c.Updated, c.Unchanged)
	}
	t := res.Totals()
	fmt.Fprintf(out, "total: created=%d updated=%d unchanged=%d\n", t.Created, t.Updated, t.Unchanged)

	if len(p.Unsupported) > 0 {
		fmt.Fprintf(out, "\nnot supported (not carried over):\n")
		names := make([]string, 0, len(p.Unsupported))
		for n := range p.Unsupported {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(out, "  %5d  %s\n", p.Unsupported[n], n)
		}
	}
	if src != nil && (len(src.MissingTables) > 0 || len(src.MissingColumns) > 0) {
		fmt.Fprintf(out, "\nabsent from this LiteLLM database (older version; defaults used):\n")
		if len(src.MissingTables) > 0 {
			fmt.Fprintf(out, "  tables: %s\n", strings.Join(src.MissingTables, ", "))
		}
		if len(src.MissingColumns) > 0 {
			fmt.Fprintf(out, "  columns: %s\n", strings.Join(src.MissingColumns, ", "))
		}
	}
	if notes := append(append([]string{}, p.Notes...), res.Notes...); len(notes) > 0 {
		fmt.Fprintf(out, "\nnotes:\n")
		for _, n := range notes {
			fmt.Fprintf(out, "  - %s\n", n)
		}
	}
	fmt.Fprintf(out, "\nbehaviour differences:\n")
	for _, d := range BehaviourDifferences {
		fmt.Fprintf(out, "  - %s\n", d)
	}
}
